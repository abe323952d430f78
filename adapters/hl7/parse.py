"""Reading HL7 v2 messages: the header first, then segments, fields and components.

hl7apy is the project's HL7 library, but building its element tree costs
about 2 ms per segment (15 ms for a whole ORM), ten times the budget of the
orders interface (1000 messages a second with the store and the ACK). So the
message is read in two steps:

1. :func:`read_header` takes the MSH as bytes, reads MSH-18 to choose the
   character set, and asks hl7apy's ``get_message_info`` (a few µs) for the
   encoding characters, the message structure and the version; hl7apy
   refuses duplicate or missing encoding characters there.
2. :func:`parse` decodes the message and splits it into :class:`Segment`\\ s
   whose fields are split into repetitions, components and subcomponents
   only when asked, with escape sequences resolved (``\\F\\`` ``\\S\\``
   ``\\T\\`` ``\\R\\`` ``\\E\\`` ``\\Xhh\\`` ``\\.br\\``).

The accessors use the standard's numbering: ``segment.value(18)`` is OBR-18,
``segment.value(7, 6)`` is ORC-7.6, and the MSH counts its field separator
as MSH-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hl7apy.parser import get_message_info  # type: ignore[import-untyped]

from adapters.hl7.charsets import codec_for
from broker.model.errors import Hl7Error

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


class Hl7ParseError(Hl7Error):
    """The bytes are not an HL7 v2 message radbridge can read (answered AR)."""


@dataclass(frozen=True, slots=True)
class Separators:
    """MSH-1 and MSH-2: the field separator and the encoding characters."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as written."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def escape_text(self, text: str) -> str:
        """``text`` with its separators written as escape sequences (for fields we write)."""
        e = self.escape
        if e:
            text = text.replace(e, f"{e}E{e}")
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            text = text.replace(char, f"{e}{code}{e}")
        return text.replace("\r", " ").replace("\n", " ")


DEFAULT_SEPARATORS = Separators()


def unescape(value: str, seps: Separators, codec: str) -> str:
    """``value`` with its escape sequences resolved (HL7 v2.5 section 2.7)."""
    e = seps.escape
    if not e or e not in value:
        return value
    parts = value.split(e)
    if len(parts) % 2 == 0:  # an escape sequence that never ends: keep the text as sent
        return value
    out: list[str] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(part)
        else:
            out.append(_sequence(part, seps, codec))
    return "".join(out)


def _sequence(code: str, seps: Separators, codec: str) -> str:
    simple = {
        "F": seps.field,
        "S": seps.component,
        "T": seps.subcomponent,
        "R": seps.repetition,
        "E": seps.escape,
        "P": seps.truncation,
        "H": "",
        "N": "",
        ".br": "\n",
        ".sp": "\n",
    }
    if code in simple:
        return simple[code]
    if code.startswith("X") and len(code) % 2 == 1:
        try:
            return bytes.fromhex(code[1:]).decode(codec, errors="replace")
        except ValueError:
            pass
    if code.startswith((".in", ".ti", ".sk", ".fi", ".nf", ".ce")):
        return ""
    # \Cxxyy\, \Mxxyyzz\ (character set switches) and \Z..\ (local): kept as sent.
    return f"{seps.escape}{code}{seps.escape}"


class Segment:
    """One segment: its name and its fields, split further only on demand."""

    __slots__ = ("codec", "fields", "name", "seps")

    def __init__(self, fields: list[str], seps: Separators, codec: str) -> None:
        self.name = fields[0]
        self.fields = fields
        self.seps = seps
        self.codec = codec

    def __repr__(self) -> str:
        return f"Segment({self.seps.field.join(self.fields)!r})"

    def raw(self, field: int) -> str:
        """Field ``field`` as sent (every repetition, escapes unresolved); ``""`` if absent."""
        return self.fields[field] if 0 < field < len(self.fields) else ""

    def repetitions(self, field: int) -> list[str]:
        """The repetitions of a field, as sent; ``[]`` if the field is empty."""
        raw = self.raw(field)
        if not raw:
            return []
        if self.name == "MSH" and field <= 2:
            return [raw]
        return raw.split(self.seps.repetition)

    def value(self, field: int, component: int = 1, subcomponent: int = 1, rep: int = 1) -> str:
        """One subcomponent, escapes resolved; ``""`` when absent."""
        raw = self.raw(field)
        if not raw:
            return ""
        if self.name == "MSH" and field <= 2:
            return raw
        return self.component_of(raw, component, subcomponent, rep)

    def component_of(self, raw: str, component: int, subcomponent: int = 1, rep: int = 1) -> str:
        """A component of a field (or of one repetition) given as sent, escapes resolved."""
        seps = self.seps
        if seps.repetition in raw:
            reps = raw.split(seps.repetition)
            raw = reps[rep - 1] if rep <= len(reps) else ""
        elif rep > 1:
            return ""
        if seps.component in raw:
            comps = raw.split(seps.component)
            raw = comps[component - 1] if component <= len(comps) else ""
        elif component > 1:
            return ""
        if seps.subcomponent in raw:
            subs = raw.split(seps.subcomponent)
            raw = subs[subcomponent - 1] if subcomponent <= len(subs) else ""
        elif subcomponent > 1:
            return ""
        return unescape(raw, seps, self.codec)


@dataclass(frozen=True, slots=True)
class Header:
    """What the MSH says about a message: enough to answer it even if the rest is broken.

    The ``*_raw`` fields are kept as sent (they are copied into the ACK);
    ``codec`` is None when MSH-18 names a character set radbridge cannot read
    (``codec_problem`` says which).
    """

    seps: Separators
    sending_application_raw: str
    sending_facility_raw: str
    receiving_application_raw: str
    receiving_facility_raw: str
    control_id: str
    message_type: str
    trigger: str
    structure: str
    processing_id_raw: str
    version: str
    accept_ack: str
    application_ack: str
    charset_raw: str
    codec: str | None
    codec_problem: str | None = None

    @property
    def kind(self) -> str:
        """``ORM^O01``: MSH-9.1 and MSH-9.2."""
        return f"{self.message_type}^{self.trigger}" if self.trigger else self.message_type

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """MSH-12 as numbers (``(2, 5, 1)``); ``()`` if it is not a version number."""
        try:
            return tuple(int(part) for part in self.version.split("."))
        except ValueError:
            return ()


def _first_line(raw: bytes) -> bytes:
    start = 0
    while start < len(raw) and raw[start] in b" \t\r\n":
        start += 1
    if raw.startswith(b"\xef\xbb\xbf", start):  # a UTF-8 byte order mark
        start += 3
    ends = [i for i in (raw.find(b"\r", start), raw.find(b"\n", start)) if i >= 0]
    return raw[start : min(ends)] if ends else raw[start:]


def read_header(raw: bytes, default_charset: str) -> Header:
    """The MSH of ``raw``; :class:`Hl7ParseError` if there is no readable MSH."""
    line = _first_line(raw)
    if not line.startswith(b"MSH") or len(line) < 8:
        # What it begins with instead is not shown: it may be a patient's data (a PID).
        raise Hl7ParseError(
            "the message does not begin with an MSH segment; valid: MSH, the field "
            "separator and the encoding characters (MSH|^~\\&|…)"
        )
    text = line.decode("latin-1")
    field_sep = text[3]
    try:
        encoding, _structure, _version = get_message_info(text)
    except Exception as exc:  # hl7apy raises several kinds for a broken MSH
        raise Hl7ParseError(f"MSH-1/MSH-2 are not valid encoding characters: {exc}") from exc
    seps = Separators(
        field=field_sep,
        component=encoding["COMPONENT"],
        repetition=encoding["REPETITION"],
        escape=encoding["ESCAPE"],
        subcomponent=encoding["SUBCOMPONENT"],
        truncation=encoding.get("TRUNCATION") or "",
    )
    fields = ["MSH", field_sep, *text.split(field_sep)[1:]]
    charset_raw = fields[18].split(seps.repetition)[0] if len(fields) > 18 else ""
    codec: str | None
    problem: str | None = None
    try:
        codec = codec_for(unescape(charset_raw, seps, "ascii"), default_charset)
    except Hl7Error as exc:
        codec, problem = None, str(exc)
    if codec is not None:
        try:
            text = line.decode(codec)
        except UnicodeDecodeError as exc:
            problem = _decode_problem(exc, codec)
            codec = None
        else:
            fields = ["MSH", field_sep, *text.split(field_sep)[1:]]
    msh = Segment(fields, seps, codec or "latin-1")
    return Header(
        seps=seps,
        sending_application_raw=msh.raw(3),
        sending_facility_raw=msh.raw(4),
        receiving_application_raw=msh.raw(5),
        receiving_facility_raw=msh.raw(6),
        control_id=msh.value(10),
        message_type=msh.value(9, 1).strip().upper(),
        trigger=msh.value(9, 2).strip().upper(),
        structure=msh.value(9, 3).strip().upper(),
        processing_id_raw=msh.raw(11),
        version=msh.value(12, 1).strip(),
        accept_ack=msh.value(15).strip().upper(),
        application_ack=msh.value(16).strip().upper(),
        charset_raw=charset_raw,
        codec=codec,
        codec_problem=problem,
    )


def _decode_problem(exc: UnicodeDecodeError, codec: str) -> str:
    return (
        f"bytes at offset {exc.start} are not valid {codec}; name the message's "
        "character set in MSH-18 (e.g. UNICODE UTF-8, GB 18030-2000, 8859/1) or set "
        "hl7.default_charset"
    )


@dataclass(frozen=True, slots=True)
class Hl7Message:
    """A received message: its bytes as they came, its header and its segments."""

    raw: bytes
    header: Header
    segments: tuple[Segment, ...]

    def all(self, name: str) -> list[Segment]:
        """Every segment named ``name``, in order."""
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        """The first segment named ``name``, if any."""
        return next((s for s in self.segments if s.name == name), None)


def parse(raw: bytes, header: Header) -> Hl7Message:
    """Decode and split a message whose header :func:`read_header` read."""
    if header.codec is None:
        raise Hl7ParseError(header.codec_problem or "unreadable character set")
    codec = header.codec
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise Hl7ParseError(_decode_problem(exc, codec)) from exc
    text = text.lstrip("\ufeff \t\r\n")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    seps = header.seps
    field_sep = seps.field
    segments: list[Segment] = []
    for number, line in enumerate(text.split("\r"), 1):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != field_sep):
            raise Hl7ParseError(  # its text is not shown: it may be a patient's data
                f"segment {number} does not begin with a segment name (three capital "
                f"letters or digits) and {field_sep!r}"
            )
        fields = line.split(field_sep)
        if name == "MSH":
            fields.insert(1, field_sep)
        segments.append(Segment(fields, seps, codec))
    return Hl7Message(raw=raw, header=header, segments=tuple(segments))
