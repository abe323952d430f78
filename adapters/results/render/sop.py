"""The DICOM objects of the renderings: secondary captures, a KOS, an Encapsulated PDF.

Built with highdicom (SC images, the Key Object Selection document) and
pydicom (Encapsulated PDF, which highdicom does not make). Every object:

- is filed in the original study (patient and study attributes copied from
  the source images), in a series of its own per rendering kind;
- has UIDs that depend only on the result, the rendering kind, the language
  and its index (:func:`render_uids`), so a retried write-back stores the same
  instances again instead of new ones;
- says what it is in the site's language (Series Description) and is
  written in UTF-8 (``ISO_IR 192``), Chinese included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, DT, TM

from adapters.results.render import words
from adapters.results.render.content import Content
from adapters.results.render.marks import Rgb
from adapters.results.sr import lo_text

UTF8 = "ISO_IR 192"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: Series Numbers of the renderings (the SR radbridge makes is 900).
SERIES_NUMBERS = {"sc_summary": 910, "kos": 911, "seg_overlay": 912, "pdf": 913}
OF_INTEREST = hd.sr.CodedConcept("113000", "DCM", "Of Interest")
DEVICE = hd.sr.CodedConcept("121007", "DCM", "Device")
DIAGNOSTIC_IMAGING_REPORT = ("18748-4", "LN", "Diagnostic imaging study")
Translate = Callable[[str], str]


def render_uids(key: str, kind: str, language: str, index: int = 0) -> tuple[UID, UID]:
    """(Series Instance UID, SOP Instance UID) of rendering ``kind`` number ``index``."""
    series = generate_uid(entropy_srcs=["radbridge-render-series", key, kind, language])
    instance = generate_uid(entropy_srcs=["radbridge-render", key, kind, language, str(index)])
    return series, instance


def _orientation(ds: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column) from Image Orientation (Patient), or as given."""
    given = ds.get("PatientOrientation")
    if given and len(given) == 2 and all(given):
        return str(given[0]), str(given[1])
    cosines = ds.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return "L", "P"  # unknown: an axial image's default (the image is marked derived)

    def letters(vector: Sequence[float]) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        axis = int(np.argmax(np.abs(vector)))
        return names[axis][0 if vector[axis] > 0 else 1]

    values = [float(v) for v in cosines]
    return letters(values[:3]), letters(values[3:])


def _finish(ds: Dataset, created: datetime, description: str) -> Dataset:
    ds.SpecificCharacterSet = UTF8
    ds.SeriesDescription = lo_text(description)
    ds.InstanceCreationDate = DA(created.date())
    ds.InstanceCreationTime = TM(created.time())
    ds.SeriesDate = DA(created.date())
    ds.SeriesTime = TM(created.time())
    ds.ContentDate = DA(created.date())
    ds.ContentTime = TM(created.time())
    return ds


def _sc(
    content: Content,
    ref: Dataset,
    pixels: Rgb,
    *,
    kind: str,
    index: int,
    key: str,
    language: str,
    created: datetime,
    description: str,
) -> Dataset:
    series_uid, sop_uid = render_uids(key, kind, language, index)
    spacing = ref.get("PixelSpacing") if kind == "seg_overlay" else None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS[kind],
        sop_instance_uid=sop_uid,
        instance_number=index + 1,
        manufacturer="radbridge",
        patient_orientation=_orientation(ref),
        series_description=lo_text(description),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.ConversionType = "WSD"
    sc.Laterality = ref.get("Laterality", "")
    if spacing:
        sc.PixelSpacing = list(spacing)
    sc.BurnedInAnnotation = "YES"
    sc.ManufacturerModelName = "radbridge"
    algo = content.algorithm
    sc.ImageComments = f"{algo.vendor} {algo.product} {algo.version}".strip()
    return _finish(sc, created, description)


def summary_sc(
    content: Content, pages: Sequence[Rgb], *, key: str, language: str, created: datetime
) -> list[Dataset]:
    """One secondary capture per page of the summary, in one series of its own."""
    tr = words.translator(language)
    description = tr(words.SUMMARY_SERIES).format(product=content.algorithm.product)
    out = []
    for index, pixels in enumerate(pages):
        sc = _sc(
            content,
            content.study,
            pixels,
            kind="sc_summary",
            index=index,
            key=key,
            language=language,
            created=created,
            description=description,
        )
        sc.PatientOrientation = ""  # a page has no anatomy
        out.append(sc)
    return out


def seg_overlays(content: Content, *, key: str, language: str, created: datetime) -> list[Dataset]:
    """A secondary capture per source image a segment covers: the image with the segments
    drawn on it, referencing it (Source Image Sequence)."""
    tr = words.translator(language)
    description = tr(words.OVERLAY_SERIES).format(product=content.algorithm.product)
    out = []
    for index, overlay in enumerate(content.overlays()):
        sc = _sc(
            content,
            overlay.source,
            overlay.pixels,
            kind="seg_overlay",
            index=index,
            key=key,
            language=language,
            created=created,
            description=description,
        )
        source = Dataset()
        source.ReferencedSOPClassUID = overlay.source.SOPClassUID
        source.ReferencedSOPInstanceUID = overlay.source.SOPInstanceUID
        sc.SourceImageSequence = DicomSequence([source])
        sc.DerivationDescription = lo_text(f"{tr(words.SEGMENT)}: {', '.join(overlay.labels)}")
        for keyword in ("SliceLocation", "ImagePositionPatient"):
            if keyword in overlay.source:
                sc.ImageComments = f"{sc.ImageComments}; {keyword} {overlay.source[keyword].value}"
        out.append(sc)
    return out


def _device(content: Content) -> hd.sr.ObserverContext:
    algo = content.algorithm
    return hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(
                entropy_srcs=["radbridge-ai-device", algo.vendor, algo.product, algo.version]
            ),
            name=lo_text(algo.product or "AI"),
            manufacturer_name=lo_text(algo.vendor) if algo.vendor else None,
            model_name=lo_text(algo.product) if algo.product else None,
        ),
    )


def key_object_selection(
    content: Content, *, key: str, language: str, created: datetime
) -> Dataset | None:
    """A KOS ("Of Interest") of the key images of the original study; None without any."""
    seen: dict[str, Dataset] = {}
    for image in content.key_images:
        if image.reference is not None:
            seen.setdefault(str(image.reference.SOPInstanceUID), image.reference)
    if not seen:
        return None
    tr = words.translator(language)
    algo = content.algorithm
    description = tr(words.STATEMENT)
    if content.summary:
        description = f"{content.summary} {description}"
    referenced = list(seen.values())
    evidence = [content.study, *(ds for ds in referenced if ds is not content.study)]
    series_uid, sop_uid = render_uids(key, "kos", language)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=hd.ko.KeyObjectSelection(
            document_title=OF_INTEREST,
            referenced_objects=referenced,
            observer_device_context=_device(content),
            description=description[:1024],
        ),
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["kos"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="radbridge",
    )
    kos.ContentDate = DA(created.date())
    kos.ContentTime = TM(created.time())
    return _finish(kos, created, tr(words.KOS_SERIES).format(product=algo.product))


def encapsulated_pdf(
    content: Content, pdf: bytes, *, key: str, language: str, created: datetime
) -> Dataset:
    """The summary PDF as an Encapsulated PDF in the original study."""
    tr = words.translator(language)
    study = content.study
    series_uid, sop_uid = render_uids(key, "pdf", language)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(ENCAPSULATED_PDF)
    ds.SOPInstanceUID = sop_uid
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "StudyDescription",
    ):
        if keyword in study:
            ds[keyword] = study[keyword]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        ds.setdefault(keyword, "")
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID"):
        ds.setdefault(keyword, "")
    ds.setdefault("AccessionNumber", "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = SERIES_NUMBERS["pdf"]
    ds.Manufacturer = "radbridge"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = DT(created)
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = lo_text(tr(words.PDF_TITLE).format(product=content.algorithm.product))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DIAGNOSTIC_IMAGING_REPORT
    ds.ConceptNameCodeSequence = DicomSequence([code])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    sources = [k.reference for k in content.key_images if k.reference is not None]
    if sources:
        items = []
        for ref in sources:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.SOPClassUID
            item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
            items.append(item)
        ds.SourceInstanceSequence = DicomSequence(items)
    return _finish(ds, created, tr(words.PDF_SERIES).format(product=content.algorithm.product))
