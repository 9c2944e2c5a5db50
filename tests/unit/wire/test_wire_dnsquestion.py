"""The DNS question codec agrees with dnspython on what it accepts, and only
ever raises ParseError on anything else."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.wire.dnsquestion import parse_query, parse_reply_question
from pyvpnkit.wire.errors import ParseError

labels = st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b not in (b".",)), max_size=5)


@given(
    labels,
    st.sampled_from(["A", "AAAA", "MX", "TXT", "SRV", "PTR"]),
    st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
)
def test_query_matches_dnspython(
    names: list[bytes], rdtype: str, qid: int, payload: int | None
) -> None:
    name = dns.name.Name([*names, b""])
    msg = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 0)
    msg.id = qid
    wire = msg.to_wire()
    q = parse_query(wire)
    assert (q.id, q.flags) == (qid, msg.flags)
    assert q.labels == tuple(names)
    assert q.key == name.to_wire().lower()
    assert (q.qtype, q.qclass) == (dns.rdatatype.from_text(rdtype), 1)
    assert q.edns_payload == (None if payload is None else max(payload, 0))
    reply = dns.message.make_response(msg).to_wire()
    assert parse_reply_question(reply) == (qid, reply[2] << 8 | reply[3], (q.key, q.qtype, 1))


def test_case_insensitive_key() -> None:
    upper = parse_query(dns.message.make_query("ExAmPlE.COM", "A").to_wire())
    lower = parse_query(dns.message.make_query("example.com", "A").to_wire())
    assert upper.key == lower.key and upper.labels == (b"ExAmPlE", b"COM")


def test_reply_without_question() -> None:
    wire = bytes.fromhex("1234 8181 0000 0000 0000 0000".replace(" ", ""))
    assert parse_reply_question(wire) == (0x1234, 0x8181, None)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00" * 11,  # short header
        bytes.fromhex("0001 0100 0002 0000 0000 0000") + b"\x00\x00\x01\x00\x01" * 2,  # 2 questions
        bytes.fromhex("0001 0100 0001 0000 0000 0000") + b"\xc0\x0c\x00\x01\x00\x01",  # pointer
        bytes.fromhex("0001 0100 0001 0000 0000 0000") + b"\x03ab",  # name past the end
        bytes.fromhex("0001 0100 0001 0000 0000 0000") + b"\x00\x00\x01",  # truncated type
        bytes.fromhex("0001 0100 0001 0000 0000 0000") + b"\x00\x00\x01\x00\x01x",  # trailing
        bytes.fromhex("0001 0100 0001 0001 0000 0000") + b"\x00\x00\x01\x00\x01",  # an answer
    ],
)
def test_refuses_what_the_fast_path_cannot_take(wire: bytes) -> None:
    with pytest.raises(ParseError):
        parse_query(wire)


@given(st.binary(max_size=80))
def test_garbage_only_parse_error(data: bytes) -> None:
    for parse in (parse_query, parse_reply_question):
        try:
            parse(data)
        except ParseError:
            pass


@given(labels, st.integers(0, 200), st.integers(0, 255))
def test_mutated_query_only_parse_error(names: list[bytes], at: int, value: int) -> None:
    wire = bytearray(dns.message.make_query(dns.name.Name([*names, b""]), "A").to_wire())
    wire[at % len(wire)] = value
    try:
        q = parse_query(bytes(wire))
    except ParseError:
        return
    assert q.key == b"".join(bytes((len(x),)) + x for x in q.labels).lower() + b"\x00"


def test_dnssec_ok_bit_and_name_spelling() -> None:
    plain = parse_query(dns.message.make_query("Www.Example", "A", use_edns=0).to_wire())
    signed = parse_query(dns.message.make_query("www.example", "A", want_dnssec=True).to_wire())
    assert (plain.dnssec_ok, signed.dnssec_ok) == (False, True)
    assert plain.name == b"\x03Www\x07Example\x00" and plain.key == signed.name
