"""What routing knows about one study, computed once per decision.

:class:`Facts` holds every study-level field as a tuple of candidate values
(``raw``) and the same with text casefolded (``folded``), so each compiled
condition is a dictionary lookup and a comparison. :class:`SeriesFacts` does
the same for each series.

The ``tags`` mapping a caller passes is keyed by DICOM keyword
(``InstitutionName``), or ``(GGGG,EEEE)`` for tags without one; a value with
several DICOM values separates them with a backslash, as DICOM does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from broker.model.domain import Order, Series, Study
from routing.fields import RESULT_PREFIX, TAG_PREFIX, WEEKDAYS, Kind, result_name

Values = tuple[Any, ...]


def _text(*values: str | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        if value is None:
            continue
        text = value.strip()
        if text and text not in out:
            out.append(text)
    return tuple(out)


def _num(value: float | None) -> tuple[float, ...]:
    return () if value is None else (float(value),)


def _fold(raw: dict[str, Values]) -> dict[str, Values]:
    return {
        key: tuple(v.casefold() if isinstance(v, str) else v for v in values)
        for key, values in raw.items()
    }


def _date(text: str | None) -> datetime | None:
    if not text or len(text.strip()) < 8:
        return None
    try:
        return datetime.strptime(text.strip()[:8], "%Y%m%d")
    except ValueError:
        return None


def patient_age(study: Study, tags: Mapping[str, str]) -> float | None:
    """Age in years at the study: birth date and study date, else PatientAge (``057Y``)."""
    born, seen = _date(study.patient.birth_date), _date(study.study_date)
    if born is not None and seen is not None and seen >= born:
        return float(seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day)))
    text = (tags.get("PatientAge") or "").strip().upper()
    if len(text) >= 2 and text[:-1].isdigit() and text[-1] in "DWMY":
        per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[text[-1]]
        return round(int(text[:-1]) / per_year, 2)
    return None


def tag_values(text: str | None, kind: Kind) -> Values:
    """A tag's text as candidates: split at backslashes; numbers parsed (bad ones dropped)."""
    if text is None:
        return ()
    parts = _text(*text.split("\\"))
    if kind is not Kind.NUMBER:
        return parts
    numbers: list[float] = []
    for part in parts:
        try:
            numbers.append(float(part))
        except ValueError:
            continue
    return tuple(numbers)


class SeriesFacts:
    """One series' fields as candidate tuples."""

    __slots__ = ("folded", "raw", "series")

    def __init__(self, series: Series) -> None:
        self.series = series
        self.raw: dict[str, Values] = {
            "series.modality": _text(series.modality),
            "series.body_part": _text(series.body_part),
            "series.description": _text(series.description),
            "series.slice_thickness": _num(series.slice_thickness),
            "series.image_type": _text(*series.image_type),
            "series.instance_count": (float(series.instance_count),),
            "series.contrast_agent": _text(series.contrast_agent),
        }
        self.folded = _fold(self.raw)


class Facts:
    """Every field of one study, its order and the time, ready for compiled conditions.

    ``now`` without a timezone is taken as UTC; ``time.*`` fields are in ``timezone``.
    ``tag_kinds`` names the tags the rules read (canonical key → kind). ``earlier`` holds
    the study's complete results (not shadow ones) by vendor and by route name: each
    finding code (folded) → present; ``result_keys`` the ``result.*`` fields the rules
    read. A finding a complete result does not report is ``absent``; a product or route
    with no complete result yet has no value (its routes wait).
    """

    __slots__ = (
        "folded",
        "local_time",
        "order",
        "raw",
        "results_done",
        "series",
        "study",
        "tags",
    )

    def __init__(
        self,
        study: Study,
        order: Order | None,
        tags: Mapping[str, str],
        now: datetime,
        timezone: tzinfo,
        *,
        tag_kinds: Mapping[str, Kind] | None = None,
        earlier: Mapping[str, Mapping[str, bool]] | None = None,
        result_keys: Iterable[str] = (),
    ) -> None:
        self.study = study
        self.order = order
        self.tags = tags
        aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.local_time = aware.astimezone(timezone)
        self.series = tuple(SeriesFacts(s) for s in study.series)
        modalities = _text(*study.modalities, *(s.modality for s in study.series))
        age = patient_age(study, tags)
        raw: dict[str, Values] = {
            "modality": modalities,
            "modalities": modalities,
            "body_part": _text(*study.body_parts, *(s.body_part for s in study.series)),
            "study_description": _text(study.description),
            "accession_number": _text(study.accession_number),
            "patient_sex": _text(study.patient.sex),
            "patient_age": _num(age),
            "instance_count": (float(study.instance_count),),
            "series_count": (float(len(study.series)),),
            "calling_ae": _text(study.calling_ae),
            "called_ae": _text(study.called_ae),
            "site": _text(study.site),
            "order.procedure_code": _text(order.procedure_code) if order else (),
            "order.priority": _text(order.priority.value) if order else (),
            "order.department": _text(order.department) if order else (),
            "order.modality": _text(order.modality) if order else (),
            "time.hour": (float(self.local_time.hour),),
            "time.weekday": (WEEKDAYS[self.local_time.weekday()],),
        }
        for key, kind in (tag_kinds or {}).items():
            raw[key] = tag_values(tags.get(key.removeprefix(TAG_PREFIX)), kind)
        done = earlier or {}
        self.results_done = frozenset(done)
        for key in result_keys:
            found = done.get(result_name(key))
            code = key.removeprefix(RESULT_PREFIX).partition(".finding.")[2]
            raw[key] = () if found is None else ("present" if found.get(code) else "absent",)
        self.raw = raw
        self.folded = _fold(raw)


def joined(values: Iterable[object]) -> str | None:
    """Distinct non-empty values in order, DICOM-style: ``CT\\PT``."""
    texts = [f"{v:g}" if isinstance(v, float) else str(v) for v in values if v not in (None, "")]
    distinct = list(dict.fromkeys(texts))
    return "\\".join(distinct) if distinct else None


def study_tags(
    study: Study, series_tags: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """The DICOM tag values routing reads for a study, by keyword: the one tag mapping of
    ``serve``, explain (of files and of stored studies) and any backtest.

    ``series_tags`` holds, by Series Instance UID, the tags of each series' first
    instance (``adapters.dicom.mapping.tags_from_dataset``, kept by the index at
    ingest); a keyword's study value joins the distinct values of its series in
    series order (``CT\\PT``). The keywords the domain study itself carries
    (modality, body part, slice thickness … of every series; accession, patient
    sex …) read as the study does, and are all there is for a series indexed
    before tags were kept.
    """
    per_key: dict[str, list[str]] = {}
    for s in study.series:
        for key, value in (series_tags or {}).get(s.series_uid, {}).items():
            per_key.setdefault(key, []).append(value)
    merged = {key: joined(values) for key, values in per_key.items()}
    series = study.series
    known: dict[str, str | None] = {
        "StudyInstanceUID": study.study_uid,
        "AccessionNumber": study.accession_number,
        "StudyDate": study.study_date,
        "StudyDescription": study.description,
        "PatientID": study.patient.patient_id,
        "IssuerOfPatientID": study.patient.issuer,
        "PatientSex": study.patient.sex,
        "PatientBirthDate": study.patient.birth_date,
        "Modality": joined(s.modality for s in series) or joined(study.modalities),
        "BodyPartExamined": joined(s.body_part for s in series) or joined(study.body_parts),
        "SeriesDescription": joined(s.description for s in series),
        "SeriesInstanceUID": joined(s.series_uid for s in series),
        "SliceThickness": joined(s.slice_thickness for s in series),
        "ImageType": joined(part for s in series for part in s.image_type),
        "ContrastBolusAgent": joined(s.contrast_agent for s in series),
    }
    merged.update({k: v for k, v in known.items() if v})
    merged.pop("PatientName", None)
    return {k: v for k, v in merged.items() if v}
