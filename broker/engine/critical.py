"""The critical desk: opens a case for each urgent result, escalates it on the engine's timer.

* :meth:`CriticalDesk.open` (from the write-back stage's ``schedule``) opens the
  result's case with its deadline (``critical.acknowledge_within`` of the exam's
  end: the study's last image) and its escalation list (the route's
  ``critical_contacts``, else its site's, else ``critical.contacts``), and queues
  the first contact's notifications,
  one delivery per channel; the webhook's and the RIS's notices of the same
  result are listed in its ledger too.
* :meth:`CriticalDesk.tick` is a task of the job engine's timer: an open case
  whose contact has waited ``wait`` is escalated to the next contact (or the
  list is exhausted), and one past its deadline is flagged overdue, once each.
  The times are columns of the case, so after a restart the timer carries on.
* The notifications are write-backs of the channels' targets (``critical.NAME``):
  the job engine sends them with retries; :meth:`CriticalDesk.notice` gives a
  delivery's attempt its text and a fresh signed acknowledgement link, and
  :meth:`CriticalDesk.delivered` writes its outcome to the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Engine

from broker.engine.plan import Plan, Plans
from broker.engine.work import utc_now
from broker.model.critical import (
    CRITICAL_EVENT,
    CriticalCase,
    CriticalPolicy,
    FindingSummary,
    Notice,
    StepKind,
)
from broker.model.critical_link import AckClaim, link, sign
from broker.model.domain import Result, Study
from broker.model.errors import NotFoundError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.model.writeback import Delivery, DeliveryKind, DeliveryState
from broker.store import StudyStore
from broker.store.critical import CriticalStore, Linked, NewCase, NewNotice
from broker.store.deliveries import NewDelivery

LOG = get_logger("radbridge.critical")

Clock = Callable[[], datetime]


def summarize(result: Result) -> tuple[FindingSummary, ...]:
    """The result's urgent findings (all present ones when none is flagged urgent)."""
    found = result.findings.findings if result.findings is not None else ()
    chosen = [f for f in found if f.urgent] or [f for f in found if f.present]
    return tuple(FindingSummary(f.code.value, f.code.meaning, f.present, f.score) for f in chosen)


class CriticalDesk:
    """Critical-result cases: opened from results, escalated by the timer, acknowledged."""

    def __init__(
        self,
        engine: Engine,
        plans: Plans,
        *,
        wake: Callable[[str], None],
        clock: Clock = utc_now,
    ) -> None:
        self.store = CriticalStore(engine)
        self.studies = StudyStore(engine)
        self.plans = plans
        self.wake = wake
        """Wake the lane of a channel's target (a notification was queued)."""
        self.clock = clock

    # ---------------------------------------------------------------- opening

    def notices(
        self,
        plan: Plan,
        job_id: int | None,
        study_uid: str,
        level: int,
        named: str | None = None,
    ) -> list[NewNotice]:
        """The notifications of the contact at ``level`` of the list ``named`` (None: the
        default list): one per channel it is reached on."""
        policy = plan.critical
        contact = policy.contact(level, named)
        if contact is None:
            return []
        made = []
        for channel, address in contact.notify.items():
            target = policy.channels.get(channel)
            spec = plan.target(target) if target is not None else None
            if spec is None:
                LOG.error("critical channel is not configured", channel=channel, level=level)
                continue
            made.append(
                NewNotice(
                    contact=contact.name,
                    channel=channel,
                    address=address,
                    level=level,
                    delivery=NewDelivery(
                        study_uid=study_uid,
                        target=spec.name,
                        target_type=spec.type,
                        kind=DeliveryKind.NOTIFY,
                        max_attempts=spec.max_attempts,
                        job_id=job_id,
                        event=CRITICAL_EVENT,
                        urgent=True,
                    ),
                )
            )
        return made

    def _study(self, study_uid: str) -> Study | None:
        try:
            return self.studies.get_study(study_uid)
        except NotFoundError:
            return None

    def open(
        self, result: Result, job: Job, plan: Plan, linked: Sequence[Delivery] = ()
    ) -> CriticalCase:
        """Open the case of an urgent result (once) and queue its first notifications."""
        policy = plan.critical
        now = self.clock()
        study = self._study(result.study_uid)
        exam_end = study.last_received_at if study is not None else result.created_at
        accession = study.accession_number if study is not None else None
        named = policy.list_for(job.route, study.site if study is not None else None)
        first = 0 if policy.contacts_of(named) else -1
        case, made, opened = self.store.open(
            NewCase(
                result_id=result.id,
                job_id=job.id,
                study_uid=result.study_uid,
                accession_number=accession,
                vendor=job.vendor,
                route=job.route,
                findings=summarize(result),
                exam_end_at=exam_end,
                deadline_at=policy.deadline(exam_end),
                level=first,
                next_escalation_at=policy.next_escalation(first, now, named),
                contact_list=named,
            ),
            self.notices(plan, job.id, result.study_uid, first, named),
            [
                Linked(d, contact=d.target, channel=d.target_type, detail={"event": d.event})
                for d in linked
                if d.kind is not DeliveryKind.RESULT
            ],
            now=now,
        )
        if opened:
            LOG.warning(
                "critical case opened",
                case_id=case.id,
                result_id=result.id,
                job_id=job.id,
                deadline_at=case.deadline_at.isoformat(),
                notifications=len(made),
            )
        self._wake(made)
        return case

    def _wake(self, made: Sequence[Delivery]) -> None:
        for target in {d.target for d in made}:
            self.wake(target)

    # ---------------------------------------------------------------- the timer's task

    def tick(self, now: datetime) -> datetime | None:
        """Escalate the cases whose contact has waited long enough; flag the overdue ones."""
        with self.plans.use() as plan:
            for case in self.store.due(now):
                self._escalate(case, plan, now)
        for case in self.store.flag_overdue(now=now):
            LOG.error(
                "critical case not acknowledged by its deadline",
                case_id=case.id,
                deadline_at=case.deadline_at.isoformat(),
                level=case.level,
            )
        return self.store.next_wakeup()

    def _escalate(self, case: CriticalCase, plan: Plan, now: datetime) -> None:
        policy = plan.critical
        level = case.level + 1
        named = case.contact_list
        notices = self.notices(plan, case.job_id, case.study_uid, level, named)
        contact = policy.contact(level, named)
        if contact is not None and not notices:  # a contact reached on no channel
            LOG.error("critical contact has no channel to be notified on", level=level)
        next_at = policy.next_escalation(level, now, named) if contact is not None else None
        moved = self.store.escalate(case, level, notices, next_at, now=now)
        if moved is None:
            return
        _, made = moved
        if contact is None:
            LOG.error(
                "critical case: every contact was notified, none acknowledged", case_id=case.id
            )
        else:
            LOG.warning(
                "critical case escalated", case_id=case.id, level=level, notifications=len(made)
            )
        self._wake(made)

    # ---------------------------------------------------------------- sending

    def notice(self, delivery: Delivery, plan: Plan) -> Notice | None:
        """What the channel says for this notification: the case, the contact, its link."""
        step = self.store.notice_step(delivery.id)
        if step is None:
            return None
        case = self.store.get(step.case_id)
        policy = plan.critical
        contact = step.contact or ""
        # stamped as of the notification's making: every retry carries the same link
        url = _ack_link(policy, case.id, contact, step.level or 0, delivery.created_at)
        return Notice(
            case=case,
            contact=contact,
            channel=step.channel or "",
            address=step.address or "",
            level=step.level or 0,
            link=url,
            language=policy.language,
            timezone=policy.timezone,
        )

    def delivered(self, delivery: Delivery) -> None:
        """A notification is done or dead: its outcome in its case's ledger."""
        if delivery.state is DeliveryState.DONE:
            self.store.delivered(delivery, StepKind.SENT, now=self.clock())
        elif delivery.state is DeliveryState.DEAD:
            self.store.delivered(delivery, StepKind.FAILED, now=self.clock())


def _ack_link(
    policy: CriticalPolicy, case_id: int, contact: str, level: int, at: datetime
) -> str | None:
    if policy.link_secret is None or policy.link_base is None:
        return None
    claim = AckClaim(case_id, contact, level)
    return link(policy.link_base, sign(claim, policy.link_secret, at=at))
