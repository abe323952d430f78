"""Routing as pure functions: operators, series semantics, time, dedup, exclusive, fallback."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.model.domain import (
    Order,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
    Series,
    Study,
    StudyState,
)
from broker.model.errors import RoutingError
from routing import (
    OnNoOrder,
    Outcome,
    Priority,
    RequireOrder,
    RouteSpec,
    RouteStatus,
    RuleError,
    SkipReason,
    compile_routes,
    decide,
    explain,
    parse_series,
    parse_when,
    to_json,
    to_text,
)

NOW = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")


def series(
    number: int,
    modality: str = "CT",
    thickness: float | None = 1.0,
    instances: int = 100,
    *,
    image_type: tuple[str, ...] = AXIAL,
    body_part: str | None = "CHEST",
    description: str | None = None,
    contrast: str | None = None,
) -> Series:
    return Series(
        series_uid=f"1.2.3.{number}",
        modality=modality,
        body_part=body_part,
        description=description or f"series {number}",
        series_number=number,
        slice_thickness=thickness,
        image_type=image_type,
        contrast_agent=contrast,
        instance_count=instances,
        size=instances * 1000,
    )


def study(*parts: Series, **fields: Any) -> Study:
    parts = parts or (series(1),)
    base = Study(
        study_uid="1.2.3",
        patient=Patient(patient_id="P1", sex="F", birth_date="19650412"),
        accession_number="ACC1",
        study_date="20240501",
        description="CT CHEST WITHOUT CONTRAST",
        modalities=tuple(dict.fromkeys(s.modality for s in parts if s.modality)),
        body_parts=tuple(dict.fromkeys(s.body_part for s in parts if s.body_part)),
        state=StudyState.STABLE,
        revision=1,
        instance_count=sum(s.instance_count for s in parts),
        size=0,
        calling_ae="CT01",
        called_ae="RADBRIDGE",
        peer_address="10.0.0.9",
        first_received_at=NOW - timedelta(minutes=2),
        last_received_at=NOW - timedelta(minutes=1),
        stable_at=NOW - timedelta(minutes=1),
        stable_seconds=10.0,
        series=parts,
    )
    return replace(base, **fields)


def route(name: str, when: Any, send: tuple[str, ...] = ("v1",), **fields: Any) -> RouteSpec:
    if isinstance(fields.get("series"), str | dict):
        fields["series"] = parse_series(fields["series"])
    return RouteSpec(name=name, when=parse_when(when), send=send, **fields)


def matches(
    when: Any,
    subject: Study | None = None,
    *,
    order: Order | None = None,
    tags: dict[str, str] | None = None,
    now: datetime = NOW,
    timezone: str = "UTC",
) -> bool:
    rules = compile_routes([route("r", when)], timezone=timezone)
    decision = decide(rules, subject or study(), order, now, tags=tags)
    return decision.outcome is Outcome.ROUTED


ORDER = Order(
    source=OrderSource.HL7,
    placer_number="PL1",
    accession_number="ACC1",
    procedure_code="CTCHEST",
    modality="CT",
    priority=OrderPriority.STAT,
    department="Emergency",
)

# ------------------------------------------------------------------ operators


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"modality": "ct"}, True),
        ({"modality": "MR"}, False),
        ({"modality": {"eq": "ct", "case_sensitive": True}}, False),
        ({"modality": {"eq": "CT", "case_sensitive": True}}, True),
        ({"body_part": {"in": ["LUNG", "chest"]}}, True),
        ({"body_part": ["HEAD", "BRAIN"]}, False),
        ({"study_description": {"regex": "chest|thorax"}}, True),
        ({"study_description": {"regex": "^chest"}}, False),
        ({"study_description": {"regex": "chest", "case_sensitive": True}}, False),
        ({"instance_count": {"lt": 101}}, True),
        ({"instance_count": {"lt": 100}}, False),
        ({"instance_count": {"lte": 100}}, True),
        ({"instance_count": {"gt": 99, "lte": 100}}, True),
        ({"instance_count": {"gte": 101}}, False),
        ({"series_count": 1}, True),
        ({"patient_age": {"gte": 59, "lt": 60}}, True),
        ({"patient_sex": "f"}, True),
        ({"accession_number": {"exists": True}}, True),
        ({"series.contrast_agent": {"exists": False}}, True),
        ({"series.contrast_agent": {"exists": True}}, False),
        ({"modality": {"not": "MR"}}, True),
        ({"modality": {"not": {"in": ["CT", "MR"]}}}, False),
        ({"not": {"calling_ae": "CT01"}}, False),
        ({"calling_ae": "ct01", "called_ae": "RADBRIDGE"}, True),
        ({"any": [{"modality": "MR"}, {"body_part": "CHEST"}]}, True),
        ({"any": [{"modality": "MR"}, {"body_part": "HEAD"}]}, False),
        ({"all": [{"modality": "CT"}, {"body_part": "CHEST"}]}, True),
        ({"all": [{"modality": "CT"}, {"body_part": "HEAD"}]}, False),
        ({}, True),
    ],
)
def test_operator(when: dict[str, Any], expected: bool) -> None:
    """Each operator and literal form decides a one-series chest CT as the table says."""
    assert matches(when) is expected


def test_accession_number_written_as_a_number_compares_as_text() -> None:
    """A YAML number on a text field compares with the field's text."""
    assert matches({"accession_number": 12345}, study(accession_number="12345"))


def test_list_fields_contain_all_and_in_means_subset() -> None:
    """modalities: eq X contains X, eq [X, Y] contains both, in [...] holds every element."""
    petct = study(series(1, "CT"), series(2, "PT"))
    assert matches({"modalities": "PT"}, petct)
    assert matches({"modalities": ["CT", "PT"]}, petct)
    assert not matches({"modalities": ["CT", "MR"]}, petct)
    assert matches({"modalities": {"in": ["CT", "PT", "MR"]}}, petct)
    assert not matches({"modalities": {"in": ["CT"]}}, petct)
    assert matches({"modality": "PT"}, petct)


def test_image_type_condition_means_contains() -> None:
    """series.image_type: AXIAL holds for ORIGINAL\\PRIMARY\\AXIAL; regex searches each value."""
    assert matches({"series.image_type": "axial"})
    assert not matches({"series.image_type": "LOCALIZER"})
    assert matches({"series.image_type": {"regex": "^prim"}})


def test_tags_by_keyword_text_and_number() -> None:
    """tag.<Keyword> reads the tag mapping; backslash separates values; absent means no value."""
    tags = {"InstitutionName": "North Campus", "ImageType": "ORIGINAL\\PRIMARY"}
    assert matches({"tag.InstitutionName": "north campus"}, tags=tags)
    assert matches({"tag.ImageType": "PRIMARY"}, tags=tags)
    assert matches({"tag.StationName": {"exists": False}}, tags=tags)
    assert not matches({"tag.StationName": "CT01"}, tags=tags)
    assert matches({"tag.(0008,0080)": {"exists": False}}, tags=tags)  # no dictionary here


def test_order_fields_need_an_order() -> None:
    """order.* conditions read the linked order; without one they have no value."""
    assert matches({"order.priority": "stat", "order.department": "emergency"}, order=ORDER)
    assert matches({"order.procedure_code": {"in": ["CTCHEST", "CTLUNG"]}}, order=ORDER)
    assert not matches({"order.priority": "stat"})
    assert matches({"order.priority": {"exists": False}})


def test_time_of_day_is_in_the_site_timezone() -> None:
    """time.hour and time.weekday use the site timezone (20:30 UTC Wed is 04:30 Thu in Shanghai)."""
    night = datetime(2024, 5, 1, 20, 30, tzinfo=UTC)
    when = {"time.weekday": "thursday", "time.hour": {"lt": 6}}
    assert matches(when, now=night, timezone="Asia/Shanghai")
    assert not matches(when, now=night, timezone="UTC")
    assert matches({"time.weekday": "wed", "time.hour": 20}, now=night, timezone="UTC")


def test_naive_now_is_utc() -> None:
    """A ``now`` without a timezone is taken as UTC."""
    naive = datetime(2024, 5, 1, 20, 30)
    assert matches({"time.hour": 4}, now=naive, timezone="Asia/Shanghai")


def test_order_enums_accept_their_strings() -> None:
    """OrderPriority accepts any case and HL7 S/A/R; status and source accept their text."""
    assert OrderPriority("stat") is OrderPriority("S") is OrderPriority.STAT
    assert OrderPriority("a") is OrderPriority.ASAP
    assert OrderStatus("In-Progress") is OrderStatus.IN_PROGRESS
    assert OrderSource("FHIR") is OrderSource.FHIR
    with pytest.raises(ValueError):
        OrderPriority("whenever")


# ------------------------------------------------------------ parse errors


@pytest.mark.parametrize(
    ("when", "loc", "fragment"),
    [
        ({"modalty": "CT"}, ("modalty",), "unknown field 'modalty'; did you mean 'modality'?"),
        ({"modality": {"eqq": "CT"}}, ("modality", "eqq"), "did you mean 'eq'?"),
        ({"study_description": {"regex": "lung("}}, ("study_description", "regex"), "bad regex"),
        ({"body_part": {"gt": 3}}, ("body_part", "gt"), "impossible comparison"),
        (
            {"series.slice_thickness": {"regex": "1"}},
            ("series.slice_thickness", "regex"),
            "is a number",
        ),
        (
            {"series.slice_thickness": {"lte": "thin"}},
            ("series.slice_thickness", "lte"),
            "takes a number",
        ),
        ({"time.weekday": "fryday"}, ("time.weekday",), "valid: mon, tue"),
        ({"time.hour": 25}, ("time.hour",), "0 to 23"),
        ({"order.priority": "soon"}, ("order.priority",), "valid: stat, asap, routine"),
        ({"modality": True}, ("modality",), "quote yes/no/true/false"),
        ({"modality": None}, ("modality",), "exists: false"),
        ({"any": []}, ("any",), "non-empty list"),
        ({"any": [{"modality": "CT"}, {}]}, ("any", 1), "empty condition mapping"),
        ({"modality": {"in": "CT"}}, ("modality", "in"), "non-empty list"),
        ({"modality": {"exists": "yes"}}, ("modality", "exists"), "true or false"),
        (
            {"series.slice_thickness": {"lte": 2, "case_sensitive": True}},
            ("series.slice_thickness", "case_sensitive"),
            "applies to text",
        ),
        ({"tag.Bad Name": "x"}, ("tag.Bad Name",), "neither a DICOM keyword"),
    ],
)
def test_parse_errors_name_the_location_and_what_is_valid(
    when: dict[str, Any], loc: tuple[Any, ...], fragment: str
) -> None:
    """Each invalid condition is reported at its location inside ``when`` with a useful hint."""
    with pytest.raises(RuleError) as info:
        parse_when(when)
    locs = [p[0] for p in info.value.problems]
    assert loc in locs, info.value.problems
    assert fragment in str(info.value)


def test_parse_reports_every_problem_at_once() -> None:
    """All the problems of one ``when`` come back together."""
    with pytest.raises(RuleError) as info:
        parse_when({"modalty": "CT", "body_part": {"lt": 1}, "x": {"regex": "("}})
    assert len(info.value.problems) == 3


def test_unknown_series_selector_suggests_the_close_one() -> None:
    """series: thinest_axial is an error naming thinnest_axial and the valid selectors."""
    with pytest.raises(RuleError, match="did you mean 'thinnest_axial'"):
        parse_series("thinest_axial")
    with pytest.raises(RuleError, match="unknown field 'studydescription'"):
        parse_series({"studydescription": "x"})


def test_compile_rejects_unknown_vendors_duplicate_names_and_timezones() -> None:
    """compile_routes checks vendors against the known ones, names, and the timezone."""
    with pytest.raises(RoutingError, match="unknown vendor"):
        compile_routes([route("a", {}, ("nope",))], vendor_kinds={"v1": None})
    with pytest.raises(RoutingError, match="defined twice"):
        compile_routes([route("a", {}), route("a", {})])
    with pytest.raises(RoutingError, match="unknown timezone"):
        compile_routes([route("a", {})], timezone="Asia/Shangai")


# ------------------------------------------------------------- series rules


def test_series_conditions_must_hold_for_the_same_series() -> None:
    """A thin non-axial series and a thick axial one do not make a thin axial series."""
    when = {"series.slice_thickness": {"lte": 2.5}, "series.image_type": "AXIAL"}
    mixed = study(series(1, thickness=5.0), series(2, thickness=1.0, image_type=("DERIVED",)))
    assert not matches(when, mixed)
    assert matches(when, replace(mixed, series=(*mixed.series, series(3, thickness=1.0))))


def test_series_conditions_inside_any_and_not_use_the_same_series() -> None:
    """any/not with series fields are evaluated against the one series being tried."""
    when = {
        "series.modality": "CT",
        "any": [{"series.slice_thickness": {"lte": 1}}, {"series.description": {"regex": "lung"}}],
        "not": {"series.image_type": "LOCALIZER"},
    }
    scout = series(1, thickness=0.5, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert not matches(when, study(scout, series(2, thickness=5.0)))
    assert matches(when, study(scout, series(2, thickness=5.0, description="Lung 5mm")))


def test_study_level_modality_matches_any_series() -> None:
    """modality: CT holds when any series is CT; modality not CT when none is."""
    subject = study(series(1, "SR", None), series(2, "CT"))
    assert matches({"modality": "CT"}, subject)
    assert not matches({"modality": {"not": "CT"}}, subject)


def _selected(selector: Any, subject: Study, when: Any = None) -> tuple[str, ...]:
    rules = compile_routes([route("r", when or {}, series=selector)])
    decision = decide(rules, subject, None, NOW)
    return decision.dispatches[0].series_uids if decision.dispatches else ()


def test_thinnest_axial_prefers_axial_then_thickness_then_instances() -> None:
    """thinnest_axial: axial series only, smallest slice thickness, ties to most instances."""
    subject = study(
        series(1, thickness=0.5, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        series(2, thickness=1.0, instances=100),
        series(3, thickness=1.0, instances=300),
        series(4, thickness=5.0),
        series(5, "SR", None, 1, image_type=()),
    )
    assert _selected("thinnest_axial", subject) == ("1.2.3.3",)


def test_thinnest_axial_without_axial_series_uses_image_series() -> None:
    """With no AXIAL image type, thinnest_axial picks among image series (never the SR)."""
    subject = study(
        series(1, "SR", None, 1, image_type=()),
        series(2, thickness=3.0, image_type=("DERIVED",)),
        series(3, thickness=2.0, image_type=()),
    )
    assert _selected("thinnest_axial", subject) == ("1.2.3.3",)


def test_largest_first_all_matching_and_condition_selectors() -> None:
    """largest, first, all, matching and a conditions mapping pick the series they say."""
    subject = study(
        series(3, thickness=5.0, instances=50),
        series(1, thickness=1.0, instances=400, contrast="Iohexol"),
        series(2, thickness=2.0, instances=90),
    )
    assert _selected("largest", subject) == ("1.2.3.1",)
    assert _selected("first", subject) == ("1.2.3.1",)
    assert _selected("all", subject) == ("1.2.3.3", "1.2.3.1", "1.2.3.2")
    matching = {"series.slice_thickness": {"gte": 2}}
    assert _selected("matching", subject, matching) == ("1.2.3.3", "1.2.3.2")
    assert _selected({"contrast_agent": {"exists": True}}, subject) == ("1.2.3.1",)
    assert _selected({"series.slice_thickness": {"lt": 3}}, subject) == ("1.2.3.1", "1.2.3.2")


def test_route_without_selected_series_records_no_series() -> None:
    """A matching route whose selector finds nothing sends nothing and says so."""
    rules = compile_routes([route("r", {}, series={"modality": "MR"})])
    decision = decide(rules, study(), None, NOW)
    assert decision.outcome is Outcome.NOTHING_NEW
    assert decision.skipped[0].reason is SkipReason.NO_SERIES


# ------------------------------------------------------------------ decisions


def test_every_matching_route_fires_with_its_settings() -> None:
    """Each matching route gives a dispatch with vendor, series, priority, deadline, write-back."""
    rules = compile_routes(
        [
            route(
                "lung",
                {"modality": "CT", "series.slice_thickness": {"lte": 2.5}},
                ("lungai",),
                series="thinnest_axial",
                priority=Priority.URGENT,
                deadline_seconds=900,
                write_back=("pacs", "ris"),
            ),
            route("all-ct", {"modality": "CT"}, ("archive",)),
            route("mr", {"modality": "MR"}, ("mrai",)),
        ]
    )
    decision = decide(rules, study(series(1, thickness=5.0), series(2, thickness=1.0)), None, NOW)
    assert decision.outcome is Outcome.ROUTED
    lung, archive = decision.dispatches
    assert (lung.route, lung.vendor, lung.series_uids) == ("lung", "lungai", ("1.2.3.2",))
    assert (lung.priority, lung.deadline_seconds, lung.write_back) == (
        Priority.URGENT,
        900,
        ("pacs", "ris"),
    )
    assert archive.series_uids == ("1.2.3.1", "1.2.3.2")
    assert decision.status_of("mr").status is RouteStatus.NOT_MATCHED


def test_same_vendor_from_two_routes_is_sent_once() -> None:
    """The first route wins a vendor; the second is recorded as deduplicated."""
    rules = compile_routes(
        [route("a", {"modality": "CT"}, ("lungai",)), route("b", {}, ("lungai", "other"))]
    )
    decision = decide(rules, study(), None, NOW)
    assert [(d.route, d.vendor) for d in decision.dispatches] == [("a", "lungai"), ("b", "other")]
    (skip,) = decision.skipped
    assert (skip.route, skip.vendor, skip.reason, skip.by_route) == (
        "b",
        "lungai",
        SkipReason.DUPLICATE,
        "a",
    )


def test_exclusive_route_suppresses_later_overlapping_products_only() -> None:
    """exclusive: later routes lose vendors of its kind; earlier routes and other vendors do not."""
    kinds = {"lung_a": "lung-nodule", "lung_b": "lung-nodule", "bone": None, "early": None}
    rules = compile_routes(
        [
            route("early", {}, ("early",)),
            route("trial", {"modality": "CT"}, ("lung_b",), exclusive=True),
            route("usual", {"modality": "CT"}, ("lung_a", "bone")),
        ],
        vendor_kinds=kinds,
    )
    decision = decide(rules, study(), None, NOW)
    assert [d.vendor for d in decision.dispatches] == ["early", "lung_b", "bone"]
    (skip,) = decision.skipped
    assert (skip.vendor, skip.reason, skip.by_route) == ("lung_a", SkipReason.EXCLUSIVE, "trial")
    other = decide(rules, study(series(1, "MR")), None, NOW)
    assert [d.vendor for d in other.dispatches] == ["early"]


def test_fallback_fires_only_when_nothing_else_matched() -> None:
    """A fallback route fires for a study no other route takes, and is not needed otherwise."""
    rules = compile_routes(
        [
            route("catch-all", {}, ("general",), fallback=True),
            route("mr", {"modality": "MR"}, ("mrai",)),
        ]
    )
    ct = decide(rules, study(), None, NOW)
    assert [d.route for d in ct.dispatches] == ["catch-all"]
    mr = decide(rules, study(series(1, "MR")), None, NOW)
    assert [d.route for d in mr.dispatches] == ["mr"]
    assert mr.status_of("catch-all").status is RouteStatus.FALLBACK_NOT_NEEDED


def test_unrouted_names_the_closest_route_and_its_failing_condition() -> None:
    """No match: the route with most conditions met is named with wanted and actual values."""
    rules = compile_routes(
        [
            route("mr", {"modality": "MR"}),
            route("lung", {"modality": "CT", "series.slice_thickness": {"lte": 2.5}}),
        ]
    )
    decision = decide(rules, study(series(1, thickness=5.0), series(2, thickness=3.0)), None, NOW)
    assert decision.outcome is Outcome.UNROUTED
    assert decision.unrouted is not None
    assert decision.unrouted.closest_route == "lung"
    assert str(decision.unrouted.failure) == (
        "series.slice_thickness: wanted <= 2.5, got 3.0 (thinnest series)"
    )
    empty = decide(compile_routes([]), study(), None, NOW)
    assert str(empty.unrouted) == "no routes are configured"


def test_updates_skip_what_was_delivered_unless_resend_updates() -> None:
    """Revision 2: delivered (route, vendor) pairs are skipped; resend_updates sends again."""
    rules = compile_routes(
        [
            route("a", {}, ("v1",)),
            route("b", {}, ("v2",), resend_updates=True),
            route("c", {}, ("v3",)),
        ]
    )
    updated = study(revision=2, state=StudyState.STABLE)
    decision = decide(rules, updated, None, NOW, delivered={("a", "v1"), ("b", "v2")})
    assert [d.vendor for d in decision.dispatches] == ["v2", "v3"]
    assert [(s.vendor, s.reason) for s in decision.skipped] == [
        ("v1", SkipReason.ALREADY_DELIVERED)
    ]
    nothing = decide(rules, updated, None, NOW, delivered={("a", "v1"), ("x", "v2"), ("c", "v3")})
    assert [d.vendor for d in nothing.dispatches] == ["v2"]
    only_old = compile_routes([route("a", {}, ("v1",))])
    assert decide(only_old, updated, None, NOW, delivered={("a", "v1")}).outcome is (
        Outcome.NOTHING_NEW
    )


def test_require_order_waits_then_routes_on_images() -> None:
    """Without an order the route waits; after the wait it fires on the images alone."""
    spec = route(
        "coronary",
        {"modality": "CT", "order.procedure_code": "CTCORO"},
        require_order=RequireOrder(600, OnNoOrder.ROUTE_ON_IMAGES),
    )
    rules = compile_routes([spec])
    stable = NOW - timedelta(minutes=1)
    waiting = decide(rules, study(stable_at=stable), None, NOW)
    assert waiting.outcome is Outcome.WAITING
    assert waiting.wait_until == stable + timedelta(minutes=10)
    later = decide(rules, study(stable_at=stable), None, NOW + timedelta(minutes=10))
    assert later.outcome is Outcome.ROUTED
    assert later.status_of("coronary").on_images
    with_order = decide(rules, study(), replace(ORDER, procedure_code="CTCORO"), NOW)
    assert with_order.outcome is Outcome.ROUTED
    wrong_order = decide(rules, study(), ORDER, NOW)
    assert wrong_order.outcome is Outcome.UNROUTED


def test_require_order_skip_leaves_the_study_unrouted_with_the_reason() -> None:
    """then: skip after the wait: the study is unrouted because no order came."""
    spec = route("needs-order", {"modality": "CT"}, require_order=RequireOrder(60, OnNoOrder.SKIP))
    decision = decide(compile_routes([spec]), study(), None, NOW)
    assert decision.outcome is Outcome.UNROUTED
    assert str(decision.unrouted) == (
        "closest route 'needs-order': order: wanted an order within 1m (require_order), got none"
    )


def test_five_hundred_rules_compile_and_decide() -> None:
    """500 routes compile once and decide one study, each matching route firing."""
    specs = [
        route(
            f"r{i}",
            {
                "modality": ["CT", "MR", "DX"][i % 3],
                "body_part": {"in": ["CHEST", "HEAD"]},
                "series.slice_thickness": {"lte": 1 + i % 5},
                "study_description": {"regex": f"chest|x{i}"},
            },
            (f"v{i}",),
            series="thinnest_axial",
        )
        for i in range(500)
    ]
    rules = compile_routes(specs)
    decision = decide(rules, study(), None, NOW)
    assert len(rules.routes) == 500
    assert len(decision.dispatches) == len(range(0, 500, 3))


# ---------------------------------------------------------------- explain


def test_explain_gives_each_route_its_reason_in_text_and_json() -> None:
    """explain: fired routes, the failing condition with actual values, and dedup notes."""
    rules = compile_routes(
        [
            route("lung", {"modality": "CT", "series.slice_thickness": {"lte": 2.5}}, ("lungai",)),
            route("bleed", {"modality": "CT", "body_part": "HEAD"}, ("ichai",)),
            route("again", {"modality": "CT"}, ("lungai",)),
            route("mr", {"modality": "MR"}, ("mrai",)),
        ]
    )
    subject = study()
    decision, explanations = explain(rules, subject, None, NOW)
    by_route = {e.route: e for e in explanations}
    assert by_route["lung"].status is RouteStatus.FIRED
    assert str(by_route["bleed"].failure) == "body_part: wanted HEAD, got CHEST"
    assert str(by_route["mr"].failure) == "modality: wanted MR, got CT"
    assert by_route["again"].notes == (
        "lungai: deduplicated, route 'lung' already sends it this study",
    )
    rows = to_json(subject.study_uid, explanations, decision)
    assert [r["route"] for r in rows] == ["lung", "bleed", "again", "mr"]
    assert rows[3]["failed"] == {"condition": "modality", "wanted": "MR", "got": "CT"}
    assert rows[0]["dispatches"][0]["vendor"] == "lungai"
    text = to_text(subject, explanations, decision)
    assert "not matched  bleed  body_part: wanted HEAD, got CHEST" in text
    assert text.endswith("Outcome: routed to lungai (1 delivery)")


def test_explain_notes_fallback_exclusive_and_waiting() -> None:
    """Notes say why a fallback was not needed, what an exclusive route holds, who waits."""
    rules = compile_routes(
        [
            route("order-first", {}, ("a",), require_order=RequireOrder(600)),
            route("trial", {}, ("b",), exclusive=True),
            route("any", {}, ("c",), fallback=True),
        ]
    )
    _, explanations = explain(rules, study(), None, NOW)
    notes = {e.route: e.notes for e in explanations}
    assert notes["order-first"][0].startswith("waiting for an order until 2024-05-01T09:09:00")
    assert notes["trial"] == ("exclusive: later routes do not send to products of kind b",)
    assert notes["any"] == ("fallback not needed: order-first, trial matched",)


def test_series_fields_need_their_prefix_in_when() -> None:
    """In ``when`` a series field is written series.<name>; only selectors may drop the prefix."""
    with pytest.raises(RuleError, match="unknown field 'slice_thickness'"):
        parse_when({"slice_thickness": {"lte": 1}})
    assert parse_series({"slice_thickness": {"lte": 1}}).conditions.items


def test_routing_is_pure() -> None:
    """Importing routing loads no pydicom, database, messaging or configuration code."""
    code = (
        "import sys, routing, routing.explain; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pydicom', 'sqlalchemy', 'pynetdicom', 'kombu', 'yaml', 'config', 'adapters'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
