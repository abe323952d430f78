"""Settings of write-back: the ``targets`` block (PACS, RIS, EMR) and ``notifications``.

```yaml
targets:
  pacs:     {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  pacs_web: {type: dicomweb, url: http://pacs.local/dicom-web}
  ris:      {type: hl7, host: ris.local, port: 2576}
  emr:      {type: fhir, url: https://emr.local/fhir}
notifications:
  webhook: {url: https://alerts.local/radbridge}
  ris_status: {target: ris}
routes:
  - {name: head-ct-bleed, ..., write_back: [pacs, ris]}
```

Tokens (``dicomweb``, ``fhir``, the webhook) come only from the environment:
``RADBRIDGE_TARGETS__<NAME>__TOKEN``, ``RADBRIDGE_NOTIFICATIONS__WEBHOOK__TOKEN``.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator

from broker.model.errors import did_you_mean
from config.base import AETitle, LocatedErrors, Port, Strict
from config.vendors import Duration

TargetName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
Hl7Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^|^~\\&\r\n]+$")]


class TargetType(enum.StrEnum):
    """How radbridge writes results back to a target."""

    DICOM = "dicom"
    DICOMWEB = "dicomweb"
    HL7 = "hl7"
    FHIR = "fhir"


_TARGET_FIELDS: dict[TargetType, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TargetType.DICOM: (("ae_title", "host", "port"), ("calling_ae", "timeout", "max_pdu")),
    TargetType.DICOMWEB: (("url",), ("token", "timeout")),
    TargetType.HL7: (
        ("host", "port"),
        (
            "timeout",
            "application",
            "facility",
            "receiving_application",
            "receiving_facility",
            "charset",
        ),
    ),
    TargetType.FHIR: (("url",), ("token", "timeout")),
}
"""Per target type: (required fields, optional fields); ``retries`` fits every type."""


class Target(Strict):
    """One place results are written back to. ``retries`` is the maximum number of attempts."""

    type: TargetType
    ae_title: AETitle | None = None
    host: str | None = None
    port: Port | None = None
    calling_ae: AETitle | None = None
    max_pdu: Annotated[int, Field(ge=0)] | None = None
    url: str | None = None
    token: SecretStr | None = None
    timeout: Duration | None = None
    application: Hl7Name | None = None
    """``hl7``: MSH-3, radbridge's name (default RADBRIDGE)."""
    facility: Hl7Name | None = None
    """``hl7``: MSH-4 (default RADBRIDGE)."""
    receiving_application: Hl7Name | None = None
    """``hl7``: MSH-5, the RIS's name."""
    receiving_facility: Hl7Name | None = None
    """``hl7``: MSH-6."""
    charset: str | None = None
    """``hl7``: MSH-18; ``UNICODE UTF-8`` (default), ``8859/1``, ``GB 18030-2000`` or ``ASCII``."""
    retries: Annotated[int, Field(ge=1, le=100)] = 5

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        valid = [t.value for t in TargetType]
        if isinstance(value, str) and value not in valid:
            raise ValueError(
                f"no such write-back target '{value}'{did_you_mean(value, valid)}; "
                f"valid: {', '.join(valid)}"
            )
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {value!r}; valid: https://host/path")
        return value

    @field_validator("charset")
    @classmethod
    def _charset(cls, value: str | None) -> str | None:
        valid = ("UNICODE UTF-8", "8859/1", "GB 18030-2000", "ASCII")
        if value is not None and value not in valid:
            raise ValueError(
                f"unsupported MSH-18 character set {value!r}; valid: {', '.join(valid)}"
            )
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> Target:
        required, optional = _TARGET_FIELDS[self.type]
        problems: list[tuple[tuple[str | int, ...], str]] = []
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            problems.append(
                (
                    (),
                    f"a {self.type} target needs {', '.join(missing)}; "
                    f"valid: {{type: {self.type}, {', '.join(f'{n}: …' for n in required)}}}",
                )
            )
        for name in type(self).model_fields:
            if (
                name not in ("type", "retries")
                and getattr(self, name) is not None
                and name not in required + optional
            ):
                problems.append(
                    (
                        (name,),
                        f"{name} is not used by a {self.type} target; "
                        f"valid: {', '.join(('type', *required, *optional, 'retries'))}",
                    )
                )
        if problems:
            raise LocatedErrors(problems)
        return self

    def params(self) -> dict[str, Any]:
        """The fields set for this target type, for the target adapter (token kept secret)."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in ("type", "retries") and getattr(self, name) is not None
        }


class Webhook(Strict):
    """Where notifications are POSTed as JSON (urgent results, overdue jobs)."""

    url: str
    token: SecretStr | None = None
    """Sent as ``Authorization: Bearer …`` (environment only)."""
    timeout: Duration = 10.0
    retries: Annotated[int, Field(ge=1, le=100)] = 5

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {value!r}; valid: https://host/path")
        return value


class RisStatus(Strict):
    """Send the RIS an order-status update (ORM^O01, ORC-1 SC, priority S) for urgent results."""

    target: str


class Notifications(Strict):
    """Who hears about urgent results and overdue jobs."""

    webhook: Webhook | None = None
    ris_status: RisStatus | None = None
    overdue_check_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often jobs are checked against their route's deadline."""


_KNOWN_TARGETS: ContextVar[tuple[str, ...] | None] = ContextVar("known_targets", default=None)


def check_write_back(value: list[str]) -> list[str]:
    """A route's ``write_back`` names: each a configured target, none twice."""
    known = _KNOWN_TARGETS.get()
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, name in enumerate(value):
        if known is not None and name not in known:
            listed = ", ".join(known) if known else "none (add a targets: block)"
            problems.append(
                (
                    (i,),
                    f"unknown write-back target '{name}'{did_you_mean(name, known)}; "
                    f"known targets: {listed}",
                )
            )
        elif name in value[:i]:
            problems.append(((i,), f"target '{name}' is listed twice"))
    if problems:
        raise LocatedErrors(problems)
    return value


def check_notifications(
    notifications: Notifications, targets: dict[str, Target]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems of the ``notifications`` block against the ``targets`` block."""
    status = notifications.ris_status
    if status is None:
        return []
    hl7 = [name for name, t in targets.items() if t.type is TargetType.HL7]
    if status.target not in hl7:
        return [
            (
                ("notifications", "ris_status", "target"),
                f"'{status.target}' is not an hl7 target{did_you_mean(status.target, hl7)}; "
                f"valid: {', '.join(hl7) or 'none (add a target of type hl7)'}",
            )
        ]
    return []
