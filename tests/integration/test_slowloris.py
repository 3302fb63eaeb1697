"""Recipe D (docs: reliability.md §5.5): slowloris on HTTP and MLLP.

The real hub (uvicorn HTTP intake and the MLLP source, real SQLite) on 127.0.0.1 with
short limits. Attackers on 127.0.0.2-5 (Linux routes all of 127/8 to loopback, so each
address is a distinct client IP to the hub) hold hundreds of connections that trickle
one byte a second: HTTP request heads and bodies that never end, MLLP frames that never
end. Meanwhile real alarms and HL7 messages from 127.0.0.1 must be answered promptly and
correctly; every slow connection must be closed by the server within its limit (never
before it: the deadline counts from the start, not from the last byte); connections
beyond the per-address cap are refused at once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from hub.hl7v2.framing import FrameReader, frame
from tests.integration import hl7_test_plugin
from tests.integration.helpers import SOURCE_KEY, SOURCE_KEY_ENV, alarm_event, body
from tests.integration.running import running
from tests.integration.test_mllp_source import msa, msg
from tests.integration.test_mllp_source import tryggbro_plugins as tryggbro_plugins

REPO = Path(__file__).resolve().parents[2]
LIMIT = 3.0          # header, body and frame deadlines, seconds
MARGIN = 3.0         # a slow connection must be closed by LIMIT + MARGIN
CAP = 50             # connections per address, both listeners
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 6)]   # 4 x 50 = 200 slow per listener
EXTRA = 10           # per attacker address beyond CAP: refused
LEGIT = "127.0.0.1"
PROMPT = 1.0         # a real alarm / HL7 message is answered within this

CONFIG = f"""
[hub]
mappings_dir = "{REPO / 'mappings'}"

[http]
host = "127.0.0.1"
port = 0
header_timeout_seconds = {LIMIT}
body_timeout_seconds = {LIMIT}
max_connections = 2000
max_connections_per_ip = {CAP}

[sources.alarmplatform]
adapter = "alarmplatform"
auth = "api-key"
api_key_env = "{SOURCE_KEY_ENV}"

[sources.lab]
type = "mllp"
adapter = "{hl7_test_plugin.ADAPTER}"
host = "127.0.0.1"
port = 0
frame_timeout_seconds = {LIMIT}
idle_timeout_seconds = 30
max_connections = 2000
max_connections_per_ip = {CAP}

[destinations.files]
type = "folder"
path = "out"

# This test is about the listeners: the alarms are journaled, then filtered.
[[routes]]
name = "alarms"
action = "filter"
match = {{ categories = ["safety_alarm"] }}
"""


@dataclass
class Slow:
    """One slow connection: when it opened, when the server closed it, what it said."""

    kind: str
    ip: str
    opened: float
    closed: float | None = None
    received: bytes = b""

    @property
    def lifetime(self) -> float:
        assert self.closed is not None, f"{self.kind} from {self.ip} was never closed"
        return self.closed - self.opened


async def trickle(kind: str, port: int, ip: str, first: bytes, drip: bytes) -> Slow:
    """Connect from `ip`, send `first`, then one byte of `drip` a second until the server
    closes the connection; gives up (closed stays None) after LIMIT + MARGIN + 2 s."""
    loop = asyncio.get_running_loop()
    slow = Slow(kind, ip, loop.time())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    pending = [first] + [drip[i:i + 1] for i in range(len(drip))]
    try:
        while loop.time() - slow.opened < LIMIT + MARGIN + 2:
            try:
                if pending and not slow.received:  # once the server spoke, only listen
                    writer.write(pending.pop(0))
                    await writer.drain()
                async with asyncio.timeout(1.0):
                    data = await reader.read(4096)
            except TimeoutError:
                continue  # still open: next byte
            except OSError:  # reset by the server (ConnectionResetError, BrokenPipeError)
                data = b""
            if not data:
                slow.closed = loop.time()
                return slow
            slow.received += data
        return slow
    finally:
        writer.close()


async def http_post(port: int, payload: bytes) -> tuple[float, int, dict[str, object]]:
    """A real alarm on a fresh connection: (seconds until the whole answer, status, JSON)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(LEGIT, 0))
    writer.write(b"POST /ingest/alarmplatform HTTP/1.1\r\nHost: hub\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 b"X-Api-Key: " + SOURCE_KEY.encode() + b"\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    answer = await reader.read()  # until the server closes (Connection: close)
    elapsed = loop.time() - t0
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return elapsed, status, json.loads(content)


class Mllp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(1 << 20)

    @classmethod
    async def connect(cls, port: int) -> Mllp:
        return cls(*await asyncio.open_connection("127.0.0.1", port, local_addr=(LEGIT, 0)))

    async def exchange(self, message: str) -> tuple[float, bytes]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.writer.write(frame(message.encode()))
        await self.writer.drain()
        while True:
            data = await self.reader.read(65536)
            assert data, "the hub closed a real HL7 connection"
            if done := self.frames.feed(data):
                return loop.time() - t0, done[0]

    def close(self) -> None:
        self.writer.close()


async def real_traffic(http_port: int, mllp_port: int) -> tuple[list[float], list[float]]:
    """12 alarms over HTTP (each on a new connection) and 12 HL7 messages over MLLP (half
    on one kept connection, half on new ones), spaced 0.15 s apart."""
    http_times: list[float] = []
    mllp_times: list[float] = []
    kept = await Mllp.connect(mllp_port)
    for i in range(12):
        elapsed, status, answer = await http_post(
            http_port, body(alarm_event(f"real-{i}", f"ALM-{i}")))
        assert (status, answer["status"], answer["duplicate"]) == (202, "accepted", False)
        http_times.append(elapsed)
        if i % 2:
            fresh = await Mllp.connect(mllp_port)
            elapsed, ack = await fresh.exchange(msg(f"REAL-{i}"))
            fresh.close()
        else:
            elapsed, ack = await kept.exchange(msg(f"REAL-{i}"))
        assert msa(ack)[1:3] == ["AA", f"REAL-{i}"]
        mllp_times.append(elapsed)
        await asyncio.sleep(0.15)
    kept.close()
    return http_times, mllp_times


HEAD = b"POST /ingest/alarmplatform HTTP/1.1\r\nHost: hub\r\n"
BODY_HEAD = (b"POST /ingest/alarmplatform HTTP/1.1\r\nHost: hub\r\n"
             b"Content-Type: application/json\r\nX-Api-Key: " + SOURCE_KEY.encode() +
             b"\r\nContent-Length: 5000\r\n\r\n")
DRIP = b"x" * 60


async def test_slow_clients_are_closed_and_real_traffic_flows(tryggbro_hub):
    hub = tryggbro_hub(CONFIG)
    async with running(hub, serve_http=True):
        http_port, mllp_port = hub.http_port, hub.sources["lab"].port
        assert http_port is not None
        assert mllp_port is not None

        def wave(count: int) -> list[asyncio.Task[Slow]]:
            tasks = []
            for ip in ATTACKERS:
                for n in range(count):
                    kind = "head" if n % 2 else "body"
                    first = HEAD if kind == "head" else BODY_HEAD
                    tasks.append(asyncio.create_task(
                        trickle(f"http-{kind}", http_port, ip, first, DRIP)))
                    tasks.append(asyncio.create_task(
                        trickle("mllp-frame", mllp_port, ip, b"\x0b", msg("SLOW").encode())))
            return tasks

        admitted = wave(CAP)
        await asyncio.sleep(0.5)
        beyond = wave(EXTRA)  # every attacker address is at its cap by now
        http_times, mllp_times = await real_traffic(http_port, mllp_port)
        slow = await asyncio.gather(*admitted, *beyond)
        # The 12 alarms and 12 HL7 messages, and nothing from the slow bodies.
        assert sum(hub.repo.status().messages.values()) == 24

    # Nothing slow was kept beyond its limit, nor closed before it.
    for protocol in ("http", "mllp"):
        for ip in ATTACKERS:
            mine = [s for s in slow if s.ip == ip and s.kind.startswith(protocol)]
            kept = [s for s in mine if s.lifetime >= LIMIT]
            refused = [s for s in mine if s.lifetime < LIMIT]
            assert len(kept) == CAP, (protocol, ip, len(kept))
            assert len(refused) == EXTRA, (protocol, ip, len(refused))
            assert all(s.lifetime <= LIMIT + MARGIN for s in kept)
            assert all(s.received == b"" for s in refused)
    for s in slow:
        if s.kind == "http-head" and s.lifetime >= LIMIT:
            assert s.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        elif s.kind != "http-head":
            assert s.received == b"", s  # no ACK for a frame that never ended; no answer
    assert max(http_times) < PROMPT, http_times
    assert max(mllp_times) < PROMPT, mllp_times
    lifetimes = {k: [s.lifetime for s in slow if s.kind == k and s.lifetime >= LIMIT]
                 for k in ("http-head", "http-body", "mllp-frame")}
    print("closed after (s):", {k: (round(min(v), 2), round(max(v), 2))
                                for k, v in lifetimes.items()},
          "refused within (s):", {k: round(max(s.lifetime for s in slow
                                               if s.kind.startswith(k) and s.lifetime < LIMIT), 3)
                                  for k in ("http", "mllp")},
          "real HTTP max (s):", round(max(http_times), 3),
          "real MLLP max (s):", round(max(mllp_times), 3))


SHORT = 2.0  # the limits in the test below


async def closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       drip: bytes, every: float) -> tuple[float, bytes]:
    """Send `drip` a byte every `every` s until the server closes; (when, what it said)."""
    loop = asyncio.get_running_loop()
    said = b""
    pending = [drip[i:i + 1] for i in range(len(drip))]
    while True:
        try:
            if pending and not said:
                writer.write(pending.pop(0))
                await writer.drain()
            async with asyncio.timeout(every):
                data = await reader.read(4096)
        except TimeoutError:
            assert pending, "the drip ran out before the server closed the connection"
            continue
        except OSError:
            data = b""
        if not data:
            return loop.time(), said
        said += data


async def test_silent_keepalive_and_between_frame_trickles_are_closed(tryggbro_hub):
    """Deadlines count from the start, not from the last byte: a silent HTTP connection,
    a keep-alive connection whose second request trickles in, and an MLLP connection
    trickling CR between frames are all closed on time."""
    config = CONFIG.replace(f"header_timeout_seconds = {LIMIT}",
                            f"header_timeout_seconds = {SHORT}")
    config = config.replace("idle_timeout_seconds = 30", f"idle_timeout_seconds = {SHORT}")
    hub = tryggbro_hub(config)
    loop = asyncio.get_running_loop()
    async with running(hub, serve_http=True):
        http_port, mllp_port = hub.http_port, hub.sources["lab"].port
        assert http_port is not None
        assert mllp_port is not None

        async def silent() -> float:
            t0 = loop.time()
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            when, said = await closed_after(reader, writer, b"", 10.0)
            writer.close()
            assert said.startswith(b"HTTP/1.1 408 "), said
            return when - t0

        async def keepalive() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            payload = body(alarm_event("kept-1", "ALM-K"))
            writer.write(b"POST /ingest/alarmplatform HTTP/1.1\r\nHost: hub\r\n"
                         b"Content-Type: application/json\r\nX-Api-Key: " +
                         SOURCE_KEY.encode() + b"\r\nContent-Length: " +
                         str(len(payload)).encode() + b"\r\n\r\n" + payload)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 202 "), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            assert json.loads(await reader.readexactly(length))["status"] == "accepted"
            await asyncio.sleep(0.5)  # idle keep-alive, well under uvicorn's 30 s
            t0 = loop.time()
            when, said = await closed_after(reader, writer, HEAD + DRIP, 0.5)
            writer.close()
            assert said.startswith(b"HTTP/1.1 408 "), said
            return when - t0

        async def between_frames() -> float:
            kept = await Mllp.connect(mllp_port)
            _, ack = await kept.exchange(msg("KEPT-1"))
            assert msa(ack)[1] == "AA"
            t0 = loop.time()
            when, said = await closed_after(kept.reader, kept.writer, b"\r" * 40, 0.5)
            kept.close()
            assert said == b""
            return when - t0

        lifetimes = await asyncio.gather(silent(), keepalive(), between_frames())
    silent_s, keepalive_s, cr_s = lifetimes
    print(f"closed after (s): silent HTTP {silent_s:.2f}, keep-alive trickle "
          f"{keepalive_s:.2f}, MLLP CR trickle {cr_s:.2f}")
    for lifetime in lifetimes:
        # The keep-alive and MLLP clocks start at our first byte / the ACK, which the
        # server sees a moment later: allow 0.1 s on the low side.
        assert SHORT - 0.1 <= lifetime <= SHORT + MARGIN, lifetimes


async def test_idle_tls_handshakes_on_mllp_are_closed(tryggbro_hub, tmp_path):
    """A TLS listener: connections that never finish the handshake (silent, or trickling
    a ClientHello) are closed after frame_timeout_seconds, while a real TLS sender is
    answered meanwhile."""
    import ssl

    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    config = CONFIG.replace(f"frame_timeout_seconds = {LIMIT}",
                            f"frame_timeout_seconds = {SHORT}\n"
                            f'tls_cert_file = "{tmp_path / "server.pem"}"\n'
                            f'tls_key_file = "{tmp_path / "server.pem"}"')
    hub = tryggbro_hub(config)
    loop = asyncio.get_running_loop()
    async with running(hub, serve_http=True):
        port = hub.sources["lab"].port
        assert port is not None

        async def handshake_never_done(first: bytes) -> float:
            t0 = loop.time()
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(ATTACKERS[0], 0))
            # A TLS record header for a 512-byte handshake message, then a byte a second.
            when, said = await closed_after(reader, writer, first + b"\x00" * 40, 1.0)
            writer.close()
            assert said == b""
            return when - t0

        idle = [asyncio.create_task(handshake_never_done(b"")) for _ in range(50)]
        idle += [asyncio.create_task(handshake_never_done(b"\x16\x03\x01\x02\x00"))
                 for _ in range(50)]
        await asyncio.sleep(0.3)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        real = Mllp(reader, writer)
        _, ack = await real.exchange(msg("TLS-1"))
        answered = loop.time() - t0
        real.close()
        assert msa(ack)[1:3] == ["AA", "TLS-1"]
        lifetimes = await asyncio.gather(*idle)
    print(f"TLS handshakes never done: closed after {min(lifetimes):.2f}-"
          f"{max(lifetimes):.2f} s; real TLS message answered in {answered:.3f} s")
    assert answered < PROMPT
    assert all(SHORT <= t <= SHORT + MARGIN for t in lifetimes), lifetimes
