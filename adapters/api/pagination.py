"""Keyset pagination: ``limit`` (1 to 500) and an opaque ``cursor`` from the last page's ``next``.

Every listing answers ``{"items": [...], "next": CURSOR | null}``; ask again
with ``?cursor=CURSOR`` (and the same filters) for the page after. A cursor
is the sort key of the last row, so a page costs the same however deep it is
and rows added meanwhile never shift the pages.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any, Generic, TypeGuard, TypeVar

from fastapi import HTTPException, Query
from pydantic import BaseModel

MAX_LIMIT = 500
#: Largest row id a store holds (a signed 64-bit integer in SQLite and PostgreSQL).
MAX_ROW_ID = 2**63 - 1
DEFAULT_LIMIT = 100

T = TypeVar("T")

Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page, at most {MAX_LIMIT}.")
]
CursorParam = Annotated[
    str | None, Query(description="The `next` of the page before; omit for the first page.")
]


class Page(BaseModel, Generic[T]):
    """One page of a listing; ``next`` is the cursor of the following page (null: the last)."""

    items: list[T]
    next: str | None = None


def encode(key: list[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, "the cursor is not one this API gave; start again") from exc
    if not isinstance(value, list):
        raise HTTPException(400, "the cursor is not one this API gave; start again")
    return value


def _row_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ROW_ID


def id_key(cursor: str | None) -> int | None:
    """The id a cursor of an id-ordered listing stands for."""
    if cursor is None:
        return None
    value = _decode(cursor)
    if len(value) != 1 or not _row_id(value[0]):
        raise HTTPException(400, "the cursor is not one of this listing; start again")
    return value[0]


def time_key(cursor: str | None) -> tuple[datetime, int] | None:
    """The (time, id) a cursor of a time-ordered listing stands for."""
    if cursor is None:
        return None
    value = _decode(cursor)
    try:
        at, row_id = value
        moment = datetime.fromisoformat(at)
    except (TypeError, ValueError) as exc:
        raise HTTPException(400, "the cursor is not one of this listing; start again") from exc
    if not _row_id(row_id) or moment.tzinfo is None:
        raise HTTPException(400, "the cursor is not one of this listing; start again")
    return moment, row_id
