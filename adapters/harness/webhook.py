"""The notification endpoint: a loopback HTTP listener that records the JSON POSTed to it.

radbridge's ``notifications.webhook`` (urgent results, overdue jobs, discordant studies)
and the ``critical`` channels POST JSON; :class:`Webhook` keeps each body with its headers
in ``received`` and answers 204 (``status`` scripts other answers: ``[503, 204]`` is
first unavailable, then accepted; a refused POST is not kept). Scenarios start one with
``simulators: {webhook: {}}`` (its URL is ``${webhook.url}``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from adapters.harness.process import LOOPBACK


class Webhook:
    """Records the notifications it accepts in ``received`` as (headers, JSON body)."""

    def __init__(self, status: list[int] | None = None, *, port: int = 0) -> None:
        self.status = list(status or [])
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                code = hook.status.pop(0) if hook.status else 204
                if code < 300:
                    try:
                        parsed = json.loads(body)
                    except ValueError:
                        code = 400
                    else:
                        hook.received.append((dict(self.headers.items()), parsed))
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
