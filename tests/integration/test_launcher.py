"""The command launcher (:mod:`adapters.harness.launcher`) gives a command the standard input
it is asked to, forked from its pre-imported process or as the installed script."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.store import make_engine
from broker.store.users import ConsoleUsers
from tests import cli_fork
from tests.service import Radbridge


@pytest.mark.parametrize("launch", ["fork", "subprocess"])
def test_a_command_reads_the_standard_input_it_is_given(
    launch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``users add --password-stdin`` run with ``stdin`` (forked, or the installed script with
    ``RADBRIDGE_LAUNCH=subprocess``) stores that line as the password: it verifies, another
    does not."""
    rb = Radbridge(tmp_path / "rb")  # its configuration (the service need not run) and env
    if launch == "subprocess":  # the launcher's choice, not in the command's environment
        monkeypatch.setenv("RADBRIDGE_LAUNCH", "subprocess")
    rb.add_user("lin", "viewer", "lin-password-1")
    users = ConsoleUsers(make_engine(str(rb.config["storage"]["database"])))
    assert users.verify("lin", "lin-password-1") is not None
    assert users.verify("lin", "another-password") is None


def test_a_forked_command_without_stdin_reads_an_empty_input(tmp_path: Path) -> None:
    """Without ``stdin`` a forked command reads nothing (not the launcher's own requests):
    ``users add --password-stdin`` gets an empty password, refuses it and adds no one."""
    rb = Radbridge(tmp_path / "rb")
    command = ["users", "add", "bo", "--role", "viewer", "--password-stdin"]
    bare = cli_fork.run([*command, "-c", str(rb.config_path)], env=rb.env)
    assert bare.returncode == 1, bare
    assert "the password has 0 characters" in bare.stderr + bare.stdout, bare
    listed = cli_fork.run(["users", "list", "--json", "-c", str(rb.config_path)], env=rb.env)
    assert listed.returncode == 0 and "bo" not in listed.stdout, listed
