"""HL7 v2 reading: MLLP framing, character sets, escapes, segments and fields."""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters.hl7.charsets import codec_for, hl7_name
from adapters.hl7.framing import HEAD_BYTES, FrameReader, Oversized, frame
from adapters.hl7.mapping import OrderEvent, event_from_message
from adapters.hl7.parse import Hl7ParseError, Separators, parse, read_header, unescape
from broker.model.domain import Patient
from broker.model.errors import Hl7Error
from tests.hl7_messages import omi_o23, orm_o01, sample_order


def _parse(text: str | bytes, default: str = "utf-8"):  # type: ignore[no-untyped-def]
    raw = text.encode() if isinstance(text, str) else text
    return parse(raw, read_header(raw, default))


def test_frames_split_across_reads_and_several_in_one_read() -> None:
    """Half frames are completed by later reads; one read may complete several frames."""
    reader = FrameReader(1024)
    data = frame(b"one") + frame(b"two") + frame(b"three")
    assert reader.feed(data[:3]) == []
    assert reader.pending == 2
    assert reader.feed(data[3:8]) == [b"one"]
    assert reader.feed(data[8:]) == [b"two", b"three"]
    assert reader.pending == 0 and reader.junk_bytes == 0


def test_bytes_between_frames_are_dropped_and_counted() -> None:
    """Junk before, between and after frames is skipped; the frames still come out whole."""
    reader = FrameReader(1024)
    frames = reader.feed(b"noise" + frame(b"a") + b"\n\n" + frame(b"b") + b"xy")
    assert frames == [b"a", b"b"]
    assert reader.junk_bytes == len(b"noise") + 2 + 2


def test_a_new_start_block_abandons_an_unfinished_frame() -> None:
    """A frame cut short by a new <VT> is dropped; the next frame is read."""
    reader = FrameReader(1024)
    assert reader.feed(b"\x0bhalf a mess" + frame(b"whole")) == [b"whole"]
    assert reader.abandoned == 1


def test_end_block_split_from_its_carriage_return() -> None:
    """<FS> at the end of one read and <CR> at the start of the next: no junk counted."""
    reader = FrameReader(1024)
    assert reader.feed(b"\x0bmsg\x1c") == [b"msg"]
    assert reader.feed(b"\r") == []
    assert reader.junk_bytes == 0


def test_oversized_frame_keeps_its_head_and_size() -> None:
    """A frame over the limit comes out as Oversized with its head; reading goes on."""
    reader = FrameReader(10_000)
    big = b"MSH|" + b"x" * 50_000
    out = reader.feed(frame(big)[:20_000]) + reader.feed(frame(big)[20_000:] + frame(b"next"))
    assert isinstance(out[0], Oversized)
    assert out[0].size == len(big)
    assert out[0].head == big[:HEAD_BYTES]
    assert out[1] == b"next"


def test_msh18_names_map_to_codecs() -> None:
    """ASCII, 8859/1, UNICODE UTF-8 and GB 18030-2000 are read; empty means the default."""
    assert codec_for("ASCII", "utf-8") == "ascii"
    assert codec_for("8859/1", "utf-8") == "iso8859-1"
    assert codec_for("UNICODE UTF-8", "ascii") == "utf-8"
    assert codec_for("GB 18030-2000", "utf-8") == "gb18030"
    assert codec_for("", "GB18030") == "gb18030"
    assert hl7_name("gb18030") == "GB 18030-2000"
    assert hl7_name("iso8859-2") == "8859/2"
    with pytest.raises(Hl7Error, match="unsupported character set 'UNICODE UTF-16'"):
        codec_for("UNICODE UTF-16", "utf-8")


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("GB 18030-2000", "gb18030", "张^伟"),
        ("UNICODE UTF-8", "utf-8", "Müller^Zoë"),
        ("8859/1", "latin-1", "Müller^Zoë"),
        ("ASCII", "ascii", "SMITH^ANNE"),
    ],
)
def test_names_decode_in_the_character_set_of_msh18(charset: str, codec: str, name: str) -> None:
    """PID-5 comes out right in each supported character set named in MSH-18."""
    order = sample_order(patient=Patient("P1", "HOSP", name))
    raw = orm_o01(order, charset=charset).encode(codec)
    event = event_from_message(_parse(raw, "ascii"))
    assert isinstance(event, OrderEvent)
    assert event.orders[0].patient.name == name


def test_bytes_invalid_in_the_character_set_are_a_parse_error() -> None:
    """GB18030 bytes in a message without MSH-18 and a UTF-8 default: AR-worthy, with the offset."""
    raw = orm_o01(sample_order(patient=Patient("P1", None, "张^伟"))).encode("gb18030")
    header = read_header(raw, "utf-8")
    with pytest.raises(Hl7ParseError, match="not valid utf-8; name the message's character set"):
        parse(raw, header)
    assert _parse(raw, "gb18030").first("PID") is not None


def test_escape_sequences_are_resolved() -> None:
    """\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, hex and line breaks; unknown and unfinished ones stay."""
    seps = Separators()
    assert unescape(r"A\F\B\S\C\T\D\R\E\E\F", seps, "utf-8") == "A|B^C&D~E\\F"
    assert unescape(r"line\.br\next", seps, "utf-8") == "line\nnext"
    assert unescape("\\XE5BCA0\\", seps, "utf-8") == "张"
    assert unescape(r"\Zlocal\ and \H\bold\N\ ", seps, "utf-8") == r"\Zlocal\ and bold "
    assert unescape("no end \\F", seps, "utf-8") == "no end \\F"


def test_escaped_separators_in_fields_survive_the_mapping() -> None:
    """An accession and a procedure text holding separators come back as sent."""
    order = sample_order(accession_number="A|1^2", procedure_text="CT & MR ~ text\\x")
    event = event_from_message(_parse(orm_o01(order)))
    assert isinstance(event, OrderEvent)
    assert event.orders[0].accession_number == "A|1^2"
    assert event.orders[0].procedure_text == "CT & MR ~ text\\x"


def test_repeated_fields_components_and_z_segments() -> None:
    """Repetitions and components by number; Z-segments are segments like any other."""
    message = _parse(orm_o01(sample_order()) + "ZXY|1|a~b^c\r")
    pid = message.first("PID")
    assert pid is not None
    assert pid.value(3, 1, rep=2) == "OTHER-ID"
    assert pid.value(3, 4, rep=2) == "ELSEWHERE"
    zxy = message.first("ZXY")
    assert zxy is not None and zxy.repetitions(2) == ["a", "b^c"]
    assert zxy.value(2, 2, rep=2) == "c"
    assert zxy.value(9) == ""


def test_line_feeds_as_segment_separators_are_accepted() -> None:
    """Messages written with \\n or \\r\\n between segments are read like \\r."""
    text = orm_o01(sample_order()).replace("\r", "\r\n")
    assert [s.name for s in _parse(text).segments] == ["MSH", "PID", "PV1", "ORC", "OBR", "ZDS"]


def test_header_fields() -> None:
    """MSH-9, -10, -12, -15, -16 and the separators are read from the header alone."""
    header = read_header(
        orm_o01(sample_order(), control_id="C1", accept_ack="AL", application_ack="NE").encode(),
        "utf-8",
    )
    assert (header.kind, header.structure, header.control_id) == ("ORM^O01", "ORM_O01", "C1")
    assert header.version_tuple == (2, 3, 1)
    assert (header.accept_ack, header.application_ack) == ("AL", "NE")
    assert header.seps == Separators()


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage", b"PID|1||x\r", b"MSH|^~\\\\|RIS\r", b"MSH|^^\\&|RIS\r"],
)
def test_unreadable_headers_are_parse_errors(raw: bytes) -> None:
    """No MSH, or encoding characters hl7apy refuses (duplicates, missing): Hl7ParseError."""
    with pytest.raises(Hl7ParseError):
        read_header(raw, "utf-8")


def test_a_line_that_is_not_a_segment_is_a_parse_error() -> None:
    """A body line without a segment name is refused, naming the segment number."""
    with pytest.raises(Hl7ParseError, match="segment 2 does not begin"):
        _parse("MSH|^~\\&|RIS|H|||||ORM^O01|1|P|2.3.1\rthis is not a segment\r")


@pytest.mark.parametrize("build", [orm_o01, omi_o23])
def test_fields_read_agree_with_hl7apy(build) -> None:  # type: ignore[no-untyped-def]
    """Every field the mapping reads has the value hl7apy's full parser gives it."""
    text = build(sample_order(issuer="HOSP"))
    ours = _parse(text)
    theirs = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    checks = {
        "ORC": [(1, 1), (2, 1), (3, 1), (5, 1), (17, 1)],
        "OBR": [(2, 1), (3, 1), (4, 1), (4, 2), (18, 1), (19, 1), (24, 1), (44, 1)],
        "IPC": [(1, 1), (1, 2), (2, 1), (3, 1), (5, 1)],
        "TQ1": [(9, 1)],
        "PID": [(3, 1), (3, 4), (5, 1), (5, 2), (7, 1), (8, 1)],
        "MSH": [(9, 1), (9, 2), (10, 1), (12, 1)],
    }
    compared = 0
    for name, fields in checks.items():
        segment = ours.first(name)
        if segment is None:
            continue
        reference = getattr(theirs, name.lower())
        reference = reference[0] if isinstance(reference, list) else reference
        for number, component in fields:
            field = getattr(reference, f"{name.lower()}_{number}")
            field = field[0] if isinstance(field, list) else field
            if field.children and field.datatype not in ("ST", "ID", "IS", "TX", "NM"):
                part = getattr(field, f"{field.datatype.lower()}_{component}")
                expected_text = part.to_er7().split("&")[0]
            else:
                expected_text = field.to_er7() if component == 1 else ""
            assert segment.value(number, component) == expected_text, f"{name}-{number}.{component}"
            compared += 1
    assert compared >= 20
