"""Reloading the configuration file: build a whole new snapshot, check it, swap it in one step.

A reload (SIGHUP, the file changing, ``POST /api/v1/config/reload``,
``radbridge config reload``) loads and validates the file, compares it with the
snapshot in force (:mod:`broker.runtime.config_diff`) and builds a complete
:class:`~broker.runtime.snapshot.Snapshot`; only when all of that succeeded does
the holder swap it in. It is refused as a whole, and the snapshot in force stays,
when:

- the file is invalid (every problem, ``FILE:LINE: field: …``);
- a setting only a restart applies changed: one ``restart required: PATH
  changed`` line per setting;
- a vendor that still has unfinished jobs, or a write-back target that still has
  unfinished write-backs, is removed: the refusal names them. With *drain* the
  removal is accepted and the vendor (target) is kept, with its last settings, only
  to finish that work: no route sends to it any more; its jobs are still
  delivered, retried and their results accepted. Once none of its work is in
  progress it leaves the configuration in force (a new snapshot, recorded and
  audited as ``drained``); a ``dead`` job or write-back of it is left dead and
  named in that audit entry.

A route a reload removes keeps its write-back list for the jobs it made: their
results are written back where the route said when they were sent (a target that
is gone by then is skipped, and logged).

Every reload is audited (``config.reload``: who, the snapshot ids, what changed or
why it was refused); every snapshot the service puts in force is recorded in the
store (:class:`broker.store.snapshots.SnapshotLog`).

A ``radbridge worker`` process reloads its own file the same way but follows the
service: it drains what the service's snapshot in force drains, it puts a new
configuration in force only when its vendors and delivery settings agree with the
service's snapshot in force, and it reloads again whenever the service puts a new
snapshot in force.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine

from broker.model.deid import Deidentify
from broker.model.errors import ConfigError, StoreError
from broker.model.logging import get_logger
from broker.model.writeback import WEBHOOK_TARGET
from broker.runtime.config_diff import ConfigView, diff, removed, view
from broker.runtime.snapshot import Snapshot, SnapshotHolder, build_snapshot
from broker.store.audit import SYSTEM, Action, AuditLog
from broker.store.snapshots import SnapshotLog, listed, unfinished
from config.loader import load_settings
from config.schema import Settings

LOG = get_logger("radbridge.reload")
RELOAD_POLL_SECONDS = 2.0
#: The parts of a configuration a ``radbridge worker`` uses: it puts a file in force only
#: when they agree with the service's snapshot in force.
WORKER_SECTIONS = ("vendors", "delivery")

Trigger = Literal["start", "sighup", "file", "api", "drained", "service"]
Refusal = Literal["invalid", "restart_required", "unfinished_work", "no_file", "service_differs"]
Role = Literal["service", "worker"]


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: the snapshot in force after it, and the problems if it was refused."""

    reloaded: bool
    snapshot: str
    """The id of the snapshot in force after the reload (the old one when refused)."""
    previous: str
    problems: tuple[str, ...] = field(default_factory=tuple)
    """Why it was refused: invalid settings, ``restart required: …``, unfinished work."""
    changes: tuple[str, ...] = field(default_factory=tuple)
    """What changed (or would have), as ``config diff`` prints it."""
    restart_required: tuple[str, ...] = field(default_factory=tuple)
    draining: tuple[str, ...] = field(default_factory=tuple)
    """Vendors (``NAME``) and targets (``target:NAME``) kept only to finish their work."""
    unfinished: dict[str, list[int]] = field(default_factory=dict)
    """The job ids (``vendors.NAME``) and write-back ids (``targets.NAME``) that refused it,
    or that a drain keeps going."""
    refusal: Refusal | None = None
    """Why it was refused, in one word (None: it was not)."""

    @property
    def changed(self) -> bool:
        return self.snapshot != self.previous

    def as_json(self) -> dict[str, Any]:
        return {
            "reloaded": self.reloaded,
            "changed": self.changed,
            "snapshot": self.snapshot,
            "previous": self.previous,
            "problems": list(self.problems),
            "changes": list(self.changes),
            "restart_required": list(self.restart_required),
            "draining": list(self.draining),
            "unfinished": self.unfinished,
            "refusal": self.refusal,
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked candidate: the settings to build, what drains, or why it is refused."""

    settings: Settings
    changes: tuple[str, ...]
    problems: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    draining_vendors: frozenset[str] = frozenset()
    draining_targets: frozenset[str] = frozenset()
    unfinished: dict[str, list[int]] = field(default_factory=dict)


def _retired(old: Snapshot) -> dict[str, tuple[str, ...]]:
    """The write-back lists of every route ``old`` knows (in force or retired before): the
    ones a new configuration no longer has stay for the jobs those routes made."""
    return {**old.retired_routes, **old.routes_write_back}


def _retired_deidentify(old: Snapshot) -> dict[str, Deidentify]:
    """The ``deidentify`` blocks of every route ``old`` knows, like :func:`_retired`."""
    current = {r.name: r.deidentify for r in old.settings.routes if r.deidentify is not None}
    return {**old.retired_deidentify, **current}


def target_path(name: str) -> str:
    """Where a write-back target is configured: ``targets.NAME``, or the webhook's block."""
    return name if name == WEBHOOK_TARGET else f"targets.{name}"


def _draining_names(snapshot: Snapshot) -> tuple[str, ...]:
    return (
        *sorted(snapshot.draining_vendors),
        *(f"target:{t}" for t in sorted(snapshot.draining_targets)),
    )


def keep(
    settings: Settings,
    old: Settings,
    vendors: Collection[str],
    targets: Collection[str],
) -> Settings:
    """``settings`` with the vendors and targets of ``old`` named here added back as they
    were (to drain: no route of ``settings`` names them)."""
    update: dict[str, Any] = {
        "vendors": {**settings.vendors, **{v: old.vendors[v] for v in vendors}},
        "targets": {
            **settings.targets,
            **{t: old.targets[t] for t in targets if t != WEBHOOK_TARGET},
        },
    }
    if WEBHOOK_TARGET in targets:
        update["notifications"] = settings.notifications.model_copy(
            update={"webhook": old.notifications.webhook}
        )
    return settings.model_copy(update=update)


def without(settings: Settings, vendors: Collection[str], targets: Collection[str]) -> Settings:
    """``settings`` without the vendors and targets named (a drain that finished)."""
    update: dict[str, Any] = {
        "vendors": {k: v for k, v in settings.vendors.items() if k not in vendors},
        "targets": {k: t for k, t in settings.targets.items() if k not in targets},
    }
    if WEBHOOK_TARGET in targets:
        update["notifications"] = settings.notifications.model_copy(update={"webhook": None})
    return settings.model_copy(update=update)


class Reloader:
    """Reloads one configuration file into a :class:`SnapshotHolder`.

    ``engine`` (the store) lets it refuse removals that would drop unfinished work,
    record each snapshot put in force and audit each reload; without it (tests,
    one-off tools) it only loads, checks the restart-required settings and swaps.
    """

    def __init__(
        self,
        holder: SnapshotHolder,
        path: Path | None,
        *,
        engine: Engine | None = None,
        role: Role = "service",
    ) -> None:
        self.holder = holder
        self.path = path
        self.engine = engine
        self.role = role
        self.snapshots = SnapshotLog(engine) if engine is not None else None
        self.audit = AuditLog(engine) if engine is not None and role == "service" else None
        self._mtime = path.stat().st_mtime if path is not None and path.exists() else None
        self._followed: str | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- in force

    def put_in_force_at_start(self) -> None:
        """Record the snapshot the service starts with (the store is migrated by now), and
        say loudly if the file dropped a vendor or target that still has unfinished work."""
        if self.snapshots is None or self.role != "service":
            return
        current = self.holder.current
        try:
            last = self.snapshots.in_force()
            if last is not None:
                gone = removed(ConfigView.from_json(last.config), current.view)
                self._warn_dropped(gone.vendors, gone.targets)
            self._record(current, last.snapshot if last else None, "start")
        except StoreError as exc:
            LOG.error("the configuration snapshot in force is not recorded", error=str(exc))

    def _warn_dropped(self, vendors: Collection[str], targets: Collection[str]) -> None:
        assert self.engine is not None
        work = unfinished(self.engine, vendors, targets)
        for vendor, items in work.jobs.items():
            LOG.error(
                "started without a vendor that has unfinished jobs; they cannot be delivered: "
                "add the vendor back to the file, or cancel them (radbridge jobs cancel ID)",
                vendor=vendor,
                jobs=listed(items),
            )
        for target, items in work.writebacks.items():
            LOG.error(
                "started without a write-back target that has unfinished write-backs; add the "
                "target back to the file to finish them",
                target=target,
                writebacks=listed(items),
            )

    def _record(self, snapshot: Snapshot, previous: str | None, trigger: Trigger) -> None:
        if self.snapshots is None or self.role != "service":
            return
        self.snapshots.record(
            snapshot=snapshot.id,
            previous=previous,
            loaded_at=snapshot.loaded_at,
            trigger=trigger,
            source=str(snapshot.source) if snapshot.source is not None else None,
            config=snapshot.view.to_json(),
            draining_vendors=snapshot.draining_vendors,
            draining_targets=snapshot.draining_targets,
        )

    # ---------------------------------------------------------------- reload

    def reload(
        self,
        *,
        drain: bool = False,
        trigger: Trigger = "api",
        actor: str = SYSTEM,
        peer: str = "",
    ) -> ReloadOutcome:
        """Load the file again; on any problem keep the snapshot in force and say why.

        ``drain`` accepts the removal of vendors and targets that still have unfinished
        work: they stay, only to finish it (see the module's documentation).
        """
        with self._lock:
            outcome = self._reload(drain=drain, trigger=trigger)
        self._audit(outcome, trigger, actor, peer, drain=drain)
        return outcome

    def _reload(self, *, drain: bool, trigger: Trigger) -> ReloadOutcome:
        old = self.holder.current
        if self.path is None:
            problem = "this radbridge was not started from a configuration file"
            return ReloadOutcome(False, old.id, old.id, (problem,), refusal="no_file")
        try:
            loaded = load_settings(self.path)
            plan = self._plan(old, loaded, drain=drain)
        except ConfigError as exc:
            return self._refused(old, tuple(exc.problems), "invalid")
        except StoreError as exc:
            problem = f"cannot read the unfinished jobs and write-backs from the store: {exc}"
            return self._refused(old, (problem,), "unfinished_work")
        if plan.problems:
            reason: Refusal = "restart_required" if plan.restart else "unfinished_work"
            return self._refused(old, plan.problems, reason, plan)
        try:
            new = build_snapshot(
                plan.settings,
                self.path,
                draining_vendors=plan.draining_vendors,
                draining_targets=plan.draining_targets,
                retired_routes=_retired(old),
                retired_deidentify=_retired_deidentify(old),
            )
        except ConfigError as exc:
            return self._refused(old, tuple(exc.problems), "invalid", plan)
        if new.id == old.id:
            new.close()
            LOG.info("configuration reloaded; nothing changed", snapshot=old.id)
            return ReloadOutcome(True, old.id, old.id, draining=_draining_names(old))
        if self.role == "worker":
            disagreement = self._disagrees_with_service(new)
            if disagreement:
                new.close()
                return self._refused(old, (disagreement,), "service_differs", plan)
        self.holder.swap(new)
        try:
            self._record(new, old.id, trigger)
        except StoreError as exc:
            LOG.error("the configuration snapshot in force is not recorded", error=str(exc))
        LOG.info(
            "configuration reloaded",
            snapshot=new.id,
            previous=old.id,
            routes=len(new.settings.routes),
            vendors=len(new.settings.vendors),
            changes=list(plan.changes),
            draining=list(_draining_names(new)),
        )
        return ReloadOutcome(
            True,
            new.id,
            old.id,
            changes=plan.changes,
            draining=_draining_names(new),
            unfinished=plan.unfinished,
        )

    def _refused(
        self,
        old: Snapshot,
        problems: tuple[str, ...],
        reason: Refusal,
        plan: _Plan | None = None,
    ) -> ReloadOutcome:
        LOG.error(
            "configuration not reloaded; the running configuration stays in force",
            snapshot=old.id,
            problems=list(problems),
        )
        return ReloadOutcome(
            False,
            old.id,
            old.id,
            problems,
            changes=plan.changes if plan else (),
            restart_required=plan.restart if plan else (),
            draining=_draining_names(old),
            unfinished=plan.unfinished if plan else {},
            refusal=reason,
        )

    def _plan(self, old: Snapshot, loaded: Settings, *, drain: bool) -> _Plan:
        """Check ``loaded`` against the snapshot in force: what it changes, what needs a
        restart, which removals would drop unfinished work and whether they drain."""
        file_view = view(loaded)
        changes = tuple(diff(old.view, file_view).lines())
        gone = removed(old.view, file_view)
        problems: list[str] = []
        ids: dict[str, list[int]] = {}
        if self.role == "worker":
            # A worker drains what the service drains; whether a removal is accepted at
            # all is the service's decision (the worker then agrees with it, or waits).
            service = self._service_drains()
            keep_vendors = {v for v in gone.vendors if v in service}
            keep_targets = {t for t in gone.targets if f"target:{t}" in service}
            fresh_vendors: list[str] = []
            fresh_targets: list[str] = []
        else:
            keep_vendors = {v for v in gone.vendors if v in old.draining_vendors}
            keep_targets = {t for t in gone.targets if t in old.draining_targets}
            fresh_vendors = [v for v in gone.vendors if v not in keep_vendors]
            fresh_targets = [t for t in gone.targets if t not in keep_targets]
        if self.engine is not None and (fresh_vendors or fresh_targets):
            work = unfinished(self.engine, fresh_vendors, fresh_targets)
            for vendor, items in work.jobs.items():
                ids[f"vendors.{vendor}"] = [i.id for i in items]
                if drain:
                    keep_vendors.add(vendor)
                    continue
                problems.append(
                    f"vendors.{vendor} removed while it has {len(items)} unfinished "
                    f"job(s): {listed(items)}; valid: let them finish, cancel them "
                    f"(radbridge jobs cancel ID), or reload with drain (radbridge config "
                    f"reload --drain) so that {vendor} gets no new study and finishes them first"
                )
            for target, items in work.writebacks.items():
                ids[target_path(target)] = [i.id for i in items]
                if drain:
                    keep_targets.add(target)
                    continue
                problems.append(
                    f"{target_path(target)} removed while it has {len(items)} unfinished "
                    f"write-back(s): {listed(items)}; valid: let them finish, or reload with "
                    f"drain (radbridge config reload --drain) so that {target} finishes them "
                    "first"
                )
        settings = keep(loaded, old.settings, keep_vendors, keep_targets)
        restart = tuple(diff(old.view, view(settings)).restart)
        return _Plan(
            settings=settings,
            changes=changes,
            problems=(*restart, *problems),
            restart=restart,
            draining_vendors=frozenset(keep_vendors),
            draining_targets=frozenset(keep_targets),
            unfinished=ids,
        )

    # ---------------------------------------------------------------- draining

    def finish_draining(self) -> ReloadOutcome | None:
        """Let the draining vendors and targets that have no work in progress go: a new
        snapshot without them, recorded and audited (``drained``). None when none is done."""
        if self.engine is None or self.role != "service":
            return None
        with self._lock:
            old = self.holder.current
            if not old.draining_vendors and not old.draining_targets:
                return None
            work = unfinished(self.engine, old.draining_vendors, old.draining_targets)
            busy_vendors, busy_targets = work.in_progress()
            done_vendors = old.draining_vendors - busy_vendors
            done_targets = old.draining_targets - busy_targets
            if not done_vendors and not done_targets:
                return None
            new = build_snapshot(
                without(old.settings, done_vendors, done_targets),
                old.source,
                draining_vendors=old.draining_vendors & busy_vendors,
                draining_targets=old.draining_targets & busy_targets,
                retired_routes=old.retired_routes,
                retired_deidentify=old.retired_deidentify,
            )
            self.holder.swap(new)
            self._record(new, old.id, "drained")
        left = {f"vendors.{v}": [i.id for i in work.jobs.get(v, [])] for v in done_vendors}
        left |= {target_path(t): [i.id for i in work.writebacks.get(t, [])] for t in done_targets}
        names = (*sorted(done_vendors), *(f"target:{t}" for t in sorted(done_targets)))
        LOG.info(
            "drained: removed vendors and targets left the configuration in force",
            snapshot=new.id,
            previous=old.id,
            drained=list(names),
            left_dead=left,
        )
        outcome = ReloadOutcome(
            True,
            new.id,
            old.id,
            changes=tuple(f"drained: {n}" for n in names),
            draining=_draining_names(new),
            unfinished=left,
        )
        self._audit(outcome, "drained", SYSTEM, "")
        return outcome

    def _service_drains(self) -> set[str]:
        """What the service's snapshot in force keeps draining (``NAME``, ``target:NAME``)."""
        if self.snapshots is None:
            return set()
        record = self.snapshots.in_force()
        if record is None:
            return set()
        return {*record.draining_vendors, *(f"target:{t}" for t in record.draining_targets)}

    def _disagrees_with_service(self, new: Snapshot) -> str | None:
        """Why a worker does not put ``new`` in force: the service runs other vendor or
        delivery settings (None when they agree, or no service recorded a snapshot)."""
        if self.snapshots is None:
            return None
        try:
            record = self.snapshots.in_force()
        except StoreError as exc:
            return f"cannot read the service's configuration snapshot in force: {exc}"
        if record is None:
            return None
        theirs = ConfigView.from_json(record.config).settings
        ours = new.view.settings
        differ = [s for s in WORKER_SECTIONS if theirs.get(s) != ours.get(s)]
        if not differ:
            return None
        return (
            f"the service has snapshot {record.snapshot} in force, whose "
            f"{' and '.join(differ)} differ from this file's; this worker keeps its "
            "configuration until they agree (it reloads when the service puts a new "
            "snapshot in force)"
        )

    # ---------------------------------------------------------------- audit, watch

    def _audit(
        self, outcome: ReloadOutcome, trigger: str, actor: str, peer: str, *, drain: bool = False
    ) -> None:
        if self.audit is None:
            return
        detail: dict[str, Any] = {
            "trigger": trigger,
            "reloaded": outcome.reloaded,
            "changed": outcome.changed,
            "snapshot": outcome.snapshot,
            "previous": outcome.previous,
            "problems": list(outcome.problems),
            "changes": list(outcome.changes),
            "draining": list(outcome.draining),
        }
        if drain:
            detail["drain"] = True
        if outcome.unfinished:
            detail["unfinished"] = outcome.unfinished
        try:
            self.audit.record(actor, Action.CONFIG_RELOAD, f"config:{self.path}", detail, peer)
        except StoreError as exc:
            LOG.error("reload not audited", error=str(exc), detail=json.dumps(detail))

    def watch(self, stop: threading.Event, hup: threading.Event) -> None:
        """Reload on SIGHUP (``hup`` set) or when the file's modification time changes; in
        the service, let drained vendors go; in a worker, follow the service's snapshots.

        The owner stops it by setting ``stop`` and then ``hup`` (to wake it at once)."""
        while not stop.is_set():
            if hup.wait(RELOAD_POLL_SECONDS):
                if stop.is_set():
                    return
                hup.clear()
                self._mtime = self._file_mtime()
                self.reload(trigger="sighup")
                continue
            try:
                self._tick()
            except (StoreError, ConfigError) as exc:
                LOG.error("configuration watch failed; trying again", error=str(exc))

    def _file_mtime(self) -> float | None:
        if self.path is None or not self.path.exists():
            return None
        return self.path.stat().st_mtime

    def _tick(self) -> None:
        mtime = self._file_mtime()
        if mtime is not None and mtime != self._mtime:
            self._mtime = mtime
            self.reload(trigger="file")
        elif self.role == "service":
            self.finish_draining()
        elif self.snapshots is not None:
            record = self.snapshots.in_force()
            if record is not None and record.snapshot != self._followed:
                self._followed = record.snapshot
                if record.snapshot != self.holder.current.id:
                    self.reload(trigger="service")
