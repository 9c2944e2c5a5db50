"""The ClientHello SNI parser: real hellos, built ones split across records, and noise."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.tls import ClientHello, parse_client_hello


def real_hello(server_name: str | None) -> bytes:
    """The first flight of Python's own TLS client."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def sni(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return extension(0, struct.pack("!H", len(entry)) + entry)


def hello_body(extensions: list[bytes], session: bytes = b"", suites: int = 2) -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session)]) + session
    body += struct.pack("!H", 2 * suites) + b"\x13\x01" * suites + b"\x01\x00"
    exts = b"".join(extensions)
    return body + struct.pack("!H", len(exts)) + exts


def records(body: bytes, sizes: list[int]) -> bytes:
    """The handshake message split into records of these sizes (the last takes the rest)."""
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    out, pos = b"", 0
    for size in [*sizes, len(handshake)]:
        part = handshake[pos : pos + size]
        if part:
            out += b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
        pos += len(part)
    return out


names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
noise = st.lists(st.tuples(st.integers(1, 0xFFFE), st.binary(max_size=40)), max_size=4)


@pytest.mark.parametrize("name", ["www.example.test", None])
def test_real_client_hello(name: str | None) -> None:
    data = real_hello(name)
    assert parse_client_hello(data) == ClientHello(name)
    for cut in (0, 1, 5, len(data) // 2, len(data) - 1):
        assert parse_client_hello(data[:cut]) is None


@given(names, noise, st.lists(st.integers(1, 300), max_size=5), st.binary(max_size=64))
def test_built_hellos_in_any_records(
    name: str, others: list[tuple[int, bytes]], sizes: list[int], after: bytes
) -> None:
    exts = [extension(k, d) for k, d in others] + [sni(name.encode())]
    data = records(hello_body(exts), sizes)
    assert parse_client_hello(data + after) == ClientHello(name)
    for cut in range(0, len(data), max(1, len(data) // 17)):
        assert parse_client_hello(data[:cut]) is None


def test_no_extensions_or_no_sni() -> None:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    assert parse_client_hello(records(body, [])) == ClientHello(None)
    assert parse_client_hello(records(hello_body([extension(10, b"\x00\x00")]), [])) \
        == ClientHello(None)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x02\x00\x00\x05hello",  # not TLS 1.x
        b"\x17\x03\x03\x00\x05hello",  # application data
        records(hello_body([sni(b"evil.test\r\nX: y")]), []),
        records(hello_body([sni(b"a..b")]), []),
        records(hello_body([sni(b"\xff\xfe")]), []),
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # 16 MB ClientHello
        records(hello_body([]).replace(b"\x01\x00\x00\x00", b"\x01\x00\x00\x09"), []),
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_client_hello(data)


@given(st.binary(max_size=300))
def test_noise_raises_only_parse_error(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except ParseError:
        return
    assert result is None or isinstance(result, ClientHello)


@given(st.binary(max_size=300))
def test_noise_after_a_record_header(data: bytes) -> None:
    framed = b"\x16\x03\x01" + struct.pack("!H", len(data)) + data
    try:
        result = parse_client_hello(framed)
    except ParseError:
        return
    assert result is None or isinstance(result, ClientHello)
