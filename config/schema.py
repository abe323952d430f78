"""The settings schema: what radbridge's YAML file may contain.

Every field is validated by pydantic; unknown keys are errors. Secrets are
``SecretStr`` fields that may only come from the environment
(``RADBRIDGE_`` prefix, ``__`` between nested names).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

Port = Annotated[int, Field(ge=1, le=65535)]
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ]$")]


class Strict(BaseModel):
    """Base of every settings block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AERole(enum.StrEnum):
    """What a called AE title of radbridge is for."""

    INGEST = "ingest"
    RESULTS = "results"


class Site(Strict):
    name: str = "radbridge"
    timezone: str = "UTC"


class Storage(Strict):
    spool: Path = Path("./var/spool")
    database: str = "sqlite:///./var/radbridge.db"
    database_password: SecretStr | None = None

    @field_validator("database")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not scheme.startswith(("sqlite", "postgresql")):
            raise ValueError(
                f"unsupported database '{scheme}'; valid: sqlite:///PATH or "
                "postgresql://USER@HOST:PORT/DB (password in RADBRIDGE_STORAGE__DATABASE_PASSWORD)"
            )
        if "@" in value and ":" in value.split("://", 1)[-1].split("@", 1)[0]:
            raise ValueError(
                "the database URL holds a password; put it in the environment "
                "variable RADBRIDGE_STORAGE__DATABASE_PASSWORD instead"
            )
        return value


class Bus(Strict):
    url: str = "memory://"


class Listen(Strict):
    host: str = "127.0.0.1"
    port: Port = 11112


class TLS(Strict):
    """TLS for the DICOM listener (DICOM PS3.15 B.1 style, TLS 1.2+)."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    key_password: SecretStr | None = None


class CalledAE(Strict):
    role: AERole
    stable_seconds: Annotated[float, Field(gt=0)] | None = None


class Peer(Strict):
    """A sender allowed in: calling AE title, optionally pinned to an address."""

    ae_title: AETitle
    host: str | None = None
    port: Port | None = None


class Dicom(Strict):
    listen: Listen = Listen()
    ae_titles: dict[AETitle, CalledAE] = Field(
        default_factory=lambda: {"RADBRIDGE": CalledAE(role=AERole.INGEST)}
    )
    peers: list[Peer] = Field(default_factory=list)
    allow_any_peer: bool = False
    study_stable_seconds: Annotated[float, Field(gt=0)] = 10.0
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    processes: Annotated[int, Field(ge=0, le=64)] = 0
    max_pdu_size: Annotated[int, Field(ge=0)] = 262144
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    tls: TLS | None = None

    @field_validator("ae_titles", mode="before")
    @classmethod
    def _role_shorthand(cls, value: Any) -> Any:
        """Accept ``{RADBRIDGE: ingest}`` as well as ``{RADBRIDGE: {role: ingest}}``."""
        if isinstance(value, dict):
            return {k: ({"role": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _peers_or_open(self) -> Dicom:
        if not self.ae_titles:
            raise ValueError(
                "dicom.ae_titles is empty; name at least one, e.g. {RADBRIDGE: ingest}"
            )
        return self


class Logging(Strict):
    level: str = "INFO"
    format: str = "auto"
    phi: bool = False

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        valid = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if value.upper() not in valid:
            raise ValueError(f"unknown log level '{value}'; valid: {', '.join(valid)}")
        return value.upper()

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        valid = ("auto", "console", "json")
        if value not in valid:
            raise ValueError(f"unknown log format '{value}'; valid: {', '.join(valid)}")
        return value


class Settings(Strict):
    """The whole configuration of one radbridge installation."""

    site: Site = Site()
    storage: Storage = Storage()
    bus: Bus = Bus()
    dicom: Dicom = Dicom()
    logging: Logging = Logging()

    def database_url(self) -> str:
        """The SQLAlchemy URL with the password from the environment filled in."""
        url = self.storage.database
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        password = self.storage.database_password
        if password is not None and "://" in url and "@" in url:
            scheme, rest = url.split("://", 1)
            user, host = rest.split("@", 1)
            url = f"{scheme}://{user}:{quote(password.get_secret_value(), safe='')}@{host}"
        return url

    def stable_seconds_for(self, called_ae: str) -> float:
        """Quiet time after which a study sent to ``called_ae`` is complete."""
        ae = self.dicom.ae_titles.get(called_ae)
        if ae is not None and ae.stable_seconds is not None:
            return ae.stable_seconds
        return self.dicom.study_stable_seconds


SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("storage", "database_password"),
    ("dicom", "tls", "key_password"),
)
