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

from .client import ControlClient
from .config import Config, Paths, load_config, resolve_paths
from .errors import AlreadyRunning, Busy, ConfigError, IroncliwError, NotRunning, RemoteError
from .protocol import ErrorCode

# `up` imports the supervisor itself (anyio, structlog, psutil) when it runs: the client
# commands stay quick to start because they import only the config and the client.

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
_USAGE_CODES = {ErrorCode.UNKNOWN_COMPONENT, ErrorCode.BAD_ARGS, ErrorCode.UNKNOWN_OP, ErrorCode.BAD_REQUEST}
if TYPE_CHECKING:
    from .core import Supervisor

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_config_path() -> str:
    if os.environ.get("IRONCLIW_CONFIG"):
        return os.environ["IRONCLIW_CONFIG"]
    local = Path("configs/ironcliw.toml")
    return str(local if local.exists() else REPO_ROOT / "configs" / "ironcliw.toml")


# (command, help, takes a component name); each also takes --json
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


def _global_options(after_command: bool) -> argparse.ArgumentParser:
    """-c, --socket and --log-format, accepted before or after the command (`ironcliw check -c
    FILE`): after it they default to "not given", so they never undo the same flag given before."""
    options = argparse.ArgumentParser(add_help=False)
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    options.add_argument(
        "-c", "--config", help="config file (default: $IRONCLIW_CONFIG or configs/ironcliw.toml)", **unset
    )
    options.add_argument("--socket", help="control socket path (default: from the config)", **unset)
    options.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        help="supervisor log format",
        **(unset or {"default": "auto"}),
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironcliw", description="Memory-aware supervisor for the Ironcliw stack.", parents=[_global_options(False)]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    after = [_global_options(True)]
    sub.add_parser("up", help="start the stack in the foreground (Ctrl-C stops it)", parents=after)
    down = sub.add_parser("down", help="stop the running supervisor and every component", parents=after)
    down.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the stack to stop")
    for name, text, takes_name in _JSON_COMMANDS:
        p = sub.add_parser(name, help=text, parents=after)
        if takes_name:
            p.add_argument("name")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "load":
            p.add_argument("--make-room", action="store_true", help="unload lower priorities if it does not fit")
    logs = sub.add_parser("logs", help="a component's output", parents=after)
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many past lines (default 100)")
    logs.add_argument("--json", action="store_true", help="print JSON")
    top = sub.add_parser("top", help="a live terminal view of memory and components (q quits)", parents=after)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    sub.add_parser("check", help="validate the config without starting anything", parents=after)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print(f"ironcliw: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    paths = resolve_paths(config, os.environ, os.getuid(), str(Path.home()))
    if args.socket:
        paths = msgspec.structs.replace(paths, socket=args.socket)
    if args.command == "check":
        print(f"{config.source}: OK, {len(config.components)} components, start order: {', '.join(config.order)}")
        return EXIT_OK
    if args.command == "up":
        return cmd_up(config, paths, args.log_format)
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


async def _forward_signals(supervisor: Supervisor) -> None:
    import anyio
    import structlog

    log = structlog.get_logger("ironcliw.cli")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if supervisor.stopping:
                log.warning("already_stopping", signal=signal.Signals(signum).name)
            else:
                log.info("signal_received", signal=signal.Signals(signum).name)
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
                        print(_format_memory(result))
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
    if not args.follow:
        result = client.call("logs", name=args.name, lines=args.lines)
        print(_json(result) if args.json else "\n".join(result["lines"]))
        return EXIT_OK
    stream = client.stream("logs", name=args.name, lines=args.lines, follow=True)
    first = next(stream)
    for line in first["lines"]:
        print(line, flush=True)
    for event in stream:
        print(_json(event) if args.json else event["line"], flush=True)
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


def _format_memory(m: dict[str, Any]) -> str:
    budget = f" (budget {m['budget_mb']} MB)" if m.get("budget_mb") else ""
    return (
        f"{m['state']}  {m['percent_used']:.1f} % used{budget}, {m['available_mb']:.0f} MB available, "
        f"stack {m['stack_mb']:.0f} MB; loaded: {', '.join(m['components_loaded']) or '-'}"
    )


REPORT_COLUMNS = (
    "NAME PRIORITY STATE RSS_MB PEAK_MB ANON_MB FILE_MB USS_MB PRED_MB RUNS TREND_MB_MIN TRIM_FREED LAST_EXIT".split()
)


def _report_row(c: dict[str, Any]) -> list[str]:
    trend = c["trend_mb_per_min"]
    return [
        c["name"],
        c["priority"],
        c["state"],
        f"{c['rss_mb']:.1f}",
        f"{c['peak_mb']:.1f}",
        f"{c['anon_mb']:.1f}",
        f"{c['file_mb']:.1f}",
        "-" if c["uss_mb"] is None else f"{c['uss_mb']:.1f}",
        "-" if c["predicted_mb"] is None else f"{c['predicted_mb']:.0f}",
        str(c["prediction"]["runs"]) if c["prediction"] else "-",
        "-" if trend is None else f"{trend:+.1f}" + (" LEAK?" if c["leak_suspected"] else ""),
        ",".join(f"{x:g}" for x in c["trim_freed_mb"]) or "-",
        c["last_exit"] or "-",
    ]


def _format_report(r: dict[str, Any]) -> str:
    lines = [_format_memory(r), ""]
    lines += _columns([list(REPORT_COLUMNS), *(_report_row(c) for c in r["components"])])
    s = r["system"]
    lines += [
        "",
        f"system: {s['used_percent']:.1f} % of {s['total_mb']:.0f} MB used; "
        f"swap {s['swap_used_mb']:.0f}/{s['swap_total_mb']:.0f} MB; "
        f"PSI some/full avg10 {s['psi_some_avg10']}/{s['psi_full_avg10']}; supervisor RSS {r['supervisor_rss_mb']} MB; "
        f"last sample {r['sample_ms']} ms",
    ]
    if s.get("app_mb") is not None:  # macOS: Activity Monitor's Memory tab
        lines.append(
            f"memory used = app {s['app_mb']:.0f} + wired {s['wired_mb']:.0f} + compressed {s['compressed_mb']:.0f} MB;"
            f" cached files {s['cached_mb']:.0f} MB; kernel level {s['kernel_level']},"
            f" free {s['kernel_free_percent']} %"
        )
    if s.get("swap_out_mb_s") is not None:
        lines.append(f"swapping out {s['swap_out_mb_s']:.2f} MB/s")
    gpu = r.get("gpu") or {}
    if gpu.get("ceiling_mb") is not None:
        lines.append(f"GPU may hold at most {gpu['ceiling_mb']:.0f} MB ({gpu['source']})")
    lines += ["", "predictions:"]
    lines += [
        f"  {c['name']:<14} {c['prediction']['detail']} ({c['prediction']['basis']})"
        for c in r["components"]
        if c["prediction"]
    ]
    if r["recent_actions"]:
        lines += ["", "recent actions:"]
        lines += [
            f"  {a['kind']:<7} {a['component']:<14} {a['outcome']:<14} {a['reason']}" for a in r["recent_actions"]
        ]
    return "\n".join(lines)


def _format_explain(e: dict[str, Any]) -> str:
    t = e["thresholds"]
    lines = [
        f"state {e['state']} at {e['percent_used']:.1f} % "
        f"(warning {t['warning']:g}, critical {t['critical']:g}, emergency {t['emergency']:g})"
    ]
    fires = e["fires_now"]
    lines.append(
        "fires now: " + ("; ".join(f"{a['rule']} {a['kind']} {a['component']}" for a in fires) if fires else "nothing")
    )
    nxt = e["fires_at_next_state"]
    lines.append(
        f"at {e['next_state']}: "
        + ("; ".join(f"{a['rule']} {a['kind']} {a['component']}" for a in nxt) if nxt else "nothing")
    )
    key = "at_" + e["next_state"].lower()
    rows = [["NAME", "PRIORITY", "STATE", "RSS_MB", "PRED_MB", "IDLE_S", "GROWING", "NOW", key.upper()]]
    for c in e["candidates"]:
        rows.append(
            [
                c["name"],
                c["priority"] + (" (protected)" if c["protected"] else ""),
                c["state"],
                f"{c['rss_mb']:.1f}",
                f"{c.get('predicted_mb') or 0:.0f}",
                f"{c['idle_s']:.0f}",
                "yes" if c["growing"] else "no",
                ",".join(c["now"]) or "-",
                ",".join(c[key]) or "-",
            ]
        )
    return "\n".join(lines + [""] + _columns(rows))


def _format_actions(result: dict[str, Any]) -> str:
    actions = result["actions"]
    if not actions:
        return "nothing to do"
    return "\n".join(f"{a['kind']:<7} {a['component']:<14} {a['outcome']:<14} {a['reason']}" for a in actions)


FORMATTERS = {
    "memory": _format_memory,
    "report": _format_report,
    "explain": _format_explain,
    "optimize": _format_actions,
    "emergency-cleanup": _format_actions,
}


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def format_table(rows: list[dict[str, Any]], kind: str) -> str:
    headers = ["NAME", "STATE", "PID", "PRIORITY", "RSS_MB", "UPTIME", "RESTARTS", "LAST_EXIT / WAITING FOR"]
    table = [headers]
    for row in rows:
        uptime = row.get("uptime_s")
        table.append(
            [
                row["name"],
                row["state"],
                str(row["pid"] or "-"),
                row["priority"],
                f"{row['rss_mb']:.1f}",
                _duration(uptime) if uptime is not None else "-",
                str(row["restarts"]),
                row.get("waiting") or row.get("last_exit") or "-",
            ]
        )
    if kind == "components":
        table[0].append("COMMAND")
        for line, row in zip(table[1:], rows, strict=True):
            line.append(" ".join(row["command"]))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in table)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
