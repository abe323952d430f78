"""Series selectors: which series of a study a route sends.

- ``all``: every series.
- ``thinnest_axial``: among image series whose ImageType contains AXIAL (or,
  if none does, all image series) the one with the smallest slice thickness;
  ties go to the series with the most instances, then to the earlier one.
  A series without a slice thickness counts as thickest.
- ``largest``: the image series with the most instances (earlier on ties).
- ``first``: the first series in study order (lowest series number).
- ``matching``: the series that satisfy all the route's ``series.*``
  conditions together (all series if the route has none).
- a conditions mapping: every series that satisfies it (same syntax as
  ``when``, series fields only, ``series.`` prefix optional).

"Image series" excludes non-image objects (SR, PR, KO, SEG, RT…); when a
study holds nothing else, they are all candidates.
"""

from __future__ import annotations

import math

from broker.model.domain import Series
from routing.compile import CompiledRoute
from routing.facts import Facts, SeriesFacts
from routing.schema import SelectorName

NON_IMAGE_MODALITIES = frozenset(
    {"SR", "PR", "KO", "SEG", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "DOC", "AU"}
    | {"ECG", "HD", "FID", "PLAN", "RWV", "SMR", "OT"}
)


def image_series(facts: Facts) -> tuple[SeriesFacts, ...]:
    """Series holding images; all series when none is recognisably an image series."""
    images = tuple(
        s for s in facts.series if (s.series.modality or "").upper() not in NON_IMAGE_MODALITIES
    )
    return images or facts.series


def _is_axial(series: Series) -> bool:
    return any(part.strip().upper() == "AXIAL" for part in series.image_type)


def thinnest_axial(facts: Facts) -> tuple[SeriesFacts, ...]:
    """The thinnest axial image series (see the module text for ties)."""
    candidates = image_series(facts)
    axial = tuple(s for s in candidates if _is_axial(s.series))
    pool = axial or candidates
    if not pool:
        return ()
    order = {id(s): i for i, s in enumerate(pool)}

    def key(s: SeriesFacts) -> tuple[float, int, int]:
        thickness = s.series.slice_thickness
        return (
            math.inf if thickness is None else thickness,
            -s.series.instance_count,
            order[id(s)],
        )

    return (min(pool, key=key),)


def largest(facts: Facts) -> tuple[SeriesFacts, ...]:
    """The image series with the most instances."""
    pool = image_series(facts)
    if not pool:
        return ()
    most = max(s.series.instance_count for s in pool)
    return (next(s for s in pool if s.series.instance_count == most),)


def first(facts: Facts) -> tuple[SeriesFacts, ...]:
    """The series with the lowest series number (the earliest when numbers are missing)."""
    if not facts.series:
        return ()
    numbered = [(s.series.series_number, i) for i, s in enumerate(facts.series)]
    index = min(numbered, key=lambda p: (p[0] is None, p[0] or 0, p[1]))[1]
    return (facts.series[index],)


def select_series(route: CompiledRoute, facts: Facts) -> tuple[Series, ...]:
    """The series ``route`` sends, in study order."""
    name = route.spec.series.name
    chosen: tuple[SeriesFacts, ...]
    if name is SelectorName.ALL:
        chosen = facts.series
    elif name is SelectorName.THINNEST_AXIAL:
        chosen = thinnest_axial(facts)
    elif name is SelectorName.LARGEST:
        chosen = largest(facts)
    elif name is SelectorName.FIRST:
        chosen = first(facts)
    elif name is SelectorName.MATCHING:
        chosen = route.matching_series(facts)
    else:
        tests = route.selector_tests
        chosen = tuple(s for s in facts.series if all(t(facts, s) for t in tests))
    return tuple(s.series for s in chosen)
