"""The site-to-hub link, the site's side: a study to a hub radbridge, in checked parts.

A site radbridge lists its hub as a vendor whose transport is ``type: radbridge``.
``send`` lays the job's files out as one stream, cut into compressed parts each
with its SHA-256, under a manifest with every instance's and the whole study's
SHA-256 (:mod:`adapters.link.parts`), then, at ``{url}/link/v1/transfers``
(:mod:`adapters.link.hub`):

1. ``POST`` the manifest: the hub opens the transfer, or answers with the one this
   manifest opened before, listing the parts it holds (a retry after a cut
   resumes there) or saying it is committed (the study is there: done);
2. ``PUT`` each part the hub lacks, with ``Content-Digest`` (idempotent by index and
   checksum), paced by the link's ``bandwidth``;
3. ``POST …/commit``: the hub checks every checksum and indexes the instances in
   one transaction; a commit whose answer was lost is answered the same again, so
   the study is at the hub exactly once. Parts the hub says are missing at the
   commit are sent again, once, in the same attempt.

Until the commit the study is invisible at the hub. A cut connection, a timeout,
408/425/429/5xx or a 409 after the second commit are :class:`LinkUnavailableError`
(the job retries with backoff and resumes from the parts the hub holds); any other
answer (401/403 wrong token, 404, 422 a study the hub refuses) is
:class:`LinkRejectedError` (the job is dead at once).

Settings (a vendor's ``transport:`` block): ``url`` (the hub's HTTP root), ``site``
(this site's id at the hub; default: the token's only site), ``timeout`` (seconds
for connecting and each read or write, default 30), ``part_bytes`` (raw bytes per
part, default 4 MiB), ``codec`` (``zstd`` or ``zlib``; default zstd),
``bandwidth`` (bytes per second over this link, e.g. ``2MB``, however many
worker processes and nodes send on it: each send gets ``bandwidth / concurrency``,
since the vendor's ``concurrency`` bounds its sends at once over all of them; default
unlimited), ``windows``
(``["20:00-06:00"]``, in ``site.timezone``: outside them the vendor's jobs wait,
pending, and a transfer begun inside one runs to its end), ``tls``
(``ca_certificates`` to check the hub, and ``certificate`` + ``private_key`` for
mutual TLS). The site's token at the hub comes only from the environment,
``RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN``.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import httpx
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from adapters.http_status import Verdict, answered, failure, url_endpoint, verdict
from adapters.link.pacing import TokenBucket, Window, Windows
from adapters.link.parts import (
    MAX_PART_BYTES,
    PART_BYTES,
    Codec,
    Manifest,
    StudyStream,
    TransferError,
    iter_chunks,
)
from adapters.tls import client_context
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome, TransportContext, TransportSettings, VendorTransport
from config.base import HttpUrl, LocatedErrors, Timeout

LOG = get_logger("radbridge.vendors.radbridge")
PATH = "/link/v1"


class LinkUnavailableError(VendorUnavailableError):
    """The hub could not take the study now (cut, down, busy, parts missing); retried,
    resuming from the parts the hub holds."""


class LinkRejectedError(VendorRejectedError):
    """The hub refused the study for good (wrong token, another site, a study it refuses)."""


class LinkTls(BaseModel):
    """TLS to the hub: its CA, and this site's certificate for mutual TLS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    key_password: SecretStr | None = None
    """The private key's password (environment only)."""


class RadbridgeLinkSettings(TransportSettings):
    """A vendor's ``transport:`` block for ``type: radbridge`` (see the module docstring)."""

    type: Literal["radbridge"] = "radbridge"
    url: HttpUrl
    """The hub's HTTP root (``https://hub.example:8443``)."""
    site: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    token: SecretStr | None = None
    """This site's API token at the hub (environment only)."""
    timeout: Timeout = 30.0
    part_bytes: Annotated[ByteSize, Field(ge=1024, le=MAX_PART_BYTES)] = ByteSize(PART_BYTES)
    codec: Codec | None = None
    bandwidth: Annotated[ByteSize, Field(ge=1024)] | None = None
    """Bytes per second; none: as fast as the network goes."""
    windows: list[str] = Field(default_factory=list)
    """When the link may start sending (``HH:MM-HH:MM`` in ``site.timezone``); none: always."""
    tls: LinkTls | None = None

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for text in value:
            Window.parse(text)  # a ValueError names the window and what is valid
        return value

    @field_validator("url")
    @classmethod
    def _root(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _token(self) -> Self:
        if self.token is None:
            raise LocatedErrors(
                [
                    (
                        ("token",),
                        "the hub needs this site's API token; valid: set "
                        "RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN to a token the hub made "
                        "with radbridge tokens create --role operator --site ID",
                    )
                ]
            )
        return self

    def build(self, context: TransportContext) -> RadbridgeLinkTransport:
        return RadbridgeLinkTransport(context.vendor, self, context)

    def endpoint(self) -> tuple[str, int] | None:
        return url_endpoint(self.url)


class RadbridgeLinkTransport(VendorTransport):
    """Send studies to a hub radbridge over the link (see the module docstring)."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError,)

    def __init__(
        self, vendor: str, settings: RadbridgeLinkSettings, context: TransportContext
    ) -> None:
        self.vendor = vendor
        self.settings = settings
        self.windows = Windows(settings.windows, context.timezone)
        self.concurrency = max(1, context.concurrency)
        #: Bytes per second for one send: the link's share for each of the at most
        #: ``concurrency`` sends at once (claims count them over every process and node).
        self.rate = (
            max(1, int(settings.bandwidth) // self.concurrency) if settings.bandwidth else None
        )

    def __repr__(self) -> str:
        return f"RadbridgeLinkTransport({self.vendor!r}, {self.settings.url})"

    def closed_until(self, now: datetime) -> datetime | None:
        """When the link's next window opens, outside its windows; None inside one."""
        return self.windows.closed_until(now)

    def _client(self) -> httpx.Client:
        s = self.settings
        token = s.token.get_secret_value() if s.token is not None else ""
        verify: Any = True
        if s.tls is not None:
            password = s.tls.key_password.get_secret_value() if s.tls.key_password else None
            verify = client_context(
                ca_certificates=s.tls.ca_certificates,
                certificate=s.tls.certificate,
                private_key=s.tls.private_key,
                key_password=password,
                setting=f"vendors.{self.vendor}.transport.tls",
            )
        return httpx.Client(
            base_url=f"{s.url}{PATH}",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(s.timeout),
            follow_redirects=False,
            verify=verify,
        )

    def send(self, job: Job, files: Sequence[Path]) -> SendOutcome:
        """Open (or resume) the study's transfer, send the parts the hub lacks, commit."""
        if not files:
            raise LinkRejectedError(f"job {job.id} has no instances to send")
        started = time.perf_counter()
        log = LOG.bind(job_id=job.id, vendor=self.vendor)
        try:
            stream = StudyStream(
                job.study_uid,
                files,
                codec=self.settings.codec,
                part_bytes=int(self.settings.part_bytes),
            )
            manifest = stream.manifest()
        except TransferError as exc:
            raise LinkRejectedError(f"job {job.id}: {exc}") from exc
        with self._client() as client:
            opened = self._open(client, manifest)
            transfer_id = str(opened["id"])
            if opened["state"] == "committed":
                log.info("the hub has the study already", transfer_id=transfer_id)
                return self._outcome(stream, started, f"transfer {transfer_id}: at the hub already")
            held = {int(i) for i in opened.get("received", [])}
            wanted = [p.index for p in manifest.parts if p.index not in held]
            bucket = TokenBucket(self.rate, full=False) if self.rate is not None else None
            sent = self._put(client, transfer_id, stream, manifest, wanted, bucket=bucket)
            answer = self._commit(client, transfer_id)
            missing = answer.get("missing")
            if isinstance(missing, list):
                log.warning("the hub lacks parts at the commit; sending them again", parts=missing)
                again = [int(i) for i in missing]
                sent += self._put(client, transfer_id, stream, manifest, again, bucket=bucket)
                answer = self._commit(client, transfer_id)
                if "missing" in answer:
                    raise LinkUnavailableError(
                        f"transfer {transfer_id}: the hub still lacks parts at the commit"
                    )
        resumed = f"; {len(held)} already at the hub (resumed)" if held else ""
        detail = (
            f"transfer {transfer_id} committed at {self.settings.url}: "
            f"{len(manifest.parts)} parts ({manifest.codec}), {sent} compressed bytes "
            f"sent{resumed}"
        )
        log.info("transfer committed", transfer_id=transfer_id, parts=len(manifest.parts))
        return self._outcome(stream, started, detail)

    @staticmethod
    def _outcome(stream: StudyStream, started: float, detail: str) -> SendOutcome:
        return SendOutcome(
            instances=len(stream.files),
            bytes=stream.size,
            seconds=time.perf_counter() - started,
            detail=detail,
        )

    def _request(
        self, client: httpx.Client, method: str, path: str, *, ok_409: bool = False, **kw: Any
    ) -> httpx.Response:
        where = f"{method} {self.settings.url}{PATH}{path}"
        try:
            response = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            words = failure(where, exc, self.settings.timeout)
            refused = self._tls_refusal(exc)
            raise LinkUnavailableError(f"{words}; {refused}" if refused else words) from exc
        found = verdict(response.status_code)
        if found is Verdict.DELIVERED or (ok_409 and response.status_code == 409):
            return response
        if found is Verdict.RETRY:
            raise LinkUnavailableError(answered(where, response))
        raise LinkRejectedError(answered(where, response))

    def _tls_refusal(self, error: httpx.HTTPError) -> str:
        """What a TLS failure means for this link, in words for the job's error ("" when
        ``error`` is not one).

        A hub that requires client certificates closes the connection in the handshake
        (TLS 1.2) or right after it, before any answer (TLS 1.3), when this site offers
        no certificate or one of a CA it does not trust; it sends no reason, so the
        site names both (a cut connection looks the same, and is retried the same).
        """
        if not self.settings.url.startswith("https://"):
            return ""
        tls = self.settings.tls
        mine = (
            f"this site's certificate {tls.certificate.name}"
            if tls is not None and tls.certificate is not None
            else "no certificate (none is set)"
        )
        setting = f"vendors.{self.vendor}.transport.tls"
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the hub's certificate is not trusted ({cause.verify_message}); valid: "
                f"{setting}.ca_certificates naming the CA that signed it"
            )
        silent = isinstance(error, httpx.RemoteProtocolError) and "without sending" in str(error)
        if isinstance(cause, ssl.SSLError) or silent:
            return (
                f"the hub closed the TLS connection without an answer: it refuses {mine} "
                f"(a hub requiring client certificates takes only those of its CA), or the "
                f"connection was cut; valid: {setting}.certificate and private_key issued by "
                "the hub's client CA"
            )
        return ""

    def _open(self, client: httpx.Client, manifest: Manifest) -> dict[str, Any]:
        body: dict[str, Any] = {"manifest": manifest.model_dump(mode="json")}
        if self.settings.site is not None:
            body["site"] = self.settings.site
        found: dict[str, Any] = self._request(client, "POST", "/transfers", json=body).json()
        return found

    def _put(
        self,
        client: httpx.Client,
        transfer_id: str,
        stream: StudyStream,
        manifest: Manifest,
        indexes: list[int],
        *,
        bucket: TokenBucket | None,
    ) -> int:
        """PUT the parts ``indexes``, paced by ``bucket``; the compressed bytes sent."""
        sent = 0
        for index in indexes:
            data = stream.part(index)
            digest = base64.b64encode(bytes.fromhex(manifest.parts[index].sha256)).decode()
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
                "Content-Digest": f"sha-256=:{digest}:",
            }
            self._request(
                client,
                "PUT",
                f"/transfers/{transfer_id}/parts/{index}",
                content=self._paced(data, bucket),
                headers=headers,
            )
            sent += len(data)
        return sent

    @staticmethod
    def _paced(data: bytes, bucket: TokenBucket | None) -> Iterator[bytes]:
        if bucket is None:
            yield data
            return
        for chunk in iter_chunks(data, bucket.chunk):
            bucket.take(len(chunk))
            yield chunk

    def _commit(self, client: httpx.Client, transfer_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._request(
            client, "POST", f"/transfers/{transfer_id}/commit", ok_409=True
        ).json()
        return found
