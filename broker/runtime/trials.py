"""``radbridge trials report``, ``GET /api/v1/trials`` and the console's trials page: how a
product did in a period, against another (by default the live product that read most of
the same studies), and what it would have cost under its offered contract (the one in
force on the last day, else its first; a vendor's ``billing:`` is read as one). Days are
the site's (``site.timezone``)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from broker.model.errors import NotFoundError, did_you_mean
from broker.model.mode import Mode
from broker.model.trials import TrialReport, build_report
from broker.store.trials import findings_of, studies_in_common, trial_jobs
from config.schema import Settings

EARLIEST, LATEST = date(1970, 1, 1), date(9999, 12, 30)


def site_bounds(settings: Settings, start: date, end: date) -> tuple[datetime, datetime]:
    """The instants the site's days ``start`` to ``end`` (included) begin and end."""
    zone = ZoneInfo(settings.site.timezone)
    start, end = max(start, EARLIEST), min(end, LATEST)  # every instant stays representable
    return (
        datetime.combine(start, time(0), zone),
        datetime.combine(end + timedelta(days=1), time(0), zone),
    )


def trial_report(
    engine: Engine,
    settings: Settings,
    vendor: str,
    *,
    start: date,
    end: date,
    against: str | None = None,
    sites: frozenset[str] | None = None,
) -> TrialReport:
    """The report of ``vendor``'s studies routed in the site days ``start`` to ``end``;
    :class:`NotFoundError` for a vendor neither configured nor with jobs in the period (a
    vendor removed since keeps its report). ``sites``: only those sites' studies (a caller
    limited to them)."""
    since, until = site_bounds(settings, start, end)
    jobs = trial_jobs(engine, vendor, since, until, sites)
    if vendor not in settings.vendors and not jobs:
        known = ", ".join(sorted(settings.vendors)) or "none configured"
        raise NotFoundError(
            f"no vendor '{vendor}'{did_you_mean(vendor, list(settings.vendors))} is configured "
            f"and none has jobs from {start} to {end}; valid: {known}"
        )
    uids = [j.study_uid for j in jobs]
    if against is None:
        common = studies_in_common(engine, vendor, uids)
        live = [
            (n, name)
            for name, n in common.items()
            if name in settings.vendors and settings.vendors[name].mode is Mode.LIVE
        ]
        against = max(live)[1] if live else None
    config = settings.vendors.get(vendor)
    terms = settings.product_terms().get(vendor)
    offered = terms.contracts if terms is not None else ()
    contract = next((c for c in offered if c.in_dates(end)), offered[0] if offered else None)
    return build_report(
        vendor=vendor,
        product=config.product if config is not None else vendor,
        start=start,
        end=end,
        jobs=jobs,
        against=against,
        theirs=findings_of(engine, against, uids) if against is not None else {},
        contract=contract,
    )
