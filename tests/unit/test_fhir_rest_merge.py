"""Merging transaction bundles for one request by splicing their entry arrays' text
(`hub.destinations.fhir_rest.merge_transactions`) gives exactly what parsing and
re-encoding gives, and falls back to parsing for any other shape. Groups are sized by
`events_per_request` and `max_entries_per_request` (`request_sizes`)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from hub.destinations.fhir_rest import (
    FhirRestSettings,
    _factory,
    entry_count,
    entry_items,
    merge_transactions,
)
from hub.fhir import transaction_bundle

AT = datetime(2026, 11, 20, 21, 14, 3, tzinfo=UTC)


def stored(bundle: dict[str, Any]) -> bytes:
    """As processing stores a payload and dispatch reads it back."""
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()


def by_parsing(payloads: list[bytes]) -> dict[str, Any]:
    entries = [e for p in payloads for e in json.loads(p).get("entry", [])]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


TRICKY: list[dict[str, Any]] = [
    # A Composition has its own `section.entry` arrays; text may contain the marker.
    {"resourceType": "Composition", "id": "c1", "status": "final",
     "title": 'alarm ,"entry":[ handled ]}',
     "section": [{"title": "timeline", "entry": [{"reference": "Encounter/e1"}]}]},
    {"resourceType": "DetectedIssue", "id": "d1", "status": "final",
     "detail": 'Ålesund "quoted" \\ backslash \u2028 ]}'},
]


def test_splice_equals_parse_and_reencode() -> None:
    payloads = [stored(transaction_bundle(f"b{i}", AT, TRICKY)) for i in range(3)]
    payloads.append(stored(transaction_bundle("empty", AT, [])))
    merged = merge_transactions(payloads)
    assert json.loads(merged) == by_parsing(payloads)
    assert merged == stored(by_parsing(payloads))  # byte for byte, not only equal JSON
    assert all(entry_items(p) is not None for p in payloads)


def test_other_shapes_are_parsed_not_spliced() -> None:
    # `entry` not last, a nested `entry` first, or pretty-printed: no splice.
    bundle = transaction_bundle("b", AT, TRICKY)
    not_last = stored({"entry": bundle["entry"], "resourceType": "Bundle",
                       "type": "transaction"})
    nested_first = stored({"resourceType": "Bundle", "meta": {"x": {"entry": []}},
                           "type": "transaction", "entry": bundle["entry"]})
    pretty = json.dumps(bundle, indent=2).encode()
    assert entry_items(not_last) is None
    assert entry_items(pretty) is None
    payloads = [not_last, nested_first, pretty, stored(bundle)]
    assert json.loads(merge_transactions(payloads)) == by_parsing(payloads)


def test_entry_count_is_exact_without_parsing_the_hubs_payloads() -> None:
    bundle = transaction_bundle("b", AT, TRICKY)
    assert entry_count(stored(bundle)) == 2
    assert entry_count(json.dumps(bundle, indent=2).encode()) == 2  # parsed
    assert entry_count(stored(transaction_bundle("empty", AT, []))) == 0


def test_request_sizes_stop_before_the_entry_limit_and_never_split_an_event() -> None:
    alarm = stored(transaction_bundle("a", AT, [*TRICKY, TRICKY[0]]))  # 3 entries
    big = stored(transaction_bundle("big", AT, TRICKY * 30))  # 60 entries
    destination = _factory("ehr", FhirRestSettings(base_url="http://127.0.0.1:9/fhir",
                                                   events_per_request=25,
                                                   max_entries_per_request=50))
    try:
        assert destination.request_sizes([alarm] * 40) == [16, 16, 8]
        assert destination.request_sizes([alarm, big, alarm]) == [1, 1, 1]
        assert destination.request_sizes([big]) == [1]
        destination.max_entries_per_request = 1000
        assert destination.request_sizes([alarm] * 40) == [25, 15]  # events_per_request
    finally:
        asyncio.run(destination.aclose())
