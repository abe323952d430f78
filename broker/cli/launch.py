"""The ``radbridge`` console script: a module that imports nothing until it runs.

A process the service starts with ``spawn`` (the DICOM listener processes) runs
the console script again as its main module before it starts; with the command
line behind this small door instead of ``broker.cli.main``, such a process does
not import typer, rich and every sub-command (about half a second per process).
``radbridge --version`` alone (installers and monitoring ask it) answers without
importing the command line at all.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from broker.model.version import VERSION  # noqa: PLC0415 (see the module's docstring)

        print(f"radbridge {VERSION}")
        return
    from broker.cli.main import app  # noqa: PLC0415 (see the module's docstring)

    app()
