"""Every Bundle in the golden fixtures is accepted by the Medplum FHIR engine in STRICT
mode (its own validator on every entry), and every resource in it by fhir.resources R4B
and our VKP rules: the two validators of issue 3's proof, over every category."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.fhir import validate_bundle
from hub.mappings import MappingStore

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"


def golden_bundles() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for expected in sorted(FIXTURES.glob("*/cases/*/expected.json")):
        case = f"{expected.parts[-4]}/{expected.parts[-2]}"
        for i, step in enumerate(json.loads(expected.read_text(encoding="utf-8"))):
            for j, event in enumerate(step.get("events", [])):
                if event.get("bundle"):
                    found.append((f"{case}#{i}.{j}", event["bundle"]))
    return found


BUNDLES = golden_bundles()


def test_the_fixtures_cover_every_category():
    categories: set[str] = set()
    for expected in FIXTURES.glob("*/cases/*/expected.json"):
        for step in json.loads(expected.read_text(encoding="utf-8")):
            categories.update(e["category"] for e in step.get("events", []))
    assert categories >= {"safety_alarm", "medication", "supervision", "location",
                          "door_lock", "nurse_call", "home_follow_up", "device_health"}
    assert len(list(FIXTURES.glob("*/cases/*/expected.json"))) >= 60


def test_every_golden_bundle_passes_our_validation():
    mappings = MappingStore.load(ROOT / "mappings")
    for name, bundle in BUNDLES:
        try:
            validate_bundle(bundle, mappings)
        except Exception as exc:  # the case name makes a failure findable
            raise AssertionError(f"{name}: {exc}") from exc


@pytest.mark.peer
def test_every_golden_bundle_is_accepted_by_medplum_strict(medplum):
    assert BUNDLES
    refused = []
    for name, bundle in BUNDLES:
        status, _, answer = medplum.request("POST", "", bundle)
        if status != 200:
            refused.append(f"{name}: {status} {json.dumps(answer)[:300]}")
            continue
        codes = [e["response"]["status"] for e in answer["entry"]]
        if not all(c.startswith(("200", "201")) for c in codes):
            refused.append(f"{name}: entries {codes}")
    assert refused == []
