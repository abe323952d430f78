"""The ``hl7`` edge inside ``radbridge serve``: what was acknowledged survives ``kill -9``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapters.hl7.ack import AckCode, read_ack
from adapters.hl7.framing import frame
from broker.store import make_engine
from broker.store.orders import OrderStore
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import LOOPBACK, free_port
from tests.service import Radbridge, base_config

MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")


def test_kill_9_after_the_ack_loses_no_order(tmp_path: Path) -> None:
    """20 orders ACKed AA, then kill -9: after a restart all 20 are stored; no PHI in the log."""
    folder = tmp_path / "rb"
    config = base_config(folder, free_port())
    hl7_port = free_port()
    config["hl7"] = {"listen": {"host": LOOPBACK, "port": hl7_port}}
    rb = Radbridge(folder, config)
    try:
        rb.start()
        assert "hl7 listener started" in rb.log_path.read_text()
        path = tmp_path / "orders.hl7"
        path.write_bytes(
            b"".join(
                frame(orm_o01(sample_order(n), control_id=f"K{n}").encode()) for n in range(20)
            )
        )
        sent = subprocess.run(
            [MLLP_SEND, "--file", str(path), "--port", str(hl7_port), LOOPBACK],
            capture_output=True,
            timeout=60,
            check=True,
        )
        blocks = [b.strip(b"\x0b\r\n") for b in sent.stdout.split(b"\x1c")]
        acks = [read_ack(b) for b in blocks if b]
        assert [(a.code, a.control_id) for a in acks] == [(AckCode.AA, f"K{n}") for n in range(20)]
        rb.kill9()
        log = rb.log_path.read_text()
        assert "PAT001" not in log and "DOE" not in log  # no patient IDs or names in the log
        rb.start()
        store = OrderStore(make_engine(config["storage"]["database"]))
        for n in range(20):
            assert store.get(f"ACC{n:06d}").order == sample_order(n)
    finally:
        rb.close()
