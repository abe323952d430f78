"""How much this process's memory grows while something runs (streaming tests and benchmarks)."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


class PeakRss:
    """Samples this process's RSS every ``interval`` seconds inside the ``with`` block.

    ``growth`` is the peak over the block less the RSS at its start: what a send
    that streams keeps is its buffers, not the study.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._process = psutil.Process()
        self.baseline = self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
