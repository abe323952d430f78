"""The FHIR R4 orders interface, below ``/fhir`` on radbridge's HTTP server.

Routes (JSON only, ``application/fhir+json``; requests may also say
``application/json``):

- ``GET /fhir/metadata``: the CapabilityStatement; no token needed.
- ``POST /fhir/ServiceRequest``: create an order → 201 with ``Location``; when
  its identifiers match an order radbridge holds (placer number, filler
  number, or accession number + issuer) that order is updated → 200.
- ``PUT /fhir/ServiceRequest/{id}``: update that order (200), or create it
  with that id (201).
- ``GET /fhir/ServiceRequest/{id}``: the order as a ServiceRequest.
- ``GET /fhir/ServiceRequest?identifier=…``: a searchset Bundle (see
  :func:`search_keys`); without parameters the 100 newest orders.
- ``POST /fhir``: a ``transaction`` Bundle (all entries are validated and
  mapped before anything is stored) or a ``batch`` (each entry on its own).

An order whose ``subject`` is another patient than the order it would update
(same resource id, placer, filler or accession number) is refused with 409 and
an OperationOutcome at ``ServiceRequest.subject`` (a transaction: nothing of it
is stored); the message and the identity conflict are kept for an operator.

Reading needs a token of role viewer, writing one of role operator
(:func:`adapters.api.auth.require`). Every answer of a write comes after the
store has committed the order and the message as it came (a Bundle's once, for all
its orders). Every error is an OperationOutcome naming the element; a body over
``fhir.max_body_bytes``, or a Bundle of more than ``fhir.max_bundle_entries``
entries, gets 413 before anything is validated or stored (the settings in force,
as the REST API holds them); nothing a client sends makes the route raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from adapters.api.auth import site_scoped
from adapters.api.deps import ApiState, Caller, caller
from adapters.api.paths import route_path
from adapters.fhir.capability import capability_statement
from adapters.fhir.mapping import (
    V2_0203,
    meta_of,
    order_from_service_request,
    service_request_from_order,
)
from adapters.fhir.outcome import FHIR_JSON, FhirError, Issue, fhir_response, operation_outcome
from adapters.fhir.resources import (
    check_type,
    read_json,
    validate,
    validate_entry,
    validate_envelope,
)
from adapters.fhir.sites import Attribution
from broker.model.domain import InboundMessage, OrderOutcome, OrderSource, Role, StoredOrder
from broker.model.errors import NotFoundError, RadbridgeError
from broker.model.identity import IdentityConflictError
from broker.model.logging import get_logger
from broker.store.orders import OrderStore
from config.schema import Fhir

LOG = get_logger("radbridge.fhir")

#: The largest request body taken by default (``fhir.max_body_bytes``); larger gets 413.
MAX_BODY_BYTES = Fhir().max_body_bytes
#: The newest orders a search without parameters returns.
SEARCH_ALL_LIMIT = 100
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
JSON_TYPES = ("application/fhir+json", "application/json")
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Not Allowed"}
REASONS |= {409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable Entity"}
REASONS |= {500: "Internal Server Error"}

Viewer = Annotated[Caller, Depends(caller(Role.VIEWER))]
Operator = Annotated[Caller, Depends(caller(Role.OPERATOR))]


class FhirJson(Response):
    """The media type every ``/fhir`` answer has (what the OpenAPI description declares)."""

    media_type = FHIR_JSON


def _resource(*types: str) -> dict[str, Any]:
    """An OpenAPI response of a FHIR resource of one of ``types``, as JSON."""
    schema = {
        "type": "object",
        "properties": {"resourceType": {"type": "string", "enum": list(types)}},
        "required": ["resourceType"],
    }
    return {"description": " or ".join(types), "content": {FHIR_JSON: {"schema": schema}}}


#: Every error of ``/fhir`` (auth included): an OperationOutcome naming what was wrong.
OUTCOME: dict[str, Any] = _resource("OperationOutcome") | {
    "description": "An error: an OperationOutcome naming the element and what would be valid"
}
#: The request body of the writes: a resource as JSON (validated as FHIR R4 by the route).
RESOURCE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {"type": "object"}} for t in JSON_TYPES},
    }
}


class FhirRoute(APIRoute):
    """A route whose every error, auth included, is an OperationOutcome, never a crash."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except FhirError as exc:
                return exc.response()
            except RequestValidationError as exc:
                issues = [
                    Issue(f"{'.'.join(map(str, e['loc']))}: {e['msg']}", None, "value")
                    for e in exc.errors()
                ]
                return fhir_response(operation_outcome(issues, 400), 400)
            except HTTPException as exc:
                outcome = operation_outcome([Issue(str(exc.detail))], exc.status_code)
                return fhir_response(outcome, exc.status_code, dict(exc.headers or {}))
            except NotFoundError as exc:
                return FhirError.one(404, str(exc)).response()
            except IdentityConflictError as exc:
                return identity_error(exc, "ServiceRequest.subject").response()
            except RadbridgeError as exc:
                LOG.error(
                    "FHIR request failed in the store", path=route_path(request), error=str(exc)
                )
                return FhirError.one(
                    500, f"radbridge could not store or read the order; nothing was kept: {exc}"
                ).response()
            except Exception as exc:
                LOG.exception("FHIR request failed", path=route_path(request))
                return FhirError.one(
                    500, f"radbridge failed on this request ({type(exc).__name__})"
                ).response()

        return guarded


def attribution(request: Request, who: Caller) -> Attribution:
    """The sites in force and the caller's: whose orders this request makes and sees."""
    api: ApiState | None = getattr(request.app.state, "api", None)
    sites = api.settings.site_directory() if api is not None else Attribution().sites
    return Attribution(sites, who.sites)


def fhir_settings(request: Request) -> Fhir:
    """The ``fhir`` settings in force (a reload's included), else the defaults."""
    api: ApiState | None = getattr(request.app.state, "api", None)
    return Fhir() if api is None else api.settings.fhir


async def fhir_body(request: Request) -> bytes:
    """The request body, when it is FHIR JSON of at most ``fhir.max_body_bytes``."""
    limit = fhir_settings(request).max_body_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES:
        raise FhirError.one(
            415,
            f"Content-Type is {content_type or 'missing'}; valid: application/fhir+json",
            code="not-supported",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)
    return bytes(body)


def _too_large(size: int, limit: int) -> FhirError:
    LOG.warning("FHIR request refused: body too large", size=size, limit=limit)
    return FhirError.one(
        413,
        f"the body has {size} bytes or more; valid: at most {limit} "
        "(send large transactions as several Bundles)",
        code="too-costly",
    )


def check_entry_count(data: Mapping[str, Any], limit: int) -> None:
    """413 for a Bundle of more than ``limit`` entries (before any entry is looked at)."""
    entries = data.get("entry")
    if isinstance(entries, list) and len(entries) > limit:
        LOG.warning("FHIR Bundle refused: too many entries", entries=len(entries), limit=limit)
        raise FhirError.one(
            413,
            f"Bundle.entry has {len(entries)} entries; valid: at most {limit} "
            "(fhir.max_bundle_entries; send the rest in further Bundles)",
            "Bundle.entry",
            code="too-costly",
        )


Body = Annotated[bytes, Depends(fhir_body)]


def _message(request: Request, kind: str, body: bytes) -> InboundMessage:
    client = request.client
    control_id = request.headers.get("x-request-id")
    return InboundMessage(
        source=OrderSource.FHIR,
        kind=kind,
        raw=body,
        peer=(client.host if client else "")[:64],
        control_id=control_id[:64] if control_id else None,
    )


def _base(request: Request) -> str:
    return f"{str(request.base_url).rstrip('/')}/fhir"


def _status_line(status: int) -> str:
    return f"{status} {REASONS.get(status, '')}".strip()


def search_keys(name: str, value: str) -> dict[str, Any]:
    """What one ``identifier`` search parameter asks for.

    Returns ``{"fields": (...), "value": V, "issuer": I}``: ``identifier=V``
    looks at accession, placer and filler numbers; ``identifier=S|V`` at
    accession numbers with issuer ``S`` (``|V``: without issuer, or placer
    and filler numbers); ``identifier:of-type=<v2-0203>|ACSN|V`` (or PLAC,
    FILL) at that one.
    """
    where = f"search parameter {name}"
    if name == "identifier:of-type":
        system, _, rest = value.partition("|")
        code, _, number = rest.partition("|")
        fields = {"ACSN": "accession_number", "PLAC": "placer_number", "FILL": "filler_number"}
        if system != V2_0203 or code not in fields or not number:
            raise FhirError.one(
                400,
                f"{where} is {value!r}; valid: {V2_0203}|ACSN|VALUE (or PLAC, FILL)",
                code="value",
            )
        return {"fields": (fields[code],), "value": number, "issuer": None}
    if "|" not in value:
        if not value:
            raise FhirError.one(400, f"{where} is empty; valid: VALUE or SYSTEM|VALUE")
        return {
            "fields": ("accession_number", "placer_number", "filler_number"),
            "value": value,
            "issuer": None,
        }
    system, _, number = value.partition("|")
    if not number:
        raise FhirError.one(400, f"{where} is {value!r}; valid: SYSTEM|VALUE with a VALUE")
    if not system:
        return {
            "fields": ("accession_number", "placer_number", "filler_number"),
            "value": number,
            "issuer": "",
        }
    return {"fields": ("accession_number",), "value": number, "issuer": system}


class FhirOrders:
    """The FHIR operations on the store; the routes below are thin wrappers."""

    def __init__(self, engine: Engine) -> None:
        self.store = OrderStore(engine)

    def render(self, stored: StoredOrder) -> dict[str, Any]:
        """The order as a ServiceRequest: as the client sent it when it came alone by FHIR."""
        messages = self.store.raw_messages(stored.id)
        last = messages[-1] if messages else None
        if last is not None and last.source is OrderSource.FHIR and last.kind == "ServiceRequest":
            try:
                resource = json.loads(last.raw)
            except ValueError:
                resource = None
            if isinstance(resource, dict) and resource.get("resourceType") == "ServiceRequest":
                meta = {**(resource.get("meta") or {}), **meta_of(stored)}
                return {**resource, "id": stored.resource_id, "meta": meta}
        return service_request_from_order(stored)

    def read(self, resource_id: str, who: Attribution) -> StoredOrder:
        """The order of that id; 404 also for another site's (as for none)."""
        if not ID_RE.match(resource_id):
            raise FhirError.one(404, f"no ServiceRequest {resource_id!r}", code="not-found")
        try:
            found = self.store.by_resource_id(resource_id)
        except NotFoundError as exc:
            raise FhirError.one(404, f"no ServiceRequest/{resource_id}") from exc
        if not who.sees(found.order.site):
            raise FhirError.one(404, f"no ServiceRequest/{resource_id}")
        return found

    def search(self, params: list[tuple[str, str]], who: Attribution) -> list[StoredOrder]:
        """Orders by identifier (the caller's sites' only)."""
        return [s for s in self._search(params) if who.sees(s.order.site)]

    def _search(self, params: list[tuple[str, str]]) -> list[StoredOrder]:
        if not params:
            return list(self.store.list(limit=SEARCH_ALL_LIMIT))
        found: dict[int, StoredOrder] | None = None
        for name, value in params:
            if name not in ("identifier", "identifier:of-type"):
                raise FhirError.one(
                    400,
                    f"search parameter {name!r} is not supported; valid: identifier, "
                    "identifier:of-type",
                    code="not-supported",
                )
            keys = search_keys(name, value)
            matches: dict[int, StoredOrder] = {}
            for field in keys["fields"]:
                for stored in self.store.find(**{field: keys["value"]}):
                    issuer = stored.order.issuer
                    if field == "accession_number" and keys["issuer"] is not None:
                        if (issuer or "") != keys["issuer"]:
                            continue
                    elif keys["issuer"]:
                        continue
                    matches[stored.id] = stored
            found = matches if found is None else {k: v for k, v in found.items() if k in matches}
        return sorted((found or {}).values(), key=lambda s: s.id)

    def record(
        self,
        resource: Mapping[str, Any],
        message: InboundMessage,
        resource_id: str | None,
        who: Attribution,
    ) -> OrderOutcome:
        order = who.order(resource, order_from_service_request(resource))
        if resource_id is not None:
            self._check_put(resource_id, who)
        return self._store(order, message, resource_id)

    def _check_put(self, resource_id: str, who: Attribution, where: str = "") -> None:
        """404 for a PUT of another site's order (as for none: it is not the caller's to
        create either); the store refuses moving an order between sites (409)."""
        if who.token_sites is None:
            return
        try:
            held = self.store.by_resource_id(resource_id)
        except NotFoundError:
            return
        if not who.sees(held.order.site):
            raise FhirError.one(404, f"{where}no ServiceRequest/{resource_id}", code="not-found")

    def _store(
        self,
        order: Any,
        message: InboundMessage,
        resource_id: str | None,
        kept_as: int | None = None,
    ) -> OrderOutcome:
        outcome = self.store.record_order(order, message, resource_id=resource_id, kept_as=kept_as)
        self._log(outcome, message)
        return outcome

    def _log(self, outcome: OrderOutcome, message: InboundMessage) -> None:
        LOG.info(
            "FHIR order stored",
            resource_id=outcome.stored.resource_id,
            version=outcome.stored.version,
            created=outcome.created,
            kind=message.kind,
            peer=message.peer,
            linked=len(outcome.linked),
            flagged=len(outcome.flagged),
        )

    # ------------------------------------------------------------- Bundles

    def bundle(
        self, data: Mapping[str, Any], message: InboundMessage, who: Attribution
    ) -> dict[str, Any]:
        entries = validate_envelope(data, ("transaction", "batch"))
        kind = str(data["type"])
        if kind == "transaction":
            responses = self._transaction(entries, message, who)
        else:
            kept: list[int] = []  # the Bundle's row, stored once before its first order
            patients = _bundle_patients(entries)
            responses = [
                self._batch_entry(n, e, patients, message, kept, who=who)
                for n, e in enumerate(entries)
            ]
        return {
            "resourceType": "Bundle",
            "type": f"{kind}-response",
            "entry": [{"response": r} for r in responses],
        }

    def _transaction(
        self, entries: list[dict[str, Any]], message: InboundMessage, who: Attribution
    ) -> list[dict[str, Any]]:
        issues: list[Issue] = []
        status = 400
        planned: list[tuple[int, Any, str | None]] = []
        resources: list[dict[str, Any] | None] = []
        for n, entry in enumerate(entries):
            try:
                resources.append(validate_entry(entry, n))
            except FhirError as exc:
                issues.extend(exc.issues)
                resources.append(None)
        if issues:
            raise FhirError(400, issues)
        patients = _bundle_patients(entries)
        for n, entry in enumerate(entries):
            resource = resources[n]
            assert resource is not None
            try:
                resource_id = _entry_request(entry, resource, n)
                if resource["resourceType"] == "ServiceRequest":
                    path = f"Bundle.entry[{n}].resource"
                    order = order_from_service_request(resource, patients, path=path)
                    order = who.order(resource, order, path)
                    if resource_id is not None:
                        self._check_put(resource_id, who, f"Bundle.entry[{n}]: ")
                    planned.append((n, order, resource_id))
            except FhirError as exc:
                issues.extend(exc.issues)
                status = max(status, exc.status)
        if issues:
            raise FhirError(status, issues)
        responses: list[dict[str, Any]] = [_patient_response() for _ in entries]
        try:
            outcomes = self.store.record_orders([(o, rid) for _, o, rid in planned], message)
        except IdentityConflictError as exc:
            refused = _entry_of(exc, planned)
            where = None if refused is None else f"Bundle.entry[{refused}].resource.subject"
            raise identity_error(exc, where, "the transaction was not stored; ") from exc
        except RadbridgeError as exc:
            raise FhirError.one(
                500, f"the transaction could not be stored, nothing was: {exc}", code="exception"
            ) from exc
        for (n, _, _), outcome in zip(planned, outcomes, strict=True):
            self._log(outcome, message)
            responses[n] = _order_response(outcome)
        return responses

    def _batch_entry(
        self,
        n: int,
        entry: dict[str, Any],
        patients: dict[str, dict[str, Any]],
        message: InboundMessage,
        kept: list[int],
        *,
        who: Attribution,
    ) -> dict[str, Any]:
        try:
            resource = validate_entry(entry, n)
            resource_id = _entry_request(entry, resource, n)
            if resource["resourceType"] != "ServiceRequest":
                return _patient_response()
            path = f"Bundle.entry[{n}].resource"
            order = order_from_service_request(resource, patients, path=path)
            order = who.order(resource, order, path)
            if resource_id is not None:
                self._check_put(resource_id, who, f"Bundle.entry[{n}]: ")
            if not kept:
                kept.append(self.store.record_message(message, error=None))
            return _order_response(self._store(order, message, resource_id, kept[0]))
        except FhirError as exc:
            return {"status": _status_line(exc.status), "outcome": exc.outcome()}
        except IdentityConflictError as exc:
            refused = identity_error(exc, f"Bundle.entry[{n}].resource.subject")
            return {"status": _status_line(409), "outcome": refused.outcome()}
        except RadbridgeError as exc:
            LOG.error("batch entry not stored", entry=n, error=str(exc))
            failed = FhirError.one(500, f"Bundle.entry[{n}] could not be stored: {exc}")
            return {"status": _status_line(500), "outcome": failed.outcome()}


def _entry_request(entry: Mapping[str, Any], resource: Mapping[str, Any], n: int) -> str | None:
    """The resource id a ``PUT`` entry names (None for ``POST``); 400 for anything else."""
    request = entry.get("request") or {"method": "POST", "url": resource["resourceType"]}
    method, url = request.get("method"), str(request.get("url") or "")
    kind = str(resource["resourceType"])
    where = f"Bundle.entry[{n}].request"
    if method == "POST":
        if url.split("?", maxsplit=1)[0].rstrip("/") != kind:
            raise FhirError.one(400, f"{where}.url is {url!r}; valid: {kind}", f"{where}.url")
        return None
    if method == "PUT":
        found = re.fullmatch(rf"{kind}/([A-Za-z0-9\-.]{{1,64}})", url)
        if found is None:
            raise FhirError.one(400, f"{where}.url is {url!r}; valid: {kind}/<id>", f"{where}.url")
        if resource.get("id") not in (None, found.group(1)):
            raise FhirError.one(
                400,
                f"Bundle.entry[{n}].resource.id is {resource.get('id')!r} but the url names "
                f"{found.group(1)!r}; valid: the same id",
                f"Bundle.entry[{n}].resource.id",
            )
        return found.group(1)
    raise FhirError.one(
        405,
        f"{where}.method is {method!r}; valid: POST or PUT (of Patient and ServiceRequest)",
        f"{where}.method",
        code="not-supported",
    )


def identity_error(
    exc: IdentityConflictError, expression: str | None, before: str = ""
) -> FhirError:
    """409 for an order that names another patient than the order it would update."""
    return FhirError.one(409, f"{before}{exc}", expression, code="conflict")


def _entry_of(exc: IdentityConflictError, planned: list[tuple[int, Any, str | None]]) -> int | None:
    """The entry of a transaction whose order was refused (its patient and identifier)."""
    report = exc.report
    for n, order, resource_id in planned:
        values = (order.placer_number, order.filler_number, order.accession_number, resource_id)
        same = order.patient.patient_id == report.claimed.patient_id
        if same and any(v and report.subject.endswith(f" {v}") for v in values):
            return int(n)
    return None


def _bundle_patients(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Patients of a Bundle, by every reference that may point at them."""
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        resource = entry.get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        if isinstance(entry.get("fullUrl"), str):
            found[entry["fullUrl"]] = resource
        if isinstance(resource.get("id"), str):
            found[f"Patient/{resource['id']}"] = resource
        url = (entry.get("request") or {}).get("url")
        if isinstance(url, str) and url.startswith("Patient/"):
            found[url] = resource
    return found


def _patient_response() -> dict[str, Any]:
    note = Issue(
        "kept with the orders whose subject it is; radbridge does not serve Patient",
        code="informational",
        severity="information",
    )
    return {"status": _status_line(200), "outcome": operation_outcome([note], 200)}


def _order_response(outcome: OrderOutcome) -> dict[str, Any]:
    stored = outcome.stored
    return {
        "status": _status_line(201 if outcome.created else 200),
        "location": f"ServiceRequest/{stored.resource_id}/_history/{stored.version}",
        "etag": f'W/"{stored.version}"',
        "lastModified": meta_of(stored)["lastUpdated"],
    }


def _software_version() -> str:
    try:
        return version("radbridge")
    except PackageNotFoundError:
        return "unknown"


def fhir_router(engine: Engine) -> APIRouter:
    """The ``/fhir`` routes on the store ``engine``."""
    router = APIRouter(
        prefix="/fhir",
        tags=["FHIR"],
        route_class=FhirRoute,
        default_response_class=FhirJson,
        responses={"default": OUTCOME},
    )
    order = _resource("ServiceRequest")
    written: dict[int | str, dict[str, Any]] = {
        200: order | {"description": "Updated"},
        201: order | {"description": "Created"},
    }
    orders = FhirOrders(engine)
    software = _software_version()

    def answer(request: Request, stored: StoredOrder, status: int) -> Response:
        location = f"{_base(request)}/ServiceRequest/{stored.resource_id}"
        headers = {
            "ETag": f'W/"{stored.version}"',
            "Last-Modified": stored.updated_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }
        if status == 201:
            headers["Location"] = f"{location}/_history/{stored.version}"
        else:
            headers["Content-Location"] = f"{location}/_history/{stored.version}"
        return fhir_response(orders.render(stored), status, headers)

    def service_request(body: bytes) -> dict[str, Any]:
        data = read_json(body, "ServiceRequest")
        check_type(data, ("ServiceRequest",), "ServiceRequest")
        validate(data, "ServiceRequest")
        return data

    @router.get("/metadata", responses={200: _resource("CapabilityStatement")})
    def metadata(request: Request) -> Response:
        """The CapabilityStatement: exactly the interactions below. Public."""
        return fhir_response(capability_statement(_base(request), software))

    @router.post("/ServiceRequest", responses=written, openapi_extra=RESOURCE_BODY)
    @site_scoped
    def create(request: Request, body: Body, who: Operator) -> Response:
        """Create an order (201 + Location), or update the one its identifiers match (200)."""
        data = service_request(body)
        message = _message(request, "ServiceRequest", body)
        outcome = orders.record(data, message, None, attribution(request, who))
        return answer(request, outcome.stored, 201 if outcome.created else 200)

    @router.put("/ServiceRequest/{resource_id}", responses=written, openapi_extra=RESOURCE_BODY)
    @site_scoped
    def update(request: Request, resource_id: str, body: Body, who: Operator) -> Response:
        """Update an order by id (200), or create it with that id (201)."""
        if not ID_RE.match(resource_id):
            raise FhirError.one(
                400, f"{resource_id!r} is not a FHIR id; valid: [A-Za-z0-9-.]{{1,64}}"
            )
        data = service_request(body)
        if data.get("id") != resource_id:
            raise FhirError.one(
                400,
                f"ServiceRequest.id is {data.get('id')!r}; valid: {resource_id!r}, the id in "
                "the URL",
                "ServiceRequest.id",
            )
        message = _message(request, "ServiceRequest", body)
        outcome = orders.record(data, message, resource_id, attribution(request, who))
        return answer(request, outcome.stored, 201 if outcome.created else 200)

    @router.get("/ServiceRequest/{resource_id}", responses={200: order})
    @site_scoped
    def read(request: Request, resource_id: str, who: Viewer) -> Response:
        """One order as a ServiceRequest (meta.versionId counts its updates)."""
        return answer(request, orders.read(resource_id, attribution(request, who)), 200)

    @router.get("/ServiceRequest", responses={200: _resource("Bundle")})
    @site_scoped
    def search(request: Request, who: Viewer) -> Response:
        """Orders by identifier, as a searchset Bundle (a site-scoped token's sites' only)."""
        params = list(request.query_params.multi_items())
        found = orders.search(params, attribution(request, who))
        base = _base(request)
        return fhir_response(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "link": [{"relation": "self", "url": str(request.url)}],
                "entry": [
                    {
                        "fullUrl": f"{base}/ServiceRequest/{s.resource_id}",
                        "resource": orders.render(s),
                        "search": {"mode": "match"},
                    }
                    for s in found
                ],
            }
        )

    @router.post("", responses={200: _resource("Bundle")}, openapi_extra=RESOURCE_BODY)
    @router.post("/", include_in_schema=False)
    @site_scoped
    def bundle(request: Request, body: Body, who: Operator) -> Response:
        """A transaction (all validated first) or batch (each entry alone) of orders."""
        data = read_json(body, "Bundle")
        check_type(data, ("Bundle",), "Bundle")
        check_entry_count(data, fhir_settings(request).max_bundle_entries)
        message = _message(request, "Bundle", body)
        result = orders.bundle(data, message, attribution(request, who))
        return fhir_response(result)

    @router.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
    )
    def unsupported(request: Request, rest: str) -> Response:
        """Anything else: 405 on ServiceRequest, 404 for other types; see /fhir/metadata."""
        status = 405 if rest.split("/", maxsplit=1)[0] == "ServiceRequest" else 404
        raise FhirError.one(
            status,
            f"{request.method} /fhir/{rest} is not supported; GET /fhir/metadata lists what is",
            code="not-supported",
        )

    return router


__all__ = ["FHIR_JSON", "MAX_BODY_BYTES", "FhirOrders", "fhir_router"]
