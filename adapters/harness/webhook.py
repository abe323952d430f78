"""The notification endpoint: a loopback HTTP listener that records the JSON POSTed to it.

radbridge's ``notifications.webhook`` (urgent results, overdue jobs, discordant studies)
and the ``critical`` channels POST JSON; :class:`Webhook` keeps each body with its headers
in ``received`` and answers 204 (``status`` scripts other answers: ``[503, 204]`` is
first unavailable, then accepted; a refused POST is not kept). Scenarios start one with
``simulators: {webhook: {}}`` (its URL is ``${webhook.url}``).

It honours ``Idempotency-Key`` as a receiver should (the IETF HTTPAPI draft
"The Idempotency-Key HTTP Header Field"): a notification is kept once per key; a
retry of one already accepted is answered as the first was and not kept again; one
that comes while the first is still being processed gets 409; the same key with
another body gets 422. ``attempts`` lists every POST with the status it got;
``delays`` makes the first POSTs slow (seconds each), like a receiver that answers
after radbridge's timeout.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from adapters.harness.process import LOOPBACK

#: The header that names one notification across its retries.
IDEMPOTENCY_KEY = "Idempotency-Key"


class Webhook:
    """Records the notifications it accepts in ``received`` as (headers, JSON body), once
    per ``Idempotency-Key``; every POST in ``attempts`` as (key, body bytes, status)."""

    def __init__(
        self, status: list[int] | None = None, *, port: int = 0, delays: list[float] | None = None
    ) -> None:
        self.status = list(status or [])
        self.delays = list(delays or [])
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.attempts: list[tuple[str | None, bytes, int]] = []
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[bytes, int | None]] = {}
        """Key → (body, the status it was answered; None while it is processed)."""
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                code = hook.receive(dict(self.headers.items()), body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://{LOOPBACK}:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        """Process one POST (see the module docstring); the status it is answered."""
        key = next((v for k, v in headers.items() if k.lower() == IDEMPOTENCY_KEY.lower()), None)
        with self._lock:
            seen = self._keys.get(key) if key is not None else None
            delay = self.delays.pop(0) if self.delays else 0.0
            if seen is not None:
                first, answered = seen
                code = 422 if first != body else 409 if answered is None else answered
                self.attempts.append((key, body, code))
                return code
            if key is not None:
                self._keys[key] = (body, None)
        if delay:
            time.sleep(delay)
        with self._lock:
            code = self.status.pop(0) if self.status else 204
            if code < 300:
                try:
                    parsed = json.loads(body)
                except ValueError:
                    code = 400
                else:
                    self.received.append((headers, parsed))
            if key is not None:
                if code < 300:
                    self._keys[key] = (body, code)
                else:  # not accepted: a retry is processed afresh
                    del self._keys[key]
            self.attempts.append((key, body, code))
        return code

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far."""
        return [body for _headers, body in list(self.received)]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
