"""What a reload would change, and which changes only a restart applies (pure functions)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from broker.runtime.config_diff import (
    SECRET_SHOWN,
    ConfigView,
    carry_secrets,
    diff,
    removed,
    view,
)
from broker.runtime.snapshot import snapshot_id
from config.schema import Settings

TOKEN = "s3cr3t-results-token-value"

BASE: dict[str, Any] = {
    "dicom": {
        "listen": {"host": "127.0.0.1", "port": 11112},
        "ae_titles": {"RADBRIDGE": "ingest", "RADBRIDGE_RES": "results"},
        "peers": [{"ae_title": "CT01", "host": "127.0.0.1"}],
    },
    "vendors": {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {"type": "dicom", "ae_title": "LUNGAI", "host": "10.0.0.5", "port": 104},
        },
        "ichai": {
            "product": "CT head bleed",
            "transport": {"type": "dicom", "ae_title": "ICHAI", "host": "10.0.0.6", "port": 104},
        },
    },
    "targets": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "10.0.0.9", "port": 104}},
    "routes": [
        {
            "name": "chest-ct",
            "when": {"modality": "CT", "body_part": {"in": ["CHEST", "LUNG"]}},
            "send": ["lungai"],
            "write_back": ["pacs"],
        },
        {"name": "head-ct", "when": {"modality": "CT", "body_part": "HEAD"}, "send": ["ichai"]},
    ],
}


def _settings(edit: Callable[[dict[str, Any]], None] | None = None) -> Settings:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    return Settings.model_validate(data)


def _lines(edit: Callable[[dict[str, Any]], None]) -> list[str]:
    return diff(view(_settings()), view(_settings(edit))).lines()


def _restart(edit: Callable[[dict[str, Any]], None]) -> list[str]:
    return list(diff(view(_settings()), view(_settings(edit))).restart)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


@pytest.mark.parametrize(
    ("path", "value", "line"),
    [
        ("dicom.listen.port", 11113, "restart required: dicom.listen.port changed"),
        ("dicom.listen.host", "0.0.0.0", "restart required: dicom.listen.host changed"),
        ("dicom.processes", 3, "restart required: dicom.processes changed"),
        ("dicom.max_associations", 8, "restart required: dicom.max_associations changed"),
        (
            "dicom.tls",
            {"certificate": "/etc/rb/cert.pem", "private_key": "/etc/rb/key.pem"},
            "restart required: dicom.tls added",
        ),
        (
            "storage.database",
            "sqlite:////srv/other.db",
            "restart required: storage.database changed",
        ),
        ("storage.spool", "/srv/spool2", "restart required: storage.spool changed"),
        ("bus.url", "amqp://rabbit:5672//", "restart required: bus.url changed"),
        ("bus.prefix", "other", "restart required: bus.prefix changed"),
        ("logging.level", "DEBUG", "restart required: logging.level changed"),
        (
            "delivery.worker_in_service",
            False,
            "restart required: delivery.worker_in_service changed",
        ),
        ("delivery.lease_seconds", 60, "restart required: delivery.lease_seconds changed"),
        ("hl7", {"listen": {"port": 2576}}, "restart required: hl7 added"),
    ],
)
def test_settings_the_running_service_read_at_start_need_a_restart(
    path: str, value: Any, line: str
) -> None:
    """Listen addresses, TLS, process counts and association limits, storage, bus, logging,
    the HL7 listener and the in-service worker are refused as "restart required: PATH
    changed|added"."""
    assert _restart(_set(path, value)) == [line]


def test_the_hl7_block_is_read_once_every_field_needs_a_restart() -> None:
    """Every change inside an existing hl7 block (allow-list, limits) needs a restart."""
    old = _settings(_set("hl7", {"listen": {"port": 2576}}))
    new = _settings(_set("hl7", {"listen": {"port": 2576}, "allow": ["10.1.2.3"]}))
    assert diff(view(old), view(new)).restart == ("restart required: hl7.allow changed",)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("vendors.lungai.transport.port", 11114),
        ("vendors.lungai.transport.host", "10.0.0.7"),
        ("vendors.lungai.concurrency", 4),
        ("vendors.lungai.results", {"ae_titles": ["LUNGRES"], "quiet_seconds": 5}),
        ("dicom.peers", [{"ae_title": "CT02"}]),
        ("dicom.ae_titles", {"RADBRIDGE": "ingest", "RB_RES": "results"}),
        ("dicom.study_stable_seconds", 3),
        ("dicom.network_timeout", 10),
        ("dicom.max_pdu_size", 131072),
        ("site.timezone", "Asia/Shanghai"),
        ("site.name", "Other"),
        ("delivery.backoff_base_seconds", 1),
        ("targets.pacs.port", 4242),
        ("notifications.overdue_check_seconds", 30),
    ],
)
def test_settings_read_at_each_use_apply_live(path: str, value: Any) -> None:
    """Vendors, transports, DICOM peers and AE titles, stable times, limits, site, backoff,
    targets and notifications change without a restart."""
    change = diff(view(_settings()), view(_settings(_set(path, value))))
    assert change.changed and change.restart == ()


def test_http_server_starting_stopping_or_moving_needs_a_restart() -> None:
    """A results token or an http block starts the HTTP server (restart required); so does
    its port; http.public_url is read at each use."""
    token = _set("vendors.lungai.results", {"token": TOKEN})
    assert [line.split(" (")[0] for line in _restart(token)] == [
        "restart required: the HTTP server would start"
    ]
    with_http = _settings(_set("http", {"listen": {"port": 8081}}))
    moved = _settings(_set("http", {"listen": {"port": 8082}}))
    assert diff(view(with_http), view(moved)).restart == (
        "restart required: http.listen.port changed",
    )
    public = _settings(_set("http", {"listen": {"port": 8081}, "public_url": "https://rb.example"}))
    assert diff(view(with_http), view(public)).restart == ()
    assert (
        diff(view(with_http), view(_settings()))
        .restart[0]
        .startswith("restart required: the HTTP server would stop")
    )


def test_http_tls_and_trusted_proxies_need_a_restart() -> None:
    """http.tls and http.trusted_proxies are taken when the HTTP server starts: a change is
    refused by a reload; http.public_docs is read at each request."""
    base = {"listen": {"port": 8081}}
    with_http = _settings(_set("http", base))
    tls = {"certificate": "/etc/rb/cert.pem", "private_key": "/etc/rb/key.pem"}
    changed = _settings(_set("http", {**base, "tls": tls, "trusted_proxies": ["10.0.0.5"]}))
    assert diff(view(with_http), view(changed)).restart == (
        "restart required: http.tls changed",
        "restart required: http.trusted_proxies changed",
    )
    public = _settings(_set("http", {**base, "public_docs": True}))
    assert diff(view(with_http), view(public)).restart == ()


def test_diff_lists_vendors_routes_targets_with_old_and_new_values() -> None:
    """Added, removed and changed vendors, routes and targets, with old → new for values."""

    def edit(data: dict[str, Any]) -> None:
        data["vendors"]["lungai"]["transport"]["port"] = 11114
        data["vendors"]["boneai"] = {
            "product": "bone age",
            "transport": {"type": "dicom", "ae_title": "BONEAI", "host": "10.0.0.8", "port": 104},
        }
        del data["vendors"]["ichai"]
        data["routes"] = [
            data["routes"][0],
            {"name": "bone-age", "when": {"modality": "DX"}, "send": ["boneai"]},
        ]
        data["routes"][0]["when"] = {"modality": "CT", "body_part": "CHEST"}
        data["targets"]["ris"] = {"type": "hl7", "host": "10.0.0.10", "port": 2576}

    assert _lines(edit) == [
        "vendors:",
        "  ~ vendors.lungai.transport.port: 104 → 11114",
        "  - vendors.ichai: removed",
        "  + vendors.boneai: added",
        "routes:",
        "  - routes.head-ct: removed",
        '  ~ routes.chest-ct.when: ["modality: CT", "body_part: one of CHEST, LUNG"] → '
        '["modality: CT", "body_part: CHEST"]',
        "  + routes.bone-age: added",
        "targets:",
        "  + targets.ris: added",
    ]
    gone = removed(view(_settings()), view(_settings(edit)))
    assert gone.vendors == ("ichai",) and gone.routes == ("head-ct",) and gone.targets == ()


def test_route_order_and_other_keys_are_listed() -> None:
    """Reordered routes and keys outside the sections show under their own path."""

    def edit(data: dict[str, Any]) -> None:
        data["routes"].reverse()
        data["dicom"]["study_stable_seconds"] = 4

    assert _lines(edit) == [
        "routes:",
        '  ~ routes (order): ["chest-ct", "head-ct"] → ["head-ct", "chest-ct"]',
        "other:",
        "  ~ dicom.study_stable_seconds: 10 → 4",
    ]


def test_secrets_show_as_set_never_their_value() -> None:
    """A results token is "(secret)" in the view, the diff and its JSON; never its value."""
    with_token = _settings(_set("vendors.lungai.results", {"token": TOKEN}))
    shown = view(with_token)
    assert shown.settings["vendors"]["lungai"]["results"]["token"] == SECRET_SHOWN
    change = diff(view(_settings()), shown)
    assert TOKEN not in json.dumps(change.to_json()) + "\n".join(change.lines())
    assert TOKEN not in shown.to_json()
    assert "  + vendors.lungai.results.token: added ((secret))" in change.lines()


def test_secrets_of_the_service_carry_into_a_file_read_elsewhere() -> None:
    """The command line lacks the service's environment: a secret set in the service's view
    counts as set in the file's, so no false "token removed" or "HTTP server would stop"."""
    service = view(_settings(_set("vendors.lungai.results", {"token": TOKEN})))
    here = carry_secrets(service, view(_settings()))
    assert diff(service, here).changes == ()


def test_view_round_trips_through_json_and_names_the_snapshot() -> None:
    """The recorded view reads back equal; the id changes with any setting (a vendor's port)."""
    shown = view(_settings())
    assert ConfigView.from_json(shown.to_json()) == shown
    moved = view(_settings(_set("vendors.lungai.transport.port", 11114)))
    assert snapshot_id(shown) == snapshot_id(view(_settings()))
    assert snapshot_id(shown) != snapshot_id(moved)
    assert snapshot_id(shown) != snapshot_id(shown, ["lungai"])
