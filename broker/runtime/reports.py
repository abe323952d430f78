"""Final reports in, compared with AI findings: what the HL7 listener hands a report to, and
the hook that compares a result with its study's report when the result completes.

The keyword lists and negations come from the configuration in force
(``final_reports``), read at each report or result, so a reload changes the next
comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Engine

from broker.model.domain import InboundMessage
from broker.model.logging import get_logger
from broker.model.reports import FinalReport, ReportMatcher, ReportOutcome
from broker.store.reports import ReportStore
from config.schema import Settings

LOG = get_logger("radbridge.reports")


class _Settings(Protocol):
    @property
    def settings(self) -> Settings: ...


def matcher_of(snapshots: _Settings) -> Callable[[], ReportMatcher]:
    """The comparison of the configuration in force each time it is asked for."""

    def matcher() -> ReportMatcher:
        return snapshots.settings.final_reports.matcher()

    return matcher


class FinalReportIntake:
    """Stores reports (verbatim, before the ACK) and keeps their comparisons up to date."""

    def __init__(self, engine: Engine, matcher: Callable[[], ReportMatcher]) -> None:
        self.store = ReportStore(engine)
        self.matcher = matcher

    def record_report(self, report: FinalReport, message: InboundMessage) -> str | None:
        """Store and compare one report; a problem to answer AE with (the report is kept),
        else None. A store failure raises (the sender is told to send again)."""
        stored = self.store.record(report, message, self.matcher())
        outcomes = [m.outcome for m in stored.matches]
        LOG.info(
            "final report stored",
            report_id=stored.id,
            kind=report.kind,
            study_uid=stored.study_uid,
            status=report.status,
            findings=len(outcomes),
            confirmed=outcomes.count(ReportOutcome.CONFIRMED),
            contradicted=outcomes.count(ReportOutcome.CONTRADICTED),
        )
        if stored.problem is not None:
            LOG.warning("final report not compared", report_id=stored.id, problem=stored.problem)
        return stored.problem

    def result_complete(self, result_id: int) -> None:
        """The results timer's hook: compare the result with its study's report, if any."""
        made = self.store.match_result(result_id, self.matcher())
        if made:
            LOG.info(
                "result compared with the final report", result_id=result_id, findings=len(made)
            )
