"""MPPS (N-CREATE, N-SET) and IAN (N-CREATE) on the ingest AE titles: evidence that a
study is complete.

A modality creates a Modality Performed Procedure Step (IN PROGRESS) when it
starts, and sets it COMPLETED or DISCONTINUED at the end, listing the series
and instances it made; a PACS sends an Instance Availability Notification for
the instances it holds. Each is kept in the store (:mod:`broker.store.notices`)
before the success status goes back; the service is then told to judge the
study (:mod:`broker.runtime.completion`).

Answers (DICOM PS3.4 F.7, PS3.7 10.1.2/10.1.5): 0x0000 success; 0x0111
duplicate SOP instance (a second N-CREATE); 0x0112 no such object instance
(an N-SET of an unknown step); 0x0110 processing failure with error comment
(an N-SET of a step already COMPLETED or DISCONTINUED, unreadable
attributes); 0x0106 invalid attribute value (an N-CREATE not IN PROGRESS, a
status not in the standard's list); 0x0120 missing attribute; 0x0122 SOP
class not supported (the results AE title); 0x0213 resource limitation (the
store cannot keep it now).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    InstanceAvailabilityNotification,
    ModalityPerformedProcedureStep,
)

from adapters.dicom_uid import uid_problem
from broker.model.completion import FINAL_STEPS, IAN_AVAILABLE, NoticeKind, StepStatus
from broker.model.errors import DuplicateError, NotFoundError, StoreError
from broker.model.logging import get_logger
from broker.store.notices import NoticeIn, NoticeStore
from config.schema import AERole, Settings

LOG = get_logger("radbridge.dicom")

#: The SOP classes of this module, with the transfer syntaxes pynetdicom decodes.
NOTICE_CLASSES = (ModalityPerformedProcedureStep, InstanceAvailabilityNotification)

SUCCESS = 0x0000
INVALID_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
CLASS_NOT_SUPPORTED = 0x0122
RESOURCE_LIMITATION = 0x0213

Answer = tuple[Dataset | int, Dataset | None]
_MPPS_REFERENCES = ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")


def _status(code: int, comment: str) -> Answer:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds, None


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _items(ds: Dataset, keyword: str) -> Iterable[Dataset]:
    return ds.get(keyword) or ()


def mpps_references(ds: Dataset) -> tuple[str, ...]:
    """SOP Instance UIDs of the images and other objects an MPPS's performed series list."""
    out: list[str] = []
    for series in _items(ds, "PerformedSeriesSequence"):
        for keyword in _MPPS_REFERENCES:
            for item in _items(series, keyword):
                uid = _text(item, "ReferencedSOPInstanceUID")
                if uid and uid not in out:
                    out.append(uid)
    return tuple(out)


def ian_references(ds: Dataset) -> tuple[str, ...]:
    """SOP Instance UIDs an Instance Availability Notification lists."""
    out: list[str] = []
    for series in _items(ds, "ReferencedSeriesSequence"):
        for item in _items(series, "ReferencedSOPSequence"):
            uid = _text(item, "ReferencedSOPInstanceUID")
            if uid and uid not in out:
                out.append(uid)
    return tuple(out)


def _scheduled(ds: Dataset) -> Dataset | None:
    items = list(_items(ds, "ScheduledStepAttributesSequence"))
    return items[0] if items else None


def _json(ds: Dataset) -> str:
    """The attributes as DICOM JSON, bulk data left out (an MPPS carries none that matter)."""
    return str(ds.to_json(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda _: ""))


class NoticeSCP:
    """The N-CREATE and N-SET handlers of one listener process."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        store: NoticeStore,
        report: Callable[[list[str]], object],
    ) -> None:
        self.settings = settings
        self.store = store
        self.report = report

    def _peer(self, event: evt.Event) -> tuple[str, str, str]:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title).strip() if primitive else ""
        return assoc.requestor.ae_title.strip(), called, assoc.requestor.address

    def _ingest(self, called_ae: str) -> bool:
        called = self.settings().dicom.ae_titles.get(called_ae)
        return called is not None and called.role is AERole.INGEST

    def on_n_create(self, event: evt.Event) -> Answer:
        """N-CREATE of an MPPS (IN PROGRESS) or of an IAN."""
        try:
            return self._n_create(event)
        except Exception as exc:  # an answer, never pynetdicom's 0xC211 and a traceback
            LOG.error("n-create failed: unexpected error", error_type=type(exc).__name__)
            return _status(PROCESSING_FAILURE, "not kept: " + type(exc).__name__)

    def on_n_set(self, event: evt.Event) -> Answer:
        """N-SET of an MPPS: its status, and the series and instances it made."""
        try:
            return self._n_set(event)
        except Exception as exc:
            LOG.error("n-set failed: unexpected error", error_type=type(exc).__name__)
            return _status(PROCESSING_FAILURE, "not kept: " + type(exc).__name__)

    def _n_create(self, event: evt.Event) -> Answer:
        calling, called, peer = self._peer(event)
        log = LOG.bind(calling_ae=calling, called_ae=called, peer=peer)
        request = cast(N_CREATE, event.request)
        sop_class = str(request.AffectedSOPClassUID)
        if not self._ingest(called):
            log.warning("n-create refused: not an ingest AE title", sop_class=sop_class)
            return _status(CLASS_NOT_SUPPORTED, f"{called} takes no notices; use an ingest AE")
        uid = str(request.AffectedSOPInstanceUID or "").strip()
        problem = uid_problem(uid) if uid else "is missing"
        if problem is not None:
            return _status(INVALID_VALUE, f"Affected SOP Instance UID {problem}")
        try:
            ds = event.attribute_list
        except Exception as exc:
            log.warning("n-create refused: cannot decode its attributes", error=str(exc)[:200])
            return _status(PROCESSING_FAILURE, "cannot decode the attribute list")
        if sop_class == ModalityPerformedProcedureStep:
            notice = self._mpps(ds, uid, calling, called, peer)
            if isinstance(notice, tuple):
                return notice
            if notice.status != StepStatus.IN_PROGRESS:
                return _status(INVALID_VALUE, "an MPPS is created IN PROGRESS")
        else:
            notice = NoticeIn(
                kind=NoticeKind.IAN,
                sop_instance_uid=uid,
                study_uid=_text(ds, "StudyInstanceUID"),
                accession_number=_text(ds, "AccessionNumber"),
                status=IAN_AVAILABLE,
                referenced=ian_references(ds),
                dataset_json=_json(ds),
                calling_ae=calling,
                called_ae=called,
                peer_address=peer,
            )
            if notice.study_uid is None:
                return _status(MISSING_ATTRIBUTE, "Study Instance UID (0020,000D) is missing")
        try:
            self.store.create(notice, datetime.now(UTC))
        except DuplicateError:
            return _status(DUPLICATE_INSTANCE, "this SOP instance exists already")
        except StoreError as exc:
            log.error("n-create failed: not kept", error=str(exc))
            return _status(RESOURCE_LIMITATION, "not kept: the store is unavailable")
        self._kept("n-create", notice, log)
        return SUCCESS, ds

    def _mpps(
        self, ds: Dataset, uid: str, calling: str, called: str, peer: str
    ) -> NoticeIn | Answer:
        status = _text(ds, "PerformedProcedureStepStatus")
        if status is None:
            return _status(MISSING_ATTRIBUTE, "Performed Procedure Step Status is missing")
        if status not in set(StepStatus):
            return _status(INVALID_VALUE, "status: IN PROGRESS, COMPLETED or DISCONTINUED")
        scheduled = _scheduled(ds)
        return NoticeIn(
            kind=NoticeKind.MPPS,
            sop_instance_uid=uid,
            study_uid=_text(scheduled, "StudyInstanceUID"),
            accession_number=_text(scheduled, "AccessionNumber"),
            status=status,
            referenced=mpps_references(ds),
            dataset_json=_json(ds),
            calling_ae=calling,
            called_ae=called,
            peer_address=peer,
        )

    def _n_set(self, event: evt.Event) -> Answer:
        calling, called, peer = self._peer(event)
        log = LOG.bind(calling_ae=calling, called_ae=called, peer=peer)
        if not self._ingest(called):
            return _status(CLASS_NOT_SUPPORTED, f"{called} takes no notices; use an ingest AE")
        uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID or "").strip()
        try:
            held, text = self.store.get(NoticeKind.MPPS, uid)
        except NotFoundError:
            return NO_SUCH_INSTANCE, None
        if held.status in FINAL_STEPS:
            return _status(PROCESSING_FAILURE, f"the step is {held.status}; it cannot change")
        try:
            changes = event.modification_list
        except Exception as exc:
            log.warning("n-set refused: cannot decode its attributes", error=str(exc)[:200])
            return _status(PROCESSING_FAILURE, "cannot decode the modification list")
        merged = Dataset.from_json(text)
        for element in changes:
            merged[element.tag] = element
        notice = self._mpps(merged, uid, calling, called, peer)
        if isinstance(notice, tuple):
            return notice
        try:
            self.store.update(notice, datetime.now(UTC))
        except NotFoundError:
            return NO_SUCH_INSTANCE, None
        except StoreError as exc:
            log.error("n-set failed: not kept", error=str(exc))
            return _status(RESOURCE_LIMITATION, "not kept: the store is unavailable")
        self._kept("n-set", notice, log)
        return SUCCESS, merged

    def _kept(self, event: str, notice: NoticeIn, log: Any) -> None:
        """Log a notice that is stored, and report its study to the completion check."""
        log.info(
            event,
            kind=notice.kind.value,
            study_uid=notice.study_uid,
            status=notice.status,
            referenced=len(notice.referenced),
        )
        if notice.study_uid:
            self.report([notice.study_uid])

    def handlers(self) -> list[Any]:
        return [(evt.EVT_N_CREATE, self.on_n_create), (evt.EVT_N_SET, self.on_n_set)]
