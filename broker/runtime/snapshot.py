"""The configuration snapshot the service runs on, and the holder that swaps it.

A :class:`Snapshot` is built from one validated :class:`~config.schema.Settings`
and holds everything made from it: the compiled routes, each vendor's delivery
spec and transport, each write-back target's spec and target, the routes'
write-back lists, the result policies. It never changes. Building one checks
everything a running service would trip over later (every route's vendors and
targets exist, every transport and target accepts its settings), so a snapshot
that was built can be run.

:class:`SnapshotHolder` keeps the snapshot in force. A reload builds a whole new
snapshot first and swaps it in one step (:meth:`SnapshotHolder.swap`); a routing
decision or an attempt takes the snapshot in force once
(:meth:`SnapshotHolder.use`) and uses only that one to its end, and a retired
snapshot's connections are closed when its last user leaves.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.engine.plan import VendorSpec
from broker.model.critical import CHANNEL_PREFIX, Contact, CriticalPolicy
from broker.model.deid import Deidentify
from broker.model.errors import ConfigError
from broker.model.logging import get_logger
from broker.model.mode import Mode, shadow_of
from broker.model.priors import PriorsPolicy
from broker.model.signed_links import LinkPurpose
from broker.model.sites import SITE_TARGET_PREFIX, SiteDirectory, site_target
from broker.model.target import TARGETS, TargetSettings, WritebackTarget
from broker.model.vendor import VENDOR_TARGET_TYPE, VendorTransport, vendor_target
from broker.model.verdicts import VerdictLinks
from broker.model.writeback import WEBHOOK_TARGET, TargetSpec
from broker.runtime.config_diff import ConfigView, view
from broker.runtime.vendor_cancel import VendorCancellation
from broker.store.results import ResultPolicy
from config.critical import ContactSettings
from config.schema import Settings, routing_rules
from routing import RuleSet

LOG = get_logger("radbridge.snapshot")


def vendor_specs(settings: Settings) -> dict[str, VendorSpec]:
    """The delivery settings of every configured vendor product."""
    return {
        name: VendorSpec(
            name=name,
            transport=vendor.transport.type,
            params=vendor.transport.model_dump(exclude={"type"}),
            concurrency=vendor.concurrency,
            max_attempts=vendor.retries,
            backoff_base=settings.delivery.backoff_base_seconds,
            backoff_cap=settings.delivery.backoff_cap_seconds,
        )
        for name, vendor in settings.vendors.items()
    }


def build_transports(settings: Settings) -> dict[str, VendorTransport]:
    """One running transport per vendor, built by its transport plugin from its settings."""
    return {
        name: vendor.transport.build(settings.transport_context(name))
        for name, vendor in settings.vendors.items()
    }


def _target_params(settings: Settings, target: TargetSettings) -> dict[str, Any]:
    """A target's settings for its plugin; a ``language`` left out is the site's language
    (the language of the pages a target renders)."""
    params = target.model_dump(exclude={"type", "retries"})
    if "language" in params and params["language"] is None:
        params["language"] = settings.site.language
    return params


def target_specs(settings: Settings) -> dict[str, TargetSpec]:
    """Every configured target, and the notification webhook as a target of its own."""
    base = settings.delivery.backoff_base_seconds
    cap = settings.delivery.backoff_cap_seconds
    specs = {
        name: TargetSpec(name, t.type, _target_params(settings, t), t.retries, base, cap)
        for name, t in settings.targets.items()
    }
    for site_id, site in settings.sites.items():
        for own, t in site.targets.items():
            name = site_target(site_id, own)
            specs[name] = TargetSpec(
                name, t.type, _target_params(settings, t), t.retries, base, cap
            )
    hook = settings.notifications.webhook
    if hook is not None:
        params: dict[str, Any] = {"url": hook.url, "timeout": hook.timeout}
        if hook.token is not None:
            params["token"] = hook.token
        specs[WEBHOOK_TARGET] = TargetSpec(
            WEBHOOK_TARGET, "webhook", params, hook.retries, base, cap
        )
    for name, channel in settings.critical.channels.items():
        params = channel.model_dump(exclude={"retries", "token"})
        if channel.token is not None:
            params["token"] = channel.token
        specs[CHANNEL_PREFIX + name] = TargetSpec(
            CHANNEL_PREFIX + name, "webhook", params, channel.retries, base, cap
        )
    return specs


def critical_policy(settings: Settings) -> CriticalPolicy:
    """The ``critical`` block as the write-back stage and the critical desk use it."""
    block = settings.critical
    secret = settings.link_secret(LinkPurpose.CRITICAL_ACK)

    def contacts(listed: Sequence[ContactSettings]) -> tuple[Contact, ...]:
        wait = block.escalate_after
        return tuple(Contact(c.name, dict(c.notify), c.wait or wait) for c in listed)

    return CriticalPolicy(
        contacts=contacts(block.contacts),
        lists={name: contacts(listed) for name, listed in block.lists.items()},
        route_lists={r.name: r.critical_contacts for r in settings.routes if r.critical_contacts},
        site_lists={
            site_id: site.critical_contacts
            for site_id, site in settings.sites.items()
            if site.critical_contacts
        },
        channels={name: CHANNEL_PREFIX + name for name in block.channels},
        acknowledge_within=block.acknowledge_within,
        link_base=settings.http_settings().base_url() if settings.http_server_wanted() else None,
        link_secret=secret,
        link_valid_for=block.link_valid_for,
        language=settings.site.language,
        timezone=settings.site.timezone,
    )


def build_targets(specs: Mapping[str, TargetSpec]) -> dict[str, WritebackTarget]:
    """One running target per spec, built by the plugin of its type (``radbridge.targets``)."""
    return {name: TARGETS.get(s.type).from_params(name, s.params) for name, s in specs.items()}


def result_policies(settings: Settings) -> dict[str, ResultPolicy]:
    """Each vendor's ``results`` settings as the store keeps them on a new result."""
    return {
        name: ResultPolicy(
            quiet_seconds=vendor.results.quiet_seconds,
            expected_objects=vendor.results.expected_objects,
        )
        for name, vendor in settings.vendors.items()
    }


def configured_shadow(settings: Settings, route: str, vendor: str) -> bool:
    """True when ``settings`` put the route or the vendor in shadow mode (a route or vendor
    no longer configured is live: it is only finishing its work)."""
    config = settings.vendors.get(vendor)
    found = next((r for r in settings.routes if r.name == route), None)
    return shadow_of(
        found.mode if found is not None else Mode.LIVE,
        config.mode if config is not None else Mode.LIVE,
    )


def snapshot_id(config: ConfigView, draining: Collection[str] = ()) -> str:
    """A short name of a configuration's content: the same settings (and the same vendors
    and targets kept only to drain) give the same id."""
    text = config.to_json() + "|draining:" + ",".join(sorted(draining))
    return f"cfg-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _missing(what: str, name: str, valid: Collection[str]) -> ConfigError:
    listed = ", ".join(sorted(valid)) or "none configured"
    return ConfigError(f"no {what} '{name}' is configured; valid: {listed}")


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """One validated configuration and everything the service built from it."""

    id: str
    settings: Settings
    rules: RuleSet
    vendors: Mapping[str, VendorSpec]
    transports: Mapping[str, VendorTransport]
    targets: Mapping[str, TargetSpec]
    writers: Mapping[str, WritebackTarget]
    routes_write_back: Mapping[str, tuple[str, ...]]
    policies: Mapping[str, ResultPolicy]
    view: ConfigView
    critical_policy: CriticalPolicy
    """The settings as ``config diff`` compares and the store records them (no secrets)."""
    sites: SiteDirectory
    """The hub's sites (none: the one implicit site)."""
    source: Path | None = None
    """The file it was loaded from (None: built in code)."""
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    draining_vendors: frozenset[str] = frozenset()
    """Vendors the file no longer has, kept only to finish their jobs (no route sends to
    them); they leave once none of their jobs is in progress."""
    draining_targets: frozenset[str] = frozenset()
    """Write-back targets kept the same way to finish their write-backs."""
    retired_routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The write-back lists of routes a reload removed: a job keeps writing back where the
    route that made it said, when its result comes after the route is gone."""
    retired_deidentify: Mapping[str, Deidentify] = field(default_factory=dict)
    """The ``deidentify`` blocks of routes a reload removed: a job such a route made is still
    sent (and served) de-identified as the route said, never as received."""

    # ------------------------------------------------------------ the engine's Plan

    @property
    def vendor_names(self) -> Collection[str]:
        return self.vendors.keys()

    @property
    def target_names(self) -> Collection[str]:
        return self.targets.keys()

    @property
    def ris_status(self) -> str | None:
        status = self.settings.notifications.ris_status
        return status.target if status is not None else None

    @property
    def procedure_steps_to_ris(self) -> bool:
        status = self.settings.notifications.ris_status
        return status is not None and status.procedure_steps

    @property
    def overdue_check_seconds(self) -> float:
        return self.settings.notifications.overdue_check_seconds

    @property
    def critical(self) -> CriticalPolicy:
        return self.critical_policy

    def vendor(self, name: str) -> VendorSpec:
        try:
            return self.vendors[name]
        except KeyError:
            raise _missing("vendor", name, self.vendors) from None

    def transport(self, name: str) -> VendorTransport:
        try:
            return self.transports[name]
        except KeyError:
            raise _missing("vendor", name, self.transports) from None

    def target(self, name: str) -> TargetSpec | None:
        return self.targets.get(name)

    def writer(self, name: str) -> WritebackTarget:
        try:
            return self.writers[name]
        except KeyError:
            raise _missing("write-back target", name, self.writers) from None

    def write_back(self, route: str) -> tuple[str, ...] | None:
        found = self.routes_write_back.get(route)
        return found if found is not None else self.retired_routes.get(route)

    def shadow(self, route: str, vendor: str) -> bool:
        return configured_shadow(self.settings, route, vendor)

    def deidentify(self, vendor: str, route: str) -> Deidentify | None:
        if route in self.retired_deidentify and route not in self.routes_write_back:
            return self.retired_deidentify[route]
        return self.settings.deidentify(vendor, route)

    def priors(self, route: str) -> PriorsPolicy | None:
        return self.settings.priors(route)

    def regulatory(self, vendor: str) -> str | None:
        return self.settings.regulatory_label(vendor)

    @property
    def pseudonym_secret(self) -> str | None:
        secret = self.settings.privacy.pseudonym_secret
        return secret.get_secret_value() if secret is not None else None

    @property
    def verdict_links(self) -> VerdictLinks | None:
        http = self.settings.http
        secret = self.settings.link_secret(LinkPurpose.VERDICT)
        if http is None or secret is None:
            return None
        return VerdictLinks(secret, http.base_url(), http.verdict_link_days)

    # ------------------------------------------------------------ life

    def close(self) -> None:
        """Let go of the connections its targets and transports hold."""
        for name, writer in self.writers.items():
            try:
                writer.close()
            except Exception:  # closing must not stop the others
                LOG.exception("write-back target did not close cleanly", target=name)
        for name, transport in self.transports.items():
            close = getattr(transport, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    LOG.exception("vendor transport did not close cleanly", vendor=name)


def build_snapshot(
    settings: Settings,
    source: Path | None = None,
    *,
    draining_vendors: Collection[str] = (),
    draining_targets: Collection[str] = (),
    retired_routes: Mapping[str, tuple[str, ...]] | None = None,
    retired_deidentify: Mapping[str, Deidentify] | None = None,
) -> Snapshot:
    """Everything the service runs on, built and checked from ``settings``.

    ``draining_vendors`` and ``draining_targets`` name entries of ``settings`` kept only
    to finish their work, ``retired_routes`` the write-back lists of removed routes and
    ``retired_deidentify`` their ``deidentify`` blocks (see :mod:`broker.runtime.reload`). Raises
    :class:`ConfigError` with every problem when a part cannot be built (an unknown
    transport type, a route naming a vendor that is not configured).
    """
    rules = routing_rules(settings)
    specs = vendor_specs(settings)
    targets = target_specs(settings)
    write_back = {route.name: tuple(route.write_back) for route in settings.routes}
    site_names = settings.site_target_names()
    problems = [
        f"routes.{route}: sends to vendor '{vendor}', which is not configured"
        for route, vendors in ((r.name, r.send) for r in settings.routes)
        for vendor in vendors
        if vendor not in specs
    ] + [
        f"routes.{route}: writes back to '{target}', which is not configured"
        for route, names in write_back.items()
        for target in names
        if target not in targets
        and not (target.startswith(SITE_TARGET_PREFIX) and target in site_names)
    ]
    if problems:
        raise ConfigError(problems[0], problems)
    transports = build_transports(settings)
    writers = build_targets(targets)
    for name, vendor in settings.vendors.items():
        if vendor.transport.tells_cancellation:  # corrections reach the vendor too
            told = vendor_target(name)
            targets[told] = TargetSpec(
                told,
                VENDOR_TARGET_TYPE,
                {},
                vendor.retries,
                settings.delivery.backoff_base_seconds,
                settings.delivery.backoff_cap_seconds,
            )
            writers[told] = VendorCancellation(name, transports[name])
    config = view(settings)
    draining = [*draining_vendors, *(f"target:{t}" for t in draining_targets)]
    return Snapshot(
        id=snapshot_id(config, draining),
        settings=settings,
        rules=rules,
        vendors=specs,
        transports=transports,
        targets=targets,
        writers=writers,
        routes_write_back=write_back,
        policies=result_policies(settings),
        view=config,
        critical_policy=critical_policy(settings),
        sites=settings.site_directory(),
        source=source,
        draining_vendors=frozenset(draining_vendors),
        draining_targets=frozenset(draining_targets),
        retired_routes={
            name: targets
            for name, targets in (retired_routes or {}).items()
            if name not in write_back
        },
        retired_deidentify={
            name: profile
            for name, profile in (retired_deidentify or {}).items()
            if name not in write_back
        },
    )


SwapListener = Callable[[Snapshot, Snapshot], None]


class SnapshotHolder:
    """The snapshot in force; swapped whole, in one step, by a reload."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._current = snapshot
        self._lock = threading.Lock()
        self._users: dict[int, int] = {}
        self._retired: dict[int, Snapshot] = {}
        self._listeners: list[SwapListener] = []

    @property
    def current(self) -> Snapshot:
        return self._current

    @property
    def settings(self) -> Settings:
        """The settings in force (a shorthand for ``current.settings``)."""
        return self._current.settings

    @contextmanager
    def use(self) -> Iterator[Snapshot]:
        """The snapshot in force, kept open until the block ends (one decision or attempt)."""
        with self._lock:
            snapshot = self._current
            key = id(snapshot)
            self._users[key] = self._users.get(key, 0) + 1
        try:
            yield snapshot
        finally:
            with self._lock:
                self._users[key] -= 1
                idle = self._users[key] == 0
                if idle:
                    del self._users[key]
                retired = self._retired.pop(key, None) if idle else None
            if retired is not None:
                retired.close()

    def on_swap(self, listener: SwapListener) -> None:
        """Call ``listener(old, new)`` after every swap; a failing listener is logged."""
        self._listeners.append(listener)

    def swap(self, new: Snapshot) -> Snapshot:
        """Put ``new`` in force; the old one closes once no decision or attempt uses it."""
        with self._lock:
            old = self._current
            self._current = new
            in_use = self._users.get(id(old), 0) > 0
            if in_use:
                self._retired[id(old)] = old
        if not in_use and old is not new:
            old.close()
        LOG.info("configuration in force", snapshot=new.id, previous=old.id)
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                LOG.exception("configuration swap listener failed", snapshot=new.id)
        return old

    def close(self) -> None:
        """Close the snapshot in force and every retired one (at stop)."""
        with self._lock:
            retired = list(self._retired.values())
            self._retired.clear()
            current = self._current
        for snapshot in [*retired, current]:
            snapshot.close()
