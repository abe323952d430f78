"""What a reload would change, and which of it only a restart can apply.

Pure functions, no I/O. A configuration is compared as its *view*
(:class:`ConfigView`): the settings as JSON can hold them, every secret shown as
``(secret)`` and never its value, plus the two facts the running service decided
at start from several settings at once (whether the HTTP server runs, and where it
listens). The service keeps the view of the snapshot in force in the store, so
``radbridge config diff`` compares a file with what is actually running, even
when the file on disk was edited since.

What the running service cannot apply live (:data:`RESTART_REQUIRED`) was found
by reading what each part reads once at start:

- ``storage.*``, ``bus.*``: the store engine, the spool and its lock, the
  message bus connection (service and workers);
- ``logging.*``: the log processors of the service and of its listener processes;
- ``delivery.worker_in_service``: whether the service started its job worker;
  ``delivery.lease_seconds``: the claims' lease its job worker and write-back stage
  (and each ``radbridge worker``) were built with;
- ``dicom.listen.*``, ``dicom.tls.*``, ``dicom.processes``: the listening socket,
  the TLS context and the number of DICOM listener processes;
  ``dicom.max_associations``, ``dicom.max_pending_connections``,
  ``dicom.max_connections_per_peer``: the limits the listeners' shared slot board
  was sized with (the rest of the ``dicom`` block reaches the running listener
  processes: called AE titles, peers, stable times, PDU size, timeouts);
- ``hl7.*``: the MLLP listener, its allow-list, limits and TLS are set up once;
- the HTTP server: whether it runs (an ``http`` block, an ``http`` transport or
  a vendor's results token needs it) and ``http.listen.*``.

Everything else (vendors, transports, routes, targets, notifications, result
policies, quotas, billing, site name and timezone, retry backoff, the rest of the
``dicom`` block, ``http.public_url``) is read from the snapshot in force at each
use, so a reload applies it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr

from broker.model.writeback import WEBHOOK_TARGET
from config.schema import HttpListen, Settings
from config.vendors import Route
from routing.schema import SelectorName, show_duration
from routing.trace import describe

SECRET_SHOWN = "(secret)"  # noqa: S105 (a placeholder, not a secret)
"""How a secret that is set appears in a view (its value never does)."""

RESTART_REQUIRED: tuple[str, ...] = (
    "node",
    "storage",
    "bus",
    "logging",
    "delivery.worker_in_service",
    "delivery.lease_seconds",
    "dicom.listen",
    "dicom.tls",
    "dicom.processes",
    "dicom.max_associations",
    "dicom.max_pending_connections",
    "dicom.max_connections_per_peer",
    "hl7",
)
"""Settings paths the running service cannot apply (besides the HTTP server's, see
:func:`restart_required`); a change at or under one of them is refused by a reload."""

SECTIONS: tuple[str, ...] = ("vendors", "routes", "targets", "notifications")
"""The sections a diff lists on their own; every other key is under "other"."""


# ---------------------------------------------------------------- the view


@dataclass(frozen=True, slots=True)
class ConfigView:
    """A configuration as it is compared and recorded: no secret values in it."""

    settings: dict[str, Any]
    http_server: bool
    """Whether the service runs its HTTP server with these settings."""
    http_listen: dict[str, Any]
    """Where that server listens (``http.listen`` or its defaults)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "settings": self.settings,
                "http_server": self.http_server,
                "http_listen": self.http_listen,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ConfigView:
        data = json.loads(text)
        return cls(
            settings=dict(data["settings"]),
            http_server=bool(data["http_server"]),
            http_listen=dict(data.get("http_listen") or HttpListen().model_dump(mode="json")),
        )


def view(settings: Settings) -> ConfigView:
    """The view of ``settings``: JSON values, routes as they read, secrets as ``(secret)``."""
    data = settings.model_dump(
        mode="json", warnings=False, serialize_as_any=True, exclude={"routes"}
    )
    for path in _secrets(settings, ()):
        _put(data, path, SECRET_SHOWN)
    data["routes"] = [route_view(route) for route in settings.routes]
    return ConfigView(
        settings=data,
        http_server=settings.http_server_wanted(),
        http_listen=settings.http_settings().listen.model_dump(mode="json"),
    )


def route_view(route: Route) -> dict[str, Any]:
    """A route as a person reads it: conditions as ``field: wanted`` lines."""
    data = route.model_dump(
        mode="json", warnings=False, exclude={"when", "series", "deadline", "require_order"}
    )
    data["when"] = [": ".join(describe(item)) for item in route.when.items]
    series = route.series
    if series.name is SelectorName.CONDITIONS:
        data["series"] = [": ".join(describe(item)) for item in series.conditions.items]
    else:
        data["series"] = series.name.value
    data["deadline"] = show_duration(route.deadline) if route.deadline else None
    wait = route.require_order
    data["require_order"] = (
        {"wait": show_duration(wait.wait), "then": wait.then.value} if wait else None
    )
    return data


def _secrets(value: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The paths of the secrets that are set under ``value``."""
    if isinstance(value, SecretStr):
        yield path
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name), (*path, name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _secrets(item, (*path, str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _secrets(item, (*path, str(i)))


def _put(data: Any, path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        data = data[int(part)] if isinstance(data, list) else data.get(part)
        if data is None:
            return
    if isinstance(data, dict) and path[-1] in data:
        data[path[-1]] = value


def carry_secrets(old: ConfigView, new: ConfigView) -> ConfigView:
    """``new`` with the secrets that are set in ``old`` marked set wherever ``new`` has
    the same place: for comparing a file loaded in another environment (the command
    line's) with the service's view; secrets come from the service's environment."""
    settings = json.loads(json.dumps(new.settings))

    def walk(o: Any, n: Any) -> None:
        if isinstance(o, dict) and isinstance(n, dict):
            for key, value in o.items():
                if key not in n:
                    continue
                if value == SECRET_SHOWN and n[key] is None:
                    n[key] = SECRET_SHOWN
                else:
                    walk(value, n[key])

    walk(old.settings, settings)
    vendors = settings.get("vendors") or {}
    tokens = any((v.get("results") or {}).get("token") for v in vendors.values())
    return ConfigView(settings, new.http_server or tokens, new.http_listen)


# ---------------------------------------------------------------- the diff


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``vendors.lungai.transport.port: 104 → 11112``."""

    path: str
    kind: str
    """``added``, ``removed`` or ``changed``."""
    old: Any = None
    new: Any = None

    @property
    def section(self) -> str:
        head = self.path.split(".", 1)[0].split(" ", 1)[0]
        return head if head in SECTIONS else "other"

    def text(self) -> str:
        if self.kind == "changed":
            return f"{self.path}: {show(self.old)} → {show(self.new)}"
        value = self.new if self.kind == "added" else self.old
        if value is None or isinstance(value, dict):
            return f"{self.path}: {self.kind}"
        return f"{self.path}: {self.kind} ({show(value)})"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What changes from one configuration to another, and what needs a restart."""

    changes: tuple[Change, ...] = ()
    restart: tuple[str, ...] = ()
    """One ``restart required: dicom.listen.port changed`` line per setting."""

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def section(self, name: str) -> list[Change]:
        return [c for c in self.changes if c.section == name]

    def lines(self) -> list[str]:
        """The diff as a person reads it, by section; the restart lines last."""
        lines: list[str] = []
        for name in (*SECTIONS, "other"):
            changes = self.section(name)
            if changes:
                lines.append(f"{name}:")
                lines += [f"  {_MARK[c.kind]} {c.text()}" for c in changes]
        return lines + list(self.restart)

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": [c.to_json() for c in self.changes],
            "restart_required": list(self.restart),
        }


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def show(value: Any) -> str:
    """A value in a diff line: plain text for scalars, compact JSON for the rest."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def diff(old: ConfigView, new: ConfigView) -> ConfigDiff:
    """Every change from ``old`` to ``new``, and the ``restart required`` lines."""
    changes = list(_walk(old.settings, new.settings, ()))
    return ConfigDiff(tuple(changes), tuple(restart_required(old, new, changes)))


def _walk(old: Any, new: Any, path: tuple[str, ...]) -> Iterator[Change]:
    dotted = ".".join(path)
    if old == new:
        return
    if old is None:
        yield Change(dotted, "added", None, new)
    elif new is None:
        yield Change(dotted, "removed", old, None)
    elif path == ("routes",) and isinstance(old, list) and isinstance(new, list):
        yield from _routes(old, new)
    elif isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            yield from _walk(old.get(key), new.get(key), (*path, str(key)))
    else:
        yield Change(dotted, "changed", old, new)


def _routes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> Iterator[Change]:
    before = {r["name"]: r for r in old}
    after = {r["name"]: r for r in new}
    for name, route in before.items():
        if name not in after:
            yield Change(f"routes.{name}", "removed", route, None)
    for name, route in after.items():
        if name not in before:
            yield Change(f"routes.{name}", "added", None, route)
        else:
            yield from _walk(before[name], route, ("routes", name))
    kept_before = [n for n in before if n in after]
    kept_after = [n for n in after if n in before]
    if kept_before != kept_after:
        yield Change("routes (order)", "changed", kept_before, kept_after)


def _under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix``, under it, or a block that holds it (``hl7`` holds ``hl7.tls``)."""
    return path == prefix or path.startswith(prefix + ".") or prefix.startswith(path + ".")


def restart_required(
    old: ConfigView, new: ConfigView, changes: Sequence[Change] | None = None
) -> list[str]:
    """``restart required: PATH changed|added|removed`` for each change a reload cannot
    apply (:data:`RESTART_REQUIRED`, and the HTTP server starting, stopping or moving)."""
    if changes is None:
        changes = list(_walk(old.settings, new.settings, ()))
    lines = [
        f"restart required: {c.path} {c.kind}"
        for c in changes
        if any(_under(c.path, prefix) for prefix in RESTART_REQUIRED)
    ]
    if old.http_server and not new.http_server:
        lines.append(
            "restart required: the HTTP server would stop (no http block, no vendor with an "
            "http transport or a results token needs it)"
        )
    elif new.http_server and not old.http_server:
        lines.append(
            "restart required: the HTTP server would start (an http block, an http transport "
            "or a vendor's results token needs it; it is not running)"
        )
    elif old.http_server:
        lines += [
            f"restart required: http.listen.{key} changed"
            for key in sorted(set(old.http_listen) | set(new.http_listen))
            if old.http_listen.get(key) != new.http_listen.get(key)
        ]
        lines += [
            f"restart required: http.{key} changed"
            for key in HTTP_AT_START
            if _http_setting(old, key) != _http_setting(new, key)
        ]
    return lines


HTTP_AT_START = ("tls", "trusted_proxies")
"""Settings of the ``http`` block the HTTP server takes when it starts (its socket's TLS,
its proxy headers middleware)."""


def _http_setting(config: ConfigView, key: str) -> Any:
    """``http.KEY`` of ``config``; an absent block or an empty value alike as None."""
    return (config.settings.get("http") or {}).get(key) or None


@dataclass(frozen=True, slots=True)
class Removed:
    """The vendors and write-back targets a new configuration no longer has."""

    vendors: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


def removed(old: ConfigView, new: ConfigView) -> Removed:
    """Which vendors, targets (the notification webhook as :data:`WEBHOOK_TARGET`) and
    routes go."""

    def names(v: ConfigView, key: str) -> list[str]:
        return list((v.settings.get(key) or {}).keys())

    def webhook(v: ConfigView) -> bool:
        return bool((v.settings.get("notifications") or {}).get("webhook"))

    targets = [n for n in names(old, "targets") if n not in names(new, "targets")]
    if webhook(old) and not webhook(new):
        targets.append(WEBHOOK_TARGET)
    new_routes = {r["name"] for r in new.settings.get("routes") or []}
    return Removed(
        vendors=tuple(n for n in names(old, "vendors") if n not in names(new, "vendors")),
        targets=tuple(targets),
        routes=tuple(
            r["name"] for r in old.settings.get("routes") or [] if r["name"] not in new_routes
        ),
    )
