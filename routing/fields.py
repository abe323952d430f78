"""The fields a route's ``when`` can test, and what kind of value each holds.

A field is study-level (``modality``, ``order.priority``, ``time.hour``,
``tag.InstitutionName`` …) or series-level (``series.slice_thickness`` …).
Every value is held as a tuple of candidates: a study-level ``modality`` has
one candidate per modality of its series, an absent value is the empty
tuple, and a condition holds when any candidate satisfies it (lists such as
``modalities`` and ``series.image_type`` have their own rules, see
:mod:`routing.schema`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """How a field's values compare."""

    TEXT = "text"
    NUMBER = "number"
    TEXT_LIST = "list of text"


class Source(enum.Enum):
    """Where a field's value comes from."""

    STUDY = "study"
    SERIES = "series"
    ORDER = "order"
    TIME = "time"
    TAG = "tag"
    RESULT = "result"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One testable field.

    ``key`` indexes the evaluation facts (:class:`routing.facts.Facts`);
    ``vocabulary`` (folded) lists the only values a condition may ask for, if
    the field has a fixed set; ``integer`` numbers display without a decimal.
    """

    name: str
    key: str
    kind: Kind
    source: Source
    help: str
    vocabulary: tuple[str, ...] = ()
    integer: bool = False

    @property
    def series(self) -> bool:
        """True for ``series.*`` fields: they are tested series by series."""
        return self.source is Source.SERIES


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ORDER_PRIORITIES = ("stat", "asap", "routine")

_T, _N, _L = Kind.TEXT, Kind.NUMBER, Kind.TEXT_LIST

FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        FieldSpec("modality", "modality", _T, Source.STUDY, "a modality of any series (CT, MR …)"),
        FieldSpec("modalities", "modalities", _L, Source.STUDY, "the study's set of modalities"),
        FieldSpec("body_part", "body_part", _T, Source.STUDY, "a body part of any series"),
        FieldSpec("study_description", "study_description", _T, Source.STUDY, "(0008,1030)"),
        FieldSpec("accession_number", "accession_number", _T, Source.STUDY, "(0008,0050)"),
        FieldSpec("patient_sex", "patient_sex", _T, Source.STUDY, "M, F or O"),
        FieldSpec(
            "patient_age",
            "patient_age",
            _N,
            Source.STUDY,
            "years, from birth date and study date, else PatientAge",
        ),
        FieldSpec("instance_count", "instance_count", _N, Source.STUDY, "images", integer=True),
        FieldSpec("series_count", "series_count", _N, Source.STUDY, "series", integer=True),
        FieldSpec("calling_ae", "calling_ae", _T, Source.STUDY, "AE title that sent the study"),
        FieldSpec("called_ae", "called_ae", _T, Source.STUDY, "radbridge AE title it was sent to"),
        FieldSpec("site", "site", _T, Source.STUDY, "the id of the site that sent it (sites:)"),
        FieldSpec("series.modality", "series.modality", _T, Source.SERIES, "(0008,0060)"),
        FieldSpec("series.body_part", "series.body_part", _T, Source.SERIES, "(0018,0015)"),
        FieldSpec("series.description", "series.description", _T, Source.SERIES, "(0008,103E)"),
        FieldSpec(
            "series.slice_thickness", "series.slice_thickness", _N, Source.SERIES, "mm (0018,0050)"
        ),
        FieldSpec("series.image_type", "series.image_type", _L, Source.SERIES, "(0008,0008)"),
        FieldSpec(
            "series.instance_count",
            "series.instance_count",
            _N,
            Source.SERIES,
            "images in the series",
            integer=True,
        ),
        FieldSpec(
            "series.contrast_agent", "series.contrast_agent", _T, Source.SERIES, "(0018,0010)"
        ),
        FieldSpec("order.procedure_code", "order.procedure_code", _T, Source.ORDER, "OBR-44/4"),
        FieldSpec(
            "order.priority",
            "order.priority",
            _T,
            Source.ORDER,
            "stat, asap or routine",
            vocabulary=ORDER_PRIORITIES,
        ),
        FieldSpec("order.department", "order.department", _T, Source.ORDER, "ordering department"),
        FieldSpec("order.modality", "order.modality", _T, Source.ORDER, "OBR-24"),
        FieldSpec("time.hour", "time.hour", _N, Source.TIME, "0-23, site timezone", integer=True),
        FieldSpec(
            "time.weekday",
            "time.weekday",
            _T,
            Source.TIME,
            "mon … sun, site timezone",
            vocabulary=WEEKDAYS,
        ),
    )
}
"""Every field by name, except ``tag.*`` (resolved by a tag resolver)."""

SERIES_FIELDS: dict[str, FieldSpec] = {n: f for n, f in FIELDS.items() if f.series}

TAG_PREFIX = "tag."
RESULT_PREFIX = "result."
#: What a finding of an earlier result is: reported present, or absent (reported absent, or
#: not reported by a product whose result is complete).
FINDING_VALUES = ("present", "absent")


def tag_field(written: str, keyword: str, kind: Kind) -> FieldSpec:
    """The field for ``tag.<written>``, stored under the canonical ``keyword``."""
    return FieldSpec(
        f"{TAG_PREFIX}{written}",
        f"{TAG_PREFIX}{keyword}",
        kind,
        Source.TAG,
        "DICOM tag",
        integer=False,
    )


def result_field(written: str) -> FieldSpec:
    """The field for ``result.<vendor or route>.finding.<code>``; ValueError if malformed.

    Its key folds the code (``result.ichai.finding.1386000``); the product or route name
    is kept as written (names are case-sensitive in the configuration).
    """
    name, sep, rest = written.removeprefix(RESULT_PREFIX).partition(".finding.")
    if not sep or not name or not rest or "." in name:
        raise ValueError(
            f"'{written}' is not a result field; valid: result.<vendor or route>.finding.<code>,"
            " e.g. result.triage.finding.abnormal"
        )
    return FieldSpec(
        written,
        f"{RESULT_PREFIX}{name}.finding.{rest.casefold()}",
        Kind.TEXT,
        Source.RESULT,
        "a finding of an earlier result of the same study: present or absent",
        vocabulary=FINDING_VALUES,
    )


def result_name(key: str) -> str:
    """The vendor or route a result field's key names."""
    return key.removeprefix(RESULT_PREFIX).partition(".finding.")[0]
