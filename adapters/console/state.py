"""The stores and the configuration the console reads, built once per application."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi import Request
from sqlalchemy import Engine

from broker.edges import ServiceContext
from broker.pipeline import Rules
from broker.store.api_tokens import ApiTokens
from broker.store.audit import AuditLog
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.listing import Listing
from broker.store.orders import OrderStore
from broker.store.results import ResultStore
from broker.store.studies import StudyStore
from broker.store.usage import UsageStore
from broker.store.users import ConsoleSessions, ConsoleUsers
from config.schema import Settings, routing_rules
from routing import RuleSet


class ConsoleState:
    """What every console page uses: the stores, the settings in force, the site's clock."""

    def __init__(self, engine: Engine, context: ServiceContext | None) -> None:
        self.engine = engine
        self.context = context
        self.studies = StudyStore(engine)
        self.jobs = JobStore(engine)
        self.orders = OrderStore(engine)
        self.listing = Listing(engine)
        self.results = ResultStore(engine)
        self.deliveries = DeliveryStore(engine)
        self.audit = AuditLog(engine)
        self.usage = UsageStore(engine)
        self.users = ConsoleUsers(engine)
        self.sessions = ConsoleSessions(engine)
        self.tokens = ApiTokens(engine)
        self._settings = context.settings if context is not None else Settings()

    @property
    def rules(self) -> Rules | None:
        return self.context.rules if self.context is not None else None

    @property
    def settings(self) -> Settings:
        """The configuration in force: the reloaded one when the service reloaded it."""
        rules = self.rules
        return rules.settings if rules is not None else self._settings

    @property
    def config_path(self) -> Path | None:
        rules = self.rules
        return rules.path if rules is not None else None

    def rule_set(self) -> RuleSet:
        rules = self.rules
        return rules.current if rules is not None else routing_rules(self.settings)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.site.timezone)

    def today(self) -> date:
        """The site's date now."""
        return datetime.now(self.tz).date()

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The site's day ``day`` as ``[start, end)`` in UTC."""
        start = datetime.combine(day, time(), tzinfo=self.tz)
        end = datetime.combine(day + timedelta(days=1), time(), tzinfo=self.tz)
        return start.astimezone(UTC), end.astimezone(UTC)


def console_state(request: Request) -> ConsoleState:
    found = getattr(request.app.state, "console", None)
    if not isinstance(found, ConsoleState):
        raise RuntimeError("app.state.console is not set; create the app with create_console")
    return found
