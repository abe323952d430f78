"""Transfers over the site-to-hub link, at the hub: one row per study a site is sending.

A transfer is ``open`` while its parts arrive (they wait in the spool's
``transfers/`` folder), ``committed`` in the same transaction that indexes its
instances (:meth:`broker.store.studies.StudyStore.record_study`), or ``purged``
when it was abandoned for longer than ``hub.abandon_after``. ``(site, key)`` is
unique: the same manifest sent again by the same site is the same transfer, so a
retry after a cut resumes it, and one after the commit finds it committed.

:meth:`TransferStore.lock` holds a transfer over every hub node: on PostgreSQL a
session advisory lock (``pg_advisory_lock``, keyed by the transfer), so two nodes
never commit (or one commit and another purge) the same transfer at once; it goes
with the holder's connection if the node dies. SQLite is one host's store: the
staging folder's file lock (:meth:`adapters.link.ingest.Staging.lock`) is enough.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, Row, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from broker.model.errors import NotFoundError, StoreError
from broker.store.engine import writing
from broker.store.tables import transfers
from broker.store.work_claims import utc

#: The first key of the transfers' advisory locks (``pg_advisory_lock(int, int)``), apart
#: from any other user of advisory locks in the database ("RB" 0x17, issue 17's link).
LOCK_CLASS = 0x52420017
#: Seconds a commit waits for another node's hold on the same transfer before it answers
#: 503 (the site retries).
LOCK_WAIT_SECONDS = 30.0


class TransferLockedError(StoreError):
    """Another node holds the transfer (committing it) longer than the wait."""


def lock_key(transfer_id: str) -> int:
    """The second key of a transfer's advisory lock: its id's first 32 bits, signed."""
    return int(transfer_id[:8], 16) - 2**31


class TransferState(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One study on its way from a site (its manifest is the JSON the site sent)."""

    id: str
    site: str
    key: str
    study_uid: str
    state: TransferState
    parts: int
    instances: int
    size: int
    manifest: str
    peer_address: str
    created_at: datetime
    updated_at: datetime
    committed_at: datetime | None


def _transfer(row: Row[Any]) -> Transfer:
    m = row._mapping
    return Transfer(**{**m, "state": TransferState(m["state"])})


class TransferStore:
    """Open, read, commit and purge transfers (table ``transfers``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def lock(self, transfer_id: str, *, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Hold the transfer over every node sharing this PostgreSQL store (see the module
        docstring); :class:`TransferLockedError` after ``wait`` seconds (0: do not wait).
        On SQLite, nothing to do."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        key = {"c": LOCK_CLASS, "k": lock_key(transfer_id)}
        try:
            conn = self.engine.connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot lock transfer {transfer_id}: {exc}") from exc
        try:
            try:
                with conn.begin():
                    if wait > 0:
                        ms = max(1, int(wait * 1000))
                        conn.execute(text(f"SET LOCAL lock_timeout = {ms}"))
                        conn.execute(text("SELECT pg_advisory_lock(:c, :k)"), key)
                    elif not conn.execute(
                        text("SELECT pg_try_advisory_lock(:c, :k)"), key
                    ).scalar():
                        raise TransferLockedError(f"transfer {transfer_id} is held by another node")
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                    raise TransferLockedError(
                        f"transfer {transfer_id} held by another node for over {wait:g} s"
                    ) from exc
                raise StoreError(f"cannot lock transfer {transfer_id}: {exc}") from exc
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot lock transfer {transfer_id}: {exc}") from exc
            try:
                yield
            finally:
                try:
                    with conn.begin():
                        conn.execute(text("SELECT pg_advisory_unlock(:c, :k)"), key)
                except SQLAlchemyError:  # the session goes, and its lock with it
                    conn.invalidate()
        finally:
            conn.close()

    def open(
        self,
        site: str,
        key: str,
        study_uid: str,
        *,
        manifest: str,
        parts: int,
        instances: int,
        size: int,
        peer: str,
        now: datetime | None = None,
    ) -> tuple[Transfer, bool]:
        """The site's transfer of this manifest: a new one (True), or the one it has already
        (False: a retry; it may be committed)."""
        now = utc(now)
        existing = self.find(site, key)
        if existing is not None and existing.state is TransferState.PURGED:
            return self._reopen(existing.id, now), False
        if existing is not None:
            return existing, False
        transfer_id = uuid.uuid4().hex
        values = {
            "id": transfer_id,
            "site": site,
            "key": key,
            "study_uid": study_uid,
            "state": TransferState.OPEN.value,
            "parts": parts,
            "instances": instances,
            "size": size,
            "manifest": manifest,
            "peer_address": peer[:64],
            "created_at": now,
            "updated_at": now,
            "committed_at": None,
        }
        try:
            with writing(self.engine) as conn:
                conn.execute(transfers.insert().values(values))
        except IntegrityError:  # the same manifest opened at the same moment: that one
            found = self.find(site, key)
            if found is None:
                raise StoreError("a transfer vanished while it was opened") from None
            return found, False
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open a transfer: {exc}") from exc
        return self.get(transfer_id), True

    def _reopen(self, transfer_id: str, now: datetime) -> Transfer:
        """A purged transfer the site sends again: open, with no parts."""
        stmt = (
            update(transfers)
            .where(transfers.c.id == transfer_id, transfers.c.state == TransferState.PURGED.value)
            .values(state=TransferState.OPEN.value, updated_at=now)
        )
        try:
            with writing(self.engine) as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reopen transfer {transfer_id}: {exc}") from exc
        return self.get(transfer_id)

    def find(self, site: str, key: str) -> Transfer | None:
        """The site's transfer of the manifest with SHA-256 ``key``, if any."""
        stmt = select(transfers).where(transfers.c.site == site, transfers.c.key == key)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(stmt).one_or_none()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read transfers: {exc}") from exc
        return None if row is None else _transfer(row)

    def get(self, transfer_id: str) -> Transfer:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(transfers).where(transfers.c.id == transfer_id)
                ).one_or_none()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read transfer {transfer_id}: {exc}") from exc
        if row is None:
            raise NotFoundError(f"no transfer {transfer_id}")
        return _transfer(row)

    def touch(self, transfer_id: str, now: datetime | None = None) -> None:
        """A part arrived: the transfer is not abandoned."""
        stmt = (
            update(transfers)
            .where(transfers.c.id == transfer_id, transfers.c.state == TransferState.OPEN.value)
            .values(updated_at=utc(now))
        )
        try:
            with writing(self.engine) as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update transfer {transfer_id}: {exc}") from exc

    @staticmethod
    def mark_committed(conn: Connection, transfer_id: str, now: datetime) -> None:
        """In the transaction that indexes the transfer's instances: it is committed."""
        done = conn.execute(
            update(transfers)
            .where(transfers.c.id == transfer_id, transfers.c.state == TransferState.OPEN.value)
            .values(state=TransferState.COMMITTED.value, committed_at=now, updated_at=now)
        )
        if done.rowcount != 1:
            raise StoreError(f"transfer {transfer_id} is no longer open")

    def abandoned(self, before: datetime) -> list[Transfer]:
        """Open transfers no part came for since ``before``."""
        stmt = select(transfers).where(
            transfers.c.state == TransferState.OPEN.value, transfers.c.updated_at < before
        )
        try:
            with self.engine.connect() as conn:
                return [_transfer(r) for r in conn.execute(stmt).all()]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read transfers: {exc}") from exc

    def mark_purged(self, transfer_id: str, before: datetime, now: datetime | None = None) -> bool:
        """An abandoned transfer's parts are going: purged, unless a part came meanwhile."""
        stmt = (
            update(transfers)
            .where(
                transfers.c.id == transfer_id,
                transfers.c.state == TransferState.OPEN.value,
                transfers.c.updated_at < before,
            )
            .values(state=TransferState.PURGED.value, updated_at=utc(now))
        )
        try:
            with writing(self.engine) as conn:
                return conn.execute(stmt).rowcount == 1
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot purge transfer {transfer_id}: {exc}") from exc
