"""A RIS for tests and benchmarks: python ``hl7``'s asyncio MLLP server in a thread.

It records every message it receives (as text) and answers as scripted:
each message takes the next code from ``script`` (``"AA"``, ``"AE"``,
``"AR"``, or ``None`` for no answer at all, like a hung RIS); when the
script runs out, ``default``. Loopback only, on a free port.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

from tests.peers import LOOPBACK, free_port


class Ris:
    """An MLLP listener answering AA, AE, AR or nothing, message by message."""

    def __init__(
        self,
        script: Iterable[str | None] = (),
        default: str | None = "AA",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.script = list(script)
        self.default = default
        self.received: list[str] = []
        self.acked_at: list[float] = []
        """``time.monotonic()`` when each AA went out."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self._lock = threading.Lock()

    def _answer(self) -> str | None:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    async def _handle(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                code = self._answer()
                if code is not None:
                    writer.writemessage(message.create_ack(ack_code=code))
                    await writer.drain()
                    if code == "AA":
                        self.acked_at.append(time.monotonic())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def messages(self) -> list[hl7.Message]:
        """Every message received, parsed by python hl7."""
        return [hl7.parse(text) for text in list(self.received)]

    def start(self) -> Ris:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            start_hl7_server(self._handle, LOOPBACK, self.port, encoding="utf-8"), self._loop
        ).result(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Ris:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
