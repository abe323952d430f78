"""The audit trail: who did what, when and from where; append-only.

Every operator action (``job.retry``, ``job.cancel``, ``delivery.retry``,
``token.create``, ``token.revoke``, ``config.reload``), every study sent out of
the hospital (``study.sent``: vendor, series, route) and every result written
back (``result.written``: target, SOP Instance UIDs or message control ID) is
one row, and so is every change of who a record belongs to: an ADT update
(``patient.update``) or merge (``patient.merge``: the studies and orders moved),
and an operator resolving an identity conflict (``conflict.resolve``), pausing or resuming
a vendor (``vendor.pause``, ``vendor.resume``) or giving a verdict on an AI finding
(``finding.verdict``), or looking up what a pseudonym stands for (``pseudonym.lookup``).
:class:`AuditLog` has no update or delete method, and the table refuses both (a
trigger on SQLite and PostgreSQL).

The actor is ``token:ID (NAME)`` for the HTTP API (:func:`token_actor`),
``cli:USER`` for the command line (:func:`cli_actor`), ``hl7:APP^FACILITY`` for an
HL7 message (MSH-3 and MSH-4) and ``radbridge`` for what the service does itself
(:data:`SYSTEM`).
"""

from __future__ import annotations

import builtins
import csv
import getpass
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, String, cast, insert, literal, select, union_all
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.store.engine import writing
from broker.store.tables import audit, deliveries, jobs, studies

#: The actor of what radbridge does on its own (sending a study, writing a result back).
SYSTEM = "radbridge"


class Action:
    """The audited actions (a plain namespace: new ones need no migration)."""

    JOB_RETRY = "job.retry"
    JOB_CANCEL = "job.cancel"
    DELIVERY_RETRY = "delivery.retry"
    TOKEN_CREATE = "token.create"  # noqa: S105 (an action, not a secret)
    TOKEN_REVOKE = "token.revoke"  # noqa: S105
    CONFIG_RELOAD = "config.reload"
    STUDY_SENT = "study.sent"
    RESULT_WRITTEN = "result.written"
    RESULT_CORRECTION = "result.correction"
    RESULT_CORRECTED = "result.corrected"
    JOB_WITHDRAWN = "job.withdrawn"
    """A vendor was told that a job it was sent is cancelled (a correction hit the study)."""
    PATIENT_UPDATE = "patient.update"
    PATIENT_MERGE = "patient.merge"
    CONFLICT_RESOLVE = "conflict.resolve"
    STORE_BACKUP = "store.backup"
    STORE_RESTORE = "store.restore"
    PSEUDONYM_LOOKUP = "pseudonym.lookup"
    VENDOR_PAUSE = "vendor.pause"
    VENDOR_RESUME = "vendor.resume"
    VENDOR_CANARY = "vendor.canary"
    FINDING_VERDICT = "finding.verdict"
    PRODUCT_CERTIFICATE = "product.certificate"
    """A product's certificate is missing or expired: it runs in shadow, or live by
    configuration (written at start and at every configuration put in force)."""


def cli_actor() -> str:
    """``cli:USER``: the operating-system user running the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"cli:{user}"


def token_actor(token_id: int, name: str | None) -> str:
    """``token:3 (ris)``: an API token by id and name."""
    return f"token:{token_id} ({name})" if name else f"token:{token_id}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit trail."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    peer: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "peer": self.peer,
        }


AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "peer", "detail")


def export_csv(entries: Sequence[AuditEntry]) -> str:
    """Rows as CSV with a header (``detail`` as compact JSON)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(AUDIT_COLUMNS)
    for e in entries:
        detail = json.dumps(e.detail, sort_keys=True, separators=(",", ":"))
        writer.writerow([e.id, e.at.isoformat(), e.actor, e.action, e.target, e.peer, detail])
    return buffer.getvalue()


def _entry(r: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=r.id,
        at=r.at,
        actor=r.actor,
        action=r.action,
        target=r.target,
        detail=json.loads(r.detail),
        peer=r.peer,
    )


def _values(
    actor: str,
    action: str,
    target: str,
    *,
    detail: Mapping[str, Any] | None,
    peer: str,
    now: datetime | None,
) -> dict[str, Any]:
    return {
        "at": now or datetime.now(UTC),
        "actor": actor[:160],
        "action": action[:64],
        "target": target[:256],
        "detail": json.dumps(dict(detail or {}), default=str, sort_keys=True),
        "peer": peer[:64],
    }


def record_in(
    conn: Connection,
    actor: str,
    action: str,
    target: str,
    *,
    detail: Mapping[str, Any] | None = None,
    peer: str = "",
    now: datetime | None = None,
) -> None:
    """Append a row inside the caller's transaction (so it commits with the change it records)."""
    conn.execute(
        insert(audit).values(_values(actor, action, target, detail=detail, peer=peer, now=now))
    )


def _site_targets(sites: frozenset[str]) -> Any:
    """The audit targets of ``sites``' jobs and deliveries (``job:12``, ``delivery:7``)."""
    of_sites = select(studies.c.study_uid).where(studies.c.site.in_(sorted(sites)))
    site_jobs = select(jobs.c.id).where(jobs.c.study_uid.in_(of_sites))
    job_targets = select(literal("job:") + cast(jobs.c.id, String)).where(jobs.c.id.in_(site_jobs))
    delivery_targets = select(literal("delivery:") + cast(deliveries.c.id, String)).where(
        deliveries.c.job_id.in_(site_jobs)
    )
    return union_all(job_targets, delivery_targets)


class AuditLog:
    """Append to and read the audit trail. There is no update and no delete."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
        peer: str = "",
        *,
        now: datetime | None = None,
    ) -> None:
        """Append one row: ``actor`` did ``action`` to ``target`` (e.g. ``job:12``) from ``peer``.

        ``detail`` is JSON-serialisable context (vendor, series UIDs, route,
        the reason…); keep patient data out of it.
        """
        try:
            with writing(self.engine) as conn:
                record_in(conn, actor, action, target, detail=detail, peer=peer, now=now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write the audit trail ({action} {target}): {exc}") from exc

    def export(
        self, start: datetime, end: datetime, *, action: str | None = None
    ) -> builtins.list[AuditEntry]:
        """Every row with ``start <= at < end`` (optionally one action), oldest first."""
        stmt = select(audit).where(audit.c.at >= start, audit.c.at < end).order_by(audit.c.id)
        if action is not None:
            stmt = stmt.where(audit.c.action == action)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(stmt).all()]

    def list(
        self,
        *,
        before_id: int | None = None,
        limit: int = 100,
        action: str | None = None,
        actor: str | None = None,
        target: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        sites: frozenset[str] | None = None,
    ) -> builtins.list[AuditEntry]:
        """Newest first, one page: rows with an id below ``before_id``, filtered; with
        ``sites``, only rows about those sites' jobs and write-back deliveries (``job:N``,
        ``delivery:N``: studies sent, operators' retries and cancels)."""
        stmt = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if sites is not None:
            stmt = stmt.where(audit.c.target.in_(_site_targets(sites)))
        if before_id is not None:
            stmt = stmt.where(audit.c.id < before_id)
        if action is not None:
            stmt = stmt.where(audit.c.action == action)
        if actor is not None:
            stmt = stmt.where(audit.c.actor == actor)
        if target is not None:
            stmt = stmt.where(audit.c.target == target)
        if start is not None:
            stmt = stmt.where(audit.c.at >= start)
        if end is not None:
            stmt = stmt.where(audit.c.at < end)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(stmt).all()]
