"""Usage for settlement with vendors: one row per delivered study and vendor product.

A row is written when a job first reaches ``sent`` (idempotent on the job id):
vendor, product, site, the site's local day, billing unit and quantity (1 per
study; the number of series sent for ``series``; for ``bundle`` 1 per study
for all products of the bundle together), whether it was a free trial study
and whether it is billable. :meth:`UsageStore.report` sums the rows per
vendor, product, site and day.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select
from sqlalchemy.exc import SQLAlchemyError

from broker.model.canary import CANARY_ROUTE
from broker.model.contract import UseCharge
from broker.model.errors import StoreError
from broker.model.jobs import UNFINISHED, JobState
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import job_events, jobs, usage

#: What a vendor's ``billing.when_quota_used`` may say (``config.vendors.QuotaAction``).
BILL, STOP_ROUTING, MARK_UNBILLABLE = "bill", "stop_routing", "mark_unbillable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """How one delivered job is counted, before trial and bundle are applied."""

    job_id: int
    study_uid: str
    vendor: str
    product: str
    site: str
    day: date
    route: str
    sent_at: datetime
    unit: str = "study"
    quantity: int = 1
    series_count: int = 1
    price: Decimal = Decimal(0)
    currency: str | None = None
    trial_quota: int | None = None
    when_quota_used: str = BILL
    bundle: str | None = None
    """The bundle this product is counted in (only with unit ``bundle``)."""
    shadow: bool = False
    """A silent trial (``mode: shadow``): counted as trial, never billed, and not taken
    from the vendor's trial quota."""
    contract: str | None = None
    charge: UseCharge | None = None
    """What the use counts as, decided when it was routed under its contract (None: no
    contract; ``trial_quota`` and ``when_quota_used`` decide as before contracts)."""
    payer: str | None = None
    price_code: str | None = None
    province: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEntry:
    """A row as stored."""

    job_id: int
    study_uid: str
    vendor: str
    product: str
    site: str
    day: str
    unit: str
    quantity: int
    series_count: int
    billable: bool
    trial: bool
    price: Decimal
    currency: str | None
    route: str
    sent_at: datetime
    shadow: bool = False
    contract: str | None = None
    charge: str | None = None
    payer: str | None = None
    price_code: str | None = None
    province: str | None = None


@dataclass(slots=True, kw_only=True)
class UsageLine:
    """One line of a usage report: a vendor product at a site on one day."""

    vendor: str
    product: str
    site: str
    day: str
    unit: str
    currency: str | None
    contract: str | None = None
    payer: str | None = None
    price_code: str | None = None
    province: str | None = None
    studies: int = 0
    quantity: int = 0
    billable: int = 0
    """Quantity that is billed."""
    trial: int = 0
    """Quantity within the free trial quota."""
    unbillable: int = 0
    """Quantity past the quota of a ``mark_unbillable`` (or ``stop_routing``) vendor."""
    package: int = 0
    """Quantity within a package contract (paid by the package, not per use)."""
    amount: Decimal = field(default_factory=lambda: Decimal(0))

    def as_json(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "product": self.product,
            "site": self.site,
            "day": self.day,
            "unit": self.unit,
            "studies": self.studies,
            "quantity": self.quantity,
            "billable": self.billable,
            "trial": self.trial,
            "unbillable": self.unbillable,
            "amount": str(self.amount),
            "currency": self.currency,
            "package": self.package,
            "contract": self.contract,
            "payer": self.payer,
            "price_code": self.price_code,
            "province": self.province,
        }


REPORT_COLUMNS = (
    "vendor",
    "product",
    "site",
    "day",
    "unit",
    "studies",
    "quantity",
    "billable",
    "trial",
    "unbillable",
    "amount",
    "currency",
    "package",
    "contract",
    "payer",
    "price_code",
    "province",
)


def report_csv(lines: Sequence[UsageLine]) -> str:
    """The report as CSV with a header row (``REPORT_COLUMNS``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for line in lines:
        data = line.as_json()
        writer.writerow(["" if data[c] is None else data[c] for c in REPORT_COLUMNS])
    return buffer.getvalue()


def _entry(r: Any) -> UsageEntry:
    return UsageEntry(
        job_id=r.job_id,
        study_uid=r.study_uid,
        vendor=r.vendor,
        product=r.product,
        site=r.site,
        day=r.day,
        unit=r.unit,
        quantity=r.quantity,
        series_count=r.series_count,
        billable=bool(r.billable),
        trial=bool(r.trial),
        price=Decimal(r.price),
        currency=r.currency,
        route=r.route,
        sent_at=r.sent_at,
        shadow=bool(r.shadow),
        contract=r.contract,
        charge=r.charge,
        payer=r.payer,
        price_code=r.price_code,
        province=r.province,
    )


class UsageStore:
    """Table ``usage``: record delivered jobs, report, and trial quota use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self, charge: Charge, *, also: Callable[[Connection], None] | None = None
    ) -> UsageEntry | None:
        """Count a delivered job once; None if it was counted before.

        A shadow job is a trial study, never billable, outside the trial quota.
        Within the vendor's ``trial_quota`` the study is a free trial study
        (not billable); past it, ``when_quota_used`` decides (``bill`` →
        billable, otherwise not billable). ``also`` runs in the same
        transaction when the row is new (the audit row of the delivery).
        """
        try:
            with writing(self.engine) as conn:
                if conn.execute(select(usage.c.id).where(usage.c.job_id == charge.job_id)).first():
                    return None
                if charge.charge is not None and not charge.shadow:
                    trial, billable = charge.charge.free, charge.charge.billable
                else:
                    trial, billable = self._trial(conn, charge)
                quantity, bundle_key = self._bundle(conn, charge)
                values = {
                    "job_id": charge.job_id,
                    "study_uid": charge.study_uid,
                    "vendor": charge.vendor,
                    "product": charge.product[:128],
                    "site": charge.site[:128],
                    "day": charge.day.isoformat(),
                    "unit": charge.unit,
                    "quantity": quantity,
                    "series_count": charge.series_count,
                    "billable": billable,
                    "trial": trial,
                    "price": str(charge.price),
                    "currency": charge.currency,
                    "bundle_key": bundle_key,
                    "route": charge.route,
                    "sent_at": charge.sent_at,
                    "shadow": charge.shadow,
                    "contract": charge.contract,
                    "charge": charge.charge.value if charge.charge is not None else None,
                    "payer": charge.payer,
                    "price_code": charge.price_code,
                    "province": charge.province,
                }
                inserted = conn.execute(
                    _insert(conn, usage)
                    .values(values)
                    .on_conflict_do_nothing()
                    .returning(usage.c.id)
                ).scalar_one_or_none()
                if inserted is None:  # another worker counted it (or the bundle) meanwhile
                    return None
                if also is not None:
                    also(conn)
                row = conn.execute(select(usage).where(usage.c.id == inserted)).one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record usage of job {charge.job_id}: {exc}") from exc
        return _entry(row)

    @staticmethod
    def _trial(conn: Connection, charge: Charge) -> tuple[bool, bool]:
        if charge.shadow:
            return True, False
        if charge.trial_quota is None:
            return False, True
        used = conn.execute(
            select(func.count()).where(
                usage.c.vendor == charge.vendor,
                usage.c.trial.is_(True),
                usage.c.shadow.is_(False),
            )
        ).scalar_one()
        if used < charge.trial_quota:
            return True, False
        return False, charge.when_quota_used == BILL

    @staticmethod
    def _bundle(conn: Connection, charge: Charge) -> tuple[int, str | None]:
        if charge.unit != "bundle":
            return charge.quantity, None
        key = f"{charge.bundle or charge.vendor}:{charge.study_uid}"[:160]
        taken = conn.execute(select(usage.c.id).where(usage.c.bundle_key == key)).first()
        return (0, None) if taken else (1, key)

    def get(self, job_id: int) -> UsageEntry | None:
        """The row of a job, if it was counted."""
        with self.engine.connect() as conn:
            row = conn.execute(select(usage).where(usage.c.job_id == job_id)).one_or_none()
        return None if row is None else _entry(row)

    def entries(self, start: date, end: date, vendor: str | None = None) -> list[UsageEntry]:
        """The rows of the days ``start`` to ``end`` (both included), in delivery order."""
        stmt = (
            select(usage)
            .where(usage.c.day >= start.isoformat(), usage.c.day <= end.isoformat())
            .order_by(usage.c.id)
        )
        if vendor is not None:
            stmt = stmt.where(usage.c.vendor == vendor)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(stmt).all()]

    def report(
        self,
        start: date,
        end: date,
        vendor: str | None = None,
        sites: Collection[str] | None = None,
    ) -> list[UsageLine]:
        """Usage of the days ``start`` to ``end`` (both included, site days), one line per
        vendor, product, site, day and unit, sorted by day then vendor; only ``sites``'
        lines when given (a site's id; the hub's name for its own studies)."""
        cols = (
            usage.c.vendor,
            usage.c.product,
            usage.c.site,
            usage.c.day,
            usage.c.unit,
            usage.c.currency,
            usage.c.price,
            usage.c.billable,
            usage.c.trial,
            usage.c.contract,
            usage.c.charge,
            usage.c.payer,
            usage.c.price_code,
            usage.c.province,
        )
        stmt = (
            select(*cols, func.count().label("studies"), func.sum(usage.c.quantity).label("qty"))
            .where(usage.c.day >= start.isoformat(), usage.c.day <= end.isoformat())
            .group_by(*cols)
        )
        if vendor is not None:
            stmt = stmt.where(usage.c.vendor == vendor)
        if sites is not None:
            stmt = stmt.where(usage.c.site.in_(sorted(sites)))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        lines: dict[tuple[str, ...], UsageLine] = {}
        for r in rows:
            terms = (r.contract or "", r.payer or "", r.price_code or "", r.province or "")
            key = (r.day, r.vendor, r.product, r.site, r.unit, r.currency or "", *terms)
            line = lines.setdefault(
                key,
                UsageLine(
                    vendor=r.vendor,
                    product=r.product,
                    site=r.site,
                    day=r.day,
                    unit=r.unit,
                    currency=r.currency,
                    contract=r.contract,
                    payer=r.payer,
                    price_code=r.price_code,
                    province=r.province,
                ),
            )
            qty = int(r.qty or 0)
            line.studies += int(r.studies)
            line.quantity += qty
            if r.trial:
                line.trial += qty
            elif r.charge == UseCharge.PACKAGE.value:
                line.package += qty
            elif r.billable:
                line.billable += qty
                line.amount += Decimal(r.price) * qty
            else:
                line.unbillable += qty
        return [lines[k] for k in sorted(lines)]

    def queued(self, vendor: str) -> int:
        """The vendor's jobs still on their way: unfinished and not counted (charged) yet. Its
        trial's use is its contract's (:func:`broker.runtime.contracts.contract_statuses`)."""
        counted = select(usage.c.job_id).where(usage.c.job_id == jobs.c.id).exists()
        with self.engine.connect() as conn:
            queued = conn.execute(
                select(func.count()).where(
                    jobs.c.vendor == vendor,
                    jobs.c.state.in_([s.value for s in UNFINISHED]),
                    ~counted,
                )
            ).scalar_one()
        return int(queued)

    def uncounted_sent_jobs(self, limit: int = 10_000) -> list[int]:
        """Jobs that reached ``sent`` but have no usage row (a crash between the two); canary
        jobs are never counted."""
        counted = select(usage.c.job_id).where(usage.c.job_id == job_events.c.job_id).exists()
        canary = (
            select(jobs.c.id)
            .where(jobs.c.id == job_events.c.job_id, jobs.c.route == CANARY_ROUTE)
            .exists()
        )
        stmt = (
            select(job_events.c.job_id)
            .where(and_(job_events.c.to_state == JobState.SENT.value, ~counted, ~canary))
            .group_by(job_events.c.job_id)
            .order_by(job_events.c.job_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [int(v) for v in conn.execute(stmt).scalars()]

    def first_sent_at(self, job_id: int) -> datetime | None:
        """When a job first reached ``sent``."""
        stmt = select(func.min(job_events.c.at)).where(
            job_events.c.job_id == job_id, job_events.c.to_state == JobState.SENT.value
        )
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(stmt).scalar_one_or_none()
        return value
