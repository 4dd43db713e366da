"""`ironcliw export kubernetes`: manifests that validate offline against the official schemas
(kubernetes-validate bundles them), sized by the predictions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from supervisor.history import History
from supervisor.model import RunRecord
from supervisor.predictor import predict
from tests.helpers import REPO

EVERY_KIND = """
[components.db]
command = ["python", "-m", "db", "--port", "5432"]
priority = "CRITICAL"
ready = { port = 5432, timeout_s = 20 }
stop_signal = "SIGINT"
stop_grace_s = 12.5

[components.llm]
command = ["llama-server", "--port", "${PORT}"]
priority = "HIGH"
after = ["db", "worker"]
estimated_mb = 900
ready = { http = "/health", timeout_s = 120 }
alive = { http = "/health", every_s = 10, timeout_s = 5, failures = 3 }

[components.worker]
command = ["python", "-m", "worker"]
priority = "MEDIUM"
env = { MODE = "batch", "on" = "yes" }
ready = { log_pattern = "ready" }
alive = { exec = ["python", "-c", "pass"], every_s = 30 }

[components.job_runner]
command = ["sleep", "600"]
priority = "LOW"
ready = { alive_s = 2 }
"""


def export(config: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IRONCLIW_STATE_DIR": str(state), "IRONCLIW_RUNTIME_DIR": str(state / "run")}
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "-c", str(config), "export", "kubernetes", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate_all(docs: list[dict[str, Any]]) -> None:
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the schema's complaint


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_the_default_stack_validates(tmp_path: Path) -> None:
    done = export(REPO / "configs" / "ironcliw.toml", tmp_path)
    assert done.returncode == 0, done.stderr
    docs = objects(done.stdout)
    validate_all(docs)
    assert set(by_kind(docs, "Deployment")) == {"chatbot", "nlp-engine", "voice-engine"}
    assert by_kind(docs, "Service") == {}  # none of them has a port
    assert container(docs, "nlp-engine")["workingDir"] == "/app"  # cwd ".." of configs/: the checkout's root


def test_every_readiness_kind_maps_to_probes_and_validates(tmp_path: Path) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(EVERY_KIND)
    done = export(config, tmp_path, "--namespace", "ai", "--image", "registry.local/stack:1")
    assert done.returncode == 0, done.stderr
    docs = objects(done.stdout)
    validate_all(docs)
    db, llm, worker, job = (container(docs, n) for n in ("db", "llm", "worker", "job-runner"))
    assert db["startupProbe"]["tcpSocket"] == {"port": 5432} and db["startupProbe"]["failureThreshold"] == 20
    assert db["lifecycle"]["preStop"]["exec"]["command"][-1] == "kill -INT 1"
    assert llm["startupProbe"]["httpGet"] == {"path": "/health", "port": 8080}  # ${PORT} in a pod
    assert llm["command"] == ["llama-server", "--port", "8080"]
    assert llm["livenessProbe"]["httpGet"]["path"] == "/health" and llm["livenessProbe"]["failureThreshold"] == 3
    assert worker["readinessProbe"]["initialDelaySeconds"] == 30  # a log line: no probe, the ready timeout
    assert worker["livenessProbe"]["exec"]["command"] == ["python", "-c", "pass"]
    assert {"name": "on", "value": "yes"} in worker["env"] and {"name": "MODE", "value": "batch"} in worker["env"]
    assert job["readinessProbe"]["initialDelaySeconds"] == 2
    assert container(docs, "db")["image"] == "registry.local/stack:1"
    deployments = by_kind(docs, "Deployment")
    assert all(d["metadata"]["namespace"] == "ai" for d in deployments.values())
    assert deployments["db"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 13
    # after: wait for db's Service; worker has no port, so nothing to wait for (said in a comment)
    waits = deployments["llm"]["spec"]["template"]["spec"]["initContainers"]
    assert [w["name"] for w in waits] == ["wait-for-db"] and "nc -z db 5432" in waits[0]["command"][-1]
    assert "after worker: no port, so no Service to wait for" in done.stdout
    # a Service for each component with a port, none for the others
    assert set(by_kind(docs, "Service")) == {"db", "llm"}
    assert by_kind(docs, "Service")["llm"]["spec"]["ports"][0]["port"] == 8080


def test_priorities_map_in_order(tmp_path: Path) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(EVERY_KIND)
    docs = objects(export(config, tmp_path).stdout)
    classes = by_kind(docs, "PriorityClass")
    values = [classes[f"ironcliw-{p}"]["value"] for p in ("critical", "high", "medium", "low")]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    assert classes["ironcliw-low"]["preemptionPolicy"] == "Never"
    assert "preemptionPolicy" not in classes["ironcliw-critical"]
    expected = {"db": "critical", "llm": "high", "worker": "medium", "job-runner": "low"}
    for name, deployment in by_kind(docs, "Deployment").items():
        assert deployment["spec"]["template"]["spec"]["priorityClassName"] == f"ironcliw-{expected[name]}"


def test_requests_follow_the_predictions(tmp_path: Path) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(EVERY_KIND)
    history = History(str(tmp_path))
    runs = [RunRecord(started_unix=1e9 + i, peak_mb=300 + 10 * i, time_to_ready_s=1.0) for i in range(6)]
    for run in runs:
        history.append("worker", run)
    history.save()
    done = export(config, tmp_path)
    docs = objects(done.stdout)
    predicted = predict(runs, 100.0, None).peak_mb
    worker = container(docs, "worker")["resources"]
    assert worker["requests"]["memory"] == f"{int(-(-predicted // 1))}Mi"
    assert int(worker["limits"]["memory"].removesuffix("Mi")) > int(worker["requests"]["memory"].removesuffix("Mi"))
    assert f"the predicted peak, {predicted:.0f} MB (history" in done.stdout
    db = container(docs, "db")["resources"]  # no history: its estimate; CRITICAL: Guaranteed
    assert db["requests"] == db["limits"] and "estimate" in done.stdout
    llm = container(docs, "llm")["resources"]
    assert int(llm["requests"]["memory"].removesuffix("Mi")) >= 900


def test_output_directory_and_a_corrupt_history_left_as_it_is(tmp_path: Path) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(EVERY_KIND)
    (tmp_path / "history.json").write_text("{not json")
    done = export(config, tmp_path, "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "deployment-llm.yaml" in files and "priorityclass-ironcliw-low.yaml" in files and len(files) == 10
    validate_all([yaml.safe_load((tmp_path / "out" / f).read_text()) for f in files])
    assert (tmp_path / "history.json").read_text() == "{not json"  # export changes nothing


@pytest.mark.parametrize(
    "text, field",
    [
        ('[components.a_b]\ncommand = ["x"]\n[components."a.b"]\ncommand = ["y"]', "$.components.a.b"),
        ('[components.far]\ncommand = ["x"]\ncwd = "/"', "$.components.far.cwd"),
    ],
)
def test_a_stack_that_cannot_be_exported_exits_2_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "sub" / "stack.toml"
    config.parent.mkdir()
    config.write_text(text)
    done = export(config, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert f"at {field}" in done.stderr, done.stderr
