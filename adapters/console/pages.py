"""The dashboard, the studies of a day, and one study with everything that happened to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.api.auth import site_scoped
from adapters.console.auth import State, reading
from adapters.console.views import patient_view, render, scrub, translator
from broker.model.critical import CaseState
from broker.model.domain import Role, Study
from broker.model.errors import NotFoundError
from broker.model.jobs import UNFINISHED, Job, JobState
from broker.model.phi import phi_values
from broker.model.work import LanePause
from broker.runtime.findings import FindingsReader
from broker.store.alerts import AlertStore
from broker.store.critical import CriticalStore
from broker.store.health import health_status, next_job_retries, target_health, urgent_results
from broker.store.jobs import JOBS
from broker.store.listing import JobFilter, StudyFilter, VendorActivity, vendor_activity
from broker.store.overview import count_studies, jobs_by_state, jobs_of_studies, results_of_studies
from broker.store.pauses import LanePauses
from broker.store.reports import ReportStore
from broker.store.space import database_bytes, spool_bytes
from broker.store.timeline import study_timeline
from broker.store.users import Session
from broker.store.verdicts import VerdictStore

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]

PAGE = 50
#: The window of "failures in the last hour".
HEALTH_WINDOW = timedelta(hours=1)
#: How many dead and overdue jobs the dashboard lists (the jobs page has all).
DASHBOARD_JOBS = 25
#: The order the dashboard shows job states in.
STATE_ORDER = tuple(JobState)
#: How often the dashboard reloads itself (htmx, seconds).
DASHBOARD_REFRESH = 5
#: The window of the dashboard's urgent results.
URGENT_WINDOW = timedelta(hours=24)
#: The window of the dashboard's vendor alerts.
ALERT_WINDOW = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class StudyRow:
    study: Study
    name: str
    patient_id: str
    jobs: list[Job]
    results: int


@dataclass(frozen=True, slots=True)
class VendorHealth:
    name: str
    product: str
    status: str
    """``down``, ``degraded``, ``ok``, ``idle``: :func:`broker.store.health.health_status`."""
    queue: int
    dead: int
    sent_window: int
    failures_window: int
    last_success: datetime | None
    next_retry_at: datetime | None
    paused: LanePause | None = None
    """An operator's pause: the vendor's jobs wait (:mod:`broker.store.pauses`)."""


def study_rows(console: State, who: Session, found: Sequence[Study]) -> list[StudyRow]:
    """Studies with their jobs and the number of results that came back."""
    uids = [s.study_uid for s in found]
    jobs = jobs_of_studies(console.engine, uids)
    results = results_of_studies(console.engine, uids)
    rows = []
    for s in found:
        patient = patient_view(s.patient, who)
        rows.append(
            StudyRow(
                s, patient.name, patient.patient_id, jobs[s.study_uid], results.get(s.study_uid, 0)
            )
        )
    return rows


def vendor_health(console: State, now: datetime) -> list[VendorHealth]:
    """Each configured vendor (and any other that has jobs): queue, failures, last success,
    and an operator's pause (why, until when)."""
    vendors = console.settings.vendors
    activity = vendor_activity(console.engine, vendors, now - HEALTH_WINDOW)
    retries = next_job_retries(console.engine)
    pauses = LanePauses(console.engine, JOBS).current(now)
    empty = VendorActivity({}, 0, 0, 0, None)
    out = []
    for name in sorted(set(vendors) | set(activity)):
        a = activity.get(name, empty)
        failures = a.failed + a.dead
        dead = a.by_state.get(JobState.DEAD.value, 0)
        status = health_status(a.sent, failures, dead)
        product = vendors[name].product if name in vendors else "(no longer configured)"
        out.append(
            VendorHealth(
                name=name,
                product=product,
                status=status,
                queue=sum(a.by_state.get(s.value, 0) for s in UNFINISHED),
                dead=dead,
                sent_window=a.sent,
                failures_window=failures,
                last_success=a.last_sent_at,
                next_retry_at=retries.get(name),
                paused=pauses.get(name),
            )
        )
    return out


@router.get("/", name="dashboard")
@site_scoped
def dashboard(request: Request, console: State, who: Viewer) -> Response:
    """Today's studies, jobs by state, vendor and write-back target health (down in red with
    the next retry), open critical-result cases (red past their deadline), urgent results
    of the last 24 h, dead and overdue jobs, disk space;
    the page reloads its content every :data:`DASHBOARD_REFRESH` seconds (htmx). A user
    limited to sites sees their sites' studies, jobs, cases and results, not the hub's
    vendors, targets, alerts and disk."""
    now = datetime.now(UTC)
    today = console.today()
    start, end = console.day_bounds(today)
    sites = who.sites
    hub = sites is None
    latest = console.listing.studies(StudyFilter(since=start, until=end, sites=sites), limit=15)
    by_state = jobs_by_state(console.engine, sites)
    critical = CriticalStore(console.engine)
    dead = JobFilter(states=[JobState.DEAD], sites=sites)
    alerts = AlertStore(console.engine).list(since=now - ALERT_WINDOW, limit=20) if hub else []
    return render(
        request,
        "dashboard.html",
        {
            "today": today,
            "scoped": not hub,
            "studies_today": count_studies(console.engine, start, end, sites),
            "latest": study_rows(console, who, latest),
            "by_state": [(s, by_state.get(s.value, 0)) for s in STATE_ORDER],
            "vendors": vendor_health(console, now) if hub else [],
            "targets": target_health(console.engine, now - HEALTH_WINDOW) if hub else [],
            "urgent": urgent_results(console.engine, now - URGENT_WINDOW, sites=sites),
            "alerts": alerts,
            "critical": critical.list(state=CaseState.OPEN, limit=DASHBOARD_JOBS, sites=sites),
            "critical_counts": critical.counts(now, sites),
            "now": now,
            "refresh": DASHBOARD_REFRESH,
            "dead": console.listing.jobs(dead, limit=DASHBOARD_JOBS),
            "dead_total": by_state.get(JobState.DEAD.value, 0),
            "overdue": console.deliveries.overdue_jobs(now=now, limit=DASHBOARD_JOBS, sites=sites),
            "space": console.space.current(),
            "spool_bytes": spool_bytes(console.engine),
            "database_bytes": database_bytes(console.engine),
        },
    )


def _day(
    value: str | None, console: State, _: Callable[[str], str] = str
) -> tuple[date, str | None]:
    if not value:
        return console.today(), None
    try:
        return date.fromisoformat(value), None
    except ValueError:
        problem = _("{value} is not a date; valid: YYYY-MM-DD. Showing today.")
        return console.today(), problem.format(value=repr(value))


def _cursor(value: str | None) -> tuple[datetime, int] | None:
    """``after=<ISO time>_<id>``: the last study of the page before."""
    if not value or "_" not in value:
        return None
    moment, _, ident = value.rpartition("_")
    try:
        return datetime.fromisoformat(moment), int(ident)
    except ValueError:
        return None


@router.get("/studies", name="studies")
@site_scoped
def studies(
    *,
    request: Request,
    console: State,
    who: Viewer,
    day: Annotated[str | None, Query(max_length=10)] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The studies last received on a day (the site's day; today by default), newest first."""
    chosen, problem = _day(day, console, translator(request))
    start, end = console.day_bounds(chosen)
    wanted = StudyFilter(since=start, until=end, modality=modality or None, sites=who.sites)
    found = console.listing.studies(wanted, after=_cursor(after), limit=PAGE + 1)
    page = found[:PAGE]
    following = None
    if len(found) > PAGE:
        moment, ident = console.listing.study_keys([page[-1].study_uid])[page[-1].study_uid]
        following = f"{moment.isoformat()}_{ident}"
    return render(
        request,
        "studies.html",
        {
            "day": chosen,
            "previous_day": chosen - timedelta(days=1),
            "next_day": chosen + timedelta(days=1),
            "modality": modality or "",
            "problem": problem,
            "total": count_studies(console.engine, start, end, who.sites),
            "rows": study_rows(console, who, page),
            "following": following,
            "first_page": after is None,
        },
    )


def _findings(
    result: Any,
    who: Session,
    values: list[str],
    verdicts: Mapping[tuple[int, int], Any],
    matches: Mapping[tuple[int, int], Any],
) -> list[dict[str, Any]]:
    findings = result.findings
    if findings is None:
        return []
    return [
        {
            "index": n,
            "meaning": f.code.meaning,
            "present": f.present,
            "score": f.score,
            "urgent": f.urgent,
            "text": scrub(f.text, who, values),
            "verdict": verdicts.get((result.id, n)),
            "matches": [m] if (m := matches.get((result.id, n))) is not None else [],
        }
        for n, f in enumerate(findings.findings)
    ]


@router.get("/studies/{study_uid}", name="study")
@site_scoped
def study_page(request: Request, study_uid: str, console: State, who: Viewer) -> Response:
    """Series, the linked order, jobs with their timelines, results and write-back deliveries."""
    try:
        study = console.studies.get_study(study_uid)
        if who.sites is not None and study.site not in who.sites:
            raise NotFoundError(f"no study with Study Instance UID {study_uid}")
    except NotFoundError as exc:
        return render(
            request,
            "error.html",
            {"title": translator(request)("No such study"), "message": str(exc)},
            status=404,
        )
    stored, link = console.orders.order_for_study(study)
    patients = [study.patient] + ([stored.order.patient] if stored is not None else [])
    values = phi_values(patients, [study.accession_number])
    jobs = console.jobs.list(study_uid=study_uid)
    per_job = {job.id: console.results.for_job(job.id) for job in jobs}
    orphans = console.results.list(study_uid=study_uid, orphans=True, limit=100)
    ids = [r.id for found in per_job.values() for r in found] + [r.id for r in orphans]
    verdicts = VerdictStore(console.engine).current(ids)
    matches = ReportStore(console.engine).current(ids)
    entries = []
    for job in jobs:
        deliveries = console.deliveries.for_job(job.id, kind=None)
        entries.append(
            {
                "job": job,
                "regulatory": console.settings.regulatory_label(job.vendor),
                "history": console.jobs.history(job.id),
                "results": [
                    {"result": r, "findings": _findings(r, who, values, verdicts, matches)}
                    for r in per_job[job.id]
                ],
                "deliveries": [
                    {"delivery": d, "history": console.deliveries.history(d.id)} for d in deliveries
                ],
            }
        )
    ledger = study_timeline(console.engine, study_uid)
    reconciled = FindingsReader(console.engine, lambda: console.settings)(study_uid)
    return render(
        request,
        "study.html",
        {
            "study": study,
            "patient": patient_view(study.patient, who),
            "order": stored,
            "order_patient": patient_view(stored.order.patient, who) if stored else None,
            "link": link,
            "entries": entries,
            "jobs": jobs,
            "ledger": ledger,
            "door": ledger[0].at if ledger else None,
            "orphans": [
                {"result": r, "findings": _findings(r, who, values, verdicts, matches)}
                for r in orphans
            ],
            "reconciled": reconciled,
            "critical": CriticalStore(console.engine).list(study_uid=study_uid),
            "now": datetime.now(UTC),
            "scrub": lambda text: scrub(text, who, values),
        },
    )
