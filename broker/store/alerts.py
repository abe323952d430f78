"""The vendor watch's alerts in the store (``vendor_alerts``): raised once per condition
(a drift of one code, a version, a missing-results window, a canary), each with its webhook
notification (a delivery made in the same transaction), and listed for the dashboard, the
API and the performance charts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.alerts import Alert, AlertKind
from broker.model.errors import StoreError
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.engine import writing
from broker.store.tables import vendor_alerts
from broker.store.work_claims import utc


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
        detail: the window, the version, the canary) is there already; the new alert, or
        None when it was raised before. ``notify``: the webhook's notification to make with
        it, in the same transaction (its event the alert's kind; ``study_uid`` a canary's)."""
        now = utc(now)
        a = vendor_alerts
        detail = {**detail, "key": key}
        try:
            with writing(self.engine) as conn:
                earlier = conn.execute(
                    select(a.c.detail).where(
                        a.c.kind == kind.value,
                        a.c.vendor == vendor,
                        a.c.code.is_(None) if code is None else a.c.code == code,
                    )
                ).scalars()
                if any(json.loads(d).get("key") == key for d in earlier):
                    return None
                new_id = conn.execute(
                    insert(a)
                    .values(
                        kind=kind.value,
                        vendor=vendor[:64],
                        code=code,
                        raised_at=now,
                        detail=json.dumps(detail, sort_keys=True, default=str),
                    )
                    .returning(a.c.id)
                ).scalar_one()
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
