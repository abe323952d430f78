"""One data set de-identified in place: the profile's action on every attribute, at any depth.

Attributes are walked top-down into every sequence that is kept. Private
attributes go unless ``keep_private`` names them (their creator elements stay
with them). Patient ID, Patient's Name and Accession Number get the keyed
pseudonyms of :class:`~broker.model.deid.Pseudonyms` (wherever they occur), and
every UID the table marks ``U`` the keyed UID of its original value, so the same
UID in a reference and in the referenced instance stays the same. With
``retain_longitudinal_modified_dates`` dates the profile would remove are moved
back by the patient's day shift and times kept. Text that an option cleans loses
the words that identify the patient (name parts, IDs, accession number).

The result carries Patient Identity Removed ``YES``, De-identification Method
(``radbridge basic+…``) with its coded options (CID 7050), and Longitudinal
Temporal Information Modified.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from adapters.deid.table import PSEUDONYMIZED, Action, actions_for, repeating_action
from broker.model.deid import (
    Deidentify,
    DeidOption,
    Pseudonym,
    PseudonymKind,
    Pseudonyms,
)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


PATIENT_ID = _tag("PatientID")
PATIENT_NAME = _tag("PatientName")
ACCESSION = _tag("AccessionNumber")
PATIENT_BIRTH_DATE = _tag("PatientBirthDate")
TEXT_OBJECTS = _tag("TextObjectSequence")
UID_KINDS = {
    _tag("StudyInstanceUID"): PseudonymKind.STUDY,
    _tag("SeriesInstanceUID"): PseudonymKind.SERIES,
    _tag("SOPInstanceUID"): PseudonymKind.INSTANCE,
    _tag("ReferencedSOPInstanceUID"): PseudonymKind.INSTANCE,
    _tag("MediaStorageSOPInstanceUID"): PseudonymKind.INSTANCE,
}
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BYTES_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "UR": ""}

#: What De-identification Method (0012,0063) starts with in radbridge's copies.
METHOD_PREFIX = "radbridge "
#: File meta information that names the systems an object went through, or is private.
_META_REMOVED = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "SourcePresentationAddress",
    "SendingPresentationAddress",
    "ReceivingPresentationAddress",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)
#: PS3.16 CID 7050 De-identification Method codes of the profile and its options.
METHOD_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "113108",
        "Retain Patient Characteristics Option",
    ),
    DeidOption.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    DeidOption.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    DeidOption.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    DeidOption.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    "pixels": ("113101", "Clean Pixel Data Option"),
}


@dataclass
class Deidentifier:
    """Applies one profile to data sets, collecting the pseudonyms it issues.

    ``issued`` maps each pseudonym to what it stands for; one instance serves every
    file of a study (and may serve several studies)."""

    profile: Deidentify
    keys: Pseudonyms
    issued: MutableMapping[str, Pseudonym] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.actions = actions_for(self.profile)
        self.kept_private = {(p.creator, p.group, p.element) for p in self.profile.kept_private}
        self.shift_dates = self.profile.has(DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES)

    # ------------------------------------------------------------------ entry

    def apply(self, ds: Dataset, *, masked: bool = False) -> None:
        """De-identify ``ds`` (and its file meta information) in place."""
        patient_id = str(ds.get("PatientID", "") or "")
        issuer = str(ds.get("IssuerOfPatientID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        walk = _Walk(
            self,
            study_uid=study_uid,
            patient=(patient_id, issuer),
            words=identifying_words(ds),
            days=self.keys.day_shift(patient_id, issuer) if self.shift_dates else 0,
        )
        walk.dataset(ds, cleaning=False)
        if "PatientID" not in ds:
            ds.PatientID = ""
        if "PatientName" not in ds:
            ds.PatientName = f"{ds.PatientID}^" if ds.PatientID else ""
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for keyword in _META_REMOVED:
                if keyword in meta:
                    delattr(meta, keyword)
        self._mark(ds, masked=masked)

    def _mark(self, ds: Dataset, *, masked: bool) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"{METHOD_PREFIX}{self.profile.describe()}"[:64]
        keys: list[str] = ["basic", *sorted(self.profile.options)]
        if masked:
            keys.append("pixels")
        items = []
        for key in keys:
            value, meaning = METHOD_CODES[key]
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self.shift_dates else "REMOVED"


def dictionary_vr(tag: int) -> str | None:
    """The VR the data dictionary gives ``tag`` (an implicit VR data set names none)."""
    return dictionary_VR(tag) if dictionary_has_tag(tag) else None


def identifying_words(ds: Dataset) -> tuple[str, ...]:
    """Words cleaned out of kept text: parts of the patient's names, IDs, accession number."""
    words: set[str] = set()
    for keyword in (
        "PatientName",
        "PatientBirthName",
        "OtherPatientNames",
        "PatientMotherBirthName",
    ):
        value = ds.get(keyword)
        if value is None:
            continue
        for name in value if isinstance(value, MultiValue) else [value]:
            text = str(name)
            for part in re.split(r"[\^=]", text):
                if len(part.strip()) >= 2:
                    words.add(part.strip())
            for group in text.split("="):  # an ideographic name written without separators
                joined = group.replace("^", "")
                if len(joined) >= 2:
                    words.add(joined)
    for keyword in ("PatientID", "AccessionNumber", "OtherPatientIDs"):
        value = ds.get(keyword)
        for item in value if isinstance(value, MultiValue) else [value]:
            if item and len(str(item)) >= 2:
                words.add(str(item))
    return tuple(sorted(words, key=len, reverse=True))


def clean_text(text: str, words: Iterable[str]) -> str:
    """``text`` without any of ``words`` (any case)."""
    for word in words:
        text = re.sub(re.escape(word), "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", text).strip()


@dataclass
class _Walk:
    """One data set's walk: what it needs to know about its patient and study."""

    owner: Deidentifier
    study_uid: str
    patient: tuple[str, str]
    words: tuple[str, ...]
    days: int

    def _issue(self, kind: PseudonymKind, pseudonym: str, original: str) -> str:
        known = self.owner.issued.get(pseudonym)
        if known is None or (known.kind is PseudonymKind.UID and kind is not PseudonymKind.UID):
            self.owner.issued[pseudonym] = Pseudonym(kind, pseudonym, original, self.study_uid)
        return pseudonym

    def patient_pseudonym(self) -> str:
        patient_id, issuer = self.patient
        pseudonym = self.owner.keys.patient_id(patient_id, issuer)
        return self._issue(PseudonymKind.PATIENT, pseudonym, patient_id)

    def uid(self, original: str, kind: PseudonymKind) -> str:
        if not original:
            return original
        return self._issue(kind, self.owner.keys.uid(original), original)

    def dataset(self, ds: Dataset, *, cleaning: bool) -> None:
        # An attribute the profile keeps as it is stays unparsed, and is written back as
        # it was read (pixel data, most of the header): only the others are converted.
        for tag in list(ds.keys()):
            if self._acted_on(ds, int(tag), cleaning=cleaning):
                self.element(ds, ds[tag], cleaning=cleaning)

    def _acted_on(self, ds: Dataset, tag: int, *, cleaning: bool) -> bool:
        """Whether the attribute ``tag`` of ``ds`` may change (or holds items that may)."""
        if tag >> 16 & 1 or tag in PSEUDONYMIZED or tag in self.owner.actions:
            return True
        if repeating_action(tag) is not None:
            return True
        vr = ds.get_item(tag).VR or dictionary_vr(tag)
        return vr in ("SQ", "UN", None) or (cleaning and vr in _TEXT_VRS)

    def element(self, ds: Dataset, elem: DataElement, *, cleaning: bool) -> None:
        tag = int(elem.tag)
        if elem.tag.is_private:
            if not self._private_kept(ds, tag):
                del ds[tag]
            return
        if tag in PSEUDONYMIZED:
            self._pseudonymize(elem, tag)
            return
        action = self.owner.actions.get(tag) or repeating_action(tag) or Action.KEEP
        if (
            self.owner.shift_dates
            and elem.VR in ("DA", "DT", "TM")
            and action in (Action.REMOVE, Action.EMPTY, Action.DUMMY)
            and tag != PATIENT_BIRTH_DATE
        ):
            action = Action.SHIFT
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.EMPTY:
            _empty(elem)
        elif action is Action.DUMMY:
            self._dummy(elem, tag)
        elif action is Action.UID:
            self._uids(elem, tag)
        elif action is Action.SHIFT:
            self._shift(elem)
        elif action is Action.CLEAN:
            self._clean(elem)
        elif elem.VR == "SQ":
            for item in elem.value:
                self.dataset(item, cleaning=cleaning)
        elif cleaning and elem.VR in _TEXT_VRS:
            self._clean(elem)

    # ------------------------------------------------------------------ actions

    def _private_kept(self, ds: Dataset, tag: int) -> bool:
        group, element = tag >> 16, tag & 0xFFFF
        kept = self.owner.kept_private
        if not kept or element < 0x10:
            return False
        if element <= 0xFF:  # a private creator: kept with any of its kept attributes
            creator = str(ds[tag].value).strip()
            return any(c == creator and g == group for c, g, _ in kept)
        creator_tag = (group << 16) | (element >> 8)
        if creator_tag not in ds:
            return False
        return (str(ds[creator_tag].value).strip(), group, element & 0xFF) in kept

    def _pseudonymize(self, elem: DataElement, tag: int) -> None:
        value = str(elem.value or "")
        if tag == ACCESSION:
            elem.value = (
                self._issue(PseudonymKind.ACCESSION, self.owner.keys.accession(value), value)
                if value
                else ""
            )
        elif not self.patient[0]:  # no patient ID: nothing to name the patient by
            elem.value = ""
        elif tag == PATIENT_NAME:  # the pseudonym as the family name
            elem.value = self.patient_pseudonym() + "^"
        else:
            elem.value = self.patient_pseudonym()

    def _uids(self, elem: DataElement, tag: int) -> None:
        kind = UID_KINDS.get(tag, PseudonymKind.UID)
        if elem.VR == "SQ":
            for item in elem.value:
                self.dataset(item, cleaning=False)
        elif isinstance(elem.value, MultiValue):
            elem.value = [self.uid(str(v), kind) for v in elem.value]
        elif elem.value:
            elem.value = self.uid(str(elem.value), kind)

    def _dummy(self, elem: DataElement, tag: int) -> None:
        vr = elem.VR
        if vr == "UI":
            self._uids(elem, tag)
        elif vr == "SQ":
            elem.value = DicomSequence()
        elif vr in _DUMMY:
            elem.value = _DUMMY[vr]
        elif vr in _TEXT_VRS or vr in ("CS", "AE"):
            elem.value = _DUMMY_TEXT
        elif vr in ("IS", "DS"):
            elem.value = "0"
        elif vr in _NUMBER_VRS:
            elem.value = 0
        else:
            elem.value = b""

    def _shift(self, elem: DataElement) -> None:
        if elem.VR == "TM" or not elem.value:
            return
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        shifted = [_shift_date(str(v), self.days) for v in values]
        elem.value = shifted if len(shifted) > 1 else shifted[0]

    def _clean(self, elem: DataElement) -> None:
        if elem.VR == "SQ":
            for item in elem.value:
                if TEXT_OBJECTS in item:
                    del item[TEXT_OBJECTS]
                self.dataset(item, cleaning=True)
        elif elem.VR in _TEXT_VRS and elem.value:
            values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
            cleaned = [clean_text(str(v), self.words) for v in values]
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]


def _empty(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = DicomSequence()
    elif elem.VR in _BYTES_VRS:
        elem.value = b""
    elif elem.VR in _NUMBER_VRS:
        elem.value = None
    else:
        elem.value = ""


def _shift_date(value: str, days: int) -> str:
    """A DA or DT value moved back ``days`` days (the time part of a DT kept)."""
    text = value.strip()
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return _DUMMY["DA"] + text[8:]
    return (day - timedelta(days=days)).strftime("%Y%m%d") + text[8:]
