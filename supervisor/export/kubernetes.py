"""The stack as Kubernetes manifests (`ironcliw export kubernetes`): pure, from the config
and each component's prediction (the same number admission uses).

- A PriorityClass per Ironcliw priority; LOW never preempts (`preemptionPolicy: Never`).
- Per component a Deployment of 1 replica: its command and env in the given image, its
  `cwd` as `workingDir` (the image holds the directory above the config file's at
  `image_root`), `requests.memory` = the predicted peak, `limits.memory` = requests for
  CRITICAL (Guaranteed QoS) and LIMIT_HEADROOM above for the others; probes from `ready`
  and `alive`; `stop_grace_s` as the termination grace; a Service when it has a port.
- `after` becomes init containers that wait for the dependency's Service.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..config import ComponentSpec, Config
from ..endpoints import uses_port_macro, with_port
from ..errors import ConfigError
from ..model import Priority
from ..predictor import Prediction
from ..probespec import split_target
from .yamltext import Commented

CLUSTER_PORT = 8080  # what `${PORT}` becomes in a pod: each pod has its own network namespace
LIMIT_HEADROOM = 1.25  # limits above requests for non-CRITICAL (Burstable QoS: evicted before Guaranteed)
PRIORITY_VALUES = {Priority.CRITICAL: 1_000_000, Priority.HIGH: 100_000, Priority.MEDIUM: 10_000, Priority.LOW: 1_000}
WAIT_IMAGE = "busybox:1.36"  # the init containers that wait for a dependency's Service
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_PART = "app.kubernetes.io/part-of"


class Options(msgspec.Struct, frozen=True):
    image: str = "ironcliw-stack:latest"
    namespace: str = "ironcliw"
    image_root: str = "/app"  # where the image holds the directory above the config file's


def object_name(component: str) -> str:
    """A DNS-1123 label for a component's objects: lower case, `_` and `.` as `-`."""
    return component.lower().replace("_", "-").replace(".", "-").strip("-")[:63].strip("-")


def priority_class(priority: Priority) -> str:
    return f"ironcliw-{priority.value.lower()}"


def priority_classes() -> list[dict[str, Any]]:
    classes = []
    for priority, value in PRIORITY_VALUES.items():
        body: dict[str, Any] = {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": priority_class(priority), "labels": {LABEL_PART: "ironcliw"}},
            "value": value,
            "globalDefault": False,
            "description": f"Ironcliw {priority.value}: kubelet evicts lower classes first under node memory pressure",
        }
        if priority is Priority.LOW:  # waits for room instead of evicting others (Ironcliw's LOW never makes room)
            body["preemptionPolicy"] = "Never"
        classes.append(body)
    return classes


def check_exportable(config: Config, options: Options) -> None:
    """What a cluster cannot run, as config errors naming the field (the CLI exits 2)."""
    seen: dict[str, str] = {}
    root = posixpath.dirname(config.base_dir)
    for name, spec in config.components.items():
        at = f"$.components.{name}"
        label = object_name(name)
        if not DNS_LABEL.match(label) or label in seen:
            taken = f", taken by {seen[label]!r}" if label in seen else ""
            raise ConfigError(config.source, at, f"a name that is a distinct DNS label in a cluster ({label!r}{taken})")
        seen[label] = name
        if spec.command[0].startswith("<"):
            raise ConfigError(config.source, f"{at}.command", "a command: an in-process or adopted component has none")
        cwd = spec.cwd or config.base_dir
        if posixpath.relpath(cwd, root).startswith(".."):
            raise ConfigError(
                config.source, f"{at}.cwd", f"a directory under {root!r} (the image holds it at {options.image_root})"
            )


def manifests(config: Config, predictions: dict[str, Prediction], options: Options) -> list[Any]:
    """Every object: the priority classes, then per component its Deployment and Service."""
    check_exportable(config, options)
    out: list[Any] = list(priority_classes())
    for name in config.order:
        spec = cluster_spec(config.components[name])
        out.append(deployment(config, spec, predictions[name], options))
        port = service_port(spec)
        if port is not None:
            out.append(service(spec, port, options))
    return out


def cluster_spec(spec: ComponentSpec) -> ComponentSpec:
    """`${PORT}` as the pod's fixed port."""
    return with_port(spec, spec.port or CLUSTER_PORT) if uses_port_macro(spec) or spec.port else spec


def service_port(spec: ComponentSpec) -> int | None:
    return spec.port or spec.ready.port


def deployment(config: Config, spec: ComponentSpec, pred: Prediction, options: Options) -> Any:
    assert spec.name is not None
    label = object_name(spec.name)
    labels = {"app.kubernetes.io/name": label, LABEL_PART: "ironcliw"}
    pod: dict[str, Any] = {"priorityClassName": priority_class(spec.priority)}
    waits = init_waits(config, spec)
    if waits:
        pod["initContainers"] = Commented(
            waits, "`after` has no equivalent: these wait until each dependency's Service accepts connections"
        )
    portless = [dep for dep in spec.after if service_port(cluster_spec(config.components[dep])) is None]
    note = f"after {', '.join(portless)}: no port, so no Service to wait for; it starts at once" if portless else ""
    pod["containers"] = Commented([container(config, spec, pred, options)], *([note] if note else []))
    pod["terminationGracePeriodSeconds"] = Commented(
        math.ceil(spec.stop_grace_s), f"stop_grace_s = {spec.stop_grace_s:g}: SIGTERM, then SIGKILL"
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": label, "namespace": options.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": label}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def container(config: Config, spec: ComponentSpec, pred: Prediction, options: Options) -> dict[str, Any]:
    assert spec.name is not None
    relative = posixpath.relpath(spec.cwd or config.base_dir, posixpath.dirname(config.base_dir))
    workdir = posixpath.normpath(posixpath.join(options.image_root, relative))
    env = [{"name": "IRONCLIW_COMPONENT", "value": spec.name}] + [{"name": k, "value": v} for k, v in spec.env.items()]
    body: dict[str, Any] = {
        "name": object_name(spec.name),
        "image": options.image,
        "command": list(spec.command),
        "workingDir": workdir,
        "env": env,
        "resources": resources(spec, pred),
    }
    port = service_port(spec)
    if port is not None:
        body["ports"] = [{"containerPort": port, "name": "main"}]
    body.update(probes(spec))
    if spec.stop_signal != "SIGTERM":
        body["lifecycle"] = Commented(
            {"preStop": {"exec": {"command": ["/bin/sh", "-c", f"kill -{spec.stop_signal.removeprefix('SIG')} 1"]}}},
            f"Kubernetes stops with SIGTERM; stop_signal = {spec.stop_signal} is sent first by this hook"
            " (or set STOPSIGNAL in the image)",
        )
    return body


def resources(spec: ComponentSpec, pred: Prediction) -> Any:
    request = max(1, math.ceil(pred.peak_mb))
    limit = request if spec.priority is Priority.CRITICAL else math.ceil(request * LIMIT_HEADROOM)
    qos = "Guaranteed QoS: limit = request" if limit == request else f"limit {LIMIT_HEADROOM:g} x request"
    return Commented(
        {"requests": {"memory": f"{request}Mi"}, "limits": {"memory": f"{limit}Mi"}},
        f"request: the predicted peak, {pred.peak_mb:.0f} MB ({pred.basis}: {pred.detail})",
        f"{qos} ({spec.priority.value})",
    )


def probes(spec: ComponentSpec) -> dict[str, Any]:
    ready, out = spec.ready, dict[str, Any]()
    timeout = max(1, math.ceil(ready.timeout_s))
    if ready.http is not None:
        check: dict[str, Any] = {"httpGet": http_get(ready.http, spec.port)}
        out["startupProbe"] = {**check, "periodSeconds": 1, "failureThreshold": timeout}
        out["readinessProbe"] = {**check, "periodSeconds": 10}
    elif ready.port is not None:
        check = {"tcpSocket": {"port": ready.port}}
        out["startupProbe"] = {**check, "periodSeconds": 1, "failureThreshold": timeout}
        out["readinessProbe"] = {**check, "periodSeconds": 10}
    elif ready.log_pattern is not None:
        out["readinessProbe"] = Commented(
            {"exec": {"command": ["true"]}, "initialDelaySeconds": timeout},
            f"ready = a log line matching {ready.log_pattern!r}: no probe can read a container's log,",
            "so it counts as ready after ready.timeout_s",
        )
    else:
        out["readinessProbe"] = Commented(
            {"exec": {"command": ["true"]}, "initialDelaySeconds": max(1, math.ceil(ready.effective_alive_s))},
            "ready = alive for alive_s",
        )
    alive = spec.alive
    if alive is not None:
        action = {"httpGet": http_get(alive.http, spec.port)} if alive.http else {"exec": {"command": alive.exec}}
        out["livenessProbe"] = {
            **action,
            "periodSeconds": max(1, math.ceil(alive.every_s)),
            "timeoutSeconds": max(1, math.ceil(alive.timeout_s)),
            "failureThreshold": alive.failures,
        }
    return out


def http_get(text: str, port: int | None) -> dict[str, Any]:
    """An HTTP probe target as httpGet: a path on its own port, or a loopback URL's path and port."""
    target = split_target(text, "GET")[1]
    if target.startswith("/"):
        return {"path": target, "port": port or CLUSTER_PORT}
    url = urlsplit(target)
    return {"path": (url.path or "/") + (f"?{url.query}" if url.query else ""), "port": url.port or 80}


def init_waits(config: Config, spec: ComponentSpec) -> list[dict[str, Any]]:
    waits = []
    for dep in spec.after:
        port = service_port(cluster_spec(config.components[dep]))
        if port is None:
            continue  # no Service to wait for: noted on the Deployment's comment
        host = object_name(dep)
        waits.append(
            {
                "name": f"wait-for-{host}"[:63],
                "image": WAIT_IMAGE,
                "command": ["/bin/sh", "-c", f"until nc -z {host} {port}; do sleep 1; done"],
            }
        )
    return waits


def service(spec: ComponentSpec, port: int, options: Options) -> dict[str, Any]:
    assert spec.name is not None
    label = object_name(spec.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": label, "namespace": options.namespace, "labels": {LABEL_PART: "ironcliw"}},
        "spec": {
            "selector": {"app.kubernetes.io/name": label},
            "ports": [{"name": "main", "port": port, "targetPort": port}],
        },
    }
