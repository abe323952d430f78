"""Routing benchmark: one decision over 500 routes (goal: median < 1 ms).

    .venv/bin/python -m tests.bench.routing [--rules 500] [--repeats 2000] [--json FILE]

Compiles the routes once, then times ``routing.decide`` for one study, many
times, and prints the median and 99th percentile per scenario:

- ``mixed``: a hospital-like rule set: modalities and body parts of every
  kind, description regexes, series thickness and image type, DICOM tags,
  order fields and time of day; a 4-series chest CT with an order matches a
  handful of routes (several to the same vendor, so deduplication runs).
- ``series-heavy``: every route (each with its own threshold) passes its
  study-level conditions and must try each of the 4 series before failing
  on the last of its three series conditions: the worst case of the rule
  that series conditions hold for one series together.
- ``unrouted``: the mixed rules and a study none matches, so the decision
  also finds the closest route and explains its failing condition.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.model.domain import (
    Order,
    OrderPriority,
    OrderSource,
    Patient,
    Series,
    Study,
    StudyState,
)
from routing import RouteSpec, RuleSet, compile_routes, decide, parse_series, parse_when

NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
MODALITIES = ("CT", "MR", "DX", "CR", "MG", "US", "PT", "NM", "XA", "RF")
BODY_PARTS = ("CHEST", "HEAD", "ABDOMEN", "PELVIS", "SPINE", "KNEE", "HEART", "BREAST")


def _series(number: int, thickness: float, image_type: tuple[str, ...], instances: int) -> Series:
    return Series(
        series_uid=f"1.2.840.99.{number}",
        modality="CT",
        body_part="CHEST",
        description=f"Thorax {thickness:g} mm",
        series_number=number,
        slice_thickness=thickness,
        image_type=image_type,
        contrast_agent="Iohexol" if number == 4 else None,
        instance_count=instances,
        size=instances * 525_000,
    )


def chest_ct(modality: str = "CT") -> Study:
    """A 4-series chest CT: scout, 5 mm, 1 mm lung, 1 mm with contrast."""
    series = (
        _series(1, 0.6, ("ORIGINAL", "PRIMARY", "LOCALIZER"), 2),
        _series(2, 5.0, ("ORIGINAL", "PRIMARY", "AXIAL"), 60),
        _series(3, 1.0, ("ORIGINAL", "PRIMARY", "AXIAL"), 300),
        _series(4, 1.0, ("ORIGINAL", "PRIMARY", "AXIAL"), 300),
    )
    if modality != "CT":
        series = tuple(replace(s, modality=modality) for s in series)
    return Study(
        study_uid="1.2.840.99",
        patient=Patient(patient_id="P1", sex="F", birth_date="19650412"),
        accession_number="ACC1",
        study_date="20240501",
        description="CT CHEST WITH CONTRAST",
        modalities=(modality,),
        body_parts=("CHEST",),
        state=StudyState.STABLE,
        revision=1,
        instance_count=sum(s.instance_count for s in series),
        size=0,
        calling_ae="CT01",
        called_ae="RADBRIDGE",
        peer_address="10.0.0.9",
        first_received_at=NOW - timedelta(minutes=3),
        last_received_at=NOW - timedelta(minutes=1),
        stable_at=NOW - timedelta(seconds=50),
        stable_seconds=10.0,
        series=series,
    )


TAGS = {"InstitutionName": "North Campus", "StationName": "CT01", "ProtocolName": "Thorax"}
ORDER = Order(
    source=OrderSource.HL7,
    procedure_code="CTCHEST",
    priority=OrderPriority.ROUTINE,
    department="Oncology",
    modality="CT",
)


def mixed_rules(count: int) -> list[RouteSpec]:
    """A varied rule set; route i uses a few of the condition kinds hospitals write."""
    specs = []
    for i in range(count):
        when: dict[str, Any] = {
            "modality": MODALITIES[i % len(MODALITIES)],
            "body_part": {"in": [BODY_PARTS[i % len(BODY_PARTS)], BODY_PARTS[(i + 3) % 8]]},
        }
        if i % 2 == 0:
            when["study_description"] = {"regex": f"chest|protocol{i}"}
        if i % 3 == 0:
            when["series.slice_thickness"] = {"lte": 1 + i % 4}
            when["series.image_type"] = "AXIAL"
        if i % 5 == 0:
            when["tag.InstitutionName"] = {"in": ["North Campus", f"Site {i}"]}
        if i % 7 == 0:
            when["order.department"] = {"not": "Emergency"}
        if i % 11 == 0:
            when["time.hour"] = {"gte": 7, "lt": 20}
        specs.append(
            RouteSpec(
                name=f"route-{i}",
                when=parse_when(when),
                send=(f"vendor{i % 40}",),
                series=parse_series(("thinnest_axial", "all", "largest")[i % 3]),
            )
        )
    return specs


def series_heavy_rules(count: int) -> list[RouteSpec]:
    """Every route passes the study, then tries every series and fails on the last condition."""
    return [
        RouteSpec(
            name=f"heavy-{i}",
            when=parse_when(
                {
                    "modality": "CT",
                    "body_part": "CHEST",
                    "series.modality": "CT",
                    "series.image_type": {"not": "SECONDARY"},
                    "series.slice_thickness": {"lt": round(0.5 - i / 10_000, 4)},
                }
            ),
            send=(f"vendor{i}",),
        )
        for i in range(count)
    ]


def measure(rules: RuleSet, study: Study, order: Order | None, repeats: int) -> dict[str, float]:
    """Median and p99 of ``decide`` in milliseconds, after a warm-up."""
    for _ in range(50):
        decide(rules, study, order, NOW, tags=TAGS)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decide(rules, study, order, NOW, tags=TAGS)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"rules": args.rules, "python": sys.version.split()[0]}
    start = time.perf_counter()
    mixed = compile_routes(mixed_rules(args.rules), timezone="Asia/Shanghai")
    results["compile_ms"] = (time.perf_counter() - start) * 1000
    heavy = compile_routes(series_heavy_rules(args.rules))
    scenarios = {
        "mixed": (mixed, chest_ct(), ORDER),
        "series-heavy": (heavy, chest_ct(), None),
        "unrouted": (mixed, chest_ct("ES"), None),
    }
    print(f"routing benchmark: {args.rules} routes, {args.repeats} decisions per scenario")
    print(f"  compile (parse excluded): {results['compile_ms']:.1f} ms")
    for name, (rules, study, order) in scenarios.items():
        decision = decide(rules, study, order, NOW, tags=TAGS)
        figures = measure(rules, study, order, args.repeats)
        figures["dispatches"] = len(decision.dispatches)
        figures["skipped"] = len(decision.skipped)
        results[name] = figures
        goal = "ok" if figures["median_ms"] < 1.0 else "ABOVE GOAL"
        print(
            f"  {name:<13} median {figures['median_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms"
            f"  ({len(decision.dispatches)} dispatches, {len(decision.skipped)} skipped,"
            f" {decision.outcome}; goal median < 1 ms: {goal})"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
