"""The `mllp` destination against real receivers: hl7apy's MLLPServer (closes after each
message), node-hl7-server 2.5.0 (re-sends earlier ACKs on a persistent connection), our
own `mllp` source (dedup by MSH-10), and small raw-socket misbehavers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme

from hub.destinations.mllp import MllpDestination, MllpDestinationSettings
from hub.domain.model import OutboundDelivery, OutcomeKind
from hub.hl7v2.framing import FrameReader, frame
from tests.integration.test_mllp_source import rows
from tests.integration.test_mllp_source import start as start
from tests.integration.test_mllp_source import tryggbro_plugins as tryggbro_plugins
from tests.peers.mllp import hl7apy_peer, node_hl7_peer, python_hl7_peer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BUNDLE = json.loads((FIXTURES / "dho/cases/01-blood-pressure/expected.json").read_text()
                    )[0]["events"][0]["bundle"]


def delivery(n: int, bundle: dict[str, Any] | None = None) -> OutboundDelivery:
    b = bundle or BUNDLE
    return OutboundDelivery(id=n, message_id=n, destination="ehr",
                            payload=json.dumps(b).encode(), bundle_id=b["id"], priority=50,
                            attempt=1)


def destination(port: int, **extra: object) -> MllpDestination:
    settings = MllpDestinationSettings.model_validate(
        {"host": "127.0.0.1", "port": port, "ack_timeout_seconds": 3,
         "receiving_application": "EPJ", **extra})
    return MllpDestination("ehr", settings)


@pytest.mark.parametrize("connection", ["persistent", "per-message"])
async def test_hl7apy_peer_closes_after_each_message_and_we_reconnect(connection):
    with hl7apy_peer() as port:
        dest = destination(port, connection=connection)
        outcomes = [await dest.send(delivery(n)) for n in range(1, 5)]
        await dest.aclose()
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 4, outcomes
    assert outcomes[0].detail == "ACK AA"


class WithPrtSegment(MllpDestination):
    """Adds a segment v2.5 does not define: hl7apy answers AE with its reason."""

    def message(self, delivery: OutboundDelivery) -> tuple[str, str]:
        control, text = super().message(delivery)
        return control, text + "\rPRT|1"


async def test_hl7apy_peer_ae_is_retried_with_its_reason():
    with hl7apy_peer() as port:
        dest = WithPrtSegment("ehr", MllpDestinationSettings(
            host="127.0.0.1", port=port, version="2.5", ack_timeout_seconds=3))
        outcome = await dest.send(delivery(9))
        await dest.aclose()
    assert outcome.kind == OutcomeKind.RETRY
    assert "AE" in outcome.detail
    assert "PRT" in outcome.detail


async def test_node_peer_duplicate_acks_are_ignored_on_a_persistent_connection():
    with node_hl7_peer("AA") as port:
        dest = destination(port, connection="persistent")
        with structlog.testing.capture_logs() as logs:
            outcomes = [await dest.send(delivery(n)) for n in range(1, 5)]
        await dest.aclose()
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 4
    ignored = sum(e["frames"] for e in logs if e["event"].startswith("mllp ignored"))
    assert ignored >= 3  # message n brings n-1 stale ACKs; some arrive after our read


@pytest.mark.parametrize(("code", "kind"), [("AE", OutcomeKind.RETRY),
                                             ("AR", OutcomeKind.REJECTED),
                                             ("CA", OutcomeKind.DELIVERED)])
async def test_node_peer_ack_codes_decide_the_outcome(code, kind):
    with node_hl7_peer(code) as port:
        dest = destination(port, connection="per-message")
        outcome = await dest.send(delivery(1))
        await dest.aclose()
    assert outcome.kind == kind, outcome
    assert code in outcome.detail


async def test_round_trip_into_our_own_source_dedups_a_retry(start):
    hub, port = await start(message_types=["ORU^R01"])
    dest = destination(port, receiving_facility="HUB")
    first = await dest.send(delivery(77))
    again = await dest.send(delivery(77))  # a retry: same MSH-10
    other = await dest.send(delivery(78))
    await dest.aclose()
    assert [o.kind for o in (first, again, other)] == [OutcomeKind.DELIVERED] * 3
    keys = [r[0] for r in rows(hub)]
    assert len(keys) == 2
    assert keys[0].startswith("TRYGGBRO||TB77.")
    await hub.sources["lab"].stop()


async def serve(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                  Awaitable[None]]) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_no_ack_is_a_retry_and_a_wrong_msa2_is_ignored():
    async def wrong_then_silent(reader, writer):
        frames = FrameReader(1 << 20)
        while data := await reader.read(65536):
            for _ in frames.feed(data):
                writer.write(frame(b"MSH|^~\\&|P||||2026||ACK|1|P|2.5\rMSA|AA|SOMEONE-ELSE"))

    server, port = await serve(wrong_then_silent)
    dest = destination(port, ack_timeout_seconds=0.5)
    outcome = await dest.send(delivery(1))
    await dest.aclose()
    server.close()
    assert outcome.kind == OutcomeKind.RETRY
    assert "no ACK for TB1." in outcome.detail


async def test_refused_connection_and_garbage_are_retries():
    server, port = await serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    outcome = await destination(port).send(delivery(1))
    assert outcome.kind == OutcomeKind.RETRY
    assert "cannot connect" in outcome.detail

    async def garbage(reader, writer):
        await reader.read(65536)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    server, port = await serve(garbage)
    outcome = await destination(port).send(delivery(1))
    server.close()
    assert outcome.kind == OutcomeKind.RETRY
    assert "unreadable answer" in outcome.detail


async def test_a_bundle_without_observations_is_rejected_not_retried():
    alarm = {"resourceType": "Bundle", "id": "b-1", "type": "transaction", "entry": [
        {"resource": {"resourceType": "DetectedIssue", "id": "x"}}]}
    outcome = await destination(1).send(delivery(1, alarm))
    assert outcome.kind == OutcomeKind.REJECTED
    assert "holds no Observation" in outcome.detail


async def test_python_hl7_asyncio_peer_on_one_persistent_connection():
    with python_hl7_peer() as port:
        dest = destination(port, connection="persistent")
        outcomes = [await dest.send(delivery(n)) for n in range(1, 4)]
        assert len(dest._idle) == 1  # the same connection served all three
        await dest.aclose()
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 3


async def test_tls_to_our_own_source(start, tmp_path):
    ca = trustme.CA()
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    hub, port = await start(message_types=["ORU^R01"], tls_cert_file=str(tmp_path / "server.pem"),
                            tls_key_file=str(tmp_path / "server.pem"))
    dest = MllpDestination("ehr", MllpDestinationSettings(
        host="localhost", port=port, tls=True, ca_file=tmp_path / "ca.pem"))
    outcome = await dest.send(delivery(5))
    await dest.aclose()
    assert outcome.kind == OutcomeKind.DELIVERED
    assert len(rows(hub)) == 1
    untrusted = MllpDestination("ehr", MllpDestinationSettings(host="localhost", port=port,
                                                               tls=True))
    failed = await untrusted.send(delivery(6))
    assert failed.kind == OutcomeKind.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in failed.detail
    await hub.sources["lab"].stop()


async def test_a_reused_connection_closed_before_the_ack_is_resent_on_a_fresh_one():
    """A peer that answers one message per connection and closes a little later (as
    hl7apy does when its FIN arrives after our next write): the same MSH-10 is sent
    again on a new connection, and the delivery succeeds."""
    seen: list[tuple[int, str]] = []
    connections = 0

    async def one_per_connection(reader, writer):
        nonlocal connections
        connections += 1
        me = connections
        frames = FrameReader(1 << 20)
        answered = False
        while data := await reader.read(65536):
            for message in frames.feed(data):
                control = message.split(b"\r")[0].split(b"|")[9].decode()
                seen.append((me, control))
                if not answered:
                    answered = True
                    writer.write(frame(b"MSH|^~\\&|P||||2026||ACK|1|P|2.5\rMSA|AA|"
                                       + control.encode()))
                    asyncio.get_running_loop().call_later(0.3, writer.close)

    server, port = await serve(one_per_connection)
    dest = destination(port, connection="persistent")
    first = await dest.send(delivery(1))
    await asyncio.sleep(0.05)  # the idle connection still looks open
    second = await dest.send(delivery(2))
    await dest.aclose()
    server.close()
    assert [first.kind, second.kind] == [OutcomeKind.DELIVERED] * 2
    assert [c for _, c in seen][1] == [c for _, c in seen][2]  # the same MSH-10 again
    assert [n for n, _ in seen] == [1, 1, 2]
