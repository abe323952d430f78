"""Counting what is sent out: usage rows and the audit trail of every delivery, trial quotas.

:class:`Accounting` is the job worker's ``on_sent`` hook: when a job
reaches ``sent`` it writes, in one transaction, the job's usage row (once
per job) and the ``study.sent`` audit row (vendor, series, route). At start,
:meth:`Accounting.reconcile` counts jobs that were sent just before a crash
and not counted yet. A job routed under a contract is counted as its terms
say (``job_terms``: contract, payer, price code, trial / package / per use);
quotas are kept by routing (:mod:`broker.runtime.contracts`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from broker.engine.metrics import DELIVERY_LATENCY_SECONDS, DELIVERY_SEND_SECONDS, count_error
from broker.model.canary import CANARY_ROUTE
from broker.model.contract import UseCharge
from broker.model.errors import NotFoundError, RadbridgeError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome
from broker.model.writeback import DeliveryKind
from broker.runtime.snapshot import configured_shadow
from broker.store.audit import SYSTEM, Action, record_in
from broker.store.contracts import ContractStore
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.engine import writing
from broker.store.jobs import JobStore
from broker.store.studies import StudyStore
from broker.store.usage import Charge, UsageEntry, UsageStore
from config.schema import Settings
from config.vendors import BillingUnit

LOG = get_logger("radbridge.billing")

SettingsSource = Callable[[], Settings]


def site_day(settings: Settings, at: datetime, site: str | None = None) -> datetime:
    """``at`` in the site's timezone (its date is the usage day): the sending site's
    (``sites:``) when given, else the hub's (``site.timezone``)."""
    found = settings.site_directory().get(site)
    return at.astimezone(ZoneInfo(found.timezone if found else settings.site.timezone))


class Accounting:
    """Usage and audit rows for every job that reaches ``sent``."""

    def __init__(self, engine: Engine, settings: SettingsSource) -> None:
        self.engine = engine
        self.settings = settings
        self.usage = UsageStore(engine)
        self.studies = StudyStore(engine)
        self.jobs = JobStore(engine)
        self.terms = ContractStore(engine)

    def job_sent(self, job: Job, outcome: SendOutcome | None, now: datetime | None = None) -> None:
        """The worker's hook: count the job and audit the delivery. Never raises."""
        now = now or datetime.now(UTC)
        if outcome is not None:
            DELIVERY_SEND_SECONDS.labels(vendor=job.vendor).observe(outcome.seconds)
            DELIVERY_LATENCY_SECONDS.labels(vendor=job.vendor, priority=job.priority.value).observe(
                max((now - job.created_at).total_seconds(), 0.0)
            )
        try:
            self.record(job, now, outcome)
        except (RadbridgeError, ValueError) as exc:
            count_error("accounting", exc)
            LOG.error("cannot record the delivery's usage and audit", job_id=job.id, error=str(exc))

    def record(
        self, job: Job, sent_at: datetime, outcome: SendOutcome | None = None
    ) -> UsageEntry | None:
        """Write the job's usage row and its ``study.sent`` audit row (None: counted before).
        A canary (:mod:`broker.model.canary`) is audited, never counted."""
        settings = self.settings()
        vendor = settings.vendors.get(job.vendor)
        series_uids = list(job.series_uids)
        if not series_uids:
            try:
                series_uids = [s.series_uid for s in self.studies.get_study(job.study_uid).series]
            except NotFoundError:
                series_uids = []
        billing = vendor.billing if vendor is not None else None
        unit = billing.unit if billing is not None else BillingUnit.STUDY
        terms = self.terms.get(job.study_uid, job.vendor)
        contract = settings.contracts.get(terms.contract or "") if terms is not None else None
        if contract is not None:
            unit = contract.unit
        price = billing.price if billing is not None else Decimal(0)
        currency = billing.currency if billing is not None else None
        if terms is not None and terms.price is not None:
            price, currency = terms.price, terms.currency
        site = self.studies.site_of(job.study_uid) if settings.sites else None
        charge = Charge(
            job_id=job.id,
            study_uid=job.study_uid,
            vendor=job.vendor,
            product=vendor.product if vendor is not None else job.vendor,
            site=site or settings.site.name,  # the sending site's id; the hub's name
            day=site_day(settings, sent_at, site).date(),
            route=job.route,
            sent_at=sent_at,
            unit=unit.value,
            quantity=max(len(series_uids), 1) if unit is BillingUnit.SERIES else 1,
            series_count=len(series_uids),
            price=price,
            currency=currency,
            trial_quota=billing.trial_quota if billing is not None else None,
            when_quota_used=billing.when_quota_used.value if billing is not None else "bill",
            bundle=billing.bundle if billing is not None else None,
            shadow=job.shadow is not None or configured_shadow(settings, job.route, job.vendor),
            contract=terms.contract if terms is not None else None,
            charge=terms.charge if terms is not None else None,
            payer=terms.payer if terms is not None else None,
            price_code=terms.price_code if terms is not None else None,
            province=terms.province if terms is not None else None,
        )
        detail = {
            "vendor": job.vendor,
            "product": charge.product,
            "route": job.route,
            "study_uid": job.study_uid,
            "series_uids": series_uids,
            "attempt": job.attempts,
            "study_revision": job.study_revision,
        }
        if charge.shadow:
            detail["mode"] = "shadow"
        if outcome is not None:
            detail |= {"instances": outcome.instances, "bytes": outcome.bytes}
            if outcome.deidentified is not None:
                detail["deidentified"] = dict(outcome.deidentified)
        if terms is not None:
            detail |= {"contract": terms.contract, "charge": terms.charge}

        def audit(conn: Connection) -> None:
            record_in(
                conn,
                SYSTEM,
                Action.STUDY_SENT,
                f"job:{job.id}",
                detail=detail,
                peer=job.vendor,
                now=sent_at,
            )

        if job.route == CANARY_ROUTE:
            detail["canary"] = True
            with writing(self.engine) as conn:
                audit(conn)
            return None

        charge_to = contract.charge_to if contract is not None else None
        charged = charge_to is not None and charge.charge is UseCharge.PER_USE
        target = settings.targets.get(charge_to) if charge_to is not None else None

        def counted(conn: Connection) -> None:
            audit(conn)
            if charged and target is not None and charge_to is not None:
                new = NewDelivery(
                    study_uid=job.study_uid,
                    target=charge_to,
                    target_type=target.type,
                    kind=DeliveryKind.CHARGE,
                    max_attempts=target.retries,
                    job_id=job.id,
                    event="charge",
                )
                DeliveryStore(self.engine).create_in(conn, new, sent_at)

        entry = self.usage.record(charge, also=counted)
        if entry is None:
            # Sent again (the study was updated): counted once, but every send is audited.
            with writing(self.engine) as conn:
                audit(conn)
        return entry

    def reconcile(self) -> int:
        """Count jobs that reached ``sent`` but were not counted (a crash between the two)."""
        done = 0
        for job_id in self.usage.uncounted_sent_jobs():
            sent_at = self.usage.first_sent_at(job_id) or datetime.now(UTC)
            try:
                self.record(self.jobs.get(job_id), sent_at)
                done += 1
            except RadbridgeError as exc:
                LOG.error("cannot count a sent job", job_id=job_id, error=str(exc))
        if done:
            LOG.warning("sent jobs counted at start (usage was missing)", jobs=done)
        return done
