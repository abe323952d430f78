"""Settings of the AI vendors and the routes: transports, billing, durations, conditions."""

from __future__ import annotations

import enum
import re
from contextvars import ContextVar
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    field_validator,
    model_validator,
)

from broker.model.contract import Regulatory
from broker.model.deid import Deidentify
from broker.model.domain import Priority
from broker.model.errors import did_you_mean
from broker.model.mode import Mode
from broker.model.reconciliation import DEFAULT_THRESHOLD, ReconcileMode
from config.base import AETitle, Duration, LocatedErrors, Strict
from config.base import parse_duration as parse_duration  # noqa: PLC0414 - re-exported
from config.monitoring import Canary
from config.plugins import TransportBlock
from routing.fields import Kind
from routing.parse import RuleError, parse_series, parse_when
from routing.schema import (
    Conditions,
    ExpectedSeries,
    OnIncomplete,
    OnNoOrder,
    PriorsAsked,
    RequireOrder,
    RouteSpec,
    SeriesSelector,
)

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


def _series_conditions(value: Any) -> Conditions:
    if isinstance(value, Conditions):
        return value
    if not isinstance(value, dict):
        raise ValueError(
            f"an expected series is a mapping of series conditions, got {value!r}; valid: "
            "e.g. {description: {regex: perfusion}, modality: CT}"
        )
    try:
        return parse_series(value, dicom_tag).conditions
    except RuleError as exc:
        raise LocatedErrors(exc.problems) from exc


class ExpectSettings(Strict):
    """The series a complete study must hold for a route (``expect``).

    ``series`` names each expected series with its series conditions (the
    fields of a route's series selector: ``modality``, ``description``,
    ``slice_thickness``, ``image_type``, ``contrast_agent``,
    ``instance_count``…). The study is complete as soon as every one is in;
    when they are not all in ``deadline`` after the study's first instance,
    ``on_timeout`` says what happens: ``send_incomplete`` (complete it, send
    what came), ``skip`` (complete it, this route does not send it) or
    ``wait`` (keep waiting for them). The history names the missing series.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    series: Annotated[
        dict[
            Annotated[str, Field(min_length=1, max_length=64)],
            Annotated[Conditions, PlainValidator(_series_conditions)],
        ],
        Field(min_length=1),
    ]
    deadline: Duration = 600.0
    on_timeout: OnIncomplete = OnIncomplete.SEND_INCOMPLETE

    def spec(self) -> ExpectedSeries:
        return ExpectedSeries(tuple(self.series.items()), self.deadline, self.on_timeout)


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


class RegulatorySettings(Strict):
    """A product's regulatory data, shown with its results and named in the SR and ORU.

    A product whose NMPA ``certificate`` is missing or outside ``valid_from`` ..
    ``valid_until`` runs in shadow mode (nothing written back) unless
    ``live_without_certificate: true`` (audited at every load).
    """

    nmpa_class: Literal["II", "III"] | None = None
    certificate: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    fda: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    ce: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    intended_use: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    live_without_certificate: bool = False

    @field_validator("nmpa_class", mode="before")
    @classmethod
    def _roman(cls, value: Any) -> Any:
        return {2: "II", 3: "III", "2": "II", "3": "III"}.get(value, value)

    def regulatory(self) -> Regulatory:
        """The data as routing and the reports read it."""
        return Regulatory(**self.model_dump())


class Vendor(Strict):
    """One AI vendor product radbridge delivers studies to.

    ``kind`` says what the product does (e.g. ``lung-nodule-ct``): vendors of
    the same kind overlap, which ``exclusive`` routes and contracts' ``fallback``
    use; by default each vendor is its own kind. ``retries`` is the maximum
    number of attempts. ``mode: shadow`` runs the product as a silent trial
    (:mod:`broker.model.mode`): sent and its results kept, never written back,
    never billed.
    """

    product: Annotated[str, Field(min_length=1)]
    kind: Annotated[str, Field(min_length=1)] | None = None
    transport: TransportBlock
    """How studies get to the vendor: ``{type: NAME, …}``, NAME a registered transport."""
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 1
    timeout: Duration = 900.0
    retries: Annotated[int, Field(ge=1, le=100)] = 5
    billing: Billing | None = None
    results: VendorResults = VendorResults()
    mode: Mode = Mode.LIVE
    deidentify: Deidentify | None = None
    """De-identify what this vendor is sent (off when absent); a route's own block wins."""
    regulatory: RegulatorySettings | None = None
    canary: Canary | None = None
    """A periodic synthetic study that tests the whole loop (off when absent)."""


class PriorsSettings(Strict):
    """``routes[].priors``: earlier studies of the same patient (patient ID and issuer),
    fetched from the ``source`` PACS (a ``dicom`` target: C-FIND, C-GET; a ``dicomweb``
    one: QIDO-RS, WADO-RS) and sent along with the study; see :mod:`broker.model.priors`."""

    source: Annotated[str, Field(min_length=1)]
    count: Annotated[int, Field(ge=1, le=20)] = 1
    same_modality: bool = True
    body_part: bool = False
    """Only priors with a series of the study's body part."""
    max_age: Duration | None = None
    """How far back (``730d``); none: any age."""
    wait: Duration = 30.0
    """How long a slow or unreachable PACS may delay the job; then it goes without priors."""

    def spec(self) -> PriorsAsked:
        """What the route asks for, as ``routes explain`` says it."""
        return PriorsAsked(
            self.source,
            self.count,
            self.same_modality,
            self.body_part,
            self.max_age,
            self.wait,
        )


class RequireOrderSettings(Strict):
    """Wait for the order before routing; then route on the images alone, or skip."""

    wait: Duration
    then: OnNoOrder = OnNoOrder.ROUTE_ON_IMAGES


class DiscordanceSettings(Strict):
    """When two products of a study disagree on a finding code (see README, "Several AI
    products on one study"): probabilities on both sides of ``threshold`` disagree;
    ``oru_note: true`` adds an NTE naming the disagreement to the ORU^R01."""

    threshold: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_THRESHOLD
    oru_note: bool = False


_KNOWN_VENDORS: ContextVar[tuple[str, ...] | None] = ContextVar("known_vendors", default=None)
_KNOWN_TARGETS: ContextVar[tuple[str, ...] | None] = ContextVar("known_targets", default=None)
"""The vendor and target names of the settings being validated (set by ``Settings``)."""


class Route(Strict):
    """A routing rule: when a study matches ``when``, send it to the ``send`` vendors.

    ``mode: shadow`` keeps every result of the route from its ``write_back``
    targets and notifications (a silent trial; see :mod:`broker.model.mode`).
    ``owners`` names the vendor (of ``send``) that owns a finding code on this route
    (``SCT:1386000`` or the code value); ``reconcile: combined`` writes one combined
    answer of all its products (:mod:`broker.model.reconciliation`). ``fallback_to``
    names the vendors a contract's ``fallback`` tries, in order: a list for every vendor
    of ``send``, or per vendor (``{lungai: [lungb, lungc]}``); without it the fallback
    is another vendor of the same kind.
    """

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
    mode: Mode = Mode.LIVE
    deidentify: Deidentify | None = None
    """De-identify what this route sends (instead of each vendor's own ``deidentify``)."""
    expect: ExpectSettings | None = None
    """Expected series: complete the study as soon as they are all in (see README)."""
    owners: dict[Annotated[str, Field(min_length=1, max_length=160)], str] = Field(
        default_factory=dict
    )
    reconcile: ReconcileMode = ReconcileMode.SEPARATE
    discordance: DiscordanceSettings = DiscordanceSettings()
    sites: list[Annotated[str, Field(min_length=1, max_length=24)]] = Field(default_factory=list)
    """Only studies of these sites (ids of ``sites:``); empty: every site's."""
    priors: PriorsSettings | None = None
    """Fetch the patient's prior studies from a PACS and send them along (see README)."""
    critical_contacts: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """The escalation list (of ``critical.lists``) this route's critical cases use."""
    fallback_to: list[str] | dict[str, list[str]] = Field(default_factory=list)

    def fallback_orders(self) -> dict[str, list[str]]:
        """Per vendor of ``send``: the vendors its contract's fallback tries, in order."""
        if isinstance(self.fallback_to, dict):
            return dict(self.fallback_to)
        return {vendor: list(self.fallback_to) for vendor in self.send} if self.fallback_to else {}

    @model_validator(mode="after")
    def _fallbacks_are_known(self) -> Route:
        known = _KNOWN_VENDORS.get()
        problems: list[tuple[tuple[str | int, ...], str]] = []
        given = self.fallback_to
        if isinstance(given, dict):
            for vendor in given:
                if vendor not in self.send:
                    problems.append(
                        (
                            ("fallback_to", vendor),
                            f"'{vendor}' is not a vendor of this route; valid: "
                            f"{', '.join(self.send)}",
                        )
                    )
        lists: list[tuple[str | None, list[str]]] = (
            list(given.items()) if isinstance(given, dict) else [(None, given)]
        )
        for sent, order in lists:
            for i, name in enumerate(order):
                loc: tuple[str | int, ...] = (
                    ("fallback_to", i) if sent is None else ("fallback_to", sent, i)
                )
                if known is not None and name not in known:
                    problems.append((loc, f"unknown vendor '{name}'{did_you_mean(name, known)}"))
                elif name in order[:i]:
                    problems.append((loc, f"vendor '{name}' is listed twice"))
                elif name == sent:
                    problems.append((loc, f"'{name}' cannot fall back to itself"))
        if problems:
            raise LocatedErrors(problems)
        return self

    @model_validator(mode="after")
    def _owners_are_sent_to(self) -> Route:
        problems: list[tuple[tuple[str | int, ...], str]] = [
            (
                ("owners", code),
                f"owner '{vendor}' is not a vendor of this route; valid: {', '.join(self.send)}",
            )
            for code, vendor in self.owners.items()
            if vendor not in self.send
        ]
        if problems:
            raise LocatedErrors(problems)
        return self

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
        known = _KNOWN_TARGETS.get()
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, name in enumerate(value):
            if known is not None and name not in known:
                listed = ", ".join(known) if known else "none (add a targets: block)"
                problems.append(
                    (
                        (i,),
                        f"unknown write-back target '{name}'{did_you_mean(name, known)}; "
                        f"known targets: {listed}",
                    )
                )
            elif name in value[:i]:
                problems.append(((i,), f"target '{name}' is listed twice"))
        if problems:
            raise LocatedErrors(problems)
        return value

    def spec(self) -> RouteSpec:
        """The route as routing uses it (durations in seconds)."""
        order = self.require_order
        when = self.when
        if self.sites:
            limit = parse_when({"site": {"in": list(self.sites)}}, dicom_tag)
            when = Conditions((*limit.items, *when.items))
        return RouteSpec(
            name=self.name,
            when=when,
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
            mode=self.mode,
            expect=self.expect.spec() if self.expect else None,
            priors=self.priors.spec() if self.priors else None,
            fallback_to=tuple(
                (vendor, tuple(order)) for vendor, order in self.fallback_orders().items()
            ),
        )
