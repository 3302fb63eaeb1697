"""MLLP framing, byte by byte: every split point, garbage, oversize, EOF mid-frame."""

from __future__ import annotations

import pytest

from hub.hl7v2.framing import FrameReader, FramingError, frame

MSG1 = "MSH|^~\\&|A|B|C|D|20260110||ADT^A01|1|P|2.5\rPID|||x^^^^FNR||Ærlig^Øystein".encode(
    "iso-8859-1")
MSG2 = b"MSH|^~\\&|A|B|C|D|20260110||ADT^A08|2|P|2.5"
STREAM = frame(MSG1) + b"\r\n" + frame(MSG2) + frame(b"")


def test_frames_split_at_every_pair_of_byte_boundaries_come_out_whole():
    for i in range(len(STREAM) + 1):
        for j in range(i, len(STREAM) + 1):
            reader = FrameReader(1024)
            got = reader.feed(STREAM[:i]) + reader.feed(STREAM[i:j]) + reader.feed(STREAM[j:])
            assert got == [MSG1, MSG2, b""], (i, j)
            assert reader.eof_error() is None
            assert not reader.mid_frame


def test_one_byte_at_a_time():
    reader = FrameReader(1024)
    got = []
    for k in range(len(STREAM)):
        got += reader.feed(STREAM[k:k + 1])
    assert got == [MSG1, MSG2, b""]


def test_garbage_before_the_start_block_is_a_framing_error():
    reader = FrameReader(1024)
    with pytest.raises(FramingError, match=r"byte 0x4D at stream offset 0 .*\(0x0B\)"):
        reader.feed(MSG2 + b"\x1c\r")


def test_garbage_between_frames_names_its_offset():
    reader = FrameReader(1024)
    data = frame(MSG2) + b"xx"
    with pytest.raises(FramingError, match=f"offset {len(frame(MSG2))} "):
        reader.feed(data)


def test_oversize_frame_is_refused_before_its_end_arrives():
    reader = FrameReader(16)
    reader.feed(b"\x0b" + b"x" * 16)  # exactly at the cap: still fine
    with pytest.raises(FramingError, match="max_frame_bytes = 16"):
        reader.feed(b"y")


def test_frame_at_the_cap_is_accepted():
    reader = FrameReader(16)
    assert reader.feed(frame(b"z" * 16)) == [b"z" * 16]
    with pytest.raises(FramingError, match="max_frame_bytes"):
        FrameReader(16).feed(frame(b"z" * 17))


def test_eof_mid_frame_is_reported_and_eof_between_frames_is_not():
    reader = FrameReader(1024)
    assert reader.feed(frame(MSG2) + b"\x0bMSH|") == [MSG2]
    assert reader.mid_frame
    error = reader.eof_error()
    assert error is not None
    assert "mid-frame after 4 bytes" in str(error)


def test_start_block_inside_a_frame_and_end_block_without_cr():
    with pytest.raises(FramingError, match="inside an unfinished frame"):
        FrameReader(1024).feed(b"\x0bMSH|\x0bMSH|\x1c\r")
    reader = FrameReader(1024)
    assert reader.feed(b"\x0bMSH|\x1c") == []
    with pytest.raises(FramingError, match="followed by 0x0A, not 0x0D"):
        reader.feed(b"\n")
