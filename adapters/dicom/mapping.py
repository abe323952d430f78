"""DICOM ↔ domain: read what routing and the index need from a received file.

Only the header is parsed (``stop_before_pixels``, large values deferred), so a
2 GB instance costs a few kilobytes here. Text is decoded with the file's own
Specific Character Set (GB18030, ISO 2022 for Chinese, Japanese and Korean, …).

:func:`tags_from_dataset` is the one mapping of a header to the text values a
``tag.*`` routing condition reads. The listener stores it for the first
instance of each series it indexes, and ``routes explain FILES`` makes it from
the first file of each series, so the service and explain see the same tags.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from adapters import dicom_header, dicom_scan
from adapters.dicom_uid import MAX_UID_LENGTH, checked_uid
from broker.model.domain import InstanceRecord, Patient
from broker.model.errors import InvalidDicomError

#: Value representations that hold bytes or nested datasets, never text to route on.
_NOT_TEXT_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Patient names never become routing tags (every other attribute may).
_PATIENT_NAMES = frozenset(
    {"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"}
)
#: A value longer than this (characters, or bytes before decoding) is not kept as a tag.
MAX_TAG_TEXT = 1024
#: At most this many attributes of one instance are kept as tags.
MAX_TAGS = 1000


#: Value representations whose plain-ASCII values read the same in every character set.
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST"})
_PLAIN_VRS |= {"TM", "UC", "UI", "UT"}
_ESCAPE = 0x1B  # ISO 2022 code extensions switch character sets with it


def _text(ds: Dataset, keyword: str) -> str | None:
    tag = _tag_of(keyword)
    raw = ds.get_item(tag, keep_deferred=True)  # None when absent
    if raw is None:
        return None
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        # Plain ASCII needs no character set: read here, not through pydicom's conversion
        # (a tenth of its cost); anything else pydicom decodes.
        vr = raw.VR or dictionary_VR(tag)
        value = raw.value
        if vr in _PLAIN_VRS and value.isascii() and _ESCAPE not in value:
            return value.decode("ascii").strip(" \0") or None
    try:
        value = ds.get(keyword)
    except Exception:  # a value pydicom cannot decode is treated as absent
        return None
    return _value_text(value)


@cache
def _tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    text = _text(ds, keyword)
    try:
        return float(text.split("\\")[0]) if text is not None else None
    except ValueError:
        return None


def _uid(ds: Dataset, keyword: str, fallback: str | None = None) -> str:
    value = _text(ds, keyword) or fallback
    if not value:
        raise InvalidDicomError(f"the dataset has no {keyword}; it cannot be indexed")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidDicomError(
            f"{keyword} is {len(value)} characters long; valid: a UID of at most 64 characters"
        )
    return value


def _instance_uid(ds: Dataset, keyword: str, fallback: str | None = None) -> str:
    """A Study, Series or SOP Instance UID: a valid UID, or the instance is refused."""
    value = _text(ds, keyword) or fallback
    if not value:
        raise InvalidDicomError(f"the dataset has no {keyword}; it cannot be indexed")
    return checked_uid(keyword, value)


def read_header(path: Path) -> Dataset:
    """The dataset up to (not including) the pixel data; large values deferred.

    Values are decoded only when read, so reading every element costs no more
    than reading a chosen few (pydicom walks the whole header either way). A
    deflated data set is inflated only that far, within limits, and sequences
    nested too deeply are refused (:mod:`adapters.dicom_header`). A plainly encoded
    header is found in one pass over its bytes (:mod:`adapters.dicom_scan`).
    """
    scanned = dicom_scan.scan(path)
    if scanned is not None:
        return scanned
    return dicom_header.read_header(path, defer_size=4096)


def _tag_key(tag: BaseTag, keyword: str) -> str:
    return keyword or f"({tag.group:04X},{tag.element:04X})"


def tags_from_dataset(ds: Dataset) -> dict[str, str]:
    """The text of every top-level attribute a ``tag.*`` condition may name, by keyword.

    Keys are DICOM keywords, or ``(GGGG,EEEE)`` for tags without one (private
    tags), as ``config.vendors.dicom_tag`` resolves them; several values are
    separated by a backslash. Left out: sequences, bytes (OB, OW, UN …),
    group lengths, patient names, empty values and values longer than
    :data:`MAX_TAG_TEXT`; at most :data:`MAX_TAGS` attributes are kept.
    """
    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in list(ds.keys()):
            if len(out) >= MAX_TAGS:
                break
            if tag.element == 0 or tag.group == 2:
                continue
            raw = ds.get_item(tag, keep_deferred=True)  # decoded (or not) by _element
            if raw is None or raw.VR in _NOT_TEXT_VRS:
                continue
            if isinstance(raw, RawDataElement) and raw.length > MAX_TAG_TEXT:
                continue  # too long to route on (and maybe deferred: never re-read)
            element = _element(ds, tag)
            if element is None or element.VR in _NOT_TEXT_VRS or element.keyword in _PATIENT_NAMES:
                continue
            text = _value_text(element.value)
            if text is not None and len(text) <= MAX_TAG_TEXT:
                out[_tag_key(tag, element.keyword)] = text
    return out


def _element(ds: Dataset, tag: BaseTag) -> DataElement | None:
    try:
        return ds[tag]
    except Exception:  # a value pydicom cannot decode is treated as absent
        return None


def _value_text(value: Any) -> str | None:
    """A value as text; None for a value that is not text (bytes, a data set, a sequence: an
    attribute sent with a VR it does not have, which is not read further)."""
    if value is None or isinstance(value, bytes | bytearray | Dataset | Sequence):
        return None
    if isinstance(value, MultiValue | list | tuple):
        if any(isinstance(v, bytes | bytearray | Dataset) for v in value):
            return None
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().strip("\x00").strip()
    return text or None


def instance_record_from_file(
    path: Path,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    received_at: datetime,
    wants_series_tags: Callable[[str], bool] | None = None,
    site: str | None = None,
    header: Dataset | None = None,
    size: int | None = None,
) -> InstanceRecord:
    """The index record of a received file; the command set's UIDs are authoritative.
    ``header`` and ``size``: the file's header and its size, when the receiver has them
    (else the file is read and measured).

    The record carries the routing tags of its series (:func:`tags_from_dataset`)
    when ``wants_series_tags(series_uid)`` says the index has none yet for that
    series (always, without the callable): the tags of every header are not
    worth their cost, those of a series' first instance are.
    """
    ds = read_header(path) if header is None else header
    dataset_sop = _text(ds, "SOPInstanceUID")
    if dataset_sop is not None and dataset_sop != sop_instance_uid:
        raise InvalidDicomError(  # the UIDs are not quoted: the message reaches the log
            "the dataset's SOP Instance UID differs from the C-STORE request's Affected "
            "SOP Instance UID"
        )
    image_type = _text(ds, "ImageType")
    series_uid = _instance_uid(ds, "SeriesInstanceUID")
    wanted = wants_series_tags is None or wants_series_tags(series_uid)
    return InstanceRecord(
        sop_instance_uid=_instance_uid(ds, "SOPInstanceUID", sop_instance_uid),
        sop_class_uid=_uid(ds, "SOPClassUID", sop_class_uid),
        series_uid=series_uid,
        study_uid=_instance_uid(ds, "StudyInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        path=str(path),
        size=path.stat().st_size if size is None else size,
        patient=Patient(
            patient_id=_text(ds, "PatientID"),
            issuer=_text(ds, "IssuerOfPatientID"),
            name=_text(ds, "PatientName"),
            birth_date=_text(ds, "PatientBirthDate"),
            sex=_text(ds, "PatientSex"),
        ),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        institution=_text(ds, "InstitutionName"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        protocol_name=_text(ds, "ProtocolName"),
        slice_thickness=_float(ds, "SliceThickness"),
        image_type=tuple(image_type.split("\\")) if image_type else (),
        contrast_agent=_text(ds, "ContrastBolusAgent"),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        calling_ae=calling_ae,
        called_ae=called_ae,
        peer_address=peer_address,
        received_at=received_at,
        series_tags=tags_from_dataset(ds) if wanted else None,
        site=site,
    )


def instance_record_from_spooled_file(
    path: Path, wants_series_tags: Callable[[str], bool] | None = None
) -> InstanceRecord:
    """The index record of a file already in the spool (indexed again at start): its
    sender as its file meta names it (:func:`sender_of`), its arrival time the file's."""
    calling_ae, called_ae, peer_address = sender_of(path)
    return instance_record_from_part10(
        path,
        calling_ae=calling_ae,
        called_ae=called_ae,
        peer_address=peer_address,
        received_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
        wants_series_tags=wants_series_tags,
    )


def sender_of(path: Path) -> tuple[str, str, str]:
    """Calling AE title, called AE title and address of the sender of a spooled file, from
    its file meta (:func:`adapters.dicom.storing.sender_meta`); empty strings for what a
    file does not name (one stored before radbridge wrote them, one from elsewhere)."""
    try:
        meta = read_file_meta_info(path)
    except dicom_header.PARSE_ERRORS:
        return "", "", ""
    address = urlsplit(str(meta.get("SendingPresentationAddress", "") or "")).hostname or ""
    return (
        str(meta.get("SendingApplicationEntityTitle", "") or "").strip(),
        str(meta.get("ReceivingApplicationEntityTitle", "") or "").strip(),
        address,
    )


def instance_record_from_part10(
    path: Path,
    *,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    received_at: datetime,
    wants_series_tags: Callable[[str], bool] | None = None,
    site: str | None = None,
) -> InstanceRecord:
    """The index record of a Part 10 file, its UIDs and transfer syntax from its file meta
    (a spooled file after a crash; an instance of a study from the site-to-hub link)."""
    try:  # the meta's values are decoded when read: an unknown VR fails there
        meta = read_file_meta_info(path)
        sop_class_uid = str(meta.get("MediaStorageSOPClassUID", ""))
        sop_instance_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
        transfer_syntax_uid = str(meta.get("TransferSyntaxUID", ""))
    except dicom_header.PARSE_ERRORS as exc:
        raise InvalidDicomError(
            f"the file meta information cannot be read: {type(exc).__name__}"
        ) from exc
    return instance_record_from_file(
        path,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        calling_ae=calling_ae,
        called_ae=called_ae,
        peer_address=peer_address,
        received_at=received_at,
        wants_series_tags=wants_series_tags,
        site=site,
    )
