"""The stores and the configuration the console reads, built once per application."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from fastapi import Request
from sqlalchemy import Engine

from adapters.api.deps import ApiState
from broker.runtime.edges import ServiceContext
from broker.store.api_tokens import ApiTokens
from broker.store.space import SpaceWatch
from broker.store.users import ConsoleSessions, ConsoleUsers


class ConsoleState(ApiState):
    """What every console page uses: the stores, the settings in force, the site's clock."""

    def __init__(self, engine: Engine, context: ServiceContext | None) -> None:
        super().__init__(engine, context)
        self.users = ConsoleUsers(engine)
        self.sessions = ConsoleSessions(engine)
        self.tokens = ApiTokens(engine)
        storage = self.settings.storage  # a restart applies a change of it
        self.space = SpaceWatch(storage.spool, storage.min_free_bytes)

    def sees_study(self, sites: frozenset[str] | None, study_uid: str) -> bool:
        """Whether a user limited to ``sites`` (None: every site) may see the study."""
        return sites is None or self.studies.site_of(study_uid) in sites

    def disk_alarm(self, _: Callable[[str], str] = str) -> str | None:
        """The banner every page shows while DICOM intake is stopped for lack of space."""
        space = self.space.current()
        if not space.low:
            return None
        return _("DICOM intake stopped: {reason}. Orders are still taken.").format(
            reason=space.describe()
        )

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
