"""The status-code policy of reliability.md §3.2, answer by answer."""

import json
from datetime import UTC, datetime

import pytest

from hub.destinations.fhir_rest import outcome_for_response
from hub.domain.model import OutcomeKind
from hub.httpclient import HttpResponse

NOW = datetime(2026, 11, 20, tzinfo=UTC)
OO = json.dumps({"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "invalid", "diagnostics": "Missing Encounter.class",
     "expression": ["Encounter.class"]}]}).encode()


def outcome(status, body=b"", headers=None):
    return outcome_for_response(HttpResponse(status, headers or {}, body), NOW)


@pytest.mark.parametrize(("status", "kind"), [
    (200, OutcomeKind.DELIVERED), (201, OutcomeKind.DELIVERED),
    (400, OutcomeKind.REJECTED), (422, OutcomeKind.REJECTED), (412, OutcomeKind.REJECTED),
    (410, OutcomeKind.REJECTED),
    (401, OutcomeKind.PAUSE), (403, OutcomeKind.PAUSE), (404, OutcomeKind.PAUSE),
    (405, OutcomeKind.PAUSE), (301, OutcomeKind.PAUSE),
    (408, OutcomeKind.RETRY), (409, OutcomeKind.RETRY), (425, OutcomeKind.RETRY),
    (429, OutcomeKind.RETRY), (500, OutcomeKind.RETRY), (502, OutcomeKind.RETRY),
    (503, OutcomeKind.RETRY), (504, OutcomeKind.RETRY),
])
def test_status_policy(status, kind):
    assert outcome(status).kind is kind


def test_operation_outcome_diagnostics_become_the_reason():
    o = outcome(400, OO)
    assert o.detail == "HTTP 400: Missing Encounter.class (Encounter.class)"
    assert o.status_code == 400


def test_retry_after_is_read():
    assert outcome(503, headers={"retry-after": "7"}).retry_after == 7.0
    assert outcome(429, headers={"retry-after": "Fri, 20 Nov 2026 00:01:00 GMT"}
                   ).retry_after == 60.0


def test_transaction_response_with_a_failed_entry_is_judged_by_it():
    body = json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "200 OK"}}, {"response": {"status": "422"}}]}).encode()
    assert outcome(200, body).kind is OutcomeKind.REJECTED
    ok = json.dumps({"resourceType": "Bundle", "type": "transaction-response",
                     "entry": [{"response": {"status": "201"}}]}).encode()
    assert outcome(200, ok).kind is OutcomeKind.DELIVERED
