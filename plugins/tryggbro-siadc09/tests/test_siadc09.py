"""The DC-09 receiver for real: TCP on 127.0.0.1, a real hub on SQLite, and frames built
with pysiaalarm's CRC (an implementation independent of this plugin)."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pysiaalarm import SIAAccount
from pysiaalarm.event import SIAEvent
from tryggbro_siadc09.adapter import SiaDc09Adapter

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import AlarmStatus, Category, StoredMessage
from hub.errors import ConfigError, InputError, MappingError
from hub.logging import configure_logging
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "sia-dc09"
TS_FORMAT = "_%H:%M:%S,%m-%d-%Y"


def peer_frame(body: str) -> bytes:
    """A DC-09 frame as a panel sends it; CRC from pysiaalarm, length in hex."""
    return b"\n" + f"{SIAEvent._crc_calc(body)}{len(body):04X}{body}\r".encode("ascii")


def now_stamp(offset_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).strftime(TS_FORMAT)


def sia(seq: str, acct: str = "1234", data: str = "Nri1/MA01", offset_s: float = 0) -> bytes:
    return peer_frame(f'"SIA-DCS"{seq}R0L0#{acct}[#{acct}|{data}]{now_stamp(offset_s)}')


def check_answer(raw: bytes) -> str:
    """An answer must itself be a valid frame: LF, CRC (pysiaalarm's), hex length, CR."""
    assert raw[:1] == b"\n"
    assert raw[-1:] == b"\r"
    crc, length, body = raw[1:5].decode(), raw[5:9].decode(), raw[9:-1].decode()
    assert crc == SIAEvent._crc_calc(body)
    assert int(length, 16) == len(body)
    return body


HUB_TOML = """
[sources.rx]
type = "sia-dc09"
adapter = "sia-dc09"
host = "127.0.0.1"
port = 0
max_frame_bytes = 512
idle_timeout_seconds = 5
max_connections = 4
accounts = ["1234", "5678"]

[destinations.out]
type = "folder"
path = "out"

[[routes]]
name = "all"
destinations = ["out"]
"""


@pytest.fixture
async def receiver(tryggbro_hub, tmp_path):
    hub = tryggbro_hub(HUB_TOML, mappings_dir=REPO / "mappings")
    hub.intake.start()
    source = hub.sources["rx"]
    await source.start()
    yield hub, source
    await source.stop()
    hub.intake.stop()


@pytest.fixture
def logs():
    """The hub's JSON log lines, read back as dicts."""
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


class Panel:
    """One persistent connection, like a panel's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Panel:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, raw: bytes, timeout: float = 5) -> str:
        self.writer.write(raw)
        await self.writer.drain()
        return await self.answer(timeout)

    async def answer(self, timeout: float = 5) -> str:
        return check_answer(await asyncio.wait_for(self.reader.readuntil(b"\r"), timeout))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def journal(tmp_path: Path) -> list[tuple[str, bytes]]:
    """What is on disk, read through a connection of its own (not the hub's)."""
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        return [(k, bytes(b)) for k, b in
                conn.execute("SELECT dedup_key, body FROM journal ORDER BY id")]


# --- TCP: answers and durability ---------------------------------------------------------

async def test_ack_only_after_the_commit(receiver, tmp_path):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    frame = sia("0001")
    lock = sqlite3.connect(tmp_path / "hub.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # hold the write lock: intake cannot commit
    try:
        panel.writer.write(frame)
        await panel.writer.drain()
        with pytest.raises(TimeoutError):
            await panel.answer(timeout=0.7)  # no answer while the commit is blocked
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    body = await panel.answer()
    assert body.startswith('"ACK"0001R0L0#1234[]')
    assert [b for _, b in journal(tmp_path)] == [frame]  # stored byte for byte
    await panel.close()


async def test_failing_intake_gets_nak_not_ack(receiver, tmp_path):
    hub, source = receiver
    panel = await Panel.connect(source.port)
    hub.intake.stop()  # the writer is gone: submit raises
    body = await panel.send(sia("0002"))
    assert body.startswith('"NAK"0000R0L0A0[]_')
    assert journal(tmp_path) == []
    hub.intake.start()
    assert (await panel.send(sia("0002"))).startswith('"ACK"0002')
    assert len(journal(tmp_path)) == 1
    await panel.close()


async def test_damaged_frames_get_nak_and_the_connection_keeps_working(receiver, tmp_path,
                                                                        logs):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    good = sia("0003")
    bad_crc = good[:1] + (b"0000" if good[1:5] != b"0000" else b"FFFF") + good[5:]
    bad_length = good[:5] + b"0010" + good[9:]
    for damaged in (bad_crc, bad_length, b"\nhello world\r", b"garbage without frame\r"):
        body = await panel.send(damaged)
        assert body.startswith('"NAK"0000R0L0A0[]_'), damaged
        stamp = datetime.strptime(body[-20:], TS_FORMAT).replace(tzinfo=UTC)
        assert abs((stamp - datetime.now(UTC)).total_seconds()) < 5  # the receiver's time
    assert (await panel.send(b"noise before the frame" + good)).startswith('"ACK"0003')
    assert [b for _, b in journal(tmp_path)] == [good]
    reasons = [(r.get("answer"), r.get("reason")) for r in logs()
               if r["event"] == "DC-09 frame not taken"]
    assert reasons == [("NAK", "bad-crc"), ("NAK", "bad-length"), ("NAK", "not-a-frame"),
                       ("NAK", "not-a-frame")]
    assert any(r["event"] == "DC-09 bytes before the frame start (LF) discarded"
               and r["bytes"] == 22 for r in logs())
    await panel.close()


@pytest.mark.parametrize("offset", [-60, 45])
async def test_timestamp_outside_the_window_gets_nak(receiver, tmp_path, offset):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    assert (await panel.send(sia("0004", offset_s=offset))).startswith('"NAK"0000R0L0A0[]')
    assert (await panel.send(sia("0004", offset_s=-30))).startswith('"ACK"0004')  # in window
    assert len(journal(tmp_path)) == 1
    await panel.close()


async def test_encrypted_unknown_and_unreadable_frames_get_duh(receiver, tmp_path):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    # A real encrypted frame, encrypted by pysiaalarm with an account key we do not hold.
    account = SIAAccount("1234", "AAAAAAAAAAAAAAAA")
    enc = SIAEvent(full_message="x", sia_account=account, account="1234", encrypted=True,
                   message_type="SIA-DCS", sequence="0005", receiver="R0", line="L0")
    secret = enc.encrypt_content(f"|Nri1/MA01]{now_stamp()}")
    answers = {
        "encrypted": await panel.send(peer_frame(f'"*SIA-DCS"0005R0L0#1234[{secret}')),
        "token": await panel.send(peer_frame(f'"SIA-XYZ"0006R0L0#1234[#1234|Nri1/MA01]'
                                             f'{now_stamp()}')),
        "account": await panel.send(sia("0007", acct="9999")),
        "data": await panel.send(sia("0008", data="N!!")),
        "cid": await panel.send(peer_frame(f'"ADM-CID"0009R0L0#1234[#1234|9100 1 1]'
                                           f'{now_stamp()}')),
        "no-timestamp": await panel.send(peer_frame('"SIA-DCS"0010R0L0#1234[#1234|Nri1/MA01]')),
    }
    assert answers["encrypted"] == '"DUH"0005R0L0#1234[]'
    assert answers["token"] == '"DUH"0006R0L0#1234[]'
    assert answers["account"] == '"DUH"0007R0L0#9999[]'
    assert answers["data"] == '"DUH"0008R0L0#1234[]'
    assert answers["cid"] == '"DUH"0009R0L0#1234[]'
    assert answers["no-timestamp"] == '"DUH"0010R0L0#1234[]'
    assert journal(tmp_path) == []
    await panel.close()


async def test_duplicate_is_acked_again_and_stored_once(receiver, tmp_path):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    frame = sia("0011")
    assert (await panel.send(frame)).startswith('"ACK"0011')
    assert (await panel.send(frame)).startswith('"ACK"0011')
    second = await Panel.connect(source.port)  # a resend on a new connection, too
    assert (await second.send(frame)).startswith('"ACK"0011')
    assert [b for _, b in journal(tmp_path)] == [frame]
    await panel.close()
    await second.close()


async def test_many_frames_on_one_persistent_connection(receiver, tmp_path):
    hub, source = receiver
    panel = await Panel.connect(source.port)
    stamp = now_stamp()
    frames = [
        peer_frame(f'"SIA-DCS"0021R0L0#1234[#1234|Nri1/MA01]{stamp}'),
        peer_frame(f'"ADM-CID"0022R0L0#5678[#5678|1101 01 002]{stamp}'),
        peer_frame(f'"NULL"0023R0L0#1234[]{stamp}'),
        peer_frame(f'"SIA-DCS"0024R0L0#1234[#1234|Nri0/RP0000]{stamp}'),
        peer_frame(f'"ADM-CID"0025R0L0#1234[#1234|1301 00 000]{stamp}'),
    ]
    panel.writer.write(b"".join(frames))  # pipelined: answered in order
    await panel.writer.drain()
    answers = [await panel.answer() for _ in frames]
    assert [a[:9] for a in answers] == [f'"ACK"002{i}' for i in range(1, 6)]
    assert [b for _, b in journal(tmp_path)] == frames
    # and they parse into the events they are
    hub.processor().run_batch()
    kinds = [(m["dedup_key"].split("/")[1], m["state"])
             for m in reversed(hub.repo.search_messages(source="rx"))]
    assert [k for k, _ in kinds] == ["0021", "0022", "0023", "0024", "0025"]
    assert all(state in ("processed", "unmatched") for _, state in kinds)
    await panel.close()


async def test_bare_null_link_test_is_acked_without_storing(receiver, tmp_path):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    assert await panel.send(peer_frame('"NULL"0000R0L0[]')) == '"ACK"0000R0L0A0[]'
    assert journal(tmp_path) == []
    await panel.close()


async def test_oversized_input_is_naked_and_closed(receiver, logs):
    _hub, source = receiver
    panel = await Panel.connect(source.port)
    panel.writer.write(b"\n" + b"A" * 2000)
    await panel.writer.drain()
    assert (await panel.answer()).startswith('"NAK"')
    assert await asyncio.wait_for(panel.reader.read(), 5) == b""  # closed by the receiver
    assert any(r["event"].startswith("DC-09 input longer than max_frame_bytes")
               and r["max_frame_bytes"] == 512 for r in logs())
    again = await Panel.connect(source.port)  # the receiver itself is fine
    assert (await again.send(sia("0031"))).startswith('"ACK"0031')
    await again.close()


async def test_idle_and_surplus_connections_are_closed(tryggbro_hub):
    hub = tryggbro_hub(HUB_TOML.replace("idle_timeout_seconds = 5", "idle_timeout_seconds = 0.3")
                       .replace("max_connections = 4", "max_connections = 1"),
                       mappings_dir=REPO / "mappings")
    hub.intake.start()
    source = hub.sources["rx"]
    await source.start()
    try:
        first = await Panel.connect(source.port)
        await asyncio.sleep(0.05)
        second = await Panel.connect(source.port)
        assert await asyncio.wait_for(second.reader.read(), 5) == b""  # over the limit
        assert await asyncio.wait_for(first.reader.read(), 5) == b""  # idle timeout
        third = await Panel.connect(source.port)  # a slot is free again
        assert (await third.send(sia("0041"))).startswith('"ACK"0041')
        await third.close()
    finally:
        await source.stop()
        hub.intake.stop()


# --- the adapter and the code table ---------------------------------------------------------

@pytest.fixture(scope="module")
def adapter():
    return SiaDc09Adapter(AdapterSetup("rx", {}, MappingStore.load(REPO / "mappings")))


def stored(raw: bytes) -> StoredMessage:
    return StoredMessage(1, "rx", "k", "application/x-sia-dc09", raw, datetime.now(UTC), {}, 1)


def events(adapter, body: str):
    return adapter.parse(stored(peer_frame(body + "_21:14:03,11-20-2026")))


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 14


def test_sia_medical_alarm_is_a_raised_safety_alarm(adapter):
    (e,) = events(adapter, '"SIA-DCS"0001R0L0#1234[#1234|Nri1/MA01]')
    assert e.category is Category.SAFETY_ALARM
    assert e.code == "3"
    assert e.alarm.status is AlarmStatus.RAISED
    assert e.device.id == "1234"
    assert e.occurred_at == datetime(2026, 11, 20, 21, 14, 3, tzinfo=UTC)
    assert e.business_key == "1234/01/medical/20261120T211403Z/0001"
    assert e.extra["zone"] == "01"
    assert e.extra["area"] == "1"


@pytest.mark.parametrize(("data", "kind", "category", "code"), [
    ("1100 01 001", "medical", Category.SAFETY_ALARM, "3"),
    ("1101 01 001", "emergency", Category.SAFETY_ALARM, "3"),
    ("1102 01 000", "inactivity", Category.SAFETY_ALARM, "3"),
    ("1120 01 003", "panic", Category.SAFETY_ALARM, "3"),
    ("6120 01 003", "panic", Category.SAFETY_ALARM, "3"),
    ("3100 01 001", "alarm_restored", Category.DEVICE_HEALTH, None),
    ("1602 00 000", "test", Category.DEVICE_HEALTH, None),
    ("1301 00 000", "power_lost", Category.DEVICE_HEALTH, None),
    ("3301 00 000", "power_restored", Category.DEVICE_HEALTH, None),
    ("1302 00 000", "battery_low", Category.DEVICE_HEALTH, None),
    ("1110 01 004", "fire", Category.SUPERVISION, "4.11"),
])
def test_contact_id_codes(adapter, data, kind, category, code):
    (e,) = events(adapter, f'"ADM-CID"0002R0L0#5678[#5678|{data}]')
    assert (e.kind, e.category, e.code) == (kind, category, code)


@pytest.mark.parametrize(("data", "kinds"), [
    ("Nri1/MH01", [("alarm_restored", Category.DEVICE_HEALTH)]),
    ("Nri1/QR01", [("alarm_restored", Category.DEVICE_HEALTH)]),
    ("Nri0/RP0000", [("test", Category.DEVICE_HEALTH)]),
    ("Nri0/AT0000", [("power_lost", Category.DEVICE_HEALTH)]),
    ("Nri0/AR0000", [("power_restored", Category.DEVICE_HEALTH)]),
    ("Nri0/YT0000", [("battery_low", Category.DEVICE_HEALTH)]),
    ("Nri0/XT0003", [("battery_low", Category.DEVICE_HEALTH)]),
    ("Nri1/WA05", [("water", Category.SUPERVISION)]),
    ("Nri1PA02", [("panic", Category.SAFETY_ALARM)]),  # no slash after the modifier
    ("Nri1/MA01/ri2/PA03", [("medical", Category.SAFETY_ALARM),
                            ("panic", Category.SAFETY_ALARM)]),
])
def test_sia_codes(adapter, data, kinds):
    got = events(adapter, f'"SIA-DCS"0003R0L0#1234[#1234|{data}]')
    assert [(e.kind, e.category) for e in got] == kinds
    assert len({e.business_key for e in got}) == len(got)


def test_null_is_a_heartbeat(adapter):
    (e,) = events(adapter, '"NULL"0004R0L0#1234[]')
    assert (e.kind, e.category, e.code) == ("heartbeat", Category.DEVICE_HEALTH, None)


def test_unknown_codes_hold_the_message_naming_the_table(adapter):
    with pytest.raises(MappingError, match=r"\[sia_codes\] has no mapping for 'BA'"):
        events(adapter, '"SIA-DCS"0005R0L0#1234[#1234|Nri1/BA05]')
    with pytest.raises(MappingError, match=r"\[cid_codes\] has no mapping for '130'"):
        events(adapter, '"ADM-CID"0005R0L0#1234[#1234|1130 01 005]')


def test_intake_key_and_its_errors(adapter):
    raw = peer_frame('"SIA-DCS"0006R0L0#1234[#1234|Nri1/MA01]_21:14:03,11-20-2026')
    assert adapter.intake_key(IntakeRequest("rx", "", raw, {})) == "1234/0006/20261120T211403Z"
    for bad, slug in [
        (raw[:1] + b"0000" + raw[5:], "dc09-bad-crc"),
        (peer_frame('"SIA-DCS"0006R0L0#1234[#1234|Nri1/MA01]'), "dc09-no-timestamp"),
        (peer_frame('"SIA-DCS"0006R0L0#1234[#9999|Nri1/MA01]_21:14:03,11-20-2026'),
         "dc09-account-mismatch"),
        (peer_frame('"SIA-DCS"0006R0L0[#1234|Nri1/MA01]_21:14:03,11-20-2026'), "dc09-no-account"),
    ]:
        with pytest.raises(InputError) as info:
            adapter.intake_key(IntakeRequest("rx", "", bad, {}))
        assert info.value.slug == slug


def test_code_table_is_checked_at_start_up(tmp_path):
    (tmp_path / "codesystems").mkdir()
    for cs in (REPO / "mappings" / "codesystems").glob("*.toml"):
        (tmp_path / "codesystems" / cs.name).write_text(cs.read_text())
    text = (REPO / "mappings" / "sia-dc09.toml").read_text()
    (tmp_path / "sia-dc09.toml").write_text(text.replace('"power:restore" = "power_restored"\n',
                                                         ""))
    with pytest.raises(ConfigError, match=r"device-health 'power:restore' has no "
                                          r"\[health_kinds\] entry"):
        SiaDc09Adapter(AdapterSetup("rx", {}, MappingStore.load(tmp_path)))
    (tmp_path / "sia-dc09.toml").write_text(text.replace('fire = "4.11"', ""))
    with pytest.raises(ConfigError, match=r"alarm family 'fire' has no \[alert_codes\] entry"):
        SiaDc09Adapter(AdapterSetup("rx", {}, MappingStore.load(tmp_path)))


def test_readme_documents_every_setting():
    from tryggbro_siadc09.source import SiaDc09Settings

    text = (REPO / "plugins" / "tryggbro-siadc09" / "README.md").read_text()
    assert [n for n in SiaDc09Settings.model_fields if f"`{n}`" not in text] == []
