"""The simulated modality's procedure step, and a PACS's availability notification.

A modality creates its Modality Performed Procedure Step (N-CREATE, IN
PROGRESS) when the exam starts, and sets it COMPLETED (N-SET) at the end,
listing every series and instance it made; a PACS sends an Instance
Availability Notification (N-CREATE) for the instances it holds. These build
the data sets from the files of a study and send them (pynetdicom SCU: dcmtk
has no MPPS or IAN sender).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    InstanceAvailabilityNotification,
    ModalityPerformedProcedureStep,
)

from adapters.dicom.client import RequestorAE
from adapters.harness.errors import HarnessError

Reference = tuple[str, str, str]
"""(Series Instance UID, SOP Class UID, SOP Instance UID) of one instance."""


def references(paths: Iterable[Path]) -> list[Reference]:
    """What each file is, read from its header."""
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def _by_series(refs: Iterable[Reference]) -> dict[str, list[Dataset]]:
    series: dict[str, list[Dataset]] = {}
    for series_uid, sop_class, sop_uid in refs:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_uid
        series.setdefault(series_uid, []).append(ref)
    return series


def step_dataset(
    study_uid: str,
    status: str,
    refs: Iterable[Reference] = (),
    *,
    accession: str | None = None,
    modality: str = "CT",
) -> Dataset:
    """An MPPS's attributes: the scheduled step (study, accession), its status, and the
    performed series with their images."""
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID = study_uid
    if accession:
        step.AccessionNumber = accession
    ds.ScheduledStepAttributesSequence = [step]
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepID = "PPS1"
    ds.Modality = modality
    performed = []
    for series_uid, refs_of_series in _by_series(refs).items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedImageSequence = refs_of_series
        performed.append(item)
    ds.PerformedSeriesSequence = performed
    return ds


def availability_dataset(study_uid: str, refs: Iterable[Reference], ae_title: str) -> Dataset:
    """An IAN's attributes: the study, its series and instances, ONLINE at ``ae_title``."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.ReferencedSeriesSequence = []
    for series_uid, refs_of_series in _by_series(refs).items():
        for ref in refs_of_series:
            ref.InstanceAvailability = "ONLINE"
            ref.RetrieveAETitle = ae_title
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = refs_of_series
        ds.ReferencedSeriesSequence.append(item)
    return ds


class ProcedureStep:
    """One MPPS of one study; each request on an association of its own (an exam's images
    can take longer than a peer keeps an idle association open)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_ae: str = "RADBRIDGE",
        calling_ae: str = "CT01",
        timeout: float = 30.0,
    ) -> None:
        self.uid = str(generate_uid())
        self.host, self.port, self.called_ae = host, port, called_ae
        self.calling_ae, self.timeout = calling_ae, timeout

    def _request(self, create: bool, ds: Dataset) -> int:
        ae = RequestorAE(ae_title=self.calling_ae)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = self.timeout
        assoc: Any = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise HarnessError(
                f"{self.called_ae}@{self.host}:{self.port} refused the MPPS association"
            )
        try:
            send = assoc.send_n_create if create else assoc.send_n_set
            status, _ = send(ds, ModalityPerformedProcedureStep, self.uid)
        finally:
            assoc.release()
        return _code(status)

    def create(self, ds: Dataset) -> int:
        """N-CREATE; the DIMSE status (0 is success)."""
        return self._request(True, ds)

    def set(self, ds: Dataset) -> int:
        """N-SET; the DIMSE status."""
        return self._request(False, ds)


def notify_availability(
    host: str,
    port: int,
    ds: Dataset,
    *,
    called_ae: str = "RADBRIDGE",
    calling_ae: str = "PACS",
    timeout: float = 30.0,
) -> int:
    """Send one IAN (N-CREATE); the DIMSE status."""
    ae = RequestorAE(ae_title=calling_ae)
    ae.add_requested_context(InstanceAvailabilityNotification)
    ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = timeout
    assoc: Any = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise HarnessError(f"{called_ae}@{host}:{port} refused the IAN association")
    try:
        status, _ = assoc.send_n_create(ds, InstanceAvailabilityNotification, str(generate_uid()))
    finally:
        assoc.release()
    return _code(status)


def _code(status: Dataset | None) -> int:
    if status is None or "Status" not in status:
        raise HarnessError("no answer to the DIMSE-N request")
    return int(status.Status)
