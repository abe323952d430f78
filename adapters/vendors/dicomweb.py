"""DICOMweb push: STOW-RS (PS3.18 10.5) a job's files to the vendor, streamed, in batches.

Each request is ``POST {url}/studies`` with a ``multipart/related;
type="application/dicom"`` body whose parts are the spooled Part 10 files as
they were received (no decode, no re-encode). The body is a generator: it
yields a part's header, then the file read in 1 MiB chunks, then the next
part, so at most one chunk of the study is in memory whatever its size; the
body's ``Content-Length`` is computed from the file sizes beforehand (no
chunked encoding, which some servers refuse). Files go several to a request,
up to ``batch_bytes`` per request (a file larger than that goes alone), over
one keep-alive connection.

Settings (a vendor's ``transport:`` block): ``url`` (the DICOMweb root, e.g.
``https://ai.example/dicom-web``), ``timeout`` (seconds for connecting and
for each read or write on the socket, default 30) and ``batch_bytes``
(default 64 MiB). The secret comes only from the environment,
``RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN``: it is sent as
``Authorization: Bearer <token>``, or, when the URL names a user
(``https://radbridge@ai.example/dicom-web``), as HTTP basic auth with that
user and the token as password. A password written in the URL is refused.
The ``dicomweb`` write-back target (:mod:`adapters.writeback.dicomweb`) uses
the same settings (:class:`StowPeer`) and sender.

Outcome of each request:

- 200 (or 202) whose response (DICOM JSON or XML) lists no failed instance
  in FailedSOPSequence, and whose ReferencedSOPSequence, when present, names
  every instance sent: delivered. Warnings (202) count as delivered, like the
  C-STORE warning statuses.
- FailedSOPSequence items: :class:`StowFailedError`, retryable when every
  FailureReason is "out of resources" (A7xx) or "processing failure" (0110),
  otherwise :class:`StowRejectedError`.
- what :mod:`adapters.http_status` retries (408, 425, 429, 5xx), connection
  errors and timeouts: :class:`StowUnavailableError` (retryable, with backoff).
- 409 and every other 4xx, and redirects (a streamed body cannot be sent
  again): :class:`StowRejectedError` (the job is dead at once; 401/403 mean
  wrong credentials).

A failure after some batches were stored makes the whole job retry, so the
vendor may get an instance twice (STOW-RS stores are idempotent per SOP
Instance UID on every server we know).

Not done: DICOMweb servers that want chunked transfer or digest auth (the
body cannot be replayed for a challenge); TLS options other than the
system's trusted CAs.
"""

from __future__ import annotations

import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from adapters.dicom.file_meta import FileMetaError, read_file_meta
from adapters.http_status import Verdict, answered, failure, url_endpoint, verdict
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome, TransportContext, TransportSettings, VendorTransport
from config.base import LocatedErrors, Timeout

LOG = get_logger("radbridge.vendors.dicomweb")

#: Bytes read from a spool file per chunk of the request body.
CHUNK_BYTES = 1024 * 1024
#: Response bodies longer than this are not parsed (a STOW-RS answer is small).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: FailureReason values (PS3.18 Table 10.5.3-2, PS3.4 B.2.3) worth another try.
RETRYABLE_REASONS = frozenset({0x0110, *range(0xA700, 0xA800)})

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
_XML_NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


class StowUnavailableError(VendorUnavailableError):
    """The DICOMweb server could not take the study now (down, 5xx, 408, 429, timeout)."""


class StowRejectedError(VendorRejectedError):
    """The DICOMweb server refused the study for good (4xx, bad credentials, bad instance)."""


class StowFailedError(VendorUnavailableError):
    """The server answered, but listed instances it could not store for a transient reason."""


class StowPeer(BaseModel):
    """Where STOW-RS goes and how: the fields the ``dicomweb`` transport and target share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    """The DICOMweb root; STOW-RS goes to ``{url}/studies``."""
    token: SecretStr | None = None
    """Bearer token, or the basic-auth password when the URL names a user (environment only)."""
    timeout: Timeout = 30.0
    """Seconds to connect, and for each read or write on the socket."""
    batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Most file bytes in one request; a larger file goes alone."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}; valid: https://host/dicom-web")
        if parts.password is not None:
            raise ValueError(
                "the URL holds a password; put it in the environment as this block's TOKEN "
                "(RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN, RADBRIDGE_TARGETS__<NAME>__TOKEN) "
                "and keep only the user in the URL: https://USER@host/dicom-web"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _password_for_user(self) -> Self:
        user = urlsplit(self.url).username
        if user is not None and self.token is None:
            raise LocatedErrors(
                [
                    (
                        ("token",),
                        f"the URL names user {user!r} for basic auth but no password is set; "
                        "valid: the password as this block's token, from the environment "
                        "(RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN, "
                        "RADBRIDGE_TARGETS__<NAME>__TOKEN)",
                    )
                ]
            )
        return self


class DicomWebSettings(StowPeer, TransportSettings):
    """A vendor's ``transport:`` block for ``type: dicomweb`` (see the module docstring)."""

    type: Literal["dicomweb"] = "dicomweb"

    def build(self, context: TransportContext) -> DicomWebTransport:
        return DicomWebTransport(context.vendor, self)

    def endpoint(self) -> tuple[str, int] | None:
        return url_endpoint(self.url)


@dataclass(frozen=True, slots=True)
class _Part:
    path: Path
    size: int
    sop_instance_uid: str


def _parts(files: Sequence[Path]) -> list[_Part]:
    parts = []
    for path in files:
        try:
            meta = read_file_meta(path)
        except (FileMetaError, OSError) as exc:
            raise StowRejectedError(f"cannot read {path.name} from the spool: {exc}") from exc
        parts.append(_Part(path, meta.size, meta.sop_instance_uid))
    return parts


def _batches(parts: list[_Part], limit: int) -> list[list[_Part]]:
    """Consecutive groups of at most ``limit`` file bytes (at least one file each)."""
    batches: list[list[_Part]] = []
    total = 0
    for part in parts:
        if not batches or (total + part.size > limit and batches[-1]):
            batches.append([])
            total = 0
        batches[-1].append(part)
        total += part.size
    return batches


class _Body:
    """A multipart/related body streamed from the files: its length, and its chunks."""

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts
        self.boundary = f"radbridge-{uuid.uuid4().hex}"
        self._head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self._tail = f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        return sum(len(self._head) + p.size + 2 for p in self.parts) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self._head
            sent = 0
            with part.path.open("rb") as fp:
                while chunk := fp.read(CHUNK_BYTES):
                    sent += len(chunk)
                    if sent > part.size:
                        break
                    yield chunk
            if sent != part.size:
                raise StowRejectedError(
                    f"{part.path.name} changed size while it was sent "
                    f"({part.size} bytes expected, {sent} read); spool files must not change"
                )
            yield b"\r\n"
        yield self._tail


def _json_failures(answer: Any) -> tuple[list[tuple[str, int | None]], set[str] | None]:
    def items(tag: str) -> list[dict[str, Any]] | None:
        element = answer.get(tag) if isinstance(answer, dict) else None
        if not isinstance(element, dict):
            return None
        value = element.get("Value", [])
        return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []

    def first(item: dict[str, Any], tag: str) -> Any:
        value = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
        return value[0] if isinstance(value, list) and value else None

    failed = [
        (str(first(i, REFERENCED_SOP_INSTANCE_UID) or "?"), _int(first(i, FAILURE_REASON)))
        for i in items(FAILED_SOP_SEQUENCE) or []
    ]
    referenced = items(REFERENCED_SOP_SEQUENCE)
    stored = (
        None
        if referenced is None
        else {str(first(i, REFERENCED_SOP_INSTANCE_UID)) for i in referenced}
    )
    return failed, stored


def _xml_failures(root: ET.Element) -> tuple[list[tuple[str, int | None]], set[str] | None]:
    def attribute(parent: ET.Element, tag: str) -> ET.Element | None:
        for child in parent:
            if child.tag in ("DicomAttribute", f"{_XML_NS}DicomAttribute") and (
                child.get("tag", "").upper() == tag
            ):
                return child
        return None

    def items(tag: str) -> list[ET.Element] | None:
        element = attribute(root, tag)
        if element is None:
            return None
        return [c for c in element if c.tag in ("Item", f"{_XML_NS}Item")]

    def first(item: ET.Element, tag: str) -> str | None:
        element = attribute(item, tag)
        if element is None:
            return None
        for value in element:
            if value.tag in ("Value", f"{_XML_NS}Value"):
                return (value.text or "").strip()
        return None

    failed = [
        (first(i, REFERENCED_SOP_INSTANCE_UID) or "?", _int(first(i, FAILURE_REASON)))
        for i in items(FAILED_SOP_SEQUENCE) or []
    ]
    referenced = items(REFERENCED_SOP_SEQUENCE)
    stored = (
        None
        if referenced is None
        else {first(i, REFERENCED_SOP_INSTANCE_UID) or "" for i in referenced}
    )
    return failed, stored


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_stow_response(
    content_type: str, body: bytes
) -> tuple[list[tuple[str, int | None]], set[str] | None] | None:
    """(failed instances with their FailureReason, SOP Instance UIDs stored) from a response.

    The stored set is None when the response has no ReferencedSOPSequence;
    the whole result is None when the body is empty or neither DICOM JSON nor
    DICOM XML (a DOCTYPE is refused rather than expanded).
    """
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if not body.strip() or len(body) > MAX_RESPONSE_BYTES:
        return None
    try:
        if media.endswith("json"):
            return _json_failures(json.loads(body))
        if media.endswith("xml") and b"<!DOCTYPE" not in body.upper():
            return _xml_failures(ET.fromstring(body))  # noqa: S314 - no DOCTYPE, no entities
    except (ValueError, ET.ParseError, AttributeError):
        return None
    return None


class DicomWebTransport(VendorTransport):
    """STOW-RS to one vendor's DICOMweb server (see the module docstring)."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError,)

    def __init__(self, vendor: str, settings: StowPeer) -> None:
        self.vendor = vendor
        self.settings = settings
        parts = urlsplit(settings.url)
        self.user = parts.username
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        """The URL without its user: what requests go to and messages show."""

    def __repr__(self) -> str:
        return f"DicomWebTransport({self.vendor!r}, {self.base_url})"

    def _client(self) -> httpx.Client:
        s = self.settings
        headers = {"Accept": "application/dicom+json, application/dicom+xml;q=0.9"}
        auth: httpx.Auth | None = None
        if s.token is not None and self.user is not None:
            auth = httpx.BasicAuth(self.user, s.token.get_secret_value())
        elif s.token is not None:
            headers["Authorization"] = f"Bearer {s.token.get_secret_value()}"
        return httpx.Client(
            headers=headers, auth=auth, timeout=httpx.Timeout(s.timeout), follow_redirects=False
        )

    def send(self, job: Job, files: Sequence[Path]) -> SendOutcome:
        """STOW every file to the vendor in batches of at most ``batch_bytes``, or raise."""
        if not files:
            raise StowRejectedError(f"job {job.id} has no instances to send")
        parts = _parts(files)
        batches = _batches(parts, self.settings.batch_bytes)
        log = LOG.bind(job_id=job.id, vendor=self.vendor)
        started = time.perf_counter()
        with self._client() as client:
            for number, batch in enumerate(batches, 1):
                self._post(client, batch)
                log.debug("stow batch stored", batch=number, of=len(batches), files=len(batch))
        seconds = time.perf_counter() - started
        return SendOutcome(
            instances=len(parts),
            bytes=sum(p.size for p in parts),
            seconds=seconds,
            detail=f"STOW-RS to {self.base_url}/studies in {len(batches)} request(s)",
        )

    def _post(self, client: httpx.Client, batch: list[_Part]) -> None:
        body = _Body(batch)
        url = f"{self.base_url}/studies"
        headers = {"Content-Type": body.content_type, "Content-Length": str(len(body))}
        try:
            response = client.post(url, content=iter(body), headers=headers)
        except httpx.TransportError as exc:
            raise StowUnavailableError(
                failure(f"STOW-RS to {url}", exc, self.settings.timeout)
            ) from exc
        self._check(url, response, batch)

    def _check(self, url: str, response: httpx.Response, batch: list[_Part]) -> None:
        found = verdict(response.status_code)
        parsed = parse_stow_response(response.headers.get("Content-Type", ""), response.content)
        failed = parsed[0] if parsed else []
        what = answered(f"STOW-RS to {url}", response, body=not failed)
        if found is Verdict.RETRY:
            raise StowUnavailableError(what)
        if found is Verdict.REFUSED:
            detail = f"; {len(failed)} failed: {_describe(failed)}" if failed else ""
            raise StowRejectedError(what + detail)
        if failed:
            message = f"{what} but {len(failed)} of {len(batch)} failed: {_describe(failed)}"
            if all(reason in RETRYABLE_REASONS for _, reason in failed):
                raise StowFailedError(message)
            raise StowRejectedError(message)
        stored = parsed[1] if parsed else None
        if stored is not None:
            missing = [p for p in batch if p.sop_instance_uid not in stored]
            if missing:
                raise StowFailedError(
                    f"{what} but its ReferencedSOPSequence lacks {len(missing)} of the "
                    f"{len(batch)} instances sent (first: {missing[0].path.name})"
                )


def _describe(failed: list[tuple[str, int | None]]) -> str:
    shown = [
        f"{uid} (FailureReason {'?' if reason is None else f'0x{reason:04X}'})"
        for uid, reason in failed[:3]
    ]
    return "; ".join(shown) + ("; …" if len(failed) > 3 else "")
