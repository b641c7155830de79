"""Tests that cannot flake: no test asserts a wall-clock bound or runs under a time limit (timings belong
in benchmarks/), property tests draw the same examples on every run, and tolerances are the documented ones."""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
DOCS = TESTS.parent / "docs"
CLOCK = re.compile(r"perf_counter|time\.time|monotonic|process_time|seconds|elapsed")


def _modules():
    for path in sorted(TESTS.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        yield path.name, source, ast.parse(source)


def test_no_wall_clock_bounds():
    found = []
    for name, source, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops):
                text = ast.get_source_segment(source, node)
                limit_side = [node.left, *node.comparators]
                if CLOCK.search(text) and any(isinstance(side, ast.Constant) and side.value != 0 for side in limit_side):
                    found.append(f"{name}:{node.lineno}: {text}")
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg in ("timeout", "deadline") and not (isinstance(kw.value, ast.Constant) and kw.value.value is None):
                        found.append(f"{name}:{node.lineno}: {kw.arg}={ast.get_source_segment(source, kw.value)}")
    assert found == []


def test_property_tests_are_derandomized():
    found = []
    for name, source, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "settings":
                derandomize = {kw.arg: kw.value for kw in node.keywords}.get("derandomize")
                if not (isinstance(derandomize, ast.Constant) and derandomize.value is True):
                    found.append(f"{name}:{node.lineno}: {ast.get_source_segment(source, node)}")
    assert found == []


def test_backend_kld_agreement_is_the_documented_one():
    from test_eval_scorecard import KLD_AGREEMENT

    section = (DOCS / "scorecard.md").read_text(encoding="utf-8").split("### The two backends")[1].split("###")[0]
    assert f"within {KLD_AGREEMENT:.0%}" in section
    assert "test_backends_agree_on_kld" in section
