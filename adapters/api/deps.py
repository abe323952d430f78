"""What every REST API router shares: the service state, who is calling, time parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import Depends, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from sqlalchemy import Engine

from adapters.api.auth import api_tokens, bearer_token, require
from adapters.api.auth import hidden as hidden  # noqa: PLC0414 - for routers
from adapters.api.auth import site_scoped as site_scoped  # noqa: PLC0414 - for routers
from adapters.api.pagination import MAX_ROW_ID
from adapters.api.responses import invalid
from broker.model.domain import AUDIT_ROLE, PHI_ROLE, Role
from broker.runtime.edges import ServiceContext
from broker.runtime.snapshot import SnapshotHolder
from broker.store.audit import AuditLog, token_actor
from broker.store.corrections import OperatorJobStore
from broker.store.deliveries import DeliveryStore
from broker.store.listing import Listing
from broker.store.orders import OrderStore
from broker.store.results import ResultStore
from broker.store.studies import StudyStore
from broker.store.usage import UsageStore
from config.schema import Settings, routing_rules
from routing import RuleSet


class ApiState:
    """The stores and the configuration in force, built once per application."""

    def __init__(self, engine: Engine, context: ServiceContext | None) -> None:
        self.engine = engine
        self.context = context
        self.studies = StudyStore(engine)
        self.jobs = OperatorJobStore(engine)
        self.orders = OrderStore(engine)
        self.listing = Listing(engine)
        self.audit = AuditLog(engine)
        self.usage = UsageStore(engine)
        self.results = ResultStore(engine)
        self.deliveries = DeliveryStore(engine)
        self._settings = context.settings if context is not None else Settings()

    @property
    def snapshots(self) -> SnapshotHolder | None:
        """The service's configuration snapshots (None when the API runs without a service)."""
        return self.context.snapshots if self.context is not None else None

    @property
    def settings(self) -> Settings:
        """The configuration in force: the reloaded one when the service reloaded it."""
        snapshots = self.snapshots
        return snapshots.settings if snapshots is not None else self._settings

    def today(self) -> date:
        """The site's date now."""
        return datetime.now(ZoneInfo(self.settings.site.timezone)).date()

    def rule_set(self) -> RuleSet:
        """The compiled routes in force."""
        snapshots = self.snapshots
        return snapshots.current.rules if snapshots is not None else routing_rules(self._settings)

    @property
    def config_path(self) -> Path | None:
        reloader = self.context.reloader if self.context is not None else None
        return reloader.path if reloader is not None else None


def state(request: Request) -> ApiState:
    found = getattr(request.app.state, "api", None)
    if not isinstance(found, ApiState):
        raise RuntimeError("app.state.api is not set; install the API with install_api")
    return found


State = Annotated[ApiState, Depends(state)]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the API token (id, name, role, sites) and the client's address."""

    token_id: int
    name: str | None
    role: Role
    peer: str
    sites: frozenset[str] | None = None
    """The sites the token is limited to; None: every site."""

    def sees_site(self, site: str | None) -> bool:
        """Whether a record of ``site`` (None: the hub's own) is visible to the caller."""
        return self.sites is None or (site is not None and site in self.sites)

    def check_study(self, api: ApiState, study_uid: str) -> None:
        """404 unless the caller sees the study's site."""
        if self.sites is not None and not self.sees_site(api.studies.site_of(study_uid)):
            raise hidden()

    @property
    def actor(self) -> str:
        """How the audit trail names the caller: ``token:3 (ris)``."""
        return token_actor(self.token_id, self.name)

    @property
    def sees_phi(self) -> bool:
        """Whether the caller sees patient names, IDs and birth dates (the console's rule)."""
        return self.role.sees_phi

    def search_phi(self, **values: str | None) -> None:
        """403 when a caller who may not see patient data filters by it (``patient_id=…``):
        the answer would tell which studies are that patient's."""
        used = sorted(name for name, value in values.items() if value is not None)
        if used and not self.sees_phi:
            raise HTTPException(
                403,
                f"a {self.role.value} token cannot filter by {', '.join(used)}; "
                f"patient data needs the role {PHI_ROLE.value} or higher",
            )


def caller(role: Role) -> Callable[..., Caller]:
    """A dependency: 401 without a valid token, 403 below ``role``; else the :class:`Caller`."""
    check = require(role)

    def identify(
        request: Request,
        _role: Role = Depends(check),  # noqa: B008 (a closure's dependency)
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        token = api_tokens(request).identify(bearer_token(authorization) or "")
        if token is None:  # revoked between the two reads
            raise HTTPException(401, "the token is unknown or revoked")
        peer = request.client.host if request.client else ""
        return Caller(
            token_id=token.id, name=token.name, role=token.role, peer=peer, sites=token.sites
        )

    identify.__name__ = f"caller_{Role(role).value}"
    return identify


Viewer = Annotated[Caller, Depends(caller(Role.VIEWER))]
Operator = Annotated[Caller, Depends(caller(Role.OPERATOR))]
Admin = Annotated[Caller, Depends(caller(Role.ADMIN))]
#: Radiologists (and operators, admins): verdicts on AI findings.
Reader = Annotated[Caller, Depends(caller(Role.READER))]
#: Who may read the audit trail (admins, as in the console).
AuditReader = Annotated[Caller, Depends(caller(AUDIT_ROLE))]


#: A record's id in the path: a positive 64-bit integer, as the store keeps it (a larger
#: one is a 422, not a database overflow).
RowId = Annotated[int, PathParam(ge=1, le=MAX_ROW_ID)]
#: A record's id as a listing's filter.
RowIdFilter = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]


def parse_time(
    value: str | None, tz: str, *, end: bool = False, name: str | None = None
) -> datetime | None:
    """An ISO 8601 time or date; without an offset in the site's timezone.

    A date alone is the start of that day, or with ``end`` the start of the
    next (so ``from=2024-05-01&to=2024-05-31`` covers all of May). Anything
    else is a 422 naming the query parameter ``name`` (default ``to`` with
    ``end``, else ``from``).
    """
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime.combine(day + timedelta(days=1 if end else 0), time())
        else:
            moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(tz))
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise invalid(
            name or ("to" if end else "from"),
            value,
            f"{value!r} is not a time; valid: ISO 8601, e.g. 2024-05-01 or 2024-05-01T08:00Z",
        ) from exc


def parse_day(value: str, name: str) -> date:
    """A date (YYYY-MM-DD) or a 422 naming the parameter."""
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise invalid(
            name, value, f"{name}={value!r} is not a date; valid: YYYY-MM-DD, e.g. 2024-05-01"
        ) from exc
