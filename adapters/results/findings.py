"""JSON findings from AI vendors: the wire schema and its translation to the domain.

A vendor that returns structured findings instead of (or besides) DICOM
objects POSTs one JSON document per study; :func:`parse_findings` validates
it strictly and returns a :class:`broker.model.domain.Findings`. Every problem is
reported with the field it is about (``findings[1].measurements[0].unit:
Field required``), in a :class:`broker.model.errors.ResultError`, so the HTTP edge
can answer 400 with the list.

The schema (documented for vendors in the README, section "Results from
vendors: the JSON findings schema")::

    {
      "study_instance_uid": "1.2.…",           # required; the study that was evaluated
      "algorithm": {"vendor": "…", "product": "…", "version": "…"},   # required
      "complete": true,                         # false: preliminary, a later result replaces it
      "expected_objects": 2 | null,             # DICOM objects the vendor sends besides
      "summary": "…" | null,                    # one line for people
      "findings": [                             # may be empty: nothing found
        {
          "code": {"system": "SCT", "value": "1386000", "meaning": "Intracranial hemorrhage"},
          "present": true,                      # required: present or ruled out
          "text": "…" | null,
          "score": 0.97 | null,                 # probability of presence, 0 to 1
          "urgent": false,
          "site": {code} | null,                # anatomic location
          "measurements": [{"code": {code}, "value": 8.2, "unit": "mm"}],   # unit: UCUM
          "references": [{"series_instance_uid": "…",
                          "sop_instance_uid": "…" | null, "sop_class_uid": "…" | null}]
        }
      ]
    }

Unknown keys are errors (a misspelt ``"presnt"`` must not pass silently);
numbers must be JSON numbers and flags JSON booleans, never strings.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from adapters.dicom_uid import VALID_UID, uid_problem
from broker.model import domain
from broker.model.errors import ResultError

#: Largest body :func:`parse_findings` reads (bytes).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Longest text DICOM allows in LO elements (code meanings, vendor, product, version).
LO_CHARS = 64

_DESIGNATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,15}$")
_UCUM = re.compile(r"^[\x21-\x7e]{1,32}$")
_URI_TO_SYSTEM = {uri: designator for designator, uri in domain.CODE_SYSTEM_URIS.items()}


def _uid(value: str) -> str:
    if uid_problem(value) is not None:
        raise ValueError(f"not a DICOM UID (got {value!r}); valid: {VALID_UID}")
    return value


def _system(value: str) -> str:
    if value in _URI_TO_SYSTEM:
        return _URI_TO_SYSTEM[value]
    if value.upper() in domain.CODE_SYSTEM_URIS:
        return value.upper()
    if _DESIGNATOR.match(value):
        return value
    known = ", ".join([*domain.CODE_SYSTEM_URIS, *_URI_TO_SYSTEM])
    raise ValueError(
        f"unknown code system {value!r}; valid: a DICOM coding scheme designator "
        f"(1 to 16 letters, digits, '.', '-' or '_', e.g. a private '99MYVENDOR') or one of {known}"
    )


def _ucum(value: str) -> str:
    if not _UCUM.match(value):
        raise ValueError(
            f"not a UCUM unit code (got {value!r}); valid: a case-sensitive UCUM code "
            "without spaces, e.g. 'mm', 'mm3', 'cm2', '[hnsf'U]', '%', '1'"
        )
    return value


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Uid = Annotated[str, AfterValidator(_uid)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CodeModel(_Model):
    """A coded concept: ``{"system": "SCT", "value": "1386000", "meaning": "…"}``."""

    system: Annotated[str, AfterValidator(_system)]
    value: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
    meaning: ShortText

    def to_domain(self) -> domain.Code:
        return domain.Code(self.system, self.value, self.meaning)


class MeasurementModel(_Model):
    """A numeric measurement: ``{"code": {…}, "value": 8.2, "unit": "mm"}``."""

    code: CodeModel
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: Annotated[str, AfterValidator(_ucum)]

    def to_domain(self) -> domain.Measurement:
        return domain.Measurement(self.code.to_domain(), self.value, self.unit)


class ReferenceModel(_Model):
    """An image (or a whole series) a finding was seen on."""

    series_instance_uid: Uid
    sop_instance_uid: Uid | None = None
    sop_class_uid: Uid | None = None

    def to_domain(self) -> domain.ImageReference:
        return domain.ImageReference(
            self.series_instance_uid, self.sop_instance_uid, self.sop_class_uid
        )


class FindingModel(_Model):
    """One finding."""

    code: CodeModel
    present: bool
    text: Annotated[str, StringConstraints(strip_whitespace=True, max_length=10_000)] | None = None
    score: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    urgent: bool = False
    site: CodeModel | None = None
    measurements: Annotated[list[MeasurementModel], Field(max_length=1000)] = []
    references: Annotated[list[ReferenceModel], Field(max_length=10_000)] = []

    def to_domain(self) -> domain.Finding:
        return domain.Finding(
            code=self.code.to_domain(),
            present=self.present,
            text=self.text or None,
            score=self.score,
            urgent=self.urgent,
            measurements=tuple(m.to_domain() for m in self.measurements),
            references=tuple(r.to_domain() for r in self.references),
            site=self.site.to_domain() if self.site else None,
        )


class AlgorithmModel(_Model):
    """The AI product: vendor, product and version as the vendor names them."""

    vendor: ShortText
    product: ShortText
    version: ShortText

    def to_domain(self) -> domain.AlgorithmInfo:
        return domain.AlgorithmInfo(self.vendor, self.product, self.version)


class FindingsModel(_Model):
    """The whole document a vendor POSTs for one study."""

    study_instance_uid: Uid
    algorithm: AlgorithmModel
    findings: Annotated[list[FindingModel], Field(max_length=1000)]
    complete: bool = True
    expected_objects: Annotated[int, Field(ge=0)] | None = None
    summary: Annotated[str, StringConstraints(strip_whitespace=True, max_length=10_000)] | None = (
        None
    )

    def to_domain(self) -> domain.Findings:
        return domain.Findings(
            study_uid=self.study_instance_uid,
            algorithm=self.algorithm.to_domain(),
            findings=tuple(f.to_domain() for f in self.findings),
            complete=self.complete,
            expected_objects=self.expected_objects,
            summary=self.summary or None,
        )


def _where(loc: tuple[int | str, ...]) -> str:
    """``("findings", 0, "score")`` -> ``findings[0].score``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"


def _message(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field; check its spelling against the schema"
    if error["type"] not in ("missing", "value_error") and "input" in error:
        shown = json.dumps(error["input"])[:80]
        if shown not in msg:
            msg += f" (got {shown})"
    return msg


def parse_findings(body: bytes) -> domain.Findings:
    """Validate a vendor's JSON findings document and return it as domain :class:`Findings`.

    Raises :class:`ResultError` whose ``problems`` name each bad field, e.g.
    ``findings[0].score: Input should be less than or equal to 1 (got 1.7)``.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ResultError(f"body: {len(body)} bytes; valid: at most {MAX_BODY_BYTES} bytes of JSON")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"body: not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:  # arrays or objects nested thousands deep
        raise ResultError(
            "body: JSON nested too deeply; valid: the findings schema (a few levels deep)"
        ) from exc
    if not isinstance(document, dict):
        raise ResultError(
            f"body: a JSON {type(document).__name__}; valid: a JSON object with "
            "study_instance_uid, algorithm and findings"
        )
    try:
        model = FindingsModel.model_validate(document)
    except ValidationError as exc:
        problems = [f"{_where(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise ResultError("invalid findings", problems) from exc
    return model.to_domain()
