"""The settings schema: what radbridge's YAML file may contain.

Every field is validated by pydantic; unknown keys are errors. Secrets are
``SecretStr`` fields that may only come from the environment
(``RADBRIDGE_`` prefix, ``__`` between nested names).
"""

from __future__ import annotations

import enum
import re
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from broker.domain import Priority
from routing.compile import RuleSet, compile_routes
from routing.fields import Kind
from routing.parse import RuleError, did_you_mean, parse_series, parse_when
from routing.schema import (
    Conditions,
    OnNoOrder,
    RequireOrder,
    RouteSpec,
    SeriesSelector,
)

Port = Annotated[int, Field(ge=1, le=65535)]
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ]$")]


class Strict(BaseModel):
    """Base of every settings block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AERole(enum.StrEnum):
    """What a called AE title of radbridge is for."""

    INGEST = "ingest"
    RESULTS = "results"


class Site(Strict):
    name: str = "radbridge"
    timezone: str = "UTC"


class Storage(Strict):
    spool: Path = Path("./var/spool")
    database: str = "sqlite:///./var/radbridge.db"
    database_password: SecretStr | None = None

    @field_validator("database")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not scheme.startswith(("sqlite", "postgresql")):
            raise ValueError(
                f"unsupported database '{scheme}'; valid: sqlite:///PATH or "
                "postgresql://USER@HOST:PORT/DB (password in RADBRIDGE_STORAGE__DATABASE_PASSWORD)"
            )
        if "@" in value and ":" in value.split("://", 1)[-1].split("@", 1)[0]:
            raise ValueError(
                "the database URL holds a password; put it in the environment "
                "variable RADBRIDGE_STORAGE__DATABASE_PASSWORD instead"
            )
        return value


class Bus(Strict):
    url: str = "memory://"
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "radbridge"


class Delivery(Strict):
    """How jobs are retried, and whether ``radbridge serve`` delivers itself."""

    backoff_base_seconds: Annotated[float, Field(ge=0)] = 30.0
    backoff_cap_seconds: Annotated[float, Field(ge=0)] = 3600.0
    worker_in_service: bool = True

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


class Http(Strict):
    """radbridge's own HTTP server (WADO-RS for vendors that pull studies).

    ``public_url`` is the address vendors use to reach it, written into the
    manifests of the ``http`` transport; by default ``http://HOST:PORT`` of
    ``listen``.
    """

    listen: HttpListen = HttpListen()
    public_url: str | None = None

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
    listen: Listen = Listen()
    ae_titles: dict[AETitle, CalledAE] = Field(
        default_factory=lambda: {"RADBRIDGE": CalledAE(role=AERole.INGEST)}
    )
    peers: list[Peer] = Field(default_factory=list)
    allow_any_peer: bool = False
    study_stable_seconds: Annotated[float, Field(gt=0)] = 10.0
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    processes: Annotated[int, Field(ge=0, le=64)] = 0
    max_pdu_size: Annotated[int, Field(ge=0)] = 262144
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    tls: TLS | None = None

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


class Logging(Strict):
    level: str = "INFO"
    format: str = "auto"
    phi: bool = False

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


class LocatedErrors(ValueError):  # noqa: N818 - pydantic turns a ValueError into an error
    """Problems at locations below the value being validated.

    ``items`` holds (location relative to the validated value, message); the
    loader reports each at its own ``FILE:LINE``.
    """

    def __init__(self, items: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.items = items
        super().__init__("; ".join(message for _, message in items))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or text like ``30s``, ``15m``, ``1h``, ``1h30m``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(
        f"not a duration: {value!r}; valid: seconds as a number, or text like 30s, 15m, 1h, 1h30m"
    )


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
VendorName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
RouteName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.-]*$")]

_NUMERIC_VRS = frozenset({"DS", "IS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})


def dicom_tag(name: str) -> tuple[str, Kind]:
    """Resolve ``tag.<name>`` with pydicom's data dictionary (configuration time only).

    ``name`` is a keyword (``InstitutionName``) or a tag (``(0008,0080)``); the
    result is the keyword (``(GGGG,EEEE)`` for tags without one) and whether its
    values compare as numbers (VR DS, IS, US, …) or text.
    """
    from pydicom import datadict  # noqa: PLC0415 - only configuration needs the dictionary

    number = re.fullmatch(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?", name)
    if number:
        tag = int(number[1] + number[2], 16)
        known = datadict.dictionary_has_tag(tag)
        keyword = (datadict.keyword_for_tag(tag) if known else "") or (
            f"({number[1]},{number[2]})".upper()
        )
        vr = datadict.dictionary_VR(tag) if known else "UN"
    else:
        found = datadict.tag_for_keyword(name)
        if found is None:
            hint = did_you_mean(name, list(datadict.keyword_dict))
            raise ValueError(
                f"unknown DICOM keyword '{name}'{hint}; valid: a keyword of the DICOM "
                "data dictionary (e.g. InstitutionName, StationName, ProtocolName) or a "
                "tag written (gggg,eeee)"
            )
        keyword, vr = name, datadict.dictionary_VR(found)
    if vr == "SQ":
        raise ValueError(
            f"{name} is a sequence; conditions compare values; valid: a tag with a value"
        )
    vrs = {part.strip() for part in vr.split(" or ")}
    return keyword, Kind.NUMBER if vrs <= _NUMERIC_VRS else Kind.TEXT


def _when(value: Any) -> Conditions:
    if isinstance(value, Conditions):
        return value
    try:
        return parse_when(value, dicom_tag)
    except RuleError as exc:
        raise LocatedErrors(exc.problems) from exc


def _series(value: Any) -> SeriesSelector:
    if isinstance(value, SeriesSelector):
        return value
    try:
        return parse_series(value, dicom_tag)
    except RuleError as exc:
        raise LocatedErrors(exc.problems) from exc


class TransportType(enum.StrEnum):
    """How radbridge delivers studies to a vendor product."""

    DICOM = "dicom"
    DICOMWEB = "dicomweb"
    HTTP = "http"


_TRANSPORT_FIELDS: dict[TransportType, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TransportType.DICOM: (("ae_title", "host", "port"), ("calling_ae", "timeout", "max_pdu")),
    TransportType.DICOMWEB: (("url",), ("token", "timeout")),
    TransportType.HTTP: (("url",), ("token", "timeout", "send_patient")),
}
"""Per transport type: (required fields, optional fields)."""


class Transport(Strict):
    """Where and how a vendor receives studies. ``token`` only from the environment.

    ``timeout`` here is the network timeout of one connection or request (the
    vendor's ``timeout`` is how long its result may take).
    """

    type: TransportType
    ae_title: AETitle | None = None
    host: str | None = None
    port: Port | None = None
    calling_ae: AETitle | None = None
    max_pdu: Annotated[int, Field(ge=0)] | None = None
    url: str | None = None
    token: SecretStr | None = None
    timeout: Duration | None = None
    send_patient: bool | None = None
    """``http``: put the patient ID in the manifest (default: no)."""
    _context: dict[str, Any] = PrivateAttr(default_factory=dict)
    """What a transport needs from the rest of the settings (set by :class:`Settings`)."""

    def params(self) -> dict[str, Any]:
        """The fields set for this transport type, for the transport adapter (token kept secret).

        An ``http`` transport also gets ``public_url``, ``database`` (secret),
        ``product`` and ``token_ttl`` (the vendor's ``timeout``) from the settings.
        """
        return {
            **{
                name: getattr(self, name)
                for name in type(self).model_fields
                if name != "type" and getattr(self, name) is not None
            },
            **self._context,
        }

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        valid = [t.value for t in TransportType]
        if isinstance(value, str) and value not in valid:
            raise ValueError(
                f"no such vendor transport '{value}'{did_you_mean(value, valid)}; "
                f"valid: {', '.join(valid)}"
            )
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {value!r}; valid: https://host/path")
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> Transport:
        required, optional = _TRANSPORT_FIELDS[self.type]
        problems: list[tuple[tuple[str | int, ...], str]] = []
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            problems.append(
                (
                    (),
                    f"a {self.type} transport needs {', '.join(missing)}; "
                    f"valid: {{type: {self.type}, {', '.join(f'{n}: …' for n in required)}}}",
                )
            )
        for name in type(self).model_fields:
            if (
                name != "type"
                and getattr(self, name) is not None
                and name not in required + optional
            ):
                problems.append(
                    (
                        (name,),
                        f"{name} is not used by the {self.type} transport; "
                        f"valid: {', '.join(('type', *required, *optional))}",
                    )
                )
        if problems:
            raise LocatedErrors(problems)
        return self


class BillingUnit(enum.StrEnum):
    """What a vendor charges for."""

    STUDY = "study"
    SERIES = "series"
    BUNDLE = "bundle"


class Billing(Strict):
    """How use of a product is counted and charged; ``trial_quota`` free uses first."""

    unit: BillingUnit = BillingUnit.STUDY
    price: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    trial_quota: Annotated[int, Field(ge=0)] | None = None


class Vendor(Strict):
    """One AI vendor product radbridge delivers studies to.

    ``kind`` says what the product does (e.g. ``lung-nodule-ct``): vendors of
    the same kind overlap, which ``exclusive`` routes use; by default each
    vendor is its own kind. ``retries`` is the maximum number of attempts.
    """

    product: Annotated[str, Field(min_length=1)]
    kind: Annotated[str, Field(min_length=1)] | None = None
    transport: Transport
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 1
    timeout: Duration = 900.0
    retries: Annotated[int, Field(ge=1, le=100)] = 5
    billing: Billing | None = None


class RequireOrderSettings(Strict):
    """Wait for the order before routing; then route on the images alone, or skip."""

    wait: Duration
    then: OnNoOrder = OnNoOrder.ROUTE_ON_IMAGES


_KNOWN_VENDORS: ContextVar[tuple[str, ...] | None] = ContextVar("known_vendors", default=None)


class Route(Strict):
    """A routing rule: when a study matches ``when``, send it to the ``send`` vendors."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: RouteName
    when: Annotated[Conditions, PlainValidator(_when)]
    send: Annotated[list[str], Field(min_length=1)]
    series: Annotated[SeriesSelector, PlainValidator(_series)] = SeriesSelector()
    priority: Priority = Priority.ROUTINE
    stable_seconds: Annotated[float, Field(gt=0)] | None = None
    deadline: Duration | None = None
    write_back: list[str] = Field(default_factory=list)
    exclusive: bool = False
    fallback: bool = False
    resend_updates: bool = False
    require_order: RequireOrderSettings | None = None

    @field_validator("send")
    @classmethod
    def _known_vendors(cls, value: list[str]) -> list[str]:
        known = _KNOWN_VENDORS.get()
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, name in enumerate(value):
            if known is not None and name not in known:
                listed = ", ".join(known) if known else "none (add a vendors: block)"
                problems.append(
                    (
                        (i,),
                        f"unknown vendor '{name}'{did_you_mean(name, known)}; "
                        f"known vendors: {listed}",
                    )
                )
            elif name in value[:i]:
                problems.append(((i,), f"vendor '{name}' is listed twice"))
        if problems:
            raise LocatedErrors(problems)
        return value

    def spec(self) -> RouteSpec:
        """The route as routing uses it (durations in seconds)."""
        order = self.require_order
        return RouteSpec(
            name=self.name,
            when=self.when,
            send=tuple(self.send),
            series=self.series,
            priority=self.priority,
            stable_seconds=self.stable_seconds,
            deadline_seconds=self.deadline,
            write_back=tuple(self.write_back),
            exclusive=self.exclusive,
            fallback=self.fallback,
            resend_updates=self.resend_updates,
            require_order=RequireOrder(order.wait, order.then) if order else None,
        )


class Settings(Strict):
    """The whole configuration of one radbridge installation."""

    site: Site = Site()
    storage: Storage = Storage()
    bus: Bus = Bus()
    delivery: Delivery = Delivery()
    dicom: Dicom = Dicom()
    logging: Logging = Logging()
    http: Http | None = None
    """radbridge's HTTP server; it runs when this block is given or a vendor uses ``http``."""
    vendors: dict[VendorName, Vendor] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _vendors_for_routes(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        """Let each route's ``send`` check its vendor names against the ``vendors`` block."""
        vendors = data.get("vendors") if isinstance(data, dict) else None
        names = tuple(str(n) for n in vendors) if isinstance(vendors, dict) else ()
        token = _KNOWN_VENDORS.set(names)
        try:
            return handler(data)
        finally:
            _KNOWN_VENDORS.reset(token)

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
    def _http_transport_context(self) -> Settings:
        """Give each ``http`` transport what its manifests and tokens need."""
        for vendor in self.vendors.values():
            if vendor.transport.type is TransportType.HTTP:
                vendor.transport._context = {
                    "public_url": self.http_settings().base_url(),
                    "database": SecretStr(self.database_url()),
                    "product": vendor.product,
                    "token_ttl": vendor.timeout,
                }
        return self

    def http_settings(self) -> Http:
        """The ``http`` block, or its defaults."""
        return self.http or Http()

    def http_server_wanted(self) -> bool:
        """Whether radbridge serves HTTP: an ``http`` block, or a vendor that pulls over it."""
        return self.http is not None or any(
            v.transport.type is TransportType.HTTP for v in self.vendors.values()
        )

    def database_url(self) -> str:
        """The SQLAlchemy URL with the password from the environment filled in."""
        url = self.storage.database
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        password = self.storage.database_password
        if password is not None and "://" in url and "@" in url:
            scheme, rest = url.split("://", 1)
            user, host = rest.split("@", 1)
            url = f"{scheme}://{user}:{quote(password.get_secret_value(), safe='')}@{host}"
        return url

    def stable_seconds_for(self, called_ae: str) -> float:
        """Quiet time after which a study sent to ``called_ae`` is complete."""
        ae = self.dicom.ae_titles.get(called_ae)
        if ae is not None and ae.stable_seconds is not None:
            return ae.stable_seconds
        return self.dicom.study_stable_seconds


SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("storage", "database_password"),
    ("dicom", "tls", "key_password"),
    ("vendors", "*", "transport", "token"),
)
"""Settings only the environment may set; ``*`` stands for any key (a vendor name)."""


def routing_rules(settings: Settings) -> RuleSet:
    """The configured routes compiled for :func:`routing.decide`, in the site timezone."""
    return compile_routes(
        [route.spec() for route in settings.routes],
        timezone=settings.site.timezone,
        vendor_kinds={name: vendor.kind for name, vendor in settings.vendors.items()},
    )
