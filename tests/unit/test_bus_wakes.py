"""The in-process bus (``memory://``): its consumer is woken, it does not poll.

Through :meth:`Bus.consume` and :meth:`Bus.publish`, the service's own calls; the
in-process transport is the real one the embedded default runs (no broker involved).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from broker.engine import bus as bus_module
from broker.engine.bus import Bus, Ticket


@dataclass
class Consumer:
    bus: Bus
    thread: threading.Thread
    stop: threading.Event
    handled: list[Ticket] = field(default_factory=list)


@contextlib.contextmanager
def consuming(prefetch: int = 2) -> Iterator[Consumer]:
    """A consumer of vendor ``v``'s queue in its own thread, as a worker runs one."""
    bus = Bus("memory://", prefix=f"wakes-{uuid.uuid4().hex[:8]}")
    stop, ready = threading.Event(), threading.Event()
    consumer = Consumer(bus, threading.Thread(), stop)
    consumer.thread = threading.Thread(
        target=bus.consume,
        args=({"v": prefetch}, consumer.handled.append, stop),
        kwargs={"ready": ready},
    )
    consumer.thread.start()
    assert ready.wait(10)
    try:
        yield consumer
    finally:
        stop.set()
        consumer.thread.join(10)
        bus.close()


def test_an_idle_consumer_does_not_poll_its_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing published, the consumer looks into its queue about once a second (its
    safety tick), not every few milliseconds: an idle service spends nothing on its bus."""
    looks: list[float] = []
    original = bus_module._PriorityChannel._get

    def counted(channel: bus_module._PriorityChannel, queue: str, timeout: object = None) -> object:
        looks.append(time.monotonic())
        return original(channel, queue)

    monkeypatch.setattr(bus_module._PriorityChannel, "_get", counted)
    with consuming():
        time.sleep(0.2)
        before = len(looks)
        time.sleep(2.0)
        assert len(looks) - before <= 4


def test_published_tickets_are_all_handled_and_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tickets published to an idle bus are handled (a publish wakes the consumer), more of
    them than the prefetch (a finished handler wakes the consumer to acknowledge it, which
    lets the next one be delivered), and none is left in the queue: with a 60 s safety
    tick, all within seconds."""
    monkeypatch.setattr(bus_module, "_MEMORY_TICK", 60.0)
    with consuming(prefetch=2) as consumer:
        time.sleep(0.2)
        for job_id in range(1, 11):
            consumer.bus.publish("v", job_id, 1)
        deadline = time.monotonic() + 20
        while len(consumer.handled) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(t.job_id for t in consumer.handled) == list(range(1, 11))
        assert consumer.bus.depth("v") == 0


def test_a_stopped_consumer_returns_without_waiting_for_its_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting the stop event wakes the waiting consumer: with a 60 s safety tick it still
    returns at once."""
    monkeypatch.setattr(bus_module, "_MEMORY_TICK", 60.0)
    with consuming() as consumer:
        time.sleep(0.2)
        consumer.stop.set()
        consumer.thread.join(10)
        assert not consumer.thread.is_alive()
