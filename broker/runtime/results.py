"""Results from vendors: which vendor a sender is, and the completion timer.

:class:`ResultTimer` runs in the service. It completes the results that are
due (:meth:`broker.store.results.ResultStore.complete_due`): first it turns
JSON findings into a DICOM Comprehensive SR in the spool (unless the vendor
sent an SR itself), then the result completes and its job moves
``awaiting_result → result_received`` in one transaction, then every hook in
:attr:`ResultTimer.on_complete` is called with the result id (notification
hooks: a failing one is logged and the others still run). After a restart,
complete results whose job is still ``result_received`` are announced again,
so a hook must accept a result id it has seen before.

The SR maker is found through the ``result_sr`` entry point of
``radbridge.registries``, so the broker never imports an adapter by name.
Likewise ``result_findings`` reads the findings of an SR the vendor sent
when it sent no JSON findings: they are kept on the result before it
completes, so write-back (ORU OBX, FHIR Observations) carries them.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from broker.engine.timer import Timer, Turn
from broker.model.domain import Findings, Result, ResultObject, ResultOrigin
from broker.model.errors import RadbridgeError, StoreError
from broker.model.logging import get_logger
from broker.model.plugins import registered
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.results import ResultStore
from broker.store.spool import Spool
from config.schema import Settings

LOG = get_logger("radbridge.results")
#: Longest wait between two looks at the store (results recorded by listener processes).
MAX_TIMER_SLEEP = 0.5
#: Structured report storage classes: a vendor that sends one needs no SR made of its findings.
SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",
        "1.2.840.10008.5.1.4.1.1.88.22",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.88.34",
        "1.2.840.10008.5.1.4.1.1.88.35",
    }
)

CompleteHook = Callable[[int], object]


@dataclass(frozen=True, slots=True)
class GeneratedObject:
    """A DICOM object radbridge made (Part 10 bytes) and its identifying UIDs."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    data: bytes


SrMaker = Callable[[Findings, Sequence[str], str, datetime], GeneratedObject]
"""``(findings, source instance paths, result key, created) -> SR``."""
FindingsReader = Callable[[str], Findings | None]
"""``(path of an SR) -> its findings``, or None when it holds none; never raises."""


def vendors_for_ae(settings: Settings, calling_ae: str) -> list[str]:
    """The vendors a C-STORE to the results AE may come from: those whose
    transport's own AE title (``dicom``) or one of ``results.ae_titles`` is the calling AE."""
    return [
        name
        for name, vendor in settings.vendors.items()
        if calling_ae in vendor.transport.sender_ae_titles()
        or calling_ae in vendor.results.ae_titles
    ]


def result_key(result: Result) -> str:
    """What the UIDs of a result's SR derive from: unique per study, job and result."""
    return f"{result.study_uid}/job-{result.job_id}/result-{result.id}"


def write_result_object(spool: Spool, study_uid: str, sop_instance_uid: str, data: bytes) -> Path:
    """Write bytes durably to the results folder of the spool; the final path."""
    final = spool.result_path_for(study_uid, sop_instance_uid)
    fd, name = tempfile.mkstemp(dir=spool.tmp, suffix=".dcm")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
        spool.flush(tmp)
        spool.place(tmp, final)
    except BaseException:
        spool.discard(tmp)
        raise
    return final


class ResultTimer:
    """Completes due results and tells the hooks (the write-back scheduler) about them."""

    def __init__(
        self,
        store: ResultStore,
        jobs: JobStore,
        studies: StudyStore,
        spool: Spool,
        make_sr: SrMaker | None = None,
        *,
        read_findings: FindingsReader | None = None,
        regulatory: Callable[[str], str | None] | None = None,
        turn: Turn | None = None,
        longest: float = MAX_TIMER_SLEEP,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.studies = studies
        self.spool = spool
        self._make_sr = make_sr
        self._read_findings = read_findings
        self._regulatory = regulatory
        """A vendor product's regulatory data in one line (named in the SRs it makes)."""
        self.on_complete: list[CompleteHook] = []
        self._stop = threading.Event()
        # With several nodes, only the one holding the turn completes results.
        due = self._complete_due if turn is None else turn.guard(self._complete_due)
        self._timer = Timer([due], interval=longest, name="results")
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look at the store now (a result may be due at once)."""
        self._timer.poke()

    def _complete_due(self, now: datetime) -> datetime | None:
        """The timer's task: complete what is due; when the next result is due."""
        self.tick(now)
        return self.store.next_due()

    def tick(self, now: datetime | None = None) -> list[int]:
        """Complete every due result; the ids of those the hooks were told about."""
        told = []
        for done in self.store.complete_due(now, prepare=self.prepare):
            result = done.result
            LOG.info(
                "result complete",
                result_id=result.id,
                job_id=result.job_id,
                vendor=result.vendor,
                objects=len(result.objects),
                findings=result.findings is not None,
                urgent=result.urgent,
                job_state=done.job_state.value if done.job_state else None,
            )
            if done.notify:
                self.notify(result.id)
                told.append(result.id)
            else:
                LOG.warning(
                    "result complete but its job is not waiting for one; not written back",
                    result_id=result.id,
                    job_id=result.job_id,
                    job_state=done.job_state.value if done.job_state else None,
                )
        return told

    def notify(self, result_id: int) -> None:
        """Call every ``on_complete`` hook with ``result_id``; failures are logged."""
        for hook in list(self.on_complete):
            try:
                hook(result_id)
            except Exception:  # a notification hook never stops the timer
                LOG.exception("result hook failed", result_id=result_id)

    def prepare(self, result: Result) -> str | None:
        """Make the SR of a result's JSON findings, unless the vendor sent an SR; an error text.

        A result with the vendor's SR and no JSON findings gets the SR's findings instead.
        """
        findings = result.findings
        if findings is None and result.job_id is not None:
            return self.read_sr_findings(result)
        if findings is None or result.job_id is None:
            return None
        if any(
            o.sop_class_uid in SR_CLASSES and o.origin is not ResultOrigin.GENERATED
            for o in result.objects
        ):
            return None
        try:
            job = self.jobs.get(result.job_id)
            paths = self.studies.instance_paths(job.study_uid, job.series_uids)
            if not paths:
                return "no SR made: the source study is no longer in the spool"
            created = result.created_at.astimezone().replace(tzinfo=None)
            label = self._regulatory(result.vendor) if self._regulatory and result.vendor else None
            if label is not None:
                algorithm = replace(findings.algorithm, regulatory=label)
                findings = replace(findings, algorithm=algorithm)
            sr = self._sr_maker()(findings, paths, result_key(result), created)
            path = write_result_object(self.spool, sr.study_uid, sr.sop_instance_uid, sr.data)
            self.store.record_generated(
                result.id,
                ResultObject(
                    sop_instance_uid=sr.sop_instance_uid,
                    sop_class_uid=sr.sop_class_uid,
                    series_uid=sr.series_uid,
                    study_uid=sr.study_uid,
                    path=str(path),
                    size=len(sr.data),
                    origin=ResultOrigin.GENERATED,
                ),
                transfer_syntax_uid=sr.transfer_syntax_uid,
            )
        except (RadbridgeError, OSError) as exc:
            LOG.error("cannot make the SR of a result", result_id=result.id, error=str(exc))
            return f"no SR made: {exc}"
        except Exception as exc:  # a bug in one SR must not hold every result back
            LOG.exception("SR maker failed", result_id=result.id)
            return f"no SR made: {type(exc).__name__}: {exc}"
        LOG.info("SR made of JSON findings", result_id=result.id, size=len(sr.data))
        return None

    def read_sr_findings(self, result: Result) -> str | None:
        """Keep the findings of the vendor's first SR that holds any; an error text."""
        sources = [
            o
            for o in result.objects
            if o.sop_class_uid in SR_CLASSES and o.origin is not ResultOrigin.GENERATED
        ]
        for obj in sources:
            try:
                if self._read_findings is None:
                    self._read_findings = registered("result_findings")
                found = self._read_findings(obj.path)
                if found is None:
                    continue
                if found.study_uid != result.study_uid:  # an SR filed in a study of its own
                    found = replace(found, study_uid=result.study_uid)
                kept = self.store.record_sr_findings(result.id, found)
            except RadbridgeError as exc:
                LOG.error("cannot keep the findings of an SR", result_id=result.id, error=str(exc))
                return f"no findings read from the SR: {exc}"
            except Exception as exc:  # a bug in the reader must not hold every result back
                LOG.exception("SR findings reader failed", result_id=result.id)
                return f"no findings read from the SR: {type(exc).__name__}: {exc}"
            LOG.info(
                "findings read from the vendor's SR",
                result_id=result.id,
                sop_instance_uid=obj.sop_instance_uid,
                findings=len(found.findings),
                kept=kept,
            )
            return None
        if sources:
            LOG.info("the vendor's SR holds no findings radbridge reads", result_id=result.id)
        return None

    def _sr_maker(self) -> SrMaker:
        if self._make_sr is None:
            self._make_sr = registered("result_sr")
        assert self._make_sr is not None
        return self._make_sr

    def _run(self) -> None:
        """Announce results completed before a restart but not scheduled, then time the rest."""
        try:
            for result_id in self.store.awaiting_write_back():
                self.notify(result_id)
        except StoreError as exc:
            LOG.error("result timer cannot read the store", error=str(exc))
        self._timer.run(self._stop)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="result-timer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._timer.poke()
        if self._thread is not None:
            self._thread.join(10)
