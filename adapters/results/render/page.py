"""The summary of a result as a page: laid out once as PDF (fpdf2), rasterised for DICOM.

:func:`summary_pdf` writes the page (A4, more pages when the findings or key
images need them) with fpdf2, the font of :mod:`.fonts` embedded and
subset, so the PDF keeps a real text layer (searchable, copyable, in Chinese
too). :func:`pdf_pages` renders those same pages to RGB pixels with PDFium
(pypdfium2) for the secondary capture: the SC and the PDF show one layout.

The page, top to bottom: the title and the statement that this is an AI
result for review; patient, patient ID, accession number, study date and
description; the AI product (vendor, product, version) and when the result
came; the product's summary; the findings table (finding, present or absent
and urgent, probability, measurements, site) or, for a segmentation
without findings, its segments; the key images with their marks and
captions, two a row; a footer with the page number.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pypdfium2 as pdfium
from fpdf import FPDF, FontFace
from PIL import Image
from pydicom.dataset import Dataset

from adapters.results.render import words
from adapters.results.render.content import Content
from adapters.results.render.fonts import cjk_font
from adapters.results.render.marks import Rgb
from broker.model.domain import Finding

FONT = "cjk"
#: Width in pixels of a page rendered for a secondary capture (A4: 1024 x 1448).
PAGE_PIXELS = 1024
RED = (170, 20, 20)
GREY = (90, 90, 90)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).replace("^", " ").strip() if value not in (None, "") else "-"


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 else value


def _result_cell(finding: Finding, tr: Callable[[str], str]) -> str:
    said = tr(words.PRESENT) if finding.present else tr(words.ABSENT)
    return f"{tr(words.URGENT)} {said}" if finding.urgent and finding.present else said


def _measurements(finding: Finding) -> str:
    """``Diameter 8.2 mm; Lung-RADS category 4`` (no unit shown for the UCUM unity ``1``)."""
    return "; ".join(
        f"{m.name.meaning} {m.value:g}" + ("" if m.unit == "1" else f" {m.unit}")
        for m in finding.measurements
    )


class _Page(FPDF):
    def __init__(self, footer_text: str, tr: Callable[[str], str]) -> None:
        super().__init__(format="A4", unit="mm")
        self.footer_text = footer_text
        self.tr = tr

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=8)
        self.set_text_color(*GREY)
        page = self.tr(words.PAGE).format(page=self.page_no(), pages="{nb}")
        self.cell(0, 5, f"{self.footer_text}    {page}", align="C")


def summary_pdf(content: Content, language: str, *, created: datetime, footer: str) -> bytes:
    """The summary of ``content`` in ``language`` as PDF bytes (see the module docstring)."""
    tr = words.translator(language)
    algo = content.algorithm
    pdf = _Page(footer, tr)
    pdf.set_creation_date(created)
    pdf.set_creator("radbridge")
    pdf.set_title(tr(words.PDF_TITLE).format(product=algo.product))
    pdf.set_lang(language.replace("_", "-"))
    pdf.add_font(FONT, "", str(cjk_font()))
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.add_page()
    pdf.set_font(FONT, size=18)
    pdf.cell(0, 10, tr(words.TITLE), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=10)
    pdf.set_text_color(*RED)
    pdf.multi_cell(0, 5, tr(words.STATEMENT), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    study = content.study
    facts = [
        (tr(words.PATIENT), _text(study, "PatientName")),
        (tr(words.PATIENT_ID), _text(study, "PatientID")),
        (tr(words.ACCESSION), _text(study, "AccessionNumber")),
        (tr(words.STUDY_DATE), _date(_text(study, "StudyDate"))),
        (tr(words.STUDY), _text(study, "StudyDescription")),
        (tr(words.VENDOR), algo.vendor or "-"),
        (tr(words.PRODUCT), algo.product or "-"),
        (tr(words.VERSION), algo.version or "-"),
        (tr(words.RESULT_TIME), created.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    plain = FontFace(emphasis="")
    with pdf.table(
        col_widths=(40, 150),
        first_row_as_headings=False,
        line_height=5.5,
        headings_style=plain,
        text_align="LEFT",
    ) as table:
        for name, value in facts:
            row = table.row()
            row.cell(name)
            row.cell(value)
    pdf.ln(3)
    if content.summary:
        pdf.set_font(FONT, size=12)
        pdf.cell(0, 7, tr(words.SUMMARY), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, size=10)
        pdf.multi_cell(0, 5, content.summary, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.set_font(FONT, size=12)
    pdf.cell(0, 7, tr(words.FINDINGS), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=9)
    if content.findings:
        with pdf.table(
            col_widths=(40, 22, 20, 68, 40), line_height=5, headings_style=plain, text_align="LEFT"
        ) as table:
            head = table.row()
            for name in (words.FINDING, words.RESULT, words.PROBABILITY, words.MEASUREMENTS):
                head.cell(tr(name))
            head.cell(tr(words.SITE))
            for finding in content.findings:
                row = table.row()
                row.cell(finding.code.meaning + (f"\n{finding.text}" if finding.text else ""))
                row.cell(_result_cell(finding, tr))
                row.cell("-" if finding.score is None else f"{finding.score * 100:.0f}%")
                row.cell(_measurements(finding) or "-")
                row.cell(finding.site.meaning if finding.site else "-")
    elif content.segment_rows:
        with pdf.table(
            col_widths=(80, 110), line_height=5, headings_style=plain, text_align="LEFT"
        ) as table:
            head = table.row()
            head.cell(tr(words.SEGMENT))
            head.cell(tr(words.FINDING))
            for label, meaning in content.segment_rows:
                row = table.row()
                row.cell(label)
                row.cell(meaning)
    else:
        pdf.multi_cell(0, 5, tr(words.NO_FINDINGS), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    _key_images(pdf, content, tr)
    return bytes(pdf.output())


def _key_images(pdf: FPDF, content: Content, tr: Callable[[str], str]) -> None:
    pdf.set_font(FONT, size=12)
    pdf.cell(0, 7, tr(words.KEY_IMAGES), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=9)
    if not content.key_images:
        pdf.multi_cell(0, 5, tr(words.NO_KEY_IMAGES), new_x="LMARGIN", new_y="NEXT")
        return
    width = (pdf.epw - 6) / 2
    for i in range(0, len(content.key_images), 2):
        pair = content.key_images[i : i + 2]
        height = max(width * k.pixels.shape[0] / k.pixels.shape[1] for k in pair) + 7
        if pdf.get_y() + height > pdf.page_break_trigger:
            pdf.add_page()
        top = pdf.get_y()
        for j, key in enumerate(pair):
            x = pdf.l_margin + j * (width + 6)
            h = width * key.pixels.shape[0] / key.pixels.shape[1]
            pdf.image(Image.fromarray(key.pixels, "RGB"), x=x, y=top, w=width, h=h)
            pdf.set_xy(x, top + h + 1)
            pdf.cell(width, 5, key.caption[:80])
        pdf.set_xy(pdf.l_margin, top + height)


def pdf_pages(data: bytes) -> list[Rgb]:
    """Each page of a PDF as RGB pixels, :data:`PAGE_PIXELS` wide (PDFium)."""
    document = pdfium.PdfDocument(data)
    try:
        pages: list[Rgb] = []
        for page in document:
            bitmap = page.render(scale=PAGE_PIXELS / page.get_width())
            pixels: Any = np.asarray(bitmap.to_pil().convert("RGB"))
            pages.append(np.ascontiguousarray(pixels, dtype=np.uint8))
            page.close()
        return pages
    finally:
        document.close()
