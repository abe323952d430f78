"""Orders in the store on SQLite and PostgreSQL: correlation with studies, updates,
cancellation, patient updates and merges, and messages kept verbatim."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from broker.model.domain import (
    InboundMessage,
    LinkState,
    Order,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
)
from broker.model.errors import NotFoundError
from broker.model.identity import IdentityConflictError
from broker.model.jobs import JobState
from broker.store import JobStore, StudyStore
from broker.store.orders import OrderStore
from broker.store.tables import order_messages
from tests.databases import DATABASES, empty_database
from tests.integration.test_store import STUDY, T0, _rec

PATIENT = Patient(patient_id="PID-4711", issuer="HOSP", name="DOE^JANE")
"""The patient of ``tests.test_store._rec``'s instances (accession ACC-0001)."""


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite or on a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _msg(kind: str = "ORM^O01", raw: bytes = b"MSH|^~\\&|RIS|H|RADBRIDGE|H|||ORM^O01|1|P|2.3.1\r"):
    return InboundMessage(source=OrderSource.HL7, kind=kind, raw=raw, peer="127.0.0.1")


def _order(**fields: object) -> Order:
    values: dict[str, object] = {
        "source": OrderSource.HL7,
        "placer_number": "PL-1",
        "filler_number": "FL-1",
        "accession_number": "ACC-0001",
        "patient": PATIENT,
        "procedure_code": "CTCHEST",
        "procedure_text": "CT chest without contrast",
        "modality": "CT",
        "priority": OrderPriority.STAT,
    }
    values.update(fields)
    return Order(**values)  # type: ignore[arg-type]


def _stable_study(engine: Engine, study: str = STUDY, **fields: object) -> StudyStore:
    store = StudyStore(engine)
    store.record_instance(_rec("1.1", study=study, at=T0, **fields), stable_seconds=1)
    assert store.close_stable(T0 + timedelta(seconds=2)) == [study]
    return store


def test_order_before_study_links_at_routing_time(engine: Engine) -> None:
    """An order stored first is found for the study by accession number and linked."""
    orders = OrderStore(engine)
    outcome = orders.record_order(_order(), _msg())
    assert outcome.created and outcome.linked == ()
    store = _stable_study(engine)
    stored, link = orders.order_for_study(store.get_study(STUDY))
    assert stored is not None and stored.id == outcome.stored.id
    assert stored.order.priority is OrderPriority.STAT
    assert link is not None and link.state is LinkState.LINKED and link.matched_on == "accession"
    assert orders.link(STUDY) == link


def test_study_before_order_links_and_asks_for_routing_again(engine: Engine) -> None:
    """An order for a stable study links at once and marks the study due for routing."""
    store = _stable_study(engine)
    outcome = OrderStore(engine).record_order(_order(), _msg())
    assert outcome.linked == (STUDY,)
    assert store.take_route_due() == [STUDY]
    assert store.take_route_due() == []  # taken once


def test_order_links_by_study_uid_without_accession(engine: Engine) -> None:
    """Without an accession number the study instance UID links order and study."""
    store = _stable_study(engine, accession_number=None)
    outcome = OrderStore(engine).record_order(
        _order(accession_number=None, study_uid=STUDY), _msg()
    )
    assert outcome.linked == (STUDY,)
    link = OrderStore(engine).link(STUDY)
    assert link is not None and link.matched_on == "study_uid"
    assert store.take_route_due() == [STUDY]


def test_patient_mismatch_is_flagged_not_linked(engine: Engine) -> None:
    """Same accession, another patient ID: the link is flagged and routing gets no order."""
    store = _stable_study(engine)
    orders = OrderStore(engine)
    outcome = orders.record_order(_order(patient=Patient(patient_id="PID-9999")), _msg())
    assert outcome.linked == () and outcome.flagged == (STUDY,)
    assert store.take_route_due() == []
    stored, link = orders.order_for_study(store.get_study(STUDY))
    assert stored is None
    assert link is not None and link.state is LinkState.PATIENT_MISMATCH
    assert link.detail is not None and "patient ID differs" in link.detail


def test_update_matches_by_placer_number_and_counts_versions(engine: Engine) -> None:
    """XO with the same placer number updates the order (version 2); empty fields keep theirs."""
    orders = OrderStore(engine)
    first = orders.record_order(_order(), _msg())
    second = orders.record_order(
        _order(filler_number=None, procedure_code="CTCHESTC", priority=OrderPriority.ROUTINE),
        _msg(),
    )
    assert not second.created and second.stored.id == first.stored.id
    assert second.stored.version == 2
    assert second.stored.order.procedure_code == "CTCHESTC"
    assert second.stored.order.filler_number == "FL-1"
    assert [m.kind for m in orders.raw_messages(first.stored.id)] == ["ORM^O01", "ORM^O01"]


def test_resource_id_creates_then_updates_that_order(engine: Engine) -> None:
    """A FHIR PUT's resource id creates the order with that id, then updates it."""
    orders = OrderStore(engine)
    fhir = InboundMessage(source=OrderSource.FHIR, kind="ServiceRequest", raw=b"{}")
    made = orders.record_order(_order(source=OrderSource.FHIR), fhir, resource_id="sr-1")
    again = orders.record_order(
        _order(source=OrderSource.FHIR, placer_number="OTHER"), fhir, resource_id="sr-1"
    )
    assert made.created and not again.created
    assert orders.get("sr-1").version == 2
    assert orders.get(made.stored.id).order.placer_number == "OTHER"
    assert orders.get("ACC-0001").resource_id == "sr-1"
    with pytest.raises(NotFoundError):
        orders.get("nope")


def test_cancel_cancels_unsent_jobs_only(engine: Engine) -> None:
    """CA cancels the study's pending jobs; a job the vendor already has is left alone."""
    _stable_study(engine)
    orders = OrderStore(engine)
    orders.record_order(_order(), _msg())
    jobs = JobStore(engine)
    pending = jobs.create(STUDY, "lungai", route="chest").job
    sent = jobs.create(STUDY, "ichai", route="head").job
    assert jobs.claim(sent.id) is not None
    jobs.finish(sent.id, [JobState.SENT, JobState.AWAITING_RESULT])
    outcome = orders.record_order(_order(status=OrderStatus.CANCELLED), _msg())
    assert outcome.cancelled_jobs == 1
    assert jobs.get(pending.id).state is JobState.CANCELLED
    assert jobs.get(sent.id).state is JobState.AWAITING_RESULT
    assert [str(e.to_state) for e in jobs.history(pending.id)][-1] == "cancelled"


def test_patient_update_changes_studies_and_orders(engine: Engine) -> None:
    """ADT A08 renames the patient on the stored study and order."""
    store = _stable_study(engine)
    orders = OrderStore(engine)
    orders.record_order(_order(), _msg())
    updated = orders.record_patient(
        Patient(patient_id="PID-4711", issuer="HOSP", name="DOE^JANET", sex="F"),
        _msg("ADT^A08"),
    )
    assert updated == 2
    assert store.get_study(STUDY).patient.name == "DOE^JANET"
    assert orders.get("ACC-0001").order.patient.name == "DOE^JANET"


def test_merge_moves_studies_and_orders_to_the_survivor(engine: Engine) -> None:
    """ADT A40 moves the prior patient's study and order to the surviving patient ID."""
    store = _stable_study(engine)
    orders = OrderStore(engine)
    orders.record_order(_order(), _msg())
    moved = orders.merge_patients(
        Patient(patient_id="PID-1000", issuer="HOSP", name="DOE^JANE"),
        Patient(patient_id="PID-4711", issuer="HOSP"),
        _msg("ADT^A40"),
    )
    assert moved == 2
    assert store.get_study(STUDY).patient.patient_id == "PID-1000"
    assert orders.get("ACC-0001").order.patient.patient_id == "PID-1000"


def test_rejected_message_is_kept_verbatim(engine: Engine) -> None:
    """A message answered AE is still stored, byte for byte, with the reason."""
    raw = "MSH|^~\\&|RIS|H|||||ORM^O01|9|P|2.3.1\rPID|||王小明\r".encode("gb18030")
    message_id = OrderStore(engine).record_message(_msg(raw=raw), error="no accession number")
    with engine.connect() as conn:
        row = conn.execute(select(order_messages).where(order_messages.c.id == message_id)).one()
    assert bytes(row.raw) == raw and row.error == "no accession number" and row.order_id is None


def test_put_replaces_the_order_and_a_transaction_stores_all(engine: Engine) -> None:
    """A FHIR PUT replaces every field (an absent one is cleared); ``record_orders`` stores
    several orders in one call, each with the message."""
    orders = OrderStore(engine)
    fhir = InboundMessage(source=OrderSource.FHIR, kind="Bundle", raw=b'{"type":"transaction"}')
    first, second = orders.record_orders(
        [
            (_order(source=OrderSource.FHIR, department="ED"), "sr-a"),
            (
                _order(
                    source=OrderSource.FHIR,
                    placer_number="PL-2",
                    filler_number="FL-2",
                    accession_number="A2",
                ),
                None,
            ),
        ],
        fhir,
    )
    assert first.created and second.created and first.stored.id != second.stored.id
    replaced = orders.record_order(_order(source=OrderSource.FHIR), fhir, resource_id="sr-a")
    assert replaced.stored.order.department is None and replaced.stored.version == 2
    assert orders.by_resource_id("sr-a").order.department is None
    assert [m.kind for m in orders.raw_messages(second.stored.id)] == ["Bundle"]
    with pytest.raises(NotFoundError):
        orders.by_resource_id(str(first.stored.id))


def _numbered(n: int) -> Order:
    return _order(placer_number=f"PL-{n}", filler_number=f"FL-{n}", accession_number=f"A{n}")


def test_a_message_of_several_orders_is_stored_once(engine: Engine) -> None:
    """A message that makes several orders (one of them twice) is one ``order_messages``
    row, the message of each order; a batch's message kept before its orders
    (``kept_as``) gets no second copy, not even when an order is refused."""
    orders = OrderStore(engine)
    bundle = InboundMessage(source=OrderSource.FHIR, kind="Bundle", raw=b"{}" * 1000)
    made = orders.record_orders([(_numbered(n), None) for n in (1, 2, 1)], bundle)
    assert made[0].stored.id == made[2].stored.id and made[2].stored.version == 2
    kept = orders.record_message(bundle, error=None)
    later = orders.record_order(_numbered(3), bundle, kept_as=kept)
    with pytest.raises(IdentityConflictError):
        orders.record_order(
            replace(_numbered(3), patient=Patient(patient_id="PID-other")),
            bundle,
            kept_as=kept,
        )
    with engine.connect() as conn:
        assert len(conn.execute(select(order_messages.c.id)).all()) == 2
    for outcome in (*made, later):
        assert [m.raw for m in orders.raw_messages(outcome.stored.id)] == [bundle.raw]
