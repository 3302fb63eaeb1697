"""The `mllp` source on 127.0.0.1 with the hub's real intake (group commit) and SQLite,
driven by raw sockets, python-hl7's asyncio client and its `mllp_send` CLI."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import hl7
import hl7.mllp
import pytest
import structlog
import trustme
from sqlalchemy import text

from hub.hl7v2.framing import FrameReader, frame
from hub.plugins import PluginHost
from tests.integration import hl7_test_plugin

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus" / "microsoft-fhir-converter" / "hl7v2"
VENV_BIN = Path(sys.executable).parent


def config(**extra: object) -> str:
    lines = "\n".join(f"{k} = {_toml(v)}" for k, v in extra.items())
    return f"""
[hub]
mappings_dir = "{REPO / 'mappings'}"

[sources.lab]
type = "mllp"
adapter = "{hl7_test_plugin.ADAPTER}"
host = "127.0.0.1"
port = 0
{lines}

[destinations.ehr]
type = "folder"
path = "out"
"""


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(i) for i in v) + "]"
    return str(v)


@pytest.fixture
def tryggbro_plugins() -> PluginHost:
    host = PluginHost()
    host.load_entry_points()
    host.register(hl7_test_plugin, "test-hl7v2")
    return host


@pytest.fixture
def start(tryggbro_hub):
    started = []

    async def run(**settings: object):
        hub = tryggbro_hub(config(**settings))
        hub.intake.start()
        source = hub.sources["lab"]
        await source.start()
        started.append((hub, source))
        return hub, source.port

    yield run
    for hub, _source in started:
        hub.intake.stop()


@pytest.fixture
async def lab(start):
    hub, port = await start()
    yield hub, port
    await hub.sources["lab"].stop()


def msg(control: str = "MSG1", *, type_: str = "ADT^A01^ADT_A01", pid_name: str = "Nordmann^Kari",
        charset: str = "", processing: str = "P", version: str = "2.5", msh15: str = "",
        app: str = "EPJ", facility: str = "KOMMUNE") -> str:
    return (f"MSH|^~\\&|{app}|{facility}|TRYGGBRO|HUB|20260110081500||{type_}|{control}|"
            f"{processing}|{version}|||{msh15}||{'NOR' if charset else ''}|{charset}\r"
            f"EVN|A01|20260110081500\r"
            f"PID|1||01819012012^^^^FNR||{pid_name}||19900101|F")


def rows(hub) -> list[tuple[str, bytes, bytes | None]]:
    with hub.db.read_engine.connect() as conn:
        return [(r.dedup_key, bytes(r.body), bytes(r.answer) if r.answer is not None else None)
                for r in conn.execute(text(
                    "select dedup_key, body, answer from journal where source = 'lab' "
                    "order by id"))]


class Client:
    """A raw MLLP client on asyncio streams: exact bytes in, exact ACK bytes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(1 << 20)
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, ssl_context: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
        return cls(reader, writer)

    async def send(self, data: bytes, *, raw: bool = False) -> None:
        self.writer.write(data if raw else frame(data))
        await self.writer.drain()

    async def ack(self, timeout: float = 5) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.pending:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionResetError("closed")
                self.pending += self.frames.feed(chunk)
        return self.pending.pop(0)

    async def closed_by_peer(self, timeout: float = 5) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(65536) == b""

    async def exchange(self, data: bytes) -> bytes:
        await self.send(data)
        return await self.ack()

    async def close(self) -> None:
        self.writer.close()


def msa(ack: bytes) -> list[str]:
    seg = next(s for s in ack.decode("latin-1").split("\r") if s.startswith("MSA"))
    return seg.split("|")


def err(ack: bytes) -> list[str]:
    seg = next(s for s in ack.decode("latin-1").split("\r") if s.startswith("ERR"))
    return seg.split("|")


# ---------------------------------------------------------------------------------------


async def test_aa_only_after_the_commit_and_the_stored_ack_is_what_was_sent(lab):
    hub, port = lab
    client = await Client.connect(port)
    body = msg("C-1").encode()
    ack = await client.exchange(body)
    stored = rows(hub)  # looked at the moment the ACK is in hand
    assert msa(ack)[:3] == ["MSA", "AA", "C-1"]
    assert ack.startswith(b"MSH|^~\\&|TRYGGBRO|HUB|EPJ|KOMMUNE|")
    assert stored == [("EPJ|KOMMUNE|C-1", body, ack)]
    # Persistent connection: a second message on it is answered too, in order.
    ack2 = await client.exchange(msg("C-2").encode())
    assert msa(ack2)[:3] == ["MSA", "AA", "C-2"]
    assert [r[0] for r in rows(hub)] == ["EPJ|KOMMUNE|C-1", "EPJ|KOMMUNE|C-2"]
    await client.close()


async def test_resend_gets_the_stored_ack_byte_for_byte_and_creates_nothing(lab):
    hub, port = lab
    body = msg("R-1").encode()
    first = await (await Client.connect(port)).exchange(body)
    await asyncio.sleep(1.1)  # the ACK's MSH-7 would differ if it were built again
    again = await (await Client.connect(port)).exchange(body)
    assert again == first
    assert len(rows(hub)) == 1


async def test_a_different_message_reusing_a_control_id_is_journaled_as_new(lab):
    hub, port = lab
    client = await Client.connect(port)
    first = await client.exchange(msg("K-1").encode())
    other = msg("K-1", pid_name="Other^Person").encode()
    with structlog.testing.capture_logs() as logs:
        ack = await client.exchange(other)
    assert msa(ack)[1] == "AA"
    keys = [k for k, _, _ in rows(hub)]
    assert keys[0] == "EPJ|KOMMUNE|K-1"
    assert keys[1].startswith("EPJ|KOMMUNE|K-1#")
    anomaly = [e for e in logs if e["event"].startswith("anomaly")]
    assert anomaly
    assert "Other" not in str(anomaly)
    # Resends of either, byte for byte, get their own stored ACK and create nothing.
    assert await client.exchange(other) == ack
    assert await client.exchange(msg("K-1").encode()) == first
    assert len(rows(hub)) == 2


async def test_a_resend_rebuilt_with_a_new_msh7_is_the_same_message(lab):
    hub, port = lab
    client = await Client.connect(port)
    first = await client.exchange(msg("T-1").encode())
    rebuilt = msg("T-1").replace("|20260110081500||ADT", "|20260110091500||ADT").encode()
    assert await client.exchange(rebuilt) == first
    assert len(rows(hub)) == 1


async def test_control_id_reuse_can_be_refused_with_205(start):
    hub, port = await start(control_id_reuse="reject")
    client = await Client.connect(port)
    await client.exchange(msg("K-1").encode())
    with structlog.testing.capture_logs() as logs:
        ack = await client.exchange(msg("K-1", pid_name="Other^Person").encode())
    assert msa(ack)[1] == "AR"
    assert err(ack)[3].startswith("205^")
    assert "already used" in msa(ack)[3]
    assert len(rows(hub)) == 1
    assert [e for e in logs if e["event"].startswith("anomaly")]
    await hub.sources["lab"].stop()


@pytest.mark.parametrize(("charset", "codec", "name"), [
    ("8859/1", "iso-8859-1", "Ærlig^Øystein Åse"),
    ("8859/15", "iso-8859-15", "Ærlig^Øystein Åse €"),
    ("UNICODE UTF-8", "utf-8", "Ærlig^Øystein Åse"),
])
async def test_norwegian_letters_land_as_sent_in_each_charset(lab, charset, codec, name):
    hub, port = lab
    body = msg("N-" + codec, pid_name=name, charset=charset).encode(codec)
    ack = await (await Client.connect(port)).exchange(body)
    assert msa(ack)[1] == "AA"
    (_key, stored, _), = rows(hub)
    assert stored == body
    assert name in stored.decode(codec)
    assert f"|{charset}".encode() in ack  # the ACK states the same MSH-18


async def test_default_charset_applies_when_msh18_is_empty(start):
    hub, port = await start(default_charset="8859/1")
    body = msg("D-1", pid_name="Ærlig^Øystein").encode("iso-8859-1")
    ack = await (await Client.connect(port)).exchange(body)
    assert msa(ack)[1] == "AA"
    # The same bytes on a UTF-8 source are refused with the offset, not mangled.
    hub2, port2 = await start()
    ack2 = await (await Client.connect(port2)).exchange(body)
    assert msa(ack2)[:3] == ["MSA", "AR", "D-1"]
    assert "is not valid under the source's default utf-8" in msa(ack2)[3]
    assert len(rows(hub2)) == 1  # both hubs share the test's database: only D-1 above
    await hub.sources["lab"].stop()
    await hub2.sources["lab"].stop()


async def test_by_default_every_message_is_answered_whatever_msh15_says(lab):
    hub, port = lab
    client = await Client.connect(port)
    ne = await client.exchange(msg("N-1", msh15="NE").encode())
    assert msa(ne)[:3] == ["MSA", "CA", "N-1"]
    su = await client.exchange(msg("N-2", msh15="SU", type_="ORM^O01").encode())
    assert msa(su)[:3] == ["MSA", "CR", "N-2"]
    assert [r[0] for r in rows(hub)] == ["EPJ|KOMMUNE|N-1"]


async def test_enhanced_mode_codes_and_msh15(start):
    hub, port = await start(accept_acks="msh15")
    client = await Client.connect(port)
    ca = await client.exchange(msg("E-1", msh15="AL").encode())
    assert msa(ca)[:3] == ["MSA", "CA", "E-1"]
    cr = await client.exchange(msg("E-2", msh15="AL", type_="ORM^O01").encode())
    assert msa(cr)[1] == "CR"
    # NE: stored, but no accept ACK is sent; the next message is still answered.
    await client.send(msg("E-3", msh15="NE").encode())
    await client.send(msg("E-4", msh15="ER").encode())  # ER: only on error or reject
    await client.send(msg("E-5", msh15="SU").encode())  # SU: only on success
    su = await client.ack()
    assert msa(su)[:3] == ["MSA", "CA", "E-5"]  # the first ACK after CR is E-5's
    assert client.pending == []
    cr_er = await client.exchange(msg("E-6", msh15="ER", type_="ORM^O01").encode())
    assert msa(cr_er)[:3] == ["MSA", "CR", "E-6"]
    assert [r[0].rsplit("|", 1)[1] for r in rows(hub)] == ["E-1", "E-3", "E-4", "E-5"]
    await hub.sources["lab"].stop()


@pytest.mark.parametrize(("body", "code", "err_code", "words"), [
    (msg("M-1", type_="ORM^O01^ORM_O01"), "AR", "200",
     "message type ORM is not accepted here (accepted: ADT^A01, ADT^A02"),
    (msg("M-2", type_="ADT^A05^ADT_A05"), "AR", "201", "event ADT^A05 is not accepted"),
    (msg("M-3", processing="T"), "AR", "202", "processing id T is not accepted here "
     "(accepted: P)"),
    (msg("M-4", version="3.0"), "AR", "203", "MSH-12 version"),
    (msg("", type_="ADT^A01"), "AR", "101", "MSH-10 message control id is empty"),
    ("PID|1||x\rMSH|^~\\&|A", "AR", "100", "does not start with an MSH segment"),
    (msg("M-7", charset="UTF-16"), "AR", "103", "MSH-18 character set 'UTF-16' is not"),
])
async def test_malformed_input_gets_ar_with_the_reason_and_nothing_is_stored(
        lab, body, code, err_code, words):
    hub, port = lab
    client = await Client.connect(port)
    ack = await client.exchange(body.encode())
    assert msa(ack)[1] == code
    # MSA-3 holds the first 80 characters, ERR-8 the whole reason; both escaped (\S\ = ^).
    assert words in err(ack)[8].replace("\\S\\", "^")
    assert err(ack)[8].startswith(msa(ack)[3])
    assert err(ack)[3].split("^")[0] == err_code
    assert rows(hub) == []
    # The connection survives a refused message.
    assert msa(await client.exchange(msg("OK-1").encode()))[1] == "AA"


async def test_refusal_echoes_msh10_and_enhanced_mode(lab):
    _, port = lab
    ack = await (await Client.connect(port)).exchange(
        msg("X-1", type_="ORM^O01", msh15="AL").encode())
    assert msa(ack)[:3] == ["MSA", "CR", "X-1"]
    assert ack.split(b"\r")[0].split(b"|")[8] == b"ACK^O01^ACK"


@pytest.mark.parametrize(("data", "reason"), [
    (b"HELLO" + frame(msg("G-1").encode()), "byte 0x48 at stream offset 0"),
    (b"\x0bMSH|^~\\&|A\x1c\n", "followed by 0x0A, not 0x0D"),
    (b"\x0bMSH|\x0bMSH|", "inside an unfinished frame"),
])
async def test_broken_framing_closes_the_connection_after_a_log_line(lab, data, reason):
    hub, port = lab
    client = await Client.connect(port)
    with structlog.testing.capture_logs() as logs:
        await client.send(data, raw=True)
        assert await client.closed_by_peer()
    line = [e for e in logs if e["event"] == "mllp framing error; closing the connection"]
    assert line
    assert reason in line[0]["reason"]
    assert rows(hub) == []


async def test_oversize_frame_closes_the_connection(start):
    hub, port = await start(max_frame_bytes=2048)
    client = await Client.connect(port)
    with structlog.testing.capture_logs() as logs:
        await client.send(b"\x0b" + msg("BIG").encode() + b"\rNTE|1||" + b"x" * 4096, raw=True)
        assert await client.closed_by_peer()
    assert any("max_frame_bytes = 2048" in e.get("reason", "") for e in logs)
    assert rows(hub) == []
    await hub.sources["lab"].stop()


async def test_eof_mid_frame_is_logged_and_nothing_stored(lab):
    hub, port = lab
    client = await Client.connect(port)
    with structlog.testing.capture_logs() as logs:
        await client.send(b"\x0b" + msg("H-1").encode(), raw=True)
        client.writer.write_eof()
        assert await client.closed_by_peer()
    assert any("closed mid-frame" in e.get("reason", "") for e in logs)
    assert rows(hub) == []


async def test_idle_and_frame_timeouts_close_slow_clients(start):
    hub, port = await start(idle_timeout_seconds=0.3, frame_timeout_seconds=0.5)
    idle = await Client.connect(port)
    assert msa(await idle.exchange(msg("T-1").encode()))[1] == "AA"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await idle.closed_by_peer(timeout=3)
    assert 0.25 < loop.time() - t0 < 2
    slow = await Client.connect(port)
    with structlog.testing.capture_logs() as logs:
        t0 = loop.time()
        for chunk in (b"\x0bMSH|^~", b"\\&|A|B"):  # bytes keep coming, the frame never ends
            await slow.send(chunk, raw=True)
            await asyncio.sleep(0.2)
        assert await slow.closed_by_peer(timeout=3)
    assert 0.45 < loop.time() - t0 < 2
    assert any(e["event"].startswith("mllp frame not complete in time") for e in logs)
    await hub.sources["lab"].stop()


async def test_many_concurrent_connections(start):
    hub, port = await start(max_connections=64, max_connections_per_ip=64)

    async def sender(n: int) -> list[str]:
        client = await Client.connect(port)
        codes = [msa(await client.exchange(msg(f"P{n}-{i}").encode()))[1] for i in range(10)]
        await client.close()
        return codes

    results = await asyncio.gather(*(sender(n) for n in range(40)))
    assert all(codes == ["AA"] * 10 for codes in results)
    assert len(rows(hub)) == 400
    await hub.sources["lab"].stop()


async def test_frames_sent_back_to_back_are_answered_in_order_then_eof(lab):
    """A sender that writes many frames at once (more than the source reads ahead before
    it pauses reading) and then half-closes gets every ACK, in order, then the close."""
    hub, port = lab
    client = await Client.connect(port)
    controls = [f"B-{i}" for i in range(40)]
    await client.send(b"".join(frame(msg(c).encode()) for c in controls), raw=True)
    client.writer.write_eof()
    assert [msa(await client.ack())[2] for _ in controls] == controls
    assert await client.closed_by_peer()
    assert [r[0] for r in rows(hub)] == [f"EPJ|KOMMUNE|{c}" for c in controls]


async def test_connection_limits(start):
    hub, port = await start(max_connections=3, max_connections_per_ip=2)
    a, b = await Client.connect(port), await Client.connect(port)
    for c in (a, b):
        assert msa(await c.exchange(msg(f"L-{id(c)}").encode()))[1] == "AA"
    third = await Client.connect(port)
    assert await third.closed_by_peer()
    await a.close()
    await asyncio.sleep(0.2)
    fourth = await Client.connect(port)
    assert msa(await fourth.exchange(msg("L-4").encode()))[1] == "AA"
    await hub.sources["lab"].stop()


async def test_commit_failure_closes_without_an_ack(lab):
    hub, port = lab
    client = await Client.connect(port)
    hub.intake.stop()  # the writer is gone: submit cannot commit
    with structlog.testing.capture_logs() as logs:
        await client.send(msg("F-1").encode())
        assert await client.closed_by_peer()
    assert not client.pending
    assert any("without an ACK" in e["event"] for e in logs)
    hub.intake.start()
    assert msa(await (await Client.connect(port)).exchange(msg("F-1").encode()))[1] == "AA"


async def test_tls_with_trustme(start, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    hub, port = await start(tls_cert_file=str(tmp_path / "server.pem"),
                            tls_key_file=str(tmp_path / "server.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = await Client.connect(port, context)
    body = msg("S-1", pid_name="Ærlig^Øystein", charset="UNICODE UTF-8").encode()
    assert msa(await client.exchange(body))[1] == "AA"
    assert rows(hub)[0][1] == body
    # A plain-text sender gets no ACK and nothing is stored.
    plain = await Client.connect(port)
    await plain.send(msg("S-2").encode())
    with pytest.raises((ConnectionResetError, TimeoutError)):
        await plain.ack(timeout=2)
    assert len(rows(hub)) == 1
    await hub.sources["lab"].stop()


async def test_python_hl7_asyncio_client(lab):
    hub, port = lab
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port,
                                                        encoding="iso-8859-1")
    for i in range(3):
        writer.writemessage(hl7.parse(msg(f"PY-{i}", pid_name="Ærlig^Åse",
                                          charset="8859/1")))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 5)
        assert str(ack.segment("MSA")[1]) == "AA"
        assert str(ack.segment("MSA")[2]) == f"PY-{i}"
    writer.close()
    assert [r[1].decode("iso-8859-1").count("Ærlig^Åse") for r in rows(hub)] == [1, 1, 1]


async def test_mllp_send_cli_with_a_corpus_file(start, tmp_path):
    hub, port = await start(processing_ids=["P", "T"])
    source = CORPUS / "ADT-A01-01.hl7"
    lines = source.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    # mllp_send --loose reads one message per "MSH" line block.
    path = tmp_path / "adt.hl7"
    path.write_bytes(b"\r".join(line for line in lines if line))
    result = await asyncio.to_thread(
        subprocess.run, [str(VENV_BIN / "mllp_send"), "-p", str(port), "--loose", "-f",
                         str(path), "127.0.0.1"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"MSA|AA|MSG00001" in result.stdout
    assert rows(hub)[0][0] == "ADTApp|GHHSFacility^2.16.840.1.122848.1.30^ISO|MSG00001"
    await hub.sources["lab"].stop()


async def test_schema_validation_is_opt_in_and_answers_with_hl7apys_reason(start):
    hub, port = await start(validation="schema", processing_ids=["P", "T"],
                            message_types=["ORU^R01", "ADT^A01"])
    oru = CORPUS / "ORU-R01-01.hl7"
    body = oru.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip()
    client = await Client.connect(port)
    with structlog.testing.capture_logs() as logs:
        ack = await client.exchange(body)
    assert msa(ack)[1] == "CE"  # MSH-15 = AL: enhanced mode
    assert "Invalid name for Segment: PRT" in msa(ack)[3]
    assert err(ack)[3].startswith("100^")
    refused = next(e for e in logs if e["event"] == "hl7 message refused")
    assert refused["reason"] == "schema check failed (InvalidName); the reason is in the ACK"
    adt = (CORPUS / "ADT-A01-01.hl7").read_bytes().replace(b"\r\n", b"\r") \
        .replace(b"\n", b"\r").strip()
    assert msa(await client.exchange(adt))[1] == "AA"
    assert len(rows(hub)) == 1
    await hub.sources["lab"].stop()
    # Without validation the same ORU is stored and accepted.
    hub2, port2 = await start(processing_ids=["P", "T"])
    assert msa(await (await Client.connect(port2)).exchange(body))[1] == "CA"
    await hub2.sources["lab"].stop()


async def test_stop_closes_idle_connections_at_once(start):
    hub, port = await start()
    client = await Client.connect(port)
    assert msa(await client.exchange(msg("Z-1").encode()))[1] == "AA"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await hub.sources["lab"].stop()
    assert loop.time() - t0 < 2  # not the 5 s grace a message in flight would get
    assert await client.closed_by_peer()


async def test_mutual_tls_requires_a_client_certificate(start, tmp_path):
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    hub, port = await start(tls_cert_file=str(tmp_path / "server.pem"),
                            tls_key_file=str(tmp_path / "server.pem"),
                            tls_client_ca_file=str(tmp_path / "ca.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    anonymous = await Client.connect(port, context)  # TLS 1.3: refused after the handshake
    await anonymous.send(msg("U-1").encode())
    with pytest.raises((ConnectionResetError, ssl.SSLError, TimeoutError)):
        await anonymous.ack(timeout=3)
    ca.issue_cert("epj.kommune.no").configure_cert(context)
    client = await Client.connect(port, context)
    assert msa(await client.exchange(msg("U-2").encode()))[1] == "AA"
    assert [r[0] for r in rows(hub)] == ["EPJ|KOMMUNE|U-2"]
    await hub.sources["lab"].stop()


HL7V2_CONFIG = f"""
[hub]
mappings_dir = "{REPO / 'mappings'}"

[sources.lab]
type = "mllp"
adapter = "hl7v2"
host = "127.0.0.1"
port = 0
default_charset = "8859/1"
[sources.lab.options]
municipality = "0301"
organisation = "974778882"
legal_basis = "agreement"
legal_basis_ref = "SA-2024-017"

[destinations.ehr]
type = "folder"
path = "out"

[[routes]]
name = "hospital-to-ehr"
match = {{ categories = ["patient_administration", "laboratory"] }}
destinations = ["ehr"]
"""


async def test_with_the_hl7v2_adapter_a_message_decoded_by_the_sources_default_maps(
        tryggbro_hub):
    """The source's default_charset decided how the message was read (and ACKed); the
    adapter must read it the same way after the commit (transport `charset`)."""
    hub = tryggbro_hub(HL7V2_CONFIG)
    hub.intake.start()
    source = hub.sources["lab"]
    await source.start()
    try:
        body = (REPO / "fixtures/hl7v2/cases/15-refused-latin1-without-msh18/01.hl7"
                ).read_bytes()
        assert b"|8859/1" not in body.split(b"\r")[0]  # no MSH-18: the default applies
        ack = await (await Client.connect(source.port)).exchange(body)
        assert msa(ack)[:3] == ["MSA", "CA", "OUS-1500"]  # MSH-15 = AL
        await asyncio.to_thread(hub.processor().run_batch)
        (stored,) = hub.repo.search_messages(source="lab")
        trace = hub.repo.message_trace(stored["id"])
        assert trace is not None
        assert (trace["state"], trace["reason"]) == ("processed", None)
        assert [e["kind"] for e in trace["events"]] == ["adt.admit"]
    finally:
        await source.stop()
        hub.intake.stop()
