"""What the APIs show of memory: the summary (status, `memory` events), the report and the
explanation, built from the newest snapshot and each component's ComponentMemory.
Reads only; the monitor owns what it reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import platform, procs
from .config import MemorySection
from .endpoints import unload_actions
from .inprocess import InProcess
from .launcher import resolve_command
from .model import MIB, ComponentState, ComponentStatus, GpuLimits, MemoryDetail, MemoryState, Snapshot, TreeUsage
from .policy import ComponentView, bytes_until, explain
from .predictor import LEAK_WINDOW_S, Prediction, time_to_reach, trend
from .runner import Runner

Predict = Callable[[str], Prediction]


def summary(snap: Snapshot, cfg: MemorySection, runners: Mapping[str, Runner]) -> dict[str, Any]:
    return {
        "state": snap.state.value,
        "percent_used": round(snap.percent_used, 2),
        "available_mb": round(snap.available_mb, 1),
        "components_loaded": [n for n, r in runners.items() if r.child is not None],
        "stack_mb": round(snap.stack_bytes / MIB, 1),
        "budget_mb": cfg.budget_mb,
        "system_used_percent": round(snap.system.used_percent, 2),
        # What the percentages are of, and where the lines are: for charts.
        "basis_mb": round((snap.budget_bytes or snap.system.total_bytes) / MIB, 1),
        "thresholds": {
            "warning": cfg.warning_percent,
            "critical": cfg.critical_percent,
            "emergency": cfg.emergency_percent,
        },
        # How a state is left downwards (pressure.py), for the dashboard's badge.
        "hysteresis_percent": cfg.hysteresis_percent,
        "hold_s": cfg.hold_s,
        "system_total_mb": round(snap.system.total_bytes / MIB, 1),
    }


def report(
    snap: Snapshot, cfg: MemorySection, runners: Mapping[str, Runner], predict: Predict | None
) -> dict[str, Any]:
    """The summary, the system's figures and a row per component (the caller adds the
    supervisor's own figures)."""
    now = time.monotonic()
    rows = [_component_row(name, r, snap, cfg, predict, now) for name, r in runners.items()]
    system = snap.system
    return {
        **summary(snap, cfg, runners),
        "system": {
            "total_mb": round(system.total_bytes / MIB, 1),
            "available_mb": round(system.available_bytes / MIB, 1),
            "used_percent": round(system.used_percent, 2),
            "swap_total_mb": round(system.swap_total_bytes / MIB, 1),
            "swap_used_mb": round(system.swap_used_bytes / MIB, 1),
            "psi_some_avg10": system.psi_some_avg10,
            "psi_full_avg10": system.psi_full_avg10,
            "kernel_level": system.kernel_level.value if system.kernel_level else None,
            "compressed_mb": _mb(system.compressed_bytes),
            "swap_out_mb_s": round(system.swap_out_mb_s, 2) if system.swap_out_mb_s is not None else None,
            # macOS, as Activity Monitor's Memory tab: used = app + wired + compressed
            "app_mb": _mb(system.app_bytes),
            "wired_mb": _mb(system.wired_bytes),
            "cached_mb": _mb(system.cached_bytes),
            "kernel_free_percent": system.kernel_free_percent,
        },
        "supervisor_rss_mb": round(procs.own_rss_bytes() / MIB, 1),
        "components": rows,
    }


def _component_row(
    name: str, r: Runner, snap: Snapshot, cfg: MemorySection, predict: Predict | None, now: float
) -> dict[str, Any]:
    memory = r.memory
    detail = platform.read_detail(procs.tree_pids(r.child.pid)) if r.child and not r.child.in_process else None
    t = trend(list(memory.trend_points), idle=now - r.last_used >= LEAK_WINDOW_S)
    pred = predict(name) if predict else None
    return {
        "name": name,
        "priority": r.spec.priority.value,
        "state": r.state.value,
        **_memory_figures(r, snap.components.get(name), detail),
        "trend_mb_per_min": t.slope_mb_per_min,
        "trend": t.detail,
        "leak_suspected": t.leak,
        "time_to_next_threshold_s": time_to_next_threshold(snap, cfg, t.slope_mb_per_min),
        "predicted_mb": pred.peak_mb if pred else None,
        "prediction": {
            "basis": pred.basis,
            "runs": pred.runs,
            "margin": pred.margin,
            "confidence": pred.confidence,
            "detail": pred.detail,
        }
        if pred
        else None,
        "idle_s": round(now - r.last_used, 1) if r.last_used else None,
        "estimated_mb": r.spec.estimated_mb,
        "trim_freed_mb": list(memory.trim_freed_mb),
        # this run's sampled peaks apart, and the file-backed memory it keeps touching since READY
        "anon_peak_mb": round(memory.run.anon_peak_bytes / MIB, 1),
        "file_peak_mb": round(memory.run.file_peak_bytes / MIB, 1),
        "hot_file_mb": round(hot / MIB, 1) if (hot := memory.run.hot_file_bytes) is not None else None,
        "output": {
            "mb": round(r.run_output.stats.bytes / MIB, 1),
            "dropped_mb": round(r.run_output.stats.dropped_bytes / MIB, 1),
            "throttled_s": round(r.run_output.stats.throttled_s, 1),
            "log_problem": r.log_sink.problem if r.log_sink else None,
        },
        "unloaded_by_policy": r.unloaded_by_policy,
        "last_exit": r.last_exit,
        "waiting": r.waiting_reason if r.state is ComponentState.WAITING else None,
        "port": r.endpoint.port if r.endpoint is not None else None,
        "url": r.endpoint.url if r.endpoint is not None else None,
        "models_unloaded": r.levers.models_unloaded_at is not None,
    }


def _memory_figures(r: Runner, split: TreeUsage | None, detail: MemoryDetail | None) -> dict[str, Any]:
    """RSS, the figure decisions use (the footprint on macOS, RSS elsewhere), the costlier
    per-tree figures; `split` is the newest reading (every reading has the anon/file split)."""
    usage = r.memory.usage
    footprint = usage.footprint_bytes if r.child else None
    if footprint is None and detail is not None:
        footprint = detail.footprint_bytes
    return {
        "rss_mb": round(usage.rss_mb, 1) if r.child else 0.0,
        "memory_mb": round(usage.memory_bytes / MIB, 1) if r.child else 0.0,
        "memory_basis": "footprint" if usage.footprint_bytes is not None else "rss",
        "gpu": r.spec.gpu,
        "in_process": r.in_process,
        # How an in-process object's memory was measured: "growth" of the process across the
        # load, "tracemalloc", or its "estimate"; a process tree's is read from the kernel.
        "attribution": r.child.attribution if isinstance(r.child, InProcess) else "process tree",
        "peak_mb": round(r.memory.peak_sampled_bytes / MIB, 1),
        "anon_mb": round(split.anon_bytes / MIB, 1) if split else 0.0,
        "file_mb": round(split.file_bytes / MIB, 1) if split else 0.0,
        "pss_mb": _mb(detail.pss_bytes) if detail else None,
        "uss_mb": _mb(detail.uss_bytes) if detail else None,
        "footprint_mb": _mb(footprint),
    }


def time_to_next_threshold(snap: Snapshot, cfg: MemorySection, slope_mb_per_min: float | None) -> float | None:
    """Seconds until this growth alone takes memory to the next threshold up."""
    nxt = {
        MemoryState.HEALTHY: cfg.warning_percent,
        MemoryState.WARNING: cfg.critical_percent,
        MemoryState.CRITICAL: cfg.emergency_percent,
    }.get(snap.state)
    if nxt is None or slope_mb_per_min is None:
        return None
    eta = time_to_reach(0.0, bytes_until(snap, nxt) / MIB, slope_mb_per_min / 60)
    return round(eta, 1) if eta is not None else None


def explanation(
    snap: Snapshot,
    cfg: MemorySection,
    runners: Mapping[str, Runner],
    views: list[ComponentView],
    predict: Predict | None,
    healthy_since: float | None,
) -> dict[str, Any]:
    """The policy's explanation of what it would do now, with each candidate's prediction and trend."""
    now = time.monotonic()
    out = explain(snap, views, cfg, now, healthy_since)
    candidates: list[dict[str, Any]] = out["candidates"]  # type: ignore[assignment]
    for row in candidates:
        pred = predict(row["name"]) if predict else None
        row["predicted_mb"] = pred.peak_mb if pred else None
        row["prediction"] = pred.detail if pred else None
        memory = runners[row["name"]].memory
        hot = memory.run.hot_file_bytes
        row["anon_mb"], row["file_mb"] = (
            round(memory.usage.anon_bytes / MIB, 1),
            round(memory.usage.file_bytes / MIB, 1),
        )
        row["hot_file_mb"] = round(hot / MIB, 1) if hot is not None else None  # the file-backed part that counts
        t = trend(list(memory.trend_points), idle=False)
        row["trend_mb_per_min"] = t.slope_mb_per_min
        row["time_to_next_threshold_s"] = time_to_next_threshold(snap, cfg, t.slope_mb_per_min)
    return out


def gpu_section(limits: GpuLimits) -> dict[str, Any]:
    """The GPU's share of unified memory, where the OS gives it: the ceiling a GPU-resident
    model (a component with `gpu = true`) cannot exceed."""
    return {
        "metal_working_set_mb": _mb(limits.metal_working_set_bytes),
        "wired_limit_mb": _mb(limits.wired_limit_bytes),
        "ceiling_mb": _mb(limits.ceiling_bytes),
        "source": "iogpu.wired_limit_mb"
        if limits.wired_limit_bytes
        else "Metal recommendedMaxWorkingSetSize"
        if limits.metal_working_set_bytes
        else None,
    }


def with_gpu(explained: dict[str, Any], limits: GpuLimits, runners: Mapping[str, Runner]) -> dict[str, Any]:
    """`explain` or `report` with the GPU's ceiling, and each GPU-resident candidate marked with it."""
    explained["gpu"] = gpu_section(limits)
    if limits.ceiling_bytes is not None:
        for row in explained.get("candidates", ()):
            if runners[row["name"]].spec.gpu:
                row["gpu_ceiling_mb"] = explained["gpu"]["ceiling_mb"]
    return explained


def _mb(value: int | None) -> float | None:
    return round(value / MIB, 1) if value is not None else None


def supervisor_about(started_at: float, config: str, runtime_dir: str, stopping: bool) -> dict[str, Any]:
    """The `status` reply's `supervisor` part: who and how long, and how big."""
    return {
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - started_at, 1),
        "rss_mb": round(procs.own_rss_bytes() / MIB, 1),
        "config": config,
        "runtime_dir": runtime_dir,
        "stopping": stopping,
    }


def status(
    supervisor: dict[str, Any], components: list[ComponentStatus], memory: dict[str, Any], warnings: list[str]
) -> dict[str, Any]:
    """The `status` reply: the supervisor, the memory summary, the warnings, a row per component."""
    return {
        "supervisor": supervisor,
        "stack_rss_mb": round(sum(c.rss_mb for c in components), 1),
        **memory,
        "warnings": warnings,
        "components": components,
    }


def component_rows(statuses: list[ComponentStatus], runners: Mapping[str, Runner]) -> list[dict[str, Any]]:
    """The `components` reply's rows: each status with how the component is configured."""
    rows = []
    for row in statuses:
        runner = runners[row.name]
        spec = runner.spec
        rows.append(
            {
                **{f: getattr(row, f) for f in row.__struct_fields__},
                "command": resolve_command((runner.endpoint.spec if runner.endpoint else spec).command),
                "cwd": spec.cwd,
                "after": spec.after,
                "restart": spec.restart.value,
                "stop_signal": spec.stop_signal,
                "stop_grace_s": spec.stop_grace_s,
                "trim_signal": spec.trim_signal,
                "trim": spec.trim.http if spec.trim is not None and spec.trim.http is not None else spec.trim_signal,
                "unload": [a.http for a in unload_actions(spec)],
                "alive": _probe_text(spec.alive.http, spec.alive.exec) if spec.alive else None,
                "url": runner.endpoint.url if runner.endpoint is not None else None,
                "log_file": str(runner.log_path),
            }
        )
    return rows


def _probe_text(http: str | None, command: list[str] | None) -> str:
    return http if http is not None else " ".join(command or [])
