"""``/api/v1/vendors``: each configured AI product with its reachability, queue depth,
error rate and last successful delivery, billing and trial quota use, and its pause; pause
and resume a vendor (operators; audited)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, Field

from adapters.api.deps import Operator, State, Viewer
from adapters.api.responses import BAD_BODY, NOT_FOUND, error, invalid
from broker.model.contract import ContractKind
from broker.model.jobs import UNFINISHED
from broker.model.work import LaneNotPausedError, LanePause
from broker.runtime.contracts import ContractStatus, contract_statuses
from broker.store.contracts import ContractStore
from broker.store.jobs import JOBS
from broker.store.listing import VendorActivity, vendor_activity
from broker.store.pauses import LanePauses
from config.base import parse_end
from config.vendors import Vendor

router = APIRouter(prefix="/vendors", tags=["vendors"])

#: How long a TCP connection to a vendor may take before it counts as unreachable.
PROBE_TIMEOUT_SECONDS = 2.0
#: Probes are repeated at most this often (a console polls).
PROBE_CACHE_SECONDS = 10.0
#: The window of the error rate.
ERROR_WINDOW = timedelta(hours=24)


class Reachability(BaseModel):
    reachable: bool | None
    """True: a TCP connection opened; None: not probed."""
    endpoint: str
    detail: str | None = None
    checked_at: datetime | None = None


class BillingOut(BaseModel):
    unit: str
    price: str
    currency: str | None
    trial_quota: int | None
    when_quota_used: str
    bundle: str | None
    trial_used: int
    """Uses of the trial counted in its current period, as ``GET /api/v1/contracts`` counts
    them (the ``billing:`` block is read as the vendor's trial contract): reserved when a
    study is routed to it, given back when its job is cancelled before it was sent."""
    queued: int
    """The vendor's jobs not sent yet (pending, sending, failed) and not charged yet."""


class PauseOut(BaseModel):
    """An operator's pause: the vendor's jobs wait (neither failed nor retried) until it ends."""

    since: datetime
    until: datetime | None
    """When it ends by itself; null: when an operator resumes the vendor."""
    by: str
    reason: str | None


class PauseRequest(BaseModel):
    until: str | None = Field(
        None,
        max_length=64,
        description="Resume by itself then: ISO 8601 (site timezone without an offset) "
        "or a duration from now (2h, 30m); null: until resumed.",
    )
    reason: str | None = Field(None, max_length=500)


class VendorOut(BaseModel):
    name: str
    product: str
    kind: str | None
    transport: str
    concurrency: int
    reachability: Reachability
    queue_depth: int
    """Jobs not delivered yet (pending, sending, failed)."""
    jobs: dict[str, int]
    sent_24h: int
    failed_24h: int
    error_rate_24h: float | None
    last_success_at: datetime | None
    billing: BillingOut | None
    paused: PauseOut | None
    """Set while an operator's pause holds the vendor."""


class Prober:
    """TCP reachability of vendors, cached for :data:`PROBE_CACHE_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[float, Reachability]] = {}

    def probe(self, targets: dict[str, tuple[str, int] | None]) -> dict[str, Reachability]:
        out: dict[str, Reachability] = {}
        todo: dict[str, tuple[str, int]] = {}
        now = time.monotonic()
        with self._lock:
            for name, target in targets.items():
                if target is None:
                    out[name] = Reachability(reachable=None, endpoint="", detail="no address")
                    continue
                cached = self._cache.get(target)
                if cached is not None and now - cached[0] < PROBE_CACHE_SECONDS:
                    out[name] = cached[1]
                else:
                    todo[name] = target
        if todo:
            with ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
                results = dict(zip(todo, pool.map(_connect, todo.values()), strict=True))
            with self._lock:
                for name, found in results.items():
                    self._cache[todo[name]] = (time.monotonic(), found)
                    out[name] = found
        return out


def _connect(target: tuple[str, int]) -> Reachability:
    host, port = target
    at = datetime.now(UTC)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS):
            return Reachability(reachable=True, endpoint=f"{host}:{port}", checked_at=at)
    except OSError as exc:
        return Reachability(
            reachable=False,
            endpoint=f"{host}:{port}",
            detail=exc.strerror or type(exc).__name__,
            checked_at=at,
        )


PROBER = Prober()


def _pause_out(pause: LanePause | None) -> PauseOut | None:
    if pause is None:
        return None
    return PauseOut(since=pause.since, until=pause.until, by=pause.by, reason=pause.reason)


def _trial_used(name: str, statuses: list[ContractStatus]) -> int:
    """Uses of the trial contract the vendor's ``billing:`` is read as, in its current period,
    as ``GET /api/v1/contracts`` counts them (0: no trial)."""
    for status in statuses:
        terms = status.terms
        if terms.vendor == name and terms.name == name and status.site is None:
            return status.used if terms.kind is ContractKind.TRIAL else 0
    return 0


def _vendor_out(  # noqa: PLR0917 (one call, each part of the answer)
    name: str,
    vendor: Vendor,
    activity: VendorActivity,
    reach: Reachability,
    api: State,
    pause: LanePause | None,
    statuses: list[ContractStatus],
) -> VendorOut:
    billing = None
    if vendor.billing is not None:
        b = vendor.billing
        billing = BillingOut(
            unit=b.unit.value,
            price=str(b.price),
            currency=b.currency,
            trial_quota=b.trial_quota,
            when_quota_used=b.when_quota_used.value,
            bundle=b.bundle,
            trial_used=_trial_used(name, statuses),
            queued=api.usage.queued(name),
        )
    return VendorOut(
        name=name,
        product=vendor.product,
        kind=vendor.kind,
        transport=vendor.transport.type,
        concurrency=vendor.concurrency,
        reachability=reach,
        queue_depth=sum(activity.by_state.get(s.value, 0) for s in UNFINISHED),
        jobs=activity.by_state,
        sent_24h=activity.sent,
        failed_24h=activity.failed + activity.dead,
        error_rate_24h=activity.error_rate,
        last_success_at=activity.last_sent_at,
        billing=billing,
        paused=_pause_out(pause),
    )


def _vendors(api: State, names: list[str], probe: bool) -> list[VendorOut]:
    settings = api.settings
    activity = vendor_activity(api.engine, names, datetime.now(UTC) - ERROR_WINDOW)
    targets = {n: settings.vendors[n].transport.endpoint() for n in names}
    if probe:
        reach = PROBER.probe(targets)
    else:
        reach = {
            n: Reachability(reachable=None, endpoint=f"{t[0]}:{t[1]}" if t else "")
            for n, t in targets.items()
        }
    empty = VendorActivity({}, 0, 0, 0, None)
    pauses = LanePauses(api.engine, JOBS).current()
    billed = any(settings.vendors[n].billing is not None for n in names)
    statuses = (
        contract_statuses(settings, ContractStore(api.engine), datetime.now(UTC)) if billed else []
    )
    return [
        _vendor_out(
            n, settings.vendors[n], activity.get(n, empty), reach[n], api, pauses.get(n), statuses
        )
        for n in names
    ]


Probe = Annotated[bool, Query(description="Open a TCP connection to each vendor (cached 10 s).")]


@router.get("", response_model=list[VendorOut], summary="Configured vendor products")
def list_vendors(api: State, _who: Viewer, probe: Probe = True) -> list[VendorOut]:
    return _vendors(api, sorted(api.settings.vendors), probe)


def _configured(api: State, name: str) -> None:
    if name not in api.settings.vendors:
        valid = ", ".join(sorted(api.settings.vendors)) or "none configured"
        raise HTTPException(404, f"no vendor '{name}' is configured; valid: {valid}")


@router.get("/{name}", response_model=VendorOut, summary="One vendor product", responses=NOT_FOUND)
def get_vendor(name: str, api: State, _who: Viewer, probe: Probe = True) -> VendorOut:
    _configured(api, name)
    return _vendors(api, [name], probe)[0]


@router.post(
    "/{name}/pause",
    response_model=VendorOut,
    summary="Pause a vendor for maintenance: its jobs wait (operator)",
    responses={**BAD_BODY, **NOT_FOUND},
)
def pause_vendor(
    name: str, api: State, who: Operator, body: Annotated[PauseRequest | None, Body()] = None
) -> VendorOut:
    """Nothing more is sent to the vendor until it is resumed or the pause's ``until``
    passes; its jobs wait (not failed, not retried), a send under way finishes. Pausing a
    paused vendor replaces the pause. Audited (``vendor.pause``)."""
    _configured(api, name)
    request = body or PauseRequest()
    now = datetime.now(UTC)
    until = None
    if request.until:
        try:
            until = parse_end(request.until, api.settings.site.timezone, now)
        except ValueError as exc:
            raise invalid("until", request.until, str(exc), where="body") from exc
    LanePauses(api.engine, JOBS).pause(
        name, actor=who.actor, until=until, reason=request.reason, peer=who.peer, now=now
    )
    return _vendors(api, [name], False)[0]


@router.post(
    "/{name}/resume",
    response_model=VendorOut,
    summary="Resume a paused vendor (operator)",
    responses={**NOT_FOUND, 409: error("The vendor is not paused.")},
)
def resume_vendor(name: str, api: State, who: Operator) -> VendorOut:
    """The vendor's waiting jobs go out within a second. Audited (``vendor.resume``)."""
    _configured(api, name)
    try:
        LanePauses(api.engine, JOBS).resume(name, actor=who.actor, peer=who.peer)
    except LaneNotPausedError as exc:
        raise HTTPException(409, str(exc)) from exc
    return _vendors(api, [name], False)[0]
