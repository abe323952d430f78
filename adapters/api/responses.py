"""The REST API's error answers: one body shape, documented on every endpoint that can give it.

Every error but a validation error answers ``{"detail": "what was wrong; valid: …"}``
(:class:`ErrorOut`). A validation error (422) has FastAPI's own shape, a list of
problems each naming its parameter, whether the parameter's type caught it or an
endpoint did (:func:`invalid`), so that clients read one 422 format. The
``responses=`` constants put the status codes an endpoint can answer into the
OpenAPI document: :data:`AUTH` on every ``/api/v1`` route, the others where
they apply.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel


class ErrorOut(BaseModel):
    """An error: what was wrong and, where it helps, what would have been valid."""

    detail: str


def error(description: str) -> dict[str, Any]:
    """One entry of a route's ``responses=``: ``description``, with the :class:`ErrorOut` body."""
    return {"model": ErrorOut, "description": description}


#: Every ``/api/v1`` route: no valid token, or a token whose role is too low.
AUTH: dict[int | str, dict[str, Any]] = {
    401: error("No `Authorization: Bearer` token, or an unknown or revoked one."),
    403: error("The token's role is too low for this operation (or for this filter)."),
}
#: A route that reads or acts on one record by its key.
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error("No such record.")}
#: A route that takes a JSON body: one that is not UTF-8 JSON at all (FastAPI's own answer).
BAD_BODY: dict[int | str, dict[str, Any]] = {400: error("The body cannot be parsed as JSON.")}
#: A paged listing: a ``cursor`` this listing did not hand out.
BAD_CURSOR: dict[int | str, dict[str, Any]] = {
    400: error("The cursor is not one this listing gave; ask for the first page again.")
}


def invalid(name: str, value: object, message: str, where: str = "query") -> RequestValidationError:
    """A 422 for parameter ``name`` that its type could not check, in FastAPI's own shape."""
    problem = {"type": "value_error", "loc": (where, name), "msg": message, "input": value}
    return RequestValidationError([problem])
