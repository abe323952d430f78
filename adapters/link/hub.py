"""The hub's side of the site-to-hub link: ``/link/v1/transfers`` on radbridge's HTTP server.

A site radbridge (the ``radbridge`` vendor transport) sends a study as a transfer:

- ``POST /link/v1/transfers`` with ``{"site": "township-a", "manifest": {…}}``
  (:mod:`adapters.link.parts`; ``site`` may be left out when the token has one
  site): 201 with the new transfer, or 200 with the one this manifest opened
  before (a retry: it lists the parts the hub holds, or says it is committed).
- ``GET /link/v1/transfers/{id}``: the same answer, to resume after a cut::

      {"id": "…", "state": "open" | "committed", "site": "township-a",
       "study_instance_uid": "1.2.…", "parts": 12, "received": [0, 1, 2, 5],
       "instances": 120}

- ``PUT /link/v1/transfers/{id}/parts/{index}``, the part's compressed bytes, with
  ``Content-Digest: sha-256=:BASE64:`` (RFC 9530): 204 once it is fsync'd in the
  staging folder; the same part again is 204 too (idempotent by index and
  checksum). 422 when the digest is not the manifest's for that index or the body
  does not match it, 413 when it is larger than a part can be.
- ``POST /link/v1/transfers/{id}/commit``: every part checked, the instances
  indexed all or nothing (:func:`adapters.link.ingest.commit`), 200 with the
  transfer; again after that, 200 with the same answer (exactly once). 409 with
  ``{"missing": [indexes]}`` when parts are missing (or a staged one was corrupt);
  503 (a part, too) when the transfer was purged as abandoned meanwhile (the site's
  next attempt opens it again);
  422 when the parts do not make the study the manifest describes, or the hub
  holds the study for another patient or site.

Authentication: an API token limited to sites (``radbridge tokens create --role
operator --site ID``), as ``Authorization: Bearer``; the transfer is that site's
(a token of several sites names one as ``site``). A token of every site, or one
naming a site that is not its own, is refused (403); another site's transfer is
404, as one that does not exist. Abandoned transfers are purged after
``http.transfers.abandon_after``, by the service's timer
(:class:`adapters.link.ingest.AbandonedTransfers`, given it by the ``web`` edge) and as
transfers are opened.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from adapters.api.deps import Caller, Operator, hidden, site_scoped
from adapters.link.ingest import (
    Committed,
    MissingPartsError,
    Staging,
    commit,
    purge_abandoned,
)
from adapters.link.parts import Manifest, TransferError
from broker.model.errors import NotFoundError, SpoolError, StoreError
from broker.model.identity import IdentityConflictError
from broker.model.logging import get_logger
from broker.runtime.edges import ServiceContext
from broker.store.transfers import Transfer, TransferLockedError, TransferState, TransferStore
from config.schema import Settings

LOG = get_logger("radbridge.link.hub")
PREFIX = "/link/v1/transfers"
#: Compressed bytes a part may have beyond its raw size (an incompressible part grows a little).
PART_SLACK = 64 * 1024
#: A transfer's ``updated_at`` (what abandonment counts from) is refreshed by a part at
#: most this often (or a quarter of ``abandon_after``, if shorter), so that parts do not
#: each cost a write to the store.
TOUCH_INTERVAL = timedelta(seconds=60)
TransferId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]


def transfer_answer(transfer: Transfer, received: list[int]) -> dict[str, Any]:
    """The JSON a site gets for a transfer."""
    return {
        "id": transfer.id,
        "state": transfer.state.value,
        "site": transfer.site,
        "study_instance_uid": transfer.study_uid,
        "parts": transfer.parts,
        "received": received if transfer.state is TransferState.OPEN else [],
        "instances": transfer.instances,
    }


def _digest(header: str | None) -> str | None:
    """The hex SHA-256 of a ``Content-Digest: sha-256=:BASE64:`` header, or None."""
    for item in (header or "").split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                return base64.b64decode(value[1:-1], validate=True).hex()
            except (binascii.Error, ValueError):
                return None
    return None


def _purged(transfer_id: str) -> HTTPException:
    """A part or commit for a transfer purged meanwhile: 503, so that the site's next
    attempt opens it again (and sends every part) instead of sending parts nobody keeps."""
    return HTTPException(
        503, f"transfer {transfer_id} was purged as abandoned; open it again", {"Retry-After": "1"}
    )


def transfers_router(context: ServiceContext) -> APIRouter:
    """The ``/link/v1/transfers`` routes on the service ``context`` (spool, store, settings)."""
    router = APIRouter(prefix=PREFIX, tags=["site-to-hub link"])
    store = TransferStore(context.engine)
    staging = Staging(context.spool)

    def settings() -> Settings:
        snapshots = context.snapshots
        return snapshots.settings if snapshots is not None else context.settings

    def site_of(caller: Caller, asked: str | None) -> str:
        if caller.sites is None:
            raise HTTPException(
                403,
                "a transfer needs an API token limited to its site; valid: radbridge tokens "
                "create --role operator --site ID",
            )
        if asked is None and len(caller.sites) == 1:
            asked = next(iter(caller.sites))
        if asked is None:
            raise HTTPException(422, "this token has several sites; name one as 'site'")
        if asked not in caller.sites:
            raise HTTPException(403, "this token sends only as its own site(s)")
        if asked not in settings().site_directory().ids:
            raise HTTPException(422, f"site {asked!r} is not configured at this hub")
        return asked

    def own(caller: Caller, transfer_id: str) -> Transfer:
        try:
            transfer = store.get(transfer_id)
        except NotFoundError:
            raise hidden() from None
        if not caller.sees_site(transfer.site) or caller.sites is None:
            raise hidden()
        return transfer

    def answer(transfer: Transfer, status: int = 200) -> JSONResponse:
        return JSONResponse(transfer_answer(transfer, staging.held(transfer.id)), status)

    @router.post("", status_code=201)
    @site_scoped
    def open_transfer(
        request: Request,
        caller: Operator,
        manifest: Annotated[dict[str, Any], Body()],
        site: Annotated[str | None, Body(max_length=32)] = None,
    ) -> JSONResponse:
        """Open a transfer (201), or find the one this manifest opened (200)."""
        chosen = site_of(caller, site)
        try:
            parsed = Manifest.model_validate(manifest)
        except ValidationError as exc:
            raise HTTPException(422, f"not a transfer manifest: {exc.errors()[:3]}") from exc
        try:
            purge_abandoned(store, staging, settings().http_settings().transfers.abandon_after)
            transfer, created = store.open(
                chosen,
                parsed.key(),
                parsed.study_instance_uid,
                manifest=json.dumps(parsed.model_dump(mode="json"), separators=(",", ":")),
                parts=len(parsed.parts),
                instances=len(parsed.instances),
                size=parsed.size,
                peer=request.client.host if request.client else "",
            )
        except StoreError as exc:
            raise HTTPException(503, f"the hub cannot open the transfer now: {exc}") from exc
        LOG.info(
            "transfer opened" if created else "transfer resumed",
            transfer_id=transfer.id,
            site=chosen,
            state=transfer.state.value,
            parts=transfer.parts,
            study_uid=transfer.study_uid,
        )
        return answer(transfer, 201 if created else 200)

    @router.get("/{transfer_id}")
    @site_scoped
    def show_transfer(caller: Operator, transfer_id: TransferId) -> JSONResponse:
        """A transfer: its state and the parts the hub holds."""
        return answer(own(caller, transfer_id))

    @router.put("/{transfer_id}/parts/{index}", status_code=204)
    @site_scoped
    async def put_part(
        request: Request,
        caller: Operator,
        transfer_id: TransferId,
        index: Annotated[int, PathParam(ge=0, le=10_000_000)],
        content_digest: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Stage one part (idempotent by index and checksum)."""
        transfer = await run_in_threadpool(own, caller, transfer_id)
        if transfer.state is TransferState.COMMITTED:
            return Response(status_code=204)  # it has every part
        if transfer.state is not TransferState.OPEN:
            raise _purged(transfer_id)
        manifest = Manifest.model_validate_json(transfer.manifest)
        if index >= len(manifest.parts):
            raise HTTPException(422, f"part {index}: the transfer has {len(manifest.parts)}")
        expected = manifest.parts[index]
        if _digest(content_digest) != expected.sha256:
            raise HTTPException(
                422,
                f"part {index}: Content-Digest is not the manifest's sha-256 for it; valid: "
                "Content-Digest: sha-256=:BASE64 of the part's SHA-256:",
            )
        if index in staging.held(transfer_id):
            return Response(status_code=204)
        limit = expected.size + expected.size // 100 + PART_SLACK
        written = staging.new_part(transfer_id, index)
        digest = hashlib.sha256()
        size = 0
        try:
            with written.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"part {index} is larger than a part can be")
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected.sha256:
                raise HTTPException(422, f"part {index} does not match its checksum; send it again")
            await run_in_threadpool(staging.keep, transfer_id, index, written)
            abandon = timedelta(seconds=settings().http_settings().transfers.abandon_after)
            if datetime.now(UTC) - transfer.updated_at > min(TOUCH_INTERVAL, abandon / 4):
                await run_in_threadpool(store.touch, transfer_id)
        except (SpoolError, StoreError, OSError) as exc:
            raise HTTPException(503, f"part {index} not stored: {type(exc).__name__}") from exc
        finally:
            written.unlink(missing_ok=True)
        return Response(status_code=204)

    @router.post("/{transfer_id}/commit")
    @site_scoped
    def commit_transfer(
        request: Request, caller: Operator, transfer_id: TransferId
    ) -> JSONResponse:
        """Make the study visible: every part checked, every instance indexed, or none."""
        own(caller, transfer_id)
        try:
            return _commit(request, transfer_id)
        except TransferLockedError as exc:  # another node has been committing it for long
            raise HTTPException(503, f"not committed now: {exc}") from exc
        except StoreError as exc:  # the transfer's lock could not be asked for
            raise HTTPException(503, f"not committed: {type(exc).__name__}") from exc

    def _commit(request: Request, transfer_id: str) -> JSONResponse:
        with staging.lock(transfer_id), store.lock(transfer_id):
            transfer = store.get(transfer_id)
            if transfer.state is TransferState.COMMITTED:
                return answer(transfer)
            if transfer.state is not TransferState.OPEN:
                raise _purged(transfer_id)
            manifest = Manifest.model_validate_json(transfer.manifest)
            try:
                done: Committed = commit(
                    transfer_id,
                    transfer.site,
                    manifest,
                    staging=staging,
                    store=context.store,
                    stable_seconds=settings().dicom.study_stable_seconds,
                    peer=request.client.host if request.client else "",
                    evidence=context.evidence,
                )
            except MissingPartsError as exc:
                return JSONResponse({"missing": exc.missing, "detail": str(exc)}, 409)
            except TransferError as exc:
                LOG.warning("transfer refused", transfer_id=transfer_id, error=str(exc))
                raise HTTPException(422, str(exc)) from exc
            except IdentityConflictError as exc:
                LOG.warning(
                    "transfer refused: identity conflict",
                    transfer_id=transfer_id,
                    kind=exc.report.kind.value,
                )
                raise HTTPException(422, f"identity conflict: {exc.report.kind.value}") from exc
            except (SpoolError, StoreError, OSError) as exc:
                LOG.error("transfer not committed", transfer_id=transfer_id, error=str(exc))
                raise HTTPException(503, f"not committed: {type(exc).__name__}") from exc
        LOG.info(
            "transfer committed",
            transfer_id=transfer_id,
            site=transfer.site,
            study_uid=done.study_uid,
            instances=done.instances,
            replaced=done.replaced,
        )
        return answer(store.get(transfer_id))

    return router
