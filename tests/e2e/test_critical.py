"""Critical-result cases through one ``radbridge serve``: a head CT (storescu) goes to the
harness's head-bleed product, which returns an urgent SR; radbridge opens a case, notifies
the first contact by an SMS-gateway webhook and, with no acknowledgement, escalates to the
second by a WeCom-robot webhook (loopback HTTP receivers record both), then flags the case
overdue; a named person acknowledges through the REST API, the console or the signed link
of the notification, and the ledger and the audit trail record each step. Two sites name
escalation lists of their own: each site's urgent finding notifies its own first contact.

The same service runs a cascade: a volume product gets the study only when the bleed
triage's result says the bleed is present, and a fracture follow-up (whose finding the
triage never reports) is never sent; usage counts only what was sent.

Short configured times (a one-second wait per contact and deadline) stand in for the
hospital's 10 and 30 minutes.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from adapters.harness.vendor import ResultsTarget, SimulatedVendor
from tests.fhir_receiver import Webhook
from tests.peers import free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.slow(seconds=20),
    pytest.mark.xdist_group("critical"),
]

FIRST = ("Dr. Li (neuro on call)", "13800000001")
SECOND = ("Dr. Wang (head of radiology)", "13800000002")
#: Each site's own escalation list: its one contact on the SMS channel.
SITE_DUTY = {
    "site-a": ("Dr. Chen (site A duty)", "13900000001"),
    "site-b": ("Dr. Sun (site B duty)", "13900000002"),
}


@dataclass
class Desk:
    rb: Radbridge
    volume: SimulatedVendor
    sms: Webhook
    wecom: Webhook
    http: httpx.Client
    operator: str
    viewer: str
    admin: str
    folder: Path

    def study(self, n: int, calling_ae: str = "CT02") -> str:
        """Send a small head CT (from ``calling_ae``); its Study Instance UID."""
        files = generate_study(
            "ct_head",
            self.folder / f"study{n}",
            instances=3,
            rows=32,
            columns=32,
            accession=f"ACC-CRIT-{n}",
        )
        storescu(files, self.rb.port, called_ae="RADBRIDGE_STAT", calling_ae=calling_ae)
        return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        return self.http.get(path, headers={"Authorization": f"Bearer {token or self.viewer}"})

    def case_of(self, study_uid: str) -> dict[str, Any]:
        """The study's critical case, once it is open."""

        def found() -> dict[str, Any] | None:
            items = self.get(f"/api/v1/critical?study_uid={study_uid}").json()["items"]
            return items[0] if items else None

        case: dict[str, Any] = wait_until(found, "the critical case opened", 60)
        return case

    def case_when(self, case_id: int, kinds: set[str], count: int = 1) -> dict[str, Any]:
        """The case with its ledger, once it has steps of each of ``kinds`` (``count`` each)."""

        def found() -> dict[str, Any] | None:
            case = self.case(case_id)
            had = [s["kind"] for s in case["steps"]]
            return case if all(had.count(k) >= count for k in kinds) else None

        case: dict[str, Any] = wait_until(found, f"case {case_id} has {sorted(kinds)}", 60)
        return case

    def case(self, case_id: int) -> dict[str, Any]:
        detail: dict[str, Any] = self.get(f"/api/v1/critical/{case_id}").json()
        return detail

    def sms_for(self, accession: str) -> dict[str, Any]:
        """The SMS gateway's body of the first contact's notification about ``accession``."""

        def found() -> dict[str, Any] | None:
            return next((b for _, b in self.sms.received if accession in b["text"]), None)

        body: dict[str, Any] = wait_until(found, f"the SMS about {accession}", 30)
        return body


def link_of(text: str) -> str:
    match = re.search(r"https?://\S+/console/critical/ack/\S+", text)
    assert match, f"no acknowledgement link in {text!r}"
    return match.group(0)


BLEED = "1386000"
FRACTURE = "125605004"


def _config(
    folder: Path, vendor: SimulatedVendor, volume: SimulatedVendor, sms: Webhook, wecom: Webhook
) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["dicom"]["ae_titles"]["RADBRIDGE_STAT"] = {"role": "ingest", "stable_seconds": 0.5}
    config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["vendors"] = {
        "ichai": {
            "product": "Head CT bleed triage",
            "kind": "head-ct-bleed",
            "transport": {
                "type": "dicom",
                "ae_title": vendor.ae_title,
                "host": "127.0.0.1",
                "port": vendor.port,
            },
            "results": {"quiet_seconds": 0.5},
        },
        "volai": {
            "product": "Hemorrhage volume",
            "transport": {
                "type": "dicom",
                "ae_title": volume.ae_title,
                "host": "127.0.0.1",
                "port": volume.port,
            },
            "results": {"quiet_seconds": 0.5},
        },
        "fracai": {  # nothing listens: a job sent to it would fail and show
            "product": "Fracture follow-up",
            "transport": {
                "type": "dicom",
                "ae_title": "FRACAI",
                "host": "127.0.0.1",
                "port": free_port(),
            },
        },
    }
    config["routes"] = [
        {
            "name": "head-ct-bleed",
            "when": {"modality": "CT", "body_part": {"in": ["HEAD", "BRAIN"]}},
            "send": ["ichai"],
            "priority": "stat",
        },
        {
            "name": "bleed-volume",
            "when": {f"result.ichai.finding.{BLEED}": "present"},
            "send": ["volai"],
        },
        {
            "name": "fracture-follow-up",
            "when": {f"result.head-ct-bleed.finding.{FRACTURE}": "present"},
            "send": ["fracai"],
        },
    ]
    config["critical"] = {
        "acknowledge_within": "1s",
        "escalate_after": "1s",
        "channels": {
            "sms": {"url": sms.url, "template": "sms"},
            "wecom": {"url": wecom.url, "template": "wecom"},
        },
        "contacts": [
            {"name": FIRST[0], "notify": {"sms": FIRST[1]}},
            {"name": SECOND[0], "notify": {"wecom": SECOND[1]}},
        ],
        "lists": {
            f"{site}-duty": [{"name": name, "notify": {"sms": number}}]
            for site, (name, number) in SITE_DUTY.items()
        },
    }
    config["sites"] = {
        site: {
            "name": f"Township {site[-1].upper()}",
            "senders": [{"ae_title": f"CT_{site[-1].upper()}", "host": "127.0.0.1"}],
            "critical_contacts": f"{site}-duty",
        }
        for site in SITE_DUTY
    }
    return config


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    """One service, one simulated head-bleed product, two channel receivers for the module."""
    folder = tmp_path_factory.mktemp("critical")
    rb_port = free_port()
    vendor = SimulatedVendor(
        "head-ct-bleed",
        folder / "vendor",
        ae_title="ICHAI",
        delay=0.1,
        result="sr",
        target=ResultsTarget(ae_title="RADBRIDGE_RES", port=rb_port),
    ).start()
    volume = SimulatedVendor(
        "lung-nodule-ct",
        folder / "volume",
        ae_title="VOLAI",
        delay=0.1,
        result="sr",
        target=ResultsTarget(ae_title="RADBRIDGE_RES", port=rb_port),
    ).start()
    with Webhook() as sms, Webhook() as wecom:
        config = _config(folder / "rb", vendor, volume, sms, wecom)
        config["dicom"]["listen"]["port"] = rb_port
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_HTTP__LINK_SECRET"] = secrets.token_urlsafe(32)  # signs every link
        try:
            rb.start()
            tokens = {
                role: rb.cli("tokens", "create", "--role", role, "--name", role).stdout.strip()
                for role in ("operator", "viewer", "admin")
            }
            base = f"http://127.0.0.1:{config['http']['listen']['port']}"
            with httpx.Client(base_url=base, timeout=30) as http:
                yield Desk(
                    rb,
                    volume,
                    sms,
                    wecom,
                    http,
                    tokens["operator"],
                    tokens["viewer"],
                    tokens["admin"],
                    folder,
                )
        finally:
            rb.close()
            vendor.stop()
            volume.stop()


def _kinds(case: dict[str, Any]) -> list[str]:
    return [s["kind"] for s in case["steps"]]


def test_unacknowledged_case_escalates_is_red_and_closes_on_api_ack(desk: Desk) -> None:
    """No acknowledgement: the first contact gets an SMS, the second a WeCom message, the
    list is exhausted and the case overdue (red on the dashboard); a viewer cannot
    acknowledge, an operator names the person and the case closes, once; the ledger, the
    audit trail and the study's time ledger hold every step."""
    study_uid = desk.study(1)
    case_id = desk.case_of(study_uid)["id"]
    case = desk.case_when(case_id, {"exhausted", "overdue", "sent"})
    assert case["state"] == "open" and case["overdue"] is True
    assert case["level"] == 1 and case["summary"]
    notified = [
        (s["contact"], s["channel"], s["address"]) for s in case["steps"] if s["kind"] == "notified"
    ]
    assert notified == [(FIRST[0], "sms", FIRST[1]), (SECOND[0], "wecom", SECOND[1])]
    assert _kinds(case).index("escalated") > _kinds(case).index("notified")
    case = desk.case_when(case_id, {"sent"}, count=2)
    assert {s["contact"] for s in case["steps"] if s["kind"] == "sent"} == {FIRST[0], SECOND[0]}

    sms = desk.sms_for("ACC-CRIT-1")
    assert sms["to"] == FIRST[1] and "DOE" not in str(sms)
    wecom = wait_until(lambda: [b for _, b in desk.wecom.received], "the WeCom message", 30)
    assert wecom[0]["msgtype"] == "text" and wecom[0]["text"]["mentioned_mobile_list"] == [
        SECOND[1]
    ]

    login = desk.http.post("/console/login", data={"token": desk.viewer, "next": "/console/"})
    assert login.status_code in (200, 303)
    dashboard = desk.http.get("/console/")
    assert re.search(rf'data-case="{case_id}"[^>]*data-overdue="1"', dashboard.text)
    assert 'class="card alarm" href="/console/critical"' in dashboard.text
    study_page = desk.http.get(f"/console/studies/{study_uid}")
    assert re.search(rf'data-case="{case_id}"[^>]*data-overdue="1"', study_page.text)

    headers = {"Authorization": f"Bearer {desk.viewer}"}
    body = {"by": "Dr. Li", "note": "called the ward"}
    refused = desk.http.post(f"/api/v1/critical/{case_id}/ack", json=body, headers=headers)
    assert refused.status_code == 403
    headers = {"Authorization": f"Bearer {desk.operator}"}
    acked = desk.http.post(f"/api/v1/critical/{case_id}/ack", json=body, headers=headers)
    assert acked.status_code == 200, acked.text
    done = acked.json()
    assert (done["state"], done["acknowledged_by"], done["acknowledged_via"]) == (
        "acknowledged",
        "Dr. Li",
        "api",
    )
    assert done["minutes_to_ack"] > 0 and _kinds(done)[-1] == "acknowledged"
    again = desk.http.post(f"/api/v1/critical/{case_id}/ack", json=body, headers=headers)
    assert again.status_code == 409 and "Dr. Li" in again.json()["detail"]

    audit = desk.get(f"/api/v1/audit?target=critical:{case_id}", desk.admin).json()["items"]
    actions = sorted(a["action"] for a in audit)
    assert actions == ["critical.ack", "critical.escalate", "critical.open"]
    [ack] = [a for a in audit if a["action"] == "critical.ack"]
    assert ack["actor"] == "token:1 (operator)" and ack["detail"]["by"] == "Dr. Li"
    assert ack["detail"]["within_deadline"] is False

    timeline = desk.get(f"/api/v1/studies/{study_uid}/timeline").json()["stamps"]
    kinds = [t["kind"] for t in timeline]
    for kind in ("critical_opened", "critical_escalated", "critical_overdue"):
        assert kinds.count(kind) == 1, kinds
    sent = [t for t in timeline if t["kind"] == "notification_sent"]
    assert {t["subject"] for t in sent} >= {"critical.sms", "critical.wecom"}
    assert kinds[-1] == "notification_acknowledged" and timeline[-1]["subject"] == "Dr. Li"
    assert kinds.index("last_instance") < kinds.index("critical_opened")


def test_signed_link_shows_the_case_and_acknowledges_only_it(desk: Desk) -> None:
    """The SMS's link opens the case without a login and acknowledges nothing by itself; its
    form acknowledges that case by the person named (audited as the link's contact); an
    altered token is refused; a second use answers that it is acknowledged already."""
    study_uid = desk.study(2)
    case_id = desk.case_of(study_uid)["id"]
    link = link_of(desk.sms_for("ACC-CRIT-2")["text"])
    path = link[link.index("/console/") :]
    anonymous = httpx.Client(base_url=str(desk.http.base_url), timeout=30)
    page = anonymous.get(path)
    assert page.status_code == 200 and 'id="acknowledge"' in page.text
    assert desk.case(case_id)["state"] == "open"

    token = path.rsplit("/", 1)[1]
    altered = path[: -len(token)] + token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert anonymous.post(altered, data={"by": "Mallory"}).status_code == 403

    acked = anonymous.post(path, data={"by": "Dr. Li Wei", "note": "seen"})
    assert acked.status_code == 200 and 'id="acknowledged"' in acked.text
    case = desk.case(case_id)
    assert (case["state"], case["acknowledged_by"], case["acknowledged_via"]) == (
        "acknowledged",
        "Dr. Li Wei",
        "link",
    )
    assert anonymous.post(path, data={"by": "Dr. Li Wei"}).status_code == 409
    audit = desk.get(f"/api/v1/audit?target=critical:{case_id}&action=critical.ack", desk.admin)
    [row] = audit.json()["items"]
    assert row["actor"] == f"link:{FIRST[0]}" and row["detail"]["via"] == "link"
    anonymous.close()


def test_cascade_sends_the_follow_up_only_on_a_positive_triage_and_bills_only_that(
    desk: Desk,
) -> None:
    """The triage finds the bleed: its result routes the study again, the volume product
    gets it; the fracture follow-up reads a finding the triage did not report (absent) and
    stops there, as explain says; usage has the triage and the volume product only. The
    study's critical case is acknowledged from the command line."""
    study_uid = desk.study(3)
    delivered = wait_until(
        lambda: [d for d in desk.volume.delivered if d.study_uid == study_uid],
        "the volume product has the study",
        60,
    )
    assert delivered
    jobs = desk.get(f"/api/v1/jobs?study_uid={study_uid}").json()["items"]
    assert sorted((j["route"], j["vendor"]) for j in jobs) == [
        ("bleed-volume", "volai"),
        ("head-ct-bleed", "ichai"),
    ]
    explained = desk.get(f"/api/v1/routes/explain/{study_uid}").json()
    routes = {r["route"]: r for r in explained["routes"]}
    stopped = routes["fracture-follow-up"]
    assert stopped["status"] == "not_matched" and stopped["failed"]["got"] == "absent"
    assert stopped["notes"] == ["cascade: reads the result of head-ct-bleed"]
    assert routes["bleed-volume"]["jobs"][0]["vendor"] == "volai"

    day = jobs[0]["created_at"][:10]
    usage = desk.get(f"/api/v1/usage?from={day}&to={day}").json()
    studies = {line["vendor"]: line["studies"] for line in usage}
    assert set(studies) == {"ichai", "volai"}

    case_id = desk.case_of(study_uid)["id"]
    acked = desk.rb.cli("critical", "ack", str(case_id), "--by", "Dr. Zhang", "--note", "phoned")
    assert f"critical case {case_id} acknowledged by Dr. Zhang" in acked.stdout
    shown = json.loads(desk.rb.cli("critical", "show", str(case_id), "--json").stdout)
    assert (shown["state"], shown["acknowledged_via"]) == ("acknowledged", "cli")
    # one acknowledgement step (a notification's "sent" may be recorded after it)
    assert [s["kind"] for s in shown["steps"]].count("acknowledged") == 1
    listed = json.loads(desk.rb.cli("critical", "list", "--json").stdout)
    assert case_id not in [c["id"] for c in listed]  # open ones only


def test_each_sites_urgent_finding_notifies_its_own_first_contact(desk: Desk) -> None:
    """Two sites with escalation lists of their own (``critical_contacts``): the urgent
    finding of each site's study opens a case on that site's list, whose first contact
    (not the default list's, nor the other site's) gets the SMS."""
    sent = {site: desk.study(10 + n, f"CT_{site[-1].upper()}") for n, site in enumerate(SITE_DUTY)}
    for n, (site, study_uid) in enumerate(sent.items()):
        case = desk.case_of(study_uid)
        assert case["contact_list"] == f"{site}-duty"
        case = desk.case_when(case["id"], {"notified"})
        first = next(s for s in case["steps"] if s["kind"] == "notified")
        assert (first["contact"], first["channel"], first["address"]) == (
            SITE_DUTY[site][0],
            "sms",
            SITE_DUTY[site][1],
        )
        accession = f"ACC-CRIT-{10 + n}"
        assert desk.sms_for(accession)["to"] == SITE_DUTY[site][1]
        told = [b["to"] for _, b in desk.sms.received if accession in b["text"]]
        assert told == [SITE_DUTY[site][1]]  # nobody of the default list or the other site
