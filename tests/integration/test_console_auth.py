"""Console users, sessions, roles and CSRF, in process (no browser): the rules the pages rely on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from adapters.web.app import create_app
from broker.model.domain import Priority, Role
from broker.model.jobs import JobState
from broker.store import make_engine
from broker.store.api_tokens import ApiTokens
from broker.store.jobs import JobStore
from broker.store.migrate import migrate
from broker.store.tables import console_users
from broker.store.users import IDLE, ConsoleSessions, ConsoleUsers, UserError

PASSWORD = "correct-horse-1"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    made = make_engine(f"sqlite:///{tmp_path}/radbridge.db")
    migrate(made)
    users = ConsoleUsers(made)
    for name, role in (("view", Role.VIEWER), ("op", Role.OPERATOR), ("boss", Role.ADMIN)):
        users.add(name, PASSWORD, role)
    return made


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as made:
        yield made


def _login(client: TestClient, name: str) -> str:
    answer = client.post(
        "/console/login", data={"username": name, "password": PASSWORD}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    page = client.get("/console/")
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def _dead_job(engine: Engine) -> int:
    jobs = JobStore(engine)
    job = jobs.create("1.2.3.4", "lungai", route="r", priority=Priority.ROUTINE, max_attempts=1)
    jobs.claim(job.job.id)
    jobs.finish(job.job.id, JobState.DEAD, error="refused")
    return job.job.id


def test_passwords_are_argon2id_hashes_and_checked(engine: Engine) -> None:
    """Only an argon2id hash is stored; a wrong password, unknown or disabled user gets None."""
    users = ConsoleUsers(engine)
    with engine.connect() as conn:
        stored = conn.execute(
            select(console_users.c.password_hash).where(console_users.c.username == "op")
        ).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert users.verify("op", PASSWORD) is not None
    assert users.verify("op", "wrong-password") is None
    assert users.verify("nobody", PASSWORD) is None
    users.disable("op")
    assert users.verify("op", PASSWORD) is None
    with pytest.raises(UserError, match="valid: 10"):
        users.add("short", "abc", Role.VIEWER)
    with pytest.raises(UserError, match="exists already"):
        users.add("view", PASSWORD, Role.VIEWER)


def test_sessions_end_when_idle_disabled_or_token_revoked(engine: Engine) -> None:
    """A session dies after its idle time, when its user is disabled or its token revoked."""
    sessions, users, tokens = ConsoleSessions(engine), ConsoleUsers(engine), ApiTokens(engine)
    now = datetime.now(UTC)
    cookie, session = sessions.open(user_id=users.get("op").id, now=now)
    assert session.role is Role.OPERATOR and session.actor == "console:op"
    assert sessions.get(cookie, now=now + IDLE + timedelta(seconds=1)) is None
    assert sessions.get(cookie, now=now) is not None
    users.disable("op")
    assert sessions.get(cookie) is None
    token = tokens.create(Role.VIEWER, "wall screen")
    found = tokens.identify(token)
    assert found is not None
    cookie, session = sessions.open(token_id=found.id)
    assert session.subject == f"token:{found.id} (wall screen)" and session.role is Role.VIEWER
    tokens.revoke(found.id)
    assert sessions.get(cookie) is None


def test_pages_need_a_login_and_the_cookie_is_strict(client: TestClient) -> None:
    """Without a session a page redirects to the login form; the cookie is HttpOnly, Strict."""
    answer = client.get("/console/jobs", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Fjobs"
    wrong = client.post("/console/login", data={"username": "op", "password": "nope-nope-1"})
    assert wrong.status_code == 401
    ok = client.post(
        "/console/login",
        data={"username": "op", "password": PASSWORD, "next": "https://elsewhere.example/"},
        follow_redirects=False,
    )
    assert ok.headers["location"] == "/console/"  # no open redirect
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    page = client.get("/console/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_actions_need_the_csrf_token_and_the_operator_role(
    client: TestClient, engine: Engine
) -> None:
    """A POST without the CSRF token is 403; a viewer's retry is 403; an operator's is audited."""
    job_id = _dead_job(engine)
    csrf = _login(client, "view")
    assert client.post(f"/console/jobs/{job_id}/retry", data={"csrf": csrf}).status_code == 403
    assert 'data-action="retry"' not in client.get("/console/jobs").text
    client.cookies.clear()
    csrf = _login(client, "op")
    assert client.post(f"/console/jobs/{job_id}/retry", data={}).status_code == 403
    assert client.post(f"/console/jobs/{job_id}/retry", data={"csrf": "forged"}).status_code == 403
    assert 'data-action="retry"' in client.get("/console/jobs").text
    row = client.post(
        f"/console/jobs/{job_id}/retry", headers={"HX-Request": "true", "X-CSRF-Token": csrf}
    )
    assert row.status_code == 200 and row.text.lstrip().startswith(f'<tr id="job-{job_id}"')
    assert JobStore(engine).get(job_id).state is JobState.PENDING
    again = client.post(f"/console/jobs/{job_id}/retry", data={"csrf": csrf})
    assert again.status_code == 409 and "only a dead or failed job" in again.text
    assert client.get("/console/audit").status_code == 403
    client.cookies.clear()
    _login(client, "boss")
    audit = client.get("/console/audit?action=job.retry").text
    assert "console:op" in audit and f"job:{job_id}" in audit


def test_an_api_token_logs_in_with_its_role(client: TestClient, engine: Engine) -> None:
    """An API token opens a session with the token's role; a revoked one does not."""
    tokens = ApiTokens(engine)
    token = tokens.create(Role.ADMIN, "night shift")
    answer = client.post("/console/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303
    assert client.get("/console/audit").status_code == 200
    client.cookies.clear()
    assert client.post("/console/login", data={"token": "not-a-token"}).status_code == 401
