"""Settings of the AI vendors and the routes: transports, billing, durations, conditions."""

from __future__ import annotations

import enum
import re
from contextvars import ContextVar
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from broker.model.domain import Priority
from broker.model.errors import did_you_mean
from config.base import AETitle, LocatedErrors, Port, Strict
from routing.fields import Kind
from routing.parse import RuleError, parse_series, parse_when
from routing.schema import (
    Conditions,
    OnNoOrder,
    RequireOrder,
    RouteSpec,
    SeriesSelector,
)

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


class QuotaAction(enum.StrEnum):
    """What happens once a vendor's ``trial_quota`` free studies are used up."""

    BILL = "bill"
    """Keep routing; further studies are billable (a trial before a paid contract)."""
    STOP_ROUTING = "stop_routing"
    """Routing sends the vendor nothing more (and says so in the log)."""
    MARK_UNBILLABLE = "mark_unbillable"
    """Keep routing; further studies are counted but marked not billable."""


class Billing(Strict):
    """How use of a product is counted and charged; ``trial_quota`` free uses first.

    ``unit``: ``study`` (1 per delivered study), ``series`` (1 per series
    sent) or ``bundle`` (1 per study for all products of the same ``bundle``
    together; default bundle: the vendor's name). ``when_quota_used``: see
    :class:`QuotaAction`.
    """

    unit: BillingUnit = BillingUnit.STUDY
    price: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    trial_quota: Annotated[int, Field(ge=0)] | None = None
    when_quota_used: QuotaAction = QuotaAction.BILL
    bundle: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class VendorResults(Strict):
    """How a vendor returns results (see README, "Results from vendors").

    ``ae_titles``: the calling AE titles the vendor C-STOREs results from, when
    not its ``transport.ae_title``. ``token``: the secret of its STOW-RS and
    findings callbacks, from the environment only
    (``RADBRIDGE_VENDORS__<NAME>__RESULTS__TOKEN``). A result is complete when
    the vendor says so, when ``expected_objects`` objects are in, or after
    ``quiet_seconds`` without a new object.
    """

    ae_titles: list[AETitle] = Field(default_factory=list)
    token: SecretStr | None = None
    expected_objects: Annotated[int, Field(ge=1)] | None = None
    quiet_seconds: Duration = 30.0


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
    results: VendorResults = VendorResults()


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

    @field_validator("write_back")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        from config.targets import check_write_back  # noqa: PLC0415 - it imports this module

        return check_write_back(value)

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
