"""Admission: whether a load fits before WARNING, by its predicted peak, and what to unload
(lower priorities only) to make room for it. Keeps the predictions, cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from . import platform
from .config import ComponentSpec
from .errors import Refused, UnknownComponent
from .history import History
from .model import MIB, GpuLimits, RunRecord, Snapshot
from .monitor import MemoryMonitor
from .policy import plan_make_room
from .predictor import COVERAGE, Prediction, predict
from .profiles import history_key, order, with_profile
from .runner import Runner

log = structlog.get_logger("ironcliw.admission")

PREDICTION_TTL_S = 5.0  # input files are stat()ed at most this often


class Admission:
    def __init__(
        self,
        runners: Mapping[str, Runner],
        history: History,
        memory: MemoryMonitor,
        fresh_snapshot: Callable[[], Snapshot],
        gpu: GpuLimits | None = None,
    ) -> None:
        self.runners = runners
        # The GPU's ceiling is read once: it changes only with a sysctl the user sets.
        self.gpu = gpu if gpu is not None else platform.read_gpu_limits()
        self.history = history
        self.memory = memory
        self._fresh_snapshot = fresh_snapshot
        self._predictions: dict[str, tuple[float, Prediction]] = {}

    def _runner(self, name: str) -> Runner:
        try:
            return self.runners[name]
        except KeyError:
            raise UnknownComponent(name) from None

    # --- predictions ---------------------------------------------------------------------

    def prediction(self, name: str) -> Prediction:
        """For the profile it runs (or will next run) in."""
        return self.prediction_in(name, self._runner(name).profile)

    def prediction_in(self, name: str, profile: str | None) -> Prediction:
        """Cached for PREDICTION_TTL_S (the policy asks on every decision, up to 50 times a
        second under pressure); a finished run invalidates it at once (`forget`)."""
        key = history_key(name, profile)
        cached = self._predictions.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < PREDICTION_TTL_S:
            return cached[1]
        spec, coverage = with_profile(self._runner(name).spec, profile), self.memory.cfg.prediction_coverage
        pred = predict_component(spec, self.history.runs(key), coverage)
        self._predictions[key] = (now, pred)
        return pred

    def run_ended(self, name: str, record: RunRecord) -> None:
        """A run's record joins the history; the next prediction is made afresh."""
        self.history.append(name, record)
        self._predictions.pop(name, None)
        log.info(
            "run_recorded",
            component=name,
            peak_mb=record.peak_mb,
            peak_source=record.peak_source,
            predicted_mb=record.predicted_mb,
            time_to_ready_s=record.time_to_ready_s,
        )

    def forget(self, name: str) -> int:
        """Clear the component's history (every profile's); the next prediction rests on its estimate."""
        forgotten = 0
        for profile in order(self._runner(name).spec):
            forgotten += self.history.forget(history_key(name, profile))
            self._predictions.pop(history_key(name, profile), None)
        log.info("history_forgotten", component=name, runs=forgotten)
        return forgotten

    def time_to_ready(self, name: str) -> float:
        """The median time to READY of the recorded runs (1 s without any)."""
        key = history_key(name, self._runner(name).profile)
        times = [r.time_to_ready_s for r in self.history.runs(key) if r.time_to_ready_s is not None]
        return sorted(times)[len(times) // 2] if times else 1.0

    # --- admission -----------------------------------------------------------------------

    def can_load(self, name: str) -> tuple[bool, str, Prediction, int]:
        """(ok, reason with the numbers, the prediction, bytes free before WARNING)."""
        runner = self._runner(name)
        pred = self.prediction(name)
        room = self.memory.headroom_bytes(self._fresh_snapshot())
        if runner.child is not None:
            return True, f"{name} is already loaded ({runner.state.value})", pred, room
        beyond_gpu = self.gpu_refusal(name)
        if beyond_gpu is not None:
            return False, beyond_gpu, pred, room
        needs = f"{name} needs ~{size(pred.peak_mb * MIB)} ({evidence(pred)})"
        reason = f"{needs}, {size(max(room, 0))} free before WARNING"
        return pred.peak_mb * MIB <= room, reason, pred, room

    def admit(self, name: str, make_room: bool, by_owner: bool = False) -> tuple[Prediction, int] | None:
        """None when the load fits now; (prediction, room) when it fits once `make_room` has
        unloaded lower priorities; Refused, with the numbers, otherwise. An in-process
        component is loaded only `by_owner`, the program holding its object."""
        runner = self._runner(name)
        if runner.in_process and runner.child is None and not by_owner:
            raise Refused(
                f"{name} has no command: its owner loads it (Python API: load_component({name!r}, obj)),"
                " or register it again with a command or a pid"
            )
        ok, reason, pred, room = self.can_load(name)
        if ok:
            return None
        if self.gpu_refusal(name) is not None:
            raise Refused(reason)  # above the GPU's ceiling: no unloading can help
        if not make_room:
            raise Refused(reason + " (--make-room unloads lower priorities)")
        return pred, room

    def gpu_refusal(self, name: str) -> str | None:
        """Why a GPU-resident component cannot load at all, whatever is unloaded: its predicted
        peak is above what the OS lets the GPU hold (None when it fits or nobody says)."""
        return gpu_refusal(name, self._runner(name).spec.gpu, self.prediction(name), self.gpu)

    def choose_profile(self, name: str, make_room: bool) -> str | None:
        """The most preferred profile that fits now, or once lower priorities are unloaded
        when `make_room`; its own table (None) when none does (admit then refuses)."""
        runner = self._runner(name)
        if not runner.spec.profiles or runner.child is not None:
            return runner.profile
        room = self.memory.headroom_bytes(self._fresh_snapshot())
        for profile in order(runner.spec):
            pred = self.prediction_in(name, profile)
            if gpu_refusal(name, runner.spec.gpu, pred, self.gpu) is not None:
                continue
            if pred.peak_mb * MIB <= room:
                return profile
            if make_room and self._room_plan(name, pred, room)[1] >= int(pred.peak_mb * MIB) - room:
                return profile
        return None

    def apply_profile(self, name: str, make_room: bool) -> None:
        """Before a load: run it in the profile `choose_profile` picks, and say so when it changes."""
        runner = self._runner(name)
        profile = self.choose_profile(name, make_room)
        if profile != runner.profile and runner.child is None:
            pred = self.prediction_in(name, profile)
            log.info("profile_chosen", component=name, profile=profile, predicted_mb=pred.peak_mb)
            self.memory.bus.publish("action", component=name, kind="PROFILE", outcome=profile or "default")
            runner.profile = profile

    def _room_plan(self, name: str, pred: Prediction, room: int) -> tuple[list[str], int]:
        """Which lower priorities (never equal or higher) to unload for the load, and what that frees."""
        target = self._runner(name).spec.priority
        candidates = [
            (r.name, r.spec.priority, r.memory.usage.memory_bytes, self.time_to_ready(r.name), r.last_used)
            for r in self.runners.values()
            if r.child is not None and r.spec.priority.rank > target.rank and r.state.is_running
        ]
        return plan_make_room(int(pred.peak_mb * MIB) - room, candidates)

    async def make_room(self, name: str, pred: Prediction, room: int) -> None:
        """Unload lower-priority components (never equal or higher) until the load fits."""
        needs = f"needs ~{size(pred.peak_mb * MIB)}"
        shortfall = int(pred.peak_mb * MIB) - room
        chosen, freed = self._room_plan(name, pred, room)
        if freed < shortfall:
            raise Refused(
                f"{name} {needs}, {size(max(room, 0))} free before WARNING; unloading every lower priority"
                f" ({', '.join(chosen) or 'nothing'}) would free only {size(freed)}"
            )
        log.info(
            "making_room",
            component=name,
            unload=chosen,
            freed_mb=round(freed / MIB, 1),
            shortfall_mb=round(shortfall / MIB, 1),
        )
        for victim in chosen:
            runner = self.runners[victim]
            await runner.stop(f"unloaded to make room for {name} ({needs})")
            runner.unloaded_by_policy = True  # comes back when it fits again


def evidence(pred: Prediction) -> str:
    runs = f"{pred.runs} run{'s' if pred.runs != 1 else ''}"
    return f"predicted from {runs}" if pred.runs else "its estimate, no history yet"


def gpu_refusal(name: str, gpu: bool, pred: Prediction, limits: GpuLimits) -> str | None:
    ceiling = limits.ceiling_bytes
    if not gpu or ceiling is None or pred.peak_mb * MIB <= ceiling:
        return None
    source = "iogpu.wired_limit_mb" if limits.wired_limit_bytes else "Metal's recommended working set"
    return (
        f"{name} needs ~{size(pred.peak_mb * MIB)} ({evidence(pred)}), more than the GPU may hold:"
        f" {size(ceiling)} ({source}); unloading others cannot help"
    )


def predict_component(spec: ComponentSpec, history: list[RunRecord], coverage: float = COVERAGE) -> Prediction:
    """Its predicted peak from its recorded runs, its estimate and its inputs' size."""
    # Runs that never became ready (crash loops, bad configs) say little about a load's need;
    # a run that ended by itself with status 0 is a whole run (a batch job) whatever its readiness.
    runs = [r for r in history if r.time_to_ready_s is not None or r.clean_exit]
    return predict(runs, spec.estimated_mb, inputs_bytes(spec), coverage)


def inputs_bytes(spec: ComponentSpec) -> int | None:
    """The size of a component's declared inputs (a model file, an index, or a directory such
    as an MLX or Hugging Face model's), for prediction; `~` is the user's home."""
    if not spec.inputs:
        return None
    total = 0
    for path in spec.inputs:
        try:
            total += input_size(Path(spec.cwd or ".") / Path(path).expanduser())
        except OSError:
            log.warning("input_missing", component=spec.name, path=path)
    return total


MAX_INPUT_FILES = 10_000  # a directory input is summed up to this many files (a model has a few dozen)


def input_size(path: Path) -> int:
    """A file's size (through symlinks: a Hugging Face snapshot links into its blobs), or the
    sum of the files under a directory."""
    if not path.is_dir():
        return path.stat().st_size
    total, seen = 0, 0
    for root, _, files in os.walk(path):
        for name in files:
            seen += 1
            if seen > MAX_INPUT_FILES:
                return total
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:  # a dangling link: not part of the model
                pass
    return total


def size(n_bytes: float) -> str:
    mb = n_bytes / MIB
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"
