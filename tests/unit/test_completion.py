"""Study completion decided purely: notices (MPPS, IAN), expected series with their
deadline actions, the quiet fallback; turnaround percentiles."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from broker.model.completion import (
    IAN_AVAILABLE,
    Completion,
    NoticeKind,
    ProcedureNotice,
    notice_evidence,
)
from broker.model.domain import Patient, Series, Study, StudyState
from broker.model.timeline import Turnaround, percentile, summarize
from config.schema import Settings, routing_rules
from routing.completion import expectations, verdict
from routing.facts import Facts

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)

SETTINGS = Settings.model_validate(
    {
        "vendors": {
            "strokeai": {
                "product": "stroke",
                "transport": {"type": "dicom", "ae_title": "S", "host": "127.0.0.1", "port": 1},
            }
        },
        "routes": [
            {
                "name": "stroke",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["strokeai"],
                "expect": {
                    "series": {
                        "ncct": {"description": {"regex": "plain"}},
                        "cta": {"description": {"regex": "cta"}},
                        "perfusion": {"description": {"regex": "perf"}},
                    },
                    "deadline": "5m",
                    "on_timeout": "skip",
                },
            }
        ],
    }
)
RULES = routing_rules(SETTINGS)


def _study(*descriptions: str, body_part: str = "HEAD") -> Study:
    series = tuple(
        Series(
            series_uid=f"1.2.{i}",
            modality="CT",
            body_part=body_part,
            description=d,
            series_number=i + 1,
            slice_thickness=5.0,
            image_type=(),
            contrast_agent=None,
            instance_count=10,
            size=0,
        )
        for i, d in enumerate(descriptions)
    )
    return Study(
        study_uid="1.2.3",
        patient=Patient(patient_id="P1"),
        accession_number="A1",
        study_date="20261206",
        description="stroke",
        modalities=("CT",),
        body_parts=(body_part,),
        state=StudyState.RECEIVING,
        revision=0,
        instance_count=10 * len(series),
        size=0,
        calling_ae="CT01",
        called_ae="RADBRIDGE",
        peer_address="127.0.0.1",
        first_received_at=T0,
        last_received_at=T0,
        stable_at=None,
        stable_seconds=10.0,
        series=series,
    )


def _expected(study: Study, now: datetime = T0) -> tuple:  # type: ignore[type-arg]
    facts = Facts(study, None, {}, now, RULES.timezone, tag_kinds=RULES.tag_kinds)
    return expectations(RULES, facts, study.first_received_at)


def test_all_expected_series_in_completes_at_once() -> None:
    """Three expected series in: complete by expected series, quiet time or not."""
    expected = _expected(_study("Head plain 5mm", "CTA neck", "Perfusion 4D"))
    found = verdict(expected, T0 + timedelta(seconds=1), quiet=False)
    assert found.complete and found.reason is Completion.EXPECTED_SERIES


def test_missing_series_hold_until_the_deadline_then_skip() -> None:
    """Perfusion missing: held (even quiet) until the deadline, named; past it the
    ``skip`` route is left out and the study completes by deadline."""
    expected = _expected(_study("Head plain 5mm", "CTA neck"))
    [e] = expected
    assert e.missing == ("perfusion",) and e.deadline == T0 + timedelta(minutes=5)
    early = verdict(expected, T0 + timedelta(seconds=30), quiet=True)
    assert not early.complete and early.hold_until == e.deadline
    assert "perfusion missing" in early.detail
    late = verdict(expected, T0 + timedelta(minutes=5), quiet=False)
    assert late.complete and late.reason is Completion.DEADLINE
    assert late.skip_routes == ("stroke",) and "not sent (skip)" in late.detail


def test_wait_keeps_waiting_past_the_deadline() -> None:
    """``on_timeout: wait``: past the deadline the study still waits (no hold time)."""
    [e] = _expected(_study("Head plain 5mm"))
    waiting = replace(e, on_timeout=type(e.on_timeout)("wait"))
    found = verdict((waiting,), T0 + timedelta(hours=1), quiet=True)
    assert not found.complete and found.hold_until is None
    assert "still waiting" in found.detail


def test_no_expectation_leaves_it_to_the_quiet_time() -> None:
    """A study no route expects (a chest CT): not complete until quiet, then by quiet."""
    expected = _expected(_study("Chest 1mm", body_part="CHEST"))
    assert expected == ()
    assert not verdict(expected, T0, quiet=False).complete
    assert verdict(expected, T0, quiet=True).reason is Completion.QUIET


def _notice(kind: NoticeKind, status: str, refs: tuple[str, ...]) -> ProcedureNotice:
    return ProcedureNotice(
        id=1,
        kind=kind,
        sop_instance_uid="1.9",
        study_uid="1.2.3",
        accession_number=None,
        order_id=None,
        status=status,
        referenced=refs,
        calling_ae="CT01",
        created_at=T0,
        updated_at=T0,
    )


def test_mpps_needs_every_step_final_and_every_instance_in() -> None:
    """An MPPS proves completion once COMPLETED (or DISCONTINUED) with all its references
    present; IN PROGRESS, a missing instance or an empty COMPLETED proves nothing."""
    done = _notice(NoticeKind.MPPS, "COMPLETED", ("a", "b"))
    assert notice_evidence([done], {"a"}) is None
    found = notice_evidence([done], {"a", "b", "c"})
    assert found is not None and found[0] is Completion.MPPS
    busy = _notice(NoticeKind.MPPS, "IN PROGRESS", ("c",))
    assert notice_evidence([done, busy], {"a", "b", "c"}) is None
    assert notice_evidence([_notice(NoticeKind.MPPS, "COMPLETED", ())], set()) is None
    stopped = _notice(NoticeKind.MPPS, "DISCONTINUED", ())
    assert notice_evidence([stopped], set()) is not None
    ian = _notice(NoticeKind.IAN, IAN_AVAILABLE, ("a",))
    by_ian = notice_evidence([ian], {"a"})
    assert by_ian is not None and by_ian[0] is Completion.IAN
    assert notice_evidence([ian], set()) is None


def test_notice_completes_even_with_series_missing() -> None:
    """The modality's word wins over expected series still missing before the deadline."""
    expected = _expected(_study("Head plain 5mm"))
    found = verdict(expected, T0, quiet=False, notice=(Completion.MPPS, "done"))
    assert found.complete and found.reason is Completion.MPPS


def test_percentiles_nearest_rank_per_route() -> None:
    """p50/p95 by nearest rank, per route; steps not reached are not counted."""
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0

    def row(route: str, sent: float | None) -> Turnaround:
        return Turnaround(
            study_uid="1",
            route=route,
            vendor="v",
            priority="stat",
            state="sent",
            first_instance=T0,
            complete=T0 + timedelta(seconds=1),
            complete_reason="mpps",
            routed=T0 + timedelta(seconds=1),
            sent=None if sent is None else T0 + timedelta(seconds=sent),
            result=None,
            written_back=None,
        )

    [a, b] = summarize([row("b", 4.0), row("a", 2.0), row("a", 6.0), row("a", None)])
    assert (a.route, a.jobs, b.route) == ("a", 3, "b")
    assert a.intervals["sent"].count == 2 and a.intervals["sent"].p50 == 2.0
    assert a.intervals["sent"].max == 6.0 and a.intervals["result"].p50 is None
