"""How fast and when a link may send: a token bucket of bytes, and allowed time windows.

- :class:`TokenBucket`: ``rate`` bytes a second, at most one second's worth saved
  up; every byte of a part's body takes its token before it is written. Each send
  has its own, at the link's ``bandwidth / concurrency``: the vendor's concurrency
  bounds its sends at once over every worker process and node (the job claims in the
  store count them), so the link's sends together stay under its bandwidth wherever
  they run, with no traffic between them. A send's bucket starts empty (``full=False``):
  a send of ``d`` seconds moves at most ``rate * d`` bytes, so sends one after another
  (on any node) never add up to a burst.
- :class:`Windows`: ``["20:00-06:00", "12:00-13:30"]`` in the site's timezone; a
  window whose end is before its start runs past midnight. Outside every window
  the link is closed: its jobs wait, pending, until the next window opens
  (:meth:`Windows.closed_until`); a transfer begun inside a window runs to its end.

Pure: the clock and the sleep are given.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")


class TokenBucket:
    """``rate`` bytes per second, for the threads that take from it."""

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        full: bool = True,
    ) -> None:
        if rate < 1:
            raise ValueError(f"a bandwidth of {rate} bytes/s; valid: 1 or more")
        self.rate = rate
        self.capacity = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity if full else 0.0
        self._at = clock()
        self._lock = threading.Lock()

    @property
    def chunk(self) -> int:
        """The most bytes worth taking at once (a tenth of a second's worth, 1 KiB to 64 KiB)."""
        return max(1024, min(64 * 1024, self.rate // 10))

    def take(self, count: int) -> None:
        """Wait until ``count`` bytes may go (``count`` above the capacity waits for it)."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= min(count, self.capacity):
                    self._tokens -= count
                    return
                wait = (min(count, self.capacity) - self._tokens) / self.rate
            self._sleep(wait)


@dataclass(frozen=True, slots=True)
class Window:
    """From ``start`` to ``end`` every day (past midnight when ``end`` <= ``start``)."""

    start: clock_time
    end: clock_time

    @classmethod
    def parse(cls, text: str) -> Window:
        found = _WINDOW.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"not a time window: {text!r}; valid: HH:MM-HH:MM, e.g. 20:00-06:00")
        h1, m1, h2, m2 = (int(g) for g in found.groups())
        if h2 == 24 and m2 != 0:
            raise ValueError(f"not a time window: {text!r}; 24:00 is the latest end")
        end = clock_time(0, 0) if h2 == 24 else clock_time(h2, m2)
        if clock_time(h1, m1) == end:
            raise ValueError(f"an empty time window: {text!r}; leave windows out for always")
        return cls(clock_time(h1, m1), end)

    def contains(self, moment: clock_time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


class Windows:
    """The times a link may start sending, in a timezone; none: always."""

    def __init__(self, windows: Sequence[str], timezone: str) -> None:
        self.windows = tuple(Window.parse(w) for w in windows)
        self.zone = ZoneInfo(timezone)
        self.text = ", ".join(windows)

    def closed_until(self, now: datetime) -> datetime | None:
        """None while a window is open at ``now``; else when the next one opens (UTC)."""
        if not self.windows:
            return None
        local = now.astimezone(self.zone)
        if any(w.contains(local.time()) for w in self.windows):
            return None
        starts = []
        for window in self.windows:
            for days in (0, 1):
                day = local.date() + timedelta(days=days)
                at = datetime.combine(day, window.start, tzinfo=self.zone)
                if at > local:
                    starts.append(at)
        return min(starts).astimezone(UTC)
