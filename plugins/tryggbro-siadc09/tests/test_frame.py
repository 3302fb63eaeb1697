"""CRC and frame codec, checked against known vectors and against pysiaalarm."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysiaalarm.event import SIAEvent
from tryggbro_siadc09.content import parse_records
from tryggbro_siadc09.frame import (
    Answer,
    FrameError,
    Header,
    answer_frame,
    crc16_arc,
    parse_frame,
    wrap,
)

PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


def test_crc16_arc_known_vectors():
    assert crc16_arc(b"123456789") == 0xBB3D  # the catalogue check value of CRC-16/ARC
    assert crc16_arc(b"") == 0
    # A frame body and CRC as pysiaalarm computes them for a real SIA-DCS message
    body = b'"SIA-DCS"0002R0L0#1234[#1234|Nri1/MA01]_14:12:04,09-25-2026'
    assert f"{crc16_arc(body):04X}" == "6314" == SIAEvent._crc_calc(body.decode())


@given(PRINTABLE)
def test_crc_agrees_with_pysiaalarm(text):
    assert f"{crc16_arc(text.encode()):04X}" == SIAEvent._crc_calc(text)


@given(seq=st.integers(0, 9999), acct=st.text("0123456789ABCDEF", min_size=3, max_size=16),
       zone=st.integers(0, 999), when=st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1)))
def test_frames_round_trip_and_pysiaalarm_reads_them(seq, acct, zone, when):
    stamp = when.replace(microsecond=0, tzinfo=UTC)
    body = (f'"SIA-DCS"{seq:04d}R0L0#{acct}[#{acct}|Nri1/MA{zone:03d}]'
            f'_{stamp.strftime("%H:%M:%S,%m-%d-%Y")}')
    raw = wrap(body)
    frame = parse_frame(raw)
    assert (frame.account, frame.header.sequence, frame.timestamp) == (acct, f"{seq:04d}", stamp)
    (record,) = parse_records(frame)
    assert (record.code, record.zone, record.area) == ("MA", f"{zone:03d}", "1")
    peer = SIAEvent.from_line(raw[1:-1].decode())
    assert peer.valid_message
    assert (peer.code, peer.account) == ("MA", acct)


@given(st.data())
def test_any_damaged_byte_is_refused_with_nak(data):
    raw = wrap('"ADM-CID"0042R0L0#1234[#1234|1100 01 015]_21:14:03,11-20-2026')
    i = data.draw(st.integers(1, len(raw) - 2))
    flipped = data.draw(st.integers(1, 255))
    damaged = raw[:i] + bytes([raw[i] ^ flipped]) + raw[i + 1:]
    with pytest.raises(FrameError) as info:
        parse_frame(damaged)
    assert info.value.answer is Answer.NAK


def test_answers_are_valid_frames():
    now = datetime(2026, 11, 20, 21, 14, 3, tzinfo=UTC)
    header = Header("SIA-DCS", "0007", "12", "3", "ABC1")
    assert answer_frame(Answer.ACK, header, now) == wrap('"ACK"0007R12L3#ABC1[]')
    assert answer_frame(Answer.DUH, header, now) == wrap('"DUH"0007R12L3#ABC1[]')
    assert answer_frame(Answer.NAK, header, now) == \
        wrap('"NAK"0000R0L0A0[]_21:14:03,11-20-2026')
    for answer in Answer:
        raw = answer_frame(answer, header, now)
        body = raw[9:-1].decode()
        assert raw[1:5].decode() == SIAEvent._crc_calc(body)
        assert int(raw[5:9], 16) == len(body)


@pytest.mark.parametrize(("raw", "answer", "reason"), [
    (b"no frame at all\r", Answer.NAK, "not-a-frame"),
    (wrap('"SIA-DCS"0001R0L0#1234[#1234|Nri1/MA01')[:-1] + b"]\r", Answer.NAK, "bad-length"),
    (wrap('"*SIA-DCS"0001R0L0#1234[ABCDEF]'), Answer.DUH, "encrypted"),
    (wrap('"FOO"0001R0L0#1234[]'), Answer.DUH, "unsupported-token"),
    (wrap('"SIA-DCS"01R0L0#1234[]'), Answer.DUH, "bad-header"),
    (wrap('"SIA-DCS"0001R0L0#1234[#1234|Nri1/MA01'), Answer.DUH, "bad-data"),
    (wrap('"SIA-DCS"0001R0L0#1234[x]junk'), Answer.DUH, "bad-tail"),
    (wrap('"SIA-DCS"0001R0L0#1234[x]_25:00:00,13-40-2026'), Answer.DUH, "bad-timestamp"),
])
def test_frame_errors_say_what_the_sender_gets(raw, answer, reason):
    with pytest.raises(FrameError) as info:
        parse_frame(raw)
    assert (info.value.answer, info.value.reason) == (answer, reason)


def test_extended_data_blocks_are_kept():
    frame = parse_frame(wrap('"SIA-DCS"0001R0L0#1234[#1234|Nri1/MA01][Vroom][H12:00]'
                             '_21:14:03,11-20-2026'))
    assert frame.extended == ("Vroom", "H12:00")
    assert frame.data == "#1234|Nri1/MA01"
