"""Final reports in the store: each kept verbatim with what was read from it, matched to its
study by accession number, and compared with every AI finding of the study's results
(``report_matches``). A report arriving after the results is compared with them at once;
a result completing after the report is compared when it completes (:meth:`match_result`).
The newest report of a study counts (a corrected report replaces the earlier one).

A report whose patient ID (PID-3) is not the study's is kept but compared with nothing:
its text must not judge another patient's findings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import InboundMessage, ResultState
from broker.model.errors import StoreError
from broker.model.reports import (
    CodedObservation,
    FinalReport,
    MatchBasis,
    ReportMatch,
    ReportMatcher,
    ReportOutcome,
)
from broker.model.verdicts import code_key
from broker.store.engine import writing
from broker.store.results import findings_from_json
from broker.store.tables import final_reports, report_matches, results, studies
from broker.store.work_claims import utc


@dataclass(frozen=True, slots=True)
class StoredReport:
    id: int
    study_uid: str | None
    problem: str | None
    """Why the report was kept without being compared (another patient's)."""
    matches: tuple[ReportMatch, ...]


def _match(r: Row[Any]) -> ReportMatch:
    return ReportMatch(
        report_id=r.report_id,
        result_id=r.result_id,
        finding_index=r.finding_index,
        vendor=r.vendor,
        code=r.code,
        outcome=ReportOutcome(r.outcome),
        basis=MatchBasis(r.basis),
        evidence=r.evidence,
    )


def _report(r: Row[Any]) -> FinalReport:
    observations = json.loads(r.codes_json or "[]")
    return FinalReport(
        kind=r.kind,
        accession_number=r.accession_number,
        study_uid=r.study_uid,
        status=r.status,
        text=r.text or "",
        observations=tuple(CodedObservation(**o) for o in observations),
    )


class ReportStore:
    """Record final reports and compare them with the findings of their study."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        report: FinalReport,
        message: InboundMessage,
        matcher: ReportMatcher,
        *,
        now: datetime | None = None,
    ) -> StoredReport:
        """Store the message verbatim with the report read from it, and compare it with the
        findings of its study's complete results, in one transaction."""
        now = utc(now)
        try:
            with writing(self.engine) as conn:
                study_uid, patient_id = self._study(conn, report)
                problem = None
                if (
                    study_uid is not None
                    and report.patient_id
                    and patient_id
                    and report.patient_id != patient_id
                ):
                    problem = (
                        f"the report's patient (PID-3) is not the patient of study "
                        f"{study_uid} with accession number {report.accession_number}; "
                        "kept, compared with nothing"
                    )
                    study_uid = None
                report_id = conn.execute(
                    insert(final_reports)
                    .values(
                        kind=message.kind[:32],
                        control_id=message.control_id,
                        sender=message.sender[:160],
                        peer=message.peer[:64],
                        received_at=now,
                        raw=message.raw,
                        accession_number=report.accession_number,
                        study_uid=study_uid,
                        status=report.status,
                        text=report.text,
                        codes_json=json.dumps([asdict(o) for o in report.observations]),
                        error=problem,
                    )
                    .returning(final_reports.c.id)
                ).scalar_one()
                matches: list[ReportMatch] = []
                if study_uid is not None:
                    rows = conn.execute(
                        select(results).where(
                            results.c.study_uid == study_uid,
                            results.c.state == ResultState.COMPLETE.value,
                            results.c.findings_json.is_not(None),
                        )
                    ).all()
                    for row in rows:
                        matches += self._compare(
                            conn, report_id, report, row, matcher=matcher, now=now
                        )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store the final report: {exc}") from exc
        return StoredReport(report_id, study_uid, problem, tuple(matches))

    def _study(self, conn: Connection, report: FinalReport) -> tuple[str | None, str | None]:
        """The study the report is about (its UID, else the newest with its accession)."""
        s = studies
        stmt = select(s.c.study_uid, s.c.patient_id)
        if report.study_uid:
            stmt = stmt.where(s.c.study_uid == report.study_uid)
        elif report.accession_number:
            stmt = stmt.where(s.c.accession_number == report.accession_number)
        else:
            return None, None
        row = conn.execute(stmt.order_by(s.c.id.desc()).limit(1)).first()
        return (row.study_uid, row.patient_id) if row is not None else (None, None)

    def _compare(
        self,
        conn: Connection,
        report_id: int,
        report: FinalReport,
        row: Row[Any],
        *,
        matcher: ReportMatcher,
        now: datetime,
    ) -> list[ReportMatch]:
        found = findings_from_json(row.findings_json)
        conn.execute(
            delete(report_matches).where(
                report_matches.c.report_id == report_id, report_matches.c.result_id == row.id
            )
        )
        made = []
        for n, finding in enumerate(found.findings):
            compared = matcher.compare(finding, report)
            match = ReportMatch(
                report_id=report_id,
                result_id=row.id,
                finding_index=n,
                vendor=row.vendor,
                code=code_key(finding.code)[:160],
                outcome=compared.outcome,
                basis=compared.basis,
                evidence=compared.evidence,
            )
            values = asdict(match) | {"outcome": match.outcome.value, "basis": match.basis.value}
            conn.execute(insert(report_matches).values(**values, at=now))
            made.append(match)
        return made

    def match_result(
        self, result_id: int, matcher: ReportMatcher, *, now: datetime | None = None
    ) -> list[ReportMatch]:
        """Compare a result that just completed with the newest report of its study."""
        now = utc(now)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(select(results).where(results.c.id == result_id)).first()
                if row is None or row.findings_json is None:
                    return []
                report = conn.execute(
                    select(final_reports)
                    .where(final_reports.c.study_uid == row.study_uid)
                    .order_by(final_reports.c.id.desc())
                    .limit(1)
                ).first()
                if report is None:
                    return []
                return self._compare(
                    conn, report.id, _report(report), row, matcher=matcher, now=now
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot compare result {result_id} with its report: {exc}") from exc

    def current(self, result_ids: Iterable[int]) -> dict[tuple[int, int], ReportMatch]:
        """Per (result, finding): the comparison with the newest report."""
        ids = sorted(set(result_ids))
        if not ids:
            return {}
        m = report_matches
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(m).where(m.c.result_id.in_(ids)).order_by(m.c.report_id, m.c.id)
            ).all()
        return {(r.result_id, r.finding_index): _match(r) for r in rows}
