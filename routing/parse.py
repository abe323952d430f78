"""Parse the route language (see :mod:`routing.schema`) from configuration values.

``parse_when`` and ``parse_series`` check every field, operator and value and
raise :class:`RuleError` listing every problem with its location inside the
route; nothing is ever ``eval``-ed. DICOM tag names are resolved by a
``TagResolver``: :func:`plain_tag` here, or one backed by a data dictionary
(``config.schema.dicom_tag``), so routing itself needs no pydicom.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from broker.model.errors import RoutingError, did_you_mean
from routing.fields import (
    FIELDS,
    RESULT_PREFIX,
    SERIES_FIELDS,
    TAG_PREFIX,
    FieldSpec,
    Kind,
    result_field,
    tag_field,
)
from routing.schema import (
    COMPARISONS,
    NAMED_SELECTORS,
    All,
    AnyOf,
    Condition,
    Conditions,
    Leaf,
    Not,
    Op,
    SelectorName,
    SeriesSelector,
)

Loc = tuple[str | int, ...]
TagResolver = Callable[[str], tuple[str, Kind]]
"""Maps what follows ``tag.`` to (canonical key, kind); raises ValueError if unknown."""

_SYMBOL = {Op.LT: "<", Op.LTE: "<=", Op.GT: ">", Op.GTE: ">="}
OPERATORS = (*(op.value for op in Op), "not", "case_sensitive")
COMBINATORS = ("any", "all", "not")


class RuleError(RoutingError):
    """A route is invalid. ``problems`` holds (location inside the route, message)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


def plain_tag(name: str) -> tuple[str, Kind]:
    """A tag resolver without a data dictionary: any keyword or ``(gggg,eeee)``, as text."""
    match = _TAG_NUMBER.fullmatch(name)
    if match:
        return f"({match[1]},{match[2]})".upper(), Kind.TEXT
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
        return name, Kind.TEXT
    raise ValueError(f"'{name}' is neither a DICOM keyword nor a tag like (0008,0080)")


_TAG_NUMBER = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _shown_number(value: float, written: Any) -> str:
    return str(written) if isinstance(written, int | float | str) else f"{value:g}"


class _Parser:
    def __init__(self, resolve_tag: TagResolver, fields: Mapping[str, FieldSpec]) -> None:
        self.resolve_tag = resolve_tag
        self.fields = fields
        self.problems: list[tuple[Loc, str]] = []

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, message))

    def valid_fields(self) -> str:
        names = list(self.fields)
        if self.fields is FIELDS:
            names.append("tag.<DICOM keyword or (gggg,eeee)>")
        names += ["any", "all", "not"]
        return ", ".join(names)

    # mapping of conditions ------------------------------------------------

    def mapping(self, data: Any, loc: Loc, *, top: bool = False) -> list[Condition]:
        if not isinstance(data, Mapping):
            self.problem(
                loc,
                f"conditions must be a mapping of field: value, got {data!r}; "
                "valid: e.g. {modality: CT, body_part: CHEST}",
            )
            return []
        if not data and not top:
            self.problem(loc, "an empty condition mapping; valid: at least one field: value")
        out: list[Condition] = []
        for key, value in data.items():
            here = (*loc, key)
            if key in ("any", "all"):
                if not isinstance(value, list) or not value:
                    self.problem(
                        here,
                        f"{key} takes a non-empty list of condition mappings; valid: e.g. "
                        f"{key}: [{{modality: CT}}, {{body_part: HEAD}}]",
                    )
                    continue
                items = tuple(_joined(self.mapping(v, (*here, i))) for i, v in enumerate(value))
                out.append(AnyOf(items) if key == "any" else All(items))
            elif key == "not":
                out.append(Not(_joined(self.mapping(value, here))))
            else:
                spec = self.field(key, here)
                if spec is not None:
                    out.extend(self.value(spec, value, here, case_sensitive=False))
        return out

    def field(self, key: Any, loc: Loc) -> FieldSpec | None:
        name = str(key)
        if name.startswith(TAG_PREFIX) and self.fields is FIELDS:
            written = name.removeprefix(TAG_PREFIX)
            try:
                canonical, kind = self.resolve_tag(written)
            except ValueError as exc:
                self.problem(loc, str(exc))
                return None
            return tag_field(written, canonical, kind)
        if name.startswith(RESULT_PREFIX) and self.fields is FIELDS:
            try:
                return result_field(name)
            except ValueError as exc:
                self.problem(loc, str(exc))
                return None
        spec = self.fields.get(name)
        if spec is None and self.fields is SERIES_FIELDS:  # series selectors: prefix optional
            spec = self.fields.get(f"series.{name}")
        if spec is None:
            hint = did_you_mean(name, [*self.fields, *COMBINATORS])
            self.problem(loc, f"unknown field '{name}'{hint}; valid: {self.valid_fields()}")
        return spec

    # one field's value ----------------------------------------------------

    def value(
        self, spec: FieldSpec, value: Any, loc: Loc, *, case_sensitive: bool
    ) -> list[Condition]:
        if not isinstance(value, Mapping):
            if isinstance(value, list) and spec.kind is not Kind.TEXT_LIST:
                leaf = self.leaf(spec, Op.IN, value, loc, case_sensitive)
            else:
                leaf = self.leaf(spec, Op.EQ, value, loc, case_sensitive)
            return [leaf] if leaf is not None else []
        ops = dict(value)
        if "case_sensitive" in ops:
            flag = ops.pop("case_sensitive")
            if not isinstance(flag, bool):
                self.problem((*loc, "case_sensitive"), "case_sensitive takes true or false")
            elif spec.kind is Kind.NUMBER:
                self.problem(
                    (*loc, "case_sensitive"),
                    f"case_sensitive applies to text; {spec.name} is a number",
                )
            else:
                case_sensitive = flag
        if not ops:
            self.problem(loc, f"no operator for {spec.name}; valid: {', '.join(OPERATORS)}")
        out: list[Condition] = []
        for name, wanted in ops.items():
            here = (*loc, name)
            if name == "not":
                inner = self.value(spec, wanted, here, case_sensitive=case_sensitive)
                if inner:
                    out.append(Not(_joined(inner)))
                continue
            try:
                op = Op(name)
            except ValueError:
                hint = did_you_mean(str(name), OPERATORS)
                self.problem(
                    here, f"unknown operator '{name}'{hint}; valid: {', '.join(OPERATORS)}"
                )
                continue
            leaf = self.leaf(spec, op, wanted, here, case_sensitive)
            if leaf is not None:
                out.append(leaf)
        return out

    def leaf(
        self, spec: FieldSpec, op: Op, wanted: Any, loc: Loc, case_sensitive: bool
    ) -> Leaf | None:
        numeric = spec.kind is Kind.NUMBER
        if op in COMPARISONS:
            if not numeric:
                numbers = ", ".join(n for n, f in self.fields.items() if f.kind is Kind.NUMBER)
                self.problem(
                    loc,
                    f"impossible comparison: {spec.name} is {spec.kind.value}, and {op} "
                    f"compares numbers; valid for {spec.name}: eq, in, regex, exists, not "
                    f"(fields that are numbers: {numbers})",
                )
                return None
            number = _number(wanted)
            if number is None:
                self.problem(loc, f"{op} takes a number, got {wanted!r}")
                return None
            return Leaf(spec, op, number, f"{_SYMBOL[op]} {_shown_number(number, wanted)}")
        if op is Op.EXISTS:
            if not isinstance(wanted, bool):
                self.problem(loc, f"exists takes true or false, got {wanted!r}")
                return None
            return Leaf(spec, op, wanted, "present" if wanted else "absent")
        if op is Op.REGEX:
            return self.regex(spec, wanted, loc, case_sensitive)
        if op is Op.IN:
            if not isinstance(wanted, list) or not wanted:
                self.problem(loc, f"in takes a non-empty list, got {wanted!r}; e.g. in: [A, B]")
                return None
            values = self.values(spec, wanted, loc, case_sensitive)
            if values is None:
                return None
            shown = ", ".join(str(v) for v in wanted)
            return Leaf(spec, op, frozenset(values), f"one of {shown}", case_sensitive)
        # eq
        if isinstance(wanted, list) and spec.kind is Kind.TEXT_LIST and wanted:
            values = self.values(spec, wanted, loc, case_sensitive)
            if values is None:
                return None
            shown = " and ".join(str(v) for v in wanted)
            return Leaf(spec, op, tuple(values), f"{shown} (all)", case_sensitive)
        values = self.values(spec, [wanted], loc, case_sensitive)
        if values is None:
            return None
        shown = _shown_number(values[0], wanted) if numeric else str(wanted)
        return Leaf(spec, op, values[0], shown, case_sensitive)

    def regex(self, spec: FieldSpec, wanted: Any, loc: Loc, case_sensitive: bool) -> Leaf | None:
        if spec.kind is Kind.NUMBER:
            self.problem(
                loc,
                f"regex applies to text; {spec.name} is a number; "
                "valid: eq, in, lt, lte, gt, gte, exists, not",
            )
            return None
        if not isinstance(wanted, str):
            self.problem(loc, f"regex takes a text pattern, got {wanted!r}")
            return None
        try:
            pattern = re.compile(wanted, 0 if case_sensitive else re.IGNORECASE)
        except re.error as exc:
            self.problem(
                loc,
                f"bad regex {wanted!r}: {exc.msg} at position {exc.pos}; "
                "valid: a Python regular expression (re.search), e.g. 'lung|thorax'",
            )
            return None
        return Leaf(spec, Op.REGEX, wanted, f"matching /{wanted}/", case_sensitive, pattern)

    def values(
        self, spec: FieldSpec, wanted: list[Any], loc: Loc, case_sensitive: bool
    ) -> list[Any] | None:
        out: list[Any] = []
        for item in wanted:
            if spec.kind is Kind.NUMBER:
                number = _number(item)
                if number is None:
                    self.problem(loc, f"{spec.name} is a number; got {item!r}")
                    return None
                if spec.name == "time.hour" and not (0 <= number <= 23):
                    self.problem(loc, f"time.hour is 0 to 23; got {item!r}")
                    return None
                out.append(number)
                continue
            text = _scalar_text(item)
            if text is None:
                hint = " (use {exists: false} for a missing value)" if item is None else ""
                hint = hint or " (quote yes/no/true/false to mean text)" * isinstance(item, bool)
                self.problem(loc, f"{spec.name} is text; got {item!r}{hint}")
                return None
            text = text.strip()
            if spec.vocabulary:
                folded = text.casefold()
                folded = _FULL_WEEKDAYS.get(folded, folded)
                if folded not in spec.vocabulary:
                    hint = did_you_mean(folded, spec.vocabulary)
                    self.problem(
                        loc,
                        f"unknown {spec.name} '{text}'{hint}; valid: {', '.join(spec.vocabulary)}",
                    )
                    return None
                text = folded
            out.append(text if case_sensitive else text.casefold())
        return out


_FULL_WEEKDAYS = {
    name: name[:3]
    for name in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
}


def _joined(items: list[Condition]) -> Condition:
    return items[0] if len(items) == 1 else All(tuple(items))


def parse_when(data: Any, resolve_tag: TagResolver = plain_tag) -> Conditions:
    """Parse a ``when:`` mapping; raise :class:`RuleError` listing every problem."""
    if data is None:
        data = {}
    parser = _Parser(resolve_tag, FIELDS)
    items = parser.mapping(data, (), top=True)
    if parser.problems:
        raise RuleError(parser.problems)
    return Conditions(tuple(items))


def parse_series(data: Any, resolve_tag: TagResolver = plain_tag) -> SeriesSelector:
    """Parse a route's ``series:``: a selector name or a mapping of series conditions."""
    if data is None:
        return SeriesSelector()
    if isinstance(data, str):
        if data in NAMED_SELECTORS:
            return SeriesSelector(SelectorName(data))
        hint = did_you_mean(data, NAMED_SELECTORS)
        raise RuleError(
            [
                (
                    (),
                    f"unknown series selector '{data}'{hint}; valid: "
                    f"{', '.join(NAMED_SELECTORS)}, or series conditions such as "
                    "{modality: CT, slice_thickness: {lte: 1.5}}",
                )
            ]
        )
    parser = _Parser(resolve_tag, SERIES_FIELDS)
    items = parser.mapping(data, ())
    if parser.problems:
        raise RuleError(parser.problems)
    return SeriesSelector(SelectorName.CONDITIONS, Conditions(tuple(items)))
