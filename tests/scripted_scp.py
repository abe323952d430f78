"""A DICOM storage SCP that answers every C-STORE with a scripted status.

A misbehaving peer in the manner of pynetdicom's own test peers: a real
pynetdicom association acceptor on a free loopback port that accepts every
storage SOP class in every transfer syntax, and answers each C-STORE with
``status`` (0x0000 success; 0xA700 out of resources; 0xA900 data set does not
match the SOP class; 0xC000 cannot understand …). ``stored`` keeps the SOP
Instance UIDs it answered with success, ``answered`` every one it saw. With
``stall`` it waits that many seconds before each answer (a vendor that hangs).

A vendor that stalls mid-study: with ``stall_after=N`` every C-STORE after the
first N is held unanswered (``stalled`` is set) until :meth:`release`; from then
on every C-STORE is answered at once.

``maximum_pdu`` is the maximum PDU length it announces (0: none, any length);
``data_sets`` keeps each data set's bytes as they arrived, by SOP Instance UID.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom._globals import DEFAULT_MAX_LENGTH
from pynetdicom.transport import ThreadedAssociationServer

from tests.peers import LOOPBACK, free_port


class ScriptedStoreSCP:
    """Answers every C-STORE with ``status``; records what it saw."""

    def __init__(
        self,
        status: int = 0x0000,
        *,
        ae_title: str = "VENDOR",
        stall: float = 0.0,
        stall_after: int | None = None,
        maximum_pdu: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.status = status
        self.stall = stall
        self.ae_title = ae_title
        self.port = free_port()
        self.answered: list[str] = []
        self.stored: list[str] = []
        self.data_sets: dict[str, bytes] = {}
        self.maximum_pdu = maximum_pdu
        self.stall_after = stall_after
        self.stalled = threading.Event()
        """Set once a C-STORE is held unanswered (``stall_after``)."""
        self._released = threading.Event()
        self._server: ThreadedAssociationServer | None = None

    def release(self) -> None:
        """Answer the held C-STORE, and every later one at once."""
        self._released.set()

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        stall = self.stall_after is not None and len(self.answered) >= self.stall_after
        if stall and not self._released.is_set():
            self.stalled.set()
            self._released.wait(300)
        self.answered.append(uid)
        self.data_sets[uid] = event.request.DataSet.getvalue()
        time.sleep(self.stall)
        if self.status == 0x0000:
            self.stored.append(uid)
        return self.status

    def __enter__(self) -> ScriptedStoreSCP:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.maximum_pdu
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
        self._server = ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._released.set()  # a held C-STORE must not keep the server from stopping
        if self._server is not None:
            self._server.shutdown()
