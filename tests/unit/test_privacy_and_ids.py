"""Identity numbers are validated where they enter and redacted wherever text leaves."""

import re

import pytest

from hub.domain.ids import bundle_id, order_key, resource_id
from hub.domain.model import PersonId
from hub.domain.privacy import (
    DNR_SYSTEM,
    FNR_SYSTEM,
    MAX_STORED_ERROR,
    national_id_checksum_ok,
    person_id_problem,
    redact,
    safe_error_text,
)

SYNTHETIC = "01819012012"  # reliability.md's worked example (month 81: not a real person)


def test_checksum_accepts_valid_and_rejects_any_single_digit_change():
    assert national_id_checksum_ok(SYNTHETIC)
    for i in range(11):
        for d in "0123456789":
            changed = SYNTHETIC[:i] + d + SYNTHETIC[i + 1:]
            if changed != SYNTHETIC:
                assert not national_id_checksum_ok(changed), changed


def test_person_id_problem_names_what_is_wrong():
    assert person_id_problem(FNR_SYSTEM, SYNTHETIC) is None
    assert "check digits" in person_id_problem(FNR_SYSTEM, "01819012013")
    assert "not a national person id" in person_id_problem("urn:oid:1.2.3", SYNTHETIC)
    assert "4 added" in person_id_problem(DNR_SYSTEM, SYNTHETIC)


@pytest.mark.parametrize("text", [
    f"patient {SYNTHETIC} fell",
    "typo 01819012013 still hidden",  # invalid checksum: redacted all the same
    "spaced 018190 12012 and hyphen 018190-12012",
    f"{SYNTHETIC}{SYNTHETIC[:0]}",
])
def test_redact_removes_every_eleven_digit_run(text):
    out = redact(text, b"key")
    assert not re.search(r"\d{6}[ -]?\d{5}", out)
    assert "fnr#" in out


def test_redact_keeps_other_numbers_and_is_stable_per_key():
    assert redact("order 1234567890 and 123456789012", b"k") == \
        "order 1234567890 and 123456789012"
    assert redact(SYNTHETIC, b"k") == redact(SYNTHETIC, b"k")
    assert redact(SYNTHETIC, b"k") != redact(SYNTHETIC, b"other")


def test_safe_error_text_redacts_and_bounds():
    text = safe_error_text(f"bad {SYNTHETIC} " + "x" * 5000)
    assert SYNTHETIC not in text
    assert len(text) == MAX_STORED_ERROR


def test_ids_are_deterministic_opaque_and_distinct():
    a = resource_id("vendor", "ALM-1", "DetectedIssue")
    assert a == resource_id("vendor", "ALM-1", "DetectedIssue")
    assert a != resource_id("vendor", "ALM-1", "Encounter")
    assert a != resource_id("other", "ALM-1", "DetectedIssue")
    assert re.fullmatch(r"[0-9a-f-]{36}", a)
    assert bundle_id("vendor", "evt-1", 0) != bundle_id("vendor", "evt-1", 1)


def test_synthetic_patients_of_the_tests_are_valid():
    from tests.integration.helpers import PATIENTS, unique_patient

    assert all(national_id_checksum_ok(p) for p in PATIENTS)
    assert all(national_id_checksum_ok(unique_patient()) for _ in range(200))


def test_order_key_is_stable_and_hides_the_number():
    key = order_key(PersonId(FNR_SYSTEM, SYNTHETIC))
    assert key == order_key(PersonId(FNR_SYSTEM, SYNTHETIC))
    assert SYNTHETIC not in key
    assert not re.search(r"\d{11}", key)
