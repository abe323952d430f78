"""Prior studies from a DICOMweb PACS: QIDO-RS for the candidates, WADO-RS for each.

The same choice as the DIMSE fetch (:func:`adapters.dicom.priors.pick`: same
patient ID and issuer, not later than the study, modality and body part), asked
with dicomweb-client (QIDO-RS ``/studies`` and ``/studies/{uid}/series``,
WADO-RS ``/studies/{uid}``). Each instance is checked for the patient again and
written as a Part 10 file into the job's priors folder (WADO-RS hands over
datasets, so a prior is stored as decoded, not byte for byte; it is a copy the
PACS keeps, not something radbridge acknowledged). Every request waits at most
what is left of ``policy.wait``; a prior not complete when it runs out is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from adapters.dicom.priors import note, pick, same_patient, study_query
from broker.model.priors import (
    FetchedPrior,
    PriorInstance,
    PriorsFetched,
    PriorsPolicy,
    PriorsQuery,
)


class _Session(requests.Session):
    """A session whose every request waits at most what is left of the fetch's time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        left = self.left()
        if left <= 0:
            raise TimeoutError("the fetch's wait ran out")
        kwargs["timeout"] = left
        return super().request(*args, **kwargs)


def _client(params: Mapping[str, Any], session: _Session) -> DICOMwebClient:
    parts = urlsplit(str(params["url"]))
    token = params.get("token")
    if parts.username is not None:
        session.auth = (parts.username, str(token or ""))
        netloc = parts.hostname or ""
        netloc += f":{parts.port}" if parts.port else ""
        parts = parts._replace(netloc=netloc)
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=urlunsplit(parts), session=session)


def _filters(query: PriorsQuery, policy: PriorsPolicy) -> dict[str, Any]:
    ask = study_query(query, policy)
    filters: dict[str, Any] = {"PatientID": query.patient_id}
    if ask.StudyDate:
        filters["StudyDate"] = ask.StudyDate
    return filters


def fetch_priors(query: PriorsQuery, policy: PriorsPolicy, folder: Path) -> PriorsFetched:
    """The ``priors_dicomweb`` registry entry: priors from a ``dicomweb`` target."""
    session = _Session(policy.wait)
    client = _client(policy.source_params, session)
    fields = ["IssuerOfPatientID", "ModalitiesInStudy", "StudyDate", "PatientID"]
    fetched: list[FetchedPrior] = []
    picked: list[tuple[str, str]] = []
    problems: list[str] = []

    def series_of(uid: str) -> list[Dataset]:
        answers = client.search_for_series(uid, fields=["Modality", "BodyPartExamined"])
        return [Dataset.from_json(a) for a in answers]

    try:
        answers = client.search_for_studies(search_filters=_filters(query, policy), fields=fields)
        picked = pick((Dataset.from_json(a) for a in answers), query, policy, series_of)
        for uid, date in picked:
            files: list[Path] = []
            instances: list[PriorInstance] = []
            refused = 0
            prior = folder / f"prior-{len(fetched)}"
            for ds in client.iter_study(uid):
                if session.left() <= 0:
                    raise TimeoutError("the fetch's wait ran out")
                if not same_patient(ds, query):
                    refused += 1
                    continue
                prior.mkdir(parents=True, exist_ok=True)
                path = prior / f"{len(files):05d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
                instances.append(
                    PriorInstance(
                        str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID),
                        str(ds.file_meta.TransferSyntaxUID),
                        path,
                        path.stat().st_size,
                    )
                )
            if files:
                fetched.append(FetchedPrior(uid, date, tuple(files), refused, tuple(instances)))
    except TimeoutError:
        problems.append(f"the PACS did not answer within {policy.wait:g} s")
    except requests.Timeout:
        problems.append(f"the PACS did not answer within {policy.wait:g} s")
    except (requests.RequestException, ValueError) as exc:
        problems.append(f"the PACS {policy.source} ({client.base_url}): {type(exc).__name__}")
    return PriorsFetched(tuple(fetched), note=note(policy, fetched, picked, problems))


__all__ = ["fetch_priors"]
