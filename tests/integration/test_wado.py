"""WADO-RS per job, served by the real ``web`` edge (uvicorn on loopback): tokens and bytes."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from sqlalchemy import Engine

from adapters.web.edge import WebEdge
from broker.model.errors import AdapterError
from broker.model.jobs import Job, JobState
from broker.runtime.edges import ServiceContext
from broker.store import JobStore, StudyStore
from broker.store.job_tokens import JobTokens, token_digest
from broker.store.spool import Spool
from config.schema import Settings
from tests.databases import empty_database
from tests.peers import LOOPBACK, dataset_bytes, free_port
from tests.spooling import spool_study

S = JobState
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` body: each part's headers and its bytes."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p.strip())
    boundary = params["boundary"].strip('"').encode()
    parts = []
    chunks = body.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    for chunk in chunks[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        assert data.endswith(b"\r\n")
        parts.append(({k.lower(): v for k, v in headers.items()}, data[:-2]))
    return parts


@dataclass
class WadoStack:
    """A store with studies in a spool, and radbridge's HTTP server on a free loopback port."""

    engine: Engine
    spool: Spool
    tmp: Path
    settings: Settings
    edge: WebEdge

    @property
    def base_url(self) -> str:
        return self.settings.http_settings().base_url()

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.engine)

    @property
    def tokens(self) -> JobTokens:
        return JobTokens(self.engine)

    def study(self, kind: Any = "mr_brain", **options: Any) -> tuple[str, list[Path]]:
        """Generate a study, place it in the spool and index it; its UID and spooled files."""
        options = {"instances": 2, "rows": 16, "columns": 16, **options}
        return spool_study(
            self.engine, self.spool, kind, self.tmp / f"gen-{uuid.uuid4().hex[:8]}", **options
        )

    def sending_job(self, study_uid: str, vendor: str = "cxr", series: tuple[str, ...] = ()) -> Job:
        """A job of ``study_uid`` claimed for sending (the state the transport runs in)."""
        created = self.jobs.create(study_uid, vendor, route="r", series_uids=series)
        job = self.jobs.claim(created.job.id)
        assert job is not None
        return job

    def url(self, job_id: int, *path: str) -> str:
        return "/".join([f"{self.base_url}/wado/jobs/{job_id}", *path])

    def get(self, token: str | None, job_id: int, *path: str, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        headers.setdefault("Accept", DICOM_ACCEPT)
        return httpx.get(self.url(job_id, *path), headers=headers, timeout=10)


def _settings(tmp: Path, port: int) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"spool": str(tmp / "spool"), "database": f"sqlite:///{tmp}/rb.db"},
            "http": {"listen": {"host": LOOPBACK, "port": port}},
        }
    )


@pytest.fixture
def wado(tmp_path: Path) -> Iterator[WadoStack]:
    """A migrated SQLite store, a spool, and the ``web`` edge serving WADO-RS on it."""
    with empty_database("sqlite", tmp_path) as engine:
        settings = _settings(tmp_path, free_port())
        spool = Spool(tmp_path / "spool")
        spool.prepare()
        edge = WebEdge()
        edge.start(ServiceContext(settings, engine, StudyStore(engine), spool))
        try:
            yield WadoStack(engine, spool, tmp_path, settings, edge)
        finally:
            edge.stop()


def _series_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_study_is_served_byte_identical_and_only_the_jobs_series(wado: WadoStack) -> None:
    """The job's token fetches exactly the job's selected series, each part the spool file."""
    study, files = wado.study()
    chosen = _series_of(files[0])
    wanted = [f for f in files if _series_of(f) == chosen]
    assert 0 < len(wanted) < len(files)
    job = wado.sending_job(study, series=(chosen,))
    token, _ = wado.tokens.issue(job.id, 60)
    answer = wado.get(token, job.id, "studies", study)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    assert int(answer.headers["content-length"]) == len(answer.content)
    parts = parse_multipart(answer.headers["content-type"], answer.content)
    assert sorted(data for _, data in parts) == sorted(f.read_bytes() for f in wanted)
    assert sorted(dataset_bytes(p) for p in write_parts(parts, wado.tmp / "got")) == sorted(
        dataset_bytes(f) for f in wanted
    )
    syntax = str(read_file_meta_info(wanted[0]).TransferSyntaxUID)
    assert all(
        h["content-type"] == f"application/dicom; transfer-syntax={syntax}" for h, _ in parts
    )


def write_parts(parts: list[tuple[dict[str, str], bytes]], folder: Path) -> list[Path]:
    """Each part's bytes written to a file of its own in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (_, data) in enumerate(parts):
        paths.append(folder / f"{n}.dcm")
        paths[-1].write_bytes(data)
    return paths


def test_series_and_instance_routes_serve_one_series_and_one_instance(wado: WadoStack) -> None:
    """A series and an instance of the job come alone; a series the job does not send is 404."""
    study, files = wado.study()
    chosen, other = _series_of(files[0]), _series_of(files[-1])
    job = wado.sending_job(study, series=(chosen,))
    token, _ = wado.tokens.issue(job.id, 60)
    series = wado.get(token, job.id, "studies", study, "series", chosen)
    in_series = [f for f in files if _series_of(f) == chosen]
    parts = parse_multipart(series.headers["content-type"], series.content)
    assert sorted(d for _, d in parts) == sorted(f.read_bytes() for f in in_series)
    sop = str(read_file_meta_info(in_series[1]).MediaStorageSOPInstanceUID)
    one = wado.get(token, job.id, "studies", study, "series", chosen, "instances", sop)
    [(_, data)] = parse_multipart(one.headers["content-type"], one.content)
    assert data == in_series[1].read_bytes()
    assert wado.get(token, job.id, "studies", study, "series", other).status_code == 404
    missing = wado.get(token, job.id, "studies", study, "series", chosen, "instances", "1.2.3")
    assert missing.status_code == 404


def test_token_is_refused_without_for_another_job_and_another_study(wado: WadoStack) -> None:
    """No or a wrong token is 401; a token of another job or for another study is 403."""
    study, _ = wado.study()
    other_study, _ = wado.study()
    job = wado.sending_job(study)
    other = wado.sending_job(other_study)
    token, _ = wado.tokens.issue(job.id, 60)
    other_token, _ = wado.tokens.issue(other.id, 60)
    no_token = wado.get(None, job.id, "studies", study)
    assert no_token.status_code == 401 and "Bearer" in no_token.headers["www-authenticate"]
    assert wado.get("not-a-token", job.id, "studies", study).status_code == 401
    assert wado.get(other_token, job.id, "studies", study).status_code == 403
    assert wado.get(token, job.id, "studies", other_study).status_code == 403
    assert wado.get(token, other.id, "studies", other_study).status_code == 403
    assert wado.get(other_token, other.id, "studies", other_study).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        pytest.param([S.SENT, S.AWAITING_RESULT, S.RESULT_RECEIVED], id="result_received"),
        pytest.param(
            [S.SENT, S.AWAITING_RESULT, S.RESULT_RECEIVED, S.WRITING_BACK, S.DONE], id="done"
        ),
        pytest.param([S.CANCELLED], id="cancelled"),
        pytest.param([S.DEAD], id="dead"),
        pytest.param([S.FAILED], id="failed"),
    ],
)
def test_token_stops_working_when_the_job_leaves_the_vendor(
    wado: WadoStack, path: list[JobState]
) -> None:
    """The token works while sending, sent and awaiting the result, and never after."""
    study, _ = wado.study()
    job = wado.sending_job(study)
    token, _ = wado.tokens.issue(job.id, 60)
    assert wado.get(token, job.id, "studies", study).status_code == 200
    if path[0] is S.SENT:
        wado.jobs.finish(job.id, [S.SENT, S.AWAITING_RESULT])
        assert wado.get(token, job.id, "studies", study).status_code == 200
        path = path[2:]
    wado.jobs.finish(job.id, path)
    assert wado.get(token, job.id, "studies", study).status_code == 401


def test_token_expires_and_a_new_attempt_replaces_it(wado: WadoStack) -> None:
    """An expired token is 401; issuing a new token for the job revokes the previous one."""
    study, _ = wado.study()
    job = wado.sending_job(study)
    past = datetime.now(UTC) - timedelta(minutes=10)
    expired, _ = wado.tokens.issue(job.id, 60, now=past)
    assert wado.get(expired, job.id, "studies", study).status_code == 401
    first, _ = wado.tokens.issue(job.id, 60)
    second, _ = wado.tokens.issue(job.id, 60)
    assert wado.get(first, job.id, "studies", study).status_code == 401
    assert wado.get(second, job.id, "studies", study).status_code == 200


def test_only_the_hash_of_a_token_is_stored(wado: WadoStack) -> None:
    """The store holds the SHA-256 of a token, never the token itself."""
    study, _ = wado.study()
    job = wado.sending_job(study)
    token, _ = wado.tokens.issue(job.id, 60)
    stored = b"".join(p.read_bytes() for p in (wado.tmp / "store").iterdir() if p.is_file())
    assert token.encode() not in stored
    assert token_digest(token).encode() in stored


def test_accept_header_is_negotiated(wado: WadoStack) -> None:
    """A transfer syntax other than the stored one, or a non-DICOM type, is 406."""
    study, files = wado.study()
    job = wado.sending_job(study)
    token, _ = wado.tokens.issue(job.id, 60)
    stored = str(read_file_meta_info(files[0]).TransferSyntaxUID)
    exact = f'multipart/related; type="application/dicom"; transfer-syntax={stored}'
    assert wado.get(token, job.id, "studies", study, Accept=exact).status_code == 200
    assert wado.get(token, job.id, "studies", study, Accept="*/*").status_code == 200
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert wado.get(token, job.id, "studies", study, Accept=jpeg).status_code == 406
    refused = wado.get(token, job.id, "studies", study, Accept="application/json")
    assert refused.status_code == 406 and stored in refused.text


def test_metadata_is_dicom_json_of_the_jobs_instances(wado: WadoStack) -> None:
    """``/metadata`` answers a DICOM JSON array, one object per instance the job sends."""
    study, files = wado.study()
    job = wado.sending_job(study)
    token, _ = wado.tokens.issue(job.id, 60)
    answer = wado.get(token, job.id, "studies", study, "metadata", Accept="application/dicom+json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/dicom+json")
    sops = {item["00080018"]["Value"][0] for item in answer.json()}
    assert sops == {str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in files}
    assert all("7FE00010" not in item for item in answer.json())
    refused = wado.get(token, job.id, "studies", study, "metadata", Accept=DICOM_ACCEPT)
    assert refused.status_code == 406


def test_large_study_is_streamed(wado: WadoStack) -> None:
    """A study is streamed part by part: the answer arrives in many chunks, all bytes intact."""
    study, files = wado.study("ct_chest", instances=12, rows=256, columns=256)
    job = wado.sending_job(study)
    token, _ = wado.tokens.issue(job.id, 60)
    headers = {"Authorization": f"Bearer {token}", "Accept": DICOM_ACCEPT}
    chunks = 0
    body = bytearray()
    with httpx.stream("GET", wado.url(job.id, "studies", study), headers=headers) as answer:
        for chunk in answer.iter_raw():
            chunks += 1
            body += chunk
        content_type = answer.headers["content-type"]
    parts = parse_multipart(content_type, bytes(body))
    assert sorted(d for _, d in parts) == sorted(f.read_bytes() for f in files)
    assert chunks > len(files)


def test_edge_reports_a_port_in_use_and_stays_off_when_not_wanted(tmp_path: Path) -> None:
    """A port in use fails the start clearly; no http block and no http vendor: no server."""
    with empty_database("sqlite", tmp_path) as engine:
        spool = Spool(tmp_path / "spool")
        store = StudyStore(engine)
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            settings = _settings(tmp_path, taken.getsockname()[1])
            with pytest.raises(AdapterError, match=r"cannot listen for HTTP on 127\.0\.0\.1:\d+"):
                WebEdge().start(ServiceContext(settings, engine, store, spool))
        quiet = Settings.model_validate({"storage": settings.storage.model_dump()})
        assert not quiet.http_server_wanted()
        edge = WebEdge()
        edge.start(ServiceContext(quiet, engine, store, spool))
        assert edge._server is None
        edge.stop()
