"""A study's findings from every product that read it, reconciled (the one builder the API,
the console, the notifications and the combined write-back use).

:func:`route_policies` reads the routes' ``owners``, ``reconcile`` and
``discordance`` settings; :class:`FindingsReader` loads the study's complete
results and their jobs from the store and hands them to the pure
:func:`broker.model.reconciliation.reconcile`: for each job its latest
complete result with findings, with the provenance the configuration in
force gives it (product, shadow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Engine

from broker.model.domain import (
    AlgorithmInfo,
    Findings,
    Result,
    ResultObject,
    ResultOrigin,
    ResultState,
)
from broker.model.errors import StoreError
from broker.model.jobs import Job
from broker.model.mode import effective_shadow
from broker.model.plugins import registered
from broker.model.reconciliation import (
    Provenance,
    Read,
    ReconcilePolicy,
    StudyFindings,
    reconcile,
)
from broker.model.version import VERSION
from broker.runtime.results import GeneratedObject, write_result_object
from broker.runtime.snapshot import configured_shadow
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.results import ResultStore
from broker.store.spool import Spool
from config.schema import Settings

SettingsSource = Callable[[], Settings]


def route_policies(settings: Settings) -> dict[str, ReconcilePolicy]:
    """Each route's reconciliation settings, by route name."""
    return {
        route.name: ReconcilePolicy(
            owners=dict(route.owners),
            threshold=route.discordance.threshold,
            mode=route.reconcile,
            oru_note=route.discordance.oru_note,
        )
        for route in settings.routes
    }


def provenance(settings: Settings, result: Result, job: Job | None) -> Provenance:
    """Where a result's findings come from, as the configuration in force names it."""
    vendor_name = job.vendor if job is not None else (result.vendor or "")
    vendor = settings.vendors.get(vendor_name)
    algorithm = result.findings.algorithm if result.findings is not None else None
    shadow = job is not None and (
        effective_shadow(job.shadow, configured_shadow(settings, job.route, job.vendor)) is not None
    )
    regulatory = vendor.regulatory if vendor is not None else None
    return Provenance(
        vendor=vendor_name,
        product=vendor.product if vendor is not None else (algorithm.product if algorithm else ""),
        version=algorithm.version if algorithm is not None else None,
        maker=algorithm.vendor if algorithm is not None else None,
        certificate=regulatory.certificate if regulatory is not None else None,
        result_id=result.id,
        job_id=result.job_id,
        route=job.route if job is not None else None,
        shadow=shadow,
    )


class FindingsReader:
    """``reader(study_uid)``: the study's reconciled findings (:class:`StudyFindings`)."""

    def __init__(self, engine: Engine, settings: SettingsSource) -> None:
        self.results = ResultStore(engine)
        self.jobs = JobStore(engine)
        self.settings = settings

    def __call__(self, study_uid: str) -> StudyFindings:
        settings = self.settings()
        complete = self.results.list(study_uid=study_uid, state=ResultState.COMPLETE)
        jobs = {j.id: j for j in self.jobs.list(study_uid=study_uid, limit=1000)}
        latest: dict[int, Result] = {}
        for result in sorted(complete, key=lambda r: r.id):
            if result.job_id is not None and result.findings is not None:
                latest[result.job_id] = result  # a later result replaces an earlier one
        reads = [
            Read(r.findings, provenance(settings, r, jobs.get(job_id)))
            for job_id, r in sorted(latest.items(), key=lambda item: item[1].id)
            if r.findings is not None
        ]
        return reconcile(study_uid, reads, route_policies(settings))


CombinedSrMaker = Callable[[StudyFindings, Sequence[str], str, datetime], GeneratedObject]
"""``(study findings, source instance paths, result key, created) -> combined SR``."""


class Reconciliation:
    """The write-back stage's :class:`~broker.engine.writeback_stage.Reconciler`: routes'
    policies and findings from the configuration in force, the combined answer made on
    demand (its SR written once to the spool, the same bytes every time)."""

    def __init__(
        self,
        engine: Engine,
        settings: SettingsSource,
        spool: Spool,
        make_sr: CombinedSrMaker | None = None,
    ) -> None:
        self.settings = settings
        self.reader = FindingsReader(engine, settings)
        self.studies = StudyStore(engine)
        self.jobs = JobStore(engine)
        self.spool = spool
        self._make_sr = make_sr

    def policy(self, route: str) -> ReconcilePolicy:
        return route_policies(self.settings()).get(route, ReconcilePolicy())

    def findings(self, study_uid: str) -> StudyFindings:
        return self.reader(study_uid)

    def combined(self, result: Result, route: str, view: StudyFindings) -> Result:
        """The combined answer as a result: every live finding, owners first, and the
        combined SR (kept in the spool's results, beside the products' own objects)."""
        live = view.live()
        key = f"{result.study_uid}/combined/{route}/result-{result.id}"
        created = (result.completed_at or result.updated_at).astimezone().replace(tzinfo=None)
        jobs = [j for j in self.jobs.list(study_uid=result.study_uid) if j.route == route]
        everything = any(not j.series_uids for j in jobs)
        sent = () if everything else sorted({uid for j in jobs for uid in j.series_uids})
        paths = self.studies.instance_paths(result.study_uid, sent)
        if not paths:
            raise StoreError("no combined SR: the source study is no longer in the spool")
        if self._make_sr is None:
            self._make_sr = registered("combined_sr")
        sr = self._make_sr(view, paths, key, created)
        path = self.spool.result_path_for(sr.study_uid, sr.sop_instance_uid)
        if not path.exists():
            path = write_result_object(self.spool, sr.study_uid, sr.sop_instance_uid, sr.data)
        findings = Findings(
            study_uid=result.study_uid,
            algorithm=AlgorithmInfo("radbridge", "Combined AI answer", VERSION),
            findings=tuple(f.finding for f in live),
            summary=f"Combined answer of {len(view.provenances())} AI products",
        )
        return replace(
            result,
            vendor=None,
            urgent=any(f.finding.urgent and f.finding.present for f in live),
            findings=findings,
            objects=(
                ResultObject(
                    sop_instance_uid=sr.sop_instance_uid,
                    sop_class_uid=sr.sop_class_uid,
                    series_uid=sr.series_uid,
                    study_uid=sr.study_uid,
                    path=str(path),
                    size=len(sr.data),
                    origin=ResultOrigin.GENERATED,
                ),
            ),
        )
