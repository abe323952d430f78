"""radbridge's own DICOM listener code serving a loopback port inside the test's process.

What ``radbridge serve`` runs per listener process (:func:`adapters.dicom.server.make_server`
fed accepted connections through the slot board), without starting a service: for
integration tests that send with ``storescu`` and read the store directly.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import _config, dimse_messages

from adapters.dicom.server import make_server
from adapters.dicom.slots import Limits, ProcessSlots, SlotBoard
from broker.store import StudyStore
from broker.store.spool import Spool
from config.schema import Settings


def _serve(server: Any, sock: socket.socket, load: ProcessSlots) -> None:
    while True:
        try:
            conn, address = sock.accept()
        except OSError:
            return
        load.board.admit_connection(0, conn, address[0])
        server.take(conn)


@contextmanager
def dicom_listener(settings: Settings, store: StudyStore, sock: socket.socket) -> Iterator[None]:
    """Serve ``settings``' listener on the bound, listening ``sock`` until the block ends;
    instances are spooled in ``storage.spool`` and indexed into ``store``."""
    spool = Spool(settings.storage.spool)
    spool.prepare()
    load = ProcessSlots(SlotBoard(1, Limits.from_settings(settings.dicom)), 0)
    # make_server sets what a listener process needs process-wide (pynetdicom's chunked
    # C-STORE files, written through radbridge's receiving file in the spool, its UID
    # validator); this process goes on running other tests' pynetdicom peers after it.
    saved = (
        tempfile.tempdir,
        _config.STORE_RECV_CHUNKED_DATASET,
        dict(_config.VALIDATORS),
        vars(dimse_messages)["NamedTemporaryFile"],
    )
    server = make_server(settings, store, spool, load)
    thread = threading.Thread(target=_serve, args=(server, sock, load), daemon=True)
    thread.start()
    try:
        yield
    finally:
        sock.close()
        server.server_close()
        tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET, validators, named = saved
        _config.VALIDATORS.clear()
        _config.VALIDATORS.update(validators)
        setattr(dimse_messages, "NamedTemporaryFile", named)
