"""The plugin registry: what the entry points declare, and how a bad declaration is refused."""

from __future__ import annotations

from pathlib import Path
from typing import TypeGuard

import pytest

from broker.model.errors import ConfigError
from broker.model.plugins import Registry, settings_name
from broker.model.target import TARGETS
from broker.model.vendor import TRANSPORTS, TransportSettings
from broker.runtime.edges import EDGES, Edge, load

GROUP = "radbridge.test_transports"

MODULE = """
from typing import Literal

from broker.model.vendor import TransportSettings


class Good(TransportSettings):
    type: Literal["good"] = "good"

    def build(self, context):
        raise NotImplementedError


class Misnamed(TransportSettings):
    type: Literal["other"] = "other"

    def build(self, context):
        raise NotImplementedError


NOT_A_PLUGIN = 42
"""


def _is_transport(obj: object) -> TypeGuard[type[TransportSettings]]:
    return isinstance(obj, type) and issubclass(obj, TransportSettings)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry[TransportSettings]:
    """A registry of its own group, with a distribution on ``sys.path`` declaring four names."""
    (tmp_path / "fake_plugins.py").write_text(MODULE, encoding="utf-8")
    info = tmp_path / "fake_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "good = fake_plugins:Good\n"
        "misnamed = fake_plugins:Misnamed\n"
        "number = fake_plugins:NOT_A_PLUGIN\n"
        "missing = fake_plugins_gone:Good\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return Registry("test transport", GROUP, _is_transport, settings_name)


def test_builtin_plugins_are_declared_by_entry_points_under_their_own_names() -> None:
    """Every built-in transport, target type and edge is an entry point; each loads as a
    class that declares the same name."""
    assert TRANSPORTS.names() == ["dicom", "dicomweb", "http", "radbridge"]
    assert TARGETS.names() == ["dicom", "dicomweb", "fhir", "hl7", "webhook"]
    assert {"dicom", "hl7", "web"} <= set(EDGES.names())
    for name, model in [*TRANSPORTS.all().items(), *TARGETS.all().items()]:
        assert settings_name(model) == name
    for name, edge in EDGES.all().items():
        assert edge.name == name and Edge in edge.__mro__


def test_unknown_edge_suggests_the_closest() -> None:
    """A typo in an edge's name gets the closest registered one."""
    with pytest.raises(ConfigError, match=r"no such edge 'hl8'; did you mean 'hl7'\?"):
        load("hl8")


def test_entry_point_is_loaded_only_when_its_name_is_asked(
    registry: Registry[TransportSettings],
) -> None:
    """Listing names imports nothing; asking for one imports only its module."""
    assert registry.names() == ["good", "misnamed", "missing", "number"]
    assert registry.get("good").__name__ == "Good"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("misnamed", "declares the name 'other'; valid: the entry point's name and the plugin's"),
        ("number", "is 42, not a test transport"),
        ("missing", "cannot be loaded: ModuleNotFoundError: No module named 'fake_plugins_gone'"),
        ("goood", "no such test transport 'goood'; did you mean 'good'?"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_entry_point(
    registry: Registry[TransportSettings], name: str, problem: str
) -> None:
    """A plugin under another name, a non-plugin, an unimportable module, a typo: each says
    which entry point and what would be valid."""
    with pytest.raises(ConfigError) as raised:
        registry.get(name)
    assert problem in str(raised.value)
    if name != "goood":
        assert f"entry point '{name} = " in str(raised.value)
