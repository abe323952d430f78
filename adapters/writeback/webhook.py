"""``webhook``: notifications (urgent results, overdue jobs, discordant studies) POSTed as JSON.

Configured as ``notifications.webhook`` (``url``; optional ``timeout``,
``retries``; the token only from ``RADBRIDGE_NOTIFICATIONS__WEBHOOK__TOKEN``,
sent as ``Authorization: Bearer``). Each notification is a delivery, so it
survives a restart and is retried with the write-back backoff; the header
``Idempotency-Key`` is the delivery's ``message_id``, the same on every retry, and so
is the body, byte for byte (verdict links are signed as of the notification's making).
A retry can reach the receiver while it still processes an earlier attempt (that one
outlived ``timeout``): a receiver keeps one notification per key, and may answer 409
meanwhile, which is retried (the IETF HTTPAPI draft "The Idempotency-Key HTTP Header
Field"; :class:`adapters.harness.webhook.Webhook` does so).

The body names the study by its UIDs and accession number, never the
patient; with ``http.verdict_link_secret`` set each finding carries one-click signed
links for a radiologist's verdict (``verdict_links``)::

    {"event": "urgent_result", "id": "RB…", "at": "…", "job_id": 7, "result_id": 3,
     "study_uid": "1.2…", "accession_number": "A123", "vendor": "ichai", "route": "head-ct",
     "findings": [{"code": "1386000", "system": "SCT", "meaning": "…", "present": true,
                   "urgent": true, "score": 0.97,
                   "verdict_links": {"accepted": "https://…/console/v/…",
                                     "rejected": "https://…/console/v/…"}}]}
    {"event": "discordant", "id": "RB…", "at": "…", "job_id": 8, "result_id": 4,
     "study_uid": "1.2…", "vendor": "lungnew", "route": "chest-ct", "findings": […],
     "flags": ["discordant"], "discordances": [{"code": "RID50149", "system": "RADLEX",
     "meaning": "Pulmonary nodule", "vendors": ["lungai", "lungnew"], "result_ids": [3, 4],
     "reason": "present vs absent"}]}
    {"event": "overdue", "id": "RB…", "at": "…", "job_id": 9, "study_uid": "1.2…",
     "vendor": "lungai", "route": "chest-ct", "state": "awaiting_result",
     "deadline_at": "…"}
    {"event": "drift", "id": "RB…", "at": "…", "job_id": null, "study_uid": "",
     "vendor": "lungai", "route": null, "alert": {"id": 4, "kind": "drift",
     "code": "SCT:1386000", "raised_at": "…", "summary": "SCT:1386000 positive rate …",
     "detail": {"drift": "positive_rate", "z": 3.1, "p_value": 0.002, …}}}

A vendor alert (``drift``, ``version_changed``, ``results_missing``, ``canary_failed``)
is sent once, when it is raised; a ``canary_failed`` names the synthetic study in
``study_uid``.

A critical-result notification (``critical.channels``) adds ``"critical"``
(case id, contact, level, deadline, acknowledgement link) to that body, or,
with ``template``, speaks a gateway's format: ``sms`` ``{"to", "text"}``;
``wecom`` (企业微信 group robot) and ``dingtalk`` (钉钉 robot: the token, if
any, is the robot's signing secret, so ``timestamp`` and ``sign`` are added to
the URL) a text message that @-mentions the contact; ``body`` is a Jinja2
template of the JSON body (``to``, ``text``, ``link``, ``contact``, ``case``).

2xx is done; 408, 409 (see above), 425, 429, 5xx, timeouts and connection errors are
retried; any other status is refused for good (:mod:`adapters.http_status`). WeCom and
DingTalk answer 200 with an ``errcode``: non-zero is refused, except their
rate limits (45009, 130101), which are retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Literal
from urllib.parse import quote

import httpx
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import SecretStr, field_validator

from adapters.http_status import Verdict, answered, failure, url_endpoint, verdict
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError
from broker.i18n.critical import notice_text
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import DeliveryKind, WritebackItem
from config.base import HttpUrl, Timeout


class WebhookSettings(TargetSettings):
    """``notifications.webhook`` (or ``targets.NAME`` with ``type: webhook``)."""

    type: Literal["webhook"] = "webhook"
    url: HttpUrl
    token: SecretStr | None = None
    timeout: Timeout = 10.0
    template: Literal["json", "sms", "wecom", "dingtalk"] = "json"
    body: str | None = None
    """A Jinja2 template of the JSON body (``to``, ``text``, ``link``, ``contact``, ``case``)."""

    @field_validator("body")
    @classmethod
    def _renders_json(cls, value: str | None) -> str | None:
        """The template compiles and, for a sample notice, renders JSON."""
        if value is not None:
            sample: dict[str, Any] = {
                "to": "13800000000",
                "text": "t",
                "link": None,
                "contact": "c",
                "case": {},
            }
            try:
                json.loads(_JINJA.from_string(value).render(**sample))
            except (TemplateError, ValueError) as exc:
                raise ValueError(
                    f"body is not a template of JSON ({exc}); valid: e.g. "
                    '\'{"phone": {{ to | tojson }}, "content": {{ text | tojson }}}\''
                ) from None
        return value

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
    if item.findings is not None and d.kind is DeliveryKind.FLAG:
        body["flags"] = [f.value for f in item.findings.flags]
        body["discordances"] = [
            {
                "code": x.code.value,
                "system": x.code.system,
                "meaning": x.code.meaning,
                "vendors": list(x.vendors),
                "result_ids": list(x.result_ids),
                "reason": x.reason,
            }
            for x in item.findings.discordances
        ]
    if item.alert is not None:
        alert = item.alert
        body["vendor"] = alert.vendor
        body["alert"] = {
            "id": alert.id,
            "kind": alert.kind.value,
            "code": alert.code,
            "raised_at": alert.raised_at.isoformat(),
            "summary": alert.detail.get("summary"),
            "detail": {k: v for k, v in alert.detail.items() if k not in ("summary", "key")},
        }
    if job is not None and d.event == "overdue":
        body["state"] = job.state.value
        body["deadline_at"] = job.deadline_at.isoformat() if job.deadline_at else None
    notice = item.notice
    if notice is not None:
        case = notice.case
        body["critical"] = {
            "case_id": case.id,
            "contact": notice.contact,
            "level": notice.level,
            "opened_at": case.opened_at.isoformat(),
            "deadline_at": case.deadline_at.isoformat(),
            "summary": case.summary,
            "ack_url": notice.link,
            "text": _text(item),
        }
        body["accession_number"] = case.accession_number or body["accession_number"]
        body["route"] = case.route or body["route"]
        body["vendor"] = case.vendor or body["vendor"]
    return body


#: Sandboxed (a template is configuration, not code) and autoescape off: the output is JSON.
_JINJA = ImmutableSandboxedEnvironment(autoescape=False)
#: A receiver's answer while an earlier attempt with the same ``Idempotency-Key`` is still
#: being processed (IETF HTTPAPI "The Idempotency-Key HTTP Header Field"): retried.
IN_PROGRESS = 409
#: The gateways' "too many requests" codes (WeCom 45009, DingTalk 130101): retried.
_RATE_LIMITED = frozenset({45009, 130101})


def _text(item: WritebackItem) -> str:
    """The message a person reads (SMS, WeCom, DingTalk), in the site's language."""
    notice = item.notice
    if notice is not None:
        return notice_text(
            notice.language,
            summary=notice.case.summary,
            accession=notice.case.accession_number,
            route=notice.case.route,
            deadline=notice.case.deadline_at,
            timezone=notice.timezone,
            contact=notice.contact,
            link=notice.link,
        )
    d = item.delivery
    return f"radbridge {d.event}: study {d.study_uid}"


def render(settings: WebhookSettings, item: WritebackItem) -> dict[str, Any]:
    """The JSON body of ``item`` in the channel's template."""
    to = item.notice.address if item.notice is not None else ""
    text = _text(item)
    if settings.body is not None:
        base = notification(item)
        context = {
            "to": to,
            "text": text,
            "link": item.notice.link if item.notice else None,
            "contact": item.notice.contact if item.notice else None,
            "case": base.get("critical", {}),
            "event": item.delivery.event,
            "study_uid": item.delivery.study_uid,
            "accession_number": base["accession_number"],
        }
        try:
            rendered: dict[str, Any] = json.loads(_JINJA.from_string(settings.body).render(context))
        except (TemplateError, ValueError) as exc:
            raise TargetRejectedError(f"the body template did not make JSON: {exc}") from exc
        return rendered
    if settings.template == "sms":
        return {"to": to, "text": text}
    if settings.template == "wecom":
        return {"msgtype": "text", "text": {"content": text, "mentioned_mobile_list": [to]}}
    if settings.template == "dingtalk":
        return {
            "msgtype": "text",
            "text": {"content": text},
            "at": {"atMobiles": [to], "isAtAll": False},
        }
    return notification(item)


def dingtalk_signed(url: str, secret: str, now_ms: int | None = None) -> str:
    """``url`` with DingTalk's ``timestamp`` and ``sign`` (HMAC-SHA256 of "timestamp\\nsecret")."""
    stamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{stamp}\n{secret}".encode(), hashlib.sha256).digest()
    sign = quote(base64.b64encode(digest).decode(), safe="")
    return f"{url}{'&' if '?' in url else '?'}timestamp={stamp}&sign={sign}"


class WebhookTarget(WritebackTarget):
    """POST notifications as JSON to one URL."""

    retryable: tuple[type[Exception], ...] = (TargetUnavailableError,)

    def __init__(self, name: str, settings: WebhookSettings) -> None:
        self.name = name
        self.settings = settings
        headers = {"Content-Type": "application/json"}
        if settings.token is not None and settings.template != "dingtalk":
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(settings.timeout), follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"WebhookTarget({self.settings.url})"

    def deliver(self, item: WritebackItem) -> str:
        settings = self.settings
        url = settings.url
        body = json.dumps(render(settings, item), ensure_ascii=False).encode("utf-8")
        headers = {"Idempotency-Key": item.delivery.message_id}
        what = f"webhook POST to {url}"
        post_to = url
        if settings.template == "dingtalk" and settings.token is not None:
            post_to = dingtalk_signed(url, settings.token.get_secret_value())
        try:
            response = self.client.post(post_to, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TargetUnavailableError(failure(what, exc, settings.timeout)) from exc
        found = verdict(response.status_code)
        if found is Verdict.RETRY or response.status_code == IN_PROGRESS:
            raise TargetUnavailableError(answered(what, response))
        if found is Verdict.REFUSED:
            raise TargetRejectedError(answered(what, response))
        if settings.template in ("wecom", "dingtalk"):
            _check_errcode(what, response)
        to = f" ({item.notice.contact})" if item.notice is not None else ""
        return f"{item.delivery.event} notification to {url}{to}"

    def close(self) -> None:
        self.client.close()


def _check_errcode(what: str, response: httpx.Response) -> None:
    """WeCom and DingTalk robots answer 200 with ``{"errcode": N, "errmsg": …}``."""
    try:
        answer = response.json()
    except ValueError:
        return
    code = answer.get("errcode", 0) if isinstance(answer, dict) else 0
    if not code:
        return
    message = f"{what}: errcode {code}: {str(answer.get('errmsg', ''))[:200]}"
    if code in _RATE_LIMITED:
        raise TargetUnavailableError(message)
    raise TargetRejectedError(message)
