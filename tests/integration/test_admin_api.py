"""Admin API: the CLI's read and retry operations behind viewer/operator tokens;
health, readiness and Prometheus metrics."""

from __future__ import annotations

import pytest

from hub.api.app import create_app
from hub.dispatch import Dispatcher
from hub.httpclient import asgi_client
from tests.integration.helpers import (
    OPERATOR_TOKEN,
    PATIENTS,
    SOURCE_KEY,
    VIEWER_TOKEN,
    alarm_event,
    body,
    build_hub,
    enrol,
)

VIEW = {"authorization": f"Bearer {VIEWER_TOKEN}"}
OPERATE = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
POST = {"x-api-key": SOURCE_KEY, "content-type": "application/json"}


@pytest.fixture
async def admin(tmp_path, db_url):
    out = tmp_path / "out"
    hub = build_hub(tmp_path, db_url, {"files": {"type": "folder", "path": str(out)}})
    enrol(hub, "TA-1", PATIENTS[0])
    hub.build_destinations()
    hub.intake.start()
    client = asgi_client(create_app(hub))
    yield hub, client, out
    await client.aclose()
    hub.intake.stop()
    hub.close()


async def deliver(hub):
    hub.processor().run_batch()
    dispatcher = Dispatcher("files", hub.destinations["files"], hub.repo,
                            hub.config.destinations["files"], hub.worker, hub.plugins.hook)
    return await dispatcher.run_once()


async def test_roles_and_tokens(admin):
    _, client, _ = admin
    assert (await client.get("/admin/status")).status_code == 401
    bad = await client.get("/admin/status", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["type"].endswith("invalid-credentials")
    assert (await client.get("/admin/status", headers=VIEW)).status_code == 200
    denied = await client.post("/admin/deliveries/retry-dead", headers=VIEW)
    assert denied.status_code == 403
    assert "operator role" in denied.json()["detail"]
    assert (await client.post("/admin/deliveries/retry-dead", headers=OPERATE)).json() == \
        {"retrying": 0}


async def test_search_show_and_metrics_after_a_delivery(admin):
    hub, client, out = admin
    posted = await client.post("/ingest/alarmplatform", headers=POST,
                               content=body(alarm_event("e1", "A1", device="TA-1")))
    await client.post("/ingest/alarmplatform", headers=POST,
                      content=body(alarm_event("e2", "A2", device="TA-UNKNOWN")))
    assert await deliver(hub) == 1
    assert len(list(out.glob("*.json"))) == 1

    found = (await client.get("/admin/messages", headers=VIEW,
                              params={"state": "processed"})).json()
    assert [m["dedup_key"] for m in found["items"]] == ["e1"]
    assert found["items"][0]["deliveries"] == {"delivered": 1}
    held = (await client.get("/admin/messages", headers=VIEW,
                             params={"state": "unmatched"})).json()["items"]
    assert held[0]["dedup_key"] == "e2"
    assert "TA-UNKNOWN" in held[0]["reason"]

    trace = (await client.get(f"/admin/messages/{posted.json()['id']}", headers=VIEW)).json()
    assert trace["state"] == "processed"
    assert trace["events"][0]["code"] == "3"
    (delivery,) = trace["deliveries"]
    assert delivery["state"] == "delivered"
    assert delivery["attempt_log"][0]["outcome"] == "delivered"
    assert "body" not in trace  # bodies hold personal data: never over the API
    assert PATIENTS[0] not in str(trace)

    status = (await client.get("/admin/status", headers=VIEW)).json()
    assert status["messages"] == {"processed": 1, "unmatched": 1}
    assert status["deliveries"] == {"files": {"delivered": 1}}

    metrics = (await client.get("/metrics")).text
    assert 'tryggbro_messages{state="processed"} 1.0' in metrics
    assert 'tryggbro_messages{state="unmatched"} 1.0' in metrics
    assert 'tryggbro_deliveries{destination="files",state="delivered"} 1.0' in metrics
    assert "tryggbro_delivery_oldest_pending_seconds" in metrics
    assert PATIENTS[0] not in metrics

    missing = await client.get("/admin/messages/99999", headers=VIEW)
    assert missing.status_code == 404


async def test_reprocess_and_retry_over_the_api(admin):
    hub, client, _ = admin
    posted = await client.post("/ingest/alarmplatform", headers=POST,
                               content=body(alarm_event("e9", "A9", device="TA-LATE")))
    hub.processor().run_batch()
    message_id = posted.json()["id"]
    assert hub.repo.message_trace(message_id)["state"] == "unmatched"
    enrol(hub, "TA-LATE", PATIENTS[1])
    reply = await client.post(f"/admin/messages/{message_id}/reprocess", headers=OPERATE)
    assert reply.json() == {"id": message_id, "status": "queued"}
    assert await deliver(hub) == 1
    again = await client.post(f"/admin/messages/{message_id}/reprocess", headers=OPERATE)
    assert again.status_code == 409
    assert "is processed" in again.json()["detail"]
    delivery_id = hub.repo.message_trace(message_id)["deliveries"][0]["id"]
    retry = await client.post(f"/admin/deliveries/{delivery_id}/retry", headers=OPERATE)
    assert retry.status_code == 409
    assert retry.json()["type"].endswith("already-delivered")


async def test_health_readiness_openapi(admin):
    _, client, _ = admin
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    spec = (await client.get("/openapi.json")).json()
    assert "/ingest/{source}" in spec["paths"]
    assert "/admin/messages/{message_id}" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
    plugins = (await client.get("/admin/plugins", headers=VIEW)).json()
    assert {"alarmplatform", "fhir-rest"} <= {p["name"] for p in plugins}
