"""The import direction of the README's architecture section: a module imports only from lower layers."""

from __future__ import annotations

import ast
from pathlib import Path

import supervisor
from tests.helpers import REPO

PACKAGE = REPO / "supervisor"
LAYERS = {
    "errors": 0,
    "model": 0,
    "jsondecode": 0,  # msgspec JSON where nesting too deep is a DecodeError
    "locations": 0.5,  # where the config and the socket are: os.path only (the CLI's quick path)
    "probespec": 0.7,  # the probe, trim and unload tables of a component's config
    "endpoints": 1.1,  # `${PORT}` filled in for one run
    "config": 1,
    "protocol": 1,
    "restart": 2,
    "predictor": 2,
    "profiles": 1.1,  # a component's smaller profiles
    # Within layer 3, the process-table walk sits below what starts and cleans up processes.
    "platform": 3,
    "procs": 3.1,  # the macOS backend calls the kernel through platform.mach
    "statefile": 2.9,  # state and log files: written atomically, opened only if regular
    "history": 3.05,
    "registry": 3.1,
    "events": 3,
    "logfiles": 3,
    "echo": 3,
    "pump": 3.2,
    "orphans": 3.3,
    "stopping": 3.25,
    "fdlimit": 3,  # the open-files limit: raised for `up`, given back to components
    "launcher": 3.5,
    "httpcalls": 3.5,  # requests to components (httpx), exec probes
    "probes": 3.57,  # one run's port and calls: readiness, liveness, trim, unload
    "inprocess": 3.55,  # an object loaded into the caller's process, as a launcher.Child
    "runtime": 3.5,
    "pressure": 2,
    "accounting": 2,
    "states": 2,
    "policy": 2.5,
    "attention": 2.6,
    "offloop": 3.35,  # conditions polled in the sampler's thread, not on the loop
    "sampler": 3.4,
    "runoutput": 3.6,
    "levers": 3.6,
    "runwatch": 3.7,  # one run's pump, readiness wait and liveness probe
    "runner": 4,
    "enforcer": 4.2,
    "report": 4.3,
    "monitor": 4.5,
    "admission": 4.7,
    "idlettl": 4.7,  # unload after idle_ttl_s
    "waitingroom": 4.8,
    "ordering": 4.6,
    "diskstate": 4.6,
    "record": 4.7,
    "runtimewatch": 4.7,  # the runtime dir made again if a cleaner removed it
    "core": 5,
    "control": 6,
    "client": 6,
    "http": 6,
    "export": 6,  # `export kubernetes`: reads the config and the history, writes manifests
    "api": 6.5,
    "logsetup": 6.5,
    "top": 6.5,
    "cliformat": 6.8,  # the CLI's tables, standard library only
    "quickcli": 6.9,  # `status` without msgspec
    "cli": 7,
    "__main__": 8,
    "__init__": 8,
}
PURE = {
    "errors",
    "model",
    "probespec",
    "endpoints",
    "config",
    "protocol",
    "restart",
    "pressure",
    "predictor",
    "policy",
    "accounting",
    "attention",
    "states",
}
FORBIDDEN_IN_PURE = {"anyio", "psutil", "os", "signal", "time"}


def module_of(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path, package: Path = PACKAGE) -> tuple[set[str], set[str]]:
    """(supervisor modules imported, third-party/stdlib top-level names imported). A module
    inside a subpackage (platform/, http/) importing its siblings counts as importing itself."""
    in_subpackage = path.is_relative_to(package) and len(path.relative_to(package).parts) > 1
    tree = ast.parse(path.read_text())
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_subpackage:
                internal.add(module_of(path, package))
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


def layer_problems(package: Path) -> list[str]:
    """Every import in `package` that breaks the rules: a module without a layer, an import
    of a module at the same or a higher layer, OS or clock access in a pure module, psutil
    outside layer 3, the web stack outside http/."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        me = module_of(path, package)
        where = path.relative_to(package.parent)
        if me not in LAYERS:
            problems.append(f"{where}: module {me!r} has no layer in tests/test_layering.py")
            continue
        internal, external = imports(path, package)
        for other in sorted(internal - {me}):
            if other not in LAYERS:
                problems.append(f"{where} imports {other!r}, which has no layer")
            elif LAYERS[other] >= LAYERS[me] and me != "__init__":
                problems.append(f"{where} (layer {LAYERS[me]}) imports {other} (layer {LAYERS[other]})")
        if me in PURE and external & FORBIDDEN_IN_PURE:
            problems.append(f"{where} is a pure module but imports {sorted(external & FORBIDDEN_IN_PURE)}")
        if "psutil" in external and int(LAYERS[me]) != 3:
            problems.append(f"{where} imports psutil outside layer 3")
        if me != "http" and external & {"starlette", "h11", "httptools", "aiohttp", "prometheus_client"}:
            problems.append(f"{where} imports the web stack outside supervisor/http/")
    return problems


def test_the_package_follows_the_layers() -> None:
    problems = layer_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "supervisor"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_check_catches_planted_violations(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "model.py": "from .core import Supervisor\n",  # layer 0 importing layer 5
            "policy.py": "import time\nfrom . import runner\n",  # a pure module with a clock, reaching up
            "runner.py": "from .model import X\nimport psutil\n",  # psutil at layer 4
            "core.py": "from supervisor.newthing import Y\nimport starlette\n",
            "http/app.py": "from . import server\nfrom ..core import Supervisor\n",  # fine: downwards
            "stray.py": "",
        },
    )
    problems = "\n".join(layer_problems(package))
    assert "supervisor/model.py (layer 0) imports core (layer 5)" in problems
    assert "supervisor/policy.py (layer 2.5) imports runner (layer 4)" in problems
    assert "supervisor/policy.py is a pure module but imports ['time']" in problems
    assert "supervisor/runner.py imports psutil outside layer 3" in problems
    assert "supervisor/core.py imports 'newthing', which has no layer" in problems
    assert "supervisor/core.py imports the web stack outside supervisor/http/" in problems
    assert "module 'stray' has no layer" in problems
    assert "http/app.py" not in problems
    assert not layer_problems(
        plant(tmp_path / "clean", {"model.py": "import msgspec\n", "core.py": "from . import model\n"})
    )


def test_components_do_not_import_the_supervisor() -> None:
    for path in (REPO / "components").rglob("*.py"):
        internal, external = imports(path)
        assert "supervisor" not in external, path


def test_supervisor_is_this_repository_not_supervisord() -> None:
    # The package shares its import name with supervisord's; never let that one shadow ours.
    assert Path(supervisor.__file__).resolve().is_relative_to(REPO)
