"""Length-prefixed stream framing: qemu (u32 BE) and vpnkit/stdio (u16 LE)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.wire.framing import (
    DEFAULT_U32_MAX,
    MIN_FRAME_LEN,
    QEMU,
    U16LE,
    Framing,
    FramingError,
)

FRAMINGS = [QEMU, U16LE]
frames_st = st.lists(st.binary(min_size=14, max_size=300), max_size=12)


def chop(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def test_header_layouts() -> None:
    frame = bytes(range(20))
    assert QEMU.encode(frame) == b"\x00\x00\x00\x14" + frame
    assert U16LE.encode(frame) == b"\x14\x00" + frame
    assert QEMU.encode_many([frame, frame[:14]]) == (
        b"\x00\x00\x00\x14" + frame + b"\x00\x00\x00\x0e" + frame[:14]
    )


@pytest.mark.parametrize("framing", FRAMINGS, ids=lambda f: f.name)
@given(frames=frames_st, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_any_chunking_gives_back_the_frames(
    framing: Framing, frames: list[bytes], cuts: list[int]
) -> None:
    stream = framing.encode_many(frames)
    dec = framing.decoder()
    out: list[bytes] = []
    for chunk in chop(stream, cuts):
        got = dec.feed(chunk)
        assert all(type(f) is bytes for f in got)
        out += got
    assert out == frames
    assert dec.pending == 0


@pytest.mark.parametrize("framing", FRAMINGS, ids=lambda f: f.name)
def test_partial_frame_is_held_back(framing: Framing) -> None:
    stream = framing.encode(b"A" * 40)
    dec = framing.decoder()
    assert dec.feed(stream[:1]) == []  # not even a whole header
    assert dec.feed(stream[1:30]) == []
    assert dec.pending == 30
    assert dec.feed(bytearray(stream[30:])) == [b"A" * 40]
    assert dec.feed(memoryview(stream)) == [b"A" * 40]


@pytest.mark.parametrize("framing", FRAMINGS, ids=lambda f: f.name)
@pytest.mark.parametrize("runt", [0, 1, MIN_FRAME_LEN - 1])
def test_runt_frame_keeps_the_stream(framing: Framing, runt: int) -> None:
    """A short length still delimits its bytes: the runt goes on (to be dropped), the stream too."""
    good = framing.encode(b"G" * 20)
    dec = framing.decoder()
    runt_frame = framing.header.pack(runt) + b"x" * runt
    assert dec.feed(good + runt_frame + good) == [b"G" * 20, b"x" * runt, b"G" * 20]
    assert dec.feed(runt_frame[:1]) == []  # split inside the header
    assert dec.feed(runt_frame[1:] + good) == [b"x" * runt, b"G" * 20]
    assert not dec.failed


def test_too_long_length_is_rejected() -> None:
    dec = QEMU.decoder(max_frame=1514)
    assert dec.feed(QEMU.encode(b"x" * 1514)) == [b"x" * 1514]
    with pytest.raises(FramingError) as info:
        dec.feed(b"\x00\x00\x05\xeb")  # 1515, rejected from the header alone
    assert info.value.length == 1515
    # Garbage such as an HTTP request is caught straight away.
    with pytest.raises(FramingError):
        QEMU.decoder().feed(b"GET / HTTP/1.1\r\n")


def test_u16_limit_is_the_format_limit() -> None:
    dec = U16LE.decoder()
    big = b"y" * 0xFFFF
    assert dec.feed(U16LE.encode(big)) == [big]
    with pytest.raises(ValueError):
        U16LE.encode(b"z" * 0x10000)
    with pytest.raises(ValueError):
        U16LE.encode_many([b"z" * 20, b"z" * 0x10000])


def test_max_frame_for_mtu() -> None:
    assert QEMU.max_frame(1500) == DEFAULT_U32_MAX
    assert QEMU.max_frame(200_000) == 200_014
    assert U16LE.max_frame(1500) == 0xFFFF
    assert U16LE.max_frame(65520) == 0xFFFF
    with pytest.raises(ValueError):
        QEMU.decoder(max_frame=10)


def test_many_frames_in_one_chunk_and_a_tail() -> None:
    frames = [bytes([i]) * (14 + i) for i in range(50)]
    stream = QEMU.encode_many(frames)
    dec = QEMU.decoder()
    assert dec.feed(stream + stream[:7]) == frames
    assert dec.pending == 7
    assert dec.feed(stream[7:]) == frames
