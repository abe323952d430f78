"""``radbridge routes explain FILES --site ID``: files are decided as the service decides on
a study of that site (``site`` conditions, a route's ``sites:``); an unknown site is
refused with the valid ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from adapters.dicom.synthetic import generate_study
from tests import cli_fork


def test_explain_files_as_a_sites_study(tmp_path: Path) -> None:
    """A route limited to site A fires for files explained as site A's, not for site B's
    nor for files of no site; ``--site`` names a configured site or exits 2."""
    config = {
        "storage": {"spool": str(tmp_path / "spool"), "database": f"sqlite:///{tmp_path}/rb.db"},
        "sites": {
            "township-a": {"name": "A", "senders": [{"ae_title": "TWA_CT", "host": "10.8.1.0/24"}]},
            "township-b": {"name": "B", "senders": [{"ae_title": "TWB_CT", "host": "10.8.2.0/24"}]},
        },
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
            {
                "name": "a-ct",
                "when": {"modality": "CT"},
                "sites": ["township-a"],
                "send": ["lungai"],
            }
        ],
    }
    path = tmp_path / "radbridge.yaml"
    path.write_text(yaml.safe_dump(config))
    folder = tmp_path / "study"
    generate_study("ct_chest", folder, instances=1, rows=16, columns=16)
    env = {**os.environ, "RADBRIDGE_CONFIG": str(path)}

    def fired(*site: str) -> list[str]:
        done = cli_fork.run(
            ["routes", "explain", str(folder), "--json", *site], env=env, check=False, timeout=120
        )
        assert done.returncode in (0, 3), done.stderr
        return [r["route"] for r in json.loads(done.stdout) if r["status"] == "fired"]

    assert fired("--site", "township-a") == ["a-ct"]
    assert fired("--site", "township-b") == []
    assert fired() == []
    unknown = cli_fork.run(
        ["routes", "explain", str(folder), "--site", "township-z"], env=env, check=False
    )
    assert unknown.returncode == 2
    assert "valid: township-a, township-b" in unknown.stderr
