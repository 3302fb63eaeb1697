"""POST /ingest/{source}: 202 only after the durable commit; every rejection is problem
JSON that says what is wrong, and stores nothing."""

from __future__ import annotations

import time

import pytest

from hub import hookimpl
from hub.api.app import create_app
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Category, DeviceRef, Event, StoredMessage
from hub.httpclient import asgi_client
from hub.plugins import PluginHost
from hub.runtime import Hub
from hub.sources.http import sign_webhook
from tests.integration.helpers import (
    SOURCE_KEY,
    WEBHOOK_SECRET,
    alarm_event,
    body,
    config_dict,
    make_config,
)


class OpaqueAdapter:
    """A body without an event id: the dedup key must come from Idempotency-Key."""

    def __init__(self, setup: AdapterSetup) -> None:
        self.source = setup.source

    def intake_key(self, request: IntakeRequest) -> str | None:
        return None

    def parse(self, message: StoredMessage) -> list[Event]:
        return [Event(self.source, message.dedup_key, "device.test", Category.DEVICE_HEALTH,
                      message.received_at, DeviceRef("x"))]


class OpaquePlugin:
    @hookimpl
    def hub_register_adapters(self, register):
        register("opaque", OpaqueAdapter)


@pytest.fixture
async def api(tmp_path, db_url):
    plugins = PluginHost()
    plugins.load_entry_points()
    plugins.register(OpaquePlugin(), "opaque-test")
    data = config_dict(db_url, {"files": {"type": "folder", "path": str(tmp_path / "out")}})
    data["sources"]["opaque"] = {"adapter": "opaque", "auth": "api-key",
                                 "api_key_env": "TEST_ALARMPLATFORM_KEY",
                                 "content_types": ["application/octet-stream"]}
    hub = Hub.build(make_config(tmp_path, data), plugins=plugins)
    hub.intake.start()
    client = asgi_client(create_app(hub))
    yield hub, client
    await client.aclose()
    hub.intake.stop()
    hub.close()


KEY = {"x-api-key": SOURCE_KEY, "content-type": "application/json"}


def stored(hub):
    return sum(hub.repo.status().messages.values())


async def test_accepts_then_answers_duplicates_with_the_original_id(api):
    hub, client = api
    event = body(alarm_event("evt-1", "ALM-1"))
    first = await client.post("/ingest/alarmplatform", content=event, headers=KEY)
    assert first.status_code == 202
    assert first.json() == {"id": first.json()["id"], "status": "accepted", "duplicate": False}
    assert first.headers["location"] == f"/admin/messages/{first.json()['id']}"
    again = await client.post("/ingest/alarmplatform", content=event, headers=KEY)
    assert again.status_code == 202
    assert again.json() == {"id": first.json()["id"], "status": "accepted", "duplicate": True}
    assert stored(hub) == 1
    trace = hub.repo.message_trace(first.json()["id"], include_body=True)
    assert trace["body"].encode() == event  # journaled exactly as received
    assert trace["dedup_key"] == "evt-1"


async def test_concurrent_posts_are_group_committed_and_all_acknowledged(api):
    import asyncio

    hub, client = api
    replies = await asyncio.gather(*(
        client.post("/ingest/alarmplatform", content=body(alarm_event(f"e{i}", f"A{i}")),
                    headers=KEY) for i in range(100)))
    assert {r.status_code for r in replies} == {202}
    assert len({r.json()["id"] for r in replies}) == 100
    assert stored(hub) == 100


BIG = b'{"eventId": "big", "pad": "' + b"x" * 70_000 + b'"}'


@pytest.mark.parametrize(("path", "headers", "content", "status", "problem", "detail"), [
    ("/ingest/alarmplatform", KEY, b'{"eventId": "e1",', 400, "malformed-json",
     "invalid JSON at line 1 column 18"),
    ("/ingest/alarmplatform", {**KEY, "content-type": "text/plain"}, b"{}", 415,
     "unsupported-media-type", "Content-Type text/plain is not accepted"),
    ("/ingest/alarmplatform", {**KEY, "content-type": "application/xml"}, b"<a/>", 415,
     "unsupported-media-type", "send one of application/json"),
    ("/ingest/alarmplatform", KEY, BIG, 413, "body-too-large", "accepts at most 65536"),
    ("/ingest/nosuch", KEY, b"{}", 404, "unknown-source", "no HTTP source named 'nosuch'"),
    ("/ingest/alarmplatform", {"content-type": "application/json"}, b"{}", 401,
     "missing-credentials", "requires an X-API-Key header"),
    ("/ingest/alarmplatform", {**KEY, "x-api-key": "wrong"}, b"{}", 401,
     "invalid-credentials", "not valid for this source"),
    ("/ingest/alarmplatform", KEY, b'{"type": "device.test"}', 400, "malformed-payload",
     "eventId: required"),
    ("/ingest/alarmplatform", KEY, b"", 400, "empty-body", "the body is empty"),
    ("/ingest/alarmplatform", KEY, b'{"eventId": "has space"}', 400, "bad-dedup-key",
     "printable ASCII"),
    ("/ingest/alarmplatform", KEY, b'[1, 2]', 400, "malformed-payload", "a JSON object"),
    ("/ingest/signed", {"content-type": "application/json"}, b'{"eventId": "s1"}', 401,
     "missing-signature", "webhook-id, webhook-timestamp, webhook-signature"),
])
async def test_bad_input_gets_a_specific_problem_and_stores_nothing(
        api, path, headers, content, status, problem, detail):
    hub, client = api
    reply = await client.post(path, content=content, headers=headers)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    doc = reply.json()
    assert doc["type"] == f"urn:tryggbro:problem:{problem}"
    assert doc["status"] == status
    assert doc["title"]
    assert detail in doc["detail"]
    assert doc["instance"] == path
    assert stored(hub) == 0


async def test_oversize_body_without_content_length_is_cut_off(api):
    hub, client = api

    async def chunks():
        for _ in range(20):
            yield b"x" * 8192

    reply = await client.post("/ingest/alarmplatform", content=chunks(), headers=KEY)
    assert reply.status_code == 413
    assert stored(hub) == 0


def signed(content: bytes, msg_id: str = "msg_1", ts: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_webhook(WEBHOOK_SECRET, msg_id, stamp, content)}


async def test_standard_webhooks_signature(api):
    hub, client = api
    content = body(alarm_event("sig-1", "ALM-S"))
    ok = await client.post("/ingest/signed", content=content, headers=signed(content))
    assert ok.status_code == 202
    assert hub.repo.message_trace(ok.json()["id"])["transport"]["webhook_id"] == "msg_1"
    replay = await client.post("/ingest/signed", content=content, headers=signed(content))
    assert replay.json()["duplicate"] is True
    cases = [
        (content + b" ", signed(content), 401, "bad-signature"),  # body altered after signing
        (content, signed(content, ts=int(time.time()) - 400), 401, "stale-signature"),
        (content, signed(content, msg_id="a.b"), 400, "bad-webhook-id"),
        (content, {**signed(content), "webhook-signature": "v1,AAAA"}, 401, "bad-signature"),
    ]
    for data, headers, status, slug in cases:
        reply = await client.post("/ingest/signed", content=data, headers=headers)
        assert (reply.status_code, reply.json()["type"].rsplit(":", 1)[1]) == (status, slug)
    assert stored(hub) == 1


async def test_idempotency_key_header_when_the_body_has_no_id(api):
    hub, client = api
    headers = {"x-api-key": SOURCE_KEY, "content-type": "application/octet-stream"}
    missing = await client.post("/ingest/opaque", content=b"\x00\x01", headers=headers)
    assert missing.status_code == 400
    assert missing.json()["type"].endswith("missing-dedup-key")
    with_key = {**headers, "idempotency-key": "job-42"}
    first = await client.post("/ingest/opaque", content=b"\x00\x01", headers=with_key)
    same = await client.post("/ingest/opaque", content=b"\x00\x01", headers=with_key)
    other = await client.post("/ingest/opaque", content=b"\x00\x02", headers=with_key)
    assert first.status_code == same.status_code == 202
    assert same.json()["id"] == first.json()["id"]
    assert other.status_code == 422
    assert other.json()["original_id"] == first.json()["id"]
    assert stored(hub) == 1


async def test_unknown_routes_and_methods_are_problem_json_too(api):
    _, client = api
    reply = await client.get("/ingest/alarmplatform")
    assert reply.status_code == 405
    assert reply.headers["content-type"] == "application/problem+json"
    reply = await client.get("/nothing-here")
    assert reply.status_code == 404
    assert reply.json()["type"] == "urn:tryggbro:problem:not-found"
