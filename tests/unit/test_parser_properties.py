"""Bad input, recipe C (reliability.md §5.4): every parser of untrusted bytes answers with
a result or its documented error, never another exception, never a hang.

The targets and their oracles live in `fuzz.targets` (shared with the atheris harnesses):
each `check` returns normally for a result or a documented refusal and raises for a bug.
Here Hypothesis takes the recorded replay inputs (valid messages), mutates them with
delimiter-aware edits, and also feeds pure random bytes. The SIA DC-09 frame's own
byte-damage property lives in plugins/tryggbro-siadc09/tests/test_frame.py.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import targets
from fuzz.targets import REGRESSIONS, TARGETS, TOKENS, mutate
from hub.contracts import IntakeRequest
from hub.domain.delivery import parse_retry_after
from hub.errors import InputError
from hub.hl7v2.adapter import Hl7Refusal
from hub.hl7v2.framing import FrameReader, FramingError
from hub.hl7v2.reader import parse_time
from hub.hl7v2.wire import ERROR_NAMES, Hl7Error, decode
from hub.registry import parse_csv
from hub.sources.http import verify_webhook

# Modest example counts: the whole module runs in well under a minute on CI.
PROPERTY = settings(max_examples=150, deadline=2000, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
RANDOM = settings(max_examples=60, deadline=2000, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])

OPS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 16),
                         st.sampled_from(TOKENS) | st.binary(max_size=8)),
               min_size=1, max_size=4)


def mutated(name: str) -> st.SearchStrategy[bytes]:
    pool = targets.seeds(name)
    return st.builds(mutate, st.sampled_from(pool), OPS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_is_answered(name):
    seeds = targets.seeds(name)
    assert seeds, f"{name} has no seeds"
    for data in seeds:
        TARGETS[name].check(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_valid_input_is_parsed_or_refused_with_its_error(name):
    @PROPERTY
    @given(mutated(name))
    def run(data: bytes) -> None:
        TARGETS[name].check(data)

    run()


FIELD_VALUES = st.sampled_from([
    "", "^", "~~~~", "\\X0\\", "\\X0G\\", "\\Q1\\", "\\", "&&&", "20261301", "2026011110150099",
    "20260111101500+2400", "2.9", "2.5^x", "ADT", "ORU^R01", "NM", "SN", "CWE", "1e999", "-",
    "9" * 40, "01819012012^^^FNR^FNR", "0181901201²", "x" * 5000, "A" * 300,
]) | st.text(max_size=30)


@st.composite
def hl7_with_one_field_changed(draw: st.DrawFn) -> bytes:
    """A valid HL7 message (a replay input) with one field of one segment replaced."""
    body = draw(st.sampled_from(targets.seeds("hl7_adapter")))
    text = body.decode("latin-1")  # byte-preserving: the MSH-18 decode is the parser's job
    segments = text.replace("\n", "\r").split("\r")
    s = draw(st.integers(0, len(segments) - 1))
    fields = segments[s].split("|")
    f = draw(st.integers(1, max(1, len(fields) - 1)))
    if s == 0 and f == 1:
        f = 2  # MSH-2 is fields[1]: changing it is a delimiter test of its own
    value = draw(FIELD_VALUES)
    fields[f:f + 1] = [value] if f < len(fields) else [*fields[f:], value]
    segments[s] = "|".join(fields)
    return "\r".join(segments).encode("utf-8" if "UTF-8" in segments[0] else "latin-1",
                                      errors="replace")


@PROPERTY
@given(hl7_with_one_field_changed())
def test_hl7_with_one_field_changed_is_mapped_or_refused_with_code_and_location(data):
    targets.check_hl7_adapter(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_bytes_are_refused_with_the_documented_error(name):
    @RANDOM
    @given(st.binary(max_size=600))
    def run(data: bytes) -> None:
        TARGETS[name].check(data)

    run()


def test_a_seeded_random_run_of_every_target_finds_nothing():
    """The same mutator the plain-Python fuzz runner uses, a fixed seed, 200 inputs each."""
    for name, target in TARGETS.items():
        inputs = targets.random_inputs(name, random.Random(5))
        for _ in range(200):
            target.check(next(inputs))


# --- what the fuzzers found: kept as regression inputs and named here --------------------


def regressions() -> list[Path]:
    return sorted(p for p in REGRESSIONS.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", regressions(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression_inputs_stay_answered(path):
    TARGETS[path.parent.name].check(path.read_bytes())


def test_an_msh_segment_too_short_for_its_delimiters_is_refused_with_a_location():
    with pytest.raises(Hl7Error) as info:
        decode(b"MSH\rPID||")
    assert (info.value.code, info.value.location) == ("102", "MSH-2")
    assert info.value.code in ERROR_NAMES


def test_a_time_zone_offset_beyond_14_hours_is_a_field_error():
    with pytest.raises(Hl7Error) as info:
        parse_time("20260111101500+4100", "MSH-7", targets._hl7_adapter().options.timezone)
    assert (info.value.code, info.value.location, info.value.reject) == ("102", "MSH-7", False)


@pytest.mark.parametrize("value", ["0181901201²", "٠١٨١٩٠١٢٠١٢"])
def test_non_ascii_digits_in_pid3_are_refused_not_crashed(value):
    text = (REGRESSIONS / "hl7_adapter/pid3-superscript-digit.hl7").read_bytes().decode(
        "latin-1")
    body = text.replace("0181901201²", value).replace(
        "||8859/1\r", "||UNICODE UTF-8\r").encode("utf-8")
    with pytest.raises(Hl7Refusal) as info:
        targets._hl7_adapter().intake_key(
            IntakeRequest("sykehus", "application/hl7-v2", body, {}))
    assert info.value.error.location == "PID-3[1]"
    assert "not 11 digits" in info.value.error.text
    assert value not in info.value.error.text  # the refusal never echoes the number


def test_the_csv_header_that_is_not_csv_is_reported_not_raised():
    report = parse_csv('source;device_id;"device_type"x;patient\n', device_types=["x"])
    assert report.errors
    assert report.errors[0].startswith("line 1: the header row is not CSV")
    assert report.requests == []


def test_a_municipality_of_non_ascii_digits_is_not_accepted():
    text = ("source;device_id;device_type;patient;municipality;legal_basis\n"
            "alarmplatform;TA-1;safety_alarm;01819012012;٠٣٠١;consent\n")
    report = parse_csv(text, device_types=["safety_alarm"])
    assert any("municipality" in e for e in report.errors)


def test_a_bad_hl7_escape_logs_no_field_value(caplog):
    """python-hl7 logs an undecodable escape with the field's value (a name, an FNR)."""
    body = (Path(targets.FIXTURES) / "hl7v2/cases/02-a02-transfer/01.hl7").read_bytes()
    body = body.replace(b"Storgata 1", b"Storgata \\Q1\\ 1", 1)
    with caplog.at_level(logging.DEBUG):
        targets.check_hl7_adapter(body)
    assert "Storgata" not in caplog.text


def test_mllp_reader_never_returns_bytes_that_were_not_framed():
    reader = FrameReader(max_frame_bytes=16)
    assert reader.feed(b"\x0bMSH|a\x1c\r\r\n\x0bMSH|b\x1c\r") == [b"MSH|a", b"MSH|b"]
    with pytest.raises(FramingError):
        reader.feed(b"\x0b" + b"x" * 17)


@pytest.mark.parametrize("stamp", ["1779999999²", "١٧٧٩٩٩٩٩٩٩"])
def test_a_webhook_timestamp_of_non_ascii_digits_is_refused(stamp):
    headers = {"webhook-id": "m1", "webhook-timestamp": stamp, "webhook-signature": "v1,x"}
    with pytest.raises(InputError) as info:
        verify_webhook([b"k"], headers, b"{}", 300, now=1779999999)
    assert info.value.status == 401


def test_a_retry_after_of_non_ascii_digits_is_not_a_delay():
    assert parse_retry_after("3²", targets.NOW) is None
