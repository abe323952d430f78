"""The study store on SQLite and PostgreSQL: indexing, replacement, stability, listing."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, select, text

from broker.model.domain import InstanceRecord, Patient, StudyState
from broker.model.errors import NotFoundError, StoreError
from broker.store import Indexed, StudyStore, make_engine
from broker.store import studies as studies_module
from broker.store.migrate import MIGRATIONS, migrate
from broker.store.tables import instances, series, studies
from tests.databases import DATABASES, empty_database

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.511.1"
SERIES_A = STUDY + ".1"
SERIES_B = STUDY + ".2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty, unmigrated database: a fresh SQLite file, or a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path, migrated=False) as eng:
        yield eng


@pytest.fixture
def store(engine: Engine) -> StudyStore:
    migrate(engine)
    return StudyStore(engine)


def _rec(
    sop: str,
    *,
    study: str = STUDY,
    series_uid: str = SERIES_A,
    at: datetime = T0,
    path: str | None = None,
    **fields: Any,
) -> InstanceRecord:
    """A fully filled instance record; ``fields`` override any attribute."""
    values: dict[str, Any] = {
        "sop_instance_uid": sop,
        "sop_class_uid": CT_IMAGE,
        "series_uid": series_uid,
        "study_uid": study,
        "transfer_syntax_uid": EXPLICIT_LE,
        "path": path or f"/spool/{study}/{series_uid}/{sop}.dcm",
        "size": 525_000,
        "patient": Patient(
            patient_id="PID-4711", issuer="HOSP", name="DOE^JANE", birth_date="19700101", sex="F"
        ),
        "accession_number": "ACC-0001",
        "study_date": "20240501",
        "study_time": "080000",
        "study_description": "CT CHEST W/O CONTRAST",
        "referring_physician": "SMITH^JOHN",
        "institution": "Example General Hospital",
        "modality": "CT",
        "body_part": "CHEST",
        "series_description": "Lung 1.0 B70f",
        "series_number": 3,
        "protocol_name": "Chest routine",
        "slice_thickness": 1.0,
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "contrast_agent": None,
        "instance_number": 1,
        "number_of_frames": None,
        "calling_ae": "CT01",
        "called_ae": "RADBRIDGE",
        "peer_address": "127.0.0.1",
        "received_at": at,
    }
    values.update(fields)
    return InstanceRecord(**values)


def test_make_engine_creates_the_sqlite_folder(tmp_path: Path) -> None:
    """make_engine creates the missing parent folder of a SQLite database file."""
    eng = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'radbridge.db'}")
    try:
        migrate(eng)
        assert (tmp_path / "a" / "b" / "radbridge.db").is_file()
    finally:
        eng.dispose()


def _head_revision() -> str:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_migrate_twice_is_idempotent(engine: Engine) -> None:
    """Running the migrations twice leaves one schema at the newest revision and a working store."""
    migrate(engine)
    migrate(engine)
    assert {"studies", "series", "instances", "alembic_version"} <= set(
        inspect(engine).get_table_names()
    )
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [_head_revision()]
        if engine.dialect.name == "postgresql":
            assert conn.execute(text("SELECT current_schema()")).scalar_one().startswith("t_")
    store = StudyStore(engine)
    store.record_instance(_rec("1.1"), stable_seconds=10)
    assert store.get_study(STUDY).instance_count == 1


def test_record_instance_indexes_study_series_and_instance(store: StudyStore) -> None:
    """A new instance creates its study, series and instance rows with every field."""
    first = store.record_instance(_rec("1.1"), stable_seconds=10)
    assert first == Indexed(replaced=False, previous_path=None, study_state=StudyState.RECEIVING)
    store.record_instance(
        _rec("1.2", at=T0 + timedelta(seconds=1), instance_number=2, size=1000), stable_seconds=10
    )
    store.record_instance(
        _rec(
            "2.1",
            series_uid=SERIES_B,
            at=T0 + timedelta(seconds=2),
            series_description="Mediastinum 5.0 B30f",
            series_number=4,
            slice_thickness=5.0,
            image_type=("DERIVED", "SECONDARY", "AXIAL"),
            contrast_agent="Iopromide",
            size=2000,
        ),
        stable_seconds=10,
    )

    study = store.get_study(STUDY)
    assert study.study_uid == STUDY
    assert study.patient == Patient(
        patient_id="PID-4711", issuer="HOSP", name="DOE^JANE", birth_date="19700101", sex="F"
    )
    assert study.accession_number == "ACC-0001"
    assert study.study_date == "20240501"
    assert study.description == "CT CHEST W/O CONTRAST"
    assert study.modalities == ("CT",)
    assert study.body_parts == ("CHEST",)
    assert study.state is StudyState.RECEIVING
    assert study.revision == 0
    assert study.instance_count == 3
    assert study.size == 525_000 + 1000 + 2000
    assert (study.calling_ae, study.called_ae, study.peer_address) == (
        "CT01",
        "RADBRIDGE",
        "127.0.0.1",
    )
    assert study.first_received_at == T0
    assert study.last_received_at == T0 + timedelta(seconds=2)
    assert study.first_received_at.tzinfo is not None
    assert study.stable_at is None
    assert study.stable_seconds == 10

    a, b = study.series
    assert a.series_uid == SERIES_A
    assert (a.modality, a.body_part, a.description) == ("CT", "CHEST", "Lung 1.0 B70f")
    assert (a.series_number, a.slice_thickness) == (3, 1.0)
    assert a.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert a.contrast_agent is None
    assert (a.instance_count, a.size) == (2, 526_000)
    assert b.series_uid == SERIES_B
    assert (b.description, b.series_number, b.slice_thickness) == ("Mediastinum 5.0 B30f", 4, 5.0)
    assert b.image_type == ("DERIVED", "SECONDARY", "AXIAL")
    assert b.contrast_agent == "Iopromide"
    assert (b.instance_count, b.size) == (1, 2000)

    with store.engine.connect() as conn:
        row = conn.execute(select(studies).where(studies.c.study_uid == STUDY)).one()
        assert (row.study_time, row.referring_physician, row.institution) == (
            "080000",
            "SMITH^JOHN",
            "Example General Hospital",
        )
        assert row.due_at == T0 + timedelta(seconds=12)
        protocol = conn.execute(
            select(series.c.protocol_name).where(series.c.series_uid == SERIES_A)
        ).scalar_one()
        assert protocol == "Chest routine"
        inst = conn.execute(select(instances).where(instances.c.sop_instance_uid == "1.2")).one()
    assert (inst.sop_class_uid, inst.transfer_syntax_uid) == (CT_IMAGE, EXPLICIT_LE)
    assert (inst.study_uid, inst.series_uid, inst.instance_number) == (STUDY, SERIES_A, 2)
    assert (inst.calling_ae, inst.called_ae, inst.peer_address) == (
        "CT01",
        "RADBRIDGE",
        "127.0.0.1",
    )
    assert inst.received_at == T0 + timedelta(seconds=1)
    assert inst.receive_count == 1
    assert store.instance_paths(STUDY) == [
        f"/spool/{STUDY}/{SERIES_A}/1.1.dcm",
        f"/spool/{STUDY}/{SERIES_A}/1.2.dcm",
        f"/spool/{STUDY}/{SERIES_B}/2.1.dcm",
    ]
    assert sorted(store.known_paths()) == sorted(store.instance_paths(STUDY))


def test_later_instances_fill_in_but_never_blank_out(store: StudyStore) -> None:
    """An instance without patient or accession keeps what an earlier instance gave the study."""
    store.record_instance(_rec("1.1"), stable_seconds=10)
    store.record_instance(
        _rec("1.2", patient=Patient(), accession_number=None, body_part=None), stable_seconds=10
    )
    study = store.get_study(STUDY)
    assert study.patient.patient_id == "PID-4711"
    assert study.accession_number == "ACC-0001"
    assert study.body_parts == ("CHEST",)


def test_rerecording_an_instance_replaces_it(store: StudyStore) -> None:
    """The same SOP Instance UID again replaces the earlier copy and is counted once."""
    store.record_instance(_rec("1.1", path="/spool/a.dcm", size=100), stable_seconds=10)
    same = store.record_instance(_rec("1.1", path="/spool/a.dcm", size=100), stable_seconds=10)
    assert same.replaced is True
    assert same.previous_path is None
    moved = store.record_instance(
        _rec("1.1", path="/spool/b.dcm", size=300, at=T0 + timedelta(seconds=5)),
        stable_seconds=10,
    )
    assert moved == Indexed(
        replaced=True, previous_path="/spool/a.dcm", study_state=StudyState.RECEIVING
    )
    study = store.get_study(STUDY)
    assert study.instance_count == 1
    assert study.size == 300
    assert store.instance_paths(STUDY) == ["/spool/b.dcm"]
    with store.engine.connect() as conn:
        count = conn.execute(
            select(instances.c.receive_count).where(instances.c.sop_instance_uid == "1.1")
        ).scalar_one()
    assert count == 3


def test_close_stable_waits_for_the_due_time(store: StudyStore) -> None:
    """A study becomes stable only once its quiet time has passed, with revision 1."""
    store.record_instance(_rec("1.1"), stable_seconds=10)
    store.record_instance(_rec("1.2", at=T0 + timedelta(seconds=4)), stable_seconds=10)
    assert store.next_due() == T0 + timedelta(seconds=14)
    assert store.close_stable(now=T0 + timedelta(seconds=13.9)) == []
    assert store.get_study(STUDY).state is StudyState.RECEIVING

    assert store.close_stable(now=T0 + timedelta(seconds=14)) == [STUDY]
    study = store.get_study(STUDY)
    assert study.state is StudyState.STABLE
    assert study.revision == 1
    assert study.stable_at == T0 + timedelta(seconds=14)
    assert store.next_due() is None
    assert store.close_stable(now=T0 + timedelta(hours=1)) == []
    assert store.get_study(STUDY).revision == 1


def test_instance_for_a_stable_study_reopens_it(store: StudyStore) -> None:
    """A late instance turns a stable study `updated`; it is stable again with revision 2."""
    store.record_instance(_rec("1.1"), stable_seconds=10)
    assert store.close_stable(now=T0 + timedelta(seconds=10)) == [STUDY]

    late = T0 + timedelta(minutes=5)
    indexed = store.record_instance(_rec("1.2", at=late), stable_seconds=10)
    assert indexed.study_state is StudyState.UPDATED
    assert indexed.replaced is False
    study = store.get_study(STUDY)
    assert (study.state, study.revision) == (StudyState.UPDATED, 1)
    again = store.record_instance(_rec("1.3", at=late + timedelta(seconds=2)), stable_seconds=10)
    assert again.study_state is StudyState.UPDATED
    assert store.next_due() == late + timedelta(seconds=12)

    assert store.close_stable(now=late + timedelta(seconds=11)) == []
    assert store.close_stable(now=late + timedelta(seconds=12)) == [STUDY]
    study = store.get_study(STUDY)
    assert (study.state, study.revision) == (StudyState.STABLE, 2)
    assert study.stable_at == late + timedelta(seconds=12)
    assert study.instance_count == 3
    assert study.first_received_at == T0


def test_next_due_is_the_earliest_collecting_study(store: StudyStore) -> None:
    """next_due is the earliest due time of studies still collecting, None when there is none."""
    assert store.next_due() is None
    store.record_instance(_rec("1.1", study="1.2.3.1", series_uid="1.2.3.1.1"), stable_seconds=10)
    store.record_instance(
        _rec("2.1", study="1.2.3.2", series_uid="1.2.3.2.1", at=T0 + timedelta(seconds=1)),
        stable_seconds=2,
    )
    due = store.next_due()
    assert due == T0 + timedelta(seconds=3)
    assert due is not None
    assert due.utcoffset() == timedelta(0)
    assert store.close_stable(now=T0 + timedelta(seconds=3)) == ["1.2.3.2"]
    assert store.next_due() == T0 + timedelta(seconds=10)


def test_list_studies_newest_first_with_limit_and_offset(store: StudyStore) -> None:
    """Studies list newest activity first (ties: latest indexed first), paged by limit/offset."""
    for i in range(5):
        store.record_instance(
            _rec(f"9.{i}", study=f"1.2.3.{i}", series_uid=f"1.2.3.{i}.1", at=T0 + timedelta(i)),
            stable_seconds=10,
        )
    # Same activity time as study 4: the one indexed later comes first.
    store.record_instance(
        _rec("9.5", study="1.2.3.5", series_uid="1.2.3.5.1", at=T0 + timedelta(4)),
        stable_seconds=10,
    )
    order = ["1.2.3.5", "1.2.3.4", "1.2.3.3", "1.2.3.2", "1.2.3.1", "1.2.3.0"]
    assert [s.study_uid for s in store.list_studies()] == order
    assert [s.study_uid for s in store.list_studies(limit=2)] == order[:2]
    assert [s.study_uid for s in store.list_studies(limit=2, offset=2)] == order[2:4]
    assert [s.study_uid for s in store.list_studies(limit=10, offset=5)] == order[5:]
    assert store.list_studies(offset=6) == []
    listed = store.list_studies(limit=1, offset=3)[0]
    assert listed.instance_count == 1
    assert [s.series_uid for s in listed.series] == ["1.2.3.2.1"]


def test_get_study_of_unknown_uid_raises_not_found(store: StudyStore) -> None:
    """Asking for a study that was never received raises NotFoundError naming the UID."""
    store.record_instance(_rec("1.1"), stable_seconds=10)
    with pytest.raises(NotFoundError, match=r"1\.2\.999"):
        store.get_study("1.2.999")
    assert store.instance_paths("1.2.999") == []


def test_cjk_text_round_trips(store: StudyStore) -> None:
    """Chinese, Japanese and Korean names and descriptions come back exactly as stored."""
    name = "山田^太郎=やまだ^たろう"
    description = "胸部CT平扫 / 흉부 CT / 胸部単純CT"
    store.record_instance(
        _rec(
            "1.1",
            patient=Patient(patient_id="张三-001", name=name),
            study_description=description,
            series_description="肺结节 筛查 폐결절",
            institution="北京协和医院",
        ),
        stable_seconds=10,
    )
    study = store.get_study(STUDY)
    assert study.patient.name == name
    assert study.patient.patient_id == "张三-001"
    assert study.description == description
    assert study.series[0].description == "肺结节 筛查 폐결절"
    assert store.list_studies()[0].patient.name == name
    with store.engine.connect() as conn:
        institution = conn.execute(select(studies.c.institution)).scalar_one()
    assert institution == "北京协和医院"


def test_very_long_descriptions_are_stored_whole(store: StudyStore) -> None:
    """A 10 000-character study or series description is stored without truncation or error."""
    long_text = ("CT 胸部 " * 2000)[:10_000]
    assert len(long_text) == 10_000
    store.record_instance(
        _rec("1.1", study_description=long_text, series_description=long_text),
        stable_seconds=10,
    )
    study = store.get_study(STUDY)
    assert study.description == long_text
    assert study.series[0].description == long_text


def test_naive_datetime_is_refused(store: StudyStore) -> None:
    """A naive received_at is a StoreError, not a silently shifted time."""
    with pytest.raises(StoreError, match="naive datetime"):
        store.record_instance(_rec("1.1", at=datetime(2024, 5, 1, 8, 0)), stable_seconds=10)
    with pytest.raises(NotFoundError):
        store.get_study(STUDY)


def test_concurrent_record_instance_loses_nothing(store: StudyStore) -> None:
    """Four threads indexing instances of one study at once: every instance is counted."""
    per_thread = 24

    def work(thread: int) -> list[Indexed]:
        return [
            store.record_instance(
                _rec(
                    f"5.{thread}.{i}",
                    series_uid=SERIES_A if i % 2 else SERIES_B,
                    at=T0 + timedelta(milliseconds=i),
                    instance_number=i,
                    size=1000,
                ),
                stable_seconds=10,
            )
            for i in range(per_thread)
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for batch in pool.map(work, range(4)) for r in batch]
    assert len(results) == 4 * per_thread
    assert not any(r.replaced for r in results)
    study = store.get_study(STUDY)
    assert study.instance_count == 4 * per_thread
    assert study.size == 4 * per_thread * 1000
    assert [s.instance_count for s in study.series] == [2 * per_thread, 2 * per_thread]
    assert len(store.instance_paths(STUDY)) == 4 * per_thread
    assert len(store.list_studies()) == 1


def test_indexing_sends_the_database_what_sqlalchemy_sends(store: StudyStore) -> None:
    """The indexing statements, run compiled on the driver's cursor (broker.store.prepared),
    send the database the very SQL and parameters SQLAlchemy sends for the same statement and
    values: times in the dialect's own text format (SQLite orders and pages by it), UTC."""
    stmts = store._statements()
    rec = _rec("21.1", at=T0 + timedelta(microseconds=250))
    now = rec.received_at or T0
    cases = [
        (stmts.previous_path, {"uid": rec.sop_instance_uid}),
        (stmts.upsert_study, studies_module._study_values(rec, now, now, 10.0)),
        (stmts.upsert_series, studies_module._series_values(rec)),
        (stmts.upsert_instance, studies_module._instance_values(rec, now)),
    ]
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        sent.append((sql, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        for prepared, values in cases:
            sent.clear()
            with store.engine.begin() as conn:
                conn.execute(prepared.statement, values)
            statements = [(sql, p) for sql, p in sent if not sql.startswith("BEGIN")]
            assert [(prepared.sql, prepared.parameters(values))] == [
                (sql, tuple(p) if isinstance(p, list | tuple) else p) for sql, p in statements
            ]
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
