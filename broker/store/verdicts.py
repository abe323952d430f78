"""Radiologists' verdicts on AI findings: every verdict kept, the newest of a finding counts,
each audited (``finding.verdict``) in the transaction that records it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, insert, select
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import NotFoundError, StoreError
from broker.model.verdicts import (
    FindingVerdict,
    Verdict,
    VerdictError,
    VerdictSource,
    code_key,
)
from broker.store.audit import Action, record_in
from broker.store.engine import writing
from broker.store.results import findings_from_json
from broker.store.tables import finding_verdicts, results
from broker.store.work_claims import utc

#: Longest corrected value and comment kept.
MAX_TEXT = 2000


def _verdict(r: Row[Any]) -> FindingVerdict:
    return FindingVerdict(
        id=r.id,
        result_id=r.result_id,
        finding_index=r.finding_index,
        vendor=r.vendor,
        code=r.code,
        verdict=Verdict(r.verdict),
        corrected_value=r.corrected_value,
        comment=r.comment,
        actor=r.actor,
        source=VerdictSource(r.source),
        at=r.at,
    )


class VerdictStore:
    """Record and read verdicts on the findings of results."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        result_id: int,
        finding_index: int,
        verdict: Verdict,
        *,
        actor: str,
        source: VerdictSource,
        corrected_value: str | None = None,
        comment: str | None = None,
        peer: str = "",
        now: datetime | None = None,
    ) -> FindingVerdict:
        """Record ``actor``'s verdict on finding ``finding_index`` of the result.

        :class:`NotFoundError` when there is no such result; :class:`VerdictError`
        when the result has no such finding (saying how many it has).
        """
        now = utc(now)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(
                    select(results.c.vendor, results.c.findings_json).where(
                        results.c.id == result_id
                    )
                ).one_or_none()
                if row is None:
                    raise NotFoundError(f"no result with id {result_id}")
                found = findings_from_json(row.findings_json) if row.findings_json else None
                count = len(found.findings) if found else 0
                if not 0 <= finding_index < count:
                    valid = f"0 to {count - 1}" if count else "none: the result has no findings"
                    raise VerdictError(
                        f"result {result_id} has no finding {finding_index}; valid: {valid}"
                    )
                assert found is not None
                code = code_key(found.findings[finding_index].code)
                values = {
                    "result_id": result_id,
                    "finding_index": finding_index,
                    "vendor": row.vendor,
                    "code": code[:160],
                    "verdict": verdict.value,
                    "corrected_value": (corrected_value or None) and corrected_value[:MAX_TEXT],
                    "comment": (comment or None) and comment[:MAX_TEXT],
                    "actor": actor[:160],
                    "source": source.value,
                    "at": now,
                }
                new_id = conn.execute(
                    insert(finding_verdicts).values(values).returning(finding_verdicts.c.id)
                ).scalar_one()
                record_in(
                    conn,
                    actor,
                    Action.FINDING_VERDICT,
                    f"result:{result_id}",
                    detail={
                        "finding": finding_index,
                        "code": code,
                        "verdict": verdict.value,
                        "vendor": row.vendor,
                        "source": source.value,
                        "corrected": corrected_value is not None,
                    },
                    peer=peer,
                    now=now,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the verdict on result {result_id}: {exc}") from exc
        return FindingVerdict(
            id=new_id,
            result_id=result_id,
            finding_index=finding_index,
            vendor=row.vendor,
            code=values["code"],
            verdict=verdict,
            corrected_value=values["corrected_value"],
            comment=values["comment"],
            actor=values["actor"],
            source=source,
            at=now,
        )

    def history(self, result_id: int) -> list[FindingVerdict]:
        """Every verdict on the result's findings, oldest first."""
        v = finding_verdicts
        with self.engine.connect() as conn:
            rows = conn.execute(select(v).where(v.c.result_id == result_id).order_by(v.c.id)).all()
        return [_verdict(r) for r in rows]

    def current(self, result_ids: Iterable[int]) -> dict[tuple[int, int], FindingVerdict]:
        """The newest verdict of each finding of these results, by (result, finding)."""
        ids = sorted(set(result_ids))
        if not ids:
            return {}
        v = finding_verdicts
        with self.engine.connect() as conn:
            rows = conn.execute(select(v).where(v.c.result_id.in_(ids)).order_by(v.c.id)).all()
        return {(r.result_id, r.finding_index): _verdict(r) for r in rows}
