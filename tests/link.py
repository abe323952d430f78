"""Peers for the site-to-hub link: a hub radbridge in-process, and an unreliable link.

:class:`HubStack` is a hub's store, spool and HTTP server (the ``web`` edge, with
``/link/v1/transfers``), with sites and their tokens. :class:`CuttingProxy` is a
TCP proxy on loopback standing in for a bad carrier network: it delays every
chunk it forwards, and it cuts connections (closes both sides) once a number of
bytes went through in one direction, for as many connections as it is told to.
The test machine has network namespaces but no ``sch_netem`` (``tc qdisc ... netem``
is refused), so the cuts and the delay are the proxy's, on loopback.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from adapters.web.edge import WebEdge
from broker.model.domain import Role
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.spool import Spool
from broker.store.tables import instances
from config.schema import Settings
from tests.databases import empty_database
from tests.peers import LOOPBACK, free_port

SITES = ("township-a", "township-b")


@dataclass
class HubStack:
    """A hub: store, spool, HTTP server on a loopback port; a token per site."""

    engine: Engine
    spool: Spool
    settings: Settings
    tokens: dict[str, str]
    """Site id → an operator token limited to that site."""
    evidence: list[str] = field(default_factory=list)
    """Study UIDs reported for completion (as an association's end reports them)."""

    @property
    def url(self) -> str:
        return self.settings.http_settings().base_url()

    @property
    def port(self) -> int:
        return self.settings.http_settings().listen.port

    def all_sop_uids(self) -> list[str]:
        """Every SOP Instance UID the hub indexed."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(instances.c.sop_instance_uid)).scalars())

    def sop_counts(self, study_uid: str) -> dict[str, int]:
        """SOP Instance UID → how often the hub indexed it, for one study."""
        stmt = select(instances.c.sop_instance_uid, instances.c.receive_count).where(
            instances.c.study_uid == study_uid
        )
        with self.engine.connect() as conn:
            return {uid: int(count) for uid, count in conn.execute(stmt).all()}


@contextlib.contextmanager
def hub_stack(folder: Path, **http: Any) -> Iterator[HubStack]:
    """A migrated SQLite hub with sites township-a and township-b serving the link."""
    with empty_database("sqlite", folder) as engine, hub_node(engine, folder, **http) as stack:
        yield stack


@contextlib.contextmanager
def hub_node(
    engine: Engine,
    folder: Path,
    *,
    node: str | None = None,
    tokens: dict[str, str] | None = None,
    **http: Any,
) -> Iterator[HubStack]:
    """A hub node on the migrated store ``engine`` and the spool ``folder/spool`` (its own
    folder in it with ``node``), serving the link on a loopback port, with sites
    township-a and township-b; ``tokens`` made for them when not given."""
    port = free_port()
    sites = {
        site: {
            "name": site.title(),
            "senders": [{"ae_title": site[-1].upper() + "_CT", "host": "10.9.0.0/16"}],
        }
        for site in SITES
    }
    settings = Settings.model_validate(
        {
            "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/x"},
            "http": {"listen": {"host": LOOPBACK, "port": port}, **http},
            "sites": sites,
        }
    )
    spool = Spool(folder / "spool", node)
    spool.prepare()
    if tokens is None:
        tokens = {s: ApiTokens(engine).create(Role.OPERATOR, sites=[s]) for s in SITES}
    stack = HubStack(engine, spool, settings, tokens)
    context = ServiceContext(
        settings, engine, StudyStore(engine), spool, evidence=stack.evidence.extend
    )
    edge = WebEdge()
    edge.start(context)
    try:
        yield stack
    finally:
        edge.stop()


class CuttingProxy:
    """A loopback TCP proxy to ``target`` that delays and cuts (see the module docstring).

    ``cut_after``: bytes from the client after which a connection is cut, for the
    next ``cuts`` connections that carry that many (later ones go through whole);
    ``cut_replies``: for that many requests that contain ``reply_marker`` (``b"/commit"``),
    the request reaches the server but the connection is cut before its answer
    reaches the client (a lost response). ``delay``: seconds added to each forwarded
    chunk.
    """

    def __init__(
        self,
        target: int,
        *,
        cut_after: int = 0,
        cuts: int = 0,
        delay: float = 0.0,
        cut_replies: int = 0,
        reply_marker: bytes = b"",
    ) -> None:
        self.target = target
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.delay = delay
        self.replies_left = cut_replies
        self.reply_marker = reply_marker
        self.cut = 0
        """Connections cut so far."""
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        self._listener.settimeout(0.1)  # so that the thread sees the stop
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take(self, attribute: str) -> bool:
        with self._lock:
            left: int = getattr(self, attribute)
            if left > 0:
                setattr(self, attribute, left - 1)
                return True
            return False

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((LOOPBACK, self.target), timeout=10)
        except OSError:
            client.close()
            return
        sent = [0]
        cut = threading.Event()
        lose_reply = threading.Event()

        def close() -> None:
            cut.set()
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

        def upstream() -> None:
            armed = self.cut_after > 0 and self._take("cuts_left")
            while not cut.is_set():
                try:
                    data = client.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if armed and sent[0] + len(data) >= self.cut_after:
                    with self._lock:
                        self.cut += 1
                    close()
                    return
                sent[0] += len(data)
                if self.reply_marker and self.reply_marker in data and self._take("replies_left"):
                    lose_reply.set()
                time.sleep(self.delay)
                try:
                    server.sendall(data)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)

        def downstream() -> None:
            while not cut.is_set():
                try:
                    data = server.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if lose_reply.is_set():
                    with self._lock:
                        self.cut += 1
                    close()
                    return
                time.sleep(self.delay)
                try:
                    client.sendall(data)
                except OSError:
                    break
            close()

        threads = [threading.Thread(target=f, daemon=True) for f in (upstream, downstream)]
        for thread in threads:
            thread.start()
