"""The listener slot board's counts as a connection goes from pending to associated to
released (its association over, the connection closing) to closed."""

from __future__ import annotations

from adapters.dicom.slots import Lease, Limits, Refusal, SlotBoard

PEER = "127.0.0.1"


def _connection(board: SlotBoard, inode: int) -> Lease:
    assert board.admit(0, PEER, inode) is None
    return Lease(board, 0, inode)


def test_a_released_association_frees_its_slot_while_its_connection_counts_for_its_peer() -> None:
    """Ending an association frees its slot for a pending connection at once; until it
    closes, the connection still counts against its peer address (not as pending), and its
    close takes nothing more from the counts."""
    board = SlotBoard(1, Limits(max_associations=1, max_pending=4, max_per_peer=2))
    first, second = _connection(board, 1), _connection(board, 2)
    assert first.promote()
    assert not second.promote()  # the one slot is taken

    first.end_association()
    assert (board.associations(), board.pending()) == (0, 1)
    assert second.promote()
    assert board.admit(0, PEER, 3) is Refusal.TOO_MANY_FROM_PEER  # one closing, one associated
    assert not first.promote()  # a released association does not come back

    first.release()
    first.release()
    assert (board.associations(), board.pending()) == (1, 0)
    assert board.admit(0, PEER, 3) is None
    assert (board.associations(), board.pending()) == (1, 1)
