"""A FHIR receiver on loopback that stands in for an EMR's FHIR server.

Each POST must be a FHIR R4 ``transaction`` Bundle; it is validated with
fhir.resources (R4B models, as radbridge's own FHIR interface uses) and, when
valid, kept and answered 200 with a ``transaction-response`` Bundle. An
invalid one gets 400 with an OperationOutcome. ``status`` scripts the answers
(e.g. ``[503, 200]``: first unavailable, then accepted). Conditional creates
(``ifNoneExist``) are honoured: an identifier seen before creates nothing,
as a real server would do; a conditional update (``PUT Type?identifier=…``)
replaces the resource with that identifier.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from adapters.harness.webhook import Webhook
from tests.peers import LOOPBACK

__all__ = ["FhirReceiver", "Webhook"]


class FhirReceiver:
    """Records the valid Bundles it gets in ``bundles``; ``created`` counts new resources."""

    def __init__(self, status: list[int] | None = None) -> None:
        self.status = list(status or [])
        self.bundles: list[dict[str, Any]] = []
        self.requests = 0
        self.created: dict[str, dict[str, Any]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests += 1
                code = receiver.status.pop(0) if receiver.status else 200
                if code != 200:
                    self._reply(code, {"resourceType": "OperationOutcome", "issue": []})
                    return
                try:
                    data = json.loads(body)
                    Bundle.model_validate(data)
                    assert data["type"] == "transaction"
                except (ValueError, ValidationError, AssertionError, KeyError) as exc:
                    outcome = {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {"severity": "error", "code": "invalid", "diagnostics": str(exc)}
                        ],
                    }
                    self._reply(400, outcome)
                    return
                receiver.bundles.append(data)
                entries = []
                for entry in data.get("entry", []):
                    request = entry["request"]
                    if request["method"] == "PUT" and "?" in request["url"]:
                        key = request["url"].split("?", 1)[1]  # a conditional update
                        status = "200 OK" if key in receiver.created else "201 Created"
                        receiver.created[key] = entry["resource"]
                        entries.append({"response": {"status": status}})
                        continue
                    key = request.get("ifNoneExist") or entry["fullUrl"]
                    status = "200 OK" if key in receiver.created else "201 Created"
                    receiver.created.setdefault(key, entry["resource"])
                    entries.append({"response": {"status": status}})
                self._reply(
                    200,
                    {"resourceType": "Bundle", "type": "transaction-response", "entry": entries},
                )

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FhirReceiver:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
