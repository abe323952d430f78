"""Write-back: deliveries (one per result and target), their states, and the target interface.

A delivery is a work item of the job engine (:mod:`broker.model.work`), like a
vendor job. Pure: no I/O. The store (``broker.store.deliveries``) persists
deliveries and checks every transition against :data:`MACHINE`; the stage
(``broker.engine.writeback_stage``) runs a lane per target on the job engine;
the targets themselves live in ``adapters/writeback/`` and register by name,
so the broker only sees :class:`~broker.model.target.WritebackTarget`.

A delivery is one of three kinds:

- ``result``: the result written to a target (C-STORE / STOW-RS of its
  objects, an ORU^R01, a FHIR DiagnosticReport). These decide the job: all
  done → the job is ``done``; one dead → the job is ``dead``.
- ``status``: an urgent result's order-status update to the RIS (ORM^O01).
- ``notify``: a webhook notification (an urgent result, a job overdue, or a vendor alert
  such as ``drift`` or ``canary_failed``).
- ``flag``: a webhook notification that the result made its study
  ``discordant`` (two products disagree; :mod:`broker.model.reconciliation`).
- ``correction``: what a ``result`` delivery wrote is withdrawn or corrected
  (:mod:`broker.model.correction`); its ``event`` is the cause.

Notifications never decide a job's state; they are rows so that they are
durable, retried with the same backoff, and visible in ``radbridge
deliveries list``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from broker.model.alerts import Alert
from broker.model.correction import Correction
from broker.model.critical import Notice
from broker.model.domain import CodedValue, Result, StoredOrder, Study
from broker.model.jobs import Job
from broker.model.reconciliation import StudyFindings
from broker.model.work import Attempts, Machine, WorkEvent, WorkStateError


class DeliveryStateError(WorkStateError):
    """A delivery was asked to move to a state its current state cannot reach."""


class DeliveryChangedError(DeliveryStateError):
    """The delivery changed between reading it and writing it (another process moved it, or
    the worker's lease on it expired and another worker took it over)."""


class DeliveryState(CodedValue):
    """Where a delivery is. Accepts its value in any case."""

    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    """The last attempt failed; retried once ``next_attempt_at`` has passed."""
    DEAD = "dead"
    """Attempts exhausted, or an error no retry can fix; an operator can retry."""


class DeliveryKind(CodedValue):
    """What a delivery carries (see the module docstring)."""

    RESULT = "result"
    STATUS = "status"
    NOTIFY = "notify"
    FLAG = "flag"
    CORRECTION = "correction"
    CHARGE = "charge"
    """A billable use charged to the HIS (HL7 DFT^P03), once per usage row."""


D = DeliveryState

TRANSITIONS: Mapping[DeliveryState, frozenset[DeliveryState]] = {
    D.PENDING: frozenset({D.SENDING, D.DEAD}),
    D.SENDING: frozenset({D.DONE, D.FAILED, D.DEAD}),
    D.FAILED: frozenset({D.SENDING, D.PENDING, D.DEAD}),
    D.DEAD: frozenset({D.PENDING}),
    D.DONE: frozenset(),
}
#: The write-back's state machine, as the job engine uses it.
MACHINE: Machine[DeliveryState] = Machine(
    noun="delivery",
    transitions=TRANSITIONS,
    pending=D.PENDING,
    sending=D.SENDING,
    failed=D.FAILED,
    dead=D.DEAD,
    retryable=frozenset({D.DEAD, D.FAILED}),
    error=DeliveryStateError,
    changed=DeliveryChangedError,
)
#: States a worker claims a delivery from (a failed one is requeued to pending when due).
CLAIMABLE: frozenset[DeliveryState] = MACHINE.claimable
#: States an operator's retry starts over from.
RETRYABLE: frozenset[DeliveryState] = MACHINE.retryable
#: States that still need a worker.
UNFINISHED: frozenset[DeliveryState] = MACHINE.unfinished

#: The target name of the notification webhook (``notifications.webhook``).
WEBHOOK_TARGET = "notifications.webhook"


def check_transition(from_state: DeliveryState, to_state: DeliveryState) -> None:
    """Raise :class:`DeliveryStateError` unless ``from_state → to_state`` is allowed."""
    MACHINE.check(from_state, to_state)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery(Attempts):
    """One result (or job, for an overdue notice) to one target, as the store holds it
    (attempts, retry budget and claim: :class:`~broker.model.work.Attempts`).

    ``message_id`` is fixed when the row is made and used on every attempt:
    the HL7 message control ID (MSH-10), the FHIR Bundle identifier, the
    webhook's ``Idempotency-Key``; a retry therefore sends the same message.
    """

    id: int
    result_id: int | None
    job_id: int | None
    study_uid: str
    target: str
    target_type: str
    kind: DeliveryKind
    event: str
    """What a notification is about: ``urgent_result``, ``overdue``, ``discordant``, a
    vendor alert's kind (``drift``, ``version_changed``, ``results_missing``,
    ``canary_failed``);
    ``result`` otherwise, ``combined`` for a route's combined answer."""
    urgent: bool
    state: DeliveryState
    message_id: str
    detail: str | None
    """What the last successful attempt did (e.g. ``C-STORE to PACS@host:104``)."""
    correction_id: int | None = None
    """For a ``correction`` delivery: its :class:`~broker.model.correction.Correction`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryEvent(WorkEvent[DeliveryState]):
    """One transition in a delivery's history."""

    delivery_id: int


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One configured write-back target: its type, its settings and its retry policy."""

    name: str
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    max_attempts: int = 5
    backoff_base: float = 30.0
    backoff_cap: float = 3600.0


def no_sources() -> Sequence[str]:
    """The ``sources`` of an item without a job: none."""
    return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeLine:
    """One billable use as the HIS is charged for it (a ``charge`` delivery)."""

    job_id: int
    """The job the use counts (one usage row per job): the transaction id."""
    day: str
    """The site's date of the use (``YYYY-MM-DD``)."""
    vendor: str
    product: str
    contract: str | None
    unit: str
    quantity: int
    price: Decimal
    currency: str | None
    payer: str | None
    price_code: str | None
    province: str | None


@dataclass(frozen=True, slots=True)
class WritebackItem:
    """Everything a target needs for one attempt: the delivery and what it is about.

    ``result`` is None only for an overdue notification; ``order`` is the
    study's linked order (None: the study's own patient and accession are used);
    ``study`` is None if the store no longer has the study. ``sources()`` reads
    the spool paths of the images the job sent (empty once purged), for targets
    that render the result on those images; only they pay for the query.
    ``findings`` is the study's reconciled findings (provenance, owners, flags)
    when the service reconciles; for a ``combined`` delivery ``result`` is the
    combined answer (every live product's findings and the combined SR) made
    for this attempt.
    """

    delivery: Delivery
    job: Job | None
    result: Result | None
    study: Study | None
    order: StoredOrder | None
    route: str | None = None
    verdict_links: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    """Per finding (by index), the one-click verdict links a notification carries
    (``accepted``, ``rejected``); empty when ``http.verdict_link_secret`` is not set."""
    sources: Callable[[], Sequence[str]] = no_sources
    notice: Notice | None = None
    """For a critical-result notification: the case, the contact, the address, the link."""
    findings: StudyFindings | None = None
    note: str | None = None
    """A note for the RIS (the study's disagreements, with ``discordance.oru_note``)."""
    regulatory: str | None = None
    """The vendor product and its regulatory data in one line (named in the ORU)."""
    correction: Correction | None = None
    """For a ``correction`` delivery: why; ``original`` is the ``result`` delivery it corrects
    (its ``message_id`` names what the target holds: MSH-10, the FHIR identifiers)."""
    original: Delivery | None = None
    charge: ChargeLine | None = None
    """For a ``charge`` delivery: the use to charge."""
    alert: Alert | None = None
    """For a vendor alert's notification (``drift``, ``canary_failed``…): the alert."""
    renderings: Path | None = None
    """The spool folder of the result's renderings (``SPOOL/rendered/RESULT``): a target
    that renders makes them once there and sends the same files on every retry; retention
    removes it with the result's objects. None: made in a temporary folder per attempt."""
