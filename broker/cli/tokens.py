"""``radbridge tokens``: create, list and revoke bearer tokens of the HTTP API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import (
    ConfigOption,
    JsonOption,
    cli_locale,
    err,
    out,
    settings_or_exit,
    store_engine,
)
from broker.model.domain import Role
from broker.model.errors import RadbridgeError
from broker.store.api_tokens import ApiToken, ApiTokens
from broker.store.audit import Action, AuditLog, cli_actor

app = typer.Typer(
    help="Bearer tokens of the HTTP API (FHIR): viewer < operator < admin.",
    no_args_is_help=True,
)


def _tokens(config: Any) -> ApiTokens:
    engine = store_engine(config)
    return ApiTokens(engine)


def known_sites(config: Any, sites: list[str] | None) -> list[str] | None:
    """``sites`` (None: every site), each a site of the configuration, else exit 2."""
    if not sites:
        return None
    configured = list(settings_or_exit(config).sites)
    unknown = [s for s in sites if s not in configured]
    if unknown:
        err.print(
            f"unknown site {unknown[0]!r}; valid: {', '.join(configured) or 'none (no sites:)'}",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(2)
    return sites


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "role": token.role.value,
        "name": token.name,
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        "sites": sorted(token.sites) if token.sites is not None else None,
    }


@app.command("create")
def create_token(
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            help="viewer reads; reader also sees patient data and gives verdicts on AI "
            "findings; operator also writes; admin manages.",
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Who or what uses it, e.g. 'RIS'.")
    ] = None,
    site: Annotated[
        list[str] | None,
        typer.Option(
            "--site",
            help="Limit it to this site (repeatable): it then sees and acts on only these "
            "sites' studies, orders, jobs, results and usage; everything else is 404.",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a new token (only the token, on stdout); the store keeps only its SHA-256."""
    sites = known_sites(config, site)
    try:
        tokens = _tokens(config)
        token = tokens.create(role, name, sites=sites)
        made = tokens.identify(token)
        assert made is not None
        detail: dict[str, Any] = {"role": role, "name": name}
        if sites is not None:
            detail["sites"] = sorted(sites)
        AuditLog(tokens.engine).record(cli_actor(), Action.TOKEN_CREATE, f"token:{made.id}", detail)
    except (RadbridgeError, ValueError) as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    print(token)


@app.command("list")
def list_tokens(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every token (id, role, name, created, last used, revoked), never the token itself."""
    tokens = _tokens(config).list()
    if as_json:
        print(json.dumps([_token_json(t) for t in tokens], indent=2))
        return
    local = cli_locale(config)
    _ = local.gettext
    headings = (_("id"), _("role"), _("name"), _("sites"), _("created"), _("last used"))
    table = Table(*headings, _("revoked"))
    for t in tokens:
        table.add_row(
            str(t.id),
            t.role.value,
            t.name or "",
            ", ".join(sorted(t.sites)) if t.sites is not None else "*",
            local.time(t.created_at),
            local.time(t.last_used_at),
            local.time(t.revoked_at),
        )
    out.print(table)


@app.command("revoke")
def revoke_token(
    token_id: Annotated[int, typer.Argument(help="Token id (from radbridge tokens list).")],
    config: ConfigOption = None,
) -> None:
    """Revoke a token: from now on every request with it gets 401."""
    try:
        tokens = _tokens(config)
        token = tokens.revoke(token_id)
        AuditLog(tokens.engine).record(
            cli_actor(),
            Action.TOKEN_REVOKE,
            f"token:{token_id}",
            {"role": token.role.value, "name": token.name},
        )
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    out.print(f"token {token.id} ({token.role.value}) revoked", highlight=False)
