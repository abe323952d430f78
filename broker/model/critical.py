"""Critical-result cases (危急值): an urgent AI finding that a named person must acknowledge.

An urgent result opens one case. Its contacts are notified in turn, each on
its channels (webhook templates: SMS, WeCom, DingTalk gateways; the RIS hears
through its order-status update): the first at once, the next when the one
before has had its ``wait`` without an acknowledgement (escalation), until the
list is exhausted. The case must be acknowledged by a named person before its
deadline (``acknowledge_within`` of the exam's end, 30 minutes by default);
past it, an open case is overdue. Every step (opened, notified, sent, failed,
escalated, exhausted, overdue, acknowledged) is a row of the case's ledger.

Pure: no I/O. The store keeps cases (:mod:`broker.store.critical`), the engine's
timer escalates them (:mod:`broker.engine.critical`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.model.domain import CodedValue, Role
from broker.model.errors import RadbridgeError

#: The default time from the exam's end to the acknowledgement (Chinese 危急值 rules: 30 min).
ACKNOWLEDGE_WITHIN = 30 * 60.0
#: The default wait on each contact before the next one is notified.
ESCALATE_AFTER = 10 * 60.0
#: The least role that acknowledges a critical result (radiologists and clinicians: readers).
ACK_ROLE = Role.READER
#: The event name of a critical-result notification (a delivery's ``event``).
CRITICAL_EVENT = "critical_result"
#: Prefix of the write-back target that carries a notification channel (``critical.sms``).
CHANNEL_PREFIX = "critical."


class CaseState(CodedValue):
    """Where a case stands: ``open`` until a named person acknowledges it."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"


class StepKind(CodedValue):
    """What one row of a case's ledger records."""

    OPENED = "opened"
    NOTIFIED = "notified"
    """A notification was queued for a contact on a channel (its delivery)."""
    SENT = "sent"
    """The channel accepted it (the delivery is done)."""
    FAILED = "failed"
    """The channel never took it (the delivery is dead)."""
    ESCALATED = "escalated"
    EXHAUSTED = "exhausted"
    """The last contact's wait ended with no acknowledgement; the case stays open."""
    OVERDUE = "overdue"
    ACKNOWLEDGED = "acknowledged"


class AckVia(CodedValue):
    """Where an acknowledgement came from."""

    CONSOLE = "console"
    API = "api"
    LINK = "link"
    CLI = "cli"


class CaseStateError(RadbridgeError):
    """The case cannot do that in its state (acknowledged twice)."""


@dataclass(frozen=True, slots=True)
class Contact:
    """One person on the escalation list: who, where on each channel, how long to wait."""

    name: str
    notify: Mapping[str, str]
    """Channel name → the address on it (a mobile number, a WeCom or DingTalk user id)."""
    wait: float = ESCALATE_AFTER
    """Seconds without an acknowledgement before the next contact is notified."""


@dataclass(frozen=True, slots=True)
class CriticalPolicy:
    """The ``critical`` settings in force: contacts, channels, deadline and signed links."""

    contacts: tuple[Contact, ...] = ()
    """The default escalation list (``critical.contacts``)."""
    lists: Mapping[str, tuple[Contact, ...]] = field(default_factory=dict)
    """The named escalation lists (``critical.lists``) routes and sites name."""
    route_lists: Mapping[str, str] = field(default_factory=dict)
    """Route name → the list its cases use (``routes[].critical_contacts``)."""
    site_lists: Mapping[str, str] = field(default_factory=dict)
    """Site id → the list its studies' cases use (``sites.ID.critical_contacts``)."""
    channels: Mapping[str, str] = field(default_factory=dict)
    """Channel name → the write-back target that carries it (``critical.sms``)."""
    acknowledge_within: float = ACKNOWLEDGE_WITHIN
    link_base: str | None = None
    """Where a signed acknowledgement link points (the console's public address)."""
    link_secret: str | None = None
    """Signs the links (from the environment only); None: no links are sent."""
    link_valid_for: float = 24 * 3600.0
    language: str = "en"
    timezone: str = "UTC"

    def list_for(self, route: str | None, site: str | None) -> str | None:
        """The escalation list a case of ``route`` for a study of ``site`` uses: the
        route's, else the site's, else the default (None)."""
        if route is not None and route in self.route_lists:
            return self.route_lists[route]
        if site is not None and site in self.site_lists:
            return self.site_lists[site]
        return None

    def contacts_of(self, named: str | None) -> tuple[Contact, ...]:
        """The contacts of the list ``named`` (None, or a list no longer configured: the
        default list)."""
        if named is None:
            return self.contacts
        return self.lists.get(named, self.contacts)

    def contact(self, level: int, named: str | None = None) -> Contact | None:
        """The contact at ``level`` (0 is the first) of the list ``named`` (None: the
        default), if there is one."""
        contacts = self.contacts_of(named)
        return contacts[level] if 0 <= level < len(contacts) else None

    def deadline(self, exam_end: datetime) -> datetime:
        """When a case of an exam that ended at ``exam_end`` must be acknowledged."""
        return exam_end + timedelta(seconds=self.acknowledge_within)

    def next_escalation(
        self, level: int, notified_at: datetime, named: str | None = None
    ) -> datetime | None:
        """When the contact at ``level`` of the list ``named``, notified at ``notified_at``,
        has waited long enough (None: nobody is on the list at that level)."""
        contact = self.contact(level, named)
        return None if contact is None else notified_at + timedelta(seconds=contact.wait)


@dataclass(frozen=True, slots=True)
class FindingSummary:
    """What the case is about, as notifications say it (no patient data)."""

    code: str
    meaning: str
    present: bool | None
    score: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CriticalCase:
    """One critical-result case as the store holds it."""

    id: int
    result_id: int
    job_id: int | None
    study_uid: str
    accession_number: str | None
    vendor: str | None
    route: str | None
    findings: tuple[FindingSummary, ...]
    state: CaseState
    opened_at: datetime
    exam_end_at: datetime
    deadline_at: datetime
    level: int
    """The last contact notified (index in the list); -1: nobody yet (no contacts)."""
    next_escalation_at: datetime | None
    overdue_at: datetime | None
    contact_list: str | None = None
    """The escalation list it uses (its route's or its site's); None: the default."""
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_via: AckVia | None = None
    acknowledged_actor: str | None = None
    note: str | None = None

    def overdue(self, now: datetime) -> bool:
        """Open past its deadline (red on the dashboard)."""
        return self.state is CaseState.OPEN and now >= self.deadline_at

    @property
    def summary(self) -> str:
        """``Intracranial hemorrhage`` (the present findings' meanings, or all of them)."""
        present = [f.meaning for f in self.findings if f.present is not False]
        return "; ".join(present or [f.meaning for f in self.findings]) or "urgent result"

    @property
    def minutes_to_ack(self) -> float | None:
        """Minutes from the exam's end to the acknowledgement (None while open)."""
        if self.acknowledged_at is None:
            return None
        return (self.acknowledged_at - self.exam_end_at).total_seconds() / 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseStep:
    """One row of a case's ledger."""

    id: int
    case_id: int
    at: datetime
    kind: StepKind
    level: int | None = None
    contact: str | None = None
    channel: str | None = None
    address: str | None = None
    delivery_id: int | None = None
    actor: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """What a channel needs to say one notification: the case, to whom, and the link."""

    case: CriticalCase
    contact: str
    channel: str
    address: str
    level: int
    link: str | None = None
    language: str = "en"
    """The site's language, which a text message is written in."""
    timezone: str = "UTC"
    """The site's timezone, which a text message gives times in."""
