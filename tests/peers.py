"""Real DICOM peers for tests and benchmarks: dcmtk tools, storescp and Orthanc.

Everything runs on loopback, on free ports, in folders the caller owns, and is
stopped by the PID it was started with. Debian's dcmtk and Orthanc leave Nagle
on, so every process started here gets ``TCP_NODELAY=1`` in its environment
(without it each C-STORE on loopback stalls about 40 ms).

Neither dcmtk 3.6.7's ``storescp`` nor Orthanc 1.10 has an option to bind to
one address: they listen on every interface, and only loopback is used to
reach them. Orthanc's HTTP server refuses other hosts with
``RemoteAccessAllowed: false``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.filereader import read_file_meta_info

from adapters.harness import pacs as harness_pacs
from adapters.harness.process import ManagedProcess, free_port
from adapters.results.render.fonts import FontMissingError, cjk_font

LOOPBACK = "127.0.0.1"
ORTHANC = "/usr/sbin/Orthanc"

# command -> Debian package that ships it
DEBIAN_PACKAGE = {
    "storescu": "dcmtk",
    "storescp": "dcmtk",
    "echoscu": "dcmtk",
    "dcmsend": "dcmtk",
    "dcmdump": "dcmtk",
    "dcmcjpeg": "dcmtk",
    "dcmdjpeg": "dcmtk",
    "dcmcjpls": "dcmtk",
    "dcmdjpls": "dcmtk",
    "dcmcrle": "dcmtk",
    "Orthanc": "orthanc",
    "dciodvfy": "dicom3tools",
    "strace": "strace",
    "promtool": "prometheus",
}

_apt_updated = False


def dcmtk_env() -> dict[str, str]:
    """The environment for dcmtk and Orthanc: a copy of ours with ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _which(command: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    return shutil.which(command, path=path)


def ensure_debian_packages(*commands: str) -> None:
    """Install the Debian packages that ship ``commands`` if any is missing.

    Runs ``apt-get update`` once per process, then ``apt-get install -y``.
    Services the packages bring (Orthanc's) are kept from starting by a
    ``policy-rc.d`` that answers 101 while installing, when none exists.
    """
    unknown = [c for c in commands if c not in DEBIAN_PACKAGE]
    if unknown:
        raise ValueError(f"no Debian package known for {unknown}; known: {sorted(DEBIAN_PACKAGE)}")
    missing = sorted({DEBIAN_PACKAGE[c] for c in commands if _which(c) is None})
    if not missing:
        return
    _install_debian_packages(missing)
    still = [c for c in commands if _which(c) is None]
    if still:
        raise RuntimeError(f"installed {missing} but {still} still not found")


#: Where Debian's ``orthanc-dicomweb`` puts the DICOMweb plugin (first found wins).
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def orthanc_dicomweb_plugin() -> str:
    """The path of Orthanc's DICOMweb plugin, installing ``orthanc-dicomweb`` when missing.

    Debian 12 ships plugin 1.7 for Orthanc 1.10 (STOW-RS, QIDO-RS, WADO-RS).
    """

    def found() -> str | None:
        for candidate in DICOMWEB_PLUGINS:
            if Path(candidate).exists():
                return candidate
        hits = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
        return str(hits[0]) if hits else None

    plugin = found()
    if plugin is None:
        ensure_debian_packages("Orthanc")
        _install_debian_packages(["orthanc-dicomweb"])
        plugin = found()
    if plugin is None:
        raise RuntimeError(
            f"installed orthanc-dicomweb but found no plugin in {', '.join(DICOMWEB_PLUGINS)}"
        )
    return plugin


def ensure_cjk_font() -> str:
    """The font rendered pages are written in, installing ``fonts-wqy-microhei`` when missing."""
    try:
        return str(cjk_font())
    except FontMissingError:
        _install_debian_packages(["fonts-wqy-microhei"])
        cjk_font.cache_clear()
        return str(cjk_font())


def _install_debian_packages(packages: list[str]) -> None:
    """`apt-get install -y` the packages (as root; services they bring are kept from starting)."""
    global _apt_updated  # noqa: PLW0603
    if os.geteuid() != 0:
        raise RuntimeError(
            f"{', '.join(packages)} not installed and this is not root: "
            f"run 'apt-get install -y {' '.join(packages)}' as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        if not _apt_updated:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            _apt_updated = True
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=True,
            env=env,
        )
    finally:
        if made_policy:
            policy.unlink()


def dataset_bytes(path: Path) -> bytes:
    """The dataset of a Part 10 file as it goes on the wire (see :func:`part10_dataset`)."""
    return part10_dataset(path.read_bytes(), str(path))


def part10_dataset(data: bytes, name: str = "the data") -> bytes:
    """The dataset of Part 10 bytes as it goes on the wire: the bytes after the file meta.

    A deflated file's dataset is inflated, because each sender deflates anew.
    """
    if data[128:132] != b"DICM":
        raise ValueError(f"{name} is not a DICOM Part 10 file (no DICM prefix)")
    if data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        raise ValueError(f"{name} has no (0002,0000) group length first in its file meta")
    end = 144 + int.from_bytes(data[140:144], "little")
    if b"1.2.840.10008.1.2.1.99\x00" in data[144:end]:
        return zlib.decompress(data[end:], -zlib.MAX_WBITS)
    return data[end:]


def _inputs(paths_or_dirs: Path | str | Iterable[Path | str]) -> tuple[list[str], list[str]]:
    """(scan options, paths) for dcmtk senders."""
    items = [paths_or_dirs] if isinstance(paths_or_dirs, str | Path) else list(paths_or_dirs)
    paths = [str(p) for p in items]
    scan = ["+sd", "+r"] if any(Path(p).is_dir() for p in paths) else []
    return scan, paths


def _run(
    args: list[str], *, check: bool, timeout: float | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, check=check, timeout=timeout, env=dcmtk_env()
    )


def dicom_files(paths_or_dirs: Path | str | Iterable[Path | str]) -> list[Path]:
    """The files named, and every file under the folders named, in sorted order."""
    items = [paths_or_dirs] if isinstance(paths_or_dirs, str | Path) else list(paths_or_dirs)
    files: list[Path] = []
    for item in map(Path, items):
        files += sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
    return files


def own_syntax_config(files: Iterable[Path], config_path: Path) -> list[str]:
    """Write a storescu ``-xf`` profile proposing each file's own transfer syntax.

    storescu 3.6.7 proposes only uncompressed syntaxes unless told otherwise
    (one ``-x?`` option adds one compressed syntax), so a mixed set of files
    needs an association profile: one presentation context per distinct
    (SOP class, transfer syntax) pair, each with that one syntax. Returns the
    storescu options that use it.
    """
    pairs: dict[tuple[str, str], None] = {}
    for path in files:
        meta = read_file_meta_info(path)
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    if len(pairs) > 128:
        raise ValueError(f"{len(pairs)} (SOP class, transfer syntax) pairs; DICOM allows 128")
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for n, ts in enumerate(syntaxes, 1):
        lines += [f"[TS{n}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Files]"]
    for n, (sop, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{n} = {sop}\\TS{syntaxes.index(ts) + 1}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Files", ""]
    config_path.write_text("\n".join(lines))
    return ["-xf", str(config_path), "Files"]


def storescu(
    paths_or_dirs: Path | str | Iterable[Path | str],
    port: int,
    *,
    called_ae: str = "RADBRIDGE",
    calling_ae: str = "CT01",
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    check: bool = True,
    timeout: float | None = 600,
    own_syntaxes: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Send files (or folders, recursively) with dcmtk ``storescu`` over one association.

    With ``own_syntaxes`` each file goes in its own transfer syntax, compressed
    or not, through a generated ``-xf`` profile (see :func:`own_syntax_config`);
    without it storescu proposes its defaults (``-R``: the files' SOP classes
    with uncompressed syntaxes only) unless ``extra_args`` say otherwise.
    ``-nh`` keeps going after a failed C-STORE; the exit code is still non-zero.
    Note that storescu re-encodes each dataset: sequences and items always go
    with explicit lengths.
    """
    ensure_debian_packages("storescu")
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        args = list(extra_args)
        if own_syntaxes:
            args += own_syntax_config(dicom_files(paths_or_dirs), Path(tmp) / "storescu.cfg")
        elif "-xf" not in extra_args:
            args.append("-R")
        command = storescu_command(
            paths_or_dirs,
            port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            host=host,
            extra_args=args,
        )
        return _run(command, check=check, timeout=timeout)


def storescu_command(
    paths_or_dirs: Path | str | Iterable[Path | str],
    port: int,
    *,
    called_ae: str = "RADBRIDGE",
    calling_ae: str = "CT01",
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The storescu command line :func:`storescu` runs, for callers that start it themselves.

    Run it with :func:`dcmtk_env` as the environment.
    """
    scan, paths = _inputs(paths_or_dirs)
    args = ["storescu", "-aet", calling_ae, "-aec", called_ae, "-nh", *scan, *extra_args]
    return [*args, host, str(port), *paths]


def dcmsend(
    paths_or_dirs: Path | str | Iterable[Path | str],
    port: int,
    *,
    called_ae: str = "RADBRIDGE",
    calling_ae: str = "CT01",
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    check: bool = True,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Send files (or folders, recursively) with dcmtk ``dcmsend``, never decompressing.

    dcmsend proposes a compressed file's own transfer syntax (``-dn``: never
    decompress instead), but an uncompressed file goes in whichever
    uncompressed syntax the peer picks: Implicit VR LE and Explicit VR BE files
    arrive as Explicit VR LE at storescp. Use :func:`storescu` to keep them.
    """
    ensure_debian_packages("dcmsend")
    scan, paths = _inputs(paths_or_dirs)
    args = ["dcmsend", "-aet", calling_ae, "-aec", called_ae, "-dn", *scan]
    return _run([*args, *extra_args, host, str(port), *paths], check=check, timeout=timeout)


def echoscu(
    port: int,
    *,
    called_ae: str = "RADBRIDGE",
    calling_ae: str = "CT01",
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    check: bool = True,
    timeout: float | None = 30,
) -> subprocess.CompletedProcess[str]:
    """A C-ECHO with dcmtk ``echoscu``."""
    ensure_debian_packages("echoscu")
    args = ["echoscu", "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port)]
    return _run(args, check=check, timeout=timeout)


def wait_until(
    predicate: Callable[[], Any],
    what: str = "condition",
    timeout: float = 60.0,
    interval: float = 0.1,
) -> Any:
    """``predicate()``'s first true value, polled every ``interval`` seconds; AssertionError
    after ``timeout``. A poll that took longer than ``interval`` is followed by a pause as long
    as it took: a predicate that runs a CLI command (a process per poll, a fifth of a CPU-second)
    then keeps at most half a core busy however loaded the machine, not all of one."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        if value := predicate():
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        time.sleep(max(interval, now - began))


def wait_for_port(port: int, timeout: float = 30.0, host: str = LOOPBACK) -> None:
    """Return once a TCP connection to ``host:port`` succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


class StoreSCP(ManagedProcess):
    """dcmtk ``storescp`` writing what it receives into ``folder``.

    It accepts every transfer syntax it knows (``+xa``), writes the received
    dataset bit for bit (``+B``), and forks one process per association so
    that concurrent associations run in parallel (``--fork``). Extra options
    (``-pdu 131072``, ``--ignore`` …) go in ``extra_args``.
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        ae_title: str = "STORESCP",
        port: int | None = None,
        bit_preserving: bool = True,
        fork: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.bit_preserving = bit_preserving
        self.fork = fork
        self.extra_args = tuple(extra_args)
        self.log_path = self.folder.parent / f"{self.folder.name}.storescp.log"

    def start(self, timeout: float = 15.0) -> StoreSCP:
        """Start storescp and wait until it accepts connections."""
        ensure_debian_packages("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["storescp", "+xa", "-aet", self.ae_title, "-od", str(self.folder)]
        args += ["+B"] if self.bit_preserving else []
        args += ["--fork"] if self.fork else []
        self._start([*args, *self.extra_args, str(self.port)])
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"storescp did not listen in {timeout} s") from None
                time.sleep(0.05)

    def files(self) -> list[Path]:
        """Every file received so far, sorted by name."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Orthanc(harness_pacs.Orthanc):
    """:class:`adapters.harness.pacs.Orthanc`, installed first when missing (apt-get, as root).

    With ``dicomweb=True`` the DICOMweb plugin loads (see
    :func:`orthanc_dicomweb_plugin`) and serves STOW-RS, QIDO-RS and WADO-RS
    at :attr:`dicomweb_url`.
    """

    def __init__(
        self,
        folder: Path | str | None = None,
        *,
        aet: str = "ORTHANC",
        config: dict[str, Any] | None = None,
        dicomweb: bool = False,
    ) -> None:
        plugin = orthanc_dicomweb_plugin() if dicomweb else None
        super().__init__(folder, aet=aet, config=config, dicomweb_plugin=plugin)

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Install Orthanc if missing, then start it and wait until ``GET /system`` answers."""
        ensure_debian_packages("Orthanc")
        return super().start(timeout)
