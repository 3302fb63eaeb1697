"""The receiver on 127.0.0.1 driven by the real SOS Access v4 client (PyPI `sos-access`),
with the hub's real configuration, intake (group commit) and SQLite store."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from sos_access.client import SOSAccessClient
from sos_access.exceptions import (
    AlarmReceiverConnectionError,
    InvalidLength,
    MandatoryDataMissing,
    NotAuthorized,
)
from sos_access.schemas import AlarmResponseSchema, PingResponseSchema
from sqlalchemy import text

from hub.domain.model import MessageState

REPO = Path(__file__).resolve().parents[3]
CREDENTIALS_ENV = "TEST_SOS_ACCESS_CREDENTIALS"
AUTH = "hxp4x9nnwxjatv8"  # 15 characters, as the protocol requires
OTHER_AUTH = "k3m9q2w7e5r1t8y"
CONFIG = f"""
[hub]
mappings_dir = "{REPO / 'mappings'}"

[sources.sos]
type = "sos-access"
adapter = "sos-access"
host = "127.0.0.1"
port = 0
receiver_id = "42"
credentials_env = "{CREDENTIALS_ENV}"
max_document_bytes = 2048
read_timeout_seconds = 2

[destinations.ehr]
type = "folder"
path = "out"

[[routes]]
name = "device-health-is-not-journaled"
match = {{ categories = ["device_health"] }}
action = "filter"

[[routes]]
name = "alarms"
match = {{ categories = ["safety_alarm"] }}
destinations = ["ehr"]
"""


@pytest.fixture
async def receiver(tryggbro_hub, monkeypatch):
    monkeypatch.setenv(CREDENTIALS_ENV, f"1234567:{AUTH}, 7654321:{OTHER_AUTH}")
    hub = tryggbro_hub(CONFIG)
    hub.intake.start()
    source = hub.sources["sos"]
    await source.start()
    yield hub, source.port
    await source.stop()
    hub.intake.stop()


def client(port: int, code: str = "1234567", auth: str = AUTH,
           receiver: str = "42") -> SOSAccessClient:
    return SOSAccessClient(transmitter_code=code, transmitter_type="SV300",
                           authentication=auth, receiver_id=receiver,
                           receiver_address=("127.0.0.1", port), use_single_receiver=True)


def messages(hub):
    return hub.repo.search_messages(source="sos", limit=100)


def _exchange(port: int, data: bytes, shut: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while not received.rstrip().endswith(b"response>") and (chunk := sock.recv(4096)):
            received += chunk
    return received


async def exchange(port: int, data: bytes, *, shut: bool = False) -> str:
    """Send raw bytes on one connection (a blocking socket, in a thread, as the real
    client does) and read the answer."""
    return (await asyncio.to_thread(_exchange, port, data, shut)).decode("latin-1")


async def test_alarm_is_answered_ok_only_once_it_is_in_the_store(receiver):
    hub, port = receiver

    def send_and_look():
        response = client(port).send_alarm(event_code="MA", reference="ref-1",
                                           detector_text="Trygghetsalarm knapp")
        # Looked up in the database the moment the client has its answer.
        return response, messages(hub)

    response, stored = await asyncio.to_thread(send_and_look)
    assert (response.status, response.info, response.reference) == (0, "OK", "ref-1")
    assert [m["dedup_key"] for m in stored] == ["alarm:1234567:AL:ref-1"]
    trace = hub.repo.message_trace(stored[0]["id"], include_body=True)
    assert trace is not None
    body = hub.repo.message_trace(stored[0]["id"], include_body=True)["body"]
    raw = body.encode("latin-1") if isinstance(body, str) else body
    assert b"<eventcode>MA</eventcode>" in raw
    assert AUTH.encode() not in raw
    assert b"<authentication>***************<" in raw

    # Processing turns it into a safety alarm for the EHR (routed, one event).
    enrol(hub, "1234567")
    await asyncio.to_thread(hub.processor().run_batch)
    trace = hub.repo.message_trace(stored[0]["id"])
    assert trace["state"] == MessageState.PROCESSED
    (event,) = trace["events"]
    assert (event["category"], event["code"], event["device_id"]) == \
        ("safety_alarm", "3", "1234567")


async def test_failing_intake_gets_status_5_not_ok(receiver):
    hub, port = receiver
    # The journal refuses every insert: the commit fails, so the sender must not hear OK.
    with hub.db.engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON journal "
                          "BEGIN SELECT RAISE(ABORT, 'the disk says no'); END"))
    with pytest.raises(AlarmReceiverConnectionError):  # status 5 → the client fails over
        await asyncio.to_thread(client(port).send_alarm, event_code="MA", reference="ref-x")
    answer = AlarmResponseSchema().load(await exchange(port, alarm_xml("ref-y")))
    assert answer.status == 5
    assert "NOT accepted" in answer.info
    with hub.db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse"))
    assert messages(hub) == []


async def test_ping_is_answered_and_kept_as_a_heartbeat(receiver):
    hub, port = receiver
    response = await asyncio.to_thread(client(port).ping, reference="hb-1")
    assert (response.status, response.info) == (0, "OK")
    (stored,) = messages(hub)
    assert stored["dedup_key"] == "ping:1234567:hb-1"
    enrol(hub, "1234567")
    await asyncio.to_thread(hub.processor().run_batch)
    trace = hub.repo.message_trace(stored["id"])
    assert trace["state"] == MessageState.FILTERED
    (event,) = trace["events"]
    assert (event["category"], event["kind"], event["device_id"]) == \
        ("device_health", "heartbeat", "1234567")
    assert trace["deliveries"] == []
    # The heartbeat is the device's last contact (no-contact tracking).
    (device,) = hub.repo.list_devices("sos")
    assert device["last_seen_at"] == stored["received_at"]
    # A ping without a reference is still a heartbeat of its own (a fresh key each time).
    await asyncio.to_thread(client(port).ping)
    await asyncio.to_thread(client(port).ping)
    assert len(messages(hub)) == 3


@pytest.mark.parametrize(("code", "auth", "receiver_id"), [
    ("1234567", OTHER_AUTH, "42"),  # another transmitter's authentication
    ("9999999", AUTH, "42"),  # unknown transmitter
    ("1234567", AUTH, "43"),  # another receiver
])
async def test_bad_login_gets_status_4_and_nothing_is_stored(receiver, code, auth,
                                                             receiver_id):
    hub, port = receiver
    with pytest.raises(NotAuthorized):
        await asyncio.to_thread(client(port, code, auth, receiver_id).send_alarm,
                                event_code="MA", reference="ref-2")
    if receiver_id == "42":
        with pytest.raises(NotAuthorized):
            await asyncio.to_thread(client(port, code, auth).ping, reference="hb-2")
    assert messages(hub) == []


async def test_malformed_xml_gets_status_2_and_nothing_is_stored(receiver):
    hub, port = receiver
    broken = b'<?xml version="1.0" encoding="iso-8859-1"?>\n<alarmrequest><eventcode>MA' \
             b'</eventcod></alarmrequest>'
    answer = AlarmResponseSchema().load(await exchange(port, broken))
    assert answer.status == 2
    assert "not well-formed" in answer.info
    # An entity declaration (billion laughs, external entities) is refused outright.
    bomb = b'<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE a [<!ENTITY x "xx">]>' \
           b"<pingrequest><reference>&x;</reference></pingrequest>"
    answer = AlarmResponseSchema().load(await exchange(port, bomb))
    assert (answer.status, answer.info) == \
        (2, "document type declarations and entities are not accepted")
    # No XML header: status 100; closed before the end: status 2.
    answer = AlarmResponseSchema().load(await exchange(port, b"<alarmrequest></alarmrequest>"))
    assert answer.status == 100
    half = PingResponseSchema().load(await exchange(
        port, b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest><reference>',
        shut=True))
    assert half.status == 2
    assert messages(hub) == []


async def test_missing_mandatory_element_gets_status_7(receiver):
    hub, port = receiver
    with pytest.raises(MandatoryDataMissing):
        await asyncio.to_thread(client(port).send_alarm, event_code="")
    assert messages(hub) == []


async def test_oversize_document_gets_status_1_and_is_closed(receiver):
    hub, port = receiver
    # 2048 bytes is this receiver's limit; the protocol allows 2000 characters of info.
    with pytest.raises(InvalidLength):
        await asyncio.to_thread(client(port).send_alarm, event_code="MA", reference="big",
                                additional_info=["x" * 100] * 19)
    answer = AlarmResponseSchema().load(await exchange(port, alarm_xml("r", pad=10_000)))
    assert answer.status == 1
    assert messages(hub) == []


async def test_resent_alarm_is_answered_ok_and_stored_once(receiver):
    hub, port = receiver
    first = await asyncio.to_thread(client(port).send_alarm, event_code="MA",
                                    reference="ref-3")
    again = await asyncio.to_thread(client(port).send_alarm, event_code="MA",
                                    reference="ref-3")
    assert (first.status, again.status) == (0, 0)
    assert [m["dedup_key"] for m in messages(hub)] == ["alarm:1234567:AL:ref-3"]


async def test_slow_sender_is_answered_and_closed_after_the_read_timeout(receiver):
    hub, port = receiver
    started = asyncio.get_running_loop().time()
    data = await exchange(
        port, b'<?xml version="1.0" encoding="iso-8859-1"?><alarmrequest>')
    assert 1.5 < asyncio.get_running_loop().time() - started < 5
    assert AlarmResponseSchema().load(data).status == 2
    assert messages(hub) == []


def alarm_xml(reference: str, pad: int = 0) -> bytes:
    return (f'<?xml version="1.0" encoding="iso-8859-1"?>\n<alarmrequest>'
            f"<reference>{reference}</reference><authentication>{AUTH}</authentication>"
            f"<receiver>42</receiver><transmittertype>SV300</transmittertype>"
            f"<transmittercode>1234567</transmittercode><eventcode>MA</eventcode>"
            f"<additionalinfo>{'x' * pad}</additionalinfo></alarmrequest>").encode("latin-1")


def enrol(hub, device: str) -> None:
    """A consented enrolment from 2020 on, through the registry's own parser."""
    from hub.monitor import DeviceTypes
    from hub.registry import parse_enrolment

    record = {"source": "sos", "device_id": device, "device_type": "safety_alarm",
              "patient": "01819012012", "municipality": "0301", "legal_basis": "consent",
              "valid_from": "2020-01-01T00:00:00+00:00", "heartbeat_minutes": "60"}
    hub.repo.enrol([parse_enrolment(record, device_types=DeviceTypes(hub.mappings).names)])


async def test_tls_receiver(tryggbro_hub, monkeypatch, tmp_path):
    """TLS with the standard library's client: sos-access 0.0.8's own TLS cannot connect on
    Python >= 3.10 (it wraps its client socket in a server-side context)."""
    import ssl

    import trustme

    ca = trustme.CA()  # a throwaway CA and a server certificate for 127.0.0.1
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    monkeypatch.setenv(CREDENTIALS_ENV, f"1234567:{AUTH}")
    hub = tryggbro_hub(CONFIG.replace('read_timeout_seconds = 2', 'read_timeout_seconds = 2\n'
                                      'tls_cert_file = "cert.pem"\ntls_key_file = "key.pem"'))
    hub.intake.start()
    source = hub.sources["sos"]
    await source.start()

    def send() -> str:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with socket.create_connection(("127.0.0.1", source.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(alarm_xml("tls-1"))
            received = b""
            while not received.endswith(b"</alarmresponse>") and (chunk := sock.recv(4096)):
                received += chunk
        return received.decode("latin-1")

    try:
        response = AlarmResponseSchema().load(await asyncio.to_thread(send))
        assert (response.status, response.reference) == (0, "tls-1")
        assert [m["dedup_key"] for m in messages(hub)] == ["alarm:1234567:AL:tls-1"]
        # A plain-TCP sender gets no answer from a TLS receiver and nothing is stored.
        try:
            got = await exchange(source.port, alarm_xml("plain-1"))
        except OSError:  # reset instead of closed: either way, no answer
            got = ""
        assert got == ""
        assert len(messages(hub)) == 1
    finally:
        await source.stop()
        hub.intake.stop()


def test_every_setting_is_documented():
    from tryggbro_sosaccess.source import SosAccessSettings

    text = (REPO / "docs" / "configuration.md").read_text()
    readme = (REPO / "plugins" / "tryggbro-sosaccess" / "README.md").read_text()
    missing = [name for name in SosAccessSettings.model_fields
               if f"`{name}`" not in text or f"{name}" not in readme]
    assert missing == []
