"""Power-cut durability of a real ``radbridge serve``: every acknowledgement it puts on the
wire comes after an fsync/fdatasync of what it acknowledges.

A power cut loses what the kernel had not written to the disk yet; only an fsync (or
fdatasync) makes a write survive one. Dropping unsynced writes for real needs the
device-mapper ``log-writes`` or ``flakey`` targets, which this kernel does not offer (no
``/dev/mapper/control``), so the service runs under ``strace -f`` instead, tracing only
``fsync``, ``fdatasync``, ``sendto`` and ``write`` with their file and socket names. Each
acknowledgement — an HL7 ACK ``AA``, a FHIR ``201``, the findings callback's ``202`` —
must be sent after a *completed* sync of the store's write-ahead log made since the
acknowledgement before it on the same connection; a C-STORE-RSP after the syncs of the
instance's spool file and of its folder, and of the log too when it re-opened a stable
study. With SQLite's ``synchronous=NORMAL`` everywhere a commit does not sync the log,
and every check below but the first C-STOREs' fails.

What a power cut does to the commits that are not synced (a study still receiving) is
modelled by :func:`test_index_commits_a_power_cut_loses_are_found_again_in_the_spool`.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from hl7.client import MLLPClient

from adapters.dicom.synthetic import generate_study
from adapters.results.sr import read_source_study
from tests.fhir_data import FHIR_JSON, service_request
from tests.hl7_messages import orm_o01, sample_order
from tests.integration.test_results_sr import head_bleed
from tests.peers import LOOPBACK, StoreSCP, ensure_debian_packages, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

TOKEN = "ichai-results-" + uuid.uuid4().hex

# `PID  NAME(FD<path or socket>, "bytes"…) = N`, its `<unfinished ...>` start and
# `<... NAME resumed>` end (strace -f -yy -x).
_CALL = re.compile(
    r"^(\d+)\s+(fsync|fdatasync|sendto|write)\((\d+)<(.*?)>(?=[,)])"
    r"(?:, \"((?:[^\"\\]|\\.)*)\")?"
)
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (fsync|fdatasync) resumed>.*= 0$")
_SOCKET = re.compile(r"TCP:\[127\.0\.0\.1:(\d+)->")


@dataclass(frozen=True)
class Event:
    """A synced file (``sync``, when it returned) or bytes sent on a socket (``send``)."""

    kind: str
    target: str
    data: bytes = b""


def read_trace(path: Path) -> list[Event]:
    """The syncs (in the order they completed) and socket sends (in the order they began)."""
    events: list[Event] = []
    pending: dict[str, str] = {}
    text = path.read_text(errors="replace") if path.exists() else ""
    complete = text[: text.rfind("\n") + 1]  # the last line may be still being written
    for line in complete.splitlines():
        if resumed := _RESUMED.match(line):
            if resumed.group(1) in pending:
                events.append(Event("sync", pending.pop(resumed.group(1))))
            continue
        call = _CALL.match(line)
        if call is None:
            continue
        pid, name, _fd, target, data = call.groups()
        if name in ("fsync", "fdatasync"):
            if line.endswith("<unfinished ...>"):
                pending[pid] = target
            elif line.endswith("= 0"):
                events.append(Event("sync", target))
        elif target.startswith("TCP:"):
            raw = codecs.escape_decode((data or "").encode())[0]
            events.append(Event("send", target, raw))
    return events


def unsynced_acks(
    events: list[Event], port: int, is_ack: Callable[[bytes], bool], synced: list[str]
) -> tuple[int, list[str]]:
    """(acknowledgements sent from ``port``, those not preceded by a sync of each ``synced``).

    A sync counts for an acknowledgement when it completed after the acknowledgement before
    it (on any connection of that port) and before it; ``synced`` are path suffixes.
    """
    acks, problems = 0, []
    seen: set[str] = set()
    for event in events:
        if event.kind == "sync":
            seen.update(s for s in synced if re.search(s, event.target))
            continue
        local = _SOCKET.match(event.target)
        if local is None or int(local.group(1)) != port or not is_ack(event.data):
            continue
        acks += 1
        missing = [s for s in synced if s not in seen]
        if missing:
            problems.append(f"ack {acks} ({event.data[:40]!r}) sent before a sync of {missing}")
        seen.clear()
    return acks, problems


@dataclass
class Traced:
    rb: Radbridge
    trace: Path
    vendor: StoreSCP
    folder: Path
    hl7_port: int
    http_port: int

    def offset(self) -> int:
        return len(read_trace(self.trace))

    def events_since(
        self, offset: int, port: int, is_ack: Callable[[bytes], bool], want: int
    ) -> list[Event]:
        """The events after ``offset``, once ``want`` acknowledgements from ``port`` are in."""
        deadline = time.monotonic() + 30
        while True:
            events = read_trace(self.trace)[offset:]
            sent = [e for e in events if e.kind == "send" and is_ack(e.data)]
            sent = [e for e in sent if (m := _SOCKET.match(e.target)) and int(m.group(1)) == port]
            if len(sent) >= want or time.monotonic() > deadline:
                return events
            time.sleep(0.1)


@contextmanager
def traced_service(folder: Path) -> Iterator[Traced]:
    """radbridge under ``strace -f`` with DICOM, HL7 (MLLP) and HTTP (FHIR, results)
    listeners, routing head CTs to a vendor (dcmtk storescp) that returns JSON findings."""
    ensure_debian_packages("strace")
    hl7_port, http_port = free_port(), free_port()
    with StoreSCP(folder / "ichai", ae_title="ICHAI") as vendor:
        config = base_config(folder / "rb", free_port(), study_stable_seconds=0.5)
        config["hl7"] = {"listen": {"host": LOOPBACK, "port": hl7_port}}
        config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
        config["vendors"] = {
            "ichai": {
                "product": "Head CT bleed triage",
                "transport": {
                    "type": "dicom",
                    "ae_title": "ICHAI",
                    "host": LOOPBACK,
                    "port": vendor.port,
                },
            }
        }
        config["routes"] = [
            {"name": "head-ct", "when": {"modality": "CT", "body_part": "HEAD"}, "send": ["ichai"]}
        ]
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_VENDORS__ICHAI__RESULTS__TOKEN"] = TOKEN
        trace = folder / "strace.txt"
        rb.wrapper = [
            "strace",
            "-f",
            "--seccomp-bpf",
            "-qq",
            "-e",
            "signal=none",
            "-yy",
            "-x",
            "-s",
            "256",
            "-e",
            "trace=fsync,fdatasync,sendto,write",
            "-o",
            str(trace),
        ]
        rb.start()
        try:
            yield Traced(rb, trace, vendor, folder, hl7_port, http_port)
        finally:
            # strace -o PROG blocks SIGTERM for itself: stop the service's whole group.
            assert rb.process is not None
            os.killpg(rb.process.pid, signal.SIGTERM)
            try:
                rb.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(rb.process.pid, signal.SIGKILL)
                rb.process.wait(10)
            rb.process = None


WAL = r"radbridge\.db-wal$"
SPOOL = r"/spool/.*\.dcm$"
SERIES_FOLDER = r"/spool/studies/[^/]+/[^/]+$"


def _c_store_rsp(data: bytes) -> bool:
    # A P-DATA-TF PDU (0x04) from the listener (during storescu's C-STOREs only responses)
    # whose command set holds (0000,0900) Status = 0x0000, success (implicit VR little endian).
    return data[:1] == b"\x04" and b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00" in data


def dicom_c_store(traced: Traced) -> None:
    """Each C-STORE-RSP (success) leaves after the instance's spool file and its series
    folder (the rename into it) were fsync'd: the spool is the truth of a study still
    receiving, whose index commits start-up finds again. A late instance that re-opens a
    stable study also waits for a sync of the store's WAL (its index row): start-up does
    not look into a stable study's folder."""
    files = generate_study("ct_head", traced.folder / "study", instances=4, rows=32, columns=32)
    start = traced.offset()
    storescu(files[:3], traced.rb.port)
    events = traced.events_since(start, traced.rb.port, _c_store_rsp, 3)
    acks, problems = unsynced_acks(events, traced.rb.port, _c_store_rsp, [SPOOL, SERIES_FOLDER])
    assert acks == 3
    assert not problems, problems

    traced.rb.wait_state(str(read_source_study(files).study_uid), "stable")
    start = traced.offset()
    storescu(files[3:], traced.rb.port)
    events = traced.events_since(start, traced.rb.port, _c_store_rsp, 1)
    wanted = [SPOOL, SERIES_FOLDER, WAL]
    acks, problems = unsynced_acks(events, traced.rb.port, _c_store_rsp, wanted)
    assert acks == 1
    assert not problems, problems


def _hl7_aa(data: bytes) -> bool:
    return data.startswith(b"\x0bMSH|") and b"MSA|AA|" in data


def hl7_order(traced: Traced) -> None:
    """Each HL7 ACK AA for an ORM^O01 leaves after the store's WAL was fsync'd."""
    start = traced.offset()
    with MLLPClient(LOOPBACK, traced.hl7_port) as client:
        for n in range(3):
            ack = hl7.parse(client.send_message(orm_o01(sample_order(700 + n))).decode())
            assert str(ack.segment("MSA")[1]) == "AA"
    events = traced.events_since(start, traced.hl7_port, _hl7_aa, 3)
    acks, problems = unsynced_acks(events, traced.hl7_port, _hl7_aa, [WAL])
    assert acks == 3
    assert not problems, problems


def _http(status: int) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(f"HTTP/1.1 {status} ".encode())


def fhir_create(traced: Traced) -> None:
    """Each FHIR ServiceRequest create answered 201 leaves after the store's WAL was fsync'd."""
    token = traced.rb.cli("tokens", "create", "--role", "operator", "--name", "ris").stdout.strip()
    start = traced.offset()
    for n in range(2):
        answer = httpx.post(
            f"http://{LOOPBACK}:{traced.http_port}/fhir/ServiceRequest",
            content=json.dumps(service_request(f"PWR{n}{uuid.uuid4().hex[:6]}")),
            headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
    events = traced.events_since(start, traced.http_port, _http(201), 2)
    acks, problems = unsynced_acks(events, traced.http_port, _http(201), [WAL])
    assert acks == 2
    assert not problems, problems


def _job(traced: Traced, study_uid: str) -> dict[str, Any] | None:
    jobs = json.loads(traced.rb.cli("jobs", "list", "--json").stdout)
    return next((j for j in jobs if j["study_uid"] == study_uid), None)


def findings_callback(traced: Traced) -> None:
    """JSON findings posted to the results callback are answered 202 only after the store's
    WAL was fsync'd."""
    files = generate_study("ct_head", traced.folder / "sent", instances=6, rows=32, columns=32)
    source = read_source_study(files)
    storescu(files, traced.rb.port)
    job = wait_until(
        lambda: (j := _job(traced, source.study_uid)) and j["state"] == "awaiting_result" and j,
        "job sent",
    )
    start = traced.offset()
    answer = httpx.post(
        f"http://{LOOPBACK}:{traced.http_port}/results/jobs/{job['id']}/findings",
        json=head_bleed(source) | {"complete": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    events = traced.events_since(start, traced.http_port, _http(202), 1)
    acks, problems = unsynced_acks(events, traced.http_port, _http(202), [WAL])
    assert acks == 1
    assert not problems, problems


def test_every_acknowledgement_follows_a_sync_of_what_it_acknowledges(tmp_path: Path) -> None:
    """Under strace, each C-STORE-RSP follows the fsyncs of its spool file and of the store's
    WAL, and each HL7 ACK AA, FHIR 201 and findings-callback 202 follows a WAL fsync (one
    service for the four: a start under strace costs seconds)."""
    with traced_service(tmp_path) as traced:
        dicom_c_store(traced)
        hl7_order(traced)
        fhir_create(traced)
        findings_callback(traced)


def _copy_store(database: Path, to: Path) -> None:
    """The store as its committed transactions leave it (SQLite's online backup)."""
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(to)) as copy:
        source.backup(copy)


def test_index_commits_a_power_cut_loses_are_found_again_in_the_spool(tmp_path: Path) -> None:
    """The index commits of a study still receiving are not synced (the spool is their truth),
    so a power cut may lose them. Modelled at its worst: the store is copied at a point
    every commit before which was synced (just after a late instance re-opened a stable
    study: that commit is synced), more instances are acknowledged (a new study's, and that
    study's), the service is killed -9 and its store put back to the copy. At the restart
    every acknowledged instance is indexed again from the spool, with its sender as it
    arrived (calling and called AE title, address, the sender's site)."""
    folder = tmp_path / "rb"
    config = base_config(folder, free_port(), study_stable_seconds=1)
    config["dicom"]["ae_titles"]["RADBRIDGE_CT"] = "ingest"
    config["sites"] = {
        "township-a": {"name": "A", "senders": [{"ae_title": "TWA_CT", "host": "127.0.0.1"}]}
    }
    rb = Radbridge(folder, config)
    database = folder / "radbridge.db"
    old = generate_study("ct_head", tmp_path / "old", instances=5, rows=32, columns=32)
    new = generate_study("ct_chest", tmp_path / "new", instances=3, rows=32, columns=32)
    old_uid, new_uid = (str(read_source_study(files).study_uid) for files in (old, new))
    send = partial(storescu, port=rb.port, calling_ae="TWA_CT", called_ae="RADBRIDGE_CT")
    rb.start()
    try:
        send(old[:2])
        rb.wait_state(old_uid, "stable")
        send(old[2:3])  # re-opens the study: a synced commit
        _copy_store(database, tmp_path / "durable.db")
        send(old[3:])
        send(new)
        assert rb.study(new_uid)["instances"] == 3
        rb.kill9()
        for leftover in folder.glob("radbridge.db*"):
            leftover.unlink()
        shutil.copyfile(tmp_path / "durable.db", database)
        rb.start()
        assert rb.study(old_uid)["instances"] == 5
        study = rb.study(new_uid)
        assert study["instances"] == 3
        assert (study["calling_ae"], study["called_ae"], study["peer_address"]) == (
            "TWA_CT",
            "RADBRIDGE_CT",
            "127.0.0.1",
        )
        assert study["site"] == "township-a"
    finally:
        rb.close()
