"""One named llama.cpp: the test extra pins the xllamacpp build the byte tests compare with (the one
installed), and the README names it and, separately, the llama-cpp-python peer."""

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_reference_is_pinned_to_the_installed_build():
    extra = re.search(r"^test = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M | re.S).group(1)
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', extra))
    assert pins["xllamacpp"] == version("xllamacpp")
    assert pins["llama-cpp-python"] == version("llama_cpp_python")


def test_readme_names_both():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Which llama.cpp")[1].split("\n## ")[0]
    assert f"`xllamacpp=={version('xllamacpp')}`" in section and "portable build" in section
    assert f"`llama-cpp-python=={version('llama_cpp_python')}`" in section
