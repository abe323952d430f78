"""A scripted misbehaving DICOM peer for tests of a listener's defences.

:mod:`~adapters.harness.hostile.peer` plays a script over one connection and
reports what came back; :mod:`~adapters.harness.hostile.pdu` builds PDUs and
command sets byte by byte (any length, any item); and
:mod:`~adapters.harness.hostile.datasets` builds the data sets a hostile sender
would: sequences nested thousands deep, deflate bombs.
"""

from adapters.harness.hostile.peer import (
    Associate,
    AwaitClose,
    Close,
    Echo,
    HostilePeer,
    Idle,
    PeerReport,
    Release,
    Send,
    Step,
    Store,
    Stream,
)

__all__ = [
    "Associate",
    "AwaitClose",
    "Close",
    "Echo",
    "HostilePeer",
    "Idle",
    "PeerReport",
    "Release",
    "Send",
    "Step",
    "Store",
    "Stream",
]
