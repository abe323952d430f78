"""Listener slots: pending connections, associations, and connections per peer address.

A connection is *pending* from the moment the acceptor takes it until its
A-ASSOCIATE-RQ is read and accepted; from then on it is an *association*.
Both are counted per listener process in memory shared by the acceptor (in the
service process) and every listener process, under one lock:

- the acceptor *admits* a connection before handing it over, or closes it at
  once when ``max_pending_connections`` are pending already or its peer
  address holds ``max_connections_per_peer`` connections;
- the listener process *promotes* it when its A-ASSOCIATE-RQ passes the
  association policy, unless ``max_associations`` are open already (then the
  request is rejected, local limit exceeded, and the connection stays pending
  until it closes);
- the listener process *ends* its association as it answers an A-RELEASE-RQ,
  before the A-RELEASE-RP goes out: a requestor that got its answer and
  associates again finds the slot free; the connection, closing, still counts
  against its peer address;
- the listener process *releases* it exactly once, in the ``finally`` of the
  thread that owns the connection, however the connection ended.

Each open connection has one entry, keyed by its socket's inode: the acceptor
and the listener process see the same socket (the descriptor is passed over a
Unix socket), and its inode is there even after the peer has reset it, when
its address no longer is. A :class:`Lease` is one connection's claim;
releasing it twice is harmless.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import ipaddress
import multiprocessing
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from config.schema import Dicom

_SPAWN = multiprocessing.get_context("spawn")
_MASK = (1 << 64) - 1


class Refusal(enum.StrEnum):
    """Why the acceptor closed a connection without reading from it."""

    TOO_MANY_PENDING = "too_many_pending_connections"
    TOO_MANY_FROM_PEER = "too_many_connections_from_peer"


class Held(enum.IntEnum):
    """What a connection holds on the board: a pending slot, an association slot, or (its
    association released, the connection closing) only its place among its peer address's
    connections."""

    PENDING = 0
    ASSOCIATED = 1
    ENDED = 2


@dataclass(frozen=True)
class Limits:
    max_associations: int
    max_pending: int
    max_per_peer: int

    @classmethod
    def from_settings(cls, dicom: Dicom) -> Limits:
        return cls(
            max_associations=dicom.max_associations,
            max_pending=dicom.max_pending_connections,
            max_per_peer=dicom.max_connections_per_peer,
        )


def address_key(address: str) -> tuple[int, int]:
    """An address as two 64-bit halves (IPv4 as IPv4-mapped IPv6; anything else hashed)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        value = int(ip) | (0xFFFF << 32) if ip.version == 4 else int(ip)
    except ValueError:
        value = int.from_bytes(hashlib.sha256(address.encode()).digest()[:16], "big")
    return value >> 64, value & _MASK


def inode_of(conn: socket.socket) -> int:
    """The socket's identity, the same in every process that holds a descriptor of it."""
    return os.fstat(conn.fileno()).st_ino


class SlotBoard:
    """The shared counts; built in the service process and passed to each listener process."""

    def __init__(self, processes: int, limits: Limits, context: Any = _SPAWN) -> None:
        self.limits = limits
        self.processes = processes
        # An open connection is pending, an association, or closing after its release (a
        # moment): room for as many closing as associated ones.
        self._size = limits.max_pending + 2 * limits.max_associations
        self._lock = context.Lock()
        self._pending = context.Array("i", processes, lock=False)
        self._associations = context.Array("i", processes, lock=False)
        self._inodes = context.Array(ctypes.c_uint64, self._size, lock=False)  # 0: free
        self._addresses = context.Array(ctypes.c_uint64, 2 * self._size, lock=False)
        self._slots = context.Array("i", self._size, lock=False)
        self._state = context.Array("b", self._size, lock=False)  # Held, by entry

    def _find(self, slot: int, inode: int) -> int:
        for i in range(self._size):
            if self._inodes[i] == inode and self._slots[i] == slot:
                return i
        return -1

    # -- the acceptor ---------------------------------------------------------------

    def admit(self, slot: int, address: str, inode: int) -> Refusal | None:
        """Count a new connection against ``slot``, or say why it must be closed."""
        high, low = address_key(address)
        with self._lock:
            if sum(self._pending[:]) >= self.limits.max_pending:
                return Refusal.TOO_MANY_PENDING
            free = -1
            from_peer = 0
            for i in range(self._size):
                if self._inodes[i] == 0:
                    free = i if free < 0 else free
                elif self._addresses[2 * i] == high and self._addresses[2 * i + 1] == low:
                    from_peer += 1
            if from_peer >= self.limits.max_per_peer:
                return Refusal.TOO_MANY_FROM_PEER
            if free < 0:  # only if every association slot is taken too
                return Refusal.TOO_MANY_PENDING
            self._inodes[free] = inode
            self._addresses[2 * free] = high
            self._addresses[2 * free + 1] = low
            self._slots[free] = slot
            self._state[free] = Held.PENDING
            self._pending[slot] += 1
        return None

    def admit_connection(self, slot: int, conn: socket.socket, address: str) -> Refusal | None:
        return self.admit(slot, address, inode_of(conn))

    def reset(self, slot: int) -> None:
        """Forget every connection of a listener process that is gone."""
        with self._lock:
            self._pending[slot] = 0
            self._associations[slot] = 0
            for i in range(self._size):
                if self._slots[i] == slot:
                    self._inodes[i] = 0

    def least_busy(self, slots: list[int]) -> list[int]:
        """Slots from the fewest to the most open connections."""
        return sorted(slots, key=lambda s: int(self._pending[s]) + int(self._associations[s]))

    # -- a listener process ---------------------------------------------------------

    def promote(self, slot: int, inode: int) -> bool:
        """Turn a pending connection into an association, unless all association slots
        are taken."""
        with self._lock:
            if sum(self._associations[:]) >= self.limits.max_associations:
                return False
            entry = self._find(slot, inode)
            if entry >= 0:
                self._state[entry] = Held.ASSOCIATED
            self._pending[slot] = max(0, self._pending[slot] - 1)
            self._associations[slot] += 1
            return True

    def end_association(self, slot: int, inode: int) -> None:
        """An association of ``slot`` was released: its slot is free, its connection (closing)
        still counts against its peer address until :meth:`release`."""
        with self._lock:
            entry = self._find(slot, inode)
            if entry >= 0:
                self._state[entry] = Held.ENDED
            self._associations[slot] = max(0, self._associations[slot] - 1)

    def release(self, slot: int, inode: int, *, state: Held) -> None:
        """A connection of ``slot`` has closed (``state``: its own count of what it held,
        used if the board forgot the connection)."""
        with self._lock:
            entry = self._find(slot, inode)
            if entry >= 0:
                state = Held(self._state[entry])
                self._inodes[entry] = 0
            if state == Held.ENDED:
                return
            counts = self._associations if state == Held.ASSOCIATED else self._pending
            counts[slot] = max(0, counts[slot] - 1)

    # -- reading --------------------------------------------------------------------

    def pending(self) -> int:
        return sum(int(c) for c in self._pending[:])

    def associations(self) -> int:
        return sum(int(c) for c in self._associations[:])


class Lease:
    """One connection's claim on its listener process's slots: pending, then an association,
    then (released) a connection closing."""

    def __init__(self, board: SlotBoard, slot: int, inode: int) -> None:
        self.board = board
        self.slot = slot
        self.inode = inode
        self._state = Held.PENDING
        self._released = False
        self._lock = threading.Lock()

    @property
    def associated(self) -> bool:
        return self._state == Held.ASSOCIATED

    @property
    def released(self) -> bool:
        """The connection has ended: the lease holds nothing any more."""
        return self._released

    def promote(self) -> bool:
        """Count this connection as an association; False if none is free, or if the
        connection has ended already (:attr:`released` tells which)."""
        with self._lock:
            if self._released or self._state == Held.ENDED:
                return False
            if self._state == Held.PENDING and self.board.promote(self.slot, self.inode):
                self._state = Held.ASSOCIATED
            return self._state == Held.ASSOCIATED

    def end_association(self) -> None:
        """The association is released: give its slot back now (the connection closes next)."""
        with self._lock:
            if self._released or self._state != Held.ASSOCIATED:
                return
            self._state = Held.ENDED
            self.board.end_association(self.slot, self.inode)

    def release(self) -> None:
        """Give everything back (once; later calls do nothing)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self.board.release(self.slot, self.inode, state=self._state)


@dataclass(frozen=True)
class ProcessSlots:
    """One listener process's view of the board: its slot number and the shared counts."""

    board: SlotBoard
    slot: int

    def lease(self, conn: socket.socket) -> Lease:
        return Lease(self.board, self.slot, inode_of(conn))


__all__ = [
    "Held",
    "Lease",
    "Limits",
    "ProcessSlots",
    "Refusal",
    "SlotBoard",
    "address_key",
    "inode_of",
]
