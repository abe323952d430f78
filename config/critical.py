"""Settings of critical-result cases (危急值): the ``critical`` block.

```yaml
critical:
  acknowledge_within: 30m        # from the exam's end (the study's last image)
  escalate_after: 10m            # a contact's wait before the next is notified
  link_valid_for: 24h            # signed acknowledgement links (secret from the environment)
  channels:
    sms:    {url: https://sms-gateway.local/send, template: sms}
    wecom:  {url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…", template: wecom}
    ding:   {url: "https://oapi.dingtalk.com/robot/send?access_token=…", template: dingtalk}
    pager:
      url: https://pager.local/api
      body: '{"to": {{ to | tojson }}, "msg": {{ text | tojson }}}'
  contacts:                      # the default escalation list
    - {name: Dr. Li (neuro on call), notify: {sms: "13800000001", wecom: lisi}}
    - {name: Dr. Wang (head of radiology), notify: {sms: "13800000002"}, wait: 5m}
  lists:                         # named lists, for routes and sites that name one
    stroke: [{name: Dr. Zhao (stroke team), notify: {sms: "13800000003"}}]
routes:
  - {name: head-ct-bleed, ..., critical_contacts: stroke}
sites:
  township-a: {..., critical_contacts: township-a-duty}
```

A case uses its route's ``critical_contacts``, else its study's site's, else
``contacts``.

Every urgent result opens a case whether or not contacts are configured (it is
then acknowledged in the console or the API). A channel is a webhook: ``template``
picks a body (``json``: radbridge's own, ``sms``, ``wecom``, ``dingtalk``) or
``body`` is a Jinja2 template of the JSON body (``to``, ``text``, ``link``,
``contact``, ``case``). The link secret and channel tokens come from the
environment only: ``RADBRIDGE_CRITICAL__LINK_SECRET``,
``RADBRIDGE_CRITICAL__CHANNELS__<NAME>__TOKEN``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from broker.model.critical import ACKNOWLEDGE_WITHIN, ESCALATE_AFTER
from broker.model.errors import did_you_mean
from config.base import Duration, HttpUrl, Strict, Timeout

ChannelName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")]
ListName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
"""An escalation list's name (``critical.lists``; routes and sites name it)."""


class Channel(Strict):
    """One notification channel: a webhook with a body template."""

    url: HttpUrl
    template: Literal["json", "sms", "wecom", "dingtalk"] = "json"
    body: Annotated[str, Field(min_length=2, max_length=4000)] | None = None
    """A Jinja2 template of the JSON body, for gateways none of the templates fits."""
    token: SecretStr | None = None
    """Sent as ``Authorization: Bearer …`` (environment only)."""
    timeout: Timeout = 10.0
    retries: Annotated[int, Field(ge=1, le=100)] = 5


class ContactSettings(Strict):
    """One person on the escalation list."""

    name: Annotated[str, Field(min_length=1, max_length=160)]
    notify: dict[ChannelName, Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=dict
    )
    """Channel → address on it (mobile number, WeCom or DingTalk user id)."""
    wait: Duration | None = None
    """Before the next contact is notified; ``escalate_after`` when not given."""


class Critical(Strict):
    """Who must acknowledge urgent results, by when, and how they are reached."""

    acknowledge_within: Duration = ACKNOWLEDGE_WITHIN
    escalate_after: Duration = ESCALATE_AFTER
    link_valid_for: Duration = 24 * 3600.0
    link_secret: SecretStr | None = None
    """Signs acknowledgement links (environment only); without it no link is sent."""
    channels: dict[ChannelName, Channel] = Field(default_factory=dict)
    contacts: list[ContactSettings] = Field(default_factory=list)
    """The default escalation list."""
    lists: dict[ListName, list[ContactSettings]] = Field(default_factory=dict)
    """Named escalation lists, for routes and sites that name one (``critical_contacts``)."""

    @model_validator(mode="after")
    def _channels_known(self) -> Critical:
        named = [("contacts", self.contacts)]
        named += [(f"lists.{name}", contacts) for name, contacts in self.lists.items()]
        for where, contacts in named:
            for i, contact in enumerate(contacts):
                for channel in contact.notify:
                    if channel not in self.channels:
                        valid = ", ".join(sorted(self.channels)) or "none (add critical.channels)"
                        raise ValueError(
                            f"{where}.{i} ({contact.name}): no channel '{channel}'"
                            f"{did_you_mean(channel, self.channels)}; valid: {valid}"
                        )
        return self


def check_contact_lists(
    critical: Critical, named_by: Iterable[tuple[tuple[str | int, ...], str | None]]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems of the ``critical_contacts`` routes and sites name (where, the name): each
    must be one of ``critical.lists``."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for where, name in named_by:
        if name is None or name in critical.lists:
            continue
        valid = ", ".join(sorted(critical.lists)) or "none (add critical.lists)"
        problems.append(
            (
                where,
                f"no escalation list '{name}'{did_you_mean(name, critical.lists)}; valid: {valid}",
            )
        )
    return problems
