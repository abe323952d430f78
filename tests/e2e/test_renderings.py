"""Renderings for PACS that cannot show SR or SEG, through one ``radbridge serve``: the harness's
four vendor result kinds (SR, SEG, SC by C-STORE; JSON findings over the HTTP API) are written
back to Orthanc with ``render: [sc_summary, kos, seg_overlay, pdf]`` in the site's language
(zh_CN) and, by a second target, only an English summary page (``originals: false``); to the
RIS with the PDF in the ORU, and to a FHIR receiver as a DocumentReference.
Every rendered object passes dciodvfy, Orthanc previews the images and serves the PDF, and the
Chinese text is really drawn (ink where PDFium puts each Chinese character of the page)."""

from __future__ import annotations

import base64
import io
import itertools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pypdfium2 as pdfium
import pytest
from PIL import Image

from adapters.harness.modality import send_files
from adapters.harness.pacs import Orthanc
from adapters.harness.scenario.schema import Scenario
from adapters.harness.scenario.world import World
from broker.model.jobs import JobState
from tests.fhir_receiver import FhirReceiver
from tests.peers import LOOPBACK, ensure_cjk_font, ensure_debian_packages, wait_until

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.slow(seconds=25),
    pytest.mark.xdist_group("renderings"),
]

TITLE = "人工智能结果（仅供审阅）"
STATEMENT = "本结果由人工智能产品生成，仅供医生审阅，不作为诊断结论。"
#: Vendor name -> (harness product kind, result kind, the product's name).
VENDORS = {
    "lung": ("lung-nodule-ct", "sr", "Lung Nodule CT"),
    "heart": ("coronary-cta", "seg", "Coronary CTA"),
    "bone": ("fracture", "sc", "Fracture Detection"),
    "brain": ("head-ct-bleed", "json", "Head CT Bleed Triage"),
}
SUMMARY, KOS, OVERLAY, PDF = 910, 911, 912, 913
ZH_SUMMARY = "AI结果摘要（仅供审阅）："


def _scenario(fhir_url: str) -> Scenario:
    vendors: dict[str, Any] = {}
    for name, (_kind, result, product) in VENDORS.items():
        if result == "json":
            transport = {"type": "http", "url": f"${{vendor.{name}.url}}"}
        else:
            transport = {
                "type": "dicom",
                "ae_title": f"${{vendor.{name}.ae_title}}",
                "host": LOOPBACK,
                "port": f"${{vendor.{name}.port}}",
            }
        vendors[name] = {"product": product, "transport": transport}
    return Scenario.model_validate(
        {
            "name": "renderings",
            "radbridge": {
                "site": {"language": "zh_CN"},
                "vendors": vendors,
                "targets": {
                    "pacs": {
                        "type": "dicom",
                        "ae_title": "ORTHANC",
                        "host": LOOPBACK,
                        "port": "${pacs.dicom_port}",
                        "render": ["sc_summary", "kos", "seg_overlay", "pdf"],
                    },
                    "pacs_en": {
                        "type": "dicom",
                        "ae_title": "ORTHANC",
                        "host": LOOPBACK,
                        "port": "${pacs.dicom_port}",
                        "render": ["sc_summary"],
                        "originals": False,
                        "language": "en",
                    },
                    "ris": {
                        "type": "hl7",
                        "host": LOOPBACK,
                        "port": "${ris.port}",
                        "render": ["pdf"],
                    },
                    "emr": {"type": "fhir", "url": fhir_url, "render": ["pdf"]},
                },
                "routes": [
                    {
                        "name": "chest-ct-all",
                        "when": {"modality": "CT"},
                        "send": list(VENDORS),
                        "write_back": ["pacs", "pacs_en", "ris", "emr"],
                    }
                ],
                "delivery": {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5},
            },
            "simulators": {
                "vendors": {
                    name: {"product": kind, "result": result, "http": result == "json"}
                    for name, (kind, result, _product) in VENDORS.items()
                },
                "pacs": {"kind": "orthanc", "ae_title": "ORTHANC"},
                "ris": {},
            },
            "studies": {
                "chest": {
                    "kind": "ct_chest",
                    "accession": "ACC7001",
                    "instances": 6,
                    "rows": 64,
                    "columns": 64,
                }
            },
        }
    )


@dataclass
class Written:
    world: World
    emr: FhirReceiver
    study_uid: str
    folder: Path

    @property
    def pacs(self) -> Orthanc:
        assert isinstance(self.world.pacs, Orthanc)
        return self.world.pacs

    def instances(self) -> list[dict[str, Any]]:
        """Every instance Orthanc holds for the study, with its main tags."""
        found: list[dict[str, Any]] = self.pacs.get(f"/studies/{self._study_id()}/instances?expand")
        for instance in found:
            series = self.pacs.get(f"/series/{instance['ParentSeries']}")
            instance["Series"] = series["MainDicomTags"]
        return found

    def _study_id(self) -> str:
        [study] = self.pacs.request(
            "POST", "/tools/lookup", self.study_uid.encode()
        )  # the study's Orthanc ID
        return str(study["ID"])

    def rendered(self, number: int, product: str) -> list[dict[str, Any]]:
        """Orthanc's instances of series ``number`` made for ``product``."""
        return [
            i
            for i in self.instances()
            if int(i["Series"].get("SeriesNumber", 0)) == number
            and product in i["Series"].get("SeriesDescription", "")
        ]

    def chinese_page(self, product: str) -> dict[str, Any]:
        """The one summary page in Chinese (the ``pacs`` target's) made for ``product``."""
        [page] = [
            p
            for p in self.rendered(SUMMARY, product)
            if p["Series"]["SeriesDescription"].startswith(ZH_SUMMARY)
        ]
        return page

    def file(self, instance: dict[str, Any]) -> Path:
        path = self.folder / f"{instance['ID']}.dcm"
        if not path.exists():
            path.write_bytes(self.pacs.request("GET", f"/instances/{instance['ID']}/file"))
        return path


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    """radbridge (site language zh_CN) with the four vendors, after the chest CT was sent and
    every job is done: each result written to Orthanc, the RIS and the FHIR receiver."""
    ensure_cjk_font()
    ensure_debian_packages("Orthanc", "dciodvfy")
    folder = tmp_path_factory.mktemp("renderings")
    with FhirReceiver() as emr:
        world = World(_scenario(emr.url), folder / "world")
        try:
            world.make_studies()
            world.start_simulators()
            world.write_config()
            world.radbridge.start()
            study = world.studies["chest"]
            report = send_files(
                study.files, host=LOOPBACK, port=world.rb_port, called_ae="RADBRIDGE"
            )
            assert report.ok, report.failures

            def finished() -> bool:
                jobs = [world.jobs().find(study.uid, name) for name in VENDORS]
                states = [j.state if j else None for j in jobs]
                dead = [j for j in jobs if j is not None and j.state is JobState.DEAD]
                assert not dead, [(j.vendor, j.last_error) for j in dead]
                return all(s is JobState.DONE for s in states)

            wait_until(finished, "every job done", timeout=120)
            files = folder / "files"
            files.mkdir()
            yield Written(world, emr, study.uid, files)
        finally:
            world.close()


def _pdf_text(data: bytes) -> str:
    document = pdfium.PdfDocument(data)
    try:
        return "".join(page.get_textpage().get_text_range() for page in document)
    finally:
        document.close()


def test_each_result_kind_gets_every_rendering_in_the_pacs(written: Written) -> None:
    """For each vendor result kind (SR, SEG, SC, JSON findings) Orthanc holds, besides the
    result's own objects, a summary SC page, a KOS and an Encapsulated PDF, each in a series of
    its own named in Chinese; the SEG's images are drawn on in an overlay series."""
    held = written.instances()
    modalities = {i["Series"].get("Modality") for i in held}
    assert {"SR", "SEG"} <= modalities  # the originals are stored too (originals: true)
    for name, (_kind, result, product) in VENDORS.items():
        page = written.chinese_page(product)
        assert len(written.rendered(KOS, product)) == 1, name
        assert len(written.rendered(PDF, product)) == 1, name
        overlays = written.rendered(OVERLAY, product)
        if result == "seg":
            assert len(overlays) == 2  # the harness SEG covers the middle third: 2 of 6 slices
        else:
            assert overlays == [], name
        ds = pydicom.dcmread(written.file(page), stop_before_pixels=True)
        assert ds.StudyInstanceUID == written.study_uid
        assert ds.PatientID == "PAT0001"
        assert ds.AccessionNumber == "ACC7001"


def test_a_target_without_originals_stores_only_its_renderings_in_its_own_language(
    written: Written,
) -> None:
    """The ``pacs_en`` target (``render: [sc_summary]``, ``originals: false``,
    ``language: en``) stored one English summary page per result and none of the result's
    own objects, as each of its deliveries says."""
    for _kind, _result, product in VENDORS.values():
        pages = written.rendered(SUMMARY, product)
        described = sorted(p["Series"]["SeriesDescription"] for p in pages)
        assert described == [
            f"AI summary, for review: {product}",
            f"{ZH_SUMMARY}{product}",
        ]
    done = written.world.deliveries().list(target="pacs_en")
    assert len(done) == 4
    assert all(d.detail and "0 original and 1 rendered object(s)" in d.detail for d in done)


def test_the_key_images_carry_the_marks_the_result_gives(written: Written) -> None:
    """On the summary page the key image shows the result's marks in colour: the SR's image
    region (a circle), the SEG's outline and fill, the vendor SC's own circle; JSON findings
    give no coordinates, so their key image is plain grey."""
    for _kind, result, product in VENDORS.values():
        page = written.chinese_page(product)
        pixels = pydicom.dcmread(written.file(page)).pixel_array.astype(int)
        below = pixels[pixels.shape[0] * 3 // 10 :]  # the key images; the red statement is above
        marked = below[..., 0] - below[..., 1:].max(axis=-1) > 60  # reddish: the marks' colour
        if result == "json":
            assert marked.sum() == 0, product
        else:
            assert marked.sum() > 200, product


def test_every_rendered_object_passes_dciodvfy_and_orthanc_previews_the_images(
    written: Written,
) -> None:
    """Each SC, KOS and Encapsulated PDF radbridge rendered passes dciodvfy without errors;
    Orthanc renders a preview of every SC (the pages and the overlays), and serves the PDF."""
    rendered = [
        i
        for i in written.instances()
        if int(i["Series"].get("SeriesNumber", 0)) in (SUMMARY, KOS, OVERLAY, PDF)
    ]
    assert len(rendered) == 4 * 4 + 2  # page (zh_CN, en), KOS, PDF per result; 2 overlays
    for instance in rendered:
        path = written.file(instance)
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
        assert not errors, (instance["Series"], errors)
        number = int(instance["Series"]["SeriesNumber"])
        if number in (SUMMARY, OVERLAY):
            png = written.pacs.request("GET", f"/instances/{instance['ID']}/preview")
            image = Image.open(io.BytesIO(png))
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert image.size == (ds.Columns, ds.Rows)
            assert np.asarray(image).std() > 10  # not a blank picture
        if number == PDF:
            pdf = written.pacs.request("GET", f"/instances/{instance['ID']}/pdf")
            assert pdf.startswith(b"%PDF")


def _ink(pixels: np.ndarray[Any, Any], box: tuple[float, ...], scale: float, height: float) -> Any:
    left, bottom, right, top = box
    y0, y1 = int((height - top) * scale), int((height - bottom) * scale) + 1
    x0, x1 = int(left * scale), int(right * scale) + 1
    return pixels[y0:y1, x0:x1].min(axis=2) < 128


def test_the_summary_page_shows_the_chinese_text_in_the_pdf_and_on_the_sc(
    written: Written,
) -> None:
    """The PDF's text layer holds the Chinese title, the statement and the product; on the SC
    page each Chinese character of the title is drawn where the PDF puts it (ink in its box),
    and no two of them look alike (a missing glyph would be the same empty box each time)."""
    for _name, (_kind, _result, product) in VENDORS.items():
        [document] = written.rendered(PDF, product)
        pdf = written.pacs.request("GET", f"/instances/{document['ID']}/pdf")
        text = _pdf_text(pdf)
        assert TITLE in text and STATEMENT in text.replace("\r\n", "").replace("\n", "")
        assert product in text and "PAT0001" in text
        page = written.chinese_page(product)
        pixels = pydicom.dcmread(written.file(page)).pixel_array
        first = pdfium.PdfDocument(pdf)[0]
        scale = pixels.shape[1] / first.get_width()
        textpage = first.get_textpage()
        start = textpage.get_text_range().index(TITLE)
        glyphs = []
        for i, char in enumerate(TITLE[:6]):
            drawn = _ink(pixels, textpage.get_charbox(start + i), scale, first.get_height())
            assert drawn.sum() > 20, f"no ink for {char} on the {product} page"
            glyphs.append(drawn)
        for a, b in itertools.combinations(glyphs, 2):
            assert a.shape != b.shape or (a != b).any()


def test_the_ris_gets_the_pdf_embedded_in_the_oru(written: Written) -> None:
    """Every ORU^R01 to the RIS carries the summary PDF in an ED OBX (LOINC 18748-4,
    ^AP^PDF^Base64^…), and that PDF is the Chinese summary of the result's product."""
    assert written.world.ris is not None
    orus = [m.raw.decode() for m in written.world.ris.messages if m.kind.startswith("ORU")]
    assert len(orus) == 4
    products = set()
    for oru in orus:
        [obx] = [s for s in oru.split("\r") if s.startswith("OBX|") and s.split("|")[2] == "ED"]
        fields = obx.split("|")
        assert fields[3].startswith("18748-4^")
        _source, kind, subtype, encoding, data = fields[5].split("^")
        assert (kind, subtype, encoding) == ("AP", "PDF", "Base64")
        text = _pdf_text(base64.b64decode(data))
        assert TITLE in text
        products |= {p for _k, _r, p in VENDORS.values() if p in text}
    assert products == {p for _k, _r, p in VENDORS.values()}


def test_the_emr_gets_a_document_reference_with_the_pdf(written: Written) -> None:
    """Each transaction Bundle to the FHIR receiver has a DocumentReference (preliminary,
    LOINC 18748-4, language zh-CN) whose attachment is the summary PDF, related to the
    DiagnosticReport of the same Bundle."""
    assert len(written.emr.bundles) == 4
    for bundle in written.emr.bundles:
        [report] = [
            e for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
        ]
        [entry] = [
            e for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
        ]
        document = entry["resource"]
        assert document["docStatus"] == "preliminary"
        assert document["type"]["coding"][0]["code"] == "18748-4"
        assert document["context"]["related"] == [{"reference": report["fullUrl"]}]
        attachment = document["content"][0]["attachment"]
        assert (attachment["contentType"], attachment["language"]) == ("application/pdf", "zh-CN")
        assert TITLE in _pdf_text(base64.b64decode(attachment["data"]))
