"""Priors for comparison: the ``priors:`` block of a route (loaded and checked like every
setting) and the fetch's bound on a PACS that accepts a connection and never answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.dicom.priors import fetch_priors
from broker.model.errors import ConfigError
from broker.model.priors import PriorsPolicy, PriorsQuery
from config.loader import load_settings
from config.schema import Settings

CONFIG = """\
targets:
  pacs: {type: dicom, ae_title: PACS, host: 127.0.0.1, port: 11114}
  ris: {type: hl7, host: 127.0.0.1, port: 2576}
vendors:
  followup:
    product: CT follow-up
    transport: {type: dicom, ae_title: FOLLOWUP, host: 127.0.0.1, port: 11113}
routes:
  - name: chest-followup
    when: {modality: CT}
    send: [followup]
    priors: {source: SOURCE, count: 2, body_part: true, max_age: 730d, wait: 20s}
"""


def _load(tmp_path: Path, source: str) -> Settings:
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG.replace("SOURCE", source))
    return load_settings(path, {})


def test_a_route_asks_for_priors_from_a_dicom_target(tmp_path: Path) -> None:
    """The route's block becomes the policy the job worker uses: the target's address,
    the count, the body part rule, the age in days and the wait in seconds."""
    settings = _load(tmp_path, "pacs")
    policy = settings.priors("chest-followup")
    assert policy is not None
    assert (policy.source, policy.source_type) == ("pacs", "dicom")
    assert policy.source_params["ae_title"] == "PACS"
    assert policy.source_params["port"] == 11114
    assert (policy.count, policy.same_modality, policy.body_part) == (2, True, True)
    assert policy.max_age_days == 730
    assert policy.wait == 20
    assert settings.priors("no-such-route") is None


@pytest.mark.parametrize(
    ("source", "said"), [("ris", "is a hl7 target"), ("archive", "is no such target")]
)
def test_priors_from_anything_but_a_dicom_target_is_refused(
    tmp_path: Path, source: str, said: str
) -> None:
    """A priors source that is not a dicom target fails at load, naming the field and the
    dicom targets that would have been valid."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, source)
    text = str(caught.value) + " ".join(getattr(caught.value, "lines", []) or [])
    assert "priors" in text and said in text
    assert "valid: a dicom or dicomweb target: pacs" in text


@pytest.fixture
def silent_pacs() -> Iterator[int]:
    """A loopback port whose connections the kernel accepts and nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_a_silent_pacs_costs_the_wait_then_no_priors(silent_pacs: int, tmp_path: Path) -> None:
    """A PACS that takes the connection but never answers the association: the fetch
    returns (after its wait) with no priors and says why."""
    query = PriorsQuery("1.2.3", "PAT1", "HOSP", ("CT",), ("CHEST",), "20260101")
    params = {"ae_title": "PACS", "host": "127.0.0.1", "port": silent_pacs}
    policy = PriorsPolicy("pacs", "dicom", params, wait=0.5)
    fetched = fetch_priors(query, policy, tmp_path)
    assert fetched.priors == ()
    assert fetched.note.startswith("sent without priors: the PACS pacs")
    assert "waited at most 0.5 s" in fetched.note
    assert not list(tmp_path.iterdir())
