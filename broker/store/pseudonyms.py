"""The pseudonyms radbridge issued: the only way from a vendor's values back to the originals.

A pseudonym is a keyed hash (:class:`broker.model.deid.Pseudonyms`): stable,
but not reversible. Before a de-identified study leaves, every pseudonym it
carries is recorded here with its original (:meth:`PseudonymStore.record`),
so a result that names them can be mapped back
(:meth:`PseudonymStore.lookup`); a value that is not here was never issued,
and is not guessed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from broker.model.deid import Pseudonym, PseudonymKind
from broker.model.errors import StoreError
from broker.store.engine import writing
from broker.store.tables import pseudonyms

#: Values looked up per query.
_BATCH = 500


def _pseudonym(r: Row[Any]) -> Pseudonym:
    return Pseudonym(PseudonymKind(r.kind), r.pseudonym, r.original, r.study_uid, r.sent_with)


class PseudonymStore:
    """Issued pseudonyms and their originals. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        issued: Iterable[Pseudonym],
        *,
        sent_with: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """Keep every pseudonym not recorded yet; how many were new. ``sent_with``: the study
        whose job sends them (retention purges them with it); a prior's pseudonyms recorded
        before are moved to it (the latest study that sent them; retention keeps them while
        a study of its patient ID is kept, which may have sent them too)."""
        wanted = {p.pseudonym: p for p in issued}
        if not wanted:
            return 0
        now = now or datetime.now(UTC)
        for attempt in (1, 2):  # another worker may record the same pseudonyms at once
            try:
                with writing(self.engine) as conn:
                    known: set[str] = set()
                    names = list(wanted)
                    for i in range(0, len(names), _BATCH):
                        known.update(
                            conn.execute(
                                select(pseudonyms.c.pseudonym).where(
                                    pseudonyms.c.pseudonym.in_(names[i : i + _BATCH])
                                )
                            ).scalars()
                        )
                    new = [
                        {
                            "pseudonym": p.pseudonym,
                            "kind": p.kind.value,
                            "original": p.original,
                            "study_uid": p.study_uid,
                            "sent_with": sent_with,
                            "issued_at": now,
                        }
                        for name, p in wanted.items()
                        if name not in known
                    ]
                    if new:
                        conn.execute(insert(pseudonyms), new)
                    if sent_with is not None:
                        priors = [n for n in known if wanted[n].study_uid != sent_with]
                        for i in range(0, len(priors), _BATCH):
                            conn.execute(
                                update(pseudonyms)
                                .where(pseudonyms.c.pseudonym.in_(priors[i : i + _BATCH]))
                                .values(sent_with=sent_with)
                            )
                    return len(new)
            except IntegrityError as exc:
                if attempt == 2:
                    raise StoreError(f"cannot record pseudonyms: {exc}") from exc
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot record pseudonyms: {exc}") from exc
        return 0  # pragma: no cover - the loop returns or raises

    def lookup(self, values: Collection[str]) -> dict[str, Pseudonym]:
        """The recorded pseudonyms among ``values``, by pseudonym."""
        names = [v for v in dict.fromkeys(values) if v]
        found: dict[str, Pseudonym] = {}
        try:
            with self.engine.connect() as conn:
                for i in range(0, len(names), _BATCH):
                    rows = conn.execute(
                        select(pseudonyms).where(pseudonyms.c.pseudonym.in_(names[i : i + _BATCH]))
                    ).all()
                    found.update((r.pseudonym, _pseudonym(r)) for r in rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read pseudonyms: {exc}") from exc
        return found

    def of_study(self, study_uid: str) -> list[Pseudonym]:
        """Every pseudonym issued for the original study ``study_uid``."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(pseudonyms)
                    .where(pseudonyms.c.study_uid == study_uid)
                    .order_by(pseudonyms.c.id)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read pseudonyms: {exc}") from exc
        return [_pseudonym(r) for r in rows]
