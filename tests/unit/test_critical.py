"""Critical-result cases as plain functions: escalation times, signed links, the channels'
message templates (SMS, WeCom, DingTalk, a custom body) and the ``critical`` settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from adapters.writeback.webhook import WebhookSettings, dingtalk_signed, render
from broker.model.critical import (
    CaseState,
    Contact,
    CriticalCase,
    CriticalPolicy,
    FindingSummary,
    Notice,
)
from broker.model.critical_link import AckClaim, AckLinkError, sign, verify
from broker.model.writeback import Delivery, DeliveryKind, DeliveryState, WritebackItem
from config.critical import Critical

NOW = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
SECRET = "s3cret-for-tests"


def _policy() -> CriticalPolicy:
    return CriticalPolicy(
        contacts=(Contact("Dr. Li", {"sms": "138"}, wait=600), Contact("Dr. Wang", {}, wait=300)),
        acknowledge_within=1800,
    )


def test_deadline_and_escalation_times_follow_the_policy() -> None:
    """The deadline is 30 min after the exam's end; each contact waits its own time; there is
    nothing to escalate to past the last one."""
    policy = _policy()
    assert policy.deadline(NOW) == NOW + timedelta(minutes=30)
    assert policy.next_escalation(0, NOW) == NOW + timedelta(minutes=10)
    assert policy.next_escalation(1, NOW) == NOW + timedelta(minutes=5)
    assert policy.next_escalation(2, NOW) is None and policy.contact(-1) is None


def test_a_signed_link_names_its_case_and_contact_and_nothing_else_passes() -> None:
    """A token verifies to its own case and contact; another secret, an altered token or an
    expired one is refused."""
    token = sign(AckClaim(7, "Dr. Li", 0), SECRET)
    assert verify(token, SECRET, 3600) == AckClaim(7, "Dr. Li", 0)
    with pytest.raises(AckLinkError, match="not valid"):
        verify(token, "another secret", 3600)
    with pytest.raises(AckLinkError, match="not valid"):
        verify(token[:-3] + ("xyz" if not token.endswith("xyz") else "abc"), SECRET, 3600)
    with pytest.raises(AckLinkError, match="expired"):
        verify(token, SECRET, -1)


def _item(template_address: str = "13800000001") -> WritebackItem:
    case = CriticalCase(
        id=3,
        result_id=9,
        job_id=4,
        study_uid="1.2.3",
        accession_number="ACC42",
        vendor="ichai",
        route="head-ct-bleed",
        findings=(FindingSummary("1386000", "Intracranial hemorrhage", True, 0.97),),
        state=CaseState.OPEN,
        opened_at=NOW,
        exam_end_at=NOW,
        deadline_at=NOW + timedelta(minutes=30),
        level=0,
        next_escalation_at=None,
        overdue_at=None,
    )
    delivery = Delivery(
        id=1,
        result_id=None,
        job_id=4,
        study_uid="1.2.3",
        target="critical.sms",
        target_type="webhook",
        kind=DeliveryKind.NOTIFY,
        event="critical_result",
        urgent=True,
        state=DeliveryState.SENDING,
        message_id="RB1",
        detail=None,
        attempts=1,
        max_attempts=5,
        next_attempt_at=None,
        last_error=None,
        created_at=NOW,
        updated_at=NOW,
    )
    notice = Notice(
        case=case,
        contact="Dr. Li",
        channel="sms",
        address=template_address,
        level=0,
        link="https://rb.local/console/critical/ack/TOKEN",
        language="zh_CN",
        timezone="Asia/Shanghai",
    )
    return WritebackItem(delivery, None, None, None, None, notice=notice)


def _settings(**values: object) -> WebhookSettings:
    return WebhookSettings.model_validate({"url": "https://gw.local/send", **values})


def test_channel_templates_speak_each_gateway() -> None:
    """SMS: to + text (the site's language, local deadline, the link); WeCom and DingTalk:
    a text message mentioning the contact's mobile; JSON: the case in radbridge's body."""
    item = _item()
    sms = render(_settings(template="sms"), item)
    assert sms["to"] == "13800000001"
    assert "危急值" in sms["text"] and "ACC42" in sms["text"] and "10:30" in sms["text"]
    assert sms["text"].endswith("https://rb.local/console/critical/ack/TOKEN")
    wecom = render(_settings(template="wecom"), item)
    assert wecom["msgtype"] == "text" and wecom["text"]["mentioned_mobile_list"] == ["13800000001"]
    ding = render(_settings(template="dingtalk"), item)
    assert ding["at"] == {"atMobiles": ["13800000001"], "isAtAll": False}
    plain = render(_settings(), item)
    assert plain["critical"]["case_id"] == 3 and plain["critical"]["ack_url"].endswith("TOKEN")
    assert plain["event"] == "critical_result" and plain["accession_number"] == "ACC42"


def test_a_custom_body_template_renders_json_and_a_bad_one_is_refused_at_load() -> None:
    """``body`` is a Jinja2 template of JSON (quotes in the text stay JSON); one that does not
    make JSON is a settings error."""
    body = (
        '{"phone": {{ to | tojson }}, "content": {{ text | tojson }}, "url": {{ link | tojson }}}'
    )
    rendered = render(_settings(body=body), _item('a"b'))
    assert rendered["phone"] == 'a"b' and rendered["url"].endswith("TOKEN")
    with pytest.raises(ValidationError, match="not a template of JSON"):
        _settings(body='{"phone": {{ to }}')


def test_dingtalk_signature_is_the_documented_hmac() -> None:
    """DingTalk's signed robots: timestamp and base64(HMAC-SHA256(secret, "ts\\nsecret"))."""
    url = dingtalk_signed("https://oapi.dingtalk.com/robot/send?access_token=T", "SEC", 1700000)
    query = parse_qs(urlsplit(url).query)
    assert query["access_token"] == ["T"] and query["timestamp"] == ["1700000"]
    expected = hmac.new(b"SEC", b"1700000\nSEC", hashlib.sha256).digest()
    assert base64.b64decode(query["sign"][0]) == expected


def test_a_contact_on_an_unknown_channel_is_refused_naming_the_valid_ones() -> None:
    """``critical.contacts[].notify`` may name only configured channels."""
    with pytest.raises(ValidationError, match=r"no channel 'smss'; did you mean 'sms'.*valid: sms"):
        Critical.model_validate(
            {
                "channels": {"sms": {"url": "https://gw.local/send", "template": "sms"}},
                "contacts": [{"name": "Dr. Li", "notify": {"smss": "138"}}],
            }
        )
    assert json.loads(Critical().model_dump_json())["acknowledge_within"] == 1800
