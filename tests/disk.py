"""Small file systems for full-disk tests: a tmpfs of a given size (root), else a loop device
with ext4 on a sparse file (root), else the test is skipped saying why."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a file system of ``size`` (``8m``, ``24m``) at ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    image: Path | None = None
    if mounted.returncode != 0:
        tmpfs_error = mounted.stderr.strip()
        image = path.with_name(path.name + ".img")
        if shutil.which("mkfs.ext4") is None:
            pytest.skip(f"cannot mount a tmpfs ({tmpfs_error}) and mkfs.ext4 is missing")
        with image.open("wb") as f:
            f.truncate(int(size.rstrip("m")) * MiB)
        made = _run("mkfs.ext4", "-q", "-F", str(image))
        mounted = (
            _run("mount", "-o", "loop", str(image), str(path)) if not made.returncode else made
        )
        if mounted.returncode != 0:
            image.unlink(missing_ok=True)
            pytest.skip(
                f"cannot mount a small file system here (needs root): tmpfs: {tmpfs_error}; "
                f"loop device: {mounted.stderr.strip()}"
            )
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))
        if image is not None:
            image.unlink(missing_ok=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` but for ``leave`` bytes; return the filler file."""
    filler = folder / "filler"
    block = bytes(MiB)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        os.ftruncate(f.fileno(), max(0, f.tell() - leave))
    return filler
