"""``radbridge install-service``: put radbridge in place as a hardened systemd service.

Under ``--root`` (default ``/``; another folder prepares an image, or shows what would be
written), from the files in ``broker/cli/server/``:

- ``/etc/systemd/system/radbridge.service``, its ``ExecStart`` under ``--prefix``;
- ``/etc/radbridge/radbridge.yaml``, only when there is none (an existing one is kept);
- ``/etc/sysusers.d/radbridge.conf``, then ``systemd-sysusers`` creates the ``radbridge``
  user and group;
- ``/etc/tmpfiles.d/radbridge.conf``, then ``systemd-tmpfiles --create`` makes
  ``/var/lib/radbridge/{spool,db}`` and ``/var/log/radbridge`` the user's and the
  configuration readable (not writable) by it.

On ``/`` with systemd running, ``systemctl daemon-reload`` follows; enabling and
starting the service is left to the operator (``systemctl enable --now radbridge``).
Running it again is safe: the unit and the systemd snippets are rewritten, the
configuration, the user and the folders are kept.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from broker.cli.common import err, out

#: The unit, the user, the folders and the starting configuration, as installed files.
FILES = Path(__file__).parent / "server"
DEFAULT_PREFIX = Path("/opt/radbridge")
CONFIG = Path("etc/radbridge/radbridge.yaml")
UNIT = Path("etc/systemd/system/radbridge.service")
SYSUSERS = Path("etc/sysusers.d/radbridge.conf")
TMPFILES = Path("etc/tmpfiles.d/radbridge.conf")


def unit_text(prefix: Path) -> str:
    """The systemd unit, its ``ExecStart`` the ``radbridge`` of ``PREFIX/venv``."""
    default = f"ExecStart={DEFAULT_PREFIX}/venv/"
    return (FILES / "radbridge.service").read_text().replace(default, f"ExecStart={prefix}/venv/")


def _run(tool: str, *args: str, root: Path) -> None:
    command = [tool, *([f"--root={root}"] if root != Path("/") else []), *args]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        err.print(
            f"{tool} not found: radbridge runs as a service under systemd; install systemd "
            f"(Debian: apt-get install systemd), or create what {FILES.name}/ describes by hand",
            highlight=False,
        )
        raise typer.Exit(1) from exc
    except subprocess.CalledProcessError as exc:
        err.print(f"{' '.join(command)} failed: {exc.stderr.strip()}", highlight=False)
        raise typer.Exit(1) from exc


def install_service(
    root: Annotated[
        Path, typer.Option(help="Install under this folder instead of / (an image, a check).")
    ] = Path("/"),
    prefix: Annotated[
        Path,
        typer.Option(
            help="Where install.sh put radbridge: its virtual environment is PREFIX/venv."
        ),
    ] = DEFAULT_PREFIX,
) -> None:
    """Install the systemd unit, /etc/radbridge/radbridge.yaml (kept if present), the
    radbridge user and its folders; then `systemctl enable --now radbridge` starts it."""
    if not prefix.is_absolute():
        err.print(f"--prefix must be an absolute path, not '{prefix}'", highlight=False)
        raise typer.Exit(2)
    root = root.resolve()
    executable = prefix / "venv/bin/radbridge"
    if not (root / executable.relative_to("/")).exists() and not executable.exists():
        err.print(
            f"warning: {executable} does not exist yet; the unit starts it "
            "(install.sh --prefix puts it there)",
            highlight=False,
        )
    try:
        for path, text in (
            (UNIT, unit_text(prefix)),
            (SYSUSERS, (FILES / "radbridge.sysusers").read_text()),
            (TMPFILES, (FILES / "radbridge.tmpfiles").read_text()),
        ):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
            (root / path).chmod(0o644)
            out.print(f"wrote {root / path}", highlight=False)
        config = root / CONFIG
        config.parent.mkdir(parents=True, exist_ok=True)
        try:
            with config.open("x") as f:
                f.write((FILES / "radbridge.yaml").read_text())
            out.print(f"wrote {config}", highlight=False)
        except FileExistsError:
            out.print(f"kept {config} (it exists)", highlight=False)
    except PermissionError as exc:
        err.print(f"cannot write {exc.filename}: run as root (sudo)", highlight=False)
        raise typer.Exit(1) from exc
    _run("systemd-sysusers", SYSUSERS.name, root=root)
    out.print("user and group radbridge (systemd-sysusers)", highlight=False)
    _run("systemd-tmpfiles", "--create", TMPFILES.name, root=root)
    folders = ("var/lib/radbridge/spool", "var/lib/radbridge/db", "var/log/radbridge")
    out.print(
        f"folders {', '.join(str(root / f) for f in folders)} (systemd-tmpfiles)",
        highlight=False,
    )
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        _run("systemctl", "daemon-reload", root=root)
        out.print(
            "next: edit /etc/radbridge/radbridge.yaml, then systemctl enable --now radbridge",
            highlight=False,
        )
