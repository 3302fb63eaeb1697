"""Logs are JSON with the message id and without personal data (invariant 5)."""

import io
import json
import logging

from hub.logging import REDACTED, bound_message, configure_logging, get_logger

FNR = "01819012012"


def capture():
    stream = io.StringIO()
    configure_logging("info", redaction_key=b"test-key", stream=stream)
    return stream


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_eleven_digits_are_pseudonymised_everywhere():
    stream = capture()
    log = get_logger("test")
    with bound_message(42, delivery_id=7):
        log.info(f"patient {FNR} fell", extra_list=[FNR, {"deep": f"x{FNR}y"}], number=int(FNR))
    logging.getLogger("third.party").warning("stdlib line with %s", FNR)
    out = stream.getvalue()
    assert FNR not in out
    records = lines(stream)
    assert records[0]["message_id"] == 42
    assert records[0]["delivery_id"] == 7
    assert records[0]["event"].startswith("patient fnr#")


def test_sensitive_keys_are_dropped_whatever_their_value():
    stream = capture()
    get_logger("test").info("event", note="Øystein har falt", patient={"name": "Kari"},
                            body="{...}")
    record = lines(stream)[0]
    assert record["note"] == REDACTED
    assert record["patient"] == REDACTED
    assert record["body"] == REDACTED


def test_tracebacks_carry_no_frame_locals():
    stream = capture()

    def fails(fnr):
        secret_name = "Kari Nordmann"  # noqa: F841 - a local that must not be logged
        raise ValueError(f"bad id {fnr}")

    try:
        fails(FNR)
    except ValueError:
        get_logger("test").exception("failed")
    out = stream.getvalue()
    assert "Kari Nordmann" not in out
    assert FNR not in out
    record = lines(stream)[0]
    frames = record["exception"][0]["frames"]
    assert all("locals" not in f or not f["locals"] for f in frames)
