"""The scenario file: pydantic models, and loading with ``FILE:LINE`` errors.

A scenario names the studies it uses, the simulators it needs, a
configuration fragment for radbridge, the steps to take and what must be
true, each with a time limit::

    name: order-then-study
    description: the RIS orders, the CT arrives, the result reaches the PACS and the RIS
    radbridge:                    # merged over a generated base (loopback ports, own spool)
      vendors:
        lungai:
          product: CT lung nodule
          transport: {type: dicom, ae_title: LUNGAI, host: 127.0.0.1,
                      port: "${vendor.lungai.port}"}
      targets:
        pacs: {type: dicom, ae_title: PACS, host: 127.0.0.1, port: "${pacs.dicom_port}"}
      routes: [...]
    simulators:
      vendors: {lungai: {product: lung-nodule-ct, result: sr}}
      pacs: {}
      ris: {answer: aa}
    studies:
      chest1: {kind: ct_chest, accession: ACC1}
    steps:
      - send_order: {study: chest1}
      - send_study: chest1
      - expect: {vendor_receives: {vendor: lungai, study: chest1}, within: 20s}
    expect:
      - {job: {study: chest1, vendor: lungai, state: done}, within: 30s}

Every problem is reported as ``FILE:LINE: field: what is wrong``; the
``radbridge:`` fragment is also checked against radbridge's own settings
schema (placeholders filled with stand-ins), so a misspelt route field is
found before anything starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from adapters.dicom.synthetic import StudyKind
from adapters.harness.errors import HarnessError
from adapters.harness.products import Presence, ProductKind, finding_codes
from adapters.harness.ris import MESSAGE_KINDS, Answer
from adapters.harness.scenario.settings import base_config, merge
from adapters.harness.vendor import Fault, ResultType
from broker.model.reconciliation import StudyFlag
from config.base import AETitle, LocatedErrors
from config.vendors import VendorName, parse_duration

Loc = tuple[str | int, ...]

#: ``${vendor.lungai.port}``, ``${pacs.dicom_port}``, ``${ris.port}``, ``${radbridge.http_url}``…
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


class ScenarioError(HarnessError):
    """A scenario file cannot be used; ``problems`` has one ``FILE:LINE: …`` line each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message if problems is None else "\n".join(problems))


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class Model(BaseModel):
    """Unknown keys are errors, as in radbridge's configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _study_shorthand(value: Any) -> Any:
    """``send_study: chest1`` means ``send_study: {study: chest1}``."""
    return {"study": value} if isinstance(value, str) else value


# ------------------------------------------------------------------ simulators


class VendorSimulator(Model):
    """A simulated AI product (:class:`adapters.harness.vendor.SimulatedVendor`).

    ``ae_title`` defaults to the name in capitals. ``http: true`` also takes
    radbridge's ``http`` transport manifests (``${vendor.NAME.http_port}``).
    ``result: json`` posts findings to radbridge's callback with a results
    token the runner makes and gives radbridge. ``running: false`` starts it
    down (a ``start_vendor`` step brings it up). ``findings`` makes it say
    ``present`` or ``absent`` of a finding code its product reports
    (``SCT:786838002: absent``), to disagree with another vendor of its kind.
    """

    product: ProductKind
    result: ResultType = ResultType.SR
    delay: Seconds = 0.3
    fault: Fault = Fault.NONE
    slow_seconds: Seconds = 0.3
    abort_after: Annotated[int, Field(ge=1)] = 1
    ae_title: AETitle | None = None
    http: bool = False
    running: bool = True
    findings: dict[str, Presence] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _reported_codes(self) -> Self:
        known = finding_codes(self.product)
        problems: list[tuple[Loc, str]] = [
            (
                ("findings", code),
                f"{self.product.value} does not report {code!r}; valid: {', '.join(known)}",
            )
            for code in self.findings
            if code not in known
        ]
        if problems:
            raise LocatedErrors(problems)
        return self


class PacsSimulator(Model):
    """The PACS results are written back to: Orthanc when installed (``auto``), else built-in."""

    kind: Literal["auto", "orthanc", "builtin"] = "auto"
    ae_title: AETitle = "PACS"
    running: bool = True


class RisSimulator(Model):
    """The RIS listening for ORU^R01: answers ``aa``, ``ae`` or ``none``."""

    answer: Answer = Answer.AA


class WebhookSimulator(Model):
    """The endpoint notifications are POSTed to (``${webhook.url}``): records each one."""


class Simulators(Model):
    vendors: dict[VendorName, VendorSimulator] = Field(default_factory=dict)
    pacs: PacsSimulator | None = None
    ris: RisSimulator | None = None
    webhook: WebhookSimulator | None = None


class StudySpec(Model):
    """A synthetic study (:func:`adapters.dicom.synthetic.generate_study`), small by default."""

    kind: StudyKind
    accession: Annotated[str, Field(min_length=1, max_length=16)]
    instances: Annotated[int, Field(ge=1, le=500)] = 6
    rows: Annotated[int, Field(ge=8, le=1024)] = 32
    columns: Annotated[int, Field(ge=8, le=1024)] = 32
    patient_id: Annotated[str, Field(min_length=1, max_length=64)] = "PAT0001"
    study_uid: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)] | None = None


# ---------------------------------------------------------------- expectations


class VendorReceives(Model):
    """The vendor holds the study (at least ``instances`` of its instances; default: all sent)."""

    vendor: str
    study: str
    instances: Annotated[int, Field(ge=1)] | None = None


class VendorReceivesNothing(Model):
    """The vendor gets nothing (of ``study``, or at all) for the whole ``within``."""

    vendor: str
    study: str | None = None


class PacsHoldsSr(Model):
    """The PACS holds ``count`` (1) SR instances of ``study`` or more (``at_most``: and no
    more than that many, e.g. 1 when a shadow product's SR must not reach it)."""

    study: str
    count: Annotated[int, Field(ge=1)] = 1
    at_most: Annotated[int, Field(ge=1)] | None = None


class RisReceivesOru(Model):
    """An ORU^R01 with OBR-18 = the study's accession; ``obx``: text in some OBX-3 or OBX-5;
    ``flag``: some OBX-8 equals it (``AA`` urgent); ``nte``: each text in some NTE-3 (a
    combined answer's provenances); ``count``: at least this many such ORUs, ``at_most``:
    no more."""

    study: str
    obx: str | None = None
    flag: str | None = None
    nte: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    count: Annotated[int, Field(ge=1)] = 1
    at_most: Annotated[int, Field(ge=1)] | None = None
    """No more than this many such ORUs (a shadow product's must not reach the RIS)."""


class JobState(Model):
    """The job of ``study`` for ``vendor`` is in ``state`` (``done``, ``dead``…), after exactly
    ``attempts`` or at least ``min_attempts`` delivery attempts."""

    study: str
    vendor: str
    state: str
    attempts: Annotated[int, Field(ge=0)] | None = None
    min_attempts: Annotated[int, Field(ge=0)] | None = None


class JobCount(Model):
    """The study has exactly ``count`` jobs (0: no route sent it anywhere)."""

    study: str
    count: Annotated[int, Field(ge=0)]


class Usage(Model):
    """``radbridge usage report`` counts ``studies`` for the vendor (today, all products)."""

    vendor: str
    studies: Annotated[int, Field(ge=0)]
    billable: Annotated[int, Field(ge=0)] | None = None
    trial: Annotated[int, Field(ge=0)] | None = None


class Explains(Model):
    """``radbridge routes explain`` of the stored study says ``says`` (a piece of its text)."""

    study: str
    says: Annotated[str, Field(min_length=1)]


class StudyFlags(Model):
    """``GET /api/v1/studies/{uid}/findings`` answers these ``flags`` for the study, exactly
    (``[discordant]``: two live products disagree; ``[]``: none)."""

    study: str
    flags: list[StudyFlag]


class WebhookReceives(Model):
    """The webhook got ``count`` (1) notifications of ``event`` about the study, no more."""

    study: str
    event: Annotated[str, Field(min_length=1)]
    count: Annotated[int, Field(ge=1)] = 1


EXPECTATION_KINDS = (
    "vendor_receives",
    "vendor_receives_nothing",
    "pacs_holds_sr",
    "ris_receives_oru",
    "job",
    "jobs",
    "usage",
    "explain",
    "study_flags",
    "webhook_receives",
)


class Expectation(Model):
    """One thing that must become true within ``within`` (for ``vendor_receives_nothing``:
    stay true that long). Exactly one kind per expectation."""

    vendor_receives: VendorReceives | None = None
    vendor_receives_nothing: VendorReceivesNothing | None = None
    pacs_holds_sr: Annotated[PacsHoldsSr | None, BeforeValidator(_study_shorthand)] = None
    ris_receives_oru: RisReceivesOru | None = None
    job: JobState | None = None
    jobs: JobCount | None = None
    usage: Usage | None = None
    explain: Explains | None = None
    study_flags: StudyFlags | None = None
    webhook_receives: WebhookReceives | None = None
    within: Seconds = 30.0
    name: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        given = [k for k in EXPECTATION_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"an expectation states exactly one thing (got {', '.join(given) or 'none'}); "
                f"valid: one of {', '.join(EXPECTATION_KINDS)}, with within"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in EXPECTATION_KINDS if getattr(self, k) is not None)

    @property
    def body(self) -> Model:
        value: Model = getattr(self, self.kind)
        return value


# ----------------------------------------------------------------------- steps


class SendOrder(Model):
    """The RIS sends an order for the study over MLLP (ORM^O01 by default); ACK ``ack``."""

    study: str
    message: str = "ORM^O01"
    procedure: str = "CTCHEST"
    procedure_text: str = "CT"
    modality: str | None = None
    department: Annotated[str, Field(min_length=1, max_length=64)] = "RADIOLOGY"
    """The ordering department (ORC-17)."""
    priority: Literal["STAT", "ASAP", "ROUTINE"] = "ROUTINE"
    with_study_uid: bool = False
    control: str = "NW"
    ack: Literal["AA", "AE", "AR"] = "AA"

    @model_validator(mode="after")
    def _known_message(self) -> Self:
        if self.message not in MESSAGE_KINDS:
            raise ValueError(
                f"no such message kind {self.message!r}; valid: {', '.join(MESSAGE_KINDS)}"
            )
        return self


class SendStudy(Model):
    """The modality C-STOREs the study to radbridge (every instance must be acknowledged)."""

    study: str
    called_ae: AETitle = "RADBRIDGE"
    calling_ae: AETitle = "CT01"


class JobRef(Model):
    study: str
    vendor: str


class DeliveryRef(Model):
    """The write-back of the study's result(s) to ``target`` (dead or failed ones)."""

    study: str
    target: str


ACTIONS = (
    "send_order",
    "send_study",
    "expect",
    "wait",
    "kill_radbridge",
    "stop_radbridge",
    "start_radbridge",
    "stop_vendor",
    "start_vendor",
    "stop_pacs",
    "start_pacs",
    "set_ris_answer",
    "retry_job",
    "retry_delivery",
)


def _step_shorthand(value: Any) -> Any:
    """``- kill_radbridge`` (a bare word) means ``- kill_radbridge: true``."""
    return {value: True} if isinstance(value, str) else value


class _Step(Model):
    send_order: Annotated[SendOrder | None, BeforeValidator(_study_shorthand)] = None
    send_study: Annotated[SendStudy | None, BeforeValidator(_study_shorthand)] = None
    expect: Expectation | None = None
    wait: Seconds | None = None
    kill_radbridge: Literal[True] | None = None
    stop_radbridge: Literal[True] | None = None
    start_radbridge: Literal[True] | None = None
    stop_vendor: str | None = None
    start_vendor: str | None = None
    stop_pacs: Literal[True] | None = None
    start_pacs: Literal[True] | None = None
    set_ris_answer: Answer | None = None
    retry_job: JobRef | None = None
    retry_delivery: DeliveryRef | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a step does exactly one thing (got {', '.join(given) or 'none'}); "
                f"valid: one of {', '.join(ACTIONS)}"
            )
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    @property
    def argument(self) -> Any:
        return getattr(self, self.action)


Step = Annotated[_Step, BeforeValidator(_step_shorthand)]


# -------------------------------------------------------------------- scenario


class Scenario(Model):
    """One scenario file (see the module docstring)."""

    name: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[\w.-]+$")]
    description: str = ""
    radbridge: dict[str, Any] = Field(default_factory=dict)
    simulators: Simulators = Simulators()
    studies: dict[Annotated[str, Field(pattern=r"^[\w-]+$")], StudySpec] = Field(
        default_factory=dict
    )
    steps: list[Step] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)
    timeout: Seconds = 180.0
    """The whole scenario, simulators and radbridge included, must end within this."""

    @model_validator(mode="after")
    def _references(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        for i, step in enumerate(self.steps):
            where: Loc = ("steps", i, step.action)
            if step.expect is not None:
                problems += self._check_expectation(step.expect, where)
                continue
            argument = step.argument
            if isinstance(argument, Model) and hasattr(argument, "study"):
                problems += self._check_study(argument.study, (*where, "study"))
            if step.action in ("stop_vendor", "start_vendor"):
                problems += self._check_vendor(str(argument), where)
            if step.action in ("stop_pacs", "start_pacs") and self.simulators.pacs is None:
                problems.append((where, "there is no PACS; add simulators: {pacs: {}}"))
            if step.action == "set_ris_answer" and self.simulators.ris is None:
                problems.append((where, "there is no RIS; add simulators: {ris: {}}"))
        for i, expectation in enumerate(self.expect):
            problems += self._check_expectation(expectation, ("expect", i))
        if problems:
            raise LocatedErrors(problems)
        return self

    def _check_study(self, name: str | None, loc: Loc) -> list[tuple[Loc, str]]:
        if name is None or name in self.studies:
            return []
        known = ", ".join(self.studies) or "none (add a studies: block)"
        return [(loc, f"unknown study '{name}'; known studies: {known}")]

    def _check_vendor(self, name: str, loc: Loc) -> list[tuple[Loc, str]]:
        if name in self.simulators.vendors:
            return []
        known = ", ".join(self.simulators.vendors) or "none (add simulators: {vendors: …})"
        return [(loc, f"unknown simulated vendor '{name}'; known: {known}")]

    def _check_expectation(self, expectation: Expectation, loc: Loc) -> list[tuple[Loc, str]]:
        body, kind = expectation.body, expectation.kind
        where: Loc = (*loc, kind)
        problems = self._check_study(getattr(body, "study", None), (*where, "study"))
        if kind in ("vendor_receives", "vendor_receives_nothing"):
            problems += self._check_vendor(str(getattr(body, "vendor", "")), (*where, "vendor"))
        if kind == "pacs_holds_sr" and self.simulators.pacs is None:
            problems.append((where, "there is no PACS; add simulators: {pacs: {}}"))
        if kind == "ris_receives_oru" and self.simulators.ris is None:
            problems.append((where, "there is no RIS; add simulators: {ris: {}}"))
        if kind == "webhook_receives" and self.simulators.webhook is None:
            problems.append((where, "there is no webhook; add simulators: {webhook: {}}"))
        return problems


# --------------------------------------------------------------------- loading


class _Lines:
    """The line of each location in a YAML file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}

    def where(self, loc: Loc) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return f"{self.file}:{self.lines[loc[:end]]}"
        return self.file

    def read(self, node: yaml.Node, loc: Loc = ()) -> Any:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = yaml.safe_load(yaml.serialize(key_node))
                out[key] = self.read(value_node, (*loc, key))
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, (*loc, i)) for i, item in enumerate(node.value)]
        return yaml.safe_load(yaml.serialize(node))


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """pydantic's location without its validator names (``function-before[…]``)."""
    return tuple(p for p in loc if not str(p).startswith(("function-", "_Step")))


def _problems(exc: ValidationError, lines: _Lines, prefix: Loc = ()) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = (*prefix, *_clean_loc(error["loc"]))
        located = error.get("ctx", {}).get("error")
        if isinstance(located, LocatedErrors):
            for below, message in located.items:
                at = (*loc, *below)
                problems.append(f"{lines.where(at)}: {'.'.join(map(str, at))}: {message}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown field '{loc[-1]}'" + _valid_names(loc)
        elif "input" in error and not isinstance(error["input"], dict | list):
            got = repr(error["input"])
            message += "" if got in message else f" (got {got})"
        field = ".".join(map(str, loc)) or "(top level)"
        problems.append(f"{lines.where(loc)}: {field}: {message}")
    return problems


def _valid_names(loc: Loc) -> str:
    """What an unknown key of a step or an expectation could have been."""
    parent = loc[:-1]
    if len(parent) == 2 and parent[0] == "steps" and isinstance(parent[1], int):
        return f"; valid: one of {', '.join(ACTIONS)}"
    if (len(parent) == 2 and parent[0] == "expect") or parent[-1:] == ("expect",):
        return f"; valid: one of {', '.join(EXPECTATION_KINDS)}, within, name"
    return ""


def fill_placeholders(value: Any, values: dict[str, Any], where: str = "") -> Any:
    """``${name}`` in every string of ``value`` replaced from ``values``; a string that is
    only a placeholder takes the value's own type (a port stays an integer)."""
    if isinstance(value, dict):
        return {k: fill_placeholders(v, values, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, values, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> Any:
        if name not in values:
            known = ", ".join(sorted(values))
            raise ScenarioError(
                f"{where.strip('.')}: unknown placeholder ${{{name}}}; known: {known}"
            )
        return values[name]

    whole = PLACEHOLDER.fullmatch(value)
    if whole:
        return lookup(whole[1])
    return PLACEHOLDER.sub(lambda m: str(lookup(m[1])), value)


def placeholder_names(scenario: Scenario) -> dict[str, Any]:
    """Every placeholder the runner fills for ``scenario``, with stand-in values."""
    values: dict[str, Any] = {
        "radbridge.port": 11112,
        "radbridge.hl7_port": 2575,
        "radbridge.http_port": 8080,
        "radbridge.http_url": "http://127.0.0.1:8080",
    }
    for name, vendor in scenario.simulators.vendors.items():
        values[f"vendor.{name}.port"] = 104
        values[f"vendor.{name}.ae_title"] = vendor.ae_title or name.upper()[:16]
        if vendor.http:
            values[f"vendor.{name}.http_port"] = 9100
            values[f"vendor.{name}.url"] = "http://127.0.0.1:9100/jobs"
    if scenario.simulators.pacs is not None:
        values |= {"pacs.dicom_port": 4242, "pacs.ae_title": scenario.simulators.pacs.ae_title}
    if scenario.simulators.ris is not None:
        values["ris.port"] = 2576
    if scenario.simulators.webhook is not None:
        values["webhook.url"] = "http://127.0.0.1:9200/hook"
    for name in scenario.studies:
        values[f"study.{name}.uid"] = "1.2.3"
    return values


def _check_fragment(scenario: Scenario, data: dict[str, Any], lines: _Lines) -> list[str]:
    """The ``radbridge:`` fragment against radbridge's settings schema, at its own lines."""
    from config.schema import Settings  # noqa: PLC0415 - loads routing, only when checking

    fragment = data.get("radbridge") or {}
    try:
        filled = fill_placeholders(fragment, placeholder_names(scenario), "radbridge")
    except ScenarioError as exc:
        return [f"{lines.where(('radbridge',))}: {exc}"]
    merged = merge(base_config(Path("/nonexistent"), 11112, 2575, 8080), filled)
    try:
        Settings.model_validate(merged)
    except ValidationError as exc:
        return _problems(exc, lines, ("radbridge",))
    return []


def load_scenario(path: Path | str) -> Scenario:
    """Read and check one scenario file; :class:`ScenarioError` lists every problem."""
    file = Path(path)
    lines = _Lines(str(file))
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{file}: cannot read the scenario: {exc.strerror}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ScenarioError(
            f"{file}{at}: not valid YAML: {getattr(exc, 'problem', None) or exc}"
        ) from exc
    if not isinstance(node, yaml.MappingNode):
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        raise ScenarioError(
            f"{file}{line}: a scenario is a mapping (name:, radbridge:, simulators:, "
            "studies:, steps:, expect:)"
        )
    data = lines.read(node)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{file}: invalid scenario", _problems(exc, lines)) from exc
    problems = _check_fragment(scenario, data, lines)
    if problems:
        raise ScenarioError(f"{file}: invalid scenario", problems)
    return scenario
