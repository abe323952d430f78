"""The message bus: kombu queues, one per vendor, with priorities, carrying wake-ups.

A message says "vendor V may have work" (with the job id and attempt it was
published for, for the logs); the store is the source of truth and decides
which job a woken worker claims, so a lost message is made up for by the
workers' polling and an extra one finds nothing to claim.

Two buses run the same code:

* ``memory://`` (the embedded default): kombu's in-process transport, with
  a priority queue in place of kombu's plain FIFO (which has no priorities),
  and a consumer that waits to be woken (a message put, a handler done, a stop)
  instead of polling every few milliseconds: an idle service spends nothing on
  its bus.
* ``amqp://user:password@host:5672//`` (scale-out): RabbitMQ, durable queues
  with ``x-max-priority``, persistent messages and publisher confirms.

A message is acknowledged once the handler returned. Every worker process
consumes every vendor's queue: the vendor's concurrency is held by the store's
claims, not by the bus, so added workers add throughput. (Queues are named
``PREFIX.jobs.VENDOR``; the ``PREFIX.vendor.VENDOR`` queues of earlier versions
had a single active consumer and are no longer used: delete them.)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from queue import Empty, PriorityQueue, SimpleQueue
from typing import Any
from urllib.parse import urlsplit

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.message import Message
from kombu.messaging import Consumer, Producer
from kombu.transport import memory, virtual

from broker.model.errors import RadbridgeError
from broker.model.logging import get_logger

LOG = get_logger("radbridge.bus")

#: Queues are declared with this many priority levels (RabbitMQ ``x-max-priority``).
MAX_PRIORITY = 10
#: How long the consumer waits for a message before it acknowledges finished work (the
#: in-process bus is woken for that instead, and looks at least every ``_MEMORY_TICK``).
_TICK = 0.02
_MEMORY_TICK = 1.0
_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 2}


class BusError(RadbridgeError):
    """The message bus cannot be reached or refused a message."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a queue message says: the vendor may have work (job and attempt: for the logs;
    0 when a finished send woke the vendor's next job)."""

    vendor: str
    job_id: int
    attempt: int
    redelivered: bool = False


#: Runs in a pool thread; the message is acknowledged once it returned.
Handler = Callable[[Ticket], None]


class _Wakes:
    """What the in-process bus's consumers wait for: a message was put on a queue, a
    handler finished (its acknowledgement is due), or a consumer was told to stop."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    def poke(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def seen(self) -> int:
        return self._count

    def wait(self, seen: int, timeout: float | None) -> bool:
        """Wait for a poke after ``seen`` (at most ``timeout`` seconds); whether one came."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count != seen, timeout)


#: The process's one: every in-process queue and consumer shares it.
_WAKES = _Wakes()


class _PriorityChannel(memory.Channel):
    """kombu's in-memory channel with a priority queue per queue name.

    Higher message priority first, first-in first-out within one priority.
    Unacknowledged messages go back to their queue when a channel closes.
    """

    # Class attributes on purpose, as in kombu: every channel of the process shares them.
    queues: dict[str, PriorityQueue[tuple[int, int, Any]]] = {}  # noqa: RUF012
    events: defaultdict[str, set[Any]] = defaultdict(set)  # noqa: RUF012
    do_restore = True
    supports_fanout = False
    _order = itertools.count()

    def _queue_for(self, queue: str) -> PriorityQueue[tuple[int, int, Any]]:
        if queue not in self.queues:
            self.queues[queue] = PriorityQueue()
        return self.queues[queue]

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self._queue_for(queue)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        try:
            priority = min(max(int(message["properties"]["priority"]), 0), MAX_PRIORITY - 1)
        except (KeyError, TypeError, ValueError):
            priority = 0
        self._queue_for(queue).put((-priority, next(self._order), message))
        _WAKES.poke()

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        return self._queue_for(queue).get(block=False)[2]

    def _purge(self, queue: str) -> int:
        q = self._queue_for(queue)
        with q.mutex:
            size = len(q.queue)
            q.queue.clear()
        return size

    def close(self) -> None:
        # Skip memory.Channel.close: it would forget every queue of this process.
        virtual.Channel.close(self)


class PriorityMemoryTransport(memory.Transport):
    """kombu's in-process transport, with priorities (see :class:`_PriorityChannel`)."""

    Channel = _PriorityChannel
    global_state = virtual.BrokerState()
    driver_type = "memory"
    driver_name = "radbridge-memory"

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        """kombu's loop (``virtual.Transport.drain_events``), waiting to be woken instead of
        polling: deliver one message, or raise ``TimeoutError`` once woken for anything
        else (the consumer's acknowledgements may be due) or after ``timeout``."""
        cycle = self.cycle
        assert cycle is not None  # set as the transport is made
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = _WAKES.seen()
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            if _WAKES.wait(seen, remaining) and deadline is not None:
                deadline = time.monotonic()  # woken: one more look, then back to the caller


def _is_memory(url: str) -> bool:
    return urlsplit(url).scheme == "memory"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


class Bus:
    """Publish and consume wake-ups on per-vendor queues.

    ``prefix`` names the queues (``PREFIX.vendor.NAME``); tests use a prefix of
    their own so they can share one RabbitMQ without a virtual host each.
    Safe to publish from several threads; each ``consume`` call runs on its
    own connection.
    """

    def __init__(
        self, url: str = "memory://", *, prefix: str = "radbridge", poll_interval: float = 0.01
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.memory = _is_memory(url)
        self._options: dict[str, Any] = (
            {"polling_interval": poll_interval} if self.memory else {"confirm_publish": True}
        )
        self._lock = threading.Lock()
        self._publisher: Connection | None = None
        self._producer: Producer | None = None

    def __repr__(self) -> str:
        return f"Bus({_redact(self.url)!r}, prefix={self.prefix!r})"

    def connection(self) -> Connection:
        if self.memory:
            return Connection(
                self.url, transport=PriorityMemoryTransport, transport_options=self._options
            )
        return Connection(self.url, transport_options=self._options, connect_timeout=5)

    def queue_name(self, vendor: str) -> str:
        # Not "PREFIX.vendor.NAME": RabbitMQ refuses to declare a durable queue again with
        # other arguments, and those queues had x-single-active-consumer.
        return f"{self.prefix}.jobs.{vendor}"

    def queue(self, vendor: str) -> Queue:
        """The durable priority queue of one vendor (every worker consumes it)."""
        name = self.queue_name(vendor)
        return Queue(name, routing_key=name, durable=True, max_priority=MAX_PRIORITY)

    # ---------------------------------------------------------------- publish

    def publish(self, vendor: str, job_id: int, attempt: int, priority: int = 0) -> None:
        """Put one ticket on the vendor's queue; on RabbitMQ, return once it is confirmed."""
        if not 0 <= priority < MAX_PRIORITY:
            raise ValueError(f"priority {priority}; valid: 0 to {MAX_PRIORITY - 1}")
        body = json.dumps({"job_id": job_id, "attempt": attempt})
        queue = self.queue(vendor)
        with self._lock:
            try:
                producer = self._producer_locked()
                producer.publish(
                    body,
                    exchange="",
                    routing_key=queue.name,
                    declare=[queue],
                    priority=priority,
                    delivery_mode=2,
                    content_type="application/json",
                    content_encoding="utf-8",
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )
            except Exception as exc:
                self._close_publisher_locked()
                raise BusError(
                    f"cannot publish job {job_id} to {queue.name} on {_redact(self.url)}: {exc}"
                ) from exc

    def _producer_locked(self) -> Producer:
        if self._producer is None:
            self._publisher = self.connection()
            self._producer = Producer(self._publisher)
        return self._producer

    def _close_publisher_locked(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.release()
            except Exception as exc:  # closing a broken connection
                LOG.debug("closing the publisher failed", error=str(exc))
        self._publisher = self._producer = None

    # ---------------------------------------------------------------- consume

    def consume(
        self,
        prefetch: Mapping[str, int],
        handler: Handler,
        stop: threading.Event,
        *,
        ready: threading.Event | None = None,
    ) -> None:
        """Consume the queues of the vendors in ``prefetch`` until ``stop`` is set.

        Runs in the calling thread. Each vendor gets its own channel with
        ``prefetch[vendor]`` unacknowledged messages at most, and a pool of as
        many threads to run ``handler`` in: a slow vendor never holds up
        another. A message is acknowledged (on this thread) once its handler
        returned. On stop, the handlers that are running finish first.
        ``ready`` is set once the consumers are registered. A lost connection
        is re-opened; its unacknowledged messages come again from the broker.
        """
        for vendor, count in prefetch.items():
            if count < 1:
                raise ValueError(f"prefetch for '{vendor}' is {count}; valid: 1 or more")
        session = _Session(self, dict(prefetch), handler, stop)
        try:
            while not stop.is_set():
                try:
                    session.run(ready)
                    return
                except Exception as exc:  # connection lost: reconnect
                    LOG.warning(
                        "bus connection lost; reconnecting", url=_redact(self.url), error=str(exc)
                    )
                    stop.wait(1.0)
        finally:
            session.shutdown()

    # ---------------------------------------------------------------- admin

    def depth(self, vendor: str) -> int:
        """Messages waiting in a vendor's queue (not counting unacknowledged ones)."""
        with self.connection() as conn:
            channel = conn.channel()
            try:
                _name, count, _consumers = self.queue(vendor)(channel).queue_declare()
                return int(count)
            finally:
                channel.close()

    def delete(self, vendors: Iterable[str]) -> None:
        """Delete the vendors' queues and what they hold (tests, decommissioning)."""
        with self.connection() as conn:
            channel = conn.channel()
            try:
                for vendor in vendors:
                    self.queue(vendor)(channel).delete()
            finally:
                channel.close()

    def close(self) -> None:
        """Close the publishing connection."""
        with self._lock:
            self._close_publisher_locked()


class _Session:
    """One ``Bus.consume`` call: its worker pools and the messages waiting for an ack."""

    def __init__(
        self, bus: Bus, prefetch: dict[str, int], handler: Handler, stop: threading.Event
    ) -> None:
        self.bus = bus
        self.prefetch = prefetch
        self.handler = handler
        self.stop = stop
        self.pools = {
            vendor: ThreadPoolExecutor(max_workers=count, thread_name_prefix=f"wake-{vendor}")
            for vendor, count in prefetch.items()
        }
        self.done: SimpleQueue[tuple[int, Message, bool]] = SimpleQueue()
        self.generation = 0

    def run(self, ready: threading.Event | None) -> None:
        """Consume on one connection until stopped (raises if the connection fails)."""
        self.generation += 1
        with self.bus.connection() as conn:
            conn.ensure_connection(max_retries=1)
            consumers: list[Consumer] = []
            for vendor, count in self.prefetch.items():
                consumer = Consumer(
                    conn.channel(),
                    [self.bus.queue(vendor)],
                    prefetch_count=count,
                    accept=["json"],
                    on_message=partial(self.received, vendor, self.generation),
                )
                consumer.consume()
                consumers.append(consumer)
            if ready is not None:
                ready.set()
            tick = _TICK
            if self.bus.memory:
                tick = _MEMORY_TICK
                threading.Thread(target=self._wake_on_stop, daemon=True).start()
            while not self.stop.is_set():
                self.settle()
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=tick)
            for consumer in consumers:
                consumer.cancel()
            self.shutdown()
            self.settle()

    def received(self, vendor: str, generation: int, message: Message) -> None:
        try:
            body = json.loads(message.body)
            ticket = Ticket(
                vendor=vendor,
                job_id=int(body["job_id"]),
                attempt=int(body["attempt"]),
                redelivered=bool(message.delivery_info.get("redelivered")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            LOG.error("dropping a malformed bus message", vendor=vendor, error=str(exc))
            message.reject(requeue=False)
            return
        self.pools[vendor].submit(self.handle, ticket, message, generation)

    def _wake_on_stop(self) -> None:
        self.stop.wait()
        _WAKES.poke()

    def handle(self, ticket: Ticket, message: Message, generation: int) -> None:
        """Run the handler (in a pool thread); the consuming thread acks afterwards."""
        try:
            self.handler(ticket)
        except Exception:  # the handler must not kill the pool
            LOG.exception("bus handler failed; the message goes back", job_id=ticket.job_id)
            self.stop.wait(1.0)
            self.done.put((generation, message, False))
        else:
            self.done.put((generation, message, True))
        if self.bus.memory:
            _WAKES.poke()  # the consuming thread acknowledges it now

    def settle(self) -> None:
        """Acknowledge (or requeue) finished messages, on the consuming thread."""
        while True:
            try:
                generation, message, ok = self.done.get_nowait()
            except Empty:
                return
            if generation != self.generation:
                continue  # its connection is gone; the broker delivers it again
            if ok:
                message.ack()
            else:
                message.requeue()

    def shutdown(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True)
