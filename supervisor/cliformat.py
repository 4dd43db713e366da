"""How the CLI prints what the supervisor answers: tables and one-line summaries. Standard
library only, so that the quick path (quickcli.py) can print `status` without the rest."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs the quick path ~10 ms
if TYPE_CHECKING:
    import re
    from typing import Any


# Colour (SGR: ESC [ ... m) is kept; every other control character, ESC included, is shown
# as text: a component's output must not move the cursor, clear the screen, set the window
# title or write the clipboard (OSC 52) of whoever reads its log on a terminal.
_SHOWN_AS_TEXT: re.Pattern[str] | None = None


def for_terminal(line: str) -> str:
    """`line` safe to print on a terminal: SGR colour sequences kept, any other control
    character (C0 but tab, DEL, C1) written out as `\\xNN`, as journalctl and `less` show
    them instead of obeying them."""
    global _SHOWN_AS_TEXT
    if _SHOWN_AS_TEXT is None:
        import re  # here, not at the top: the quick path for `status` does not pay for it

        _SHOWN_AS_TEXT = re.compile(r"(\x1b\[[0-9;:]*m)|[\x00-\x08\x0a-\x1f\x7f-\x9f]")
    return _SHOWN_AS_TEXT.sub(lambda m: m.group(1) or f"\\x{ord(m.group(0)):02x}", line)


def format_memory(m: dict[str, Any]) -> str:
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
    lines = [format_memory(r), ""]
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
    "memory": format_memory,
    "report": _format_report,
    "explain": _format_explain,
    "optimize": _format_actions,
    "emergency-cleanup": _format_actions,
}


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


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
    if any(row.get("port") for row in rows):  # model servers: the port `${PORT}` became
        table[0].insert(3, "PORT")
        for line, row in zip(table[1:], rows, strict=True):
            line.insert(3, str(row.get("port") or "-"))
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
