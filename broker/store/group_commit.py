"""Group commit: the instances of every association of a process indexed together.

Before a C-STORE is answered success, the instance's file must be in its study
folder durably (the folder fsync'd after the rename) and its index row
committed (synced when it re-opens a stable study: see
:meth:`StudyStore.record_instances`). Each C-STORE syncs its own folder, in its
own thread, while other associations commit; the commit is shared.

:class:`GroupCommit` hands the renamed instance to the process's group commit.
The C-STORE that finds no commit under way commits in its own thread: once it
holds the database's writer lock (another listener process may be committing),
it takes every instance waiting, its own among them, indexes them all in one
transaction (a savepoint each) and commits once; then each waiting C-STORE is
answered. Instances that arrive meanwhile wait, and the first of them commits
the next group. Nobody waits for a timer and no thread is handed the work: one
association alone pays no more than indexing its instance directly; several,
and the other processes' commits, make the groups larger.

An instance whose folder cannot be synced fails alone (:class:`SpoolError`);
one that meets an identity conflict (or any error under its savepoint) is
indexed again by itself in its own thread, which records and raises what it
met, as :meth:`StudyStore.record_instance` always has. A failed commit fails
the whole group with :class:`StoreError`: none of it was acknowledged.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker.model.domain import InstanceRecord
from broker.model.errors import StoreError
from broker.model.logging import get_logger
from broker.store.engine import writer_lock
from broker.store.spool import Spool
from broker.store.studies import Indexed, StudyStore

LOG = get_logger("radbridge.store")
#: Most instances one commit takes (the rest wait for the next, a few milliseconds).
MAX_GROUP = 256


@dataclass(slots=True)
class _Waiting:
    """One instance waiting for its group to be durable."""

    record: InstanceRecord
    stable_seconds: float
    done: threading.Event = field(default_factory=threading.Event)
    indexed: Indexed | None = None
    error: Exception | None = None
    #: Woken to commit the next group itself (the leader before it had its own group).
    lead: bool = False


class GroupCommit:
    """The group commit of one process (see the module): whoever finds no commit under
    way commits the group, its own instance with every other waiting, itself."""

    def __init__(self, store: StudyStore, *, max_group: int = MAX_GROUP) -> None:
        self.store = store
        self.max_group = max_group
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()
        self._committing = False
        self.groups = 0
        """Commits made (with ``instances``, how well groups form)."""
        self.instances = 0

    def record(
        self, record: InstanceRecord, stable_seconds: float, folders: Sequence[Path]
    ) -> Indexed:
        """Index an instance whose file is flushed and renamed into ``folders[0]`` (the
        other folders: parents of folders the rename created), once its group is durable;
        raises as :meth:`StudyStore.record_instance` does, or :class:`SpoolError`."""
        Spool.sync_folders(folders)  # in this thread, beside the other associations' commits
        waiting = _Waiting(record, stable_seconds)
        with self._lock:
            self._waiting.append(waiting)
            leading = not self._committing
            self._committing = True
        if not leading:
            waiting.done.wait()
        if leading or waiting.lead:
            self._lead(waiting)
        if waiting.error is not None:
            raise waiting.error
        if waiting.indexed is None:  # undone in the group: alone, to record what it met
            return self.store.record_instance(record, stable_seconds)
        return waiting.indexed

    def _lead(self, own: _Waiting) -> None:
        """Commit the waiting group (``own`` among it), then wake the next leader, if any.
        The group is taken once the database's writer lock is held: what arrives while
        another process commits joins it."""
        group: list[_Waiting] = []
        try:
            with writer_lock(self.store.engine):
                with self._lock:
                    group = self._waiting[: self.max_group]
                    del self._waiting[: self.max_group]
                self._commit(group)
        except Exception as exc:  # never leave a C-STORE waiting
            LOG.exception("group commit failed")
            if not group:  # the lock could not be taken: fail every instance waiting
                with self._lock:
                    group, self._waiting = self._waiting, []
            for waiting in group:
                if waiting.error is None:
                    waiting.error = StoreError(f"not indexed: {type(exc).__name__}")
        finally:
            with self._lock:
                following = self._waiting[0] if self._waiting else None
                self._committing = following is not None
            for waiting in group:
                if waiting is not own:
                    waiting.done.set()
            if following is not None:  # it commits the instances that came meanwhile
                following.lead = True
                following.done.set()

    def _commit(self, group: list[_Waiting]) -> None:
        try:
            results = self.store.record_instances([(w.record, w.stable_seconds) for w in group])
        except StoreError as exc:
            for waiting in group:
                waiting.error = exc
            return
        for waiting, indexed in zip(group, results, strict=True):
            waiting.indexed = indexed
        self.groups += 1
        self.instances += len(group)


__all__ = ["MAX_GROUP", "GroupCommit"]
