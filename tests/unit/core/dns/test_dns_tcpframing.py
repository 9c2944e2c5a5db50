"""DNS-over-TCP length framing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.core.dns.tcpframing import DnsTcpDecoder, encode_tcp_message


def test_pipelined_and_split() -> None:
    stream = encode_tcp_message(b"first") + encode_tcp_message(b"") + encode_tcp_message(b"x" * 300)
    dec = DnsTcpDecoder()
    assert dec.feed(stream[:1]) == []
    assert dec.buffered == 1
    assert dec.feed(stream[1:8]) == [b"first"]
    assert dec.feed(memoryview(stream)[8:20]) == [b""]
    assert dec.feed(stream[20:]) == [b"x" * 300]
    assert dec.buffered == 0


def test_length_prefix_and_limit() -> None:
    assert encode_tcp_message(b"abc") == b"\x00\x03abc"
    assert len(encode_tcp_message(b"a" * 65535)) == 65537
    with pytest.raises(ValueError):
        encode_tcp_message(b"a" * 65536)


@given(
    st.lists(st.binary(max_size=700), max_size=8),
    st.lists(st.integers(1, 200), max_size=60),
)
def test_any_chunking_gives_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_tcp_message(m) for m in messages)
    dec = DnsTcpDecoder()
    out: list[bytes] = []
    pos = 0
    for size in cuts:
        out += dec.feed(stream[pos : pos + size])
        pos += size
    out += dec.feed(stream[pos:])
    assert out == messages
    assert dec.buffered == 0
