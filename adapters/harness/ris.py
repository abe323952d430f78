"""The simulated RIS: sends orders and patient updates, receives results (ORU) and answers them.

:func:`make_order` and :func:`order_message` build ORM^O01, OMI^O23 and
ADT^A01/A04/A08/A40 from a few values (builders in
:mod:`adapters.harness.hl7_messages`); :func:`send_message` sends one with
radbridge's MLLP client and returns the acknowledgment, positive or not.

:class:`RisListener` is an MLLP server (asyncio, on its own thread) that
keeps every message it receives, optionally writes each to a folder
(``NNNN-<control id>.hl7``), and answers AA, AE (with an ERR) or nothing.
Its :func:`summarize` lines carry no patient data unless ``show_phi``.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from adapters.harness import hl7_messages
from adapters.harness.errors import HarnessError
from adapters.harness.process import LOOPBACK, free_port
from adapters.hl7.ack import Ack, AckCode, ErrorCode, Problem, build_ack
from adapters.hl7.client import MllpClient
from adapters.hl7.framing import FrameReader, Oversized, frame
from adapters.hl7.parse import Hl7Message, Hl7ParseError, parse, read_header
from broker.model.domain import Order, OrderPriority, OrderStatus, Patient
from broker.model.errors import Hl7RejectedError

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Message kinds :func:`order_message` writes.
ORDER_KINDS = ("ORM^O01", "OMI^O23", "ADT^A01", "ADT^A04", "ADT^A08", "ADT^A40")
MESSAGE_KINDS: tuple[str, ...] = (*ORDER_KINDS, "ORU^R01", "MDM^T02")


class Answer(enum.StrEnum):
    AA = "aa"
    AE = "ae"
    NONE = "none"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the listener got, and what it answered."""

    raw: bytes
    kind: str
    control_id: str
    summary: str
    answered: str | None
    path: Path | None


def make_order(
    *,
    accession: str,
    patient_id: str = "PAT0001",
    patient_name: str = "DOE^JANE",
    issuer: str | None = "EXAMPLE-GH",
    birth_date: str | None = "19650412",
    sex: str | None = "F",
    procedure_code: str = "CTCHEST",
    procedure_text: str = "CT chest without contrast",
    modality: str = "CT",
    priority: OrderPriority | str = OrderPriority.ROUTINE,
    study_uid: str | None = None,
    department: str = "RADIOLOGY",
    placer_number: str | None = None,
    filler_number: str | None = None,
    status: OrderStatus = OrderStatus.SCHEDULED,
) -> Order:
    """An order as a RIS would place it (placer/filler numbers derived from the accession)."""
    return hl7_messages.sample_order(
        placer_number=placer_number or f"PL{accession}",
        filler_number=filler_number or f"FL{accession}",
        accession_number=accession,
        patient=Patient(patient_id, issuer, patient_name, birth_date, sex),
        procedure_code=procedure_code,
        procedure_text=procedure_text,
        modality=modality,
        priority=OrderPriority(priority.upper() if isinstance(priority, str) else priority),
        department=department,
        status=status,
        study_uid=study_uid,
        requested_procedure_id=f"RP{accession}"[:16],
    )


def order_message(
    kind: str,
    order: Order,
    *,
    control: str = "NW",
    prior_patient_id: str | None = None,
    charset: str = "",
    report: str = "",
) -> str:
    """The HL7 text of ``kind`` (one of :data:`MESSAGE_KINDS`) for ``order`` (or its patient).

    ``control`` is ORC-1 (``NW`` new, ``CA`` cancel, ``XO`` change…);
    ``prior_patient_id`` is the patient merged away by an A40; ``charset`` is
    MSH-18 (the sender encodes the message with it); ``report`` the text of a signed final
    report (ORU^R01, MDM^T02), one OBX per line.
    """
    if kind == "ORM^O01":
        return hl7_messages.orm_o01(order, control=control, charset=charset)
    if kind == "OMI^O23":
        return hl7_messages.omi_o23(order, control=control, charset=charset)
    if kind in ("ADT^A01", "ADT^A04", "ADT^A08"):
        return hl7_messages.adt(kind.split("^")[1], order.patient, charset=charset)
    if kind == "ORU^R01":
        return hl7_messages.report_oru_r01(order, report, charset=charset)
    if kind == "MDM^T02":
        return hl7_messages.report_mdm_t02(order, report, charset=charset)
    if kind == "ADT^A40":
        if not prior_patient_id:
            raise HarnessError("ADT^A40 needs the prior patient ID (--prior-patient-id)")
        prior = Patient(prior_patient_id, order.patient.issuer, None, None, None)
        return hl7_messages.adt_a40(order.patient, prior, charset=charset)
    raise HarnessError(f"no such message kind {kind!r}; valid: {', '.join(MESSAGE_KINDS)}")


def send_message(
    host: str, port: int, message: str, *, timeout: float = 10.0, attempts: int = 1
) -> Ack:
    """Send one message over MLLP; its acknowledgment (AA, AE, AR, CA…), whatever it says.

    :class:`~broker.model.errors.Hl7Error` when no acknowledgment comes.
    """
    with MllpClient(host, port, timeout=timeout, attempts=attempts) as client:
        try:
            return client.send(message)
        except Hl7RejectedError as exc:
            return Ack(code=AckCode(exc.code), control_id="", text=exc.text, raw=b"")


def summarize(message: Hl7Message, *, show_phi: bool = False) -> str:
    """One line about a message: kind, control ID, order numbers, results; patient only with PHI."""
    header = message.header
    parts = [header.kind or "?", f"control {header.control_id}"]
    orc, obr = message.first("ORC"), message.first("OBR")
    if obr is not None:
        accession = obr.value(18) or (orc.value(3) if orc is not None else "")
        parts += [
            f"placer {obr.value(2) or '-'}",
            f"filler {obr.value(3) or '-'}",
            f"accession {accession or '-'}",
            f"service {obr.value(4, 2) or obr.value(4) or '-'}",
            f"status {obr.value(25) or '-'}",
        ]
    observations = message.all("OBX")
    if observations:
        flags = sorted({o.value(8) for o in observations if o.value(8)})
        parts.append(f"{len(observations)} OBX" + (f" flags {','.join(flags)}" if flags else ""))
    if show_phi:
        pid = message.first("PID")
        if pid is not None:
            parts.append(f"patient {pid.value(3)} {pid.value(5)}^{pid.value(5, 2)}")
        for obx in observations:
            parts.append(f"[{obx.value(3, 2) or obx.value(3)}: {obx.value(5)[:120]}]")
    return "; ".join(parts)


class RisListener:
    """An MLLP server standing in for the RIS that receives radbridge's results (see module)."""

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        answer: Answer | str = Answer.AA,
        folder: Path | str | None = None,
        show_phi: bool = False,
        on_message: Callable[[ReceivedMessage], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.answer = Answer(answer)
        self.folder = Path(folder).resolve() if folder is not None else None
        self.show_phi = show_phi
        self.on_message = on_message
        self.messages: list[ReceivedMessage] = []
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> Self:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._connection, self.host, self.port)
                )
            except OSError as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="ris-listener", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if failure:
            raise HarnessError(f"cannot listen on {self.host}:{self.port}: {failure[0]}")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None:
            return

        async def close() -> None:
            if server is not None:
                server.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def wait_messages(self, count: int = 1, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Block until ``count`` messages came; all of them so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.messages)} of {count} messages in {timeout} s")
                self._changed.wait(remaining)
            return list(self.messages)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = FrameReader(MAX_MESSAGE_BYTES)
        try:
            while data := await reader.read(65536):
                for block in framer.feed(data):
                    if isinstance(block, Oversized):
                        continue
                    ack = self._handle(block)
                    if ack is not None:
                        writer.write(frame(ack))
                        await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _handle(self, raw: bytes) -> bytes | None:
        try:
            header = read_header(raw, "utf-8")
            message = parse(raw, header)
        except Hl7ParseError as exc:
            summary, kind, control, header_or_none = f"unreadable: {exc}", "?", "", None
        else:
            summary = summarize(message, show_phi=self.show_phi)
            kind, control, header_or_none = header.kind, header.control_id, header
        answer: bytes | None = None
        if self.answer is not Answer.NONE:
            code = AckCode.AA if self.answer is Answer.AA else AckCode.AE
            problem = (
                Problem(ErrorCode.APPLICATION_INTERNAL_ERROR, "simulated RIS error (answer ae)")
                if code is AckCode.AE
                else None
            )
            text = build_ack(header_or_none, code, problem, application="RIS", facility="HOSP")
            codec = (header_or_none.codec if header_or_none else None) or "utf-8"
            answer = text.encode(codec)
        with self._changed:
            number = len(self.messages) + 1
            path = None
            if self.folder is not None:
                safe = "".join(c for c in control if c.isalnum() or c in "-_.") or "unknown"
                path = self.folder / f"{number:04d}-{safe}.hl7"
                path.write_bytes(raw)
            received = ReceivedMessage(
                raw=raw,
                kind=kind,
                control_id=control,
                summary=summary,
                answered=None if answer is None else self.answer.value.upper(),
                path=path,
            )
            self.messages.append(received)
            self._changed.notify_all()
        if self.on_message is not None:
            self.on_message(received)
        return answer
