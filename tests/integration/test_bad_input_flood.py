"""Recipe C (docs: reliability.md §5.4): a flood of malformed input on every listener.

One real hub (uvicorn HTTP intake with the alarmplatform webhook, the `mllp`, `sos-access`
and `sia-dc09` sources, real SQLite) on 127.0.0.1. A seeded generator builds more than
10 000 malformed inputs: the fuzzers' seeds (`fuzz/targets.py`, with its regressions)
mutated so that they are certainly malformed, plus the recipe's named cases (MLLP framing
garbage, oversize, split, close mid-frame, TLS ClientHello; HL7 without MSH or with a bad
MSH; JSON depth bombs, NaN, huge numbers, truncated UTF-8, BOM, wrong content type;
XML billion laughs, external entities, deep nesting; DC-09 broken CRC and length). They
are sent concurrently over a few connections per listener while a valid message arrives
every 0.2 s on each listener.

Asserted: every malformed input got its protocol's negative answer (HTTP 4xx problem
JSON; MLLP AR/AE/CR/CE with an ERR segment, or the connection closed for framing errors;
SOS Access a non-zero status; DC-09 NAK or DUH); no unhandled exception in the hub's log
or event loop; the hub's tasks still running; every valid message answered positively and
journaled exactly once; nothing malformed journaled.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pysiaalarm.event import SIAEvent
from sqlalchemy import text

from fuzz.targets import TOKENS, mutate, seeds
from hub.hl7v2.framing import FrameReader, frame
from hub.logging import configure_logging
from tests.integration import hl7_test_plugin
from tests.integration.helpers import SOURCE_KEY, SOURCE_KEY_ENV, alarm_event, body
from tests.integration.running import running
from tests.integration.test_mllp_source import msg
from tests.integration.test_mllp_source import tryggbro_plugins as tryggbro_plugins

REPO = Path(__file__).resolve().parents[2]
SEED = 20261122
MARK = "okflood"           # only valid messages carry it
SOS_ENV = "TEST_SOS_ACCESS_CREDENTIALS"
SOS_AUTH = "hxp4x9nnwxjatv8"
MAX_FRAME = 65_536
COUNTS = {"http": 2600, "mllp": 3600, "sos": 1400, "sia": 2800}
WORKERS = {"http": 6, "mllp": 6, "sos": 6, "sia": 6}
VALID_EVERY = 0.2

CONFIG = f"""
[hub]
mappings_dir = "{REPO / 'mappings'}"

[http]
host = "127.0.0.1"
port = 0

[sources.alarmplatform]
adapter = "alarmplatform"
auth = "api-key"
api_key_env = "{SOURCE_KEY_ENV}"

[sources.lab]
type = "mllp"
adapter = "{hl7_test_plugin.ADAPTER}"
host = "127.0.0.1"
port = 0
max_frame_bytes = {MAX_FRAME}
frame_timeout_seconds = 5

[sources.sos]
type = "sos-access"
adapter = "sos-access"
host = "127.0.0.1"
port = 0
receiver_id = "42"
credentials_env = "{SOS_ENV}"
max_document_bytes = 4096
read_timeout_seconds = 3

[sources.rx]
type = "sia-dc09"
adapter = "sia-dc09"
host = "127.0.0.1"
port = 0
max_frame_bytes = 512
idle_timeout_seconds = 30
accounts = ["1234"]

[destinations.files]
type = "folder"
path = "out"

# This test is about the listeners: what is journaled is then filtered.
[[routes]]
name = "everything"
action = "filter"
match = {{ categories = ["safety_alarm", "device_health", "access", "medication",
                        "measurement", "position", "clinical"] }}
"""


# --- the generators -------------------------------------------------------------------


@dataclass
class Bad:
    """One malformed input: its case name and how it is sent."""

    case: str
    data: bytes
    mode: str = "frame"            # mllp: frame | raw | split | shut; http: see http_bad
    content_type: str = "application/json"
    answers: int = 1               # mllp: how many frames in `data`


def _mutated(rnd: random.Random, pool: list[bytes], keep: Callable[[bytes], bool]) -> bytes:
    while True:
        ops = [(rnd.randrange(6), rnd.randrange(1 << 16),
                rnd.choice(TOKENS) if rnd.random() < 0.6 else rnd.randbytes(rnd.randrange(9)))
               for _ in range(rnd.randrange(1, 5))]
        data = mutate(rnd.choice(pool), ops)
        if keep(data):
            return data


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return True
    return False


def http_bad(rnd: random.Random, n: int) -> Iterator[Bad]:
    pool = seeds("vendor_json")
    good = body(alarm_event("bad-1", "ALM-BAD"))
    named: list[Callable[[], Bad]] = [
        lambda: Bad("json-depth-bomb", b"[" * rnd.choice([1000, 100_000])),
        lambda: Bad("json-object-depth", b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
        lambda: Bad("json-nan", good.replace(b'"high"', rnd.choice([b"NaN", b"Infinity",
                                                                    b"-Infinity"]))),
        lambda: Bad("json-huge-number", good.replace(b'"high"', b"1e1000000")),
        lambda: Bad("json-truncated-utf8", good[:-2] + b"\xc3"),
        # A UTF-8 BOM may be ignored (RFC 8259 §8.1) and is; UTF-16 is not JSON on the wire.
        lambda: Bad("json-utf16-bom", b"\xff\xfe" + good.decode().encode("utf-16-le")),
        lambda: Bad("json-wrong-content-type", good,
                    content_type=rnd.choice(["text/plain", "application/xml",
                                             "multipart/form-data"])),
        lambda: Bad("json-duplicate-keys", b'{"eventId": "a", "eventId": "b", "type": 1}'),
        lambda: Bad("json-declared-1gb", b"x" * 65_536, mode="declared-1gb"),
        lambda: Bad("json-not-an-object", rnd.choice([b"[]", b"null", b"42", b'"x"'])),
        lambda: Bad("json-empty", b""),
    ]
    for i in range(n):
        if i % 4 == 0:
            yield named[(i // 4) % len(named)]()
        else:
            yield Bad("json-mutated", _mutated(rnd, pool, _not_json))


MSH = b"MSH|^~\\&|EPJ|KOMMUNE|TRYGGBRO|HUB|20260110081500||ADT^A01^ADT_A01|BAD1|P|2.5"
TLS_HELLO = bytes.fromhex("16030100c4010000c00303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"


def _no_msh(data: bytes) -> bool:
    body_ = data.replace(b"\x0b", b"").replace(b"\x1c", b"")
    return not body_.lstrip(b"\xef\xbb\xbf\r\n").startswith(b"MSH")


def mllp_bad(rnd: random.Random, n: int) -> Iterator[Bad]:
    pool = [s.replace(b"MSH", b"XSH", 1) for s in seeds("hl7_wire")]
    valid = msg("BAD2").encode()

    def clean(data: bytes) -> bytes:
        return data.replace(b"\x0b", b"").replace(b"\x1c", b"")

    def short_msh() -> bytes:
        fields = MSH.split(b"|")
        return b"|".join(fields[:rnd.randrange(2, 11)]) + b"\rPID|1"

    named: list[Callable[[], Bad]] = [
        lambda: Bad("hl7-no-msh", clean(_mutated(rnd, pool, _no_msh))),
        lambda: Bad("hl7-short-msh", short_msh()),
        lambda: Bad("hl7-odd-encoding", valid.replace(b"^~\\&", rnd.choice(
            [b"^^^^", b"", b"|||", b"\x00\x00"]), 1)),
        lambda: Bad("hl7-processing-id", valid.replace(b"|P|2.5|", rnd.choice(
            [b"|X|2.5|", b"|Q|2.5|", b"||2.5|"]), 1)),
        lambda: Bad("hl7-msh-segment-only-name", b"MSH"),
        lambda: Bad("hl7-random-bytes", clean(rnd.randbytes(rnd.randrange(1, 400)))),
        lambda: Bad("hl7-split-byte-by-byte", short_msh(), mode="split"),
        lambda: Bad("mllp-empty-frame", b""),
        lambda: Bad("mllp-many-frames-one-write",
                    b"".join(frame(short_msh()) for _ in range(50)), mode="raw", answers=50),
        lambda: Bad("mllp-garbage", rnd.randbytes(rnd.randrange(1, 2000)).replace(
            b"\x0b", b"").replace(b"\x1c", b""), mode="shut"),
        lambda: Bad("mllp-missing-start", valid + b"\x1c\r", mode="shut"),
        lambda: Bad("mllp-double-start", b"\x0b" + valid[:40] + b"\x0b" + valid + b"\x1c\r",
                    mode="shut"),
        lambda: Bad("mllp-missing-end-then-close", b"\x0b" + valid, mode="shut"),
        lambda: Bad("mllp-end-without-cr", b"\x0b" + short_msh() + b"\x1cX", mode="shut"),
        lambda: Bad("mllp-oversize", b"\x0b" + MSH + b"\rNTE|" + b"A" * (MAX_FRAME + 10)
                    + b"\x1c\r", mode="shut"),
        lambda: Bad("mllp-tls-client-hello", TLS_HELLO, mode="shut"),
    ]
    for i in range(n):
        if i % 2 == 0:
            yield named[(i // 2) % len(named)]()
        else:
            yield Bad("hl7-no-msh", clean(_mutated(rnd, pool, _no_msh)))


def sos_alarm(reference: str, *, auth: str = SOS_AUTH, receiver: str = "42",
              event: str = "<eventcode>MA</eventcode>", info: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="iso-8859-1"?>\n<alarmrequest>'
            f"<reference>{reference}</reference><authentication>{auth}</authentication>"
            f"<receiver>{receiver}</receiver><transmittertype>SV300</transmittertype>"
            f"<transmittercode>1234567</transmittercode>{event}"
            f"<additionalinfo>{info}</additionalinfo></alarmrequest>").encode("latin-1")


HEADER = b'<?xml version="1.0" encoding="iso-8859-1"?>\n'
LAUGHS = HEADER + (b'<!DOCTYPE alarmrequest [<!ENTITY l0 "ha">'
                   + b"".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">'.encode()
                              for i in range(1, 10))
                   + b"]><alarmrequest><reference>&l9;</reference></alarmrequest>")
QUADRATIC = HEADER + (b'<!DOCTYPE alarmrequest [<!ENTITY a "' + b"a" * 1000 + b'">]>'
                      b"<alarmrequest><reference>" + b"&a;" * 300 + b"</reference></alarmrequest>")
XXE = HEADER + (b'<!DOCTYPE alarmrequest [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b"<alarmrequest><reference>&x;</reference></alarmrequest>")


def external_dtd(port: int) -> bytes:
    """A document whose DTD lives on our own listener: the hub must never fetch it."""
    return HEADER + (f'<!DOCTYPE alarmrequest SYSTEM "http://127.0.0.1:{port}/evil.dtd">'
                     "<alarmrequest><reference>r</reference></alarmrequest>").encode()


def sos_bad(rnd: random.Random, n: int, dtd_port: int) -> Iterator[Bad]:
    pool = seeds("sos_xml")

    def truncated(data: bytes) -> bool:  # the root is never closed: certainly malformed
        return b"</alarmrequest>" not in data and b"</pingrequest>" not in data

    named: list[Callable[[], Bad]] = [
        lambda: Bad("xml-billion-laughs", LAUGHS),
        lambda: Bad("xml-quadratic-blowup", QUADRATIC),
        lambda: Bad("xml-external-entity", XXE),
        lambda: Bad("xml-external-dtd", external_dtd(dtd_port)),
        lambda: Bad("xml-deep-nesting", HEADER + b"<alarmrequest>" + b"<a>" * 1000
                    + b"</a>" * 1000 + b"</alarmrequest>"),
        lambda: Bad("xml-huge-attribute", HEADER + b'<alarmrequest a="' + b"x" * 8000
                    + b'"></alarmrequest>'),
        lambda: Bad("sos-wrong-auth", sos_alarm(f"w{rnd.randrange(10**6)}",
                                                auth="k3m9q2w7e5r1t8z")),
        lambda: Bad("sos-wrong-receiver", sos_alarm(f"r{rnd.randrange(10**6)}", receiver="41")),
        lambda: Bad("sos-missing-mandatory", sos_alarm(f"m{rnd.randrange(10**6)}", event="")),
        lambda: Bad("sos-no-xml-header", b"<alarmrequest></alarmrequest>"),
        lambda: Bad("sos-oversize", sos_alarm("o", info="x" * 5000)),
        lambda: Bad("sos-random-bytes", rnd.randbytes(rnd.randrange(1, 600))),
    ]
    for i in range(n):
        if i % 3 == 0:
            yield named[(i // 3) % len(named)]()
        else:
            data = _mutated(rnd, pool, lambda d: True)
            cut = data.find(b"</alarmrequest>")
            cut = data.find(b"</pingrequest>") if cut < 0 else cut
            if cut >= 0:
                data = data[:rnd.randrange(cut + 1)]
            assert truncated(data)
            # Connected and closed without a byte: the receiver closes without an answer.
            yield Bad("xml-mutated-truncated" if data else "sos-connect-and-close", data)


def sia_stamp() -> str:
    return datetime.now(UTC).strftime("_%H:%M:%S,%m-%d-%Y")


def sia_frame(content: str) -> bytes:
    return b"\n" + f"{SIAEvent._crc_calc(content)}{len(content):04X}{content}\r".encode()


def sia_bad(rnd: random.Random, n: int) -> Iterator[Bad]:
    pool = seeds("sia_frame")

    def mutated_body() -> Bad:
        original = rnd.choice(pool).strip(b"\r\n")
        head, old = original[:8], original[8:]
        while True:
            new = _mutated(rnd, [old], lambda d: True).replace(b"\r", b"").replace(b"\n", b"")
            if new == old or len(new) > 400:
                continue
            content = new.decode("latin-1")
            if head == f"{SIAEvent._crc_calc(content)}{len(content):04X}".encode():
                continue  # the CRC still fits by chance: not certainly broken
            return Bad("dc09-mutated-body", b"\n" + head + new + b"\r")

    def valid_content() -> str:
        return f'"SIA-DCS"{rnd.randrange(10000):04d}R0L0#1234[#1234|Nri1/MA01]{sia_stamp()}'

    def bad_crc() -> Bad:
        good = sia_frame(valid_content())
        crc = b"0000" if good[1:5] != b"0000" else b"FFFF"
        return Bad("dc09-bad-crc", good[:1] + crc + good[5:])

    def bad_length() -> Bad:
        good = sia_frame(valid_content())
        return Bad("dc09-bad-length", good[:5] + f"{rnd.randrange(1, 0xFFFF):04X}".encode()
                   + good[9:])

    named: list[Callable[[], Bad]] = [
        bad_crc, bad_length, mutated_body,
        lambda: Bad("dc09-garbage", rnd.randbytes(rnd.randrange(1, 300)).replace(
            b"\r", b"").replace(b"\n", b"") + b"\r"),
        lambda: Bad("dc09-unknown-account", sia_frame(
            f'"SIA-DCS"0001R0L0#9999[#9999|Nri1/MA01]{sia_stamp()}')),
        lambda: Bad("dc09-old-timestamp", sia_frame(
            '"SIA-DCS"0001R0L0#1234[#1234|Nri1/MA01]_10:00:00,01-01-2020')),
        lambda: Bad("dc09-unknown-token", sia_frame(
            f'"SIA-XYZ"0001R0L0#1234[#1234|Nri1/MA01]{sia_stamp()}')),
        lambda: Bad("dc09-encrypted-unknown-key", sia_frame(
            f'"*SIA-DCS"0001R0L0#1234[{rnd.randbytes(16).hex().upper()}')),
    ]
    for i in range(n):
        yield named[i % len(named)]() if i % 2 == 0 else mutated_body()


# --- the clients ------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    wrong: list[tuple[str, str, str]] = field(default_factory=list)

    def note(self, listener: str, case: str, outcome: str, ok: bool, detail: str = "") -> None:
        self.outcomes[(listener, case, outcome)] += 1
        if not ok:
            self.wrong.append((listener, case, f"{outcome}: {detail[:300]}"))


class Http:
    """A keep-alive HTTP/1.1 client on raw streams (reconnects when the server closes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, payload: bytes, content_type: str = "application/json",
                   declared: int | None = None) -> tuple[int, dict[str, str], bytes] | None:
        if self.conn is None:
            self.conn = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.conn
        length = declared if declared is not None else len(payload)
        head = (b"POST /ingest/alarmplatform HTTP/1.1\r\nHost: hub\r\n"
                b"Content-Type: " + content_type.encode() + b"\r\n"
                b"X-Api-Key: " + SOURCE_KEY.encode() + b"\r\n"
                b"Content-Length: " + str(length).encode() + b"\r\n\r\n")
        try:
            writer.write(head + payload)
            await writer.drain()
            async with asyncio.timeout(10):
                raw_head = await reader.readuntil(b"\r\n\r\n")
                lines = raw_head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {k.lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                content = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            return None
        if headers.get("connection", "").lower() == "close" or declared is not None:
            self.close()
        return status, headers, content

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


def problem_json(headers: dict[str, str], content: bytes) -> bool:
    if not headers.get("content-type", "").startswith("application/problem+json"):
        return False
    try:
        doc = json.loads(content)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("detail") or doc.get("title"), str)


async def http_flood(port: int, bad: list[Bad], tally: Tally) -> None:
    queue = iter(bad)

    async def worker() -> None:
        client = Http(port)
        for item in queue:
            declared = 1 << 30 if item.mode == "declared-1gb" else None
            answer = await client.post(item.data, item.content_type, declared)
            if answer is None:
                tally.note("http", item.case, "closed", item.mode == "declared-1gb")
                continue
            status, headers, content = answer
            tally.note("http", item.case, str(status),
                       400 <= status < 500 and problem_json(headers, content),
                       content.decode("latin-1"))
            await asyncio.sleep(0)
        client.close()

    await asyncio.gather(*(worker() for _ in range(WORKERS["http"])))


def msa_code(ack: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment.split(b"|")[1].decode("latin-1")
    return "none"


async def read_acks(reader: asyncio.StreamReader, count: int, timeout: float = 10
                    ) -> tuple[list[bytes], bool]:
    """Up to `count` ACK frames; (frames, closed by the server)."""
    frames = FrameReader(1 << 20)
    got: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                chunk = await reader.read(65536)
                if not chunk:
                    return got, True
                got += frames.feed(chunk)
    except (OSError, TimeoutError):
        return got, True
    return got, False


async def mllp_flood(port: int, bad: list[Bad], tally: Tally) -> None:
    queue = iter(bad)

    def negative(ack: bytes) -> bool:
        return msa_code(ack) in ("AR", "AE", "CR", "CE") and b"\rERR|" in ack

    async def worker() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for item in queue:
            if item.mode == "shut":
                # Broken framing on a connection of its own: the server closes it; any
                # answer it gives before must be negative.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(item.data)
                    await writer.drain()
                    writer.write_eof()
                except OSError:
                    pass
                acks, closed = await read_acks(reader, 1 << 30)
                writer.close()
                ok = closed and all(negative(a) for a in acks)
                tally.note("mllp", item.case,
                           "closed" if not acks else f"{'+'.join(map(msa_code, acks))}+closed",
                           ok, repr(acks[:1]))
                continue
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            try:
                if item.mode == "raw":
                    writer.write(item.data)
                elif item.mode == "split":
                    for byte in frame(item.data):
                        writer.write(bytes([byte]))
                        await writer.drain()
                else:
                    writer.write(frame(item.data))
                await writer.drain()
            except OSError:
                pass
            acks, closed = await read_acks(reader, item.answers)
            ok = len(acks) == item.answers and all(negative(a) for a in acks)
            codes = Counter(msa_code(a) for a in acks)
            tally.note("mllp", item.case, "+".join(sorted(codes)) + ("+closed" if closed else ""),
                       ok and not closed, repr(acks[:1]))
            if closed:
                writer.close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(WORKERS["mllp"])))


STATUS = re.compile(rb"<status>(-?\d+)</status>")


async def sos_exchange(port: int, data: bytes, shut: bool) -> tuple[bytes, bool]:
    """One document on one connection; (answer, closed without an answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        if shut:
            writer.write_eof()
        async with asyncio.timeout(10):
            while not received.rstrip().endswith(b"response>"):
                chunk = await reader.read(4096)
                if not chunk:
                    break
                received += chunk
    except OSError:
        pass
    finally:
        writer.close()
    return received, not received


async def sos_flood(port: int, bad: list[Bad], tally: Tally) -> None:
    queue = iter(bad)

    async def worker() -> None:
        for item in queue:
            answer, _closed = await sos_exchange(port, item.data, shut=True)
            status = STATUS.search(answer)
            code = status.group(1).decode() if status else "no-answer"
            ok = code == "no-answer" if item.case == "sos-connect-and-close" else \
                status is not None and code != "0"
            tally.note("sos", item.case, f"status-{code}", ok,
                       f"{item.data[:120]!r} -> {answer.decode('latin-1')}")

    await asyncio.gather(*(worker() for _ in range(WORKERS["sos"])))


def sia_answer(raw: bytes) -> str:
    content = raw.strip(b"\r\n")[8:].decode("latin-1")
    return content[1:4] if content.startswith('"') else f"?{content[:20]}"


async def sia_flood(port: int, bad: list[Bad], tally: Tally) -> None:
    queue = iter(bad)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for item in queue:
            writer.write(item.data)
            await writer.drain()
            try:
                async with asyncio.timeout(10):
                    raw = await reader.readuntil(b"\r")
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                tally.note("sia", item.case, "closed", False, repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            answer = sia_answer(raw)
            tally.note("sia", item.case, answer, answer in ("NAK", "DUH"), raw.decode("latin-1"))
        writer.close()

    await asyncio.gather(*(worker() for _ in range(WORKERS["sia"])))


# --- the valid traffic ------------------------------------------------------------------


@dataclass
class Valid:
    sent: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, set[bytes]] = field(default_factory=lambda: {
        "alarmplatform": set(), "lab": set(), "sos": set(), "rx": set()})
    failures: list[str] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)


async def valid_traffic(ports: dict[str, int], stop: asyncio.Event, valid: Valid) -> None:
    http = Http(ports["http"])
    lab_reader, lab_writer = await asyncio.open_connection("127.0.0.1", ports["lab"])
    rx_reader, rx_writer = await asyncio.open_connection("127.0.0.1", ports["rx"])
    loop = asyncio.get_running_loop()
    i = 0

    async def one_http(n: int) -> None:
        payload = body(alarm_event(f"{MARK}-{n}", f"ALM-{MARK}-{n}"))
        t0 = loop.time()
        answer = await http.post(payload)
        valid.latency.append(loop.time() - t0)
        valid.bodies["alarmplatform"].add(payload)
        if answer is None or answer[0] != 202 or json.loads(answer[2])["duplicate"]:
            valid.failures.append(f"http {n}: {answer}")

    async def one_mllp(n: int) -> None:
        message = msg(f"{MARK}{n}").encode()
        lab_writer.write(frame(message))
        await lab_writer.drain()
        acks, closed = await read_acks(lab_reader, 1)
        valid.bodies["lab"].add(message)
        if closed or msa_code(acks[0]) != "AA":
            valid.failures.append(f"mllp {n}: {acks} closed={closed}")

    async def one_sos(n: int) -> None:
        answer, _ = await sos_exchange(ports["sos"], sos_alarm(f"{MARK}-{n}"), shut=False)
        status = STATUS.search(answer)
        if status is None or status.group(1) != b"0":
            valid.failures.append(f"sos {n}: {answer!r}")

    async def one_sia(n: int) -> None:
        data = sia_frame(f'"SIA-DCS"{n % 10000:04d}R0L0#1234[#1234|Nri1/MA01]{sia_stamp()}')
        rx_writer.write(data)
        await rx_writer.drain()
        raw = await asyncio.wait_for(rx_reader.readuntil(b"\r"), 10)
        valid.bodies["rx"].add(data)
        if sia_answer(raw) != "ACK":
            valid.failures.append(f"sia {n}: {raw!r}")

    while not stop.is_set():
        i += 1
        tick = loop.time()
        await asyncio.gather(one_http(i), one_mllp(i), one_sos(i), one_sia(i))
        valid.sent["alarmplatform"] += 1
        valid.sent["lab"] += 1
        valid.sent["sos"] += 1
        valid.sent["rx"] += 1
        await asyncio.sleep(max(0.0, VALID_EVERY - (loop.time() - tick)))
    http.close()
    lab_writer.close()
    rx_writer.close()


# --- the test ---------------------------------------------------------------------------


def journal(hub: Any) -> list[tuple[str, str, bytes]]:
    with hub.db.read_engine.connect() as conn:
        return [(r.source, r.dedup_key, bytes(r.body)) for r in conn.execute(text(
            "select source, dedup_key, body from journal order by id"))]


async def test_malformed_flood_on_every_listener(tryggbro_hub, monkeypatch):
    monkeypatch.setenv(SOS_ENV, f"1234567:{SOS_AUTH}")
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    rnd = random.Random(SEED)
    fetched: list[bytes] = []

    async def dtd_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fetched.append(await reader.read(1024))
        writer.close()

    trap = await asyncio.start_server(dtd_server, "127.0.0.1", 0)
    dtd_port = trap.sockets[0].getsockname()[1]
    bad = {"http": list(http_bad(rnd, COUNTS["http"])),
           "mllp": list(mllp_bad(rnd, COUNTS["mllp"])),
           "sos": list(sos_bad(rnd, COUNTS["sos"], dtd_port)),
           "sia": list(sia_bad(rnd, COUNTS["sia"]))}
    inputs = sum(len(v) for v in bad.values())
    assert inputs >= 10_000
    assert not any(MARK.encode() in item.data for items in bad.values() for item in items)

    loop_errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))

    hub = tryggbro_hub(CONFIG)
    tally = Tally()
    valid = Valid()
    t0 = time.monotonic()
    async with running(hub, serve_http=True):
        assert hub.http_port is not None
        ports = {"http": hub.http_port, "lab": hub.sources["lab"].port,
                 "sos": hub.sources["sos"].port, "rx": hub.sources["rx"].port}
        stop = asyncio.Event()
        steady = asyncio.create_task(valid_traffic(ports, stop, valid))
        await asyncio.gather(http_flood(ports["http"], bad["http"], tally),
                             mllp_flood(ports["lab"], bad["mllp"], tally),
                             sos_flood(ports["sos"], bad["sos"], tally),
                             sia_flood(ports["rx"], bad["sia"], tally))
        flood_seconds = time.monotonic() - t0
        await asyncio.sleep(0.5)  # a few valid messages after the flood, too
        stop.set()
        await steady
        # The hub's own tasks are all still running after the flood.
        assert hub.health.tasks
        assert not [t.get_name() for t in hub.health.tasks if t.done()]
        stored = journal(hub)
    duration = time.monotonic() - t0
    trap.close()
    assert fetched == []  # no outbound call for an external DTD

    answered = sum(tally.outcomes.values())
    assert answered == inputs
    wrong_cases = Counter((listener, case, outcome.split(":")[0])
                          for listener, case, outcome in tally.wrong)
    assert not tally.wrong, (wrong_cases, tally.wrong[:3])
    assert not valid.failures, valid.failures[:10]
    # Every valid message journaled exactly once; nothing else journaled.
    per_source = Counter(source for source, _, _ in stored)
    assert per_source == valid.sent, (per_source, valid.sent)
    assert len({(s, k) for s, k, _ in stored}) == len(stored)
    for source, _key, data in stored:
        if source == "sos":
            assert MARK.encode() in data
        else:
            assert data in valid.bodies[source], (source, data[:200])
    # No unhandled exception anywhere: not in the log, not in the event loop.
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sum(r["event"] == "hl7 message refused" for r in lines) >= 1000  # logs captured
    crashes = [r for r in lines if r.get("level") in ("error", "critical") or "exception" in r]
    assert not crashes, crashes[:5]
    assert not loop_errors, loop_errors[:5]

    by_listener: dict[str, Counter[str]] = {}
    for (listener, _case, outcome), count in tally.outcomes.items():
        by_listener.setdefault(listener, Counter())[outcome] += count
    summary = {k: dict(v.most_common()) for k, v in sorted(by_listener.items())}
    print(f"flood: {inputs} malformed in {flood_seconds:.1f} s ({inputs / flood_seconds:.0f}/s), "
          f"total {duration:.1f} s; outcomes {summary}; valid {dict(valid.sent)} all accepted, "
          f"max valid HTTP latency {max(valid.latency):.2f} s; 0 unhandled exceptions")
