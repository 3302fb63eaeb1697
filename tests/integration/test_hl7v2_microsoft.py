"""Our HL7 v2 → FHIR output agrees with Microsoft FHIR-Converter's on ≥ 95 % of the
compared fields, and docs/hl7v2.md lists exactly the disagreements the code finds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.fhir_converter_compare import (
    INVALID_R4,
    OUT_OF_SCOPE,
    Result,
    compare,
    expected_files,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "hl7v2.md"
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]*) \| ([^|]*) \| (theirs wrong|ours wrong|"
                 r"different choice): (.+) \|$")


@pytest.fixture(scope="module")
def result() -> Result:
    return compare()


def documented() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip(), m.group(5).strip())
    return rows


def test_the_compared_messages_are_the_in_scope_expected_outputs():
    names = {p.parent.name for p in expected_files()}
    assert names == {"ADT_A01", "ADT_A04", "ADT_A08", "ADT_A28", "ADT_A31", "ADT_A40",
                     "ORU_R01"}
    assert not names & set(OUT_OF_SCOPE)
    assert len(expected_files()) == 22


def test_agreement_is_at_least_95_percent(result):
    assert len(result.fields) > 300
    assert result.agreement >= 0.95
    total, agree = len(result.fields), sum(f.agree for f in result.fields)
    text = DOC.read_text(encoding="utf-8")
    assert f"**{total}** | **{agree} ({100 * agree / total:.1f} %)**" in text


def test_every_disagreement_is_explained_in_the_doc_and_nothing_else(result):
    rows = documented()
    found = {f.key: (f.ours, f.theirs) for f in result.disagreements}
    assert set(rows) == set(found), (
        f"undocumented: {sorted(set(found) - set(rows))}; "
        f"stale: {sorted(set(rows) - set(found))}")
    for key, (ours, theirs) in found.items():
        assert rows[key][:2] == (ours, theirs), key
        assert len(rows[key][2]) > 20, f"{key}: say why"


def test_refusals_and_invalid_outputs_are_named(result):
    text = DOC.read_text(encoding="utf-8")
    assert set(result.refused) == {"ORU-R01-01"}
    for stem in result.refused:
        assert f"`{stem}`" in text
    for stem in INVALID_R4:
        assert f"`{stem}`" in text
        assert f"{stem} (theirs invalid R4)" in text
