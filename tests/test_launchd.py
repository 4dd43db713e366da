"""configs/com.ironcliw.supervisor.plist, the launchd user agent of the README's "On a Mac":
a valid property list (what `plutil -lint` checks) with the keys launchd needs to start the
stack at login, restart it after a crash but not after `down`, and give it time to stop."""

from __future__ import annotations

import plistlib

from supervisor.config import load_config
from tests.helpers import REPO

PLIST = REPO / "configs" / "com.ironcliw.supervisor.plist"
CHECKOUT = "/Users/YOU/ironcliw"


def test_the_launch_agent_parses_and_starts_the_stack() -> None:
    with PLIST.open("rb") as f:
        agent = plistlib.load(f)  # raises on anything plutil -lint would reject
    assert agent["Label"] == "com.ironcliw.supervisor" == PLIST.stem
    assert agent["ProgramArguments"] == [f"{CHECKOUT}/bin/ironcliw", "up"]
    assert agent["WorkingDirectory"] == CHECKOUT
    assert agent["EnvironmentVariables"]["IRONCLIW_CONFIG"] == f"{CHECKOUT}/configs/ironcliw.toml"
    assert "/opt/homebrew/bin" in agent["EnvironmentVariables"]["PATH"].split(":")
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # a crash restarts it, `down` does not
    assert all(isinstance(agent[k], str) and agent[k].startswith("/") for k in ("StandardOutPath", "StandardErrorPath"))


def test_launchd_waits_long_enough_for_the_default_stack_to_stop() -> None:
    with PLIST.open("rb") as f:
        agent = plistlib.load(f)
    config = load_config(str(REPO / "configs" / "ironcliw.toml"))
    total_grace = sum(spec.stop_grace_s for spec in config.components.values())
    assert agent["ExitTimeOut"] >= total_grace + 5  # stopped one after another in the worst case


def test_the_paths_to_replace_are_the_ones_the_readme_names() -> None:
    text = PLIST.read_text()
    assert text.count(CHECKOUT) == 3 + 1  # three values and the comment naming them
    readme = (REPO / "README.md").read_text()
    assert "configs/com.ironcliw.supervisor.plist" in readme and CHECKOUT in readme
