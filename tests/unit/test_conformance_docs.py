"""The DICOM Conformance Statement and the HL7 v2 interface specification (docs/) say what
the code does: their tables are read and compared with what the listener registers, the
status codes, the HL7 message types, order controls, acknowledgment and error codes and the
character sets in the code. A change on either side without the other fails here."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from pydicom.uid import UID

from adapters.dicom.server import TRANSFER_SYNTAXES, storage_contexts
from adapters.dicom_status import StoreFailure
from adapters.hl7 import charsets
from adapters.hl7.ack import AckCode, ErrorCode
from adapters.hl7.mapping import ORDER_CONTROL, ORDER_STATUS, SUPPORTED_EVENTS, SUPPORTED_VERSIONS
from adapters.hl7.oru import CHARSETS
from adapters.hl7.reports import REPORT_EVENTS
from config.schema import Dicom

ROOT = Path(__file__).resolve().parents[2]
DICOM_DOC = ROOT / "docs" / "dicom-conformance.md"
HL7_DOC = ROOT / "docs" / "hl7-interface.md"


def table(doc: Path, heading: str, *, after: str | None = None) -> list[list[str]]:
    """The rows (cells without backticks) of the first table under the heading that contains
    ``heading`` or, with ``after``, of the table there whose header row contains ``after``."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    if after is None:
        first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    else:
        first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(after))
    rows: list[list[str]] = []
    for line in lines[first + 2 :]:  # after the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    assert rows, f"no table under {heading!r} in {doc.name}"
    return rows


def test_dicom_sop_classes_are_those_the_listener_accepts() -> None:
    """Every SOP class the listener's presentation contexts accept is in the statement, with
    its name, as SCP, and nothing else is."""
    rows = table(DICOM_DOC, "SOP classes accepted (SCP)")
    accepted = [str(cx.abstract_syntax) for cx in storage_contexts()]
    assert sorted(uid for _, uid, _ in rows) == sorted(accepted)
    assert all(name == UID(uid).name and role == "SCP" for name, uid, role in rows)


def test_dicom_transfer_syntaxes_are_those_the_listener_accepts() -> None:
    """The transfer syntax table is the listener's list, in its order, with pydicom's names."""
    rows = table(DICOM_DOC, "Transfer syntaxes accepted (SCP)")
    assert [uid for _, uid in rows] == [str(ts) for ts in TRANSFER_SYNTAXES]
    for name, uid in rows:
        assert name.replace(", Selection Value 1", " [Selection Value 1]") == UID(uid).name


def test_dicom_status_codes_are_those_of_dicom_status() -> None:
    """The statuses documented are success and every StoreFailure, with their class."""
    rows = table(DICOM_DOC, "Status codes returned")
    documented = {int(status, 16): kind for status, kind, *_ in rows}
    assert set(documented) == {0x0000} | {int(s) for s in StoreFailure}
    assert documented[StoreFailure.OUT_OF_RESOURCES] == "refused"
    assert {documented[s] for s in StoreFailure if s >= 0xA900} == {"error"}


def test_dicom_configuration_defaults_are_the_settings_defaults() -> None:
    """Each default in the configuration table is the ``dicom`` settings' default."""
    defaults = Dicom()
    for setting, default, _ in table(DICOM_DOC, "Configuration parameters"):
        value: object = defaults
        for part in setting.split(".")[1:]:
            value = getattr(value, part)
        assert str(value) == default, setting


def test_hl7_messages_accepted_are_those_the_handler_maps() -> None:
    """The messages-accepted table lists exactly the message types the handler dispatches
    (orders and patients by the mapping, final reports by the report reader), and the
    versions read are the supported range."""
    rows = table(HL7_DOC, "Messages accepted")
    assert [message for message, _ in rows] == [*SUPPORTED_EVENTS, *REPORT_EVENTS]
    low, high = (".".join(map(str, v)) for v in SUPPORTED_VERSIONS)
    assert f"MSH-12 from {low} to {high}" in HL7_DOC.read_text(encoding="utf-8")


def test_hl7_order_controls_and_statuses_are_the_mapping_tables() -> None:
    """ORC-1 and ORC-5 tables: the same codes as the mapping, each setting the same status."""
    controls = {code: effect for code, effect in table(HL7_DOC, "Order control and status")}
    assert list(controls) == list(ORDER_CONTROL)
    for code, status in ORDER_CONTROL.items():
        if status is None:
            assert controls[code].startswith("from ORC-5")
        else:
            assert controls[code] == status.value.replace("_", " ")
    statuses = table(HL7_DOC, "Order control and status", after="| ORC-5 |")
    assert {c: s.replace(" ", "_") for c, s in statuses} == {
        c: s.value for c, s in ORDER_STATUS.items()
    }


def test_hl7_acknowledgment_codes_are_the_ack_codes() -> None:
    """MSA-1 table: every acknowledgment code radbridge sends (AA/AE/AR, CA/CE/CR)."""
    rows = table(HL7_DOC, "Acknowledgments")
    assert [code for code, _ in rows] == [c.value for c in AckCode]


def test_hl7_error_codes_are_those_the_code_sends() -> None:
    """ERR table: exactly the HL7 table 0357 codes the HL7 adapter uses, with their text."""
    used = set()
    for source in (ROOT / "adapters" / "hl7").glob("*.py"):
        if source.name != "ack.py":  # where they are defined
            used |= set(re.findall(r"ErrorCode\.([A-Z_]+)", source.read_text()))
    rows = table(HL7_DOC, "Acknowledgments", after="| ERR code |")
    assert {int(code): text for code, text, _ in rows} == {
        ErrorCode[name].value: ErrorCode[name].text for name in used
    }


def _codec(label: str) -> str:
    return codecs.lookup(label.replace(" ", "")).name


def test_hl7_character_sets_read_are_the_charset_table() -> None:
    """Every MSH-18 value documented decodes as documented, and every value the code reads
    is documented (matched as the code matches: case, spaces, dashes, underscores ignored)."""
    documented: set[str] = set()
    for values, codec in table(HL7_DOC, "Character sets (MSH-18)"):
        for value in values.split(", "):
            assert _codec(charsets.codec_for(value, "utf-8")) == _codec(codec), value
            documented.add(charsets._key(value))
    assert documented == set(charsets._TABLE_0211)


def test_hl7_character_sets_written_are_the_targets_choices() -> None:
    """The MSH-18 values an hl7 target may write are the ones documented, with their codec."""
    rows = table(HL7_DOC, "Character sets (MSH-18)", after="| MSH-18 written |")
    assert {name: _codec(encoding.split(" (")[0]) for name, encoding in rows} == {
        name: codecs.lookup(codec).name for name, codec in CHARSETS.items()
    }
