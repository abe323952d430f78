"""HL7 v2 acknowledgments: which code to send, the ACK message, and reading one.

Original mode (MSH-15 and MSH-16 empty): every message gets AA, AE or AR.
Enhanced mode (either one given): radbridge stores each message before it
answers, so the answer on the connection is the accept (commit)
acknowledgment CA/CE/CR when MSH-15 asks for one (AL always, ER on error, SU
on success); otherwise the application acknowledgment AA/AE/AR when MSH-16
asks for one; otherwise nothing. Only one answer ever goes back per message.
"""

from __future__ import annotations

import enum
import itertools
import os
from dataclasses import dataclass
from datetime import datetime

from adapters.hl7.parse import DEFAULT_SEPARATORS, Header, Hl7ParseError, parse, read_header


class AckCode(enum.StrEnum):
    """MSA-1 (HL7 table 0008)."""

    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"

    @property
    def positive(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)

    @property
    def commit(self) -> AckCode:
        """The accept-acknowledgment code of the same outcome (AA → CA)."""
        return {AckCode.AA: AckCode.CA, AckCode.AE: AckCode.CE, AckCode.AR: AckCode.CR}.get(
            self, self
        )


class ErrorCode(enum.IntEnum):
    """ERR condition codes (HL7 table 0357)."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def text(self) -> str:
        words = self.name.replace("_", " ").capitalize().split(" ")
        return " ".join("ID" if word == "id" else word for word in words)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a message was not taken: an ERR condition code, words, and where (``OBR``, 1, 18)."""

    code: ErrorCode
    text: str
    segment: str = ""
    sequence: int = 1
    field: int | None = None


def reply_code(header: Header | None, outcome: AckCode) -> AckCode | None:
    """The code to answer with in the header's acknowledgment mode, or None for no answer.

    ``outcome`` is the application outcome: AA, AE (store failure included) or AR.
    """
    if header is None or not (header.accept_ack or header.application_ack):
        return outcome
    success = outcome is AckCode.AA
    if _wanted(header.accept_ack, success):
        return outcome.commit
    if _wanted(header.application_ack, success):
        return outcome
    return None


def _wanted(condition: str, success: bool) -> bool:
    return (
        condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)
    )


_PREFIX = os.urandom(4).hex().upper()
_COUNTER = itertools.count(1)


def new_control_id() -> str:
    """A control ID unique to this process run (at most 20 characters, as v2.3 allows)."""
    return f"RB{_PREFIX}{next(_COUNTER):010d}"


def _version_at_least(header: Header | None, version: tuple[int, ...]) -> bool:
    got = header.version_tuple if header is not None else ()
    return not got or got >= version


def build_ack(
    header: Header | None,
    code: AckCode,
    problem: Problem | None = None,
    *,
    application: str,
    facility: str,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """The ACK message for ``header``'s message (text; encode it with the message's codec).

    Sender and receiver are swapped; MSH-11, MSH-12 and MSH-18 are echoed;
    MSA-2 is MSH-10 of the message. With a ``problem`` the ACK carries MSA-3
    and an ERR segment (ERR-1 before v2.5, ERR-2/3/4/8 from v2.5 on). Without
    a readable header it uses the default separators and v2.5.1.
    """
    seps = header.seps if header is not None else DEFAULT_SEPARATORS
    f, c, s = seps.field, seps.component, seps.subcomponent
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    trigger = header.trigger if header is not None else ""
    version = (header.version if header is not None else "") or "2.5.1"
    msh = [
        "MSH",
        seps.encoding_characters,
        seps.escape_text(application),
        seps.escape_text(facility),
        header.sending_application_raw if header is not None else "",
        header.sending_facility_raw if header is not None else "",
        stamp,
        "",
        f"ACK{c}{seps.escape_text(trigger)}{c}ACK" if trigger else "ACK",
        control_id or new_control_id(),
        (header.processing_id_raw if header is not None else "") or "P",
        seps.escape_text(version),
    ]
    if header is not None and header.charset_raw and header.codec is not None:
        msh += ["", "", "", "", "", header.charset_raw]
    msa = ["MSA", code.value, seps.escape_text(header.control_id) if header is not None else ""]
    segments = [f.join(msh), None, None]
    if problem is None:
        segments[1] = f.join(msa)
        return "\r".join(s for s in segments if s) + "\r"
    text = seps.escape_text(problem.text)
    msa.append(text[:80] if not _version_at_least(header, (2, 4)) else text)
    segments[1] = f.join(msa)
    condition = f"{problem.code.value}{c}{seps.escape_text(problem.code.text)}{c}HL70357"
    field = "" if problem.field is None else str(problem.field)
    if _version_at_least(header, (2, 5)):
        location = c.join([problem.segment, str(problem.sequence), field]).rstrip(c)
        severity = "W" if code.positive else "E"
        segments[2] = f.join(["ERR", "", location, condition, severity, "", "", "", text])
    else:
        sub_condition = condition.replace(c, s)
        segments[2] = f.join(
            ["ERR", c.join([problem.segment, str(problem.sequence), field, sub_condition])]
        )
    return "\r".join(s for s in segments if s) + "\r"


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgment received: MSA-1, MSA-2 and what it said (MSA-3, ERR)."""

    code: AckCode
    control_id: str
    text: str
    raw: bytes


def read_ack(raw: bytes, default_charset: str = "utf-8") -> Ack:
    """An ACK received from a peer; :class:`Hl7ParseError` if it has no usable MSA."""
    message = parse(raw, read_header(raw, default_charset))
    msa = message.first("MSA")
    if msa is None:
        raise Hl7ParseError("the answer has no MSA segment")
    try:
        code = AckCode(msa.value(1).strip().upper())
    except ValueError as exc:
        raise Hl7ParseError(f"MSA-1 {msa.value(1)!r} is not an acknowledgment code") from exc
    texts = [msa.value(3)]
    for err in message.all("ERR"):
        texts += [err.value(8), err.value(3, 2), err.value(1, 4, 2)]
    text = "; ".join(dict.fromkeys(t for t in texts if t))
    return Ack(code=code, control_id=msa.value(2), text=text, raw=raw)
