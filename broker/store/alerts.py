"""The vendor watch's alerts in the store (``vendor_alerts``): raised once per condition
(a drift of one code, a version, a missing-results window, a canary), each with its webhook
notification (a delivery made in the same transaction), and listed for the dashboard, the
API and the performance charts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import Engine, Row, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.alerts import Alert, AlertKind
from broker.model.errors import StoreError
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import vendor_alerts
from broker.store.work_claims import utc


def dedup(kind: str, vendor: str, code: str | None, key: object) -> str:
    """The condition an alert is raised once for: the SHA-256 of its kind, vendor, code and
    key (migration 0039 holds a frozen copy, for the rows before it)."""
    text = json.dumps([kind, vendor, code, key], default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _alert(r: Row[Any]) -> Alert:
    return Alert(
        id=r.id,
        kind=AlertKind(r.kind),
        vendor=r.vendor,
        code=r.code,
        raised_at=r.raised_at,
        detail=json.loads(r.detail),
        delivery_id=r.delivery_id,
        cleared_at=r.cleared_at,
    )


class AlertStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def raise_once(
        self,
        kind: AlertKind,
        vendor: str,
        detail: dict[str, object],
        *,
        code: str | None = None,
        key: str | None = None,
        now: datetime | None = None,
        notify: NewDelivery | None = None,
        study_uid: str = "",
    ) -> Alert | None:
        """Record the alert unless one of the same kind, vendor, code and ``key`` (in its
        detail: the window, the version, the canary) is there already (:func:`dedup`, a
        unique column: of several processes raising it at once, one records it); the new
        alert, or None when it was raised before. ``notify``: the webhook's notification to
        make with it, in the same transaction (its event the alert's kind; ``study_uid`` a
        canary's)."""
        now = utc(now)
        a = vendor_alerts
        detail = {**detail, "key": key}
        vendor = vendor[:64]
        try:
            with writing(self.engine) as conn:
                new_id = conn.execute(  # one statement: a second raiser's insert does nothing
                    _insert(conn, a)
                    .values(
                        kind=kind.value,
                        vendor=vendor,
                        code=code,
                        raised_at=now,
                        detail=json.dumps(detail, sort_keys=True, default=str),
                        dedup=dedup(kind.value, vendor, code, key),
                    )
                    .on_conflict_do_nothing(index_elements=[a.c.dedup])
                    .returning(a.c.id)
                ).scalar_one_or_none()
                if new_id is None:
                    return None
                delivery_id = None
                if notify is not None:
                    about = replace(notify, event=kind.value, study_uid=study_uid)
                    delivery_id = DeliveryStore(self.engine).create_in(conn, about, now).id
                    conn.execute(update(a).where(a.c.id == new_id).values(delivery_id=delivery_id))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the {kind.value} alert of {vendor}: {exc}") from exc
        return Alert(
            id=new_id,
            kind=kind,
            vendor=vendor,
            code=code,
            raised_at=now,
            detail=detail,
            delivery_id=delivery_id,
        )

    def for_delivery(self, delivery_id: int) -> Alert | None:
        """The alert a webhook notification is about, if it is one."""
        a = vendor_alerts
        with self.engine.connect() as conn:
            row = conn.execute(select(a).where(a.c.delivery_id == delivery_id)).first()
        return _alert(row) if row is not None else None

    def clear(self, kind: AlertKind, vendor: str, *, now: datetime | None = None) -> list[int]:
        """The vendor's open alerts of ``kind`` end now (a canary answered again); their ids."""
        a = vendor_alerts
        try:
            with writing(self.engine) as conn:
                return list(
                    conn.execute(
                        update(a)
                        .where(
                            a.c.kind == kind.value, a.c.vendor == vendor, a.c.cleared_at.is_(None)
                        )
                        .values(cleared_at=utc(now))
                        .returning(a.c.id)
                    ).scalars()
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot clear the {kind.value} alerts of {vendor}: {exc}") from exc

    def list(
        self,
        *,
        vendor: str | None = None,
        kind: AlertKind | None = None,
        since: datetime | None = None,
        limit: int = 200,
    ) -> list[Alert]:
        """Newest first."""
        a = vendor_alerts
        stmt = select(a).order_by(a.c.id.desc()).limit(limit)
        if vendor is not None:
            stmt = stmt.where(a.c.vendor == vendor)
        if kind is not None:
            stmt = stmt.where(a.c.kind == kind.value)
        if since is not None:
            stmt = stmt.where(a.c.raised_at >= since)
        with self.engine.connect() as conn:
            return [_alert(r) for r in conn.execute(stmt).all()]

    def marks(
        self, vendors: Sequence[str], start: datetime, end: datetime, tz: tzinfo
    ) -> dict[str, dict[str, str]]:
        """Drift alerts for the performance chart: ``"{vendor} {code}"`` → month → text."""
        a = vendor_alerts
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(a).where(
                    a.c.kind == AlertKind.DRIFT.value,
                    a.c.vendor.in_(list(vendors)),
                    a.c.raised_at >= start,
                    a.c.raised_at < end,
                )
            ).all()
        marks: dict[str, dict[str, str]] = {}
        for r in rows:
            alert = _alert(r)
            month = alert.raised_at.astimezone(tz).strftime("%Y-%m")
            text = f"drift: {alert.detail.get('summary', '')}".strip()
            marks.setdefault(f"{alert.vendor} {alert.code}", {})[month] = text
        return marks
