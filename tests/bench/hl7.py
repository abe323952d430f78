"""HL7 orders benchmark: radbridge's MLLP listener against python hl7's bare listener.

    .venv/bin/python -m tests.bench.hl7 [--messages N] [--repeats N]

One connection, ORM^O01 v2.3.1 messages sent one after the other by python
``hl7``'s asyncio MLLP client, each waiting for its ACK (the way a RIS
sends). The receivers run in their own process, started afresh each time:

* ``radbridge``: the ``hl7`` edge with a real SQLite OrderStore (WAL,
  ``synchronous=FULL``): each ACK goes back after the raw message and the order are
  committed and fsync'd;
* ``hl7 bare``: python hl7's ``start_hl7_server`` answering each message
  with ``message.create_ack()`` (parsed, no store): the reference.

Also measured in this process, to explain the figure: parse + map + ACK of
one message without the store, and ``OrderStore.record_order`` alone.
Medians of ``--repeats`` runs, messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hl7.mllp import open_hl7_connection, start_hl7_server

from adapters.hl7.ack import AckCode, build_ack
from adapters.hl7.edge import Hl7Edge
from adapters.hl7.mapping import OrderEvent, event_from_message
from adapters.hl7.parse import parse, read_header
from broker.model.domain import InboundMessage, OrderSource
from broker.model.logging import configure_logging
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from broker.store.spool import Spool
from config.schema import Settings
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import LOOPBACK, free_port

_SPAWN = multiprocessing.get_context("spawn")


def _messages(count: int, offset: int) -> list[bytes]:
    return [orm_o01(sample_order(offset + n)).encode() for n in range(count)]


def _radbridge_main(port: int, folder: str, ready: Any, stop: Any) -> None:
    configure_logging("WARNING", "json")
    settings = Settings.model_validate(
        {
            "storage": {"spool": f"{folder}/spool", "database": f"sqlite:///{folder}/rb.db"},
            "hl7": {"listen": {"host": LOOPBACK, "port": port}},
        }
    )
    engine = make_engine(settings.database_url())
    migrate(engine)
    edge = Hl7Edge()
    edge.start(ServiceContext(settings, engine, StudyStore(engine), Spool(Path(folder, "spool"))))
    ready.set()
    stop.wait()
    edge.stop()


def _bare_main(port: int, _folder: str, ready: Any, stop: Any) -> None:
    async def handle(reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def serve() -> None:
        server = await start_hl7_server(handle, LOOPBACK, port)
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        server.close()

    asyncio.run(serve())


async def _send_all(port: int, messages: list[bytes]) -> float:

    reader, writer = await open_hl7_connection(LOOPBACK, port)
    started = time.perf_counter()
    for message in messages:
        writer.writeblock(message)
        await writer.drain()
        ack = await reader.readblock()
        if b"MSA|AA|" not in ack and b"MSA|CA|" not in ack:
            raise RuntimeError(f"not acknowledged: {ack[:200]!r}")
    seconds = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    return len(messages) / seconds


def _measure(target: Any, messages: list[bytes]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-hl7-") as folder:
        port = free_port()
        ready, stop = _SPAWN.Event(), _SPAWN.Event()
        process = _SPAWN.Process(target=target, args=(port, folder, ready, stop))
        process.start()
        try:
            if not ready.wait(60):
                raise RuntimeError(f"{target.__name__} did not start")
            asyncio.run(_send_all(port, messages[:50]))  # warm-up, not counted
            return asyncio.run(_send_all(port, messages[50:]))
        finally:
            stop.set()
            process.join(30)
            if process.is_alive():
                process.kill()


def _in_process_costs(messages: list[bytes]) -> tuple[float, float]:
    """(µs per message for parse + map + ACK, µs per record_order on SQLite)."""

    started = time.perf_counter()
    orders = []
    for raw in messages:
        header = read_header(raw, "utf-8")
        event = event_from_message(parse(raw, header))
        assert isinstance(event, OrderEvent)
        orders.append((event.orders[0], header))
        build_ack(header, AckCode.AA, application="RADBRIDGE", facility="RADBRIDGE").encode()
    parse_us = (time.perf_counter() - started) / len(messages) * 1e6
    with tempfile.TemporaryDirectory(prefix="bench-hl7-store-") as folder:
        engine = make_engine(f"sqlite:///{folder}/rb.db")
        migrate(engine)
        store = OrderStore(engine)
        started = time.perf_counter()
        for raw, (order, header) in zip(messages, orders, strict=True):
            store.record_order(
                order, InboundMessage(OrderSource.HL7, header.kind, raw, "bench", header.control_id)
            )
        store_us = (time.perf_counter() - started) / len(messages) * 1e6
        engine.dispose()
    return parse_us, store_us


def _fdatasync_us(folder: str, count: int = 200) -> float:
    """Median µs of one fdatasync of a 512-byte append in ``folder``: the floor of a durable
    commit (SQLite's WAL with synchronous=FULL syncs once per commit), so the figure above
    can be read against the disk it ran on."""
    path = Path(folder, "fdatasync.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 512)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per receiver (default 3)")
    args = parser.parse_args()
    count = args.messages + 50
    print(
        f"{datetime.now():%Y-%m-%d %H:%M}  ORM^O01 v2.3.1 ({len(_messages(1, 0)[0])} bytes), "
        f"{args.messages} messages on one connection, {args.repeats} runs each"
    )
    ours: list[float] = []
    bare: list[float] = []
    for run in range(args.repeats):
        messages = _messages(count, run * count)
        ours.append(_measure(_radbridge_main, messages))
        bare.append(_measure(_bare_main, messages))
        print(f"  run {run + 1}: radbridge {ours[-1]:7.0f} msg/s   hl7 bare {bare[-1]:7.0f} msg/s")
    ours_median, bare_median = statistics.median(ours), statistics.median(bare)
    parse_us, store_us = _in_process_costs(_messages(1000, 10_000_000))
    print(f"radbridge (SQLite store, ACK after commit): {ours_median:7.0f} msg/s")
    print(f"python hl7 bare MLLP listener (reference):  {bare_median:7.0f} msg/s")
    print(f"ratio radbridge / hl7 bare:                  {ours_median / bare_median:7.2f}")
    print(f"goal >= 1000 msg/s: {'met' if ours_median >= 1000 else 'NOT met'}")
    with tempfile.TemporaryDirectory(prefix="bench-hl7-disk-") as folder:
        print(f"fdatasync of a 512-byte append on this disk: median {_fdatasync_us(folder):.0f} µs")
    print(
        f"in-process, per message: parse + map + ACK {parse_us:6.0f} µs; "
        f"OrderStore.record_order {store_us:6.0f} µs"
    )


if __name__ == "__main__":
    main()
