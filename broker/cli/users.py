"""``radbridge users``: people who log in to the operations console (``/console``).

    radbridge users add NAME --role viewer|reader|operator|admin [--password-stdin]
    radbridge users list | disable NAME | enable NAME | password NAME [--password-stdin]

The password is asked twice at a prompt (not echoed), or read as the first
line of standard input with ``--password-stdin`` (for scripts); it is never an
argument, so it stays out of shell history and process lists. Every change is
in the audit trail.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import (
    ConfigOption,
    JsonOption,
    cli_locale,
    err,
    out,
    store_engine,
)
from broker.cli.tokens import known_sites
from broker.i18n import LANGUAGES
from broker.model.domain import Role
from broker.model.errors import RadbridgeError
from broker.store.audit import AuditLog, cli_actor
from broker.store.users import ConsoleUser, ConsoleUsers

app = typer.Typer(
    help="Console users (log in at /console): viewer < operator < admin.", no_args_is_help=True
)

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input."
    ),
]


def _users(config: Any) -> ConsoleUsers:
    engine = store_engine(config)
    return ConsoleUsers(engine)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


def _user_json(user: ConsoleUser) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role.value,
        "created_at": user.created_at.isoformat(),
        "disabled_at": user.disabled_at.isoformat() if user.disabled_at else None,
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
        "language": user.language,
    }


def _change(users: ConsoleUsers, action: str, user: ConsoleUser) -> None:
    AuditLog(users.engine).record(
        cli_actor(), action, f"user:{user.username}", {"role": user.role.value}
    )


@app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="Username (letters, digits, ._-@).")],
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            help="viewer reads; reader also gives verdicts on AI findings; "
            "operator also retries; admin also audits.",
        ),
    ],
    config: ConfigOption = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a console user (password at a prompt, or with --password-stdin)."""
    users = _users(config)
    try:
        user = users.add(name, _password(password_stdin), role)
        _change(users, "user.add", user)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    out.print(f"console user {user.username} ({user.role.value}) added", highlight=False)


@app.command("list")
def list_users(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every console user (name, role, created, last login, disabled); never a password hash."""
    users = _users(config).list()
    if as_json:
        print(json.dumps([_user_json(u) for u in users], indent=2))
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(_("id"), _("username"), _("role"), _("created"), _("last login"), _("disabled"))
    for u in users:
        table.add_row(
            str(u.id),
            u.username,
            u.role.value,
            local.time(u.created_at),
            local.time(u.last_login_at),
            local.time(u.disabled_at),
        )
    out.print(table)


def _act(name: str, config: Any, action: str, password_stdin: bool = False) -> ConsoleUser:
    users = _users(config)
    try:
        if action == "user.disable":
            user = users.disable(name)
        elif action == "user.enable":
            user = users.enable(name)
        else:
            user = users.set_password(name, _password(password_stdin))
        _change(users, action, user)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    return user


@app.command("disable")
def disable_user(
    name: Annotated[str, typer.Argument(help="Username.")], config: ConfigOption = None
) -> None:
    """Disable a user: their console sessions end now; the user stays for the audit trail."""
    _act(name, config, "user.disable")
    out.print(f"console user {name} disabled", highlight=False)


@app.command("enable")
def enable_user(
    name: Annotated[str, typer.Argument(help="Username.")], config: ConfigOption = None
) -> None:
    """Let a disabled user log in again."""
    _act(name, config, "user.enable")
    out.print(f"console user {name} enabled", highlight=False)


@app.command("password")
def set_password(
    name: Annotated[str, typer.Argument(help="Username.")],
    config: ConfigOption = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a new password; the user's open console sessions end."""
    _act(name, config, "user.password", password_stdin)
    out.print(f"password of {name} changed", highlight=False)


@app.command("sites")
def set_sites(
    name: Annotated[str, typer.Argument(help="Username.")],
    site: Annotated[
        list[str] | None,
        typer.Option("--site", help="A site they see (repeatable); none: every site."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Limit a console user to sites: they then see only those sites' studies (other pages
    and other sites' studies are 404); without --site, every site again."""
    sites = known_sites(config, site)
    users = _users(config)
    try:
        user = users.set_sites(name, sites)
    except (RadbridgeError, ValueError) as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    AuditLog(users.engine).record(
        cli_actor(), "user.sites", f"user:{user.username}", {"sites": sites}
    )
    out.print(f"console user {name} sees {', '.join(sites or ['every site'])}", highlight=False)


@app.command("language")
def set_language(
    name: Annotated[str, typer.Argument(help="Username.")],
    language: Annotated[
        str, typer.Argument(help=f"One of {', '.join(LANGUAGES)}, or 'site' for the site's.")
    ],
    config: ConfigOption = None,
) -> None:
    """The language the console speaks to a user (they can change it on their page too)."""
    chosen = None if language == "site" else language
    if chosen is not None and chosen not in LANGUAGES:
        err.print(f"no language {language!r}; valid: {', '.join(LANGUAGES)}, site", highlight=False)
        raise typer.Exit(2)
    users = _users(config)
    try:
        user = users.set_language(name, chosen)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    AuditLog(users.engine).record(
        cli_actor(), "user.language", f"user:{user.username}", {"language": language}
    )
    out.print(f"console user {name} speaks {language}", highlight=False)
