"""``webhook``: notifications (urgent results, overdue jobs) POSTed as JSON.

Configured as ``notifications.webhook`` (``url``; optional ``timeout``,
``retries``; the token only from ``RADBRIDGE_NOTIFICATIONS__WEBHOOK__TOKEN``,
sent as ``Authorization: Bearer``). Each notification is a delivery, so it
survives a restart and is retried with the write-back backoff; the header
``Idempotency-Key`` is the delivery's ``message_id``, the same on every retry.

The body names the study by its UIDs and accession number, never the
patient; with ``http.verdict_link_secret`` set each finding carries one-click signed
links for a radiologist's verdict (``verdict_links``)::

    {"event": "urgent_result", "id": "RB…", "at": "…", "job_id": 7, "result_id": 3,
     "study_uid": "1.2…", "accession_number": "A123", "vendor": "ichai", "route": "head-ct",
     "findings": [{"code": "1386000", "system": "SCT", "meaning": "…", "present": true,
                   "urgent": true, "score": 0.97,
                   "verdict_links": {"accepted": "https://…/console/v/…",
                                     "rejected": "https://…/console/v/…"}}]}
    {"event": "overdue", "id": "RB…", "at": "…", "job_id": 9, "study_uid": "1.2…",
     "vendor": "lungai", "route": "chest-ct", "state": "awaiting_result",
     "deadline_at": "…"}

2xx is done; 408, 425, 429, 5xx, timeouts and connection errors are retried;
any other status is refused for good (:mod:`adapters.http_status`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from adapters.http_status import Verdict, answered, failure, url_endpoint, verdict
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import WritebackItem
from config.base import HttpUrl, Timeout


class WebhookSettings(TargetSettings):
    """``notifications.webhook`` (or ``targets.NAME`` with ``type: webhook``)."""

    type: Literal["webhook"] = "webhook"
    url: HttpUrl
    token: SecretStr | None = None
    timeout: Timeout = 10.0

    def build(self, name: str) -> WebhookTarget:
        return WebhookTarget(name, self)

    def endpoint(self) -> tuple[str, int] | None:
        return url_endpoint(self.url)


def notification(item: WritebackItem) -> dict[str, Any]:
    """The JSON body of a notification."""
    d = item.delivery
    job = item.job
    body: dict[str, Any] = {
        "event": d.event,
        "id": d.message_id,
        "at": d.created_at.isoformat(),
        "job_id": d.job_id,
        "study_uid": d.study_uid,
        "accession_number": None,
        "vendor": job.vendor if job else None,
        "route": job.route if job else item.route,
    }
    if item.order is not None and item.order.order.accession_number:
        body["accession_number"] = item.order.order.accession_number
    elif item.study is not None:
        body["accession_number"] = item.study.accession_number
    if item.result is not None:
        body["result_id"] = item.result.id
        findings = item.result.findings
        links = item.verdict_links
        body["findings"] = [
            {
                "code": f.code.value,
                "system": f.code.system,
                "meaning": f.code.meaning,
                "present": f.present,
                "urgent": f.urgent,
                "score": f.score,
                **({"verdict_links": dict(links[n])} if n in links else {}),
            }
            for n, f in enumerate(findings.findings if findings else ())
        ]
    if job is not None and d.event == "overdue":
        body["state"] = job.state.value
        body["deadline_at"] = job.deadline_at.isoformat() if job.deadline_at else None
    return body


class WebhookTarget(WritebackTarget):
    """POST notifications as JSON to one URL."""

    retryable: tuple[type[Exception], ...] = (TargetUnavailableError,)

    def __init__(self, name: str, settings: WebhookSettings) -> None:
        self.name = name
        self.settings = settings
        headers = {"Content-Type": "application/json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(settings.timeout), follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"WebhookTarget({self.settings.url})"

    def deliver(self, item: WritebackItem) -> str:
        url = self.settings.url
        body = json.dumps(notification(item)).encode("utf-8")
        headers = {"Idempotency-Key": item.delivery.message_id}
        what = f"webhook POST to {url}"
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TargetUnavailableError(failure(what, exc, self.settings.timeout)) from exc
        found = verdict(response.status_code)
        if found is Verdict.RETRY:
            raise TargetUnavailableError(answered(what, response))
        if found is Verdict.REFUSED:
            raise TargetRejectedError(answered(what, response))
        return f"{item.delivery.event} notification to {url}"

    def close(self) -> None:
        self.client.close()
