"""A canary study in the spool (``SPOOL/canary/runRUN/``): made in a dotted folder beside
its final name and renamed into place whole, so that neither a backup listing the spool nor
a crash finds a partial canary file under the name the index holds. Watched with inotify
(``tests.fswatch``), which sees every way a name appears in the folder."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pydicom

from tests.fswatch import Change, FolderEvents
from tests.peers import free_port
from tests.service import Radbridge, base_config, dicom_block


def _canary(rb: Radbridge) -> tuple[str, str]:
    """``radbridge vendors canary canaryai``: the run's folder name and its study UID."""
    made = rb.cli("vendors", "canary", "canaryai")
    sent = re.search(r"canary (\d+) sent to canaryai: job \d+, study ([\d.]+)", made.stdout)
    assert sent is not None, made.stdout + made.stderr
    return f"run{sent.group(1)}", sent.group(2)


def test_a_canary_study_appears_in_the_spool_whole_by_one_rename(tmp_path: Path) -> None:
    """``radbridge vendors canary``: the run's folder appears in SPOOL/canary/ only as a
    folder renamed from a dotted one beside it (nothing is created under its final name),
    no dotted folder is left, and the folder holds the study's three instances, each
    marked as the canary, at the paths the index holds."""
    folder = tmp_path / "rb"
    config = base_config(folder, free_port())
    config["vendors"] = {
        "canaryai": {
            "product": "CT head bleed",
            "transport": dicom_block("CANARYAI", free_port()),  # nothing sent: no serve runs
            "canary": {"every": "1d", "deadline": "1h", "template": "ct_head", "instances": 3},
        }
    }
    rb = Radbridge(folder, config)
    _canary(rb)  # the first one makes SPOOL/canary/ itself
    canaries = rb.spool / "canary"
    with closing(FolderEvents(canaries)) as events:
        name, study_uid = _canary(rb)
        seen = events.read()

    assert [e.change for e in seen if e.name == name] == [Change.MOVED_TO | Change.IS_DIR]
    scratch = {e.name for e in seen if e.name != name}
    assert len(scratch) == 1 and scratch.pop().startswith(f".{name}."), seen
    assert not [p for p in canaries.iterdir() if p.name.startswith(".")]

    files = sorted((canaries / name).rglob("*"))
    instances = [p for p in files if p.is_file()]
    assert len(instances) == 3, files
    for path in instances:
        block = pydicom.dcmread(path).private_block(0x0011, "RADBRIDGE CANARY")
        assert (block[0x01].value, block[0x02].value) == ("TEST", "canaryai")
    database = str(rb.config["storage"]["database"]).removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        paths = conn.execute(
            "SELECT path FROM instances WHERE study_uid = ?", (study_uid,)
        ).fetchall()
    assert sorted(Path(p) for (p,) in paths) == instances
