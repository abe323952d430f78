"""One version, from the installed package's metadata, everywhere radbridge shows one.

``/healthz``, the console's footer and the ``radbridge started`` log line of a running
service are checked on the installed offline bundle (tests/e2e/test_offline_bundle.py).
"""

from __future__ import annotations

from importlib.metadata import version

from tests import cli_fork


def test_version_option_prints_the_package_version() -> None:
    """``radbridge --version`` prints ``radbridge VERSION`` (the package's metadata) and
    exits 0 without a sub-command."""
    answer = cli_fork.run(["--version"])
    assert answer.returncode == 0
    assert answer.stdout.strip() == f"radbridge {version('radbridge')}"
