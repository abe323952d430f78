"""OperationOutcome: how the FHIR interface says what went wrong, and where.

Every error of the FHIR routes is an :class:`FhirError` carrying an HTTP status
and issues; each issue names the element (``expression``, FHIRPath such as
``ServiceRequest.identifier[0].value``) and says what would have been valid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response
from pydantic import ValidationError

FHIR_JSON = "application/fhir+json"

#: The OperationOutcome issue type (http://hl7.org/fhir/issue-type) per HTTP status.
ISSUE_CODE = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    500: "exception",
    503: "transient",
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: what is wrong (``diagnostics``) and where (``expression``)."""

    diagnostics: str
    expression: str | None = None
    code: str | None = None
    severity: str = "error"

    def to_fhir(self, status: int) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code or ISSUE_CODE.get(status, "processing"),
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


def operation_outcome(issues: Sequence[Issue], status: int = 400) -> dict[str, Any]:
    """An OperationOutcome resource (R4) of ``issues``."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [i.to_fhir(status) for i in issues],
    }


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A response with ``body`` as ``application/fhir+json``."""
    return Response(
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


@dataclass
class FhirError(Exception):
    """A FHIR request that ends with ``status`` and an OperationOutcome of ``issues``."""

    status: int
    issues: list[Issue]
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Exception.__init__(self, "; ".join(i.diagnostics for i in self.issues))

    @classmethod
    def one(
        cls,
        status: int,
        diagnostics: str,
        expression: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> FhirError:
        return cls(status, [Issue(diagnostics, expression, code)], headers or {})

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues, self.status)

    def response(self) -> Response:
        return fhir_response(self.outcome(), self.status, self.headers)


def fhirpath(prefix: str, loc: Sequence[int | str]) -> str:
    """``prefix`` followed by a pydantic error location in FHIRPath: ``X.a[0].b``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        else:
            path += f".{part}"
    return path


def issues_of(exc: ValidationError, prefix: str) -> list[Issue]:
    """One issue per error of a fhir.resources validation, naming the element."""
    issues = []
    for error in exc.errors(include_url=False):
        message = " ".join(str(error.get("msg", "invalid")).split())
        issues.append(
            Issue(
                f"{fhirpath(prefix, error['loc'])}: {message}",
                fhirpath(prefix, error["loc"]),
                code="required" if "missing" in str(error.get("type", "")) else "value",
            )
        )
    return issues or [Issue(f"{prefix} is not valid", prefix)]
