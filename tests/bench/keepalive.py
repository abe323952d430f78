"""HTTP keep-alive benchmark: API requests on one kept-alive connection (not a timed test).

    .venv/bin/python -m tests.bench.keepalive [--requests 500] [--repeats 3] [--json FILE]

Starts radbridge's HTTP server as the service runs it (the ``web`` edge: uvicorn on
radbridge's own listening socket, an empty SQLite store, a viewer token) and, as the
reference in the same run, uvicorn serving a trivial FastAPI application that answers
``{"status": "ok"}`` on a socket uvicorn binds itself. On one kept-alive connection
each (``http.client``), it times ``GET /healthz`` on both and ``GET /api/v1/studies``
with the token on radbridge, and prints requests per second and the median and 95th
percentile per request, and the ratio of radbridge's ``/healthz`` rate to the
reference's. A median near 40 ms means Nagle's algorithm holds the answers back
(the listening socket without TCP_NODELAY).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from adapters.web.edge import WebEdge
from broker.model.domain import Role
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.spool import Spool
from config.schema import Settings
from tests.databases import empty_database
from tests.peers import LOOPBACK, free_port


@contextmanager
def radbridge(folder: Path) -> Iterator[tuple[int, str]]:
    """The web edge on an empty store: its port and a viewer token."""
    with empty_database("sqlite", folder) as engine:
        token = ApiTokens(engine).create(Role.VIEWER, "bench")
        port = free_port()
        settings = Settings.model_validate(
            {
                "storage": {"spool": str(folder / "spool"), "database": "sqlite:///unused.db"},
                "http": {"listen": {"host": LOOPBACK, "port": port}},
            }
        )
        edge = WebEdge()
        edge.start(
            ServiceContext(
                settings=settings,
                engine=engine,
                store=StudyStore(engine),
                spool=Spool(folder / "spool"),
            )
        )
        try:
            yield port, token
        finally:
            edge.stop()


@contextmanager
def reference() -> Iterator[int]:
    """uvicorn serving a trivial FastAPI application on a socket it binds itself."""
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=LOOPBACK, port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def keep_alive(port: int, path: str, requests: int, token: str | None = None) -> dict[str, Any]:
    """``requests`` GETs of ``path`` on one connection: rate, median and p95 in ms."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    times = []
    try:
        for _ in range(requests):
            start = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}")
    finally:
        connection.close()
    times.sort()
    return {
        "requests_per_second": round(len(times) / sum(times), 1),
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"radbridge /healthz": [], "reference /healthz": []}
    runs["radbridge /api/v1/studies"] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        radbridge(Path(tmp)) as (port, token),
        reference() as ref_port,
    ):
        for _ in range(args.repeats):  # interleaved, so both see the same machine
            runs["reference /healthz"].append(keep_alive(ref_port, "/healthz", args.requests))
            runs["radbridge /healthz"].append(keep_alive(port, "/healthz", args.requests))
            runs["radbridge /api/v1/studies"].append(
                keep_alive(port, "/api/v1/studies?limit=10", args.requests, token)
            )
    report: dict[str, Any] = {}
    for name, found in runs.items():
        best = max(found, key=lambda r: r["requests_per_second"])
        report[name] = best
        print(
            f"{name:28} {best['requests_per_second']:8.1f} req/s  "
            f"median {best['median_ms']:.2f} ms  p95 {best['p95_ms']:.2f} ms"
        )
    ratio = (
        report["radbridge /healthz"]["requests_per_second"]
        / report["reference /healthz"]["requests_per_second"]
    )
    report["ratio_healthz_to_reference"] = round(ratio, 2)
    print(f"radbridge /healthz / reference: {ratio:.2f}x (best of {args.repeats} runs each)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
