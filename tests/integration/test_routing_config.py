"""Vendors and routes in the configuration: `radbridge config check` errors with FILE:LINE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.model.errors import ConfigError
from config.base import parse_duration
from config.loader import load_settings
from config.schema import Settings, routing_rules
from config.vendors import dicom_tag
from routing import Priority, decide
from routing.fields import Kind
from tests import cli_fork
from tests.integration.test_routing import NOW, series, study

ROOT = Path(__file__).resolve().parents[2]
RADBRIDGE = Path(sys.executable).with_name("radbridge")

BASE = """\
site: {name: Test General Hospital, timezone: Asia/Shanghai}
storage: {spool: ./spool, database: "sqlite:///./radbridge.db"}
vendors:
  lungai:
    product: CT lung nodule
    kind: lung-nodule-ct
    transport: {type: dicom, ae_title: LUNGAI, host: 127.0.0.1, port: 11113}
    timeout: 15m
  ichai:
    product: Head CT bleed triage
    transport: {type: dicom, ae_title: ICHAI, host: 127.0.0.1, port: 11114}
  cxr:
    product: Chest X-ray
    transport: {type: http, url: "https://cxr.example/api"}
    billing: {unit: bundle, price: 12.5, currency: CNY, trial_quota: 100}
targets:
  pacs: {type: dicom, ae_title: PACS, host: 127.0.0.1, port: 11115}
routes:
  - name: chest-ct-lung-nodule
    when:
      modality: CT
      body_part: {in: [CHEST, LUNG]}
      series.slice_thickness: {lte: 2.5}
    send: [lungai]
    series: thinnest_axial
    deadline: 1h
    write_back: [pacs]
  - name: head-ct-bleed
    when: {modality: CT, body_part: HEAD}
    send: [ichai]
    priority: stat
    stable_seconds: 5
    deadline: 5m
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADBRIDGE_")}
    env.update(extra)
    return env


def _check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``radbridge config check`` on ``path`` (its own process: tests.cli_fork)."""
    return cli_fork.run(["config", "check", str(path)], cwd=path.parent, env=_env(**env))


def _line_of(text: str, fragment: str) -> int:
    """1-based number of the only line of ``text`` that contains ``fragment``."""
    found = [i for i, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(found) == 1, (fragment, found)
    return found[0]


def _broken(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    path = tmp_path / "radbridge.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_valid_vendors_and_routes_check_ok(tmp_path: Path) -> None:
    """A configuration with vendors and routes passes `config check` and compiles."""
    path, _ = _broken(tmp_path, "deadline: 5m", "deadline: 5m")
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK:")
    settings = load_settings(path, {})
    assert settings.vendors["lungai"].timeout == 900
    assert settings.vendors["cxr"].transport.type == "http"
    assert settings.vendors["lungai"].transport.model_dump() == {
        "type": "dicom",
        "ae_title": "LUNGAI",
        "host": "127.0.0.1",
        "port": 11113,
        "calling_ae": "RADBRIDGE",
        "timeout": 30.0,
        "max_pdu": 0,
    }
    dumped = settings.model_dump(mode="json", exclude={"routes"})  # what config diff shows
    assert dumped["vendors"]["lungai"]["transport"]["port"] == 11113
    assert dumped["targets"]["pacs"] == {
        "type": "dicom",
        "retries": 5,
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 11115,
        "calling_ae": "RADBRIDGE",
        "timeout": 30.0,
        "max_pdu": 0,
        "render": [],
        "originals": True,
        "language": None,
    }
    bleed = settings.routes[1].spec()
    assert (bleed.priority, bleed.deadline_seconds, bleed.stable_seconds) == (
        Priority.STAT,
        300,
        5,
    )
    rules = routing_rules(settings)
    assert rules.kind_of("lungai") == "lung-nodule-ct"
    assert rules.kind_of("ichai") == "ichai"


def test_json_schema_is_a_discriminated_union_of_the_registered_plugins() -> None:
    """The settings' JSON schema offers each registered transport and target type by its
    ``type``, with that plugin's own fields."""
    schema = Settings.model_json_schema()
    transport = schema["$defs"]["Vendor"]["properties"]["transport"]
    assert transport["discriminator"]["propertyName"] == "type"
    assert sorted(transport["discriminator"]["mapping"]) == [
        "dicom",
        "dicomweb",
        "http",
        "radbridge",
    ]
    targets = next(iter(schema["properties"]["targets"]["patternProperties"].values()))
    assert sorted(targets["discriminator"]["mapping"]) == [
        "dicom",
        "dicomweb",
        "fhir",
        "hl7",
        "webhook",
    ]
    dicom = schema["$defs"]["DicomPushSettings"]
    assert dicom["required"] == ["ae_title", "host", "port"]
    assert dicom["properties"]["port"]["maximum"] == 65535


def test_example_hospital_configuration_is_valid() -> None:
    """examples/hospital.yaml, with its vendors and routes, checks OK."""
    result = _check(ROOT / "examples" / "hospital.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize(
    ("old", "new", "marker", "expected"),
    [
        (
            "send: [ichai]",
            "send: [ichia]",
            "send: [ichia]",
            "routes.1.send.0: unknown vendor 'ichia'; did you mean 'ichai'?; "
            "known vendors: lungai, ichai, cxr",
        ),
        (
            "      modality: CT\n",
            "      modalty: CT\n",
            "modalty: CT",
            "routes.0.when.modalty: unknown field 'modalty'; did you mean 'modality'?",
        ),
        (
            "body_part: HEAD}",
            "body_part: {regex: 'HEAD('}}",
            "HEAD(",
            "routes.1.when.body_part.regex: bad regex 'HEAD(': missing ), unterminated subpattern",
        ),
        (
            "body_part: {in: [CHEST, LUNG]}",
            "body_part: {gte: 3}",
            "body_part: {gte: 3}",
            "routes.0.when.body_part.gte: impossible comparison: body_part is text, and gte "
            "compares numbers",
        ),
        (
            "series.slice_thickness: {lte: 2.5}",
            "series.slice_thickness: {le: 2.5}",
            "{le: 2.5}",
            "routes.0.when.series.slice_thickness.le: unknown operator 'le'; did you mean 'lte'?; "
            "valid: eq, in, regex, lt, lte, gt, gte, exists, not, case_sensitive",
        ),
        (
            "      modality: CT\n",
            "      tag.InstitutonName: North\n",
            "tag.InstitutonName",
            "routes.0.when.tag.InstitutonName: unknown DICOM keyword 'InstitutonName'; "
            "did you mean 'InstitutionName'?",
        ),
        (
            "series: thinnest_axial",
            "series: thinest_axial",
            "thinest_axial",
            "routes.0.series: unknown series selector 'thinest_axial'; "
            "did you mean 'thinnest_axial'?",
        ),
        (
            "type: http,",
            "type: htp,",
            "type: htp",
            "vendors.cxr.transport.type: no such vendor transport 'htp'; did you mean 'http'?",
        ),
        (
            "ae_title: ICHAI, host: 127.0.0.1, port: 11114}",
            "ae_title: ICHAI, host: 127.0.0.1, url: 'https://x'}",
            "url: 'https://x'",
            "vendors.ichai.transport.url: url is not used by the dicom transport; "
            "valid: type, ae_title, host, port, calling_ae, timeout, max_pdu",
        ),
        (
            "port: 11114}",
            "port: 70000}",
            "port: 70000}",
            "vendors.ichai.transport.port: Input should be less than or equal to 65535 "
            "(got 70000); valid: an integer from 1 to 65535",
        ),
        (
            "{type: dicom, ae_title: ICHAI,",
            "{ae_title: ICHAI,",
            "{ae_title: ICHAI,",
            "vendors.ichai.transport: a transport needs a type; valid: {type: NAME, …} with "
            "NAME one of dicom, dicomweb, http",
        ),
        (
            "pacs: {type: dicom,",
            "pacs: {type: dicomm,",
            "type: dicomm",
            "targets.pacs.type: no such write-back target 'dicomm'; did you mean 'dicom'?",
        ),
        (
            "port: 11115}",
            "port: 11115, retries: 0}",
            "retries: 0",
            "targets.pacs.retries: Input should be greater than or equal to 1 (got 0); "
            "valid: an integer from 1 to 100",
        ),
        (
            "timeout: 15m",
            "timeout: 15 minutes",
            "timeout: 15 minutes",
            "vendors.lungai.timeout: not a duration: '15 minutes'; valid: seconds as a number, "
            "or text like 30s, 15m, 1h, 1h30m",
        ),
        (
            "priority: stat",
            "priority: emergency",
            "priority: emergency",
            "routes.1.priority: Input should be 'stat', 'urgent' or 'routine'",
        ),
        (
            "name: head-ct-bleed",
            "name: chest-ct-lung-nodule",
            "name: chest-ct-lung-nodule\n    when: {",
            "routes.1.name: route name 'chest-ct-lung-nodule' is used twice (first at routes.0)",
        ),
        (
            "timezone: Asia/Shanghai",
            "timezone: Asia/Shangai",
            "Asia/Shangai",
            "site.timezone: unknown timezone 'Asia/Shangai' (routes use it for time.*)",
        ),
        (
            "trial_quota: 100}",
            "trial_quota: 100, unt: series}",
            "unt: series",
            "vendors.cxr.billing.unt: unknown field 'unt'; valid: known fields: unit, price",
        ),
    ],
)
def test_config_check_reports_file_line_and_what_is_valid(
    tmp_path: Path, old: str, new: str, marker: str, expected: str
) -> None:
    """Each kind of routing mistake is reported by `config check` at its FILE:LINE."""
    path, text = _broken(tmp_path, old, new)
    result = _check(path)
    assert result.returncode == 2, result.stdout
    line = text[: text.index(marker)].count("\n") + 1 if "\n" in marker else _line_of(text, marker)
    assert f"{path.name}:{line}: {expected}" in result.stderr.replace(str(path), path.name)


def test_every_problem_in_the_routes_is_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes in several routes come back in one run, each at its line."""
    path, text = _broken(
        tmp_path,
        "send: [ichai]",
        "send: [nobody]\n    series: {slice_thicknes: 1}",
    )
    text = text.replace("modality: CT\n", "modality: {gt: 3}\n", 1)
    path.write_text(text, encoding="utf-8")
    result = _check(path)
    assert result.returncode == 2
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 3, problems
    assert f":{_line_of(text, 'modality: {gt: 3}')}: routes.0.when.modality.gt:" in problems[0]
    assert f":{_line_of(text, 'nobody')}: routes.1.send.0: unknown vendor" in problems[1]
    assert f":{_line_of(text, 'slice_thicknes: 1')}: routes.1.series.slice_thicknes:" in problems[2]


def test_vendor_tokens_only_from_the_environment(tmp_path: Path) -> None:
    """A token in the YAML is refused at its line; the RADBRIDGE_VENDORS__… variable is used."""
    path, text = _broken(
        tmp_path, 'url: "https://cxr.example/api"}', 'url: "https://cxr.example/api", token: abc}'
    )
    result = _check(path)
    assert result.returncode == 2
    assert (
        f"{path.name}:{_line_of(text, 'token: abc')}: vendors.cxr.transport.token: secrets are "
        "not read from the configuration file; set the environment variable "
        "RADBRIDGE_VENDORS__CXR__TRANSPORT__TOKEN instead"
    ) in result.stderr.replace(str(path), path.name)
    clean, _ = _broken(tmp_path, "deadline: 5m", "deadline: 5m")
    settings = load_settings(clean, {"RADBRIDGE_VENDORS__CXR__TRANSPORT__TOKEN": "s3cr:et"})
    token = settings.vendors["cxr"].transport.token
    assert token is not None
    assert token.get_secret_value() == "s3cr:et"


def test_routes_without_vendors_block_name_the_fix(tmp_path: Path) -> None:
    """A route sending to a vendor when no vendors are configured says to add a vendors block."""
    path = tmp_path / "radbridge.yaml"
    path.write_text("routes:\n  - name: r\n    when: {}\n    send: [x]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.problems == [
        f"{path}:4: routes.0.send.0: unknown vendor 'x'; known vendors: none (add a vendors: block)"
    ]


def test_dicom_tags_resolve_with_the_data_dictionary() -> None:
    """tag keywords and (gggg,eeee) resolve to keywords; numeric VRs compare as numbers."""
    assert dicom_tag("InstitutionName") == ("InstitutionName", Kind.TEXT)
    assert dicom_tag("(0018,0050)") == ("SliceThickness", Kind.NUMBER)
    assert dicom_tag("0028,0010") == ("Rows", Kind.NUMBER)
    assert dicom_tag("(0009,1001)") == ("(0009,1001)", Kind.TEXT)
    with pytest.raises(ValueError, match="is a sequence"):
        dicom_tag("ReferencedImageSequence")
    with pytest.raises(ValueError, match="did you mean 'Modality'"):
        dicom_tag("modality")


def test_tag_by_number_matches_the_keyword_of_the_study_tags(tmp_path: Path) -> None:
    """A route on tag.(0008,0080) reads the study's InstitutionName."""
    path, _ = _broken(tmp_path, "      modality: CT\n", "      tag.(0008,0080): North Campus\n")
    settings = load_settings(path, {})
    rules = routing_rules(settings)
    decision = decide(
        rules,
        study(series(1)),
        None,
        NOW,
        tags={"InstitutionName": "NORTH CAMPUS"},
    )
    assert [d.vendor for d in decision.dispatches] == ["lungai"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        (45, 45),
        ("7.5", 7.5),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations are seconds or text with s, m, h, d units."""
    assert parse_duration(text) == seconds
