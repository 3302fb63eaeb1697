"""The built-in destinations on their own: what they put on the wire and on disk."""

from __future__ import annotations

import json

import pytest

from hub.destinations.fhir_rest import FhirRestSettings, _factory
from hub.destinations.folder import FolderDestination, FolderSettings
from hub.domain.model import OutboundDelivery, OutcomeKind
from hub.errors import ConfigError
from tests.peers.receiver import RecordingReceiver

BUNDLE = {"resourceType": "Bundle", "id": "b-1", "type": "transaction", "entry": [
    {"fullUrl": "urn:uuid:1", "request": {"method": "PUT", "url": "DetectedIssue/x"},
     "resource": {"resourceType": "DetectedIssue", "id": "x", "status": "final",
                  "detail": "Øystein"}}]}


def delivery(payload=BUNDLE):
    return OutboundDelivery(id=7, message_id=3, destination="d", bundle_id="b-1",
                            payload=json.dumps(payload, ensure_ascii=False).encode(),
                            priority=100, attempt=1)


async def test_bearer_token_from_the_environment_is_sent(monkeypatch):
    monkeypatch.setenv("TEST_EHR_TOKEN", "s3cr3t-token")
    with RecordingReceiver() as receiver:
        settings = FhirRestSettings(base_url=f"{receiver.url}/fhir/R4", auth="bearer",
                                    token_env="TEST_EHR_TOKEN")
        destination = _factory("ehr", settings)
        try:
            outcome = await destination.send(delivery())
        finally:
            await destination.aclose()
        (request,) = receiver.requests()
    assert outcome.kind is OutcomeKind.DELIVERED
    assert request.headers["authorization"] == "Bearer s3cr3t-token"
    assert json.loads(request.body) == BUNDLE


def test_bearer_without_its_token_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("TEST_EHR_TOKEN", raising=False)
    settings = FhirRestSettings(base_url="http://127.0.0.1:9/fhir", auth="bearer",
                                token_env="TEST_EHR_TOKEN")
    with pytest.raises(ConfigError, match=r"destinations\.ehr\.token_env: environment "
                                          r"variable TEST_EHR_TOKEN is not set"):
        _factory("ehr", settings)
    with pytest.raises(ValueError, match="needs token_env"):
        FhirRestSettings(base_url="http://x", auth="bearer")


async def test_put_mode_puts_each_resource_at_its_id():
    with RecordingReceiver() as receiver:
        destination = _factory("ehr", FhirRestSettings(base_url=f"{receiver.url}/fhir/R4",
                                                       mode="put"))
        try:
            outcome = await destination.send(delivery())
        finally:
            await destination.aclose()
        (request,) = receiver.requests()
    assert outcome.kind is OutcomeKind.DELIVERED
    assert (request.method, request.path) == ("PUT", "/fhir/R4/DetectedIssue/x")
    assert json.loads(request.body)["id"] == "x"


async def test_folder_writes_the_bundle_atomically_and_idempotently(tmp_path):
    destination = FolderDestination("files", FolderSettings(path=tmp_path / "out"))
    first = await destination.send(delivery())
    again = await destination.send(delivery())
    assert first.kind is again.kind is OutcomeKind.DELIVERED
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b-1.json"]  # no temp files
    assert json.loads((tmp_path / "out/b-1.json").read_text(encoding="utf-8")) == BUNDLE


async def test_folder_that_cannot_be_written_pauses(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    outcome = await FolderDestination("files", FolderSettings(path=blocked / "out")).send(
        delivery())
    assert outcome.kind is OutcomeKind.PAUSE
    assert "cannot write to" in outcome.detail
