"""Configuration: YAML loading, validation with FILE:LINE, environment, and `config check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from broker.model.errors import ConfigError
from broker.model.signed_links import LinkPurpose
from config.loader import config_path, load_settings
from config.schema import AERole
from tests import cli_fork

ROOT = Path(__file__).resolve().parents[2]
RADBRIDGE = Path(sys.executable).with_name("radbridge")

VALID = """\
site:
  name: Test General Hospital
storage:
  spool: ./spool
  database: "sqlite:///./var/radbridge.db"
dicom:
  listen:
    host: 127.0.0.1
    port: 11112
  ae_titles:
    RADBRIDGE: ingest
    RADBRIDGE_RES: {role: results, stable_seconds: 5}
  peers:
    - {ae_title: CT01, host: 127.0.0.1}
logging:
  level: info
"""


def _write(directory: Path, text: str, name: str = "radbridge.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(text: str, fragment: str) -> int:
    """1-based number of the only line of ``text`` that contains ``fragment``."""
    found = [i for i, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(found) == 1, (fragment, found)
    return found[0]


def _problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


def _env(**extra: str) -> dict[str, str]:
    """The current environment without any RADBRIDGE_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADBRIDGE_")}
    env.update(extra)
    return env


def _check(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``radbridge config check`` in ``cwd`` (its own process: tests.cli_fork)."""
    return cli_fork.run(
        ["config", "check", *args], cwd=cwd, env=env if env is not None else _env(), timeout=60
    )


def _flat(text: str) -> str:
    """Output with line wrapping undone, so a wrapped problem reads as one string."""
    return " ".join(text.split())


def test_cli_valid_file_prints_ok_and_exits_0(tmp_path: Path) -> None:
    """`radbridge config check FILE` on a valid file prints OK and exits 0."""
    _write(tmp_path, VALID)
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK: radbridge.yaml")
    assert "Test General Hospital" in run.stdout
    assert run.stderr == ""


def test_cli_example_hospital_configuration_is_valid() -> None:
    """examples/hospital.yaml, the configuration the README points at, passes the check."""
    run = _check(ROOT, "examples/hospital.yaml")
    assert run.returncode == 0, run.stderr
    assert "OK" in run.stdout
    settings = load_settings(ROOT / "examples" / "hospital.yaml", {})
    assert settings.dicom.ae_titles["RADBRIDGE_RES"].role is AERole.RESULTS


def test_valid_file_loads_every_setting(tmp_path: Path) -> None:
    """Values from the YAML reach the settings, including the AE role shorthand."""
    settings = load_settings(_write(tmp_path, VALID), {})
    assert settings.site.name == "Test General Hospital"
    assert settings.dicom.listen.port == 11112
    assert settings.dicom.ae_titles["RADBRIDGE"].role is AERole.INGEST
    assert settings.stable_seconds_for("RADBRIDGE_RES") == 5
    assert settings.stable_seconds_for("RADBRIDGE") == 10
    assert settings.dicom.peers[0].ae_title == "CT01"
    assert settings.logging.level == "INFO"


def test_cli_bad_port_reports_file_line_field_and_valid_range(tmp_path: Path) -> None:
    """A port of `not-a-port` is reported at its own line with the field and the valid range."""
    text = VALID.replace("port: 11112", "port: not-a-port")
    path = _write(tmp_path, text)
    line = _line_of(text, "not-a-port")
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    assert "OK" not in run.stdout
    out = _flat(run.stderr)
    assert out.startswith(f"radbridge.yaml:{line}: dicom.listen.port: ")
    assert "'not-a-port'" in out
    assert "valid: an integer from 1 to 65535" in out
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:{line}: dicom.listen.port: ")
    assert problem.endswith("valid: an integer from 1 to 65535")


def test_port_out_of_range_reports_valid_range(tmp_path: Path) -> None:
    """A port of 70000 is refused with the valid range, at its line."""
    text = VALID.replace("port: 11112", "port: 70000")
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:{_line_of(text, '70000')}: dicom.listen.port: ")
    assert "an integer from 1 to 65535" in problem


def test_unknown_field_lists_the_known_fields(tmp_path: Path) -> None:
    """An unknown key is named, at its line, with the fields that block does know."""
    text = VALID.replace("  listen:\n", "  listn:\n")
    path = _write(tmp_path, text)
    problems = _problems(path)
    line = _line_of(text, "listn:")
    (problem,) = [p for p in problems if "listn" in p]
    assert problem.startswith(f"{path}:{line}: dicom.listn: unknown field 'listn'")
    assert "known fields: listen, ae_titles, peers, allow_any_peer" in problem


def test_unknown_top_level_field_lists_the_sections(tmp_path: Path) -> None:
    """An unknown top-level section lists the valid sections."""
    text = VALID + "regions: {}\n"
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    line = _line_of(text, "regions:")
    assert problem.startswith(f"{path}:{line}: regions: unknown field 'regions'")
    assert "known fields: site, sites, node, storage, bus, delivery, dicom, logging" in problem


def test_wrong_ae_role_lists_the_valid_roles(tmp_path: Path) -> None:
    """An AE title with an unknown role is reported at its line with the valid roles."""
    text = VALID.replace("RADBRIDGE: ingest", "RADBRIDGE: injest")
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    line = _line_of(text, "injest")
    assert problem.startswith(f"{path}:{line}: dicom.ae_titles.RADBRIDGE.role: ")
    assert "'injest'" in problem
    assert problem.endswith("valid: one of ingest, results")


def test_cli_reports_every_error_at_once(tmp_path: Path) -> None:
    """Several mistakes are all reported in one run, each at its own line."""
    text = (
        VALID.replace("port: 11112", "port: not-a-port")
        .replace("RADBRIDGE: ingest", "RADBRIDGE: injest")
        .replace("level: info", "level: chatty")
        .replace("  peers:\n", "  peer:\n")
    )
    path = _write(tmp_path, text)
    expected = {
        "dicom.listen.port": _line_of(text, "not-a-port"),
        "dicom.ae_titles.RADBRIDGE.role": _line_of(text, "injest"),
        "logging.level": _line_of(text, "chatty"),
        "dicom.peer": _line_of(text, "peer:"),
    }
    problems = _problems(path)
    assert len(problems) == len(expected)
    for field, line in expected.items():
        assert any(p.startswith(f"{path}:{line}: {field}: ") for p in problems), (field, problems)
    (level,) = [p for p in problems if ": logging.level: " in p]
    assert level.count("valid:") == 1
    assert "Value error" not in level
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    out = _flat(run.stderr)
    for field, line in expected.items():
        assert f"radbridge.yaml:{line}: {field}: " in out
    assert "valid: DEBUG, INFO, WARNING, ERROR, CRITICAL" in out


def test_cli_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    """YAML that does not parse is reported with the file and the offending line."""
    text = VALID.replace("  name: Test General Hospital", "  name: Test: General Hospital")
    _write(tmp_path, text)
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    line = _line_of(text, "Test: General")
    assert _flat(run.stderr).startswith(f"radbridge.yaml:{line}: not valid YAML: ")


def test_unclosed_bracket_names_where_it_was_opened(tmp_path: Path) -> None:
    """An unclosed flow sequence also names the line where it starts."""
    text = VALID + "bus: {url: [memory://\n"
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:")
    assert "not valid YAML" in problem
    assert f"starts at line {_line_of(text, 'bus:')}" in problem


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A YAML list at the top level is refused at line 1."""
    path = _write(tmp_path, "- site\n- storage\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:1: the top level must be a mapping")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A configuration file that does not exist is a ConfigError naming it."""
    missing = tmp_path / "nope.yaml"
    (problem,) = _problems(missing)
    assert problem.startswith(f"{missing}: cannot read the configuration")


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    """An empty file is valid and yields the documented defaults."""
    settings = load_settings(_write(tmp_path, ""), {})
    assert settings.dicom.listen.port == 11112
    assert settings.bus.url == "memory://"
    assert settings.logging.phi is False


def test_environment_override_wins_over_the_file(tmp_path: Path) -> None:
    """RADBRIDGE_DICOM__LISTEN__PORT replaces the port from the YAML, as an integer."""
    path = _write(tmp_path, VALID)
    settings = load_settings(path, {"RADBRIDGE_DICOM__LISTEN__PORT": "11113"})
    assert settings.dicom.listen.port == 11113
    assert settings.dicom.listen.host == "127.0.0.1"
    assert load_settings(path, {}).dicom.listen.port == 11112


def test_cli_uses_environment_override(tmp_path: Path) -> None:
    """The real CLI reads overrides from its environment, and reports bad ones."""
    _write(tmp_path, VALID)
    good = _check(tmp_path, "radbridge.yaml", env=_env(RADBRIDGE_SITE__NAME="From Env"))
    assert good.returncode == 0, good.stderr
    assert "From Env" in good.stdout
    bad = _check(tmp_path, "radbridge.yaml", env=_env(RADBRIDGE_DICOM__LISTEN__PORT="eleven"))
    assert bad.returncode == 2
    assert "environment RADBRIDGE_DICOM__LISTEN__PORT: dicom.listen.port:" in _flat(bad.stderr)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    """A bad value from the environment is reported against the variable, not the file line."""
    path = _write(tmp_path, VALID)
    (problem,) = _problems(path, {"RADBRIDGE_DICOM__LISTEN__PORT": "eleven"})
    assert problem.startswith("environment RADBRIDGE_DICOM__LISTEN__PORT: dicom.listen.port: ")
    assert "'eleven'" in problem
    assert problem.endswith("valid: an integer from 1 to 65535")


def test_unknown_environment_setting_is_reported(tmp_path: Path) -> None:
    """A RADBRIDGE_ variable for a field that does not exist is an error naming the variable."""
    path = _write(tmp_path, VALID)
    (problem,) = _problems(path, {"RADBRIDGE_DICOM__LISTEN__PROT": "1"})
    assert problem.startswith("environment RADBRIDGE_DICOM__LISTEN__PROT: dicom.listen.prot: ")
    assert "known fields: host, port" in problem


def test_secret_in_yaml_is_refused_naming_the_environment_variable(tmp_path: Path) -> None:
    """storage.database_password in the YAML is refused; the message names the env variable."""
    text = VALID.replace(
        '  database: "sqlite:///./var/radbridge.db"\n',
        '  database: "postgresql://radbridge@127.0.0.1:5432/radbridge"\n'
        "  database_password: hunter2\n",
    )
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    line = _line_of(text, "database_password")
    assert problem.startswith(f"{path}:{line}: storage.database_password: ")
    assert "RADBRIDGE_STORAGE__DATABASE_PASSWORD" in problem
    assert "hunter2" not in problem
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    assert "hunter2" not in run.stderr + run.stdout


def test_secret_from_environment_is_accepted_and_used_in_database_url(tmp_path: Path) -> None:
    """RADBRIDGE_STORAGE__DATABASE_PASSWORD is taken verbatim and URL-quoted into database_url()."""
    text = VALID.replace(
        "sqlite:///./var/radbridge.db", "postgresql://radbridge@127.0.0.1:5432/radbridge"
    )
    secret = "s3cr:et@/x 1"
    settings = load_settings(
        _write(tmp_path, text), {"RADBRIDGE_STORAGE__DATABASE_PASSWORD": secret}
    )
    url = settings.database_url()
    assert url.startswith("postgresql+psycopg://radbridge:")
    assert url.endswith("@127.0.0.1:5432/radbridge")
    parsed = make_url(url)
    assert parsed.password == secret
    assert parsed.username == "radbridge"
    assert parsed.host == "127.0.0.1"
    assert secret not in repr(settings)


def test_secret_from_environment_is_not_parsed_as_yaml(tmp_path: Path) -> None:
    """A password that looks like a YAML number stays the exact text from the environment."""
    text = VALID.replace(
        "sqlite:///./var/radbridge.db", "postgresql://radbridge@127.0.0.1:5432/radbridge"
    )
    settings = load_settings(
        _write(tmp_path, text), {"RADBRIDGE_STORAGE__DATABASE_PASSWORD": "0012"}
    )
    assert settings.storage.database_password is not None
    assert settings.storage.database_password.get_secret_value() == "0012"


def test_database_url_with_inline_password_is_refused(tmp_path: Path) -> None:
    """A database URL with user:password@ is refused, without echoing the password back."""
    text = VALID.replace(
        "sqlite:///./var/radbridge.db", "postgresql://radbridge:hunter2@127.0.0.1:5432/radbridge"
    )
    path = _write(tmp_path, text)
    (problem,) = _problems(path)
    line = _line_of(text, "hunter2")
    assert problem.startswith(f"{path}:{line}: storage.database: ")
    assert "RADBRIDGE_STORAGE__DATABASE_PASSWORD" in problem
    assert "hunter2" not in problem
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    assert "hunter2" not in run.stderr + run.stdout


def test_bus_password_comes_from_the_environment_never_from_the_url(tmp_path: Path) -> None:
    """An AMQP password inside ``bus.url`` is refused (naming RADBRIDGE_BUS__PASSWORD, never
    echoing it); ``RADBRIDGE_BUS__PASSWORD``, which the README documents, is accepted and
    filled into the URL the service connects with (it was once an unknown field)."""
    inline = _write(tmp_path, VALID + "bus: {url: 'amqp://rb:hunter2@127.0.0.1:5672//'}\n")
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    assert "RADBRIDGE_BUS__PASSWORD" in run.stderr and "hunter2" not in run.stdout + run.stderr
    assert inline.name == "radbridge.yaml"
    _write(tmp_path, VALID + "bus: {url: 'amqp://rb@127.0.0.1:5672//'}\n")
    run = _check(tmp_path, "radbridge.yaml", env=_env(RADBRIDGE_BUS__PASSWORD="p@ss:1"))
    assert run.returncode == 0, run.stderr
    settings = load_settings(tmp_path / "radbridge.yaml", {"RADBRIDGE_BUS__PASSWORD": "p@ss:1"})
    parsed = make_url(settings.bus.connection_url().replace("amqp://", "postgresql://", 1))
    assert (parsed.username, parsed.password, parsed.host) == ("rb", "p@ss:1", "127.0.0.1")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """A copy-pasted vendor (the same key twice in one mapping) is an error naming both lines,
    not a silent replacement of the first."""
    text = VALID + (
        "vendors:\n"
        "  lungai:\n"
        "    product: lung\n"
        "    transport: {type: dicom, ae_title: LUNG, host: 127.0.0.1, port: 104}\n"
        "  lungai:\n"
        "    product: lung\n"
        "    transport: {type: dicom, ae_title: LUNG2, host: 127.0.0.1, port: 105}\n"
    )
    _write(tmp_path, text)
    run = _check(tmp_path, "radbridge.yaml")
    assert run.returncode == 2
    first = text.splitlines().index("  lungai:") + 1
    second = first + 3
    assert f"radbridge.yaml:{second}: vendors.lungai: duplicate key (first at line {first})" in (
        _flat(run.stderr)
    )


def test_unsupported_database_lists_the_valid_ones(tmp_path: Path) -> None:
    """A database URL of an unsupported kind says which kinds are valid."""
    text = VALID.replace("sqlite:///./var/radbridge.db", "mysql://radbridge@db/radbridge")
    (problem,) = _problems(_write(tmp_path, text))
    assert "unsupported database 'mysql'" in problem
    assert "sqlite:///PATH" in problem
    assert "postgresql://" in problem


def test_radbridge_config_variable_is_used_without_c(tmp_path: Path) -> None:
    """Without FILE or -c, `config check` checks the file named by RADBRIDGE_CONFIG."""
    _write(tmp_path / "etc", VALID)
    _write(tmp_path / "etc", VALID.replace("port: 11112", "port: 0"), "bad.yaml")
    run = _check(tmp_path, env=_env(RADBRIDGE_CONFIG="etc/radbridge.yaml"))
    assert run.returncode == 0, run.stderr
    assert "OK: etc/radbridge.yaml" in _flat(run.stdout)
    run = _check(tmp_path, env=_env(RADBRIDGE_CONFIG="etc/bad.yaml"))
    assert run.returncode == 2
    line = _line_of(VALID, "port: 11112")
    assert _flat(run.stderr).startswith(f"etc/bad.yaml:{line}: dicom.listen.port: ")


def test_cli_c_option_wins_over_radbridge_config(tmp_path: Path) -> None:
    """-c FILE is checked even when RADBRIDGE_CONFIG names another file."""
    good = _write(tmp_path, VALID)
    run = _check(tmp_path, "-c", str(good), env=_env(RADBRIDGE_CONFIG=str(tmp_path / "none.yaml")))
    assert run.returncode == 0, run.stderr
    assert "OK" in run.stdout


def test_no_configuration_at_all_says_how_to_give_one(tmp_path: Path) -> None:
    """Without FILE, -c or RADBRIDGE_CONFIG the CLI says to pass -c FILE or set RADBRIDGE_CONFIG."""
    run = _check(tmp_path)
    assert run.returncode == 2
    assert "pass -c FILE or set RADBRIDGE_CONFIG" in _flat(run.stderr)


def test_config_path_prefers_argument_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config_path() takes the argument first, else RADBRIDGE_CONFIG, else fails."""
    monkeypatch.setenv("RADBRIDGE_CONFIG", str(tmp_path / "env.yaml"))
    assert config_path(tmp_path / "arg.yaml") == tmp_path / "arg.yaml"
    assert config_path(None) == tmp_path / "env.yaml"
    monkeypatch.delenv("RADBRIDGE_CONFIG")
    with pytest.raises(ConfigError, match="RADBRIDGE_CONFIG"):
        config_path(None)


def test_relative_paths_resolve_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative spool and SQLite paths are relative to the file, not to the working directory."""
    text = VALID.replace("spool: ./spool", "spool: ../var/spool").replace(
        "sqlite:///./var/radbridge.db", "sqlite:///data/radbridge.db"
    )
    path = _write(tmp_path / "etc", text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("..") / "etc" / "radbridge.yaml", {})
    base = path.resolve().parent
    assert settings.storage.spool == (base.parent / "var" / "spool").resolve()
    assert settings.storage.database == f"sqlite:///{base / 'data' / 'radbridge.db'}"
    assert settings.database_url() == settings.storage.database


def test_absolute_and_memory_paths_are_kept(tmp_path: Path) -> None:
    """Absolute spool paths, absolute SQLite paths and :memory: are left as written."""
    spool = tmp_path / "abs" / "spool"
    text = VALID.replace("spool: ./spool", f"spool: {spool}").replace(
        "sqlite:///./var/radbridge.db", "sqlite:///:memory:"
    )
    settings = load_settings(_write(tmp_path / "etc", text), {})
    assert settings.storage.spool == spool
    assert settings.storage.database == "sqlite:///:memory:"
    absolute = VALID.replace("sqlite:///./var/radbridge.db", f"sqlite:///{tmp_path}/x.db")
    settings = load_settings(_write(tmp_path / "etc2", absolute), {})
    assert settings.storage.database == f"sqlite:///{tmp_path}/x.db"


def test_http_on_all_interfaces_needs_a_public_url(tmp_path: Path) -> None:
    """Listening on 0.0.0.0 without http.public_url is refused: manifests would be unreachable."""
    text = VALID + "http:\n  listen: {host: 0.0.0.0, port: 8080}\n"
    (problem,) = _problems(_write(tmp_path, text))
    assert "http.public_url" in problem and f":{_line_of(text, 'http:')}:" in problem
    ok = text + '  public_url: "https://radbridge.hospital.example"\n'
    assert load_settings(_write(tmp_path, ok), environ={}).http_settings().base_url() == (
        "https://radbridge.hospital.example"
    )


def test_one_link_secret_signs_both_links_and_the_older_ones_are_deprecated(
    tmp_path: Path,
) -> None:
    """``RADBRIDGE_HTTP__LINK_SECRET`` signs verdict and acknowledgement links alike; the
    older ``http.verdict_link_secret`` and ``critical.link_secret`` still work, each for its
    own links, and `radbridge config check` accepts them with a deprecation note each."""
    path = _write(tmp_path, VALID)
    new, verdict, ack = "n" * 40, "v" * 40, "a" * 40
    one = load_settings(path, {"RADBRIDGE_HTTP__LINK_SECRET": new})
    assert one.link_secret(LinkPurpose.VERDICT) == one.link_secret(LinkPurpose.CRITICAL_ACK) == new
    assert one.deprecations() == []
    older = {"RADBRIDGE_HTTP__VERDICT_LINK_SECRET": verdict, "RADBRIDGE_CRITICAL__LINK_SECRET": ack}
    two = load_settings(path, older)
    assert (two.link_secret(LinkPurpose.VERDICT), two.link_secret(LinkPurpose.CRITICAL_ACK)) == (
        verdict,
        ack,
    )
    both = load_settings(path, {**older, "RADBRIDGE_HTTP__LINK_SECRET": new})
    assert both.link_secret(LinkPurpose.CRITICAL_ACK) == new
    assert load_settings(path, {}).link_secret(LinkPurpose.VERDICT) is None
    run = _check(tmp_path, "radbridge.yaml", env=_env(**older))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK: radbridge.yaml")
    notes = _flat(run.stderr)
    assert "deprecated: http.verdict_link_secret (RADBRIDGE_HTTP__VERDICT_LINK_SECRET)" in notes
    assert "deprecated: critical.link_secret (RADBRIDGE_CRITICAL__LINK_SECRET)" in notes
    assert notes.count("use http.link_secret (RADBRIDGE_HTTP__LINK_SECRET)") == 2
    in_yaml = VALID + f"http:\n  link_secret: {new}\n"
    (problem,) = _problems(_write(tmp_path / "yaml", in_yaml))
    assert "RADBRIDGE_HTTP__LINK_SECRET" in problem
