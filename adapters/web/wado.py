"""WADO-RS (PS3.18 10.4) for one job: the vendor that was sent a manifest pulls the study here.

Routes, below ``/wado/jobs/{job_id}``:

- ``GET /studies/{study}``, ``/studies/{study}/series/{series}``,
  ``/studies/{study}/series/{series}/instances/{sop}``: ``multipart/related;
  type="application/dicom"``, one part per instance, each the spooled Part 10
  file as it was received (no decode, no re-encode), its part header naming
  its ``transfer-syntax``. The body is streamed from the spool in 1 MiB
  chunks, with a ``Content-Length`` computed from the file sizes.
- the same paths followed by ``/metadata``: a DICOM JSON array (PS3.18 F.2),
  one object per instance, without pixel data.

Only the job's study, and of it only the series the job sends, are served; and the
priors radbridge fetched for the job (its manifest's ``priors``), whole, under their own
Study Instance UIDs (a de-identified job's: their pseudonyms).
Every request needs ``Authorization: Bearer <token>`` with the token of the
job's manifest: no, an unknown or expired token, or a job no longer at the
vendor (done, dead, cancelled, failed) → 401; another job's token, or a study
that is not the job's → 403; a series or instance the job does not send →
404. An ``Accept`` header must allow ``multipart/related; type="application/dicom"``
(``/metadata``: ``application/dicom+json`` or ``application/json``); asking
for a ``transfer-syntax`` other than ``*`` or the stored one gets 406, since
instances are served only as stored.

A job whose vendor (or route) has ``deidentify:`` is served under the
pseudonymous UIDs of its manifest: each request de-identifies the instances it
serves into a temporary folder (the same keyed pseudonyms, so the same copies as
a push would send), streams them, and removes them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.errors import InvalidDicomError as PydicomInvalid
from sqlalchemy import Engine
from starlette.background import BackgroundTask

from adapters.deid.study import deidentify_study
from broker.model.deid import Deidentify, Pseudonyms
from broker.model.errors import DeidentificationError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.store.job_tokens import JobInstance, JobTokens, job_instances
from broker.store.priors import PriorStore

LOG = get_logger("radbridge.web.wado")

#: Bytes read from a spool file per chunk of the response.
CHUNK_BYTES = 1024 * 1024
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
UIDParam = Annotated[str, PathParam(max_length=64, pattern=r"^[0-9.]+$")]
Auth = Annotated[str | None, Header()]
Accept = Annotated[str | None, Header()]


class _Part:
    def __init__(self, instance: JobInstance, size: int) -> None:
        self.instance = instance
        self.size = size


class MultipartBody:
    """A ``multipart/related`` body of Part 10 files streamed from the spool."""

    def __init__(self, instances: Sequence[JobInstance]) -> None:
        self.boundary = f"radbridge-{uuid.uuid4().hex}"
        self.parts: list[_Part] = []
        for instance in instances:
            try:
                size = Path(instance.path).stat().st_size
            except OSError as exc:
                LOG.error("spool file missing", path=instance.path, error=str(exc))
                raise HTTPException(500, "an instance is missing from the spool") from exc
            self.parts.append(_Part(instance, size))
        self._tail = f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{DICOM}"; boundary={self.boundary}'

    def _head(self, part: _Part) -> bytes:
        syntax = part.instance.transfer_syntax_uid
        return (
            f"--{self.boundary}\r\nContent-Type: {DICOM}; transfer-syntax={syntax}\r\n"
            f"Content-Length: {part.size}\r\n\r\n"
        ).encode("ascii")

    def __len__(self) -> int:
        return sum(len(self._head(p)) + p.size + 2 for p in self.parts) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self._head(part)
            left = part.size
            with Path(part.instance.path).open("rb") as fp:
                while left > 0:
                    chunk = fp.read(min(CHUNK_BYTES, left))
                    if not chunk:  # the file shrank: cut the response rather than lie
                        raise OSError(f"{part.instance.path} changed size while it was served")
                    left -= len(chunk)
                    yield chunk
            yield b"\r\n"
        yield self._tail


def _media_ranges(accept: str | None) -> list[tuple[str, dict[str, str]]]:
    if not accept:
        return [("*/*", {})]
    ranges = []
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        ranges.append((media.lower(), values))
    return ranges


def check_accept_dicom(accept: str | None, instances: Sequence[JobInstance]) -> None:
    """Raise 406 unless ``accept`` allows the instances as stored, in multipart/related."""
    stored = {i.transfer_syntax_uid for i in instances}
    for media, params in _media_ranges(accept):
        if media not in ("*/*", "multipart/*", "multipart/related"):
            continue
        if params.get("type", DICOM).lower() not in (DICOM, "*/*"):
            continue
        syntax = params.get("transfer-syntax", "*")
        if syntax == "*" or stored <= {syntax}:
            return
    raise HTTPException(
        406,
        f"instances are served only as stored ({', '.join(sorted(stored))}); valid Accept: "
        f'multipart/related; type="{DICOM}"; transfer-syntax=*',
    )


def check_accept_json(accept: str | None) -> None:
    """Raise 406 unless ``accept`` allows DICOM JSON."""
    for media, _params in _media_ranges(accept):
        if media in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
    raise HTTPException(406, f"metadata is served as {DICOM_JSON}; valid Accept: {DICOM_JSON}")


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401,
            "this endpoint needs Authorization: Bearer <the token of the job's manifest>",
            headers={"WWW-Authenticate": 'Bearer realm="radbridge"'},
        )
    return token.strip()


def _metadata(instance: JobInstance) -> dict[str, Any]:
    try:
        ds = dcmread(instance.path, stop_before_pixels=True)
    except (PydicomInvalid, OSError, ValueError, EOFError) as exc:
        LOG.error("cannot read a spooled instance", path=instance.path, error=str(exc))
        raise OSError(f"cannot read {instance.path}") from exc
    result: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 30)
    return result


def _metadata_stream(instances: Sequence[JobInstance]) -> Iterator[bytes]:
    yield b"["
    for n, instance in enumerate(instances):
        yield (b"," if n else b"") + json.dumps(_metadata(instance)).encode("utf-8")
    yield b"]"


#: ``job -> (profile, secret)`` when what the job sends is de-identified, else None.
PrivacyOf = Callable[[Job], tuple[Deidentify, str] | None]


@dataclass(frozen=True, slots=True)
class _Served:
    """What one request serves: the instances, and the folder of de-identified copies."""

    instances: list[JobInstance]
    folder: Path | None = None

    def cleanup(self) -> BackgroundTask | None:
        """Removes the copies once the response is sent."""
        if self.folder is None:
            return None
        return BackgroundTask(shutil.rmtree, self.folder, ignore_errors=True)


def _copies(
    found: Sequence[JobInstance], privacy: tuple[Deidentify, str], scratch: Path | None
) -> _Served:
    """De-identified copies of ``found`` (the same as the job's send made), as served."""
    profile, secret = privacy
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="wado-deid-", dir=scratch))
    try:
        outbound = deidentify_study([Path(i.path) for i in found], profile, secret, folder)
        served = []
        for path in outbound.files:
            ds = dcmread(path, stop_before_pixels=True)
            served.append(
                JobInstance(
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID),
                    str(ds.file_meta.TransferSyntaxUID),
                    str(path),
                    path.stat().st_size,
                )
            )
    except (DeidentificationError, PydicomInvalid, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        LOG.error("cannot de-identify instances to serve", error=str(exc))
        raise HTTPException(500, "the instances cannot be de-identified") from exc
    if not served:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(404, "no instance of this selection may be sent de-identified")
    return _Served(served, folder)


def wado_router(
    engine: Engine, privacy: PrivacyOf | None = None, scratch: Path | None = None
) -> APIRouter:
    """The WADO-RS routes of every job, on the store ``engine``.

    ``privacy`` says which jobs are de-identified (the configuration in force): those
    are served under the pseudonymous UIDs of their manifest, as de-identified copies
    made in ``scratch`` for the request."""
    router = APIRouter(prefix="/wado/jobs/{job_id}", tags=["WADO-RS"])
    tokens = JobTokens(engine)
    priors = PriorStore(engine)

    def keys_of(job: Job) -> Pseudonyms | None:
        found = privacy(job) if privacy is not None else None
        return Pseudonyms(found[1]) if found is not None else None

    def prior_of(job: Job, study: str) -> str | None:
        """The original UID of the job's prior its vendor asks for as ``study`` (a
        de-identified job's: by its pseudonym), or None when it is no such prior."""
        keys = keys_of(job)
        if keys is None:
            return study if priors.served(job.id, study) else None
        known = (p.study_uid for p in priors.studies(job.id))
        return next((uid for uid in known if keys.uid(uid) == study), None)

    def authorized(job_id: int, study: str, authorization: str | None) -> Job:
        job = tokens.job_for(_bearer(authorization))
        if job is None:
            raise HTTPException(
                401,
                "the token is unknown, expired, or its job is no longer at the vendor",
                headers={"WWW-Authenticate": 'Bearer realm="radbridge", error="invalid_token"'},
            )
        if job.id != job_id:
            LOG.warning("token used for another job", job_id=job.id, asked_for=job_id)
            raise HTTPException(403, f"the token does not open job {job_id}")
        keys = keys_of(job)
        current = keys.uid(job.study_uid) if keys is not None else job.study_uid
        if study != current and prior_of(job, study) is None:
            LOG.warning("token used for another study", job_id=job.id, study_uid=study)
            raise HTTPException(403, f"job {job_id} does not send that study")
        return job

    def select(job: Job, study: str, series: str | None, sop: str | None) -> _Served:
        found = privacy(job) if privacy is not None else None
        if found is None:
            if study != job.study_uid:  # a prior (checked by ``authorized``)
                instances = priors.instances(job.id, study, series_uid=series, sop_instance_uid=sop)
            else:
                instances = job_instances(engine, job, series_uid=series, sop_instance_uid=sop)
        else:
            keys = Pseudonyms(found[1])
            original = prior_of(job, study) if study != keys.uid(job.study_uid) else None
            candidates = (
                job_instances(engine, job)
                if original is None
                else priors.instances(job.id, original)
            )
            instances = [
                i
                for i in candidates
                if (series is None or keys.uid(i.series_uid) == series)
                and (sop is None or keys.uid(i.sop_instance_uid) == sop)
            ]
        if not instances:
            what = "instance" if sop else "series" if series else "study"
            raise HTTPException(404, f"job {job.id} sends no such {what}")
        return _Served(instances) if found is None else _copies(instances, found, scratch)

    def retrieve(
        job_id: int,
        study: str,
        series: str | None,
        sop: str | None,
        *,
        accept: str | None,
        authorization: str | None,
    ) -> StreamingResponse:
        job = authorized(job_id, study, authorization)
        served = select(job, study, series, sop)
        try:
            check_accept_dicom(accept, served.instances)
            body = MultipartBody(served.instances)
        except HTTPException:
            task = served.cleanup()
            if task is not None:
                task.func(*task.args, **task.kwargs)
            raise
        LOG.info(
            "WADO-RS retrieve",
            job_id=job.id,
            vendor=job.vendor,
            instances=len(served.instances),
            deidentified=served.folder is not None,
        )
        return StreamingResponse(
            iter(body),
            media_type=None,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            background=served.cleanup(),
        )

    def metadata(
        job_id: int,
        study: str,
        series: str | None,
        sop: str | None,
        *,
        accept: str | None,
        authorization: str | None,
    ) -> StreamingResponse:
        job = authorized(job_id, study, authorization)
        check_accept_json(accept)
        served = select(job, study, series, sop)
        return StreamingResponse(
            _metadata_stream(served.instances), media_type=DICOM_JSON, background=served.cleanup()
        )

    @router.get("/studies/{study}")
    def get_study(
        job_id: int, study: UIDParam, *, accept: Accept = None, authorization: Auth = None
    ) -> StreamingResponse:
        """Every instance of the job's study that the job sends."""
        return retrieve(job_id, study, None, None, accept=accept, authorization=authorization)

    @router.get("/studies/{study}/series/{series}")
    def get_series(
        job_id: int,
        study: UIDParam,
        series: UIDParam,
        *,
        accept: Accept = None,
        authorization: Auth = None,
    ) -> StreamingResponse:
        """Every instance of one series the job sends."""
        return retrieve(job_id, study, series, None, accept=accept, authorization=authorization)

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    def get_instance(
        job_id: int,
        study: UIDParam,
        series: UIDParam,
        sop: UIDParam,
        *,
        accept: Accept = None,
        authorization: Auth = None,
    ) -> StreamingResponse:
        """One instance the job sends."""
        return retrieve(job_id, study, series, sop, accept=accept, authorization=authorization)

    @router.get("/studies/{study}/metadata")
    def get_study_metadata(
        job_id: int, study: UIDParam, *, accept: Accept = None, authorization: Auth = None
    ) -> StreamingResponse:
        """DICOM JSON of every instance the job sends."""
        return metadata(job_id, study, None, None, accept=accept, authorization=authorization)

    @router.get("/studies/{study}/series/{series}/metadata")
    def get_series_metadata(
        job_id: int,
        study: UIDParam,
        series: UIDParam,
        *,
        accept: Accept = None,
        authorization: Auth = None,
    ) -> StreamingResponse:
        """DICOM JSON of one series the job sends."""
        return metadata(job_id, study, series, None, accept=accept, authorization=authorization)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def get_instance_metadata(
        job_id: int,
        study: UIDParam,
        series: UIDParam,
        sop: UIDParam,
        *,
        accept: Accept = None,
        authorization: Auth = None,
    ) -> StreamingResponse:
        """DICOM JSON of one instance the job sends."""
        return metadata(job_id, study, series, sop, accept=accept, authorization=authorization)

    return router
