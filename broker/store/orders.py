"""Orders in the store: record what the RIS sends, correlate orders with studies.

``record_order`` keeps the message verbatim and the normalized order in one
transaction (the HL7 and FHIR edges acknowledge only after it returns); a message
that makes several orders (``record_orders``) is kept once, linked to each. Then it
links the order to its studies: by accession number (and its issuer when both
sides have one), otherwise by study instance UID. A patient-ID mismatch is
flagged for an operator, never linked. A cancelled order cancels its studies'
jobs that were not sent yet; a new link to a stable study asks routing to
decide that study again (``studies.route_due_at``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.correction import CorrectionCause
from broker.model.domain import (
    InboundMessage,
    LinkState,
    Order,
    OrderLink,
    OrderOutcome,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
    StoredOrder,
    Study,
)
from broker.model.errors import NotFoundError, StoreError
from broker.model.identity import IdentityConflictError
from broker.store.audit import Action, record_in
from broker.store.conflicts import record_conflict
from broker.store.corrections import correct_in
from broker.store.engine import writing
from broker.store.jobs import cancel_for_studies
from broker.store.order_identity import check_order
from broker.store.order_links import (
    correlate,
    find_for_study,
    flag,
    link_of,
    patient_conflict,
    save_link,
)
from broker.store.order_sql import OrderSql
from broker.store.patients import (
    apply_merge,
    apply_update,
    check_merge,
    check_update,
    studies_changed_by,
)
from broker.store.tables import order_links, order_message_links, order_messages, orders

#: Order states that stop the order's studies from being routed and cancel their unsent jobs.
CANCELLED_STATES = frozenset({OrderStatus.CANCELLED, OrderStatus.DISCONTINUED})


def _order_values(order: Order) -> dict[str, Any]:
    p = order.patient
    return {
        "source": order.source.value,
        "placer_number": order.placer_number,
        "filler_number": order.filler_number,
        "accession_number": order.accession_number,
        "issuer": order.issuer,
        "patient_id": p.patient_id,
        "issuer_of_patient_id": p.issuer,
        "patient_name": p.name,
        "patient_birth_date": p.birth_date,
        "patient_sex": p.sex,
        "procedure_code": order.procedure_code,
        "procedure_text": order.procedure_text,
        "modality": order.modality,
        "priority": order.priority.value,
        "department": order.department,
        "status": order.status.value,
        "study_uid": order.study_uid,
        "requested_procedure_id": order.requested_procedure_id,
        "site": order.site,
    }


def _order(r: Row[Any]) -> StoredOrder:
    return StoredOrder(
        id=r.id,
        resource_id=r.resource_id,
        version=r.version,
        created_at=r.created_at,
        updated_at=r.updated_at,
        order=Order(
            source=OrderSource(r.source),
            placer_number=r.placer_number,
            filler_number=r.filler_number,
            accession_number=r.accession_number,
            issuer=r.issuer,
            patient=Patient(
                patient_id=r.patient_id,
                issuer=r.issuer_of_patient_id,
                name=r.patient_name,
                birth_date=r.patient_birth_date,
                sex=r.patient_sex,
            ),
            procedure_code=r.procedure_code,
            procedure_text=r.procedure_text,
            modality=r.modality,
            priority=OrderPriority(r.priority),
            department=r.department,
            status=OrderStatus(r.status),
            study_uid=r.study_uid,
            requested_procedure_id=r.requested_procedure_id,
            site=r.site,
        ),
    )


def _params(table: Any, names: Sequence[str]) -> dict[str, Any]:
    """``{column: bindparam("p_column")}``: SET/VALUES clauses built once, run many times."""
    return {n: bindparam(f"p_{n}", type_=table.c[n].type) for n in names}


_FIELDS = [c.name for c in orders.columns if c.name not in ("id", "resource_id", "created_at")]
_ORDER_FIELDS = [n for n in _FIELDS if n not in ("version", "updated_at")]


def _update_order(*, keep_unset: bool) -> Any:
    """UPDATE of an order by ``p_id``; with ``keep_unset`` a NULL parameter keeps the value."""
    values: dict[str, Any] = _params(orders, _ORDER_FIELDS)
    if keep_unset:
        values = {n: func.coalesce(p, orders.c[n]) for n, p in values.items()}
    values["version"] = orders.c.version + 1
    values["updated_at"] = bindparam("p_updated_at", type_=orders.c.updated_at.type)
    by_id = orders.c.id == bindparam("p_id")
    return update(orders).where(by_id).values(values).returning(*orders.c)


class _Statements:
    """Core statements of recording an order, built once (building them per call cost more
    than running them); the ones every new HL7 order runs are in :mod:`order_sql`."""

    update_order = _update_order(keep_unset=True)
    replace_order = _update_order(keep_unset=False)
    by_resource_id = select(orders.c.id).where(orders.c.resource_id == bindparam("p_rid"))


_S = _Statements


class OrderStore:
    """Orders, their raw messages, patients (ADT) and order ↔ study links."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sql = OrderSql(engine.dialect.name)
        # The hot statements run on the driver's cursor: its errors count as store errors too.
        self._errors: tuple[type[Exception], ...] = (
            SQLAlchemyError,
            engine.dialect.loaded_dbapi.Error,
        )

    # --------------------------------------------------------------- writes

    def record_order(
        self,
        order: Order,
        message: InboundMessage,
        *,
        resource_id: str | None = None,
        kept_as: int | None = None,
    ) -> OrderOutcome:
        """Store ``message`` verbatim and create or update its order, in one transaction.

        With ``resource_id`` (FHIR PUT) that order is replaced, or created with
        that id. Otherwise the order is matched by placer number, then filler
        number, then accession number + issuer, and updated (fields the new
        message leaves empty keep their values); a new one gets a fresh
        ``resource_id``. With ``kept_as`` the message is already stored (a FHIR batch's
        Bundle, :meth:`record_message`): the order is linked to that row.
        """
        return self.record_orders([(order, resource_id)], message, kept_as=kept_as)[0]

    def record_orders(
        self,
        orders_: Sequence[tuple[Order, str | None]],
        message: InboundMessage,
        *,
        kept_as: int | None = None,
    ) -> list[OrderOutcome]:
        """:meth:`record_order` for several orders (a FHIR transaction): all or none. The
        message is stored once (or was, ``kept_as``), linked to each order.

        An order that names another patient than the order (or accession number) it
        would update raises :class:`IdentityConflictError`: nothing is stored but the
        message, kept with why, and the identity conflict.
        """
        now = datetime.now(UTC)
        try:
            with writing(self.engine) as conn:
                outcomes = [self._record(conn, o, rid, now) for o, rid in orders_]
                if outcomes:
                    ids = [o.stored.id for o in outcomes]
                    self._keep_once(conn, message, now, ids, kept_as)
                return outcomes
        except IdentityConflictError as exc:
            self._refused(message, exc, kept_as)
            raise
        except self._errors as exc:
            raise StoreError(f"cannot store the order: {exc}") from exc

    def _refused(
        self, message: InboundMessage, exc: IdentityConflictError, kept_as: int | None = None
    ) -> None:
        """Keep a refused message with why (unless it is kept already, ``kept_as``), and its
        identity conflict, in a new transaction (the one that found it was rolled back)."""
        now = datetime.now(UTC)
        try:
            with writing(self.engine) as conn:
                message_id = kept_as
                if message_id is None:
                    message_id = self._keep(conn, message, now, error=str(exc))
                record_conflict(
                    conn,
                    exc.report,
                    source=message.source.value,
                    sender=message.sender,
                    peer=message.peer,
                    message_id=message_id,
                    now=now,
                )
        except self._errors as store_exc:
            raise StoreError(f"cannot store the refused message: {store_exc}") from store_exc

    def _keep_once(
        self,
        conn: Connection,
        message: InboundMessage,
        now: datetime,
        order_ids: list[int],
        kept_as: int | None,
    ) -> None:
        """Store the message once, for its first order, and link it to each further order
        (or, ``kept_as``, link the stored message to every order)."""
        more = list(dict.fromkeys(order_ids))
        message_id = kept_as
        if message_id is None:
            message_id = self._keep(conn, message, now, order_id=more.pop(0))
        if more:
            conn.execute(
                insert(order_message_links),
                [{"message_id": message_id, "order_id": order_id} for order_id in more],
            )

    def _record(
        self, conn: Connection, order: Order, resource_id: str | None, now: datetime
    ) -> OrderOutcome:
        existing = self._match(conn, order, resource_id)
        if existing is not None or resource_id is not None:
            check_order(conn, order, existing, resource_id)
        if existing is None:
            rid = resource_id or uuid.uuid4().hex
            stamp = self._sql.when(now)
            order_id = self._sql.insert_order(
                conn,
                {
                    **_order_values(order),
                    "resource_id": rid,
                    "version": 1,
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
            stored = StoredOrder(
                id=order_id, resource_id=rid, version=1, order=order, created_at=now, updated_at=now
            )
        else:
            values = {f"p_{k}": v for k, v in _order_values(order).items()}
            stmt = _S.update_order if resource_id is None else _S.replace_order
            row = conn.execute(stmt, {**values, "p_id": existing, "p_updated_at": now}).one()
            stored = _order(row)
        candidates, matched_on = self._sql.candidates(conn, stored.order)
        linked, flagged = correlate(conn, stored, candidates, matched_on=matched_on, now=now)
        cancelled = 0
        if stored.order.status in CANCELLED_STATES:
            cancelled = cancel_for_studies(
                conn, linked, reason=f"order {stored.order.status}", now=now
            )
            correct_in(
                conn,
                linked,
                CorrectionCause.ORDER_CANCELLED,
                source=f"order {stored.id} {stored.order.status}",
                now=now,
                detail={"order_id": stored.id},
            )
        return OrderOutcome(
            stored=stored,
            created=existing is None,
            linked=tuple(linked),
            flagged=tuple(flagged),
            cancelled_jobs=cancelled,
        )

    def record_patient(self, patient: Patient, message: InboundMessage) -> int:
        """ADT A01/A04/A08: register or update a patient (audited); returns studies + orders
        updated. :class:`IdentityConflictError` when the patient ID without issuer is held
        for several issuers (nothing changed; the message kept with why)."""
        if not patient.patient_id:
            raise ValueError("a patient update needs a patient ID")
        now = datetime.now(UTC)
        try:
            with writing(self.engine) as conn:
                check_update(conn, patient)
                message_id = self._keep(conn, message, now)
                changed = studies_changed_by(conn, patient)
                done = apply_update(conn, patient, now)
                self._audit(conn, message, Action.PATIENT_UPDATE, message_id, done, now=now)
                self._correct(conn, message, changed, message_id, now=now)
        except IdentityConflictError as exc:
            self._refused(message, exc)
            raise
        except self._errors as exc:
            raise StoreError(f"cannot store the patient update: {exc}") from exc
        return int(done["studies"]) + int(done["orders"])

    def merge_patients(self, surviving: Patient, prior: Patient, message: InboundMessage) -> int:
        """ADT A40: move the prior patient's studies and orders to the survivor; returns moved."""
        return self.merge_all([(surviving, prior)], message)

    def merge_all(self, merges: Sequence[tuple[Patient, Patient]], message: InboundMessage) -> int:
        """ADT A40: each (surviving, prior) pair, all or none, each audited; returns studies +
        orders moved. :class:`IdentityConflictError` when one cannot be applied safely
        (:func:`broker.store.patients.check_merge`): nothing merged, the message kept."""
        if any(not s.patient_id or not p.patient_id for s, p in merges):
            raise ValueError("a merge needs the surviving and the prior patient ID")
        now = datetime.now(UTC)
        moved = 0
        try:
            with writing(self.engine) as conn:
                message_id = self._keep(conn, message, now)
                for surviving, prior in merges:
                    check_merge(conn, surviving, prior)
                    done = apply_merge(conn, surviving, prior, now)
                    self._audit(conn, message, Action.PATIENT_MERGE, message_id, done, now=now)
                    self._correct(conn, message, done["studies"], message_id, now=now)
                    moved += len(done["studies"]) + len(done["orders"])
        except IdentityConflictError as exc:
            self._refused(message, exc)
            raise
        except self._errors as exc:
            raise StoreError(f"cannot store the patient merge: {exc}") from exc
        return moved

    @staticmethod
    def _correct(
        conn: Connection,
        message: InboundMessage,
        study_uids: Sequence[str],
        message_id: int,
        *,
        now: datetime,
    ) -> None:
        """Results already written of studies whose patient the message changed are corrected
        (:mod:`broker.store.corrections`), in the same transaction."""
        correct_in(
            conn,
            study_uids,
            CorrectionCause.PATIENT_CHANGED,
            source=f"{message.kind} {message.control_id or ''}".strip(),
            now=now,
            detail={"message_id": message_id},
            actor=message.sender or f"{message.source.value}:{message.peer}",
            peer=message.peer,
        )

    @staticmethod
    def _audit(
        conn: Connection,
        message: InboundMessage,
        action: str,
        message_id: int,
        done: dict[str, Any],
        *,
        now: datetime,
    ) -> None:
        """The audit row of an applied ADT update or merge (patients by their row id)."""
        detail = {k: v for k, v in done.items() if k != "patient"}
        if "prior" in detail:
            detail["prior"] = f"patient:{detail['prior']}"
        record_in(
            conn,
            message.sender or f"{message.source.value}:{message.peer}",
            action,
            f"patient:{done['patient']}",
            detail={
                **detail,
                "message": message.kind,
                "message_id": message_id,
                "control_id": message.control_id,
            },
            peer=message.peer,
            now=now,
        )

    def record_message(self, message: InboundMessage, *, error: str | None) -> int:
        """Keep a message that could not be used (answered AE), with why, or one whose
        orders are stored one by one after it (``error`` None: a FHIR batch); its id."""
        try:
            with writing(self.engine) as conn:
                return self._keep(conn, message, datetime.now(UTC), error=error)
        except self._errors as exc:
            raise StoreError(f"cannot store the message: {exc}") from exc

    def _keep(
        self,
        conn: Connection,
        message: InboundMessage,
        now: datetime,
        *,
        order_id: int | None = None,
        error: str | None = None,
    ) -> int:
        params = {
            "order_id": order_id,
            "source": message.source.value,
            "kind": message.kind[:32],
            "control_id": (message.control_id or None) and message.control_id[:64],
            "peer": message.peer[:64],
            "received_at": self._sql.when(now),
            "raw": message.raw,
            "error": error,
        }
        return self._sql.keep(conn, params)

    def _match(self, conn: Connection, order: Order, resource_id: str | None) -> int | None:
        """The id of the order this one updates: by resource id when given; else by placer
        number, then filler number, then accession number + issuer."""
        if resource_id is not None:
            value: int | None = conn.execute(
                _S.by_resource_id, {"p_rid": resource_id}
            ).scalar_one_or_none()
            return value
        return self._sql.match(
            conn,
            {
                "site": order.site,
                "placer": order.placer_number or None,
                "filler": order.filler_number or None,
                "accession": order.accession_number or None,
                "issuer": order.issuer,
            },
        )

    # ---------------------------------------------------------- correlation

    def order_for_study(self, study: Study) -> tuple[StoredOrder | None, OrderLink | None]:
        """The study's linked order, correlating (and recording the link) if not done yet.

        Returns ``(None, link)`` when an order matched but is flagged (patient
        mismatch), and ``(None, None)`` when no order matches. A linked order is given
        only while its patient is the study's: routing never gets another patient's order.
        """
        now = datetime.now(UTC)
        try:
            with self.engine.connect() as conn:
                link = conn.execute(
                    select(order_links).where(order_links.c.study_uid == study.study_uid)
                ).one_or_none()
                if link is not None and link.state == LinkState.LINKED.value:
                    linked = conn.execute(select(orders).where(orders.c.id == link.order_id))
                    held = _order(linked.one())
                    if patient_conflict(held.order.patient, study.patient) is None:
                        return held, link_of(link)
            with writing(self.engine) as conn:
                row, matched_on = find_for_study(conn, study)
                if row is None:
                    return None, None
                stored = _order(row)
                conflict = patient_conflict(stored.order.patient, study.patient)
                state = LinkState.LINKED if conflict is None else LinkState.PATIENT_MISMATCH
                save_link(
                    conn,
                    study.study_uid,
                    stored.id,
                    state,
                    matched_on=matched_on,
                    now=now,
                    detail=conflict,
                )
                if conflict is not None:
                    flag(
                        conn,
                        study.study_uid,
                        stored,
                        study.patient,
                        matched_on=matched_on,
                        detail=conflict,
                        now=now,
                    )
                saved = conn.execute(
                    select(order_links).where(order_links.c.study_uid == study.study_uid)
                ).one()
        except self._errors as exc:
            raise StoreError(f"cannot correlate study with orders: {exc}") from exc
        return (stored if state is LinkState.LINKED else None), link_of(saved)

    # ---------------------------------------------------------------- reads

    def link(self, study_uid: str) -> OrderLink | None:
        """The study's link (linked or flagged), if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(order_links).where(order_links.c.study_uid == study_uid)
            ).one_or_none()
        return None if row is None else link_of(row)

    def linked_studies(self, order_id: int) -> list[OrderLink]:
        """The studies linked to (or flagged against) an order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(order_links)
                .where(order_links.c.order_id == order_id)
                .order_by(order_links.c.at)
            ).all()
        return [link_of(r) for r in rows]

    def by_resource_id(self, resource_id: str) -> StoredOrder:
        """The order with this FHIR logical id; ``NotFoundError`` if none."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(orders).where(orders.c.resource_id == resource_id)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no order with resource id {resource_id!r}")
        return _order(row)

    def get(self, key: str | int) -> StoredOrder:
        """By numeric id, resource id or accession number; ``NotFoundError`` if none."""
        text = str(key)
        conditions = [orders.c.resource_id == text, orders.c.accession_number == text]
        if text.isdigit():
            conditions.insert(0, orders.c.id == int(text))
        with self.engine.connect() as conn:
            for condition in conditions:
                row = conn.execute(
                    select(orders).where(condition).order_by(orders.c.id.desc()).limit(1)
                ).one_or_none()
                if row is not None:
                    return _order(row)
        raise NotFoundError(f"no order with id, resource id or accession number {text!r}")

    def find(
        self,
        *,
        accession_number: str | None = None,
        issuer: str | None = None,
        placer_number: str | None = None,
        filler_number: str | None = None,
    ) -> list[StoredOrder]:
        """Orders whose identifiers match every one given."""
        given = {
            "accession_number": accession_number,
            "issuer": issuer,
            "placer_number": placer_number,
            "filler_number": filler_number,
        }
        stmt = select(orders).order_by(orders.c.id)
        for column, value in given.items():
            if value is not None:
                stmt = stmt.where(orders.c[column] == value)
        with self.engine.connect() as conn:
            return [_order(r) for r in conn.execute(stmt).all()]

    def raw_messages(self, order_id: int) -> list[InboundMessage]:
        """The messages that made this order (alone or with others), oldest first."""
        linked = select(order_message_links.c.message_id).where(
            order_message_links.c.order_id == order_id
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(order_messages)
                .where(or_(order_messages.c.order_id == order_id, order_messages.c.id.in_(linked)))
                .order_by(order_messages.c.id)
            ).all()
        return [
            InboundMessage(
                source=OrderSource(r.source),
                kind=r.kind,
                raw=bytes(r.raw),
                peer=r.peer,
                control_id=r.control_id,
            )
            for r in rows
        ]

    def list(self, limit: int = 100, offset: int = 0) -> Sequence[StoredOrder]:
        """Newest first (by last update)."""
        stmt = (
            select(orders)
            .order_by(orders.c.updated_at.desc(), orders.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return [_order(r) for r in conn.execute(stmt).all()]
