"""One routing-facts builder: the service decides on a stored study exactly as explain does
on its files.

Studies are written with pydicom, sent with dcmtk ``storescu`` to radbridge's real
listener code (``adapters.dicom.server``, run in this process on a loopback port) and
indexed in a real store; the service's routing input (``stored_input``, what
``RoutingStage`` decides on) is compared with explain's (``read_studies`` +
``files_input``). The property test generates studies and routes with hypothesis.
"""

from __future__ import annotations

import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy import inspect

from adapters.dicom.mapping import (
    MAX_TAG_TEXT,
    instance_record_from_spooled_file,
    read_header,
    tags_from_dataset,
)
from adapters.dicom.study import read_studies
from broker.model.domain import (
    InboundMessage,
    Order,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
    Series,
)
from broker.runtime.routing_input import RoutingInput, files_input, stored_input
from broker.store import StudyStore, make_engine
from broker.store.jobs import JobStore
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from config.loader import load_settings
from config.schema import Settings, routing_rules
from routing import Decision, RuleSet
from routing.facts import study_tags
from tests.databases import DATABASES, empty_database
from tests.hl7_messages import sample_order
from tests.listener import dicom_listener
from tests.peers import storescu

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.slow(seconds=40),
    pytest.mark.xdist_group("routing_facts"),
]

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
CALLING_AE = "CT01"
CALLED_AE = "RADBRIDGE"
VENDORS = ("v1", "v2", "v3")
STATIONS = ("CT01", "CT02", "北院CT")
INSTITUTIONS = ("North Campus", "South Campus", "北京协和")
PRIVATE_CREATOR = "RADBRIDGE TEST"


# ------------------------------------------------------------------ DICOM files


@dataclass(frozen=True)
class SeriesPlan:
    """One series to write: what its instances say (the later ones may differ)."""

    modality: str = "CT"
    body_part: str | None = "CHEST"
    thickness: float | None = 1.0
    station: str = "CT01"
    institution: str = "North Campus"
    manufacturer: str | None = "GE"
    private: str | None = "LUNG-PROTOCOL"
    kvp: int = 120
    instances: int = 2
    later_differ: bool = False
    """Instances after the first: another station, body part and a LOCALIZER image type."""
    numbered: bool = True
    """The series has a SeriesNumber."""


def write_study(folder: Path, plans: Sequence[SeriesPlan], accession: str = "ACC1") -> list[Path]:
    """Part 10 files, ``S<n>/I<m>.dcm`` (name order = series and instance order)."""
    study_uid = generate_uid()
    paths: list[Path] = []
    for n, plan in enumerate(plans, 1):
        series_uid = generate_uid()
        for m in range(1, plan.instances + 1):
            later = plan.later_differ and m > 1
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if later else "AXIAL"]
            ds.SOPClassUID = CTImageStorage if plan.modality == "CT" else MRImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.StudyDate = "20240501"
            ds.StudyTime = "093000"
            ds.AccessionNumber = accession
            ds.Modality = plan.modality
            if plan.manufacturer:
                ds.Manufacturer = plan.manufacturer
            ds.InstitutionName = plan.institution
            ds.StationName = "OTHER" if later else plan.station
            ds.StudyDescription = "CHEST ROUTINE"
            ds.SeriesDescription = f"series {n}"
            ds.PatientName = "DOE^JANE"
            ds.PatientID = "PAT0001"
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "F"
            body_part = "PELVIS" if later else plan.body_part
            if body_part:
                ds.BodyPartExamined = body_part
            if plan.thickness is not None:
                ds.SliceThickness = plan.thickness
            ds.KVP = plan.kvp
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            if plan.numbered:
                ds.SeriesNumber = n
            ds.InstanceNumber = m
            ds.ReferencedImageSequence = DicomSequence([Dataset()])
            ds.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
            ds.ImageComments = "x" * (MAX_TAG_TEXT + 10)
            if plan.private:
                block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
                block.add_new(0x01, "LO", plan.private)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = 4
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = bytes(32)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            path = folder / f"S{n}" / f"I{m:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


# ------------------------------------------------------------ the real listener


@dataclass
class World:
    """A configuration, its store and radbridge's listener serving it in this process."""

    folder: Path
    settings: Settings
    store: StudyStore
    port: int

    def send(self, files: Sequence[Path]) -> str:
        """storescu ``files`` (in this order, one association); close the study; its UID."""
        storescu(list(files), self.port, calling_ae=CALLING_AE, called_ae=CALLED_AE)
        closed = self.store.close_stable(datetime.now(UTC) + timedelta(hours=1))
        assert len(closed) == 1, closed
        return closed[0]

    def stored(self, study_uid: str) -> RoutingInput:
        """What the routing stage decides on."""
        engine = self.store.engine
        return stored_input(self.store, OrderStore(engine), JobStore(engine), study_uid)

    def rules(self, routes: list[dict[str, Any]]) -> RuleSet:
        """The rule set ``serve`` would compile from a configuration with these routes."""
        path = self.folder / "routes.yaml"
        path.write_text(yaml.safe_dump(_config(self.folder, 0, routes), allow_unicode=True))
        return routing_rules(load_settings(path))


def _config(folder: Path, port: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "site": {"name": "Test", "timezone": "UTC"},
        "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/rb.db"},
        "dicom": {
            "listen": {"host": "127.0.0.1", "port": port or 11112},
            "ae_titles": {CALLED_AE: "ingest"},
            "allow_any_peer": True,
        },
        "vendors": {
            name: {
                "product": f"product {name}",
                "transport": {
                    "type": "dicom",
                    "ae_title": name.upper(),
                    "host": "127.0.0.1",
                    "port": 11113,
                },
            }
            for name in VENDORS
        },
        "routes": routes,
    }


@pytest.fixture(scope="module", params=DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """radbridge's listener code on a loopback port, indexing into a migrated store (SQLite,
    and PostgreSQL)."""
    folder = tmp_path_factory.mktemp("world")
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    path = folder / "radbridge.yaml"
    path.write_text(yaml.safe_dump(_config(folder, port, [])))
    config = load_settings(path)
    with empty_database(request.param, folder) as engine:
        store = StudyStore(engine)
        with dicom_listener(config, store, sock):
            yield World(folder, config, store, port)


def _files_input(files: Sequence[Path], orders: Sequence[Order] = ()) -> RoutingInput:
    """What explain of files decides on (the folder of the files, as given on the command
    line), for a study sent by CALLING_AE to CALLED_AE, with ``orders`` given."""
    (studies, skipped) = read_studies(files[0].parent.parent)
    assert skipped == 0
    ((study, tags),) = studies
    return files_input(study, tags, orders, calling_ae=CALLING_AE, called_ae=CALLED_AE)


def _without_size(series: Sequence[Series]) -> list[Series]:
    # The spool keeps the bytes as they came; file meta and so size differ from the source.
    return [replace(s, size=0) for s in series]


def _assert_same(service: Decision, explained: Decision) -> None:
    assert explained.outcome == service.outcome
    assert explained.dispatches == service.dispatches
    assert explained.skipped == service.skipped
    assert explained.routes == service.routes
    assert explained.unrouted == service.unrouted


def _assert_same_facts(stored: RoutingInput, files: RoutingInput) -> None:
    assert files.tags == stored.tags
    assert _without_size(files.study.series) == _without_size(stored.study.series)
    for name in ("modalities", "body_parts", "accession_number", "calling_ae", "called_ae"):
        assert getattr(files.study, name) == getattr(stored.study, name), name


# ---------------------------------------------------------------------- tests


def test_tags_keep_every_text_attribute_but_names_sequences_bytes_and_long_values(
    tmp_path: Path,
) -> None:
    """tags_from_dataset: keywords, private tags as (GGGG,EEEE), numbers as text; no patient
    name, sequence, pixel data or over-long value."""
    (first, *_) = write_study(tmp_path, [SeriesPlan(station="北院CT")])
    tags = tags_from_dataset(read_header(first))
    assert tags["StationName"] == "北院CT"
    assert tags["InstitutionName"] == "North Campus"
    assert tags["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert tags["(0009,1001)"] == "LUNG-PROTOCOL"
    assert tags["(0009,0010)"] == PRIVATE_CREATOR
    assert tags["Rows"] == "4"
    assert float(tags["KVP"]) == 120
    assert tags["PatientID"] == "PAT0001"
    for absent in ("PatientName", "ReferencedImageSequence", "PixelData", "ImageComments"):
        assert absent not in tags


def test_a_station_name_route_fires_in_the_service_as_in_explain(
    world: World, tmp_path: Path
) -> None:
    """tag.StationName and tag.Manufacturer (not among the keywords the store once rebuilt)
    fire for the stored study exactly as for its files."""
    files = write_study(tmp_path, [SeriesPlan(station="CT02", manufacturer="SIEMENS")])
    uid = world.send(files)
    rules = world.rules(
        [
            {"name": "station", "when": {"tag.StationName": "CT02"}, "send": ["v1"]},
            {"name": "maker", "when": {"tag.Manufacturer": {"regex": "siem"}}, "send": ["v2"]},
            {"name": "private", "when": {"tag.(0009,1001)": "LUNG-PROTOCOL"}, "send": ["v3"]},
        ]
    )
    stored = world.stored(uid)
    service = stored.decide(rules, NOW)
    assert [(d.route, d.vendor) for d in service.dispatches] == [
        ("station", "v1"),
        ("maker", "v2"),
        ("private", "v3"),
    ]
    _assert_same(service, _files_input(files).decide(rules, NOW))


def test_a_series_keeps_the_tags_of_its_first_instance(world: World, tmp_path: Path) -> None:
    """Later instances with another StationName change neither the stored tags nor explain's."""
    files = write_study(tmp_path, [SeriesPlan(station="CT02", instances=3, later_differ=True)])
    uid = world.send(files)
    stored = world.stored(uid)
    assert stored.tags["StationName"] == "CT02"
    assert _files_input(files).tags == stored.tags


def test_only_the_first_instance_of_a_series_brings_its_tags(world: World, tmp_path: Path) -> None:
    """The index asks for a series' tags until it holds them (the listener reads the full
    header's text only once per series)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    migrate(engine)
    store = StudyStore(engine)
    files = write_study(tmp_path / "files", [SeriesPlan(instances=2)])
    series_uid = str(read_header(files[0]).SeriesInstanceUID)
    assert store.wants_series_tags(series_uid)
    first = instance_record_from_spooled_file(files[0], store.wants_series_tags)
    assert first.series_tags is not None
    store.record_instance(first, 1.0)
    assert not store.wants_series_tags(series_uid)
    second = instance_record_from_spooled_file(files[1], store.wants_series_tags)
    assert second.series_tags is None
    store.record_instance(second, 1.0)
    assert store.series_tags(first.study_uid) == {series_uid: dict(first.series_tags)}
    engine.dispose()


def test_a_series_indexed_without_tags_routes_on_what_the_store_holds(
    tmp_path: Path,
) -> None:
    """Series indexed before tags were kept: study_tags gives the keywords the store holds."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine)
    store = StudyStore(engine)
    files = write_study(tmp_path / "files", [SeriesPlan(body_part="HEAD")])
    for path in files:
        store.record_instance(instance_record_from_spooled_file(path, lambda _uid: False), 1.0)
    uid = str(read_header(files[0]).StudyInstanceUID)
    assert store.series_tags(uid) == {}
    tags = study_tags(store.get_study(uid), store.series_tags(uid))
    assert tags["BodyPartExamined"] == "HEAD"
    assert tags["Modality"] == "CT"
    assert "StationName" not in tags
    engine.dispose()


def test_the_series_tags_column_comes_with_migration_0010(tmp_path: Path) -> None:
    """Migration 0010 adds series.tags (nullable text)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    columns = {c["name"]: c for c in inspect(engine).get_columns("series")}
    assert columns["tags"]["nullable"] is True
    engine.dispose()


# ---------------------------------------------------------------- property test


@st.composite
def series_plans(draw: st.DrawFn) -> SeriesPlan:
    return SeriesPlan(
        modality=draw(st.sampled_from(["CT", "MR"])),
        body_part=draw(st.sampled_from(["CHEST", "HEAD", None])),
        thickness=draw(st.sampled_from([0.625, 1.0, 2.5, 5.0, None])),
        station=draw(st.sampled_from(STATIONS)),
        institution=draw(st.sampled_from(INSTITUTIONS)),
        manufacturer=draw(st.sampled_from(["GE", "SIEMENS", None])),
        private=draw(st.sampled_from(["LUNG-PROTOCOL", "OTHER", None])),
        kvp=draw(st.sampled_from([80, 100, 120])),
        instances=draw(st.integers(1, 3)),
        later_differ=draw(st.booleans()),
        numbered=draw(st.booleans()),
    )


CONDITIONS: list[st.SearchStrategy[tuple[str, Any]]] = [
    st.tuples(st.just("tag.StationName"), st.sampled_from([*STATIONS, "OTHER"])),
    st.tuples(
        st.just("tag.StationName"),
        st.lists(st.sampled_from(STATIONS), min_size=1, max_size=2).map(lambda v: {"in": v}),
    ),
    st.tuples(
        st.just("tag.InstitutionName"),
        st.sampled_from(["north", "south|北京", "campus$"]).map(lambda v: {"regex": v}),
    ),
    st.tuples(st.just("tag.Manufacturer"), st.booleans().map(lambda v: {"exists": v})),
    st.tuples(st.just("tag.(0009,1001)"), st.sampled_from(["LUNG-PROTOCOL", "OTHER"])),
    st.tuples(st.just("tag.KVP"), st.sampled_from([90, 110]).map(lambda v: {"gte": v})),
    st.tuples(st.just("tag.ImageType"), st.sampled_from(["LOCALIZER", "AXIAL"])),
    st.tuples(st.just("tag.BodyPartExamined"), st.sampled_from(["CHEST", "HEAD", "PELVIS"])),
    st.tuples(st.just("tag.SeriesNumber"), st.sampled_from([2, 3]).map(lambda v: {"lt": v})),
    st.tuples(st.just("tag.PatientName"), st.booleans().map(lambda v: {"exists": v})),
    st.tuples(st.just("modality"), st.sampled_from(["CT", "MR"])),
    st.tuples(
        st.just("body_part"),
        st.lists(st.sampled_from(["CHEST", "HEAD"]), min_size=1, max_size=2).map(
            lambda v: {"in": v}
        ),
    ),
    st.tuples(
        st.just("series.slice_thickness"), st.sampled_from([1.0, 2.5]).map(lambda v: {"lte": v})
    ),
    st.tuples(st.just("calling_ae"), st.sampled_from([CALLING_AE, "MR01"])),
    st.tuples(st.just("order.priority"), st.sampled_from(["stat", "routine"])),
    st.tuples(st.just("order.procedure_code"), st.just("CT-CHEST")),
]


@st.composite
def orders(draw: st.DrawFn) -> Order | None:
    """No order, or one with the study's accession (set when it is sent): of the study's
    patient or another, STAT or routine, scheduled or cancelled."""
    if draw(st.booleans()):
        return None
    return sample_order(
        1,
        accession_number="(set later)",
        study_uid=None,
        patient=Patient(draw(st.sampled_from(["PAT0001", "PAT0001", "PAT0002"]))),
        priority=draw(st.sampled_from([OrderPriority.STAT, OrderPriority.ROUTINE])),
        status=draw(st.sampled_from([OrderStatus.SCHEDULED, OrderStatus.CANCELLED])),
    )


@st.composite
def route_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    routes = []
    for n in range(draw(st.integers(1, 4))):
        pairs = draw(st.lists(st.one_of(CONDITIONS), min_size=1, max_size=3))
        when: dict[str, Any] = {}
        for key, value in pairs:
            when.setdefault(key, value)
        if draw(st.booleans()) and len(when) > 1:
            key = next(iter(when))
            when["not"] = {key: when.pop(key)}
        route: dict[str, Any] = {
            "name": f"r{n}",
            "when": when,
            "send": draw(st.lists(st.sampled_from(VENDORS), min_size=1, max_size=2, unique=True)),
        }
        if draw(st.booleans()):
            route["exclusive"] = True
        routes.append(route)
    if draw(st.booleans()):
        routes.append({"name": "fallback", "when": {}, "send": ["v3"], "fallback": True})
    return routes


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(
    plans=st.lists(series_plans(), min_size=1, max_size=3),
    routes=route_lists(),
    order=orders(),
)
def test_explain_of_files_and_the_service_decide_the_same(
    world: World, plans: list[SeriesPlan], routes: list[dict[str, Any]], order: Order | None
) -> None:
    """For generated studies, orders and routes: the stored study (sent through the listener,
    its order through the order store) and its files with the order given yield the same tags,
    series, order and decision."""
    accession = f"A{uuid.uuid4().hex[:12]}"
    given = (
        []
        if order is None
        else [
            replace(
                order, accession_number=accession, placer_number=f"P{accession}", filler_number=None
            )
        ]
    )
    with tempfile.TemporaryDirectory(dir=world.folder) as tmp:
        files = write_study(Path(tmp), plans, accession=accession)
        uid = world.send(files)
        for one in given:
            message = InboundMessage(OrderSource.HL7, "ORM^O01", b"MSH|test")
            OrderStore(world.store.engine).record_order(one, message)
        rules = world.rules(routes)
        stored = world.stored(uid)
        from_files = _files_input(files, given)
        _assert_same_facts(stored, from_files)
        assert from_files.order == stored.order
        assert from_files.cancelled == stored.cancelled
        decision = stored.decide(rules, NOW)
        _assert_same(decision, from_files.decide(rules, NOW))
        event(f"order: {'none' if stored.order is None else stored.order.status.value}")
        event(f"outcome: {decision.outcome.value}")
