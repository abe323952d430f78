"""DICOM push: C-STORE a job's files to the vendor's AE, byte for byte when it can.

Presentation contexts: for each (SOP class, transfer syntax) pair found in the
files' meta information, one context with that stored syntax alone; and for
each SOP class one fallback context, [Explicit VR LE, Implicit VR LE] when a
file of that class is stored in another syntax, [Implicit VR LE] (the DICOM
default every SCP must accept) when all are Explicit VR LE.

Each file's SOP class, SOP instance, transfer syntax and data set offset come
from its File Meta Information, read by its element headers
(:mod:`adapters.dicom.file_meta`, no Dataset built). A file whose stored syntax
the vendor accepted goes as it was received: its data set bytes read from the
spool in large reads and written as P-DATA PDUs of the vendor's maximum length,
many PDUs a write, by the lean sender (:mod:`adapters.dicom.sending`: no
decode, no re-encode, never more than one batch of a file in memory, no
pynetdicom message per instance), so the vendor gets the dataset bit for bit.
A file whose stored syntax was refused goes through the fallback context,
converted: read with pydicom, compressed pixel data decoded (``decompress``
with pydicom's own RLE decoder, pylibjpeg-libjpeg for JPEG and JPEG-LS,
pylibjpeg-openjpeg for JPEG 2000), big endian words swapped, and encoded in
the syntax the vendor accepted (Explicit VR LE preferred). The SOP Instance
UID is kept; a lossy source stays marked lossy. Every file is checked before
the first C-STORE of its association: one with no accepted context raises
:class:`DicomPushError` (retryable: the vendor's configuration may change), one
that needs a decoder that is not installed, or that no decoder exists for
(MPEG, for example), raises :class:`TranscodeError` (not retryable). A decode
that fails midway also raises :class:`TranscodeError`.

One association carries at most 128 presentation contexts: when the pairs and
fallbacks need more, the job is split into several associations, each with
whole SOP classes (a class with more than 127 stored syntaxes is split with
its fallback repeated), sent one after another; every instance must still
succeed, and a retry resends them all.

Every instance must succeed. A refused association, a lost connection, a
vendor that aborts or stops taking data mid data set, no response within the
timeout, or a failure status that means "not now" (0xA7xx out of
resources, 0x0110 processing failure, 0x0213 resource limitation) raise
:class:`DicomPushError`, which the broker retries with backoff. Any other
failure status (0xA9xx data set does not match the SOP class, 0xCxxx cannot
understand, 0x0122 SOP class not supported, 0x0124 not authorized, …) says
the vendor will never take that instance: :class:`StoreRefusedError`, the job
is dead at once. Success and the warning statuses mean stored.

The ``dicom`` write-back target (:mod:`adapters.writeback.dicom`) uses the
same settings (:class:`DicomPeer`) and sender.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from adapters.dicom.client import RequestorAE
from adapters.dicom.file_meta import FileMetaError, read_file_meta
from adapters.dicom.sending import LeanSender
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from broker.model.errors import DicomError
from broker.model.jobs import Job
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome, TransportContext, TransportSettings, VendorTransport
from config.base import AETitle, Port, Timeout

LOG = get_logger("radbridge.vendors.dicom")

# A file pynetdicom sends (``send_c_store(path)`` elsewhere) goes as stored, in PDU-sized chunks.
_config.STORE_SEND_CHUNKED_DATASET = True

#: Failure statuses of a C-STORE worth another try (PS3.4 B.2.3, PS3.7 C).
RETRY_STATUSES = frozenset({0x0110, 0x0213, *range(0xA700, 0xA800)})
#: At most this many presentation contexts fit one association (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128


class DicomPushError(VendorUnavailableError):
    """The vendor's AE did not take every instance (retried with backoff)."""


class StoreRefusedError(VendorRejectedError):
    """The vendor's AE answered a C-STORE with a failure no retry can change."""


class TranscodeError(VendorRejectedError):
    """A file the vendor accepts only converted cannot be converted here (not retried)."""


class DicomPeer(BaseModel):
    """An AE radbridge C-STOREs to: the fields the ``dicom`` transport and target share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    calling_ae: AETitle = "RADBRIDGE"
    timeout: Timeout = 30.0
    """Seconds to wait for the connection, the association, and each response."""
    max_pdu: int = Field(default=0, ge=0)
    """Largest PDU radbridge accepts (0: no limit); the vendor's limit governs sending."""


class DicomPushSettings(DicomPeer, TransportSettings):
    """A vendor's ``transport:`` block for ``type: dicom`` (see the module docstring)."""

    type: Literal["dicom"] = "dicom"

    def build(self, context: TransportContext) -> DicomTransport:
        return DicomTransport(context.vendor, self)

    def endpoint(self) -> tuple[str, int] | None:
        return self.host, self.port

    def sender_ae_titles(self) -> tuple[str, ...]:
        return (self.ae_title,)


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    sop_class: str
    syntax: str
    sop_instance: str = ""
    offset: int = 0
    """Where the data set starts (after the file meta)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One association: the contexts it proposes and the files it sends, in job order."""

    contexts: list[PresentationContext]
    files: list[_File]


def fallback_syntaxes(stored: set[str]) -> list[str]:
    """The fallback context's syntaxes for a SOP class whose files are stored in ``stored``."""
    if stored - {ExplicitVRLittleEndian}:
        return [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return [ImplicitVRLittleEndian]


def _read(files: Sequence[Path]) -> tuple[list[_File], int]:
    """Each file's SOP class and transfer syntax, and the total size of the files."""
    found = []
    size = 0
    for path in files:
        try:
            meta = read_file_meta(path)
        except (FileMetaError, OSError) as exc:
            raise VendorRejectedError(f"cannot read {path.name} from the spool: {exc}") from exc
        size += meta.size
        found.append(
            _File(
                path,
                meta.sop_class_uid,
                meta.transfer_syntax_uid,
                meta.sop_instance_uid,
                meta.offset,
            )
        )
    return found, size


def plan_associations(files: list[_File], limit: int = MAX_CONTEXTS) -> list[_Plan]:
    """Split the job into associations of at most ``limit`` contexts, whole SOP classes each."""
    stored: dict[str, dict[str, None]] = {}
    for f in files:
        stored.setdefault(f.sop_class, {})[f.syntax] = None
    # (SOP class, its stored syntaxes in this association), grouped greedily
    groups: list[list[tuple[str, list[str]]]] = [[]]
    used = 0
    for sop, syntaxes in stored.items():
        pieces = [list(syntaxes)[i : i + limit - 1] for i in range(0, len(syntaxes), limit - 1)]
        for piece in pieces:
            if used + len(piece) + 1 > limit and groups[-1]:
                groups.append([])
                used = 0
            groups[-1].append((sop, piece))
            used += len(piece) + 1
    plans = []
    for group in groups:
        contexts = [build_context(sop, [ts]) for sop, piece in group for ts in piece]
        contexts += [build_context(sop, fallback_syntaxes(set(stored[sop]))) for sop in dict(group)]
        members = {(sop, ts) for sop, piece in group for ts in piece}
        plans.append(_Plan(contexts, [f for f in files if (f.sop_class, f.syntax) in members]))
    return plans


def _decoder_problem(syntax: UID) -> str | None:
    """Why pydicom cannot decode ``syntax`` here, or None when it can."""
    if not syntax.is_compressed:
        return None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"pydicom has no pixel data decoder for {syntax.name}"
    if decoder.is_available:
        return None
    missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
    return f"no {syntax.name} decoder is installed (install one of: {missing})"


#: Bytes per word of the VRs whose values are swapped between big and little endian.
_WORD_BYTES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _to_little_endian(ds: Dataset, *, swap: bool) -> None:
    """Parse every element (so each is re-encoded), swapping OW/OL/OF/OD/OV words if ``swap``."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _to_little_endian(item, swap=swap)
        elif swap and elem.VR in _WORD_BYTES and isinstance(elem.value, bytes) and elem.value:
            width = _WORD_BYTES[elem.VR]
            elem.value = np.frombuffer(elem.value, f">u{width}").astype(f"<u{width}").tobytes()


def converted(path: Path, target: str) -> Dataset:
    """The dataset of ``path`` ready to go in ``target`` (Explicit or Implicit VR LE).

    Compressed pixel data is decoded (the SOP Instance UID is kept); a big
    endian dataset has its word values swapped. Raises :class:`TranscodeError`.
    """
    syntax = UID(target)
    try:
        ds = dcmread(path)
        source = ds.file_meta.TransferSyntaxUID
        if source.is_compressed:
            ds.decompress(generate_instance_uid=False)
        _to_little_endian(ds, swap=not source.is_little_endian)
    except (RuntimeError, ValueError, NotImplementedError, TypeError, OSError) as exc:
        raise TranscodeError(f"cannot convert {path.name} to {syntax.name}: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = syntax
    ds.set_original_encoding(syntax.is_implicit_VR, True, ds.original_character_set)
    return ds


class DicomTransport(VendorTransport):
    """C-STORE to one vendor AE (see the module docstring)."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError,)

    def __init__(self, vendor: str, settings: DicomPeer) -> None:
        self.vendor = vendor
        self.settings = settings

    def __repr__(self) -> str:
        s = self.settings
        return f"DicomTransport({self.vendor!r}, {s.ae_title}@{s.host}:{s.port})"

    def send(self, job: Job, files: Sequence[Path]) -> SendOutcome:
        """Store every file on the vendor's AE (see the module docstring), or raise."""
        if not files:
            raise VendorRejectedError(f"job {job.id} has no instances to send")
        found, size = _read(files)
        plans = plan_associations(found)
        started = time.perf_counter()
        converted_to: dict[str, int] = {}
        for plan in plans:
            assoc = self._associate(plan.contexts)
            try:
                targets = self._targets(assoc, plan.files)
                contexts = {
                    (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id or 0
                    for cx in reversed(assoc.accepted_contexts)
                }
                with LeanSender(assoc, self.settings.timeout) as lean:
                    for f in plan.files:
                        target = targets[f.path]
                        if target is None:
                            context_id = contexts[(f.sop_class, f.syntax)]
                            self._store_as_stored(lean, f, context_id)
                        else:
                            lean.give_back()  # pynetdicom sends the converted data set
                            self._store(assoc, converted(f.path, target), f.path)
                            name = UID(target).name
                            converted_to[name] = converted_to.get(name, 0) + 1
            except BaseException:
                assoc.abort()
                raise
            else:
                assoc.release()
        seconds = time.perf_counter() - started
        s = self.settings
        detail = f"C-STORE to {s.ae_title}@{s.host}:{s.port}"
        if len(plans) > 1:
            detail += f" over {len(plans)} associations"
        if converted_to:
            detail += "; converted " + ", ".join(f"{n} to {ts}" for ts, n in converted_to.items())
            LOG.info(
                "vendor refused stored transfer syntaxes; files converted",
                job_id=job.id,
                vendor=self.vendor,
                converted=converted_to,
            )
        return SendOutcome(instances=len(files), bytes=size, seconds=seconds, detail=detail)

    def _peer(self) -> str:
        s = self.settings
        return f"{s.ae_title} at {s.host}:{s.port}"

    def _associate(self, contexts: list[PresentationContext]) -> Association:
        s = self.settings
        ae = RequestorAE(ae_title=s.calling_ae)
        ae.connection_timeout = s.timeout
        ae.acse_timeout = s.timeout
        ae.dimse_timeout = s.timeout
        ae.network_timeout = s.timeout
        ae.maximum_pdu_size = s.max_pdu
        assoc = ae.associate(
            s.host, s.port, contexts=contexts, ae_title=s.ae_title, max_pdu=s.max_pdu
        )
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise DicomPushError(f"{self._peer()} rejected the association")
        raise DicomPushError(
            f"no association with {self._peer()} (connection refused, timed out or aborted)"
        )

    def _targets(self, assoc: Association, files: list[_File]) -> dict[Path, str | None]:
        """Per file: None to send it as stored, or the syntax to convert it to; or raise."""
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        targets: dict[Path, str | None] = {}
        refused: dict[tuple[str, str], None] = {}
        undecodable: dict[str, str] = {}
        for f in files:
            syntaxes = accepted.get(f.sop_class, set())
            if f.syntax in syntaxes:
                targets[f.path] = None
                continue
            target = next(
                (ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts in syntaxes),
                None,
            )
            if target is None:
                refused[(f.sop_class, f.syntax)] = None
                continue
            problem = _decoder_problem(UID(f.syntax))
            if problem is not None:
                undecodable.setdefault(f.syntax, f"{f.path.name}: {problem}")
            targets[f.path] = target
        if refused:
            shown = [f"{UID(sop).name} in {UID(ts).name}" for sop, ts in list(refused)[:5]]
            raise DicomPushError(
                f"{self._peer()} accepted no presentation context for {len(refused)} "
                f"(SOP class, transfer syntax) pair(s), neither as stored nor converted to "
                f"Explicit/Implicit VR Little Endian: " + "; ".join(shown)
            )
        if undecodable:
            raise TranscodeError(
                f"{self._peer()} accepts these files only uncompressed and they cannot be "
                "decompressed here: " + "; ".join(undecodable.values())
            )
        return targets

    def _store_as_stored(self, lean: LeanSender, f: _File, context_id: int) -> None:
        """Send a file's data set as it is in the spool (the lean sender)."""
        try:
            value, comment = lean.store(f.path, f.offset, context_id, f.sop_class, f.sop_instance)
        except TimeoutError as exc:
            raise DicomPushError(
                f"no C-STORE response for {f.path.name} from {self._peer()} (timed out)"
            ) from exc
        except (OSError, DicomError) as exc:
            raise DicomPushError(
                f"C-STORE of {f.path.name} to {self._peer()} failed: {exc}"
            ) from exc
        self._judge(value, comment, f.path)

    def _store(self, assoc: Association, dataset: Dataset, path: Path) -> None:
        try:
            status = assoc.send_c_store(dataset)
        except (OSError, ValueError, AttributeError, RuntimeError) as exc:
            raise DicomPushError(f"C-STORE of {path.name} to {self._peer()} failed: {exc}") from exc
        code = getattr(status, "Status", None)
        if code is None:
            raise DicomPushError(
                f"no C-STORE response for {path.name} from {self._peer()} "
                "(timed out or the association was aborted)"
            )
        self._judge(int(code), str(getattr(status, "ErrorComment", "")), path)

    def _judge(self, value: int, comment: str, path: Path) -> None:
        """Return if the status means stored; else raise the retryable or final error."""
        if code_to_category(value) in (STATUS_SUCCESS, STATUS_WARNING):
            return
        meaning = STORAGE_SERVICE_CLASS_STATUS.get(value, ("", ""))[1]
        message = (
            f"{self._peer()} answered C-STORE of {path.name} with status 0x{value:04X}"
            + (f" {meaning}" if meaning else "")
            + (f" ({comment})" if comment else "")
        )
        if value in RETRY_STATUSES:
            raise DicomPushError(message)
        raise StoreRefusedError(message)
