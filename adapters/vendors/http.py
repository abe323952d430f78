"""HTTP API push of a manifest; the vendor pulls the study from radbridge by WADO-RS.

``send`` mints a per-job token (``secrets.token_urlsafe(32)``; the store keeps
only its SHA-256, with the job id and an expiry of the vendor's ``timeout``),
then ``POST``s a JSON manifest to the vendor's ``url``. The vendor fetches the
instances from the WADO-RS endpoint radbridge serves for that job only
(:mod:`adapters.web.wado`) with ``Authorization: Bearer <token>``; the token
opens nothing once the job is done, dead, cancelled or failed, or after its
expiry, and a new attempt replaces it. The token is minted before the POST,
so a vendor may start fetching before it answers.

The manifest (``Content-Type: application/json``)::

    {
      "job_id": 42,                          # radbridge's job id
      "vendor": "cxrai",                     # the vendor's name in radbridge's configuration
      "product": "Chest X-ray triage",       # the vendor's product
      "priority": "routine",                 # stat | urgent | routine
      "study_instance_uid": "1.2.…",
      "accession_number": "A123" | null,
      "series": [                            # only the series this job sends
        {"series_instance_uid": "1.2.…", "modality": "CT" | null, "instances": 120}
      ],
      "patient": {"id": "P1", "issuer": "HOSP" | null},   # only with send_patient: true
      "wado_rs": "https://radbridge.example/wado/jobs/42",  # GET {wado_rs}/studies/{uid}
      "token": "…",                          # Bearer token for wado_rs, this job only
      "token_expires_at": "2024-05-01T08:15:00+00:00"
    }

Settings (a vendor's ``transport:`` block, ``type: http``): ``url`` (where
the manifest is POSTed), ``timeout`` (seconds to connect and for each read or
write, default 30), ``send_patient`` (default false). The vendor's own API
secret comes only from the environment,
``RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN``, sent as ``Authorization:
Bearer <secret>``. The settings also hand over ``public_url`` (``http.public_url``),
``database``, ``product`` and ``token_ttl`` (the vendor's ``timeout``).

Outcome of the POST:

- 200, 201, 202: delivered (the job waits for the vendor's result).
- 408, 429, 5xx, connection errors and timeouts: :class:`HttpUnavailableError`
  (retryable, with backoff).
- every other answer (other 4xx, redirects): :class:`HttpRejectedError` (the
  job is dead at once; 401/403 mean wrong credentials).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from sqlalchemy import Engine

from adapters.vendors import register
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError, transport_settings
from broker.model.errors import NotFoundError, StoreError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome
from broker.store import StudyStore, make_engine
from broker.store.job_tokens import JobTokens

LOG = get_logger("radbridge.vendors.http")

#: Answers to the manifest POST that mean the vendor took the job.
ACCEPTED = frozenset({200, 201, 202})
#: 4xx answers worth another try.
RETRYABLE_4XX = frozenset({408, 429})
#: Characters of the vendor's answer kept in an error message.
ANSWER_CHARS = 300


class HttpUnavailableError(VendorUnavailableError):
    """The vendor's API could not take the manifest now (down, 5xx, 408, 429, timeout)."""


class HttpRejectedError(VendorRejectedError):
    """The vendor's API refused the manifest for good (4xx, bad credentials, redirect)."""


def _http_url(value: str, example: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {value!r}; valid: {example}")
    return value.rstrip("/")


class HttpSettings(BaseModel):
    """A vendor's ``transport:`` block for ``type: http``, with what the settings add."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    """Where the manifest is POSTed."""
    token: SecretStr | None = None
    """The vendor API's bearer secret (environment only)."""
    timeout: float = Field(default=30.0, gt=0, le=3600)
    """Seconds to connect, and for each read or write on the socket."""
    send_patient: bool = False
    """Put the patient ID (and issuer) in the manifest."""
    public_url: str = Field(min_length=1)
    """radbridge's HTTP server as the vendor reaches it (``http.public_url``)."""
    database: SecretStr
    """The store's URL: tokens are kept there."""
    product: str = ""
    token_ttl: float = Field(default=900.0, gt=0)
    """Seconds a job's token works at most (the vendor's ``timeout``)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value, "https://ai.example/api/jobs")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return _http_url(value, "https://radbridge.example")


@register("http")
class HttpTransport:
    """POST a manifest; the vendor pulls by WADO-RS (see the module docstring)."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError,)

    def __init__(self, vendor: str, settings: HttpSettings, engine: Engine | None = None) -> None:
        self.vendor = vendor
        self.settings = settings
        self._engine = engine

    @classmethod
    def from_params(cls, vendor: str, params: Mapping[str, Any]) -> Self:
        """Build from a vendor's ``transport:`` settings; invalid ones raise ConfigError."""
        settings = transport_settings(HttpSettings, vendor, params)
        return cls(vendor, settings)

    def __repr__(self) -> str:
        return f"HttpTransport({self.vendor!r}, {self.settings.url})"

    @property
    def engine(self) -> Engine:
        """The store (opened on first use, so building a transport does no I/O)."""
        if self._engine is None:
            self._engine = make_engine(self.settings.database.get_secret_value())
        return self._engine

    def wado_rs_url(self, job: Job) -> str:
        """The WADO-RS root the vendor fetches ``job``'s study from."""
        return f"{self.settings.public_url}/wado/jobs/{job.id}"

    def manifest(self, job: Job, token: str, expires_at: str) -> dict[str, Any]:
        """The JSON body POSTed to the vendor (see the module docstring)."""
        try:
            study = StudyStore(self.engine).get_study(job.study_uid)
        except NotFoundError as exc:
            raise HttpRejectedError(f"job {job.id}: {exc}") from exc
        wanted = set(job.series_uids)
        series = [
            {
                "series_instance_uid": s.series_uid,
                "modality": s.modality,
                "instances": s.instance_count,
            }
            for s in study.series
            if not wanted or s.series_uid in wanted
        ]
        body: dict[str, Any] = {
            "job_id": job.id,
            "vendor": self.vendor,
            "product": self.settings.product,
            "priority": job.priority.value,
            "study_instance_uid": job.study_uid,
            "accession_number": study.accession_number,
            "series": series,
        }
        if self.settings.send_patient:
            body["patient"] = {"id": study.patient.patient_id, "issuer": study.patient.issuer}
        body |= {"wado_rs": self.wado_rs_url(job), "token": token, "token_expires_at": expires_at}
        return body

    def send(self, job: Job, files: Sequence[Path]) -> SendOutcome:
        """Issue the job's token and POST its manifest (see the module docstring), or raise."""
        if not files:
            raise HttpRejectedError(f"job {job.id} has no instances to send")
        try:
            size = sum(path.stat().st_size for path in files)
        except OSError as exc:
            raise HttpRejectedError(f"cannot read the spool for job {job.id}: {exc}") from exc
        started = time.perf_counter()
        try:
            token, expires_at = JobTokens(self.engine).issue(job.id, self.settings.token_ttl)
        except StoreError as exc:
            raise HttpUnavailableError(f"cannot issue a token for job {job.id}: {exc}") from exc
        body = self.manifest(job, token, expires_at.isoformat())
        self._post(body)
        seconds = time.perf_counter() - started
        LOG.info(
            "manifest accepted; the vendor pulls the study",
            job_id=job.id,
            vendor=self.vendor,
            series=len(body["series"]),
        )
        return SendOutcome(
            instances=len(files),
            bytes=size,
            seconds=seconds,
            detail=f"manifest POSTed to {self.settings.url}; WADO-RS at {body['wado_rs']}",
        )

    def _post(self, body: dict[str, Any]) -> None:
        s = self.settings
        headers = {"Accept": "application/json"}
        if s.token is not None:
            headers["Authorization"] = f"Bearer {s.token.get_secret_value()}"
        where = f"POST {s.url}"
        try:
            with httpx.Client(timeout=s.timeout, follow_redirects=False) as client:
                answer = client.post(s.url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise HttpUnavailableError(f"{where}: no answer in {s.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise HttpUnavailableError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        if answer.status_code in ACCEPTED:
            return
        text = answer.text[:ANSWER_CHARS].strip()
        message = f"{where} answered {answer.status_code}" + (f": {text}" if text else "")
        if answer.status_code in RETRYABLE_4XX or answer.status_code >= 500:
            raise HttpUnavailableError(message)
        if answer.is_redirect:
            message += f" (to {answer.headers.get('Location', '?')}; redirects are not followed)"
        raise HttpRejectedError(message)
