"""The size guidance of the README's architecture section, kept: no class over 250 lines, no function over 50, except
where the numbers chose otherwise (each exception says why)."""

from __future__ import annotations

import ast

from tests.helpers import REPO

MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 50
EXCEPTIONS = {
    # The sampling hot path: one flat loop over kept descriptors. Helpers per process cost
    # about three times the reads themselves (bench/bench_sampling.py, README "Sampling").
    "supervisor/procs/_linux.py:TreeSampler._walk_once",
}


def definitions(node: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST, int]]:
    """(dotted name, node, lines) of every class and function, nested ones too."""
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{child.name}"
            out.append((name, child, (child.end_lineno or child.lineno) - child.lineno + 1))
            out += definitions(child, f"{name}.")
    return out


def oversized() -> list[str]:
    found = []
    for path in sorted((REPO / "supervisor").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for name, node, lines in definitions(ast.parse(path.read_text())):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit and f"{rel}:{name}" not in EXCEPTIONS:
                found.append(f"{rel}:{name} has {lines} lines (at most {limit})")
    return found


def test_classes_and_functions_stay_small() -> None:
    problems = oversized()
    assert not problems, "\n".join(problems)


def test_every_exception_still_exists() -> None:
    for entry in EXCEPTIONS:
        rel, name = entry.split(":")
        assert (REPO / rel).exists() and name.split(".")[-1] in (REPO / rel).read_text(), entry


def test_the_check_measures_nested_definitions() -> None:
    source = "class A:\n    def f(self):\n" + "        x = 1\n" * 60 + "\nasync def g():\n    pass\n"
    sizes = {name: lines for name, _, lines in definitions(ast.parse(source))}
    assert sizes == {"A": 62, "A.f": 61, "g": 2}
