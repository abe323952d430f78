"""``webhook``: notifications (urgent results, overdue jobs) POSTed as JSON.

Configured as ``notifications.webhook`` (``url``; optional ``timeout``,
``retries``; the token only from ``RADBRIDGE_NOTIFICATIONS__WEBHOOK__TOKEN``,
sent as ``Authorization: Bearer``). Each notification is a delivery, so it
survives a restart and is retried with the write-back backoff; the header
``Idempotency-Key`` is the delivery's ``message_id``, the same on every retry.

The body names the study by its UIDs and accession number, never the
patient::

    {"event": "urgent_result", "id": "RB…", "at": "…", "job_id": 7, "result_id": 3,
     "study_uid": "1.2…", "accession_number": "A123", "vendor": "ichai", "route": "head-ct",
     "findings": [{"code": "1386000", "system": "SCT", "meaning": "…", "present": true,
                   "urgent": true, "score": 0.97}]}
    {"event": "overdue", "id": "RB…", "at": "…", "job_id": 9, "study_uid": "1.2…",
     "vendor": "lungai", "route": "chest-ct", "state": "awaiting_result",
     "deadline_at": "…"}

2xx is done; 408, 429, 5xx, timeouts and connection errors are retried;
any other status is refused for good.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from adapters.writeback import register
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError, target_settings
from broker.model.writeback import WritebackItem


class WebhookSettings(BaseModel):
    """``notifications.webhook``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    token: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, le=3600)


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
        body["findings"] = [
            {
                "code": f.code.value,
                "system": f.code.system,
                "meaning": f.code.meaning,
                "present": f.present,
                "urgent": f.urgent,
                "score": f.score,
            }
            for f in (findings.findings if findings else ())
        ]
    if job is not None and d.event == "overdue":
        body["state"] = job.state.value
        body["deadline_at"] = job.deadline_at.isoformat() if job.deadline_at else None
    return body


@register("webhook")
class WebhookTarget:
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

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> Self:
        return cls(name, target_settings(WebhookSettings, name, params))

    def __repr__(self) -> str:
        return f"WebhookTarget({self.settings.url})"

    def deliver(self, item: WritebackItem) -> str:
        url = self.settings.url
        body = json.dumps(notification(item)).encode("utf-8")
        headers = {"Idempotency-Key": item.delivery.message_id}
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TargetUnavailableError(f"webhook POST to {url} timed out") from exc
        except httpx.TransportError as exc:
            raise TargetUnavailableError(f"webhook POST to {url} failed: {exc}") from exc
        code = response.status_code
        what = f"webhook POST to {url} answered {code} {response.reason_phrase}"
        if code in (408, 429) or code >= 500:
            raise TargetUnavailableError(what)
        if not 200 <= code < 300:
            raise TargetRejectedError(what)
        return f"{item.delivery.event} notification to {url}"

    def close(self) -> None:
        self.client.close()
