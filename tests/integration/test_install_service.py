"""``radbridge install-service`` in a temporary root, and its systemd unit checked by systemd's
own tools (``systemd-analyze verify`` and ``security``), without a running systemd."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import cli_fork

ANALYZE = shutil.which("systemd-analyze")
pytestmark = [
    pytest.mark.xdist_group("install_service"),
    pytest.mark.skipif(
        ANALYZE is None or shutil.which("systemd-sysusers") is None,
        reason="systemd's tools are not installed (Debian: apt-get install systemd)",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the folders are given to the radbridge user: needs root"
    ),
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``install-service --root ROOT --prefix PREFIX``, PREFIX/venv being this radbridge's
    virtual environment (so the unit's ExecStart exists)."""
    folder = tmp_path_factory.mktemp("install")
    root, prefix = folder / "root", folder / "opt"
    prefix.mkdir()
    (prefix / "venv").symlink_to(Path(sys.prefix))
    answer = cli_fork.run(["install-service", "--root", str(root), "--prefix", str(prefix)])
    assert answer.returncode == 0, answer.stderr
    assert f"wrote {root.resolve()}/etc/systemd/system/radbridge.service" in answer.stdout
    return root, prefix


def _unit(root: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (root / "etc/systemd/system/radbridge.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_unit_is_hardened_and_passes_systemd_analyze(installed: tuple[Path, Path]) -> None:
    """The installed unit runs PREFIX/venv/bin/radbridge as user radbridge, writes only the
    spool, database and log folders, reloads by SIGHUP, restarts on failure; systemd-analyze
    verify finds nothing to say and rates its exposure OK (below 2 of 10)."""
    root, prefix = installed
    unit = root / "etc/systemd/system/radbridge.service"
    assert unit.stat().st_mode & 0o777 == 0o644
    values = _unit(root)
    assert values["ExecStart"] == [
        f"{prefix}/venv/bin/radbridge serve -c /etc/radbridge/radbridge.yaml"
    ]
    assert values["User"] == ["radbridge"] and values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
    }.items():
        assert values[key] == [value], key
    assert values["ReadWritePaths"][0].split() == [
        "/var/lib/radbridge/spool",
        "/var/lib/radbridge/db",
        "/var/log/radbridge",
    ]
    assert ANALYZE is not None
    verify = subprocess.run(
        [ANALYZE, "verify", str(unit)], check=False, capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stderr == "" and verify.stdout == "", verify
    security = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        check=False,
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for radbridge.service: ([\d.]+)", security.stdout)
    assert found is not None, security.stdout + security.stderr
    assert float(found.group(1)) < 2.0, security.stdout


def test_user_folders_and_configuration_in_place_and_kept(installed: tuple[Path, Path]) -> None:
    """The radbridge user exists in ROOT's passwd; spool, database and log folders are its
    own (0750); the configuration is root's, readable by the group, valid for ``config
    check``; a second install keeps an edited configuration."""
    root, prefix = installed
    [entry] = [
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("radbridge:")
    ]
    uid, gid = int(entry[2]), int(entry[3])
    for folder in ("var/lib/radbridge/spool", "var/lib/radbridge/db", "var/log/radbridge"):
        info = (root / folder).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (uid, gid, 0o750), folder
    config = root / "etc/radbridge/radbridge.yaml"
    info = config.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, gid, 0o640)
    check = cli_fork.run(["config", "check", "-c", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr

    config.write_text(config.read_text() + "# edited by the hospital\n")
    again = cli_fork.run(["install-service", "--root", str(root), "--prefix", str(prefix)])
    assert again.returncode == 0, again.stderr
    assert f"kept {root.resolve()}/etc/radbridge/radbridge.yaml (it exists)" in again.stdout
    assert config.read_text().endswith("# edited by the hospital\n")


def test_relative_prefix_is_refused(tmp_path: Path) -> None:
    """A relative --prefix cannot be a unit's ExecStart: refused with exit code 2 and
    nothing written."""
    answer = cli_fork.run(["install-service", "--root", str(tmp_path), "--prefix", "opt"])
    assert answer.returncode == 2 and "absolute path" in answer.stderr
    assert list(tmp_path.iterdir()) == []
