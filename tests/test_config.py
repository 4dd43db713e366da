"""The config schema: every invalid file names the file, the field path and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor.config import load_config, parse_config, resolve_paths
from supervisor.errors import ConfigError
from supervisor.model import Priority, RestartMode
from tests.helpers import REPO

MINIMAL = '[components.a]\ncommand = ["python", "-c", "pass"]\n'

# (config text, field path, words the message must contain)
INVALID = [
    (
        '[components.a]\ncommand = ["x"]\npriority = "URGENT"',
        "$.components.a.priority",
        "one of CRITICAL, HIGH, MEDIUM, LOW",
    ),
    ('[components.a]\ncommand = ["x"]\nprioity = "LOW"', "$.components.a", "unknown key `prioity`"),
    ("[components.a]\ncommand = []", "$.components.a.command", "length >= 1"),
    ("[components.a]\npriority = 'LOW'", "$.components.a", "missing required field `command`"),
    ('[components.a]\ncommand = ["x"]\nestimated_mb = -5', "$.components.a.estimated_mb", ">= 0"),
    (
        '[components.a]\ncommand = ["x"]\nestimated_mb = "lots"',
        "$.components.a.estimated_mb",
        "expected `int`, got `str`",
    ),
    (
        '[components.a]\ncommand = ["x"]\nrestart = "sometimes"',
        "$.components.a.restart",
        "one of never, on-failure, always",
    ),
    ('[components.a]\ncommand = ["x"]\nafter = ["ghost"]', "$.components.a.after[0]", "unknown 'ghost'"),
    (
        '[components.a]\ncommand = ["x"]\nafter = ["b"]\n[components.b]\ncommand = ["y"]\nafter = ["a"]',
        "$.components.a.after",
        "no cycle",
    ),
    ('[components.a]\ncommand = ["x"]\nstop_signal = "SIGFOO"', "$.components.a.stop_signal", "a signal name"),
    ('[components.a]\ncommand = ["x"]\nready = { port = 80, alive_s = 1 }', "$.components.a.ready", "at most one of"),
    (
        '[components.a]\ncommand = ["x"]\nready = { log_pattern = "(" }',
        "$.components.a.ready.log_pattern",
        "regular expression",
    ),
    ("[memory]\nwarning_percent = 90\ncritical_percent = 85", "$.memory", "warning_percent < critical_percent"),
    ("[memory]\nbudget_mb = 0", "$.memory.budget_mb", ">= 1"),
    ("[memory]\nsample_interval_s = 0", "$.memory.sample_interval_s", "> 0"),
    ('[http]\nhost = "0.0.0.0"', "$.http.host", "loopback"),
    ("[memry]\nbudget_mb = 100", "$", "unknown key `memry`"),
    ('[components."bad name"]\ncommand = ["x"]', "$.components.bad name", "component name"),
    (
        '[components.a]\ncommand = ["x"]\nbackoff_initial_s = 10\nbackoff_max_s = 1',
        "$.components.a.backoff_max_s",
        "at least backoff_initial_s",
    ),
    ("[components.a\ncommand = 1", "", "not valid TOML"),
]

# Configs that passed `check` and then crashed `up`, or were accepted and would hurt.
C = '[components.a]\ncommand = ["x"]\n'
HARMFUL = [
    (C + 'env = { A = "x\\u0000y" }', "$.components.a.env.A", "without a NUL"),
    (C + 'env = { "A=B" = "x" }', "$.components.a.env", "without '='"),
    (C + 'env = { "" = "x" }', "$.components.a.env", "without '='"),
    (C + 'env = { "A\\u0000" = "x" }', "$.components.a.env", "NUL"),
    ('[components.a]\ncommand = ["x\\u0000"]', "$.components.a.command[0]", "without a NUL"),
    ('[components.a]\ncommand = ["x", "a\\u0000b"]', "$.components.a.command[1]", "without a NUL"),
    (C + 'inputs = ["m\\u0000.gguf"]', "$.components.a.inputs[0]", "without a NUL"),
    (C + 'cwd = "/no/such/dir/ironcliw"', "$.components.a.cwd", "an existing directory"),
    (C + 'cwd = "stack.toml"', "$.components.a.cwd", "an existing directory"),
    (C + 'trim_signal = "SIGKILL"', "$.components.a.trim_signal", "without ending or freezing"),
    (C + 'trim_signal = "SIGSTOP"', "$.components.a.trim_signal", "without ending or freezing"),
    (C + 'trim_signal = "SIGTERM"', "$.components.a.trim_signal", "without ending or freezing"),
    (C + 'trim_signal = "SIGINT"', "$.components.a.trim_signal", "without ending or freezing"),
    (C + 'trim_signal = "SIGQUIT"', "$.components.a.trim_signal", "without ending or freezing"),
    (
        C + 'stop_signal = "SIGUSR1"\ntrim_signal = "SIGUSR1"',
        "$.components.a.trim_signal",
        "without ending or freezing",
    ),
    (C + 'stop_signal = "SIGSTOP"', "$.components.a.stop_signal", "a signal name"),
    ("[memory]\nsample_interval_s = inf", "$.memory.sample_interval_s", "<= 3600"),
    ("[memory]\nsample_interval_s = nan", "$.memory.sample_interval_s", "> 0"),
    ("[memory]\nsample_interval_s = 7200", "$.memory.sample_interval_s", "<= 3600"),
    ("[memory]\nfast_interval_s = 1e9", "$.memory.fast_interval_s", "<= 3600"),
    ("[memory]\nbudget_mb = 99999999999", "$.memory.budget_mb", "<= 16777216"),
    ("[memory]\nmax_fill_rate_mb_s = inf", "$.memory.max_fill_rate_mb_s", "<= 16777216"),
    ("[memory]\nhold_s = 1e308", "$.memory.hold_s", "<= 86400"),
    ("[memory]\nmax_frozen_s = inf", "$.memory.max_frozen_s", "<= 86400"),
    ("[memory]\nidle_unload_s = -1", "$.memory.idle_unload_s", ">= 0"),
    ("[memory]\nrecovery_hold_s = -inf", "$.memory.recovery_hold_s", ">= 0"),
    (C + "estimated_mb = 1e23", "$.components.a.estimated_mb", "expected `int`, got `float`"),
    (C + "estimated_mb = 100000000000", "$.components.a.estimated_mb", "<= 16777216"),
    (C + "stop_grace_s = 1e308", "$.components.a.stop_grace_s", "<= 86400"),
    (C + "stop_grace_s = nan", "$.components.a.stop_grace_s", ">= 0"),
    (C + "backoff_max_s = inf", "$.components.a.backoff_max_s", "<= 86400"),
    (C + "restart_window_s = 1e12", "$.components.a.restart_window_s", "<= 86400"),
    (C + "max_restarts = 99999999999", "$.components.a.max_restarts", "<= 1000000"),
    (C + "ready = { timeout_s = inf }", "$.components.a.ready.timeout_s", "<= 86400"),
    (C + "ready = { alive_s = 1e99 }", "$.components.a.ready.alive_s", "<= 86400"),
    (C + "ready = { port = 70000 }", "$.components.a.ready.port", "<= 65535"),
    ("[supervisor]\nlog_max_bytes = 100", "$.supervisor.log_max_bytes", ">= 1024"),
    ("[supervisor]\nlog_backups = 1000", "$.supervisor.log_backups", "<= 100"),
    ("[http]\nport = -1", "$.http.port", ">= 0"),
    ("x = " + "[" * 5000 + "]" * 5000, "", "nested too deeply"),
    ("x = " + "{a = " * 5000 + "1" + "}" * 5000, "", "not valid TOML"),
]
INVALID += HARMFUL


@pytest.mark.parametrize("text, path, words", INVALID, ids=[i[1] + ":" + i[2][:20] for i in INVALID])
def test_invalid_config_names_file_path_and_expectation(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "stack.toml")
    err = info.value
    assert err.file == "stack.toml"
    assert err.path == path
    assert words in err.expected, err.expected
    assert str(err).startswith("stack.toml: ")


def test_defaults_and_resolution(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    (tmp_path / "sub").mkdir()
    cfg_file.write_text(MINIMAL + 'cwd = "sub"\n[components.b]\ncommand = ["y"]\nafter = ["a"]\npriority = "LOW"\n')
    config = load_config(cfg_file)
    a, b = config.components["a"], config.components["b"]
    assert (a.name, a.priority, a.restart, a.stop_signal) == ("a", Priority.MEDIUM, RestartMode.ON_FAILURE, "SIGTERM")
    assert a.cwd == str(tmp_path / "sub") and b.cwd == str(tmp_path)
    assert config.order == ["a", "b"]
    assert config.memory.warning_percent == 70 and config.memory.sample_interval_s == 2.0
    assert a.ready.effective_alive_s == 1.0


def test_start_order_follows_after() -> None:
    text = "".join(
        f'[components.{n}]\ncommand = ["x"]\nafter = {deps}\n'
        for n, deps in [("web", '["db", "cache"]'), ("db", "[]"), ("cache", '["db"]')]
    )
    assert parse_config(text, "f.toml").order == ["db", "cache", "web"]


def test_environment_moves_paths_and_wins_over_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[supervisor]\nruntime_dir = "rt"\n' + MINIMAL)
    config = load_config(cfg_file)
    from_file = resolve_paths(config, {}, 1000, "/home/u")
    assert from_file.runtime_dir == str(tmp_path / "rt")
    assert from_file.socket == str(tmp_path / "rt" / "control.sock")
    assert from_file.state_dir == "/home/u/.local/state/ironcliw"
    env = {"IRONCLIW_RUNTIME_DIR": "/tmp/x", "IRONCLIW_STATE_DIR": "/tmp/y"}
    moved = resolve_paths(config, env, 1000, "/home/u")
    assert (moved.runtime_dir, moved.state_dir, moved.log_dir, moved.socket) == (
        "/tmp/x",
        "/tmp/y",
        "/tmp/y/logs",
        "/tmp/x/control.sock",
    )


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.toml")


def test_default_config_is_valid() -> None:
    config = load_config(REPO / "configs" / "ironcliw.toml")
    assert set(config.components) == {"chatbot", "nlp_engine", "voice_engine"}
    assert config.components["chatbot"].priority is Priority.CRITICAL


def test_example_model_server_stacks_are_valid() -> None:
    """Each example in configs/ passes `check`, with `${PORT}` and its HTTP probes."""
    llama = load_config(REPO / "configs" / "llama-cpp.toml").components
    assert llama["llm"].ready.http == "/health" and llama["llm"].trim is not None
    assert llama["llm"].inputs == ["models/random.gguf"] and "${PORT}" in llama["llm"].command
    assert llama["llama-server"].autostart is False
    ollama = load_config(REPO / "configs" / "ollama.toml").components["ollama"]
    assert ollama.env["OLLAMA_HOST"] == "127.0.0.1:${PORT}"
    assert isinstance(ollama.unload, list) and all('"keep_alive": 0' in (a.body or "") for a in ollama.unload)
    mlx = load_config(REPO / "configs" / "mlx-lm.toml").components["mlx"]
    assert mlx.gpu and mlx.ready.http == "/v1/models" and mlx.inputs[0].startswith("~/")


@pytest.mark.parametrize(
    "text, code, stream_has",
    [
        (MINIMAL, 0, "OK, 1 component, start order: a"),
        ('[components.a]\ncommand = ["x"]\npriority = "URGENT"', 2, "at $.components.a.priority"),
        ("[memory]\nwarning_percent = 'high'", 2, "bad.toml: expected `float`, got `str` at $.memory.warning_percent"),
    ],
)
def test_check_command_exit_status(tmp_path: Path, text: str, code: int, stream_has: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(textwrap.dedent(text))
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "-c", str(cfg), "check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert proc.returncode == code, proc.stderr
    assert stream_has in (proc.stdout + proc.stderr)


@pytest.mark.parametrize("text, path, words", HARMFUL, ids=[f"{i}:{h[1]}" for i, h in enumerate(HARMFUL)])
def test_check_refuses_harmful_configs_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, path: str, words: str
) -> None:
    """`check` (the same parse `up` does) exits 2 with one line naming the file and field, never a traceback."""
    from supervisor.cli import main

    cfg = tmp_path / "stack.toml"
    cfg.write_text(text)
    assert main(["-c", str(cfg), "check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ironcliw: config error: {cfg}: ") and err.count("\n") == 1, err[:500]
    assert (f" at {path}" in err) if path else (" at $" not in err), err[:500]
    assert "Traceback" not in err


def test_nul_in_env_no_longer_reaches_up(tmp_path: Path) -> None:
    """The whole command: `up` with such a config exits 2 with the field, before starting anything."""
    cfg = tmp_path / "stack.toml"
    cfg.write_text(
        '[components.a]\ncommand = ["python", "-c", "pass"]\nenv = { A = "x\\u0000y" }\n[http]\nenabled = false\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "-c", str(cfg), "up"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={
            **os.environ,
            "IRONCLIW_RUNTIME_DIR": str(tmp_path / "run"),
            "IRONCLIW_STATE_DIR": str(tmp_path / "state"),
        },
    )
    assert proc.returncode == 2, proc.stderr
    assert "$.components.a.env.A" in proc.stderr and "Traceback" not in proc.stderr
