"""A study, its job, its order and a completed result in a real store, for write-back tests.

``Scene`` spools a small synthetic head CT (its patient DOE^JANE, PAT0002,
accession ACC0002), makes the vendor's job and moves it to
``awaiting_result``; :meth:`Scene.result` records JSON findings through the
results store, files their Comprehensive SR (made by
``adapters.results.generate``) in the spool and completes the result, as the
intake does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from adapters.results.generate import make_findings_sr
from broker.model.domain import (
    AlgorithmInfo,
    Code,
    Finding,
    Findings,
    InboundMessage,
    Measurement,
    Order,
    OrderSource,
    Patient,
    ResultObject,
    ResultOrigin,
)
from broker.model.jobs import Job, JobState
from broker.runtime.results import result_key, write_result_object
from broker.store.jobs import JobStore
from broker.store.orders import OrderStore
from broker.store.results import ResultStore
from broker.store.spool import Spool
from tests.spooling import spool_study

BLEED = Code("SCT", "1386000", "Intracranial hemorrhage")
MIDLINE = Code("SCT", "396434000", "Midline shift")
ALGORITHM = AlgorithmInfo("Acme AI", "ICH triage", "2.1")


def findings(study_uid: str, *, urgent: bool = False) -> Findings:
    """Two findings: a bleed (urgent if asked, score 0.97) and an absent midline shift."""
    return Findings(
        study_uid=study_uid,
        algorithm=ALGORITHM,
        findings=(
            Finding(
                code=BLEED,
                present=True,
                score=0.97,
                urgent=urgent,
                text="Hyperdense area | right parietal",
                measurements=(Measurement(Code("DCM", "118565006", "Volume"), 12.5, "mL"),),
            ),
            Finding(code=MIDLINE, present=False, score=0.08),
        ),
        summary="Bleed suspected^check",
    )


@dataclass
class Scene:
    engine: Engine
    folder: Path
    spool: Spool
    study_uid: str
    paths: list[Path]

    @classmethod
    def make(cls, engine: Engine, folder: Path, tag: str = "") -> Scene:
        spool = Spool(folder / "spool")
        spool.prepare()
        study_uid, paths = spool_study(
            engine,
            spool,
            "ct_head",
            folder / f"gen{tag}",
            instances=4,
            rows=32,
            columns=32,
            patient_id="PAT0002",
            patient_name="ROE^RICHARD",
            accession=f"ACC0002{tag}",
        )
        return cls(engine, folder, spool, study_uid, paths)

    def order(self, placer: str = "PL-1", filler: str = "FL-1") -> int:
        """Record and link an HL7 order for the study (same accession and patient)."""
        outcome = OrderStore(self.engine).record_order(
            Order(
                source=OrderSource.HL7,
                placer_number=placer,
                filler_number=filler,
                accession_number=self.accession,
                patient=Patient(patient_id="PAT0002", name="ROE^RICHARD", sex="M"),
                procedure_code="CTHEAD",
                procedure_text="CT head without contrast",
                modality="CT",
            ),
            InboundMessage(source=OrderSource.HL7, kind="ORM^O01", raw=b"MSH|^~\\&|test"),
        )
        return outcome.stored.id

    @property
    def accession(self) -> str:
        from broker.store import StudyStore  # noqa: PLC0415

        value = StudyStore(self.engine).get_study(self.study_uid).accession_number
        assert value is not None
        return value

    def job(
        self, vendor: str = "ichai", route: str = "head-ct", deadline: timedelta | None = None
    ) -> Job:
        """The vendor's job, sent and awaiting its result."""
        jobs = JobStore(self.engine)
        now = datetime.now(UTC)
        job = jobs.create(
            self.study_uid,
            vendor,
            route=route,
            deadline_at=now + deadline if deadline is not None else None,
        ).job
        claimed = jobs.claim(job.id)
        assert claimed is not None
        return jobs.finish(job.id, [JobState.SENT, JobState.AWAITING_RESULT])

    def result(
        self, job: Job, *, urgent: bool = False, sr: bool = True, found: Findings | None = None
    ) -> int:
        """Findings (``found``, else :func:`findings`; and their SR) recorded and the result
        completed; its id."""
        store = ResultStore(self.engine)
        found = found or findings(self.study_uid, urgent=urgent)
        result_id = store.record_findings(job.id, found)
        if sr:
            made = make_findings_sr(
                found,
                [str(p) for p in self.paths],
                result_key(store.get(result_id)),
                datetime(2024, 5, 1, 8, 15),
            )
            path = write_result_object(self.spool, made.study_uid, made.sop_instance_uid, made.data)
            store.record_generated(
                result_id,
                ResultObject(
                    sop_instance_uid=made.sop_instance_uid,
                    sop_class_uid=made.sop_class_uid,
                    series_uid=made.series_uid,
                    study_uid=made.study_uid,
                    path=str(path),
                    size=len(made.data),
                    origin=ResultOrigin.GENERATED,
                ),
                transfer_syntax_uid=made.transfer_syntax_uid,
            )
        completed = store.complete(result_id)
        assert completed is not None and completed.job_state is JobState.RESULT_RECEIVED
        return result_id
