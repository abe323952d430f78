"""One version, from the installed package's metadata, everywhere radbridge shows one."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import httpx

from tests import cli_fork
from tests.peers import LOOPBACK, free_port
from tests.service import Radbridge, base_config


def test_version_in_the_command_healthz_console_footer_and_start_line(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """``radbridge --version``, ``/healthz``'s ``version``, the console's footer and the
    ``radbridge started`` log line of a running service all give the package's version."""
    expected = version("radbridge")
    answer = cli_fork.run(["--version"])
    assert answer.stdout.strip() == f"radbridge {expected}"

    http_port = free_port()
    config = base_config(tmp_path / "rb", free_port())
    config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
    rb = radbridge_factory(config=config)
    base = f"http://{LOOPBACK}:{http_port}"
    health = httpx.get(f"{base}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "version": expected}
    login = httpx.get(f"{base}/console/login", timeout=10)
    assert login.status_code == 200
    assert f"radbridge {expected}." in login.text.split("<footer>")[1]
    started = [line for line in rb.log_lines() if line.get("event") == "radbridge started"]
    assert [line["version"] for line in started] == [expected]
