"""Retention on SQLite and PostgreSQL: which studies a purge takes, and what stays."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
import yaml
from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import DBAPIError

from adapters.dicom.synthetic import generate_study
from broker.model.jobs import JobState
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.migrate import migrate
from broker.store.retention import PURGE, Cutoffs, Retention
from broker.store.space import spool_bytes
from broker.store.spool import Spool
from broker.store.tables import (
    audit,
    corrections,
    instances,
    jobs,
    order_links,
    order_messages,
    orders,
    procedure_notices,
    pseudonyms,
    studies,
    study_events,
)
from tests import cli_fork
from tests.databases import DATABASES, empty_database, upgrade_to
from tests.spooling import spool_files

NOW = datetime.now(UTC)
HOURS_AGO = NOW - timedelta(hours=2)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _files(out: Path) -> list[Path]:
    """A head CT of two small instances, generated into ``out``."""
    return generate_study("ct_head", out, instances=2, rows=32, columns=32)


def _study(
    engine: Engine,
    spool: Spool,
    out: Path,
    job: JobState | None,
    *,
    files: list[Path] | None = None,
    job_created: datetime | None = None,
) -> str:
    """A stable study of two instances (``files``, or generated into ``out``), stable two
    hours ago, with one job in ``job`` (created at ``job_created``; by default now)."""
    uid, _ = spool_files(engine, spool, files if files is not None else _files(out))
    with engine.begin() as conn:
        conn.execute(
            update(studies)
            .where(studies.c.study_uid == uid)
            .values(state="stable", stable_at=HOURS_AGO)
        )
    if job is not None:
        created = JobStore(engine).create(uid, "lungai", route="chest", now=job_created).job
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == created.id)
                .values(state=job.value, updated_at=HOURS_AGO)
            )
    return uid


def test_purge_takes_finished_studies_only_and_keeps_them_listed(
    engine: Engine, tmp_path: Path
) -> None:
    """Past studies_after_done, a study without jobs and one whose job is done are purged
    (files, instance rows; the study row stays with purged_at, an audit row each); one with
    a dead job waits for the longer studies_after_failed, one with a pending job stays."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    unrouted, done, dead, pending = (
        _study(engine, spool, tmp_path / name, job)
        for name, job in (
            ("unrouted", None),
            ("done", JobState.DONE),
            ("dead", JobState.DEAD),
            ("pending", JobState.PENDING),
        )
    )
    retention = Retention(engine, spool)
    cutoffs = Cutoffs(studies_done=NOW - timedelta(hours=1), studies_failed=NOW - timedelta(days=1))
    planned = retention.plan(cutoffs)
    assert {i.target for i in planned.items} == {unrouted, done}
    before = spool_bytes(engine)
    assert planned.bytes > 0 and before > planned.bytes

    purged = retention.purge(cutoffs, actor="cli:test")
    assert {i.target for i in purged.items} == {unrouted, done}
    assert spool_bytes(engine) == before - purged.bytes
    for uid in (unrouted, done):
        assert not (spool.studies / spool.folder_name(uid)).exists()
        study = StudyStore(engine).get_study(uid)
        assert study.purged_at is not None and study.instance_count == 0
    for uid in (dead, pending):
        assert len(list((spool.studies / spool.folder_name(uid)).rglob("*.dcm"))) == 2
    with engine.connect() as conn:
        left = set(conn.execute(select(instances.c.study_uid)).scalars())
        trail = conn.execute(select(audit.c.target).where(audit.c.action == PURGE)).scalars()
        assert left == {dead, pending}
        assert sorted(trail) == sorted([f"study:{unrouted}", f"study:{done}"])
    assert retention.plan(cutoffs).items == []


def _order(conn: Connection, n: int, status: str, updated_at: datetime) -> int:
    return int(
        conn.execute(
            insert(orders)
            .values(
                resource_id=f"order-{n}",
                version=1,
                source="hl7",
                accession_number=f"ACC{n}",
                priority="ROUTINE",
                status=status,
                created_at=updated_at,
                updated_at=updated_at,
            )
            .returning(orders.c.id)
        ).scalar_one()
    )


def test_orders_past_retention_go_with_their_links_and_their_messages_stay(
    engine: Engine, tmp_path: Path
) -> None:
    """retention.orders takes completed, cancelled or discontinued orders last changed
    before the cutoff, with their study links; their verbatim messages stay, unlinked (the
    messages have their own retention); scheduled or recent orders stay."""
    with engine.begin() as conn:
        old_done = _order(conn, 1, "completed", HOURS_AGO)
        _order(conn, 2, "completed", NOW)
        _order(conn, 3, "scheduled", HOURS_AGO)
        conn.execute(
            insert(order_links).values(
                study_uid="1.2.3",
                order_id=old_done,
                state="linked",
                matched_on="accession",
                at=HOURS_AGO,
            )
        )
        conn.execute(
            insert(order_messages).values(
                order_id=old_done,
                source="hl7",
                kind="ORM^O01",
                peer="127.0.0.1",
                received_at=HOURS_AGO,
                raw=b"MSH|",
            )
        )
    retention = Retention(engine, Spool(tmp_path / "spool"))
    cutoffs = Cutoffs(orders=NOW - timedelta(hours=1))
    [planned] = retention.plan(cutoffs).items
    assert (planned.kind, planned.count) == ("orders", 1)
    [done] = retention.purge(cutoffs).items
    assert (done.kind, done.count) == ("orders", 1)
    with engine.connect() as conn:
        assert set(conn.execute(select(orders.c.resource_id)).scalars()) == {"order-2", "order-3"}
        assert conn.execute(select(order_links.c.order_id)).all() == []
        assert conn.execute(select(order_messages.c.order_id)).scalars().all() == [None]
    assert retention.plan(cutoffs).items == []


def _rows_of(engine: Engine, uid: str, patient_id: str, label: str) -> None:
    """A study's content rows besides its instances: an event, an MPPS notice, a correction,
    and the pseudonyms of its study UID and of its patient (``{kind}-of-{label}``)."""
    with engine.begin() as conn:
        conn.execute(
            update(studies).where(studies.c.study_uid == uid).values(patient_id=patient_id)
        )
        conn.execute(insert(study_events).values(study_uid=uid, at=HOURS_AGO, kind="complete"))
        conn.execute(
            insert(procedure_notices).values(
                kind="mpps",
                sop_instance_uid=f"2.25.{9000 + len(label)}{ord(label[0])}",
                study_uid=uid,
                status="COMPLETED",
                referenced="[]",
                dataset_json="{}",
                calling_ae="CT01",
                called_ae="RADBRIDGE",
                peer_address="127.0.0.1",
                created_at=HOURS_AGO,
                updated_at=HOURS_AGO,
            )
        )
        conn.execute(
            insert(corrections).values(
                study_uid=uid,
                cause="rejected",
                reason_scheme="DCM",
                reason_value="113001",
                reason_meaning="Rejected for Quality Reasons",
                source="C-STORE from CT01",
                detail="{}",
                created_at=HOURS_AGO,
            )
        )
        for kind, original in (("study", uid), ("patient", patient_id)):
            conn.execute(
                insert(pseudonyms).values(
                    pseudonym=f"{kind}-of-{label}",
                    kind=kind,
                    original=original,
                    study_uid=uid,
                    issued_at=HOURS_AGO,
                )
            )


def test_purge_command_takes_a_purged_studys_rows_and_keeps_a_kept_patients_pseudonym(
    engine: Engine, tmp_path: Path
) -> None:
    """``radbridge purge`` past studies_after_done: with a finished study's instances go its
    events, MPPS notices, corrections and pseudonyms (each kind audited); its patient's
    pseudonym stays while another study of that patient ID is kept (a result may still
    name it); a study whose job is pending keeps all its rows. A prior's pseudonyms (the
    prior not in the index) go with the study whose job sent them, but not while another
    study of that study's patient ID is kept (it may have sent the prior too, and wait for
    its result). An MPPS that never named a study goes once it is that old; a recent one
    stays."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    done, kept, lone = (
        _study(engine, spool, tmp_path / name, job)
        for name, job in (
            ("done", JobState.DONE),
            ("kept", JobState.PENDING),
            ("lone", JobState.DONE),
        )
    )
    for uid, patient, label in (
        (done, "PAT9", "done"),
        (kept, "PAT9", "kept"),
        (lone, "PAT8", "lone"),
    ):
        _rows_of(engine, uid, patient, label)
    with engine.begin() as conn:  # a prior's pseudonyms: its UID is not in the index
        for sent_with, label in ((done, "done"), (kept, "kept"), (lone, "lone")):
            conn.execute(
                insert(pseudonyms).values(
                    pseudonym=f"prior-of-{label}",
                    kind="study",
                    original=f"2.25.555{len(label)}{ord(label[0])}",
                    study_uid=f"2.25.555{len(label)}{ord(label[0])}",
                    sent_with=sent_with,
                    issued_at=HOURS_AGO,
                )
            )
    config = tmp_path / "rb.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"database": str(engine.url), "spool": str(spool.root)},
                "retention": {"studies_after_done": "1h"},
            }
        )
    )
    with engine.begin() as conn:  # MPPS that never named a study: one old, one recent
        for n, at in ((1, HOURS_AGO), (2, NOW)):
            conn.execute(
                insert(procedure_notices).values(
                    kind="mpps",
                    sop_instance_uid=f"2.25.7700{n}",
                    status="IN PROGRESS",
                    referenced="[]",
                    dataset_json="{}",
                    calling_ae="CT01",
                    called_ae="RADBRIDGE",
                    peer_address="127.0.0.1",
                    created_at=at,
                    updated_at=at,
                )
            )
    answer = cli_fork.run(["purge", "-c", str(config), "--json"], timeout=120)
    assert answer.returncode == 0, answer.stderr
    counts = {i["kind"]: i["count"] for i in json.loads(answer.stdout)["items"]}
    assert counts["study events"] == counts["corrections"] == 2
    assert counts["procedure steps"] == 3  # the two purged studies' and the old orphan
    assert counts["pseudonyms"] == 4  # done's study UID; lone's study, patient and prior
    with engine.connect() as conn:
        for table in (study_events, corrections):
            assert set(conn.execute(select(table.c.study_uid)).scalars()) == {kept}
        notices = conn.execute(select(procedure_notices.c.study_uid)).scalars().all()
        assert sorted(notices, key=str) == sorted([kept, None], key=str)
        left = set(conn.execute(select(pseudonyms.c.pseudonym)).scalars())
        trail = set(conn.execute(select(audit.c.target).where(audit.c.action == PURGE)).scalars())
    kept_rows = {"study-of-kept", "patient-of-kept", "patient-of-done", "prior-of-kept"}
    assert left == kept_rows | {"prior-of-done"}  # kept (PAT9 like done) may have sent it
    assert {"study_events", "procedure_notices", "corrections", "pseudonyms"} <= trail


@pytest.mark.parametrize("kind", DATABASES)
def test_pseudonyms_recorded_before_sent_with_go_once_every_study_that_may_have_sent_them_is(
    kind: str, tmp_path: Path
) -> None:
    """A store at schema 0040 (before ``sent_with``) holding a study's pseudonym and two
    priors' (their studies never in the index), upgraded: ``radbridge purge`` past
    studies_after_done takes the study's with it, and a prior's once no study that may have
    sent it is kept (no job of a kept study was created before it was issued): the prior
    issued before the kept study's job goes with the purged study; the one issued after it
    stays until the kept study is gone too."""
    done_files, kept_files = _files(tmp_path / "done"), _files(tmp_path / "kept")
    done, kept = (
        str(pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID)
        for f in (done_files, kept_files)
    )
    sent, kept_job, later = (NOW - timedelta(hours=h) for h in (3.0, 2.5, 2.25))
    with empty_database(kind, tmp_path, migrated=False) as engine:
        upgrade_to(engine, "0040")
        with engine.begin() as conn:  # as radbridge recorded them then: no sent_with
            for name, pseudonym_kind, study_uid, issued_at in (
                ("study-of-done", "study", done, sent),
                ("prior-before-kept", "study", "2.25.5551", sent),
                ("prior-after-kept", "series", "2.25.5552", later),
            ):
                conn.execute(
                    insert(pseudonyms).values(
                        pseudonym=name,
                        kind=pseudonym_kind,
                        original=study_uid,
                        study_uid=study_uid,
                        issued_at=issued_at,
                    )
                )
        migrate(engine)
        spool = Spool(tmp_path / "spool")
        spool.prepare()
        _study(engine, spool, tmp_path, JobState.DONE, files=done_files, job_created=sent)
        _study(engine, spool, tmp_path, JobState.PENDING, files=kept_files, job_created=kept_job)
        config = tmp_path / "rb.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "storage": {"database": str(engine.url), "spool": str(spool.root)},
                    "retention": {"studies_after_done": "1h"},
                }
            )
        )

        def purge() -> tuple[int, set[str]]:
            """``radbridge purge``: how many pseudonyms it took, and the ones left."""
            answer = cli_fork.run(["purge", "-c", str(config), "--json"], timeout=120)
            assert answer.returncode == 0, answer.stderr
            items = json.loads(answer.stdout)["items"]
            with engine.connect() as conn:
                left = set(conn.execute(select(pseudonyms.c.pseudonym)).scalars())
            return sum(i["count"] for i in items if i["kind"] == "pseudonyms"), left

        assert purge() == (2, {"prior-after-kept"})
        with engine.begin() as conn:  # the kept study's job ends; the next purge takes it
            conn.execute(
                update(jobs)
                .where(jobs.c.study_uid == kept)
                .values(state=JobState.DONE.value, updated_at=HOURS_AGO)
            )
        assert purge() == (1, set())


def test_purge_command_takes_audit_rows_past_audit_days_and_audits_that(
    engine: Engine, tmp_path: Path
) -> None:
    """``radbridge purge`` with ``retention.audit_days: 30``: audit rows older than 30 days
    go, newer ones stay, and one ``audit.purge`` row says how many went and older than when;
    the trigger still refuses to delete a kept row. Without ``audit_days`` nothing goes."""
    old, recent = NOW - timedelta(days=40), NOW - timedelta(days=10)
    with engine.begin() as conn:
        for n, at in ((1, old), (2, old), (3, recent)):
            conn.execute(
                insert(audit).values(
                    at=at,
                    actor="cli:ops",
                    action="study.retry",
                    target=f"job:{n}",
                    detail="{}",
                    peer="",
                )
            )
    spool = Spool(tmp_path / "spool")
    config = tmp_path / "rb.yaml"
    settings: dict[str, object] = {
        "storage": {"database": str(engine.url), "spool": str(spool.root)},
        "retention": {"job_history": "3650d"},
    }
    config.write_text(yaml.safe_dump(settings))
    kept = cli_fork.run(["purge", "-c", str(config), "--json"], timeout=120)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["items"] == []
    settings["retention"] = {"audit_days": 30}
    config.write_text(yaml.safe_dump(settings))
    answer = cli_fork.run(["purge", "-c", str(config), "--json"], timeout=120)
    assert answer.returncode == 0, answer.stderr
    [item] = json.loads(answer.stdout)["items"]
    assert (item["kind"], item["count"]) == ("audit", 2)
    with engine.connect() as conn:
        rows = conn.execute(select(audit.c.target, audit.c.action, audit.c.detail)).all()
    assert [r.target for r in rows if r.action == "study.retry"] == ["job:3"]
    [purge] = [json.loads(r.detail) for r in rows if r.action == "audit.purge"]
    assert purge["rows"] == 2
    assert old < datetime.fromisoformat(purge["before"]) < recent
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(delete(audit).where(audit.c.target == "job:3"))
