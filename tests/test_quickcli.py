"""`ironcliw status`'s quick path (supervisor/quickcli.py): the same table as the full CLI,
read off the same socket without msgspec, and the full CLI whenever it is not sure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from supervisor import quickcli
from supervisor.config import load_config, resolve_paths
from tests.helpers import REPO, SLEEPER, Stack

StackFactory = Callable[[str], Stack]


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63 - 1, -1, -32, -33, -128, -129,
        -32768, -32769, -(2**31) - 1, -(2**63), 0.5, -1.25e300, "", "x" * 31, "é" * 40, "y" * 300, "z" * 70000,
        [], [1, [2, [3]]], list(range(20)), list(range(70000)), {}, {"a": {"b": [None, 1.5]}},
        {f"k{i}": i for i in range(20)}, {f"k{i}": i for i in range(70000)},
    ],
)  # fmt: skip
def test_unpack_reads_what_msgspec_writes(value: object) -> None:
    data = msgspec.msgpack.encode(value)
    assert quickcli.unpack(data, 0) == (value, len(data))


def test_unpack_refuses_what_it_does_not_know() -> None:
    with pytest.raises(quickcli.Unexpected):
        quickcli.unpack(msgspec.msgpack.encode(b"bytes"), 0)  # bin: no reply carries it
    with pytest.raises(quickcli.Unexpected):
        quickcli.unpack(msgspec.msgpack.encode("abcdef")[:-2], 0)  # truncated


def test_anything_but_a_plain_status_goes_to_the_full_cli() -> None:
    for argv in (["status", "--json"], ["memory"], ["status", "--socket", "/x"], ["-c"], ["status", "status"], []):
        assert quickcli.run(argv) is None, argv
    config = REPO / "configs" / "ironcliw.toml"
    assert quickcli._config_of(["status", "-c", str(config)]) == str(config)
    assert quickcli._config_of([f"--config={config}", "status"]) == str(config)


def test_the_quick_status_prints_what_the_full_one_does(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.one]
        command = {SLEEPER}
        ready = {{ log_pattern = "ready" }}
        [components.two]
        command = {SLEEPER}
        autostart = false
        """
    )
    stack.up()
    stack.wait_state("one", "READY")
    quick = stack.cli("status")
    full = subprocess.run(
        [sys.executable, "-c", "import sys; from supervisor.cli import main; sys.exit(main(sys.argv[1:]))",
         "-c", str(stack.config), "status"],
        env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert quick.returncode == full.returncode == 0
    strip = lambda text: [line.split() for line in text.splitlines()]  # noqa: E731 - uptimes may differ by a second
    assert [r[:3] for r in strip(quick.stdout)[1:]] == [r[:3] for r in strip(full.stdout)[1:]]
    assert quick.stdout.splitlines()[1] == full.stdout.splitlines()[1]  # the header
    # A config that moves the socket is the full CLI's to read.
    stack.config.write_text(stack.config.read_text() + '\n[supervisor]\nsocket = "elsewhere.sock"\n')
    moved = stack.cli("status")
    assert moved.returncode == 3 and "elsewhere.sock" in moved.stderr


@pytest.mark.parametrize(
    ("supervisor_table", "environ"),
    [
        ("", {}),
        ("# the socket and runtime_dir default to per-user dirs\n", {}),
        ('[supervisor]\nsocket = "rel/ctl.sock"\n', {}),
        ('[supervisor]\nruntime_dir = "/tmp/elsewhere"\n', {}),
        ('[supervisor]\nruntime_dir = "run"\n', {"IRONCLIW_SOCKET": "/tmp/env.sock"}),
        ("", {"IRONCLIW_RUNTIME_DIR": "relative/run"}),
        ("", {"XDG_RUNTIME_DIR": "/run/user/1000"}),
    ],
)
def test_the_quick_path_finds_the_socket_where_the_config_says(
    tmp_path: Path, supervisor_table: str, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(supervisor_table + '[components.a]\ncommand = ["sleep", "1"]\n')
    for key in ("IRONCLIW_SOCKET", "IRONCLIW_RUNTIME_DIR", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    expected = resolve_paths(load_config(config), os.environ, os.getuid(), str(Path.home())).socket
    assert quickcli._socket_of(str(config)) == expected
