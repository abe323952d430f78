"""The simulated RIS: the listener against python ``hl7``'s MLLP client, the sender against it
and against a running radbridge."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient

from adapters.harness.ris import RisListener
from tests import cli_fork
from tests.peers import LOOPBACK, free_port, wait_for_port
from tests.service import RADBRIDGE, Radbridge, base_config

Listener = Callable[..., RisListener]

ORU = "\r".join(
    [
        "MSH|^~\\&|RADBRIDGE|HOSP|RIS|HOSP|20240301101500||ORU^R01^ORU_R01|ORU0001|P|2.5.1",
        "PID|1||PAT0001^^^EXAMPLE-GH^MR||DOE^JANE||19650412|F",
        "ORC|RE|PL0001|FL0001",
        "OBR|1|PL0001|FL0001|CTCHEST^CT chest^LOCAL||||||||||||||ACC0001||||||RAD|P",
        "OBX|1|CWE|786838002^Pulmonary nodule^SCT|1|121053^Present^DCM|||A|||P",
    ]
)


def _send(port: int, message: str) -> hl7.Message:
    with MLLPClient(LOOPBACK, port) as client:
        client.socket.settimeout(1.0)
        return hl7.parse(client.send_message(message).decode())


def test_listener_answers_aa_keeps_the_oru_and_prints_no_phi(ris_listener: Listener) -> None:
    """An ORU gets AA echoing its control ID, is written to the folder, summarised without PHI."""
    listener = ris_listener(answer="aa")
    ack = _send(listener.port, ORU)
    assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == "ORU0001"
    [message] = listener.wait_messages(1)
    assert message.kind == "ORU^R01" and message.path is not None
    assert message.path.read_bytes() == ORU.encode()
    assert "accession ACC0001" in message.summary and "1 OBX flags A" in message.summary
    assert "DOE" not in message.summary and "PAT0001" not in message.summary


def test_listener_answers_ae_when_told(ris_listener: Listener) -> None:
    """With answer ae, the ACK is AE with an ERR segment."""
    listener = ris_listener(answer="ae")
    ack = _send(listener.port, ORU)
    assert str(ack.segment("MSA")[1]) == "AE"
    assert ack.segment("ERR")


def test_listener_answers_nothing_when_told(ris_listener: Listener) -> None:
    """With answer none, the message is kept and no byte comes back."""
    listener = ris_listener(answer="none")
    with pytest.raises(socket.timeout):
        _send(listener.port, ORU)
    assert listener.wait_messages(1)[0].answered is None


def test_ris_send_command_to_ris_listen_command(tmp_path: Path) -> None:
    """`harness ris send` gets AA from `harness ris listen`, which prints and saves the ORM."""
    port = free_port()
    log = tmp_path / "listen.log"
    listen = cli_fork.start(
        ["harness", "ris", "listen", "--port", str(port), "--count", "1",
         "--folder", str(tmp_path / "ris")],
        env=dict(os.environ), log=log,
    )  # fmt: skip
    try:
        wait_for_port(port)
        sent = cli_fork.run(
            ["harness", "ris", "send", "--port", str(port), "--accession", "A123",
             "--message", "OMI^O23", "--priority", "STAT"],
            timeout=60, check=False,
        )  # fmt: skip
        listen.wait(30)
    finally:
        if listen.poll() is None:
            listen.send_signal(signal.SIGTERM)
            listen.wait(10)
    output = log.read_text()
    assert sent.returncode == 0 and "OMI^O23 accession A123 -> AA" in sent.stdout
    assert "OMI^O23" in output and "-> AA" in output
    [saved] = (tmp_path / "ris").iterdir()
    assert b"IPC|A123" in saved.read_bytes()


def test_ris_send_places_an_order_in_a_running_radbridge(
    tmp_path: Path, radbridge_factory: Callable[..., Radbridge]
) -> None:
    """An ORM^O01 from `harness ris send` is stored by radbridge: `orders list` shows it."""
    config = base_config(tmp_path / "rb", free_port())
    config["hl7"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
    rb = radbridge_factory(config=config)
    sent = cli_fork.run(
        ["harness", "ris", "send", "--port", str(config["hl7"]["listen"]["port"]),
         "--accession", "ACC-H1", "--patient-id", "PH1", "--procedure", "CTHEAD",
         "--study-uid", "1.2.826.0.1.3680043.8.498.777"],
        timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    orders = json.loads(rb.cli("orders", "list", "--json").stdout)
    [order] = [o for o in orders if o["accession_number"] == "ACC-H1"]
    assert order["procedure_code"] == "CTHEAD"
    assert order["study_uid"] == "1.2.826.0.1.3680043.8.498.777"


def _in_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal as stdout and stderr (so rich draws its progress)."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        args, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "160"}
    ) as run:
        os.close(follower)
        chunks: list[bytes] = []
        with contextlib.suppress(OSError):  # EIO once the child closed its end
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)
        code = run.wait(60)
    os.close(leader)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow(seconds=25)
def test_chinese_names_arrive_intact_from_the_simulated_modality_and_ris(
    tmp_path: Path, radbridge_factory: Callable[..., Radbridge]
) -> None:
    """A study written in GB18030 by `harness modality send --charset GB18030` and an order with
    MSH-18 'GB 18030-2000' from `harness ris send --charset` both reach radbridge with their
    Chinese patient names intact (they once arrived as "?^?"); the modality's progress, in a
    terminal, counts instances per second, not bytes."""
    config = base_config(tmp_path / "rb", free_port())
    config["hl7"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
    rb = radbridge_factory(config=config)
    sent = cli_fork.run(
        ["harness", "ris", "send", "--port", str(config["hl7"]["listen"]["port"]),
         "--accession", "ACC-ZH1", "--patient-id", "PZH1", "--patient-name", "李^四",
         "--charset", "GB 18030-2000"],
        timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    code, shown = _in_a_terminal(
        [RADBRIDGE, "harness", "modality", "send", "ct_head", "--port", str(rb.port),
         "--instances", "3", "--rows", "32", "--columns", "32", "--accession", "ACC-ZH2",
         "--patient-id", "PZH2", "--patient-name", "张^三", "--charset", "GB18030"]
    )  # fmt: skip
    assert code == 0, shown
    progress, summary = shown.split("sent 3 of 3 instances")
    assert "instances/s" in progress and "B/s" not in progress and "MB/s" in summary
    orders = json.loads(rb.cli("orders", "list", "--json").stdout)
    [order] = [o for o in orders if o["accession_number"] == "ACC-ZH1"]
    assert order["patient"]["name"] == "李^四"
    [study] = [s for s in rb.studies() if s["accession_number"] == "ACC-ZH2"]
    assert study["patient"]["name"] == "张^三"
