"""The `ironcliw` command line.

Exit codes: 0 done, 1 refused, 2 usage or config error, 3 supervisor not running.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import locations
from .client import ControlClient
from .cliformat import FORMATTERS, for_terminal, format_memory, format_table
from .config import Config, Paths, load_config, resolve_paths
from .errors import AlreadyRunning, Busy, ConfigError, IroncliwError, NotRunning, RemoteError
from .protocol import ErrorCode

# `up` imports the supervisor itself (anyio, structlog, psutil) when it runs: the client
# commands stay quick to start because they import only the config and the client.

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
_USAGE_CODES = {ErrorCode.UNKNOWN_COMPONENT, ErrorCode.BAD_ARGS, ErrorCode.UNKNOWN_OP, ErrorCode.BAD_REQUEST}
if TYPE_CHECKING:
    from .core import Supervisor


def default_config_path() -> str:
    return locations.default_config_path(os.environ)


_JSON_COMMANDS = (
    ("status", "every component's state, PID, memory", False),
    ("components", "components with their config", False),
    ("load", "start a component", True),
    ("unload", "stop a component", True),
    ("restart", "restart a component", True),
    ("memory", "memory state, percent used, available MB, loaded components", False),
    ("report", "per component: memory now and peak, anon/file, PSS/USS, trend, trims; recent actions", False),
    ("explain", "the state, the rule that fires next, and what it would do to each component", False),
    ("optimize", "carry out the WARNING actions now (trim, unload idle LOW)", False),
    ("emergency-cleanup", "carry out the EMERGENCY actions now (keep only CRITICAL)", False),
    ("touch", "mark a component used (idle unloading goes by this)", True),
    ("forget", "clear a component's run history (its prediction restarts from its estimate)", True),
)


_GLOBAL_OPTIONS = {"-c": True, "--config": True, "--socket": True, "--log-format": True}  # each takes a value


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """-c, --socket and --log-format are accepted after the command too (`ironcliw check -c
    FILE`, `ironcliw up -c FILE`): moved in front of it, where the parser reads them."""
    args, front, rest, i = list(argv), [], [], 0
    while i < len(args) and args[i].startswith("-"):  # before the command: as given
        takes_value = args[i] in _GLOBAL_OPTIONS and i + 1 < len(args)
        front += args[i : i + 2] if takes_value else [args[i]]
        i += 2 if takes_value else 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg.split("=", 1)[0] in _GLOBAL_OPTIONS:
            takes_value = "=" not in arg and i + 1 < len(args)
            front += args[i : i + 2] if takes_value else [arg]
            i += 2 if takes_value else 1
            continue
        rest.append(arg)
        i += 1
    return front + rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ironcliw", description="Memory-aware supervisor for the Ironcliw stack.")
    parser.add_argument("-c", "--config", help="config file (default: $IRONCLIW_CONFIG or configs/ironcliw.toml)")
    parser.add_argument("--socket", help="control socket path (default: from the config)")
    parser.add_argument(
        "--log-format", choices=["auto", "console", "json"], default="auto", help="supervisor log format"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="start the stack in the foreground (Ctrl-C stops it)")
    down = sub.add_parser("down", help="stop the running supervisor and every component")
    down.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the stack to stop")
    for name, text, takes_name in _JSON_COMMANDS:
        p = sub.add_parser(name, help=text)
        if takes_name:
            p.add_argument("name")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "load":
            p.add_argument("--make-room", action="store_true", help="unload lower priorities if it does not fit")
    logs = sub.add_parser("logs", help="a component's output")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many past lines (default 100)")
    logs.add_argument("--json", action="store_true", help="print JSON")
    logs.add_argument("--raw", action="store_true", help="print control sequences as they are on a terminal too")
    top = sub.add_parser("top", help="a live terminal view of memory and components (q quits)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    sub.add_parser("check", help="validate the config without starting anything")
    export = sub.add_parser("export", help="the stack as another engine's manifests (kubernetes)")
    export.add_argument("target", choices=["kubernetes"])
    export.add_argument("-o", "--output", help="write one file per object into this directory (default: stdout)")
    export.add_argument("--namespace", default="ironcliw", help="the namespace of the objects (default ironcliw)")
    export.add_argument("--image", default="ironcliw-stack:latest", help="the image every component runs in")
    export.add_argument(
        "--image-root", default="/app", help="where the image holds the directory above the config file's"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(hoist_global_options(sys.argv[1:] if argv is None else argv))
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print(f"ironcliw: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    paths = resolve_paths(config, os.environ, os.getuid(), str(Path.home()))
    if args.socket:
        paths = msgspec.structs.replace(paths, socket=args.socket)
    if args.command == "check":
        n = len(config.components)
        print(f"{config.source}: OK, {n} component{'s' * (n != 1)}, start order: {', '.join(config.order)}")
        return EXIT_OK
    if args.command == "up":
        return cmd_up(config, paths, args.log_format)
    if args.command == "export":
        from .export.cli import export_kubernetes

        return export_kubernetes(config, paths, args)
    try:
        if args.command == "top":
            from .top import run_top

            ControlClient(paths.socket, timeout=2.0).connect().close()  # not running: exit 3 before curses
            return run_top(paths.socket, args.interval)
        return run_client_command(args, paths)
    except NotRunning as exc:
        print(f"ironcliw: {exc}\nhint: start it with `bin/ironcliw up` (config {config.source})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except RemoteError as exc:
        print(f"ironcliw: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_REFUSED
    except Busy as exc:
        print(f"ironcliw: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_OK


# --- up ------------------------------------------------------------------------------------


# Native modules that the supervisor's libraries load whenever they are importable, and that
# the supervisor never uses: OpenSSL's hash table (hashlib then uses CPython's own md5/sha*,
# and hmac its pure-Python code) and greenlet (structlog's greenlet-local context; Playwright
# installs greenlet in the test venv). Refused for the life of `up` (imports made on the
# first HTTP request would load them too), they keep about 1.7 MB out of the supervisor's
# RSS (bench/bench_imports.py). Nothing in the supervisor needs OpenSSL-only hashes
# (pbkdf2_hmac, scrypt).
UNUSED_NATIVE_MODULES = ("_hashlib", "greenlet")


def _refuse(modules: Sequence[str]) -> None:
    for name in modules:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # `import name` raises ImportError


def _raise_open_files_limit() -> None:
    """`up` owns its process: its soft open-files limit goes up to the hard one (fdlimit.py)."""
    import structlog

    from . import fdlimit

    raised = fdlimit.raise_soft_limit()
    if raised is not None:
        log = structlog.get_logger("ironcliw.supervisor")
        components = raised.given if fdlimit.child_prefix() else raised.now  # without prlimit, they inherit
        log.info("open_files_limit_raised", given=raised.given, now=raised.now, components_start_with=components)


def cmd_up(config: Config, paths: Paths, log_format: str) -> int:
    _refuse(UNUSED_NATIVE_MODULES)
    import anyio

    from . import control, logsetup
    from .core import Supervisor

    if config.http.enabled:
        from .http import server as http_server  # the web stack only when asked for

    from .echo import Echo, LineWriter, prefixed

    # A file-size limit (RLIMIT_FSIZE) must turn an oversized log write into EFBIG, which the
    # log handles, not into SIGXFSZ, which would end the supervisor; components get the
    # default back (Popen's restore_signals).
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Neither output may ever block or end the supervisor (see echo.py).
    out, err = Echo(1), Echo(2)
    logsetup.configure(log_format, stream=LineWriter(err))  # type: ignore[arg-type]
    width = max((len(n) for n in config.components), default=8)
    prefixes = {name: f"{name:<{width}} | ".encode() for name in config.components}

    def echo(name: str, block: bytes) -> None:
        prefix = prefixes.get(name) or f"{name:<{width}} | ".encode()
        out.write(prefixed(prefix, block))

    _raise_open_files_limit()
    supervisor = Supervisor(config, paths, echo=echo, subreaper=True)

    services = [control.serve]
    if config.http.enabled:
        services.append(http_server.serve)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_forward_signals, supervisor)
            tg.start_soon(out.drain)
            tg.start_soon(err.drain)
            await supervisor.run(services=services)
            tg.cancel_scope.cancel()

    try:
        anyio.run(run)
    except BaseException as exc:
        return _exit_status(exc)
    finally:
        out.close()
        err.close()
    return EXIT_OK


def _exit_status(exc: BaseException) -> int:
    """`up` ended by an error: a refused start is one line and EXIT_REFUSED; anything else is a bug."""
    error = _single_error(exc)
    if isinstance(error, AlreadyRunning):
        print(f"ironcliw: {error}; stop it with `bin/ironcliw down`", file=sys.stderr)
        return EXIT_REFUSED
    if isinstance(error, IroncliwError):
        print(f"ironcliw: {error}", file=sys.stderr)
        return EXIT_REFUSED
    raise exc


def _single_error(exc: BaseException) -> BaseException:
    """The one error inside task-group wrappers (a refused start arrives wrapped in them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# What each signal does to `up`. None of them ends it but the first four (supervisord's
# set), and none ends it abruptly: a stray `kill -USR1` would otherwise take the whole stack
# down (components get SIGTERM when the supervisor dies). USR1 or USR2 reopens the log files
# (nginx's and supervisord's convention for logrotate's postrotate); the rest, whose default
# action is to terminate, are logged and ignored. Handlers, unlike SIG_IGN, are not
# inherited: components start with every signal at its default.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
REOPEN_SIGNALS = ("SIGUSR1", "SIGUSR2")
IGNORED_SIGNALS = ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR")


async def _forward_signals(supervisor: Supervisor) -> None:
    import anyio
    import structlog

    log = structlog.get_logger("ironcliw.cli")
    names = [n for n in (*STOP_SIGNALS, *REOPEN_SIGNALS, *IGNORED_SIGNALS) if hasattr(signal, n)]
    with anyio.open_signal_receiver(*(signal.Signals[n] for n in names)) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if name in REOPEN_SIGNALS:
                log.info("signal_received", signal=name, action="reopen log files")
                supervisor.disk.reopen_logs()
            elif name not in STOP_SIGNALS:
                log.warning("signal_ignored", signal=name)
            elif supervisor.stopping:
                log.warning("already_stopping", signal=name)
            else:
                log.info("signal_received", signal=name)
                supervisor.shutdown()


# --- client commands --------------------------------------------------------------------------


def run_client_command(args: argparse.Namespace, paths: Paths) -> int:
    with ControlClient(paths.socket, timeout=600.0) as client:
        match args.command:
            case "status" | "components":
                result = client.call(args.command)
                if args.json:
                    print(_json(result))
                else:
                    if args.command == "status":
                        print(format_memory(result))
                    print(format_table(result["components"], args.command))
            case "memory" | "report" | "explain" | "optimize" | "emergency-cleanup":
                result = client.call(args.command)
                print(_json(result) if args.json else FORMATTERS[args.command](result))
            case "load" | "unload" | "restart" | "touch":
                extra = {"make_room": True} if getattr(args, "make_room", False) else {}
                result = client.call(args.command, name=args.name, **extra)
                print(_json(result) if args.json else f"{result['name']}: {result['state']} (pid {result['pid']})")
            case "forget":
                result = client.call("forget", name=args.name)
                print(
                    _json(result)
                    if args.json
                    else f"{result['name']}: forgot {result['runs_forgotten']} runs; now {result['prediction']}"
                )
            case "logs":
                return _logs(client, args)
            case "down":
                return _down(client, paths, args.timeout)
    return EXIT_OK


def _logs(client: ControlClient, args: argparse.Namespace) -> int:
    # On a terminal a component's control sequences are shown, not obeyed (colour is kept);
    # into a pipe or a file, and with --raw, its bytes go as they are.
    shown = for_terminal if sys.stdout.isatty() and not args.raw else str
    if not args.follow:
        result = client.call("logs", name=args.name, lines=args.lines)
        print(_json(result) if args.json else "\n".join(map(shown, result["lines"])))
        return EXIT_OK
    stream = client.stream("logs", name=args.name, lines=args.lines, follow=True)
    first = next(stream)
    if args.json:
        print(_json(first), flush=True)
    else:
        for line in first["lines"]:
            print(shown(line), flush=True)
    for event in stream:
        print(_json(event) if args.json else shown(event["line"]), flush=True)
    return EXIT_OK


def _down(client: ControlClient, paths: Paths, timeout: float) -> int:
    pid = client.call("ping")["pid"]
    client.call("shutdown")
    client.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("stopped")
            return EXIT_OK
        except PermissionError:
            pass
        if not os.path.exists(paths.socket):
            print("stopped")
            return EXIT_OK
        time.sleep(0.05)
    print(f"ironcliw: the supervisor (pid {pid}) is still stopping after {timeout:g} s", file=sys.stderr)
    return EXIT_REFUSED


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
