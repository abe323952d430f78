"""Console users and console sessions in the store.

Users log in to the operations console with a password, kept only as an
argon2id hash (argon2-cffi's ``PasswordHasher``, its default parameters;
re-hashed on login when those change). Roles are the API tokens' roles:
viewers read, operators also act on jobs and deliveries, admins also read the
audit trail. A user is disabled, never deleted, so the audit trail's names
stay meaningful.

A session is a row keyed by the SHA-256 of a random cookie value (the cookie
itself is never stored), for a user or for an API token, with its own CSRF
token. Every read checks that the user is not disabled (or the token not
revoked) and takes the role from there, so disabling a user or revoking a
token ends their sessions at once.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from broker.model.domain import Role
from broker.model.errors import NotFoundError, RadbridgeError, StoreError
from broker.model.sites import join_sites, parse_sites
from broker.store.engine import writing
from broker.store.tables import api_tokens, console_sessions, console_users

#: What a username may be: letters, digits and ``._-@``, 1 to 64 characters.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
#: A session ends after this long without a request…
IDLE = timedelta(hours=2)
#: …and at the latest this long after the login.
LIFETIME = timedelta(hours=12)
#: ``last_seen_at`` is written at most this often.
TOUCH = timedelta(seconds=60)

_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so that both cost the same time.

    Made on first use: an argon2 hash costs a noticeable fraction of a second, which
    every ``radbridge`` command would otherwise pay at import.
    """
    return _HASHER.hash(secrets.token_hex(16))


class UserError(RadbridgeError):
    """A console user cannot be made or changed as asked (name taken, password too short…)."""


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A console user as the store lists it: never the password hash."""

    id: int
    username: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None
    language: str | None = None
    """Their choice of language (``en``, ``zh_CN``); None: the site's."""
    sites: frozenset[str] | None = None
    """The sites they are limited to; None: every site."""

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True, slots=True)
class Session:
    """Who a console request comes from: a user or an API token, with role and CSRF token."""

    id: str
    """The SHA-256 of the cookie value."""
    subject: str
    """``alice`` for a user, ``token:3 (ris)`` for an API token."""
    role: Role
    csrf: str
    user_id: int | None
    token_id: int | None
    expires_at: datetime
    language: str | None = None
    """The user's choice of language; None: the site's (and always for an API token)."""
    sites: frozenset[str] | None = None
    """The sites the user or token is limited to (:mod:`broker.model.sites`); None: all."""

    @property
    def actor(self) -> str:
        """How the audit trail names who acted: ``console:alice``."""
        return f"console:{self.subject}"


def _user(r: Row[Any]) -> ConsoleUser:
    return ConsoleUser(
        id=r.id,
        username=r.username,
        role=Role(r.role),
        created_at=r.created_at,
        disabled_at=r.disabled_at,
        last_login_at=r.last_login_at,
        language=r.language,
        sites=parse_sites(r.sites),
    )


def check_password(password: str) -> None:
    """Raise :class:`UserError` unless ``password`` is long enough (and not absurdly long)."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(
            f"the password has {len(password)} characters; valid: {MIN_PASSWORD} to {MAX_PASSWORD}"
        )


class ConsoleUsers:
    """Table ``console_users``: add, verify, list, disable, enable, set a password."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(
        self, username: str, password: str, role: Role, *, now: datetime | None = None
    ) -> ConsoleUser:
        """A new user; :class:`UserError` if the name is taken or invalid or the password short."""
        if not USERNAME.fullmatch(username):
            raise UserError(
                f"username {username!r} is not valid; valid: 1 to 64 letters, digits and ._-@, "
                "starting with a letter or digit"
            )
        check_password(password)
        values = {
            "username": username,
            "password_hash": _HASHER.hash(password),
            "role": Role(role).value,
            "created_at": now or datetime.now(UTC),
        }
        try:
            with writing(self.engine) as conn:
                conn.execute(insert(console_users).values(values))
        except IntegrityError as exc:
            raise UserError(f"a console user '{username}' exists already") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot add console user '{username}': {exc}") from exc
        return self.get(username)

    def verify(
        self, username: str, password: str, *, now: datetime | None = None
    ) -> ConsoleUser | None:
        """The active user if the password is right, else None (the same time either way)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(console_users).where(console_users.c.username == username)
            ).one_or_none()
        stored = row.password_hash if row is not None else _dummy_hash()
        try:
            _HASHER.verify(stored, password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled_at is not None:
            return None
        values: dict[str, Any] = {"last_login_at": now or datetime.now(UTC)}
        if _HASHER.check_needs_rehash(stored):
            values["password_hash"] = _HASHER.hash(password)
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(console_users).where(console_users.c.id == row.id).values(values)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the login of '{username}': {exc}") from exc
        return self.get(username)

    def set_password(self, username: str, password: str) -> ConsoleUser:
        """Replace a user's password; their open sessions end."""
        check_password(password)
        user = self.get(username)
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(console_users)
                    .where(console_users.c.id == user.id)
                    .values(password_hash=_HASHER.hash(password))
                )
                conn.execute(delete(console_sessions).where(console_sessions.c.user_id == user.id))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot set the password of '{username}': {exc}") from exc
        return user

    def disable(self, username: str, *, now: datetime | None = None) -> ConsoleUser:
        """Disable a user (kept for the audit trail); their open sessions end."""
        user = self.get(username)
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(console_users)
                    .where(console_users.c.id == user.id, console_users.c.disabled_at.is_(None))
                    .values(disabled_at=now or datetime.now(UTC))
                )
                conn.execute(delete(console_sessions).where(console_sessions.c.user_id == user.id))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot disable '{username}': {exc}") from exc
        return self.get(username)

    def enable(self, username: str) -> ConsoleUser:
        """Let a disabled user log in again."""
        return self._update(username, "enable", disabled_at=None)

    def set_language(self, username: str, language: str | None) -> ConsoleUser:
        """The language the console speaks to ``username``; None: the site's."""
        return self._update(username, "set the language of", language=language)

    def set_sites(self, username: str, sites: Collection[str] | None) -> ConsoleUser:
        """Limit ``username`` to ``sites`` (None: every site); their open sessions see the
        new scope at their next request."""
        return self._update(username, "set the sites of", sites=join_sites(sites))

    def _update(self, username: str, doing: str, **values: Any) -> ConsoleUser:
        """Set ``values`` on one user's row; the user as it is then."""
        user = self.get(username)
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(console_users).where(console_users.c.id == user.id).values(**values)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot {doing} '{username}': {exc}") from exc
        return self.get(username)

    def get(self, username: str) -> ConsoleUser:
        """One user by name; :class:`NotFoundError` if there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(console_users).where(console_users.c.username == username)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no console user '{username}'")
        return _user(row)

    def list(self) -> builtins.list[ConsoleUser]:
        """Every user, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(console_users).order_by(console_users.c.username)).all()
        return [_user(r) for r in rows]


def session_digest(cookie: str) -> str:
    """The key a session is stored under: the SHA-256 of its cookie value."""
    return hashlib.sha256(cookie.encode()).hexdigest()


class ConsoleSessions:
    """Table ``console_sessions``: open, read (checking the user or token), close."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open(
        self,
        *,
        user_id: int | None = None,
        token_id: int | None = None,
        peer: str = "",
        now: datetime | None = None,
    ) -> tuple[str, Session]:
        """A new session for a user or an API token: the cookie value (shown once) and the session.

        Expired sessions are removed on the way.
        """
        if (user_id is None) == (token_id is None):
            raise ValueError("a session is for a user or for a token, exactly one of them")
        now = now or datetime.now(UTC)
        cookie = secrets.token_urlsafe(32)
        values = {
            "id": session_digest(cookie),
            "user_id": user_id,
            "token_id": token_id,
            "csrf": secrets.token_urlsafe(32),
            "peer": peer[:64],
            "created_at": now,
            "last_seen_at": now,
            "expires_at": now + LIFETIME,
        }
        try:
            with writing(self.engine) as conn:
                conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
                conn.execute(insert(console_sessions).values(values))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open a console session: {exc}") from exc
        found = self.get(cookie, now=now)
        assert found is not None
        return cookie, found

    def get(self, cookie: str, *, now: datetime | None = None) -> Session | None:
        """The live session of a cookie value, or None (unknown, expired, idle too long, or its
        user disabled or token revoked)."""
        if not cookie or len(cookie) > 256:
            return None
        now = now or datetime.now(UTC)
        s, u, t = console_sessions, console_users, api_tokens
        stmt = (
            select(
                s,
                u.c.username,
                u.c.role.label("user_role"),
                u.c.disabled_at,
                u.c.language,
                u.c.sites.label("user_sites"),
                t.c.sites.label("token_sites"),
                t.c.name.label("token_name"),
                t.c.role.label("token_role"),
                t.c.revoked_at,
            )
            .select_from(s.outerjoin(u, u.c.id == s.c.user_id).outerjoin(t, t.c.id == s.c.token_id))
            .where(s.c.id == session_digest(cookie))
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).one_or_none()
        if row is None or row.expires_at <= now or now - row.last_seen_at > IDLE:
            return None
        if row.user_id is not None:
            if row.username is None or row.disabled_at is not None:
                return None
            subject, role, scope = row.username, row.user_role, row.user_sites
        else:
            if row.token_role is None or row.revoked_at is not None:
                return None
            subject = (
                f"token:{row.token_id} ({row.token_name})"
                if row.token_name
                else (f"token:{row.token_id}")
            )
            role, scope = row.token_role, row.token_sites
        if now - row.last_seen_at >= TOUCH:
            self._touch(row.id, now)
        return Session(
            id=row.id,
            subject=subject,
            role=Role(role),
            csrf=row.csrf,
            user_id=row.user_id,
            token_id=row.token_id,
            expires_at=row.expires_at,
            language=row.language,
            sites=parse_sites(scope),
        )

    def _touch(self, session_id: str, now: datetime) -> None:
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(console_sessions)
                    .where(console_sessions.c.id == session_id)
                    .values(last_seen_at=now)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record a console session's use: {exc}") from exc

    def close(self, session_id: str) -> None:
        """End a session (log out)."""
        try:
            with writing(self.engine) as conn:
                conn.execute(delete(console_sessions).where(console_sessions.c.id == session_id))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot close a console session: {exc}") from exc
