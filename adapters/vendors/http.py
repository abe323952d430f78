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
      "priors": [                            # only when the route asks for priors and some came
        {"study_instance_uid": "1.2.…",      # the patient's earlier study (same ID and issuer)
         "series": [{"series_instance_uid": "1.2.…", "instances": 212}],
         "wado_rs": "https://radbridge.example/wado/jobs/42/studies/1.2.…"}
      ],
      "wado_rs": "https://radbridge.example/wado/jobs/42",  # GET {wado_rs}/studies/{uid}
      "token": "…",                          # Bearer token for wado_rs, this job only
      "token_expires_at": "2024-05-01T08:15:00+00:00"
    }

Settings (a vendor's ``transport:`` block, ``type: http``): ``url`` (where
the manifest is POSTed), ``timeout`` (seconds to connect and for each read or
write, default 30), ``send_patient`` (default false).

A vendor with ``deidentify:`` gets the manifest of what it may pull: the study's,
series' and patient's pseudonyms, the accession number's pseudonym, and
``"deidentified": "basic+…"`` (the profile); its WADO-RS serves the de-identified
copies under those UIDs.

A route with ``priors:`` lists the priors radbridge fetched for the job; the job's token
opens each prior's ``wado_rs`` URL (and its series, instances and metadata below it) as
it opens the current study's, and nothing else. For a de-identified job the priors are
de-identified as the current study is, with the same keyed pseudonyms: a prior is listed
and served under its pseudonymous UIDs, and its patient gets the current study's patient
pseudonym (the same patient ID and issuer; priors of another issuer never come).

The vendor's own API secret comes only from the environment,
``RADBRIDGE_VENDORS__<NAME>__TRANSPORT__TOKEN``, sent as ``Authorization:
Bearer <secret>``. The service hands over the rest (:class:`TransportContext`):
radbridge's ``http.public_url``, the store's URL, the vendor's product, and
its ``timeout`` as the token's lifetime. Vendors of this transport pull from
radbridge's HTTP server, so it runs whenever one is configured.

Outcome of the POST (:mod:`adapters.http_status`):

- 2xx: delivered (the job waits for the vendor's result).
- 408, 425, 429, 5xx, connection errors and timeouts: :class:`HttpUnavailableError`
  (retryable, with backoff).
- every other answer (other 4xx, redirects): :class:`HttpRejectedError` (the
  job is dead at once; 401/403 mean wrong credentials).

Cancellation: when a correction hits a job already sent (an IOCM Rejection Note
for what it sent, an ADT merge or update of its patient, its order cancelled), or an
operator cancels it (the API, the console, the CLI), radbridge revokes the job's
token (nothing more can be fetched) and tells the vendor, as a write-back delivery
of its own (target ``vendor.NAME``: retried with backoff, ``dead`` when the retries
are exhausted, audited ``job.withdrawn``)::

    DELETE {url}/{job_id}                    # url: where the manifest was POSTed
    Content-Type: application/json
    {"job_id": 42, "vendor": "cxrai", "reason": "rejected"}
                                             # rejected | patient_changed | order_cancelled
                                             # | cancelled (an operator's)

2xx, 404 and 410 (the vendor no longer has the job) count as told; the rest of the
answers as for the manifest.

The vendor never gets the ``DELETE`` before the manifest it cancels. The token is issued
only while the job is still being sent (a job cancelled before gets no manifest, and
its vendor is told nothing unless an earlier attempt's manifest went out), and is marked
in flight until the POST is answered or failed (or, should the sender die, for
three times ``timeout`` and a few seconds); the ``DELETE`` waits for that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine

from adapters.deid.study import deidentified_manifest
from adapters.http_status import Verdict, answered, failure, url_endpoint, verdict
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from broker.model.errors import ConfigError, NotFoundError, StoreError
from broker.model.jobs import Job, JobChangedError
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome, TransportContext, TransportSettings, VendorTransport
from broker.store import StudyStore, make_engine
from broker.store.job_tokens import JobTokens
from broker.store.priors import PriorStore
from config.base import HttpUrl, Timeout

LOG = get_logger("radbridge.vendors.http")
#: A cancellation the vendor answers with one of these is done: it no longer has the job.
_GONE = frozenset({404, 410})
#: A vendor API without the cancellation endpoint: it cannot be told, asking again won't help.
_NO_CANCEL = frozenset({405, 501})
#: Seconds beyond the POST's own timeouts that a manifest counts as in flight after its
#: token is issued (building it reads the store).
POSTING_MARGIN = 5.0


class HttpUnavailableError(VendorUnavailableError):
    """The vendor's API could not take the manifest now (down, 5xx, 408, 429, timeout)."""


class HttpRejectedError(VendorRejectedError):
    """The vendor's API refused the manifest for good (4xx, bad credentials, redirect)."""


class HttpSettings(TransportSettings):
    """A vendor's ``transport:`` block for ``type: http`` (see the module docstring)."""

    type: Literal["http"] = "http"
    url: HttpUrl
    """Where the manifest is POSTed."""
    token: SecretStr | None = None
    """The vendor API's bearer secret (environment only)."""
    timeout: Timeout = 30.0
    """Seconds to connect, and for each read or write on the socket."""
    send_patient: bool = False
    """Put the patient ID (and issuer) in the manifest."""

    pulls_from_radbridge: ClassVar[bool] = True
    tells_cancellation: ClassVar[bool] = True

    def build(self, context: TransportContext) -> HttpTransport:
        return HttpTransport(context.vendor, self, context)

    def endpoint(self) -> tuple[str, int] | None:
        return url_endpoint(self.url)


class HttpTransport(VendorTransport):
    """POST a manifest; the vendor pulls by WADO-RS (see the module docstring).

    ``cancel`` revokes the job's token: the vendor can fetch nothing more.
    """

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError,)
    pushes_files = False  # the vendor pulls the job's study by WADO-RS

    def __init__(
        self,
        vendor: str,
        settings: HttpSettings,
        context: TransportContext,
        engine: Engine | None = None,
    ) -> None:
        if not context.database_url:
            raise ConfigError(
                f"vendors.{vendor}.transport: the http transport keeps job tokens in the "
                "store, and no database URL was given; valid: a TransportContext with "
                "database_url"
            )
        self.vendor = vendor
        self.settings = settings
        self.context = context
        self._engine = engine
        self._owns_engine = engine is None

    def __repr__(self) -> str:
        return f"HttpTransport({self.vendor!r}, {self.settings.url})"

    @property
    def engine(self) -> Engine:
        """The store (opened on first use, so building a transport does no I/O)."""
        if self._engine is None:
            self._engine = make_engine(self.context.database_url)
        return self._engine

    def wado_rs_url(self, job: Job) -> str:
        """The WADO-RS root the vendor fetches ``job``'s study from."""
        return f"{self.context.public_url.rstrip('/')}/wado/jobs/{job.id}"

    def manifest(
        self, job: Job, token: str, expires_at: str, files: Sequence[Path] = ()
    ) -> dict[str, Any]:
        """The JSON body POSTed to the vendor (see the module docstring); of the copies in
        ``files`` when they are radbridge's de-identified ones."""
        deidentified = deidentified_manifest(files)
        if deidentified is not None:
            pseudonymous: dict[str, Any] = {"job_id": job.id, "vendor": self.vendor}
            pseudonymous |= {"product": self.context.product, "priority": job.priority.value}
            pseudonymous |= deidentified
            if not self.settings.send_patient:
                pseudonymous.pop("patient")
            root = self.wado_rs_url(job)
            for prior in pseudonymous.get("priors", ()):
                prior["wado_rs"] = f"{root}/studies/{prior['study_instance_uid']}"
            return pseudonymous | {"wado_rs": root, "token": token, "token_expires_at": expires_at}
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
            "product": self.context.product,
            "priority": job.priority.value,
            "study_instance_uid": job.study_uid,
            "accession_number": study.accession_number,
            "series": series,
        }
        if self.settings.send_patient:
            body["patient"] = {"id": study.patient.patient_id, "issuer": study.patient.issuer}
        root = self.wado_rs_url(job)
        priors = PriorStore(self.engine).studies(job.id)
        if priors:
            body["priors"] = [
                {
                    "study_instance_uid": prior.study_uid,
                    "series": [
                        {"series_instance_uid": uid, "instances": count}
                        for uid, count in prior.series
                    ],
                    "wado_rs": f"{root}/studies/{prior.study_uid}",
                }
                for prior in priors
            ]
        body |= {"wado_rs": root, "token": token, "token_expires_at": expires_at}
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
        tokens = JobTokens(self.engine)
        try:
            token, expires_at = tokens.issue(
                job.id, self.context.result_timeout, posting_seconds=self.posting_seconds
            )
        except JobChangedError as exc:  # cancelled meanwhile: nothing goes, nobody is told
            raise HttpRejectedError(str(exc)) from exc
        except StoreError as exc:
            raise HttpUnavailableError(f"cannot issue a token for job {job.id}: {exc}") from exc
        try:
            body = self.manifest(job, token, expires_at.isoformat(), files)
            self._post(body)
        finally:
            try:
                tokens.posted(job.id)
            except StoreError:  # a cancellation waits until posting_until instead
                LOG.exception("the manifest's end not recorded", job_id=job.id)
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

    @property
    def posting_seconds(self) -> float:
        """The longest a manifest's POST may still reach the vendor after its token is
        issued: connecting, writing and the first read, each within ``timeout``, and a
        margin for building the manifest."""
        return 3 * self.settings.timeout + POSTING_MARGIN

    def _post(self, body: dict[str, Any]) -> None:
        self._call("POST", self.settings.url, body)

    def _call(
        self, method: str, url: str, body: dict[str, Any], done: frozenset[int] = frozenset()
    ) -> int:
        """One request with the vendor's secret; its status when it counts as done (2xx, or
        one of ``done``), else :class:`HttpUnavailableError` / :class:`HttpRejectedError`."""
        s = self.settings
        headers = {"Accept": "application/json"}
        if s.token is not None:
            headers["Authorization"] = f"Bearer {s.token.get_secret_value()}"
        where = f"{method} {url}"
        try:
            with httpx.Client(timeout=s.timeout, follow_redirects=False) as client:
                answer = client.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HttpUnavailableError(failure(where, exc, s.timeout)) from exc
        found = verdict(answer.status_code)
        if found is Verdict.DELIVERED or answer.status_code in done:
            return answer.status_code
        if found is Verdict.RETRY:
            raise HttpUnavailableError(answered(where, answer))
        raise HttpRejectedError(answered(where, answer))

    def cancel_url(self, job: Job) -> str:
        """Where the vendor is told ``job`` is cancelled: ``DELETE {url}/{job_id}`` (the
        manifests' URL as the collection of the vendor's jobs)."""
        return f"{self.settings.url.rstrip('/')}/{job.id}"

    def cancel(self, job: Job, reason: str = "") -> bool:
        """Revoke ``job``'s token, so the vendor can fetch nothing more of the study, and tell
        the vendor (``DELETE {url}/{job_id}``, see the module docstring), once a manifest
        of it still in flight was POSTed; 404 and 410 count as told (the vendor no longer
        has the job), 405 and 501 as done (its API has no cancellation; the token is
        revoked all the same)."""
        tokens = JobTokens(self.engine)
        try:
            tokens.wait_posted(job.id)  # the vendor gets the manifest first, then this
            tokens.revoke(job.id)
        except StoreError as exc:
            raise HttpUnavailableError(f"cannot revoke the token of job {job.id}: {exc}") from exc
        body = {"job_id": job.id, "vendor": self.vendor, "reason": reason or "cancelled"}
        status = self._call("DELETE", self.cancel_url(job), body, done=_GONE | _NO_CANCEL)
        LOG.info(
            "job cancelled at the vendor; its WADO-RS token is revoked"
            if status not in _NO_CANCEL
            else "the vendor takes no cancellation; the job's WADO-RS token is revoked",
            job_id=job.id,
            vendor=self.vendor,
            reason=body["reason"],
            status=status,
        )
        return True

    def close(self) -> None:
        """Let go of the store's connections, if this transport opened them."""
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()
