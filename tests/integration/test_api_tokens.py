"""HTTP API tokens: the store (hash only, roles, revocation, last use) and ``radbridge tokens``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine
from typer.testing import CliRunner

from broker.cli.main import app
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.store import make_engine
from broker.store.api_tokens import ApiTokens
from broker.store.job_tokens import token_digest
from tests import cli_fork
from tests.databases import DATABASES, empty_database


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated empty store on SQLite, and on PostgreSQL when marked."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def test_a_token_verifies_to_its_role_and_only_its_hash_is_stored(engine: Engine) -> None:
    """``verify`` gives the token's role; the table holds its SHA-256, not the token."""
    tokens = ApiTokens(engine)
    token = tokens.create(Role.OPERATOR, "RIS")
    assert len(token) >= 40
    assert tokens.verify(token) is Role.OPERATOR
    assert tokens.verify(token + "x") is None
    assert tokens.verify("") is None
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT token_sha256, role, name FROM api_tokens").all()
    assert [tuple(r) for r in rows] == [(token_digest(token), "operator", "RIS")]


def test_a_revoked_token_opens_nothing(engine: Engine) -> None:
    """After ``revoke`` the token verifies to None; ``list`` shows when it was revoked."""
    tokens = ApiTokens(engine)
    keep = tokens.create(Role.VIEWER)
    drop = tokens.create(Role.ADMIN, "old console")
    [first, second] = tokens.list()
    assert (first.role, second.role, second.name) == (Role.VIEWER, Role.ADMIN, "old console")
    revoked = tokens.revoke(second.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert tokens.verify(drop) is None
    assert tokens.verify(keep) is Role.VIEWER
    assert tokens.revoke(second.id).revoked_at == revoked.revoked_at
    with pytest.raises(NotFoundError):
        tokens.revoke(999)


def test_last_use_is_written_at_most_once_a_minute(engine: Engine) -> None:
    """``last_used_at`` is set on first use, kept for a minute, then moved on."""
    tokens = ApiTokens(engine)
    token = tokens.create(Role.VIEWER)
    t0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    tokens.verify(token, now=t0)
    tokens.verify(token, now=t0 + timedelta(seconds=30))
    [listed] = tokens.list()
    assert listed.last_used_at == t0
    tokens.verify(token, now=t0 + timedelta(seconds=61))
    [listed] = tokens.list()
    assert listed.last_used_at == t0 + timedelta(seconds=61)


def test_roles_are_ordered_viewer_operator_admin() -> None:
    """An admin token covers operator and viewer; a viewer covers only viewer."""
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration whose store is a SQLite file in ``tmp_path``."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "spool": str(tmp_path / "spool"),
                    "database": f"sqlite:///{tmp_path}/rb.db",
                }
            }
        )
    )
    return path


def test_cli_create_prints_only_the_token(config: Path, tmp_path: Path) -> None:
    """``radbridge tokens create`` (a real process) prints the token alone; it verifies."""
    done = cli_fork.run(
        ["tokens", "create", "--role", "operator", "--name", "RIS", "-c", str(config)],
        check=True,
        timeout=60,
    )
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and " " not in token
    engine = make_engine(f"sqlite:///{tmp_path}/rb.db")
    try:
        assert ApiTokens(engine).verify(token) is Role.OPERATOR
    finally:
        engine.dispose()


def test_cli_lists_and_revokes(config: Path) -> None:
    """``tokens list --json`` shows id, role and name, never the token; ``revoke ID`` revokes."""
    runner = CliRunner()
    created = runner.invoke(app, ["tokens", "create", "--role", "viewer", "-c", str(config)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    listed = runner.invoke(app, ["tokens", "list", "--json", "-c", str(config)])
    [entry] = json.loads(listed.stdout)
    assert (entry["role"], entry["name"], entry["revoked_at"]) == ("viewer", None, None)
    assert token not in listed.stdout
    revoked = runner.invoke(app, ["tokens", "revoke", str(entry["id"]), "-c", str(config)])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    [entry] = json.loads(runner.invoke(app, ["tokens", "list", "--json", "-c", str(config)]).stdout)
    assert entry["revoked_at"] is not None
    missing = runner.invoke(app, ["tokens", "revoke", "42", "-c", str(config)])
    assert missing.exit_code == 1


def test_cli_refuses_an_unknown_role(config: Path) -> None:
    """``--role boss`` exits 2 naming the valid roles."""
    result = CliRunner().invoke(app, ["tokens", "create", "--role", "boss", "-c", str(config)])
    assert result.exit_code == 2
    assert "viewer" in result.output and "admin" in result.output
