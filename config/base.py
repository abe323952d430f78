"""What every settings block shares: strict models, DICOM ports and AE titles, durations,
URLs, located errors. Plugins' settings models (vendor transports, write-back targets)
use these types too."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

Port = Annotated[int, Field(ge=1, le=65535)]
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ]$")]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or text like ``30s``, ``15m``, ``1h``, ``1h30m``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(
        f"not a duration: {value!r}; valid: seconds as a number, or text like 30s, 15m, 1h, 1h30m"
    )


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def parse_end(value: str, tz: str, now: datetime) -> datetime:
    """An end time people type: a duration from ``now`` (``2h``, ``1h30m``) or an ISO 8601
    time (without an offset in the timezone ``tz``); UTC. ValueError naming what is valid."""
    text = value.strip()
    valid = (
        "valid: ISO 8601 (2024-05-01T18:00, site timezone unless it has an offset) "
        "or a duration from now (2h, 30m, 1h30m)"
    )
    try:
        try:
            seconds = parse_duration(text)
        except ValueError:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=ZoneInfo(tz))
            moment = moment.astimezone(UTC)
        else:
            moment = now + timedelta(seconds=seconds)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{value!r} is neither a time nor a duration; {valid}") from exc
    if moment <= now:
        raise ValueError(f"{value!r} is not after now; {valid}")
    return moment


"""Seconds, written as a number or as text like ``30s``, ``15m``, ``1h30m``."""
Timeout = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=3600)]
"""A network timeout: seconds (a number or ``30s``, ``2m``), at most an hour."""


def _space_amount(value: Any) -> str:
    """``value`` as text if it is bytes (a number, ``500MB``, ``2GiB``) or a percentage."""
    text = str(value).strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            percent = -1.0
        if 0 <= percent < 100:
            return text
    else:
        try:
            _BYTES.validate_python(text)
            return text
        except ValidationError:
            pass
    raise ValueError(
        f"not an amount of space: {value!r}; valid: bytes (1000000, 500MB, 2GiB) "
        "or a share of the file system (5%)"
    )


def space_bytes(amount: str, total: int) -> int:
    """A :data:`SpaceAmount` in bytes, on a file system of ``total`` bytes."""
    if amount.endswith("%"):
        return int(total * float(amount[:-1]) / 100)
    return int(_BYTES.validate_python(amount))


_BYTES: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)
SpaceAmount = Annotated[str, BeforeValidator(_space_amount)]
"""Disk space: bytes (``1000000``, ``500MB``, ``2GiB``) or a percentage (``5%``)."""


def http_url(value: str) -> str:
    """``value`` if it is an http(s) URL with a host, else a ValueError saying what is valid."""
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest.strip("/"):
        raise ValueError(f"not an http(s) URL: {value!r}; valid: https://host/path")
    return value


HttpUrl = Annotated[str, AfterValidator(http_url)]
"""An ``http://`` or ``https://`` URL, kept as written."""


class Strict(BaseModel):
    """Base of every settings block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LocatedErrors(ValueError):  # noqa: N818 - pydantic turns a ValueError into an error
    """Problems at locations below the value being validated.

    ``items`` holds (location relative to the validated value, message); the
    loader reports each at its own ``FILE:LINE``.
    """

    def __init__(self, items: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.items = items
        super().__init__("; ".join(message for _, message in items))
