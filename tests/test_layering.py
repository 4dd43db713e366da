"""The import direction of DESIGN.md: a module imports only from lower layers."""

from __future__ import annotations

import ast
from pathlib import Path

import supervisor
from tests.helpers import REPO

PACKAGE = REPO / "supervisor"
LAYERS = {
    "errors": 0,
    "model": 0,
    "config": 1,
    "protocol": 1,
    "restart": 2,
    "predictor": 2,
    # Within layer 3, the process-table walk sits below what starts and cleans up processes.
    "platform": 3,
    "procs": 3,
    "history": 3,
    "events": 3,
    "logfiles": 3,
    "echo": 3,
    "pump": 3.2,
    "orphans": 3.3,
    "launcher": 3.5,
    "runtime": 3.5,
    "pressure": 2,
    "policy": 2.5,
    "runner": 4,
    "enforcer": 4.2,
    "monitor": 4.5,
    "core": 5,
    "control": 6,
    "client": 6,
    "http": 6,
    "api": 6.5,
    "logsetup": 6.5,
    "top": 6.5,
    "cli": 7,
    "__main__": 8,
    "__init__": 8,
}
PURE = {"errors", "model", "config", "protocol", "restart", "pressure", "predictor", "policy"}
FORBIDDEN_IN_PURE = {"anyio", "psutil", "os", "signal", "time"}


def module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(supervisor modules imported, third-party/stdlib top-level names imported). A module
    inside a subpackage (platform/, http/) importing its siblings counts as importing itself."""
    in_subpackage = path.is_relative_to(PACKAGE) and len(path.relative_to(PACKAGE).parts) > 1
    tree = ast.parse(path.read_text())
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_subpackage:
                internal.add(module_of(path))
            elif node.level > 0 or (node.module or "").startswith("supervisor"):
                base = (node.module or "").removeprefix("supervisor").lstrip(".")
                if base:
                    internal.add(base.split(".")[0])
                else:
                    internal.update(alias.name for alias in node.names)
            else:
                external.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return internal, external


def test_every_module_has_a_layer() -> None:
    missing = {module_of(p) for p in PACKAGE.rglob("*.py")} - set(LAYERS)
    assert not missing, f"give these modules a layer in this test: {missing}"


def test_imports_go_downwards() -> None:
    problems = []
    for path in PACKAGE.rglob("*.py"):
        me = module_of(path)
        internal, external = imports(path)
        for other in internal:
            if other in LAYERS and other != me and LAYERS[other] >= LAYERS[me] and me != "__init__":
                problems.append(
                    f"{path.relative_to(REPO)} (layer {LAYERS[me]}) imports {other} (layer {LAYERS[other]})"
                )
        if me in PURE:
            bad = external & FORBIDDEN_IN_PURE
            if bad:
                problems.append(f"{path.relative_to(REPO)} is a pure module but imports {sorted(bad)}")
        if me not in {"procs", "platform"} and "psutil" in external and int(LAYERS[me]) != 3:
            problems.append(f"{path.relative_to(REPO)} imports psutil outside layer 3")
        if me != "http" and external & {"starlette", "h11", "prometheus_client"}:
            problems.append(f"{path.relative_to(REPO)} imports the web stack outside supervisor/http/")
    assert not problems, "\n".join(problems)


def test_components_do_not_import_the_supervisor() -> None:
    for path in (REPO / "components").rglob("*.py"):
        internal, external = imports(path)
        assert "supervisor" not in external, path


def test_supervisor_is_this_repository_not_supervisord() -> None:
    # The package shares its import name with supervisord's; never let that one shadow ours.
    assert Path(supervisor.__file__).resolve().is_relative_to(REPO)
