"""The settings schema: what radbridge's YAML file may contain.

Every field is validated by pydantic; unknown keys are errors. Secrets are
``SecretStr`` fields that may only come from the environment
(``RADBRIDGE_`` prefix, ``__`` between nested names).
"""

from __future__ import annotations

import codecs
import enum
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    ByteSize,
    Field,
    IPvAnyNetwork,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from broker.model.contract import ContractTerms, ProductTerms
from broker.model.deid import MIN_SECRET, SECRET_VARIABLE, Deidentify
from broker.model.errors import did_you_mean
from broker.model.logging import LogFile
from broker.model.priors import PRIOR_SOURCES, PriorsPolicy
from broker.model.signed_links import LinkPurpose
from broker.model.sites import SiteDirectory
from broker.model.vendor import TransportContext
from config.base import (
    AETitle,
    Duration,
    LocatedErrors,
    Port,
    SpaceAmount,
    Strict,
    space_bytes,
)
from config.contracts import Contract, ContractName, billing_terms
from config.critical import Critical, check_contact_lists
from config.monitoring import FinalReports, Monitoring
from config.plugins import TargetBlock
from config.sites import (
    Hl7Name,
    SiteId,
    SiteSettings,
    check_sites,
    site_directory,
    site_target_names,
)
from config.targets import Notifications, TargetName, check_notifications
from config.vendors import _KNOWN_TARGETS, _KNOWN_VENDORS, Route, Vendor, VendorName
from routing.compile import RuleSet, compile_routes


class AERole(enum.StrEnum):
    """What a called AE title of radbridge is for."""

    INGEST = "ingest"
    RESULTS = "results"


class Site(Strict):
    """``timezone``: the site's clock (routes, the console's and the CLI's times);
    ``language``: what the console and the CLI speak unless a user or ``RADBRIDGE_LANG``
    chooses otherwise."""

    name: str = "radbridge"
    timezone: str = "UTC"
    language: Literal["en", "zh_CN"] = "en"


class Storage(Strict):
    """Where radbridge keeps what it received.

    ``min_free_space`` is the free space the spool's file system keeps: bytes
    (``500MB``, ``2GiB``) or a share of the file system (``5%``). Below it the
    DICOM listener answers C-STOREs 0xA700 (out of resources) until space
    returns; orders (HL7, FHIR) are still taken.
    """

    spool: Path = Path("./var/spool")
    database: str = "sqlite:///./var/radbridge.db"
    database_password: SecretStr | None = None
    min_free_space: SpaceAmount = "2%"

    def min_free_bytes(self, total: int) -> int:
        """``min_free_space`` in bytes, for a file system of ``total`` bytes."""
        return space_bytes(self.min_free_space, total)

    @field_validator("database")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not scheme.startswith(("sqlite", "postgresql")):
            raise ValueError(
                f"unsupported database '{scheme}'; valid: sqlite:///PATH or "
                "postgresql://USER@HOST:PORT/DB (password in RADBRIDGE_STORAGE__DATABASE_PASSWORD)"
            )
        return _no_password_in(value, "database URL", "RADBRIDGE_STORAGE__DATABASE_PASSWORD")


NodeId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,23}$")]
"""A node's id: lower-case letters, digits, ``-`` and ``_`` (at most 24 characters)."""


class Node(Strict):
    """This ``radbridge serve`` among several that share one store, one bus and one spool.

    ``id`` (unset: the one node, as before) names the node's own folder in the shared
    spool (``SPOOL/nodes/ID``: what it is still receiving, and its lock) and makes its
    timers take turns with the other nodes' through claims in the store.
    """

    id: NodeId | None = None


def _no_password_in(url: str, what: str, variable: str) -> str:
    """``url`` unless it holds a password (secrets come only from the environment)."""
    if "@" in url and ":" in url.split("://", 1)[-1].split("@", 1)[0]:
        raise ValueError(
            f"the {what} holds a password; put it in the environment variable {variable} instead"
        )
    return url


def with_password(url: str, password: SecretStr | None) -> str:
    """``scheme://user@host…`` with ``password`` (URL-quoted) after the user."""
    if password is None or "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{quote(password.get_secret_value(), safe='')}@{host}"


class Bus(Strict):
    """The message bus: ``memory://`` in one process, ``amqp://USER@HOST:5672//`` to scale
    out (the password only from ``RADBRIDGE_BUS__PASSWORD``)."""

    url: str = "memory://"
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "radbridge"
    password: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        return _no_password_in(value, "bus URL", "RADBRIDGE_BUS__PASSWORD")

    def connection_url(self) -> str:
        """The URL to connect with, the password from the environment filled in."""
        return with_password(self.url, self.password)


class Delivery(Strict):
    """How jobs are retried, and whether ``radbridge serve`` delivers itself."""

    backoff_base_seconds: Annotated[float, Field(ge=0)] = 30.0
    backoff_cap_seconds: Annotated[float, Field(ge=0)] = 3600.0
    worker_in_service: bool = True
    lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """How long a worker's claim on a job or write-back holds unless renewed (every third of
    it, while the attempt runs): a worker that died loses its claims this long after."""

    @model_validator(mode="after")
    def _cap_above_base(self) -> Delivery:
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ValueError(
                f"backoff_cap_seconds ({self.backoff_cap_seconds:g}) is below "
                f"backoff_base_seconds ({self.backoff_base_seconds:g}); valid: cap >= base"
            )
        return self


class Listen(Strict):
    host: str = "127.0.0.1"
    port: Port = 11112


class HttpListen(Strict):
    host: str = "127.0.0.1"
    port: Port = 8080


class Transfers(Strict):
    """A hub's side of the site-to-hub link (``/link/v1/transfers``, README "Site-to-hub
    link"): a transfer no part came for in ``abandon_after`` is purged (its staged parts
    removed; the site starting again sends them again)."""

    abandon_after: Duration = 86400.0


class Http(Strict):
    """radbridge's own HTTP server (WADO-RS for vendors that pull studies).

    ``public_url`` is the address vendors use to reach it, written into the
    manifests of the ``http`` transport; by default ``http://HOST:PORT`` of
    ``listen``.
    """

    listen: HttpListen = HttpListen()
    public_url: str | None = None
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    """Addresses or networks of reverse proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` headers are believed (the client address and scheme then come
    from them); from anyone else those headers are ignored. Empty: believed from no one."""
    public_docs: bool = False
    """Serve ``/docs``, ``/redoc`` and ``/openapi.json`` to anyone; by default only to
    loopback clients (``/openapi.json`` also with any API token)."""
    tls: TLS | None = None
    """HTTPS: ``certificate`` and ``private_key`` (PEM; ``key_password`` from the
    environment); ``ca_certificates`` + ``require_client_certificate`` ask clients for one."""
    link_secret: SecretStr | None = None
    """Signs every link people open from a message without logging in: the one-click
    verdict links of notifications and the acknowledgement links of critical results
    (:mod:`broker.model.signed_links`; from the environment only:
    ``RADBRIDGE_HTTP__LINK_SECRET``, at least 32 characters). Unset: no links."""
    verdict_link_secret: SecretStr | None = None
    """Deprecated: the verdict links' own secret before ``link_secret`` (still read)."""
    verdict_link_days: Annotated[int, Field(ge=1, le=90)] = 14
    """How long a verdict link stays valid."""
    transfers: Transfers = Transfers()
    """Studies from site radbridges over the site-to-hub link."""

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _addresses_or_networks(cls, value: Any) -> Any:
        for entry in value if isinstance(value, list) else []:
            try:
                ipaddress.ip_network(str(entry))
            except ValueError as exc:
                raise ValueError(
                    f"not an address or network: {entry!r} ({exc}); valid: 10.0.0.5, "
                    "10.1.0.0/16 or ::1 (a proxy's address as it connects, not a host name)"
                ) from None
        return value

    @field_validator("link_secret", "verdict_link_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("too short to sign links; valid: at least 32 random characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {value!r}; valid: https://radbridge.example")
        return None if value is None else value.rstrip("/")

    @model_validator(mode="after")
    def _reachable(self) -> Http:
        if self.public_url is None and self.listen.host in ("0.0.0.0", "::"):
            raise ValueError(
                f"http.listen.host is {self.listen.host}, which vendors cannot reach; "
                "valid: set http.public_url to the address vendors use, e.g. "
                "https://radbridge.hospital.example"
            )
        return self

    def base_url(self) -> str:
        """Where vendors reach radbridge's HTTP server."""
        if self.public_url:
            return self.public_url
        host = self.listen.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.listen.port}"


class TLS(Strict):
    """TLS for the DICOM listener (DICOM PS3.15 B.1 style, TLS 1.2+)."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    key_password: SecretStr | None = None


class CalledAE(Strict):
    role: AERole
    stable_seconds: Annotated[float, Field(gt=0)] | None = None


class Peer(Strict):
    """A sender allowed in: calling AE title, optionally pinned to an address."""

    ae_title: AETitle
    host: str | None = None
    port: Port | None = None


class Dicom(Strict):
    """The DICOM listener: called AE titles, who may associate, and the limits that keep
    intake open against broken and hostile peers.

    A connection is *pending* from the moment it is accepted until its
    A-ASSOCIATE-RQ is accepted; it becomes an *association* then.
    ``max_associations`` bounds associations over all listener processes (more
    are rejected, local limit exceeded); ``max_pending_connections`` bounds
    pending connections and ``max_connections_per_peer`` every connection of
    one peer address (more are closed at once, before a byte is read). A
    pending connection has ``association_request_timeout`` seconds (default:
    10, or half of ``network_timeout`` if that is shorter) to deliver its
    whole A-ASSOCIATE-RQ; an association is aborted after
    ``network_timeout`` seconds of silence.
    """

    listen: Listen = Listen()
    ae_titles: dict[AETitle, CalledAE] = Field(
        default_factory=lambda: {"RADBRIDGE": CalledAE(role=AERole.INGEST)}
    )
    peers: list[Peer] = Field(default_factory=list)
    allow_any_peer: bool = False
    study_stable_seconds: Annotated[float, Field(gt=0)] = 10.0
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    max_pending_connections: Annotated[int, Field(ge=1, le=10000)] = 64
    max_connections_per_peer: Annotated[int, Field(ge=1, le=10000)] = 16
    processes: Annotated[int, Field(ge=0, le=64)] = 0
    max_pdu_size: Annotated[int, Field(ge=0)] = 262144
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    association_request_timeout: Annotated[float, Field(gt=0)] | None = None
    tls: TLS | None = None

    @property
    def request_timeout(self) -> float:
        """Seconds a pending connection has for its A-ASSOCIATE-RQ (the ARTIM timer)."""
        if self.association_request_timeout is not None:
            return self.association_request_timeout
        return min(10.0, self.network_timeout / 2)

    @field_validator("ae_titles", mode="before")
    @classmethod
    def _role_shorthand(cls, value: Any) -> Any:
        """Accept ``{RADBRIDGE: ingest}`` as well as ``{RADBRIDGE: {role: ingest}}``."""
        if isinstance(value, dict):
            return {k: ({"role": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _peers_or_open(self) -> Dicom:
        if not self.ae_titles:
            raise ValueError(
                "dicom.ae_titles is empty; name at least one, e.g. {RADBRIDGE: ingest}"
            )
        return self

    @model_validator(mode="after")
    def _request_before_network_timeout(self) -> Dicom:
        timeout = self.association_request_timeout
        if timeout is not None and timeout >= self.network_timeout:
            raise ValueError(
                f"dicom.association_request_timeout ({timeout:g} s) must be shorter than "
                f"dicom.network_timeout ({self.network_timeout:g} s); valid: e.g. 10"
            )
        return self


class Hl7Listen(Strict):
    host: str = "127.0.0.1"
    port: Port = 2575


class UnknownFacility(enum.StrEnum):
    """What the HL7 listener does with a message whose MSH-4 names no site."""

    HUB = "hub"
    """Taken as the hub's own (as without sites), with a log line."""
    REFUSE = "refuse"
    """Refused: AR with an ERR naming MSH-4; the message is kept with why."""


class Hl7(Strict):
    """The HL7 v2 orders interface: an MLLP listener for ORM, OMI and ADT messages.

    ``allow`` lists the hosts, addresses and CIDR networks that may connect;
    it may stay empty only while ``listen.host`` is a loopback address, unless
    ``allow_any_peer`` says so. ``default_charset`` is the Python codec for
    messages whose MSH-18 is empty. ``application`` and ``facility`` are
    radbridge's names in its acknowledgments (MSH-3 / MSH-4).
    """

    listen: Hl7Listen = Hl7Listen()
    allow: list[str] = Field(default_factory=list)
    allow_any_peer: bool = False
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 32
    idle_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0
    max_message_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    default_charset: str = "utf-8"
    tls: TLS | None = None
    application: Annotated[str, Field(min_length=1, pattern=r"^[^|^~\\&\r\n]+$")] = "RADBRIDGE"
    facility: Annotated[str, Field(min_length=1, pattern=r"^[^|^~\\&\r\n]+$")] = "RADBRIDGE"
    unknown_facility: UnknownFacility = UnknownFacility.HUB
    """With ``sites:``, an HL7 message whose MSH-4 is no site's ``hl7_facility``: taken as
    the hub's own (``hub``, logged), or refused with AR naming MSH-4 (``refuse``)."""
    hub_facilities: list[Hl7Name] = Field(default_factory=list)
    """MSH-4 values of the hub's own RIS: the hub's orders even with ``unknown_facility:
    refuse``."""

    @field_validator("allow")
    @classmethod
    def _hosts_or_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", entry):
                    raise ValueError(
                        f"not a host name, address or network: {entry!r}; valid: "
                        "ris.hospital.local, 10.1.2.3 or 10.1.0.0/16"
                    ) from None
        return value

    @field_validator("default_charset")
    @classmethod
    def _ascii_compatible_codec(cls, value: str) -> str:
        try:
            codec = codecs.lookup(value)
        except LookupError:
            codec = None
        if codec is None or "MSH|^~\\&\r".encode(codec.name) != b"MSH|^~\\&\r":
            raise ValueError(
                f"unknown or not ASCII-compatible character set {value!r}; valid: a Python "
                "codec name such as utf-8, gb18030, latin-1 or ascii"
            )
        return value

    @model_validator(mode="after")
    def _peers_named(self) -> Hl7:
        loopback = self.listen.host in ("127.0.0.1", "::1", "localhost")
        if not self.allow and not self.allow_any_peer and not loopback:
            raise ValueError(
                f"hl7.allow is empty but hl7.listen.host is {self.listen.host}; valid: list "
                "the RIS hosts or networks that may send (hl7.allow: [10.1.2.3, 10.2.0.0/16]), "
                "or set hl7.allow_any_peer: true"
            )
        return self


class Fhir(Strict):
    """Bounds of the FHIR orders interface (``/fhir`` on the HTTP server).

    A request body over ``max_body_bytes``, or a ``transaction`` / ``batch``
    Bundle of more than ``max_bundle_entries`` entries, is refused with 413 and
    an OperationOutcome before anything is validated or stored: the store has
    one writer, and a Bundle's orders are written in one transaction.
    """

    max_bundle_entries: Annotated[int, Field(ge=1, le=10_000)] = 500
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024


class Logging(Strict):
    """Log lines go to standard error (journald under systemd) unless ``file`` names a
    file: then it is rotated when it passes ``max_bytes`` and every ``rotate_every``
    (no age rotation if null), keeping ``backups`` old files; every radbridge
    process on the machine may write the same file."""

    level: str = "INFO"
    format: str = "auto"
    phi: bool = False
    file: Path | None = None
    max_bytes: ByteSize = ByteSize(50 * 1024 * 1024)
    backups: Annotated[int, Field(ge=0, le=1000)] = 10
    rotate_every: Duration | None = 86400.0

    def log_file(self) -> LogFile | None:
        """Where the lines go: a rotated file, or None for standard error."""
        if self.file is None:
            return None
        return LogFile(self.file, int(self.max_bytes), self.backups, self.rotate_every)

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        valid = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if value.upper() not in valid:
            raise ValueError(f"unknown log level '{value}'; valid: {', '.join(valid)}")
        return value.upper()

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        valid = ("auto", "console", "json")
        if value not in valid:
            raise ValueError(f"unknown log format '{value}'; valid: {', '.join(valid)}")
        return value


# ------------------------------------------------------------- vendors, routes


class Retention(Strict):
    """How long radbridge keeps what it no longer needs (null: for ever, the default).

    ``studies_after_done``: a study's instances in the spool, once every job of the
    study is finished (done or cancelled; a study no route took: once stable);
    ``studies_after_failed``: the same when a job of it is dead. The study stays
    listed, marked purged, with its jobs and history; its events, procedure step
    notices, corrections and pseudonyms go with its instances once nothing more happens
    to it (a patient's pseudonym once no study of that patient ID is kept).
    ``results_after_written_back``:
    result objects in the spool once every write-back of the result is finished.
    ``messages`` (the verbatim HL7/FHIR messages), ``job_history`` (the steps of jobs)
    and ``orders`` (completed, cancelled or discontinued, by their last change): rows of
    the store this old. Procedure step notices (MPPS) that never named a study are
    purged by their last change after ``studies_after_done``.
    ``audit_days``: audit rows older than this many days (default: kept for ever; a
    hospital keeps its audit trail six years or more); each purge of them is itself
    audited (``audit.purge``: how many rows, and older than when). A purge runs every
    ``interval``; ``radbridge purge --dry-run`` lists what would go.
    """

    studies_after_done: Duration | None = None
    studies_after_failed: Duration | None = None
    results_after_written_back: Duration | None = None
    messages: Duration | None = None
    job_history: Duration | None = None
    orders: Duration | None = None
    audit_days: Annotated[int, Field(ge=1)] | None = None
    interval: Duration = 3600.0

    @model_validator(mode="after")
    def _failed_kept_longer(self) -> Retention:
        done, failed = self.studies_after_done, self.studies_after_failed
        if done is not None and failed is not None and failed < done:
            raise ValueError(
                f"retention.studies_after_failed ({failed:g} s) is shorter than "
                f"retention.studies_after_done ({done:g} s); valid: failed studies kept as "
                "long or longer"
            )
        return self


class Privacy(Strict):
    """The installation's pseudonym secret, from the environment only
    (``RADBRIDGE_PRIVACY__PSEUDONYM_SECRET``, at least 16 characters): every vendor or
    route with ``deidentify:`` needs it, and changing it changes every pseudonym."""

    pseudonym_secret: SecretStr | None = None

    @field_validator("pseudonym_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET:
            raise ValueError(
                f"the pseudonym secret has {len(value.get_secret_value())} characters; "
                f"valid: at least {MIN_SECRET} (in {SECRET_VARIABLE})"
            )
        return value


class Settings(Strict):
    """The whole configuration of one radbridge installation."""

    site: Site = Site()
    sites: dict[SiteId, SiteSettings] = Field(default_factory=dict)
    """A hub's sending institutions (``config.sites``); empty: one implicit site."""
    node: Node = Node()
    """Which node this is when several share the store, the bus and the spool."""
    storage: Storage = Storage()
    bus: Bus = Bus()
    delivery: Delivery = Delivery()
    dicom: Dicom = Dicom()
    logging: Logging = Logging()
    retention: Retention = Retention()
    http: Http | None = None
    """radbridge's HTTP server; it runs when this block is given or a vendor uses ``http``."""
    hl7: Hl7 | None = None
    """The HL7 v2 orders listener (MLLP); it runs when this block is given."""
    fhir: Fhir = Fhir()
    """Bounds of the FHIR orders interface, served with the HTTP server."""
    vendors: dict[VendorName, Vendor] = Field(default_factory=dict)
    targets: dict[TargetName, TargetBlock] = Field(default_factory=dict)
    """Where results are written back (PACS, RIS, EMR); routes name them in ``write_back``."""
    notifications: Notifications = Notifications()
    critical: Critical = Critical()
    """Critical-result cases: who must acknowledge urgent results, by when, on which channels."""
    routes: list[Route] = Field(default_factory=list)
    privacy: Privacy = Privacy()
    contracts: dict[ContractName, Contract] = Field(default_factory=dict)
    """How each vendor product is paid for (``config.contracts``)."""
    final_reports: FinalReports = FinalReports()
    """How final reports are compared with AI findings (keywords, negations)."""
    monitoring: Monitoring = Monitoring()
    """The vendor watch: drift of positive rates, missing results."""
    _site_directory: SiteDirectory | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _vendors_for_routes(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        """Let each route's ``send`` check its vendor names against the ``vendors`` block."""
        vendors = data.get("vendors") if isinstance(data, dict) else None
        names = tuple(str(n) for n in vendors) if isinstance(vendors, dict) else ()
        targets = data.get("targets") if isinstance(data, dict) else None
        target_names = tuple(str(n) for n in targets) if isinstance(targets, dict) else ()
        sites = data.get("sites") if isinstance(data, dict) else None
        if isinstance(sites, dict):
            target_names += tuple(
                f"site.{name}"
                for site in sites.values()
                if isinstance(site, dict) and isinstance(site.get("targets"), dict)
                for name in site["targets"]
            )
        token = _KNOWN_VENDORS.set(names)
        targets_token = _KNOWN_TARGETS.set(target_names)
        try:
            return handler(data)
        finally:
            _KNOWN_TARGETS.reset(targets_token)
            _KNOWN_VENDORS.reset(token)

    @model_validator(mode="after")
    def _sites_unambiguous(self) -> Settings:
        """No sender or MSH-4 belongs to two sites; each site's timezone exists."""
        problems = check_sites(self.sites)
        for i, route in enumerate(self.routes):
            for j, site_id in enumerate(route.sites):
                if site_id not in self.sites:
                    known = list(self.sites)
                    problems.append(
                        (
                            ("routes", i, "sites", j),
                            f"unknown site '{site_id}'{did_you_mean(site_id, known)}; "
                            f"known sites: {', '.join(known) or 'none (add a sites: block)'}",
                        )
                    )
        for site_id, site in self.sites.items():
            zone = site.timezone
            try:
                if zone is not None:
                    ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(
                    (
                        ("sites", site_id, "timezone"),
                        f"unknown timezone '{zone}'; valid: an IANA name such as Asia/Shanghai",
                    )
                )
        if problems:
            raise LocatedErrors(problems)
        return self

    def site_directory(self) -> SiteDirectory:
        """The ``sites`` as intake, routing and write-back use them (made once)."""
        made = self._site_directory
        if made is None:
            hl7 = self.hl7
            made = self._site_directory = site_directory(
                self.sites,
                self.site.timezone,
                refuse_unknown_facility=hl7 is not None
                and hl7.unknown_facility is UnknownFacility.REFUSE,
                hub_facilities=hl7.hub_facilities if hl7 is not None else (),
            )
        return made

    def site_target_names(self) -> tuple[str, ...]:
        """The ``site.NAME`` write-backs routes may name."""
        return site_target_names(self.sites)

    @model_validator(mode="after")
    def _contact_lists(self) -> Settings:
        """The ``critical_contacts`` of routes and sites name lists of ``critical.lists``."""
        named: list[tuple[tuple[str | int, ...], str | None]] = [
            (("routes", i, "critical_contacts"), r.critical_contacts)
            for i, r in enumerate(self.routes)
        ]
        named += [
            (("sites", site_id, "critical_contacts"), site.critical_contacts)
            for site_id, site in self.sites.items()
        ]
        problems = check_contact_lists(self.critical, named)
        if problems:
            raise LocatedErrors(problems)
        return self

    @model_validator(mode="after")
    def _notification_targets(self) -> Settings:
        """``notifications.ris_status.target`` names an hl7 target."""
        problems = check_notifications(self.notifications, self.targets)
        if problems:
            raise LocatedErrors(problems)
        return self

    @model_validator(mode="after")
    def _priors_sources(self) -> Settings:
        """``routes[].priors.source`` names a ``dicom`` or ``dicomweb`` target."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, route in enumerate(self.routes):
            if route.priors is None:
                continue
            target = self.targets.get(route.priors.source)
            kinds = [n for n, t in self.targets.items() if t.type in PRIOR_SOURCES]
            valid = ", ".join(kinds) if kinds else "none (add a dicom or dicomweb target)"
            if target is None or target.type not in PRIOR_SOURCES:
                what = "no such target" if target is None else f"a {target.type} target"
                problems.append(
                    (
                        ("routes", i, "priors", "source"),
                        f"'{route.priors.source}' is {what}; "
                        f"valid: a dicom or dicomweb target: {valid}",
                    )
                )
        if problems:
            raise LocatedErrors(problems)
        return self

    @model_validator(mode="after")
    def _routes_consistent(self) -> Settings:
        """Route names are unique; routes evaluate time in the site timezone, so it must exist."""
        first: dict[str, int] = {}
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.routes:
            try:
                ZoneInfo(self.site.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(
                    (
                        ("site", "timezone"),
                        f"unknown timezone '{self.site.timezone}' (routes use it for time.*); "
                        "valid: an IANA name such as Asia/Shanghai, Europe/Paris or UTC",
                    )
                )
        for i, route in enumerate(self.routes):
            if route.name in first:
                problems.append(
                    (
                        ("routes", i, "name"),
                        f"route name '{route.name}' is used twice (first at "
                        f"routes.{first[route.name]}); valid: a unique name per route",
                    )
                )
            first.setdefault(route.name, i)
        if problems:
            raise LocatedErrors(problems)
        return self

    @model_validator(mode="after")
    def _secret_for_deidentify(self) -> Settings:
        """De-identification needs the pseudonym secret: refuse to start without it."""
        if self.privacy.pseudonym_secret is not None:
            return self
        users: list[tuple[str | int, ...]] = [
            ("vendors", name, "deidentify")
            for name, vendor in self.vendors.items()
            if vendor.deidentify is not None
        ]
        users += [
            ("routes", i, "deidentify")
            for i, route in enumerate(self.routes)
            if route.deidentify is not None
        ]
        if users:
            raise LocatedErrors(
                [
                    (
                        users[0],
                        "de-identification needs the installation's pseudonym secret, and "
                        f"none is set; valid: {SECRET_VARIABLE} in the environment (at least "
                        f"{MIN_SECRET} characters, kept as long as the pseudonyms are used)",
                    )
                ]
            )
        return self

    def priors(self, route: str) -> PriorsPolicy | None:
        """The priors ``route`` asks for, with its source's settings; None: none."""
        found = next((r for r in self.routes if r.name == route), None)
        if found is None or found.priors is None:
            return None
        asked = found.priors
        source = self.targets[asked.source]
        return PriorsPolicy(
            source=asked.source,
            source_type=source.type,
            source_params={
                key: value.get_secret_value() if isinstance(value, SecretStr) else value
                for key, value in source.model_dump().items()
            },
            count=asked.count,
            same_modality=asked.same_modality,
            body_part=asked.body_part,
            max_age_days=asked.max_age / 86400 if asked.max_age else None,
            wait=asked.wait,
        )

    def deidentify(self, vendor: str, route: str) -> Deidentify | None:
        """The de-identification of what ``route`` sends ``vendor``: the route's block,
        else the vendor's, else None (sent as received)."""
        for candidate in self.routes:
            if candidate.name == route and candidate.deidentify is not None:
                return candidate.deidentify
        found = self.vendors.get(vendor)
        return found.deidentify if found is not None else None

    def deidentifies(self, vendor: str) -> bool:
        """Whether ``vendor`` is sent de-identified studies (its own block or a route's):
        what it returns is then re-identified."""
        found = self.vendors.get(vendor)
        if found is not None and found.deidentify is not None:
            return True
        return any(r.deidentify is not None and vendor in r.send for r in self.routes)

    @model_validator(mode="after")
    def _contracts_name_vendors(self) -> Settings:
        """Every contract names a configured vendor without a ``billing:`` block."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        known = list(self.vendors)
        for name, contract in self.contracts.items():
            vendor = self.vendors.get(contract.vendor)
            if vendor is None:
                problems.append(
                    (
                        ("contracts", name, "vendor"),
                        f"unknown vendor '{contract.vendor}'{did_you_mean(contract.vendor, known)}"
                        f"; known vendors: {', '.join(known) or 'none'}",
                    )
                )
            elif vendor.billing is not None:
                problems.append(
                    (
                        ("contracts", name, "vendor"),
                        f"vendor '{contract.vendor}' has a billing: block, which is its contract "
                        "already; valid: one of them (move billing into contracts:, e.g. kind: "
                        "trial with quota: for a trial_quota)",
                    )
                )
            for i, site in enumerate(contract.sites):
                if site not in self.sites:
                    problems.append(
                        (
                            ("contracts", name, "sites", i),
                            f"unknown site '{site}'{did_you_mean(site, list(self.sites))}; "
                            f"valid: {', '.join(self.sites) or 'none (add it under sites:)'}",
                        )
                    )
            target = self.targets.get(contract.charge_to) if contract.charge_to else None
            if contract.charge_to and (target is None or target.type != "hl7"):
                hl7 = [n for n, t in self.targets.items() if t.type == "hl7"]
                problems.append(
                    (
                        ("contracts", name, "charge_to"),
                        f"'{contract.charge_to}' is not an hl7 target"
                        f"{did_you_mean(contract.charge_to, hl7)}; valid: "
                        f"{', '.join(hl7) or 'none (add an hl7 target under targets:)'}",
                    )
                )
        if problems:
            raise LocatedErrors(problems)
        return self

    def regulatory_label(self, vendor: str) -> str | None:
        """The product and its regulatory data in one line (SR, ORU), when configured."""
        found = self.vendors.get(vendor)
        if found is None or found.regulatory is None:
            return None
        return f"{found.product}: {found.regulatory.regulatory().label()}"

    def product_terms(self) -> dict[str, ProductTerms]:
        """Each vendor product's mode, contracts (its ``billing:`` read as one) and
        regulatory data, as routing reads them."""
        by_vendor: dict[str, list[ContractTerms]] = {name: [] for name in self.vendors}
        for name, contract in self.contracts.items():
            by_vendor.setdefault(contract.vendor, []).append(contract.terms(name))
        out = {}
        for name, vendor in self.vendors.items():
            contracts = by_vendor.get(name, [])
            if vendor.billing is not None:
                contracts = [billing_terms(name, vendor.billing)]
            out[name] = ProductTerms(
                vendor=name,
                mode=vendor.mode,
                contracts=tuple(contracts),
                regulatory=vendor.regulatory.regulatory() if vendor.regulatory else None,
            )
        return out

    def http_settings(self) -> Http:
        """The ``http`` block, or its defaults."""
        return self.http or Http()

    def link_secret(self, purpose: LinkPurpose) -> str | None:
        """The secret links for ``purpose`` are signed with: ``http.link_secret``, else the
        purpose's older setting (``http.verdict_link_secret``, ``critical.link_secret``);
        None: no such links."""
        http = self.http_settings()
        older = (
            http.verdict_link_secret
            if purpose is LinkPurpose.VERDICT
            else self.critical.link_secret
        )
        secret = http.link_secret or older
        return secret.get_secret_value() if secret is not None else None

    def deprecations(self) -> list[str]:
        """Settings that still work but have a newer name, each with what to use instead."""
        notes = []
        wins = " (http.link_secret is set and wins)" if self.http_settings().link_secret else ""
        older = {
            "http.verdict_link_secret (RADBRIDGE_HTTP__VERDICT_LINK_SECRET)": (
                self.http_settings().verdict_link_secret
            ),
            "critical.link_secret (RADBRIDGE_CRITICAL__LINK_SECRET)": self.critical.link_secret,
        }
        for name, value in older.items():
            if value is not None:
                notes.append(
                    f"{name} is deprecated; use http.link_secret (RADBRIDGE_HTTP__LINK_SECRET): "
                    f"one secret signs the verdict and acknowledgement links{wins}"
                )
        return notes

    def http_server_wanted(self) -> bool:
        """Whether radbridge serves HTTP: an ``http`` block, a vendor whose transport pulls
        over it, or a vendor with a results token (STOW-RS, findings callback)."""
        return self.http is not None or any(
            v.transport.pulls_from_radbridge or v.results.token is not None
            for v in self.vendors.values()
        )

    def transport_context(self, vendor: str) -> TransportContext:
        """What the service tells ``vendor``'s transport besides its own settings."""
        configured = self.vendors[vendor]
        return TransportContext(
            vendor=vendor,
            product=configured.product,
            result_timeout=configured.timeout,
            public_url=self.http_settings().base_url(),
            database_url=self.database_url(),
            timezone=self.site.timezone,
            concurrency=configured.concurrency,
        )

    def database_url(self) -> str:
        """The SQLAlchemy URL with the password from the environment filled in."""
        url = self.storage.database
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return with_password(url, self.storage.database_password)

    def stable_seconds_for(self, called_ae: str) -> float:
        """Quiet time after which a study sent to ``called_ae`` is complete."""
        ae = self.dicom.ae_titles.get(called_ae)
        if ae is not None and ae.stable_seconds is not None:
            return ae.stable_seconds
        return self.dicom.study_stable_seconds


SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("storage", "database_password"),
    ("bus", "password"),
    ("dicom", "tls", "key_password"),
    ("hl7", "tls", "key_password"),
    ("http", "tls", "key_password"),
    ("vendors", "*", "transport", "token"),
    ("targets", "*", "token"),
    ("notifications", "webhook", "token"),
    ("critical", "link_secret"),
    ("http", "link_secret"),
    ("critical", "channels", "*", "token"),
    ("vendors", "*", "results", "token"),
    ("privacy", "pseudonym_secret"),
)
"""Settings only the environment may set; ``*`` stands for any key (a vendor name)."""


def routing_rules(settings: Settings) -> RuleSet:
    """The configured routes compiled for :func:`routing.decide`, in the site timezone."""
    return compile_routes(
        [route.spec() for route in settings.routes],
        timezone=settings.site.timezone,
        vendor_kinds={name: vendor.kind for name, vendor in settings.vendors.items()},
        products=settings.product_terms(),
    )
