"""Results over HTTP: STOW-RS (PS3.18 10.5) and the JSON findings callback.

Routes on radbridge's HTTP server:

- ``POST /results/studies`` and ``POST /results/studies/{study}``: STOW-RS,
  ``Content-Type: multipart/related; type="application/dicom"``, one Part 10
  object per part. Each object is stored durably (spool ``results/``, then the
  store) and matched to the vendor's job for its study, like a C-STORE to the
  results AE title. Answer (``application/dicom+json``): 200 all stored, 202
  some failed, 409 none stored; the body lists the stored objects in
  ReferencedSOPSequence (0008,1199) and the failed ones in FailedSOPSequence
  (0008,1198) with a FailureReason (0008,1197): 0xC000 cannot understand,
  0xA900 not of the study in the URL, 0xC409 of another patient than its study
  or of another study than its job's (see ``radbridge conflicts``), 0xA700 not
  stored (try again).
- ``POST /results/jobs/{job_id}/findings``: the JSON findings of one job
  (schema in README, :mod:`adapters.results.findings`); 202 with the result
  id, 400 with the list of problems (each naming its field), 404 no such job,
  409 the job is not at the vendor (pending, failed, dead, cancelled) or the
  findings reference images of another study.

Authentication: ``Authorization: Bearer <secret>``. The secret is the
vendor's results token (``RADBRIDGE_VENDORS__<NAME>__RESULTS__TOKEN``; it
identifies the vendor). The findings callback also takes the per-job token
of the ``http`` transport's manifest while that job is at the vendor. Missing
or unknown → 401; a token of another vendor than the job's → 403.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from adapters.api.deps import RowId
from adapters.deid.reidentify import reidentify_findings
from adapters.dicom_status import StoreFailure
from adapters.dicom_uid import MAX_UID_LENGTH, UID_PATTERN
from adapters.results.findings import MAX_BODY_BYTES, parse_findings
from adapters.results.intake import ResultIntake
from adapters.results.objects import read_result_header
from broker.model.domain import ResultOrigin
from broker.model.errors import (
    InvalidDicomError,
    NotFoundError,
    ResultError,
    SpoolError,
    StoreError,
)
from broker.model.identity import IdentityConflictError
from broker.model.jobs import JobState
from broker.model.logging import get_logger
from broker.runtime.edges import ServiceContext
from broker.store.job_tokens import JobTokens
from broker.store.jobs import JobStore

LOG = get_logger("radbridge.web.results")

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: Largest STOW-RS body taken (bytes); result objects are far smaller than studies.
MAX_STOW_BYTES = 1024 * 1024 * 1024
#: Bytes copied per step from a part to its own file.
CHUNK_BYTES = 1024 * 1024
#: Job states that take no result: the study is not (or no longer) at the vendor.
NO_RESULT_STATES = frozenset({JobState.PENDING, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


UIDParam = Annotated[str, PathParam(max_length=MAX_UID_LENGTH, pattern=UID_PATTERN)]
Auth = Annotated[str | None, Header()]


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401,
            "missing bearer token; valid: Authorization: Bearer <the vendor's results token>",
            headers={"WWW-Authenticate": 'Bearer realm="radbridge results"'},
        )
    return token.strip()


def _params(content_type: str) -> tuple[str, dict[str, str]]:
    media, *rest = (p.strip() for p in content_type.split(";"))
    params = {}
    for item in rest:
        key, _, value = item.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return media.lower(), params


@dataclass
class _Part:
    content_type: str
    path: Path


def split_multipart(body: Path, boundary: str, folder: Path) -> Iterator[_Part]:
    """The parts of a ``multipart/related`` body in a file, each copied to a file of its own."""
    delimiter = b"--" + boundary.encode("ascii")
    size = body.stat().st_size
    if size == 0:
        return
    with body.open("rb") as fp, mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = data.find(delimiter)
        while start >= 0:
            head_start = start + len(delimiter)
            if data[head_start : head_start + 2] == b"--":
                return  # the close delimiter
            head_end = data.find(b"\r\n\r\n", head_start)
            if head_end < 0:
                raise ValueError("a part has no end of headers")
            following = data.find(b"\r\n" + delimiter, head_end + 4)
            if following < 0:
                raise ValueError("the body has no closing boundary")
            headers = data[head_start:head_end].decode("latin-1").split("\r\n")
            content_type = ""
            for line in headers:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-type":
                    content_type = value.strip()
            fd, name = tempfile.mkstemp(dir=folder, suffix=".dcm")
            with os.fdopen(fd, "wb") as out:
                position = head_end + 4
                while position < following:
                    end = min(position + CHUNK_BYTES, following)
                    out.write(data[position:end])
                    position = end
            yield _Part(content_type, Path(name))
            start = following + 2


def _sop_item(sop_class: str | None, sop_instance: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item


class ResultsApi:
    """The handlers, bound to the service's settings, store and spool."""

    def __init__(self, context: ServiceContext) -> None:
        holder = context.snapshots
        self.spool = context.spool
        self.intake = ResultIntake(
            (lambda: holder.settings) if holder is not None else context.settings,
            context.engine,
            context.spool,
        )
        self.jobs = JobStore(context.engine)
        self.tokens = JobTokens(context.engine)

    def vendor_for(self, token: str) -> str | None:
        """The vendor whose results token this is, in the configuration in force."""
        return self.intake.vendor_for_token(token)

    # ---------------------------------------------------------------- STOW-RS

    async def stow(self, request: Request, study: str | None, authorization: str | None) -> Any:
        token = _bearer(authorization)
        vendor = self.vendor_for(token)
        if vendor is None:
            raise HTTPException(
                401, "unknown results token", headers={"WWW-Authenticate": "Bearer"}
            )
        media, params = _params(request.headers.get("content-type", ""))
        if media != "multipart/related" or params.get("type", "").lower() != DICOM:
            raise HTTPException(
                415,
                f'valid Content-Type: multipart/related; type="{DICOM}"; boundary=…',
            )
        boundary = params.get("boundary")
        if not boundary:
            raise HTTPException(400, "Content-Type has no boundary")
        body = await self._receive(request)
        try:
            return await run_in_threadpool(
                self._store_parts, body, boundary, vendor, study, request
            )
        finally:
            with suppress(OSError):
                body.unlink()

    async def _receive(self, request: Request) -> Path:
        """Stream the request body into a file in the spool's tmp folder."""
        fd, name = tempfile.mkstemp(dir=self.spool.tmp, suffix=".stow")
        path = Path(name)
        received = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > MAX_STOW_BYTES:
                        raise HTTPException(
                            413, f"body larger than {MAX_STOW_BYTES} bytes; send fewer objects"
                        )
                    out.write(chunk)
        except BaseException:
            with suppress(OSError):
                path.unlink()
            raise
        return path

    def _store_parts(
        self, body: Path, boundary: str, vendor: str, study: str | None, request: Request
    ) -> JSONResponse:
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        peer = request.client.host if request.client else None
        try:
            for part in split_multipart(body, boundary, self.spool.tmp):
                self._store_part(
                    part, vendor=vendor, study=study, peer=peer, stored=stored, failed=failed
                )
        except ValueError as exc:
            raise HTTPException(400, f"not a valid multipart/related body: {exc}") from exc
        if not stored and not failed:
            raise HTTPException(400, "the body holds no part")
        answer: dict[str, Any] = {}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        status = 200 if not failed else 409 if not stored else 202
        return JSONResponse(answer, status_code=status, media_type=DICOM_JSON)

    def _store_part(
        self,
        part: _Part,
        *,
        vendor: str,
        study: str | None,
        peer: str | None,
        stored: list[dict[str, Any]],
        failed: list[dict[str, Any]],
    ) -> None:
        def fail(reason: StoreFailure, sop_class: str | None, sop: str | None, why: str) -> None:
            with suppress(OSError):
                part.path.unlink()
            LOG.warning("stow-rs object refused", vendor=vendor, reason=hex(reason), error=why)
            item = _sop_item(sop_class, sop)
            item["00081197"] = {"vr": "US", "Value": [reason]}
            failed.append(item)

        media = _params(part.content_type or DICOM)[0]
        if media != DICOM:
            fail(StoreFailure.CANNOT_UNDERSTAND, None, None, f"part of type {media}")
            return
        try:
            header = read_result_header(part.path)
        except InvalidDicomError as exc:
            fail(StoreFailure.CANNOT_UNDERSTAND, None, None, str(exc))
            return
        if study is not None and header.study_uid != study:
            fail(
                StoreFailure.DATASET_DOES_NOT_MATCH,
                header.sop_class_uid,
                header.sop_instance_uid,
                f"object of study {header.study_uid}, not {study}",
            )
            return
        if header.transfer_syntax_uid is None:
            fail(
                StoreFailure.CANNOT_UNDERSTAND,
                header.sop_class_uid,
                header.sop_instance_uid,
                "not a Part 10 file (no file meta information)",
            )
            return
        try:
            result = self.intake.store_file(
                part.path,
                origin=ResultOrigin.STOW,
                vendors=[vendor],
                transfer_syntax_uid=header.transfer_syntax_uid,
                calling_ae=None,
                peer_address=peer,
            )
        except IdentityConflictError as exc:
            fail(
                StoreFailure.IDENTITY_CONFLICT,
                header.sop_class_uid,
                header.sop_instance_uid,
                str(exc),
            )
            return
        except InvalidDicomError as exc:
            fail(StoreFailure.CANNOT_UNDERSTAND, header.sop_class_uid, None, str(exc))
            return
        except (SpoolError, StoreError, OSError) as exc:
            fail(
                StoreFailure.OUT_OF_RESOURCES,
                header.sop_class_uid,
                header.sop_instance_uid,
                str(exc),
            )
            return
        LOG.info(
            "stow-rs result object",
            vendor=vendor,
            result_id=result.recorded.result_id,
            job_id=result.recorded.job_id,
            orphan=result.recorded.job_id is None,
            duplicate=result.recorded.duplicate,
        )
        stored.append(_sop_item(header.sop_class_uid, header.sop_instance_uid))

    # ---------------------------------------------------------------- findings

    async def findings(self, request: Request, job_id: int, authorization: str | None) -> Any:
        token = _bearer(authorization)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise HTTPException(413, f"findings larger than {MAX_BODY_BYTES} bytes")
        return await run_in_threadpool(self._findings, bytes(body), job_id, token)

    def _findings(self, body: bytes, job_id: int, token: str) -> JSONResponse:
        vendor = self.vendor_for(token)
        job_token = self.tokens.job_for(token) if vendor is None else None
        if vendor is None and job_token is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        if job_token is not None and job_token.id != job_id:
            raise HTTPException(403, f"this token is for job {job_token.id}, not job {job_id}")
        try:
            job = self.jobs.get(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        if vendor is not None and job.vendor != vendor:
            raise HTTPException(403, f"job {job_id} is not a job of vendor '{vendor}'")
        if job.state in NO_RESULT_STATES:
            raise HTTPException(409, f"job {job_id} is {job.state}; it takes no result now")
        try:
            findings = parse_findings(body)
            if self.intake.settings.deidentifies(job.vendor):
                findings = reidentify_findings(findings, self.intake.pseudonyms)
            result_id = self.intake.store.record_findings(job_id, findings)
        except ResultError as exc:
            return JSONResponse({"error": str(exc), "problems": exc.problems}, status_code=400)
        except IdentityConflictError as exc:
            LOG.warning("findings refused: identity conflict", job_id=job_id, problem=str(exc))
            return JSONResponse({"error": str(exc), "problems": [str(exc)]}, status_code=409)
        except StoreError as exc:
            LOG.error("findings not stored", job_id=job_id, error=str(exc))
            raise HTTPException(503, "findings not stored; send them again") from exc
        LOG.info(
            "findings received",
            job_id=job_id,
            result_id=result_id,
            complete=findings.complete,
            urgent=findings.urgent,
            findings=len(findings.findings),
        )
        return JSONResponse(
            {"result_id": result_id, "job_id": job_id, "complete": findings.complete},
            status_code=202,
        )


def results_router(context: ServiceContext) -> APIRouter:
    """The ``/results`` routes for the service's settings, store and spool."""
    api = ResultsApi(context)
    router = APIRouter(prefix="/results")

    @router.post("/studies")
    async def stow_any(request: Request, authorization: Auth = None) -> Any:
        return await api.stow(request, None, authorization)

    @router.post("/studies/{study}")
    async def stow_study(request: Request, study: UIDParam, authorization: Auth = None) -> Any:
        return await api.stow(request, study, authorization)

    @router.post("/jobs/{job_id}/findings")
    async def findings(request: Request, job_id: RowId, authorization: Auth = None) -> Any:
        return await api.findings(request, job_id, authorization)

    return router
