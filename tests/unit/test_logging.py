"""Logging: PHI redaction, stable pseudonyms, one chain for structlog and stdlib, output format."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from broker.model.logging import bind_context, configure_logging, get_logger, pseudonym

PATIENT = {
    "patient_name": "DOE^JANE",
    "patient_id": "PID-4711",
    "patient_birth_date": "19700101",
}
STUDY_UID = "1.2.826.0.1.3680043.10.511.1"
OTHER_UID = "1.2.826.0.1.3680043.10.511.2"

Configure = Callable[..., io.StringIO]


class TTYStream(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging into a StringIO; the logging set-up before the test is restored after."""
    root = logging.getLogger()
    root_level = root.level
    library_levels = {n: logging.getLogger(n).level for n in ("pynetdicom", "alembic", "highdicom")}
    structlog_config = structlog.get_config()
    installed: list[logging.Handler] = []

    def _configure(
        fmt: str = "json", phi: bool = False, stream: io.StringIO | None = None, level: str = "INFO"
    ) -> io.StringIO:
        stream = io.StringIO() if stream is None else stream
        before = root.handlers[:]
        configure_logging(level, fmt, phi, stream)
        installed.extend(root.handlers)
        # Give pytest's own capture handlers back, so it can remove them as usual.
        root.handlers.extend(h for h in before if h not in root.handlers)
        return stream

    yield _configure
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(root_level)
    for name, level in library_levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_phi_is_never_logged_when_phi_is_off(configure: Configure) -> None:
    """With phi=False patient name, ID and birth date never reach the output, wherever bound."""
    out = configure(phi=False)
    bind_context(patient_id=PATIENT["patient_id"])
    log = get_logger("radbridge.test", patient_name=PATIENT["patient_name"])
    log.info(
        "instance received",
        patient_birth_date=PATIENT["patient_birth_date"],
        study_uid=STUDY_UID,
        calling_ae="CT01",
    )
    text = out.getvalue()
    for value in PATIENT.values():
        assert value not in text
    assert STUDY_UID not in text
    (line,) = _lines(out)
    assert line["event"] == "instance received"
    assert line["calling_ae"] == "CT01"
    for key in PATIENT:
        assert line[key] == "[redacted]"


def test_study_uid_is_a_stable_pseudonym(configure: Configure) -> None:
    """study_uid is logged as an `h:` pseudonym: the same UID always gives the same one."""
    out = configure(phi=False)
    log = get_logger("radbridge.test")
    log.info("first", study_uid=STUDY_UID)
    log.info("second", study_uid=STUDY_UID)
    log.info("other", study_uid=OTHER_UID)
    first, second, other = (line["study_uid"] for line in _lines(out))
    assert re.fullmatch(r"h:[0-9a-f]{12}", first)
    assert first == second == pseudonym(STUDY_UID)
    assert other == pseudonym(OTHER_UID)
    assert other != first


def test_phi_is_logged_when_phi_is_on(configure: Configure) -> None:
    """With phi=True the operator sees patient values and the real study UID."""
    out = configure(phi=True)
    get_logger("radbridge.test").info("instance received", study_uid=STUDY_UID, **PATIENT)
    (line,) = _lines(out)
    for key, value in PATIENT.items():
        assert line[key] == value
    assert line["study_uid"] == STUDY_UID


def test_stdlib_library_records_come_out_as_json(configure: Configure) -> None:
    """A pynetdicom warning goes through the same chain: JSON with level, logger and time."""
    out = configure(fmt="json")
    logging.getLogger("pynetdicom").warning("Association Rejected by %s", "CT01")
    (line,) = _lines(out)
    assert line["event"] == "Association Rejected by CT01"
    assert line["logger"] == "pynetdicom"
    assert line["level"] == "warning"
    assert line["timestamp"].endswith("Z")


def test_stdlib_extra_fields_are_kept_and_redacted(configure: Configure) -> None:
    """`extra` of a stdlib record reaches the output; PHI in it is redacted, UIDs pseudonymized."""
    out = configure(fmt="json", phi=False)
    logging.getLogger("kombu.test").info(
        "delivered",
        extra={"job_id": 42, "study_uid": STUDY_UID, "patient_name": PATIENT["patient_name"]},
    )
    text = out.getvalue()
    assert PATIENT["patient_name"] not in text
    assert STUDY_UID not in text
    (line,) = _lines(out)
    assert line["event"] == "delivered"
    assert line["logger"] == "kombu.test"
    assert line["job_id"] == 42
    assert line["study_uid"] == pseudonym(STUDY_UID)
    assert line["patient_name"] == "[redacted]"


def test_pynetdicom_below_warning_is_dropped(configure: Configure) -> None:
    """pynetdicom's info and debug lines (dataset dumps) stay out even at DEBUG."""
    out = configure(fmt="json", level="DEBUG")
    logging.getLogger("pynetdicom").debug("(0010,0010) PN [DOE^JANE]")
    logging.getLogger("pynetdicom").info("Association Accepted")
    get_logger("radbridge.test").debug("ours")
    assert [line["event"] for line in _lines(out)] == ["ours"]


def test_exceptions_are_rendered_inside_json(configure: Configure) -> None:
    """log.exception gives one JSON line carrying the traceback (with messages if PHI is on)."""
    out = configure(fmt="json", phi=True)
    try:
        raise ValueError("bad tag")
    except ValueError:
        get_logger("radbridge.test").exception("cannot decode", study_uid=STUDY_UID)
    (line,) = _lines(out)
    assert line["event"] == "cannot decode"
    assert "ValueError: bad tag" in line["exception"]


def test_uids_in_any_text_are_hashed_when_phi_is_off(configure: Configure) -> None:
    """A UID inside an error text or a library's line is replaced by its stable pseudonym;
    the standard's own UIDs, versions and addresses are left as they are."""
    out = configure(fmt="json")
    get_logger("radbridge.test").warning(
        "refused", error=f"instance {STUDY_UID} of class 1.2.840.10008.5.1.4.1.1.2", peer="10.1.2.3"
    )
    logging.getLogger("somelibrary").warning("copy from dataset %s (v1.10.0)", OTHER_UID)
    ours, theirs = _lines(out)
    assert ours["error"] == f"instance {pseudonym(STUDY_UID)} of class 1.2.840.10008.5.1.4.1.1.2"
    assert ours["peer"] == "10.1.2.3"
    assert theirs["event"] == f"copy from dataset {pseudonym(OTHER_UID)} (v1.10.0)"


def test_tracebacks_keep_frames_but_not_messages_when_phi_is_off(configure: Configure) -> None:
    """With PHI off a traceback (ours or a library's, and the exceptions it was raised from)
    names each exception's type and frames, never its message, which may quote a patient."""
    out = configure(fmt="json")
    try:
        try:
            raise KeyError(PATIENT["patient_id"])
        except KeyError as exc:
            raise ValueError(f"no such patient {PATIENT['patient_name']}") from exc
    except ValueError:
        get_logger("radbridge.test").exception("cannot decode")
        logging.getLogger("somelibrary").error("failed", exc_info=True)
    lines = _lines(out)
    assert len(lines) == 2
    for line in lines:
        text = line["exception"]
        assert "builtins.KeyError" in text and "builtins.ValueError" in text
        assert text.index("KeyError") < text.index("ValueError")  # the cause first
        assert "test_logging.py" in text
        assert PATIENT["patient_id"] not in text and "DOE" not in text


def test_auto_format_is_console_on_a_tty(configure: Configure) -> None:
    """format=auto renders for people on a terminal: not JSON, still redacted."""
    out = configure(fmt="auto", stream=TTYStream())
    get_logger("radbridge.test").info("instance received", calling_ae="CT01", **PATIENT)
    logging.getLogger("pynetdicom").warning("Association Aborted")
    text = out.getvalue()
    first, second = text.splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    assert "instance received" in first
    assert "CT01" in first
    assert "Association Aborted" in second
    for value in PATIENT.values():
        assert value not in text


def test_auto_format_is_json_when_not_a_tty(configure: Configure) -> None:
    """format=auto writes JSON lines to a file or pipe."""
    out = configure(fmt="auto", stream=io.StringIO())
    get_logger("radbridge.test").info("instance received", calling_ae="CT01")
    (line,) = _lines(out)
    assert line["event"] == "instance received"
    assert line["calling_ae"] == "CT01"


def test_explicit_format_overrides_the_stream_kind(configure: Configure) -> None:
    """format=json on a terminal gives JSON; format=console on a pipe does not."""
    tty = configure(fmt="json", stream=TTYStream())
    get_logger("radbridge.test").info("json on tty")
    assert _lines(tty)[0]["event"] == "json on tty"
    pipe = configure(fmt="console", stream=io.StringIO())
    get_logger("radbridge.test").info("console on pipe")
    text = pipe.getvalue()
    assert "console on pipe" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
