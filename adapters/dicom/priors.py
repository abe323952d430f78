"""Prior studies from a DICOM PACS: C-FIND (study root) for the candidates, C-GET for each.

C-GET brings the instances back on radbridge's own association, so the PACS
needs no move destination for radbridge and nothing reaches the listener: the
instances are written here, as they came (no decode, no re-encode), into the
job's priors folder, never indexed as a study and never routed (see
:mod:`broker.model.priors`).

Patient safety: a candidate counts only when the PACS answers with exactly the
study's patient ID and issuer of patient ID (an empty issuer matches only an
empty one); every instance the C-GET brings is checked again and one that
names another patient is refused (C-STORE status 0xC000) and dropped.

The whole fetch keeps to ``policy.wait``: the connection, the association and
each response wait at most what is left of it, and a timer aborts the
association when it runs out. A prior whose C-GET did not end in success is
dropped whole (a half study is no comparison).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from adapters.dicom.client import RequestorAE
from broker.model.priors import (
    FetchedPrior,
    PriorInstance,
    PriorsFetched,
    PriorsPolicy,
    PriorsQuery,
)

#: pynetdicom's statuses: pending answers of a C-FIND / C-GET, and the ends that count.
_PENDING = (0xFF00, 0xFF01)
_GOT = (0x0000, 0xB000)
_NOT_OURS = 0xC000
#: A presentation context is left for the C-FIND and one for the C-GET model.
_STORAGE = [str(cx.abstract_syntax) for cx in StoragePresentationContexts][:126]


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return max(0.05, self.end - time.monotonic())

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end


def _answered(status: Dataset | None) -> TypeGuard[Dataset]:
    """A response came: pynetdicom yields None, or an empty status, when the association
    timed out or was aborted (the fetch's wait ran out)."""
    return status is not None and "Status" in status


def _text(value: object) -> str:
    return str(value or "").strip()


def study_query(query: PriorsQuery, policy: PriorsPolicy) -> Dataset:
    """The study-level query: the patient ID to match, the issuer, date, modalities and UID
    to return (the issuer is checked here: not every PACS matches on it)."""
    ask = Dataset()
    ask.QueryRetrieveLevel = "STUDY"
    ask.PatientID = query.patient_id
    ask.IssuerOfPatientID = ""
    ask.StudyInstanceUID = ""
    ask.ModalitiesInStudy = ""
    ask.StudyDate = ""
    if policy.max_age_days is not None:
        since = datetime.now(UTC) - timedelta(days=policy.max_age_days)
        ask.StudyDate = f"{since:%Y%m%d}-"
    return ask


def _candidates(assoc: Association, query: PriorsQuery, policy: PriorsPolicy) -> Iterator[Dataset]:
    """The PACS's studies of the patient (study level), as it answers."""
    ask = study_query(query, policy)
    for status, found in assoc.send_c_find(ask, StudyRootQueryRetrieveInformationModelFind):
        if not _answered(status):
            raise TimeoutError("the PACS did not answer the C-FIND in time")
        if status.Status in _PENDING and found is not None:
            yield found
        elif status.Status not in _PENDING and status.Status != 0x0000:
            raise ConnectionError(f"the PACS refused the C-FIND (status 0x{status.Status:04X})")


def _series(assoc: Association, study_uid: str) -> list[Dataset]:
    ask = Dataset()
    ask.QueryRetrieveLevel = "SERIES"
    ask.StudyInstanceUID = study_uid
    ask.SeriesInstanceUID = ""
    ask.Modality = ""
    ask.BodyPartExamined = ""
    return [
        found
        for status, found in assoc.send_c_find(ask, StudyRootQueryRetrieveInformationModelFind)
        if _answered(status) and status.Status in _PENDING and found is not None
    ]


def _values(value: object) -> set[str]:
    """The values of a multi-valued element (one value comes as a plain string)."""
    if value is None or value == "":
        return set()
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return {_text(v).upper() for v in items if _text(v)}


def same_patient(found: Dataset, query: PriorsQuery) -> bool:
    return (
        _text(found.get("PatientID")) == query.patient_id
        and _text(found.get("IssuerOfPatientID")) == query.issuer
    )


def choose(assoc: Association, query: PriorsQuery, policy: PriorsPolicy) -> list[tuple[str, str]]:
    """``(study UID, study date)`` of the priors to fetch by C-GET (see :func:`pick`)."""
    return pick(_candidates(assoc, query, policy), query, policy, lambda uid: _series(assoc, uid))


def pick(
    studies: Iterable[Dataset],
    query: PriorsQuery,
    policy: PriorsPolicy,
    series_of: Callable[[str], list[Dataset]],
) -> list[tuple[str, str]]:
    """``(study UID, study date)`` of the priors to fetch, newest first, at most ``count``:
    the PACS's ``studies`` (study-level answers) of exactly the query's patient ID and
    issuer, not later than the study, of its modality and body part when the policy says
    so (``series_of(uid)``: the series-level answers, asked only when needed)."""
    chosen: list[tuple[str, str, Dataset]] = []
    for found in studies:
        uid = _text(found.get("StudyInstanceUID"))
        date = _text(found.get("StudyDate"))
        if not uid or uid == query.study_uid or not same_patient(found, query):
            continue
        if query.study_date and date and date > query.study_date:
            continue  # a later study is no prior
        chosen.append((uid, date, found))
    chosen.sort(key=lambda c: c[1], reverse=True)
    picked: list[tuple[str, str]] = []
    for uid, date, found in chosen:
        if len(picked) >= policy.count:
            break
        modalities = _values(found.get("ModalitiesInStudy"))
        body_parts: set[str] = set()
        if policy.body_part or (policy.same_modality and not modalities):
            series = series_of(uid)
            modalities |= {_text(s.get("Modality")).upper() for s in series}
            body_parts = {_text(s.get("BodyPartExamined")).upper() for s in series}
        if policy.same_modality and not modalities & {m.upper() for m in query.modalities}:
            continue
        if policy.body_part and not body_parts & {b.upper() for b in query.body_parts}:
            continue
        picked.append((uid, date))
    return picked


class _Receiver:
    """The C-STORE sub-operations of one C-GET, into one prior's folder."""

    def __init__(self, folder: Path, query: PriorsQuery) -> None:
        self.folder = folder
        self.query = query
        self.files: list[Path] = []
        self.instances: list[PriorInstance] = []
        self.refused = 0

    def __call__(self, event: evt.Event) -> int:
        ds = event.dataset
        if not same_patient(ds, self.query):
            self.refused += 1
            return _NOT_OURS
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{len(self.files):05d}.dcm"
        data = event.encoded_dataset()
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.files.append(path)
        self.instances.append(
            PriorInstance(
                _text(ds.get("SeriesInstanceUID")),
                _text(ds.get("SOPInstanceUID")),
                str(event.context.transfer_syntax),
                path,
                len(data),
            )
        )
        return 0x0000


def _get(assoc: Association, study_uid: str, receiver: _Receiver) -> tuple[bool, str]:
    ask = Dataset()
    ask.QueryRetrieveLevel = "STUDY"
    ask.StudyInstanceUID = study_uid
    last = None
    for status, _found in assoc.send_c_get(ask, StudyRootQueryRetrieveInformationModelGet):
        if not _answered(status):
            return False, "the PACS did not answer the C-GET in time"
        last = int(status.Status)
    if last in _GOT and receiver.files:
        return True, ""
    return False, f"C-GET ended with status 0x{(last or 0):04X}"


def _open(params: Mapping[str, Any], deadline: _Deadline, receiver: list[_Receiver]) -> Association:
    ae = RequestorAE(ae_title=str(params.get("calling_ae") or "RADBRIDGE"))
    limit = min(float(params.get("timeout") or 30.0), deadline.left())
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = limit
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in _STORAGE:
        ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
    roles = [build_role(uid, scp_role=True) for uid in _STORAGE]

    def on_store(event: evt.Event) -> int:
        return receiver[0](event) if receiver else _NOT_OURS

    return ae.associate(
        str(params["host"]),
        int(params["port"]),
        ae_title=str(params["ae_title"]),
        ext_neg=roles,  # type: ignore[arg-type]
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        max_pdu=int(params.get("max_pdu") or 0),
    )


def fetch_priors(query: PriorsQuery, policy: PriorsPolicy, folder: Path) -> PriorsFetched:
    """The ``priors_dicom`` registry entry: priors from a ``dicom`` target (see the module)."""
    deadline = _Deadline(policy.wait)
    params = policy.source_params
    where = f"{params.get('ae_title')}@{params.get('host')}:{params.get('port')}"
    receiver: list[_Receiver] = []
    try:
        assoc = _open(params, deadline, receiver)
    except Exception as exc:  # a bad address and the like: said, never raised
        return PriorsFetched(note=f"sent without priors: cannot reach {where}: {exc}")
    if not assoc.is_established:
        why = (
            "rejected the association"
            if assoc.is_rejected
            else "could not be reached or did not answer"
        )
        return PriorsFetched(
            note=f"sent without priors: the PACS {policy.source} ({where}) {why} "
            f"(waited at most {policy.wait:g} s)"
        )
    watchdog = threading.Timer(deadline.left(), assoc.abort)
    watchdog.daemon = True
    watchdog.start()
    fetched: list[FetchedPrior] = []
    problems: list[str] = []
    try:
        picked = choose(assoc, query, policy)
        for uid, date in picked:
            if deadline.passed or not assoc.is_established:
                problems.append("time ran out")
                break
            receiver[:] = [_Receiver(folder / f"prior-{len(fetched)}", query)]
            ok, why = _get(assoc, uid, receiver[0])
            if ok:
                got = receiver[0]
                fetched.append(
                    FetchedPrior(uid, date, tuple(got.files), got.refused, tuple(got.instances))
                )
            else:
                problems.append(why)
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        problems.append(str(exc))
        picked = []
    finally:
        watchdog.cancel()
        if assoc.is_established:
            assoc.release()
    if deadline.passed and len(fetched) < len(picked):
        problems.append(f"the PACS did not answer within {policy.wait:g} s")
    return PriorsFetched(tuple(fetched), note=note(policy, fetched, picked, problems))


def note(
    policy: PriorsPolicy,
    fetched: list[FetchedPrior],
    picked: list[tuple[str, str]],
    problems: list[str],
) -> str:
    instances = sum(len(p.files) for p in fetched)
    refused = sum(p.refused for p in fetched)
    said = f"; {'; '.join(dict.fromkeys(problems))}" if problems else ""
    said += f"; {refused} instances of another patient refused" if refused else ""
    if not fetched:
        if not picked and not problems:
            return f"no prior study found in {policy.source}"
        return f"sent without priors from {policy.source}{said}"
    return (
        f"priors from {policy.source}: {len(fetched)} of {policy.count} asked "
        f"({instances} instances){said}"
    )


__all__ = ["choose", "fetch_priors", "note", "pick", "same_patient", "study_query"]
