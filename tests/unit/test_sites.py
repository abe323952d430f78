"""Sites as pure logic: who a study or order is from, which target ``site.NAME`` is, how
routes condition on and are limited to sites, and what a ``sites:`` block may say."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from broker.model.domain import Patient, Series, Study, StudyState
from broker.runtime.snapshot import build_snapshot
from config.schema import Settings, routing_rules
from routing import decide
from routing.evaluate import RouteStatus

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
PACS = {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}


def _config(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "sites": {
            "township-a": {
                "name": "Township A Health Centre",
                "timezone": "Asia/Shanghai",
                "senders": [{"ae_title": "SITEA_CT", "host": "10.8.1.0/24"}],
                "hl7_facility": "TWA",
                "issuer": "TWA_PID",
                "targets": {"pacs": {**PACS, "ae_title": "TWA_PACS"}},
            },
            "township-b": {
                "name": "Township B",
                "senders": [{"ae_title": "SITEB_CT", "host": "10.8.2.7"}],
                "hl7_facility": "TWB",
                "targets": {"pacs": {**PACS, "ae_title": "TWB_PACS"}},
            },
            "clinic-c": {"name": "Clinic C", "senders": [{"ae_title": "C_CR", "host": "10.9.0.1"}]},
        },
        "targets": {"hub_pacs": PACS},
        "vendors": {
            "lungai": {
                "product": "CT lung nodule",
                "transport": {
                    "type": "dicom",
                    "ae_title": "LUNGAI",
                    "host": "127.0.0.1",
                    "port": 104,
                },
            }
        },
        "routes": [
            {"name": "chest-ct", "when": {"modality": "CT"}, "send": ["lungai"]},
        ],
    }
    config.update(extra)
    return config


def _study(site: str | None) -> Study:
    return Study(
        study_uid="1.2.3",
        patient=Patient(patient_id="P1"),
        accession_number="A1",
        study_date="20261206",
        description="chest",
        modalities=("CT",),
        body_parts=("CHEST",),
        state=StudyState.STABLE,
        revision=0,
        instance_count=1,
        size=0,
        calling_ae="SITEA_CT",
        called_ae="RADBRIDGE",
        peer_address="10.8.1.9",
        first_received_at=T0,
        last_received_at=T0,
        stable_at=T0,
        stable_seconds=10.0,
        series=(Series("1.2.3.1", "CT", "CHEST", None, 1, 1.0, ("ORIGINAL",), None, 1, 0),),
        site=site,
    )


def test_a_study_is_the_site_of_its_sender_ae_and_address() -> None:
    """A calling AE title from an address in its site's network is that site's; the same
    AE title from elsewhere, or an unknown one, is no site's."""
    sites = Settings.model_validate(_config()).site_directory()
    assert sites.for_sender("SITEA_CT", "10.8.1.200") == "township-a"
    assert sites.for_sender("SITEB_CT", "10.8.2.7") == "township-b"
    assert sites.for_sender("SITEB_CT", "10.8.2.8") is None
    assert sites.for_sender("SITEA_CT", "10.8.2.7") is None
    assert sites.for_sender("CT01", "10.8.1.5") is None


def test_an_order_is_the_site_of_its_msh4() -> None:
    """MSH-4 names the site (its hl7_facility); another facility is no site's."""
    sites = Settings.model_validate(_config()).site_directory()
    assert sites.for_facility("TWB") == "township-b"
    assert sites.for_facility("HUB") is None
    assert sites.for_facility(None) is None


def test_an_unknown_facility_is_the_hubs_unless_refused() -> None:
    """By default an MSH-4 of no site is the hub's (not refused); with ``hl7.unknown_facility:
    refuse`` it is refused unless it is a site's or one of ``hl7.hub_facilities``."""
    hub = Settings.model_validate(_config()).site_directory()
    assert not hub.unknown_facility("TWX")
    refusing = Settings.model_validate(
        _config(hl7={"unknown_facility": "refuse", "hub_facilities": ["HUBRIS"]})
    ).site_directory()
    assert refusing.unknown_facility("TWX")
    assert refusing.unknown_facility(None)
    assert not refusing.unknown_facility("HUBRIS")
    assert not refusing.unknown_facility("TWA")


def test_a_sites_issuer_names_its_patients_that_name_none() -> None:
    """A patient of a site with an ``issuer`` takes it when the record names none; one naming
    its own issuer, a patient without an ID, and a patient of the hub are left as they are."""
    sites = Settings.model_validate(_config()).site_directory()
    bare = Patient("12345")
    assert sites.patient_of("township-a", bare).issuer == "TWA_PID"
    assert sites.patient_of("township-a", Patient("12345", "NATIONAL")).issuer == "NATIONAL"
    assert sites.patient_of("township-a", Patient()).issuer is None
    assert sites.patient_of("township-b", bare).issuer is None  # B configures no issuer
    assert sites.patient_of(None, bare).issuer is None


def test_site_target_is_the_originating_sites_own() -> None:
    """``site.pacs`` is the study's own site's pacs; hub targets stay as they are; a study
    of no site, or of a site without that target, has none (never another site's)."""
    settings = Settings.model_validate(_config())
    sites = settings.site_directory()
    assert sites.target_for("site.pacs", "township-a") == "site.township-a.pacs"
    assert sites.target_for("site.pacs", "township-b") == "site.township-b.pacs"
    assert sites.target_for("site.pacs", "clinic-c") is None
    assert sites.target_for("site.pacs", None) is None
    assert sites.target_for("hub_pacs", "township-a") == "hub_pacs"
    assert settings.site_target_names() == ("site.pacs",)


def test_routes_condition_on_and_are_limited_to_sites() -> None:
    """``when: {site: …}`` and ``sites: […]`` decide on the study's site (one facts builder)."""
    config = _config(
        routes=[
            {
                "name": "a-only",
                "when": {"modality": "CT"},
                "sites": ["township-a"],
                "send": ["lungai"],
            },
            {"name": "not-b", "when": {"not": {"site": "township-b"}}, "send": ["lungai"]},
        ]
    )
    rules = routing_rules(Settings.model_validate(config))
    matched = {}
    for site in ("township-a", "township-b", None):
        decision = decide(rules, _study(site), None, T0)
        matched[site] = {
            r.route for r in decision.routes if r.status is not RouteStatus.NOT_MATCHED
        }
    assert matched == {"township-a": {"a-only", "not-b"}, "township-b": set(), None: {"not-b"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["sites"]["township-b"]["senders"].append(
                {"ae_title": "SITEA_CT", "host": "10.8.1.77"}
            ),
            "overlaps site 'township-a'",
        ),
        (
            lambda c: c["sites"]["township-b"].update(hl7_facility="TWA"),
            "hl7_facility 'TWA' is site 'township-a''s already",
        ),
        (
            lambda c: c["routes"][0].update(sites=["township-z"]),
            "unknown site 'township-z'",
        ),
        (
            lambda c: c["routes"][0].update(write_back=["site.ris"]),
            "unknown write-back target 'site.ris'",
        ),
        (
            lambda c: c["sites"]["clinic-c"]["senders"][0].update(host="ct.clinic.local"),
            "not an address or network",
        ),
        (lambda c: c["sites"].update({"Bad Id": {"name": "x"}}), "String should match pattern"),
        (lambda c: c["sites"]["clinic-c"].update(timezone="Mars/Base"), "unknown timezone"),
    ],
)
def test_ambiguous_or_unknown_sites_are_refused(change: Any, message: str) -> None:
    """A sender or MSH-4 of two sites, a route naming an unknown site or site target, a
    sender by host name, a bad id or timezone: refused at load, saying what is valid."""
    config = _config()
    change(config)
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate(config)
    assert message in str(raised.value)


def test_site_targets_are_built_and_no_sites_is_as_before() -> None:
    """Each site's own targets are write-back targets of the snapshot; without ``sites``
    nothing changes (no site targets, no sender is any site's)."""
    config = _config()
    config["routes"][0]["write_back"] = ["site.pacs", "hub_pacs"]
    snapshot = build_snapshot(Settings.model_validate(config))
    try:
        assert {"site.township-a.pacs", "site.township-b.pacs", "hub_pacs"} <= set(
            snapshot.target_names
        )
        assert snapshot.targets["site.township-a.pacs"].params["ae_title"] == "TWA_PACS"
    finally:
        snapshot.close()
    plain = Settings.model_validate({k: v for k, v in _config().items() if k != "sites"})
    assert not plain.site_directory()
    assert plain.site_directory().for_sender("SITEA_CT", "10.8.1.5") is None


def test_a_case_uses_its_routes_list_else_its_sites_else_the_default() -> None:
    """``critical_contacts`` of a route wins over its site's, which wins over
    ``critical.contacts``; a name that is no list of ``critical.lists`` is refused at load,
    saying which are valid."""
    sms = {"url": "https://gw.local/send", "template": "sms"}
    critical = {
        "channels": {"sms": sms},
        "contacts": [{"name": "Dr. Default", "notify": {"sms": "100"}}],
        "lists": {
            "stroke": [{"name": "Dr. Stroke", "notify": {"sms": "200"}}],
            "twa-duty": [{"name": "Dr. A", "notify": {"sms": "300"}}],
        },
    }
    config = _config(critical=critical)
    config["sites"]["township-a"]["critical_contacts"] = "twa-duty"
    config["routes"].append(
        {
            "name": "stroke",
            "when": {"modality": "CT"},
            "send": ["lungai"],
            "critical_contacts": "stroke",
        }
    )
    snapshot = build_snapshot(Settings.model_validate(config))
    try:
        policy = snapshot.critical
        named = {
            (route, site): policy.list_for(route, site)
            for route in ("chest-ct", "stroke")
            for site in ("township-a", "township-b", None)
        }
    finally:
        snapshot.close()
    assert named == {
        ("chest-ct", "township-a"): "twa-duty",
        ("chest-ct", "township-b"): None,
        ("chest-ct", None): None,
        ("stroke", "township-a"): "stroke",
        ("stroke", "township-b"): "stroke",
        ("stroke", None): "stroke",
    }
    first = {name: policy.contact(0, name) for name in ("twa-duty", "stroke", None, "gone")}
    assert {name: c.name if c else None for name, c in first.items()} == {
        "twa-duty": "Dr. A",
        "stroke": "Dr. Stroke",
        None: "Dr. Default",
        "gone": "Dr. Default",  # a list a reload removed: the default one
    }
    config["sites"]["township-b"]["critical_contacts"] = "strok"
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate(config)
    assert "no escalation list 'strok'; did you mean 'stroke'?; valid: stroke, twa-duty" in str(
        raised.value
    )
