"""`/metrics` in the Prometheus text format, collected from the supervisor at scrape time
(a registry per app, no module-level state)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..core import Supervisor
from ..model import MIB, ComponentState, MemoryState
from ..procs import own_rss_bytes


class SupervisorCollector:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor

    def collect(self) -> Iterator[Metric]:
        yield from self._components()
        yield from self._memory()
        yield from self._supervisor()

    def _components(self) -> Iterator[Metric]:
        sup = self.sup
        rss = GaugeMetricFamily(
            "ironcliw_component_rss_bytes",
            "Resident memory of the component's whole process tree",
            labels=["component", "priority"],
        )
        state = GaugeMetricFamily(
            "ironcliw_component_state", "1 for the component's current state", labels=["component", "state"]
        )
        restarts = CounterMetricFamily("ironcliw_component_restarts", "Automatic restarts", labels=["component"])
        predicted = GaugeMetricFamily(
            "ironcliw_component_predicted_peak_bytes", "Predicted peak of the next load", labels=["component"]
        )
        for name, runner in sup.runners.items():
            rss.add_metric([name, runner.spec.priority.value], runner.memory.usage.rss_bytes if runner.child else 0)
            for component_state in ComponentState:
                state.add_metric([name, component_state.value], 1.0 if runner.state is component_state else 0.0)
            restarts.add_metric([name], runner.restarts)
            predicted.add_metric([name], sup.admission.prediction(name).peak_mb * MIB)
        yield from (rss, state, restarts, predicted)

    def _memory(self) -> Iterator[Metric]:
        snap = self.sup.memory.current()
        mem_state = GaugeMetricFamily("ironcliw_memory_state", "1 for the current memory state", labels=["state"])
        for s in MemoryState:
            mem_state.add_metric([s.value], 1.0 if snap.state is s else 0.0)
        yield mem_state
        yield GaugeMetricFamily(
            "ironcliw_memory_used_ratio",
            "Used memory as the supervisor judges it (budget mode included)",
            value=snap.percent_used / 100,
        )
        yield GaugeMetricFamily("ironcliw_memory_available_bytes", "Room before 100 %", value=snap.available_mb * MIB)
        yield GaugeMetricFamily("ironcliw_stack_rss_bytes", "Sum over every component tree", value=snap.stack_bytes)

    def _supervisor(self) -> Iterator[Metric]:
        monitor = self.sup.memory
        sampler = monitor.sampler
        yield GaugeMetricFamily(
            "ironcliw_supervisor_rss_bytes", "The supervisor's own resident memory", value=own_rss_bytes()
        )
        yield GaugeMetricFamily(
            "ironcliw_sample_duration_seconds", "How long the last memory sample took", value=sampler.last_read_s
        )
        yield CounterMetricFamily(
            "ironcliw_samples",
            "Memory samples taken (the loop's and those requests asked for)",
            value=sampler.readings_taken,
        )
        yield CounterMetricFamily(
            "ironcliw_monitor_samples",
            "Memory samples taken on the monitor's own schedule (not asked for by a request)",
            value=sampler.readings_taken - sampler.readings_asked,
        )
        actions = CounterMetricFamily(
            "ironcliw_actions", "Policy actions by kind and outcome", labels=["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(monitor.enforcer.counts.items()):
            actions.add_metric([kind, outcome], n)
        yield actions


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def make_registry(supervisor: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor))
    return registry
