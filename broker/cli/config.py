"""``radbridge config``: check a file, show what a reload would change, reload the service.

- ``check FILE``: the file is valid (exit 0) or every problem with ``FILE:LINE`` (exit 2).
- ``diff -c FILE``: what a reload of FILE would change in the snapshot the service has
  in force (recorded in the store, so an edited file on disk does not hide what
  runs), whether it needs a restart, and which removals would drop unfinished
  jobs. ``--against OLD`` compares two files instead. Exit 0: a reload would be
  accepted; 1: refused, a restart is required; 3: refused unless drained
  (``config reload --drain``); 2: the file is invalid or the store unreadable.
- ``reload``: ask the running service to reload (its REST API, with an admin token
  from ``RADBRIDGE_API_TOKEN``); ``--drain`` lets removed vendors and targets finish
  their unfinished work first. SIGHUP reloads too, but cannot carry ``--drain``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from broker.cli.common import ConfigOption, JsonOption, err, out, settings_or_exit
from broker.model.errors import ConfigError, StoreError
from broker.runtime.config_diff import ConfigView, carry_secrets, diff, removed, view
from broker.runtime.reload import target_path
from broker.runtime.snapshot import build_snapshot
from broker.store import make_engine
from broker.store.migrate import migrate
from broker.store.snapshots import SnapshotLog, SnapshotRecord, listed, unfinished
from config.schema import Settings

app = typer.Typer(
    help="Check the configuration, see what a reload would change, reload the service.",
    no_args_is_help=True,
)

TOKEN_ENV = "RADBRIDGE_API_TOKEN"  # noqa: S105 (the variable's name, not a secret)
EXIT_ACCEPTED, EXIT_RESTART, EXIT_INVALID, EXIT_DRAIN = 0, 1, 2, 3
EXIT_REFUSED = 1

FileArgument = Annotated[
    Path | None, typer.Argument(help="Configuration file.", show_default=False)
]


@app.command("check")
def config_check(file: FileArgument = None, config: ConfigOption = None) -> None:
    """Validate a configuration file: prints OK (and a note per deprecated setting in use),
    or every problem with FILE:LINE."""
    settings = settings_or_exit(file or config)
    for note in settings.deprecations():
        err.print(f"deprecated: {note}", markup=False, highlight=False)
    out.print(f"OK: {file or config} (site {settings.site.name!r})", highlight=False)


def _buildable(settings: Settings) -> None:
    """Exit 2 naming the problems when the service could not build a snapshot of it."""
    try:
        build_snapshot(settings).close()
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from exc


def _in_force(settings: Settings) -> tuple[SnapshotRecord, Any]:
    """The snapshot the service has in force (from the store the file names), and the engine."""
    try:
        engine = make_engine(settings.database_url())
        migrate(engine)
        record = SnapshotLog(engine).in_force()
    except StoreError as exc:
        err.print(f"cannot read the snapshot in force: {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from exc
    if record is None:
        err.print(
            f"no configuration snapshot is recorded in the store {settings.storage.database}: "
            "radbridge serve has not run on it; valid: start the service once, or compare "
            "two files with --against OLD_FILE",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_INVALID)
    return record, engine


@app.command("diff")
def config_diff(
    file: FileArgument = None,
    config: ConfigOption = None,
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            help="Compare with this file instead of the snapshot the service has in force.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What a reload of FILE would change, whether it needs a restart, and what it would drop.

    Exit 0: a reload would be accepted; 1: refused, restart required; 3: refused
    unless drained (radbridge config reload --drain); 2: invalid file or store.
    """
    settings = settings_or_exit(file or config)
    _buildable(settings)
    new = view(settings)
    record: SnapshotRecord | None = None
    draining: set[str] = set()
    blocked: dict[str, list[str]] = {}
    if against is not None:
        old = view(settings_or_exit(against))
    else:
        record, engine = _in_force(settings)
        old = ConfigView.from_json(record.config)
        new = carry_secrets(old, new)
        draining = {*record.draining_vendors, *(f"target:{t}" for t in record.draining_targets)}
        gone = removed(old, new)
        work = unfinished(
            engine,
            [v for v in gone.vendors if v not in draining],
            [t for t in gone.targets if f"target:{t}" not in draining],
        )
        blocked = {
            **{f"vendors.{v}": [listed(items), "job(s)"] for v, items in work.jobs.items()},
            **{target_path(t): [listed(i), "write-back(s)"] for t, i in work.writebacks.items()},
        }
        engine.dispose()
    changes = diff(old, new)
    code = EXIT_RESTART if changes.restart else EXIT_DRAIN if blocked else EXIT_ACCEPTED
    if as_json:
        print(
            json.dumps(
                {
                    "in_force": _record_json(record),
                    "against": str(against) if against else None,
                    **changes.to_json(),
                    "unfinished": {path: shown for path, (shown, _kind) in blocked.items()},
                    "accepted": code == EXIT_ACCEPTED,
                    "accepted_with_drain": code in (EXIT_ACCEPTED, EXIT_DRAIN),
                },
                indent=2,
            )
        )
        raise typer.Exit(code)
    if record is not None:
        since = record.loaded_at.isoformat(timespec="seconds")
        source = f" from {record.source}" if record.source else ""
        out.print(f"in force: {record.snapshot} since {since}{source}", highlight=False)
        if draining:
            out.print(f"draining: {', '.join(sorted(draining))}", highlight=False)
    else:
        out.print(f"compared with: {against}", highlight=False)
    if not changes.changed:
        out.print("no changes", highlight=False)
    for line in changes.lines():
        out.print(line, markup=False, highlight=False)
    for path, (shown, kind) in blocked.items():
        out.print(
            f"unfinished work: {path} is removed but has {kind} {shown}",
            markup=False,
            highlight=False,
        )
    verdict = {
        EXIT_ACCEPTED: "a reload would be accepted",
        EXIT_RESTART: "a reload would be refused: restart radbridge to apply this file",
        EXIT_DRAIN: "a reload would be refused; radbridge config reload --drain would accept it "
        "(the removed vendors and targets get no new work and finish theirs first), or cancel "
        "the jobs first (radbridge jobs cancel ID)",
    }[code]
    out.print(verdict, highlight=False)
    raise typer.Exit(code)


def _record_json(record: SnapshotRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "snapshot": record.snapshot,
        "loaded_at": record.loaded_at.isoformat(),
        "source": record.source,
        "trigger": record.trigger,
        "draining": [*record.draining_vendors, *(f"target:{t}" for t in record.draining_targets)],
    }


def api_url(settings: Settings) -> str:
    """Where this host reaches the service's HTTP server (its ``http.listen``)."""
    listen = settings.http_settings().listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listen.port}"


@app.command("reload")
def config_reload(
    config: ConfigOption = None,
    drain: Annotated[
        bool,
        typer.Option(
            "--drain",
            help="Accept removing vendors (targets) that still have unfinished jobs "
            "(write-backs): they get no new study and finish them first, then leave.",
        ),
    ] = False,
    url: Annotated[
        str | None,
        typer.Option("--url", help="The service's HTTP server (default: http.listen of the file)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar=TOKEN_ENV, help="An admin API token.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Ask the running service to reload its configuration file (through its REST API).

    Exit 0: reloaded (or nothing changed); 1: refused, with every reason; 2: the
    service cannot be reached or the token is not accepted.
    """
    settings = settings_or_exit(config)
    if url is None and not settings.http_server_wanted():
        err.print(
            "this configuration runs no HTTP server, so the service cannot be asked over its "
            "API; valid: send SIGHUP to radbridge serve (kill -HUP PID; no --drain), or add "
            "an http block (needs a restart)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_INVALID)
    if not token:
        err.print(
            f"no API token; valid: set {TOKEN_ENV} to an admin token "
            "(radbridge tokens create --role admin) or pass --token",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_INVALID)
    base = (url or api_url(settings)).rstrip("/")
    try:
        answer = httpx.post(
            f"{base}/api/v1/config/reload",
            params={"drain": "true"} if drain else None,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        err.print(
            f"cannot reach radbridge at {base}: {exc}; is radbridge serve running there?",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_INVALID) from exc
    if answer.status_code in (401, 403):
        err.print(
            f"{base} refused the token ({answer.status_code}): an admin token is needed",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_INVALID)
    body = answer.json()
    outcome = body.get("detail", body) if answer.status_code >= 400 else body
    if as_json:
        print(json.dumps(outcome, indent=2))
    elif answer.is_success:
        if outcome["changed"]:
            out.print(f"reloaded: {outcome['previous']} → {outcome['snapshot']}", highlight=False)
        else:
            out.print(f"reloaded: nothing changed ({outcome['snapshot']})", highlight=False)
        for line in outcome.get("changes", []):
            out.print(line, markup=False, highlight=False)
        if outcome.get("draining"):
            out.print(f"draining: {', '.join(outcome['draining'])}", highlight=False)
    else:
        found = outcome if isinstance(outcome, dict) else {"problems": [str(outcome)]}
        in_force = found.get("snapshot", "the running configuration")
        err.print(f"not reloaded; {in_force} stays in force:", markup=False, highlight=False)
        for problem in found.get("problems") or [str(outcome)]:
            err.print(f"  {problem}", markup=False, highlight=False)
    raise typer.Exit(EXIT_ACCEPTED if answer.is_success else EXIT_REFUSED)
