"""Contract use: the terms each job is routed under, and quota counters that never go past.

Routing asks :meth:`ContractStore.used` how many uses each contract counted in
its current period, decides, then :meth:`ContractStore.reserve` records the
terms of each delivery (table ``job_terms``, one row per study x vendor
product) and, for a use that counts against a quota, raises the contract's
counter in the same transaction with a conditional ``UPDATE … WHERE used <
quota``. Two routing processes racing for the last use of a package: the
database lets one UPDATE through and the other matches no row, so its
reservation is refused (``FULL``) and routing decides again with the contract
used up. On SQLite writers are serialized; on PostgreSQL the UPDATE locks the
row and re-checks the condition after the other transaction commits.

A job cancelled before it was ever sent (its order cancelled, an operator) gives its
reserved use back: :func:`return_use`, in the transaction that cancels the job, turns its
terms' charge into ``returned`` and lowers the counter, both conditional, so a use is
returned once however many processes cancel at the same time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.contract import SITE_SEPARATOR, UseCharge
from broker.model.errors import StoreError
from broker.model.jobs import JobState
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import contract_counters, job_events, job_terms


class Reserved(enum.StrEnum):
    """What :meth:`ContractStore.reserve` did."""

    NEW = "new"
    """The terms are recorded (and the use counted against the quota)."""
    KEPT = "kept"
    """The study x vendor had its terms already (routed before): nothing counted again."""
    FULL = "full"
    """The quota was used up meanwhile: nothing recorded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTerms:
    """The terms one study x vendor product was routed under."""

    study_uid: str
    vendor: str
    route: str
    contract: str | None = None
    charge: UseCharge | None = None
    period: str | None = None
    payer: str | None = None
    price_code: str | None = None
    province: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    alert: str | None = None
    created_at: datetime | None = None


def _terms(r: Any) -> JobTerms:
    return JobTerms(
        study_uid=r.study_uid,
        vendor=r.vendor,
        route=r.route,
        contract=r.contract,
        charge=UseCharge(r.charge) if r.charge else None,
        period=r.period,
        payer=r.payer,
        price_code=r.price_code,
        province=r.province,
        price=Decimal(r.price) if r.price is not None else None,
        currency=r.currency,
        alert=r.alert,
        created_at=r.created_at,
    )


@dataclass(frozen=True, slots=True)
class Returned:
    """A use given back to a contract's quota."""

    contract: str
    period: str


def return_use(conn: Connection, job_id: int, study_uid: str, vendor: str) -> Returned | None:
    """Inside the transaction that cancels job ``job_id`` (``study_uid`` x ``vendor``): give
    its reserved use back to the contract's quota when the job was never sent; None when
    there was nothing to give back (no quota use, sent already, or returned before)."""
    sent = conn.execute(
        select(job_events.c.id)
        .where(job_events.c.job_id == job_id, job_events.c.to_state == JobState.SENT.value)
        .limit(1)
    ).first()
    if sent is not None:
        return None
    row = conn.execute(
        update(job_terms)
        .where(
            job_terms.c.study_uid == study_uid,
            job_terms.c.vendor == vendor,
            job_terms.c.charge.in_([c.value for c in UseCharge if c.counted]),
        )
        .values(charge=UseCharge.RETURNED.value)
        .returning(job_terms.c.contract, job_terms.c.period)
    ).one_or_none()
    if row is None or row.contract is None or row.period is None:
        return None
    conn.execute(
        update(contract_counters)
        .where(
            contract_counters.c.contract == row.contract,
            contract_counters.c.period == row.period,
            contract_counters.c.used > 0,
        )
        .values(used=contract_counters.c.used - 1)
    )
    return Returned(str(row.contract), str(row.period))


class _Full(Exception):  # noqa: N818 - internal: rolls the reservation back
    pass


class ContractStore:
    """Tables ``job_terms`` and ``contract_counters``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def used(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Uses counted per (contract, period); a pair never counted is absent."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        stmt = select(contract_counters).where(
            or_(
                *(
                    and_(contract_counters.c.contract == c, contract_counters.c.period == p)
                    for c, p in wanted
                )
            )
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the contracts' use: {exc}") from exc
        return {(r.contract, r.period): int(r.used) for r in rows}

    def used_by_site(self, contract: str, period: str) -> dict[str | None, int]:
        """Uses a quota counted per site counted in ``period``, by site (None: the hub's)."""
        prefix = f"{period}{SITE_SEPARATOR}"
        stmt = select(contract_counters.c.period, contract_counters.c.used).where(
            contract_counters.c.contract == contract,
            contract_counters.c.period.startswith(prefix, autoescape=True),
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the contracts' use: {exc}") from exc
        return {(r.period.removeprefix(prefix) or None): int(r.used) for r in rows}

    def reserve(self, terms: JobTerms, quota: int | None, now: datetime) -> Reserved:
        """Record the terms of a delivery; a use that counts against ``quota`` raises its
        contract's counter for ``terms.period``, only while it is below ``quota``."""
        counted = quota is not None and terms.charge is not None and terms.charge.counted
        values = {
            "study_uid": terms.study_uid,
            "vendor": terms.vendor,
            "route": terms.route,
            "contract": terms.contract,
            "charge": terms.charge.value if terms.charge is not None else None,
            "period": terms.period,
            "payer": terms.payer,
            "price_code": terms.price_code,
            "province": terms.province,
            "price": str(terms.price) if terms.price is not None else None,
            "currency": terms.currency,
            "alert": terms.alert,
            "created_at": now,
        }
        try:
            with writing(self.engine) as conn:
                if conn.execute(
                    select(job_terms.c.id).where(
                        job_terms.c.study_uid == terms.study_uid,
                        job_terms.c.vendor == terms.vendor,
                    )
                ).first():
                    return Reserved.KEPT
                if counted:
                    assert terms.contract is not None and terms.period is not None
                    conn.execute(
                        _insert(conn, contract_counters)
                        .values(contract=terms.contract, period=terms.period, used=0)
                        .on_conflict_do_nothing()
                    )
                    raised = conn.execute(
                        update(contract_counters)
                        .where(
                            contract_counters.c.contract == terms.contract,
                            contract_counters.c.period == terms.period,
                            contract_counters.c.used < quota,
                        )
                        .values(used=contract_counters.c.used + 1)
                    )
                    if raised.rowcount != 1:
                        raise _Full
                inserted = conn.execute(
                    _insert(conn, job_terms)
                    .values(values)
                    .on_conflict_do_nothing()
                    .returning(job_terms.c.id)
                ).scalar_one_or_none()
                if inserted is None:  # another process routed the same study meanwhile
                    raise _Full
        except _Full:
            return (
                Reserved.FULL if self.get(terms.study_uid, terms.vendor) is None else Reserved.KEPT
            )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reserve a use of contract {terms.contract}: {exc}") from exc
        return Reserved.NEW

    def get(self, study_uid: str, vendor: str) -> JobTerms | None:
        """The terms a study x vendor product was routed under."""
        stmt = select(job_terms).where(
            job_terms.c.study_uid == study_uid, job_terms.c.vendor == vendor
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).one_or_none()
        return None if row is None else _terms(row)

    def uses_since(
        self, contract: str, since: datetime, counter: str | None = None
    ) -> list[datetime]:
        """When each use of ``contract`` counted against its quota since ``since`` was
        routed; with ``counter`` (a per-site period, ``2026-05@township-a``) only that
        site's uses, of any period."""
        stmt = select(job_terms.c.created_at).where(
            job_terms.c.contract == contract,
            job_terms.c.created_at >= since,
            job_terms.c.charge.in_([c.value for c in UseCharge if c.counted]),
        )
        if counter is not None:
            site = counter.partition(SITE_SEPARATOR)[2]
            stmt = stmt.where(
                job_terms.c.period.endswith(f"{SITE_SEPARATOR}{site}", autoescape=True)
            )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def count_by_contract(self) -> dict[str, int]:
        """Every use recorded per contract (all periods, all charges)."""
        stmt = (
            select(job_terms.c.contract, func.count())
            .where(job_terms.c.contract.is_not(None))
            .group_by(job_terms.c.contract)
        )
        with self.engine.connect() as conn:
            return {str(c): int(n) for c, n in conn.execute(stmt).all()}
