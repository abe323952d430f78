"""Retention of a prior's pseudonyms through ``radbridge serve`` and ``radbridge purge``.

The patient's earlier study is in radbridge's index (it came from the scanner, no route
took it) and in the PACS (Orthanc). A newer study of the patient goes de-identified, with
that prior fetched from the PACS, to the harness's HTTP vendor, which pulls both and holds
its result; a second newer study sends it again. Retention purges the prior's own study
from the spool; the pseudonyms issued for the prior stay as long as a result of either
newer study can still name them, and go once both are gone.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters.harness.products import ProductKind
from adapters.harness.vendor import SimulatedVendor
from broker.model.deid import SECRET_VARIABLE
from tests.e2e.test_priors import patient_study
from tests.peers import Orthanc, free_port, storescu, wait_until
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

PATIENT = "PRI0077"
ISSUER = "HOSP_A"


def _config(folder: Path, pacs: Orthanc, cloud: SimulatedVendor) -> dict[str, Any]:
    config = base_config(folder, free_port(), study_stable_seconds=0.5)
    config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["targets"] = {"pacs": dicom_block(pacs.aet, pacs.dicom_port)}
    config["vendors"] = {
        "cloudanon": {
            "product": "CT coronary follow-up (cloud, de-identified)",
            "transport": {"type": "http", "url": f"http://127.0.0.1:{cloud.http_port}/jobs"},
            "deidentify": {"profile": "basic"},
        }
    }
    config["routes"] = [
        {
            "name": "heart-followup",
            "when": {"modality": "CT", "body_part": "HEART"},
            "send": ["cloudanon"],
            "priors": {"source": "pacs", "count": 3, "max_age": "3650d", "wait": 10},
        }
    ]
    config["retention"] = {"studies_after_done": "1s"}  # the service's own purge: hourly
    return config


def _deidentified(cloud: SimulatedVendor) -> list[dict[str, Any]]:
    """The de-identified jobs' manifests the vendor was posted, in order."""
    return [m for m in cloud.manifests if m.get("deidentified")]


def _awaiting(rb: Radbridge, study_uids: list[str]) -> dict[str, dict[str, Any]] | None:
    """The jobs by study once they are the studies' and all await the vendor's result."""
    jobs = {j["study_uid"]: j for j in json.loads(rb.cli("jobs", "list", "--json").stdout)}
    if set(jobs) != set(study_uids) or {j["state"] for j in jobs.values()} != {"awaiting_result"}:
        return None
    return jobs


def _issued(rb: Radbridge, pseudonym: str) -> list[dict[str, Any]]:
    """What ``radbridge pseudonyms show`` finds for ``pseudonym`` (none: an empty list)."""
    shown = rb.cli("pseudonyms", "show", pseudonym, "--json", check=False)
    if shown.returncode == 1 and "issued none" in shown.stderr + shown.stdout:
        return []
    assert shown.returncode == 0, shown.stderr
    found: list[dict[str, Any]] = json.loads(shown.stdout)
    return found


def _purge(rb: Radbridge) -> dict[str, int]:
    """``radbridge purge`` twice (a purged study's rows go at the purge after its files):
    what each kind lost, summed."""
    counts: dict[str, int] = {}
    for _ in range(2):
        items = json.loads(rb.cli("purge", "--json").stdout)["items"]
        for item in items:
            counts[item["kind"]] = counts.get(item["kind"], 0) + item["count"]
    return counts


def test_a_priors_pseudonyms_stay_while_a_newer_study_that_sent_them_waits(
    tmp_path: Path,
) -> None:
    """Two newer studies send the patient's prior to the vendor under one pseudonymous UID,
    recorded as sent with the later. A purge that takes the prior's own study (purged, no
    job) leaves it while both jobs await the vendor's results; so does one after the later
    study's job is cancelled and that study purged, while the earlier still waits; once
    that one is cancelled and purged too, the next purge takes it."""
    pacs = Orthanc(
        tmp_path / "orthanc", config={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True}
    ).start()
    cloud = SimulatedVendor(
        ProductKind.LUNG_NODULE_CT, tmp_path / "cloud", http_port=free_port(), delay=3600
    ).start()
    rb = Radbridge(tmp_path / "rb", _config(tmp_path / "rb", pacs, cloud))
    rb.env[SECRET_VARIABLE] = f"prior-retention-{uuid.uuid4().hex}"
    try:
        rb.start()
        prior_files, prior = patient_study(tmp_path / "prior", PATIENT, ISSUER, "20240105")
        for path in prior_files:  # the scanner sent it to the PACS and to radbridge
            pacs.request("POST", "/instances", path.read_bytes())
        storescu(prior_files, rb.port)
        rb.wait_state(prior, "stable")
        newer, listed = [], []
        for n, date in enumerate(("20260305", "20260306")):
            files, current = patient_study(
                tmp_path / f"current{n}", PATIENT, ISSUER, date, "ct_ccta"
            )
            storescu(files, rb.port)
            wait_until(lambda: len(_deidentified(cloud)) > n, "manifest", timeout=90)
            [prior_listed] = _deidentified(cloud)[n]["priors"]
            listed.append(prior_listed["study_instance_uid"])
            newer.append(current)
        pseudonym = listed[0]
        assert listed == [pseudonym, pseudonym]  # one pseudonymous UID for the prior
        wait_until(lambda: cloud.priors_pulled.get(pseudonym) == 2, "prior pulled", timeout=90)
        [issued] = _issued(rb, pseudonym)
        assert (issued["original"], issued["sent_with"]) == (prior, newer[1])
        jobs = wait_until(lambda: _awaiting(rb, newer), "both jobs await results")
        time.sleep(1.5)  # the prior's study is past studies_after_done

        _purge(rb)
        assert rb.study(prior)["purged_at"] is not None  # the prior's own copy went
        assert _issued(rb, pseudonym) == [issued]  # both vendor's results may still name it

        for current in reversed(newer):  # the later study first: it is the one recorded
            rb.cli("jobs", "cancel", str(jobs[current]["id"]))
            time.sleep(1.5)  # the study is past studies_after_done
            counts = _purge(rb)
            assert rb.study(current)["purged_at"] is not None
            if current == newer[1]:  # the earlier study still waits for its result
                assert _issued(rb, pseudonym) == [issued]
        assert counts["pseudonyms"] >= 1
        assert _issued(rb, pseudonym) == []
    finally:
        rb.close()
        cloud.stop()
        pacs.stop()
