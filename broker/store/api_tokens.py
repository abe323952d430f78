"""Bearer tokens of the HTTP API, each with a role; the store keeps only their SHA-256.

``radbridge tokens create`` makes one; the HTTP API (FHIR today, the REST API
and console later) checks it with :meth:`ApiTokens.verify`. A revoked token
opens nothing. ``last_used_at`` is written at most once a minute per token, so
a busy client does not turn every read into a write.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import Role
from broker.model.errors import NotFoundError, StoreError
from broker.model.logging import get_logger
from broker.model.sites import join_sites, parse_sites
from broker.store.engine import writing
from broker.store.job_tokens import token_digest
from broker.store.tables import api_tokens

LOG = get_logger("radbridge.store.api_tokens")

#: ``last_used_at`` is refreshed when it is older than this.
TOUCH_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token as the store lists it: never the token itself."""

    id: int
    role: Role
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    sites: frozenset[str] | None = None
    """The sites it is limited to (:mod:`broker.model.sites`); None: every site."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _token(row: Row[tuple[object, ...]]) -> ApiToken:
    m = row._mapping
    return ApiToken(
        id=m["id"],
        role=Role(m["role"]),
        name=m["name"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
        sites=parse_sites(m["sites"]),
    )


class ApiTokens:
    """Create, verify, list and revoke HTTP API tokens in table ``api_tokens``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        role: Role,
        name: str | None = None,
        *,
        now: datetime | None = None,
        sites: Collection[str] | None = None,
    ) -> str:
        """A new random token with ``role`` (limited to ``sites`` when given); only its
        SHA-256 is stored. Shown once."""
        role = Role(role)
        if name is not None and len(name) > 128:
            raise ValueError(f"token name is {len(name)} characters; valid: at most 128")
        token = secrets.token_urlsafe(32)
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    insert(api_tokens).values(
                        token_sha256=token_digest(token),
                        role=role.value,
                        name=name,
                        created_at=now or datetime.now(UTC),
                        sites=join_sites(sites),
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create an API token: {exc}") from exc
        return token

    def verify(self, token: str, *, now: datetime | None = None) -> Role | None:
        """The role of ``token``, or None when it is unknown or revoked."""
        found = self.identify(token, now=now)
        return None if found is None else found.role

    def identify(self, token: str, *, now: datetime | None = None) -> ApiToken | None:
        """The active token ``token`` is (id, name, role: who acts), or None."""
        if not token:
            return None
        now = now or datetime.now(UTC)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_tokens).where(api_tokens.c.token_sha256 == token_digest(token))
            ).one_or_none()
        if row is None:
            return None
        found = _token(row)
        if not found.active:
            return None
        if found.last_used_at is None or now - found.last_used_at >= TOUCH_INTERVAL:
            self._touch(found.id, now)
        return found

    def _touch(self, token_id: int, now: datetime) -> None:
        stale = now - TOUCH_INTERVAL
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(api_tokens)
                    .where(
                        api_tokens.c.id == token_id,
                        or_(
                            api_tokens.c.last_used_at.is_(None),
                            api_tokens.c.last_used_at <= stale,
                        ),
                    )
                    .values(last_used_at=now)
                )
        except SQLAlchemyError as exc:  # the request still counts: this is bookkeeping
            LOG.warning("cannot record a token's last use", token_id=token_id, error=str(exc))

    def get(self, token_id: int) -> ApiToken:
        """One token by id; ``NotFoundError`` if there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no API token {token_id}")
        return _token(row)

    def list(self) -> builtins.list[ApiToken]:
        """Every token, revoked ones included, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.id)).all()
        return [_token(r) for r in rows]

    def revoke(self, token_id: int, *, now: datetime | None = None) -> ApiToken:
        """Revoke a token (from now on it opens nothing); revoking twice keeps the first time."""
        try:
            with writing(self.engine) as conn:
                done = conn.execute(
                    update(api_tokens)
                    .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                    .values(revoked_at=now or datetime.now(UTC))
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot revoke API token {token_id}: {exc}") from exc
        token = self.get(token_id)
        if done.rowcount == 0:
            LOG.info("API token was already revoked", token_id=token_id)
        return token
