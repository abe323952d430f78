"""What the rendered pages and their DICOM headers say, in the site's language.

Every text is marked with :func:`broker.i18n.N_` and translated by the zh_CN
catalogue of :mod:`broker.i18n` (the console's and the CLI's), so Chinese
and English come from one place. The vendor's own words (finding names,
its summary and comments) are shown as the vendor wrote them.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.i18n import DEFAULT, LANGUAGES, N_, translations

TITLE = N_("AI result for review")
STATEMENT = N_(
    "This result was produced by an AI product. It is for review by a clinician "
    "and is not a diagnosis."
)
PATIENT = N_("Patient")
PATIENT_ID = N_("Patient ID")
ACCESSION = N_("Accession number")
STUDY_DATE = N_("Study date")
STUDY = N_("Study")
PRODUCT = N_("AI product")
VERSION = N_("Version")
VENDOR = N_("Vendor")
RESULT_TIME = N_("Result received")
SUMMARY = N_("Summary")
FINDINGS = N_("Findings")
FINDING = N_("Finding")
RESULT = N_("Result")
PROBABILITY = N_("Probability")
MEASUREMENTS = N_("Measurements")
SITE = N_("Site")
PRESENT = N_("present")
ABSENT = N_("absent")
URGENT = N_("URGENT")
NO_FINDINGS = N_("No findings reported.")
KEY_IMAGES = N_("Key images")
NO_KEY_IMAGES = N_("The result names no key images.")
SEGMENT = N_("Segment")
VENDOR_IMAGE = N_("Image made by the AI product")
IMAGE = N_("Image")
PAGE = N_("Page {page} of {pages}")
SUMMARY_SERIES = N_("AI summary, for review: {product}")
OVERLAY_SERIES = N_("AI overlay, for review: {product}")
KOS_SERIES = N_("AI key images: {product}")
PDF_SERIES = N_("AI report, for review: {product}")
PDF_TITLE = N_("AI result for review: {product}")


def translator(language: str | None) -> Callable[[str], str]:
    """``gettext`` of ``language`` (None or unknown: English)."""
    chosen = language if language in LANGUAGES else DEFAULT
    return translations(chosen).gettext
