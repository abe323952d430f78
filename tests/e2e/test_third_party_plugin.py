"""A transport and a target type installed by entry point, as a third party would ship them.

The distribution is one module and a ``*.dist-info/entry_points.txt`` in a
folder on ``PYTHONPATH``; nothing of radbridge changes. ``radbridge config
check`` validates their settings with their own models (a bad field is
reported at its FILE:LINE), and ``radbridge serve`` delivers through the
transport.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from adapters.dicom.synthetic import generate_study
from tests import cli_fork
from tests.peers import LOOPBACK, dataset_bytes, free_port, storescu
from tests.service import Radbridge, base_config

# Its tests share the plugin folder, hence one launcher: they run on one xdist worker.
pytestmark = pytest.mark.xdist_group("third-party-plugin")

PLUGIN = '''
"""Acme's radbridge plugins: a vendor inbox folder (transport), a result drop (target)."""

import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from broker.model.errors import AdapterError, VendorError
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.vendor import SendOutcome, TransportContext, TransportSettings, VendorTransport


class InboxMissing(VendorError):
    """The vendor's inbox is not there (share not mounted): try again later."""


class AcmeInboxSettings(TransportSettings):
    type: Literal["acme_inbox"] = "acme_inbox"
    inbox: str = Field(min_length=1)
    copies: int = Field(default=1, ge=1, le=3)
    api_key: SecretStr | None = None

    def build(self, context: TransportContext) -> VendorTransport:
        return AcmeInbox(context.vendor, self)


class AcmeInbox(VendorTransport):
    retryable = (InboxMissing,)

    def __init__(self, vendor: str, settings: AcmeInboxSettings) -> None:
        self.vendor = vendor
        self.settings = settings

    def send(self, job, files):
        inbox = Path(self.settings.inbox)
        if not inbox.is_dir():
            raise InboxMissing(f"no inbox at {inbox}")
        started = time.perf_counter()
        folder = inbox / f"job-{job.id}"
        folder.mkdir(exist_ok=True)
        for path in files:
            shutil.copyfile(path, folder / path.name)
        size = sum(p.stat().st_size for p in files)
        seconds = time.perf_counter() - started
        return SendOutcome(len(files), size, seconds, f"copied to {folder}")


class AcmeDropSettings(TargetSettings):
    type: Literal["acme_drop"] = "acme_drop"
    folder: str = Field(min_length=1)

    def build(self, name: str) -> WritebackTarget:
        return AcmeDrop(self)


class AcmeDrop(WritebackTarget):
    retryable = (AdapterError,)

    def __init__(self, settings: AcmeDropSettings) -> None:
        self.settings = settings

    def deliver(self, item) -> str:
        (Path(self.settings.folder) / item.delivery.message_id).write_text("result")
        return "dropped"
'''

ENTRY_POINTS = """\
[radbridge.transports]
acme_inbox = acme_radbridge:AcmeInboxSettings

[radbridge.targets]
acme_drop = acme_radbridge:AcmeDropSettings
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed distribution ``acme-radbridge`` (module + dist-info);
    one for the module, so that its commands share one launcher (one ``PYTHONPATH``)."""
    folder = tmp_path_factory.mktemp("plugin") / "site"
    (folder / "acme_radbridge-1.0.dist-info").mkdir(parents=True)
    (folder / "acme_radbridge.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    info = folder / "acme_radbridge-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-radbridge\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return folder


def _env(plugins: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADBRIDGE_")}
    if plugins is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), env.get("PYTHONPATH")]))
    return env


def _check(path: Path, plugins: Path | None) -> subprocess.CompletedProcess[str]:
    return cli_fork.run(["config", "check", str(path)], cwd=path.parent, env=_env(plugins))


CONFIG = """\
storage: {spool: ./spool, database: "sqlite:///./radbridge.db"}
vendors:
  acme:
    product: Acme chest CT
    transport: {type: acme_inbox, inbox: /srv/acme/inbox, copies: 2}
targets:
  drop: {type: acme_drop, folder: /srv/acme/results, retries: 3}
routes:
  - {name: chest, when: {modality: CT}, send: [acme], write_back: [drop]}
"""


def test_config_check_accepts_an_installed_plugins_settings(
    plugin_path: Path, tmp_path: Path
) -> None:
    """With the distribution on the path its transport and target types are configurable."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    run = _check(path, plugin_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK:")


def test_config_check_reports_a_plugins_bad_field_at_its_line(
    plugin_path: Path, tmp_path: Path
) -> None:
    """The plugin's own model checks its fields; each problem has FILE:LINE and what is valid."""
    text = CONFIG.replace("copies: 2}", "copies: 7, colour: red}").replace(
        "folder: /srv/acme/results, ", ""
    )
    path = tmp_path / "radbridge.yaml"
    path.write_text(text, encoding="utf-8")
    run = _check(path, plugin_path)
    assert run.returncode == 2, run.stdout
    problems = run.stderr.replace(str(path), path.name).strip().splitlines()
    assert problems == [
        "radbridge.yaml:5: vendors.acme.transport.copies: Input should be less than or equal "
        "to 3 (got 7); valid: an integer from 1 to 3",
        "radbridge.yaml:5: vendors.acme.transport.colour: colour is not used by the acme_inbox "
        "transport; valid: type, inbox, copies, api_key",
        "radbridge.yaml:7: targets.drop.folder: Field required; valid: text",
    ]


def test_a_plugins_secret_is_read_only_from_the_environment(
    plugin_path: Path, tmp_path: Path
) -> None:
    """A secret field the plugin declares is refused in the YAML, at its line, and taken from
    its RADBRIDGE_… variable as text."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG.replace("copies: 2}", "copies: 2, api_key: s3cret}"), encoding="utf-8")
    run = _check(path, plugin_path)
    assert run.returncode == 2
    assert run.stderr.replace(str(path), path.name).strip() == (
        "radbridge.yaml:5: vendors.acme.transport.api_key: secrets are not read from the "
        "configuration file; set the environment variable "
        "RADBRIDGE_VENDORS__ACME__TRANSPORT__API_KEY instead"
    )
    path.write_text(CONFIG, encoding="utf-8")
    env = {**_env(plugin_path), "RADBRIDGE_VENDORS__ACME__TRANSPORT__API_KEY": "12345"}
    run = cli_fork.run(["config", "check", str(path)], env=env)
    assert run.returncode == 0, run.stderr


def test_the_settings_schema_includes_the_installed_plugins(plugin_path: Path) -> None:
    """The JSON schema of the settings is a discriminated union over what is installed."""
    code = (
        "import json; from config.schema import Settings; s = Settings.model_json_schema(); "
        "t = s['$defs']['Vendor']['properties']['transport']['discriminator']['mapping']; "
        "print(json.dumps([sorted(t), s['$defs']['AcmeInboxSettings']['properties']['copies']]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names, copies = json.loads(run.stdout)
    assert names == ["acme_inbox", "dicom", "dicomweb", "http", "radbridge"]
    assert copies["maximum"] == 3


def test_without_the_distribution_its_type_is_unknown(tmp_path: Path) -> None:
    """Not installed, the plugin's name is refused, naming what is installed."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    run = _check(path, None)
    assert run.returncode == 2
    assert (
        "radbridge.yaml:5: vendors.acme.transport.type: no such vendor transport "
        "'acme_inbox'; valid: dicom, dicomweb, http"
    ) in run.stderr.replace(str(path), path.name)


@pytest.mark.timeout(120)
def test_radbridge_serve_delivers_through_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    """storescu → radbridge serve → the plugin's transport: the vendor's inbox gets the study
    as radbridge spooled it."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = base_config(tmp_path / "rb", free_port())
    config["vendors"] = {
        "acme": {
            "product": "Acme chest CT",
            "transport": {"type": "acme_inbox", "inbox": str(inbox)},
        }
    }
    config["routes"] = [
        {"name": "chest", "when": {"modality": "CT"}, "send": ["acme"], "series": "all"}
    ]
    rb = Radbridge(tmp_path / "rb", config)
    rb.env = {**_env(plugin_path), "TCP_NODELAY": "1"}
    assert yaml.safe_load(rb.config_path.read_text())["vendors"]["acme"]
    ct = generate_study("ct_chest", tmp_path / "ct", instances=4, rows=32, columns=32)
    rb.start()
    try:
        storescu(ct, port=rb.port, host=LOOPBACK, called_ae="RADBRIDGE")
        deadline = time.monotonic() + 60
        received: list[Path] = []
        while time.monotonic() < deadline and len(received) < len(ct):
            received = sorted(inbox.rglob("*.dcm"))
            time.sleep(0.2)
    finally:
        rb.stop()
    spooled = sorted((rb.spool / "studies").rglob("*.dcm"))
    assert len(spooled) == len(ct)
    assert sorted(dataset_bytes(p) for p in received) == sorted(dataset_bytes(p) for p in spooled)
    sent = [line for line in rb.log_lines() if line.get("event") == "study routed"]
    assert [line["vendor"] for line in sent] == ["acme"]
