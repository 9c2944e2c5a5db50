"""IPv4 fragmentation and reassembly: exact bytes, bounds, timeouts, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.ip.ipfrag import MAX_DATAGRAM, Reassembler, fragment_ipv4
from pyvpnkit.wire.checksum import internet_checksum, verify
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.icmp import TIME_EXCEEDED, parse_icmp
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_UDP, build_ipv4, ipv4_header, parse_ipv4
from pyvpnkit.wire.udp import build_udp, parse_udp

VM = bytes([192, 168, 65, 3])
REMOTE = bytes([10, 1, 2, 3])


def udp_packet(size: int, ident: int = 7, src: bytes = VM, dst: bytes = REMOTE) -> bytes:
    payload = bytes(i * 7 % 251 for i in range(size))
    udp = build_udp(src, dst, 4000, 53, payload)
    return build_ipv4(src, dst, PROTO_UDP, udp, ident=ident, dont_fragment=False, ttl=33)


def frag(payload: bytes, offset: int, more: bool, ident: int = 9, proto: int = PROTO_UDP) -> bytes:
    """A raw fragment with arbitrary payload bytes."""
    hdr = ipv4_header(
        VM,
        REMOTE,
        proto,
        len(payload),
        ident=ident,
        dont_fragment=False,
        more_fragments=more,
        frag_offset=offset,
    )
    return hdr + payload


def feed(r: Reassembler, packets: list[bytes], now: float = 0.0) -> list[bytes]:
    out = []
    for p in packets:
        whole = r.add(parse_ipv4(p), now)
        if whole is not None:
            out.append(whole)
    return out


def test_fragment_for_mtu_and_reassemble_to_same_bytes() -> None:
    packet = udp_packet(4000)
    parts = fragment_ipv4(packet, 1500)
    assert len(parts) == 3
    assert all(len(p) <= 1500 for p in parts)
    offsets = []
    for p in parts:
        ip = parse_ipv4(p)  # checks every header checksum
        offsets.append(ip.frag_offset)
        assert ip.ident == 7 and ip.ttl == 33
    assert offsets == [0, 1480, 2960]
    assert [parse_ipv4(p).more_fragments for p in parts] == [True, True, False]
    r = Reassembler()
    assert feed(r, parts[::-1]) == [packet]
    assert len(r) == 0 and r.bytes_used == 0
    whole = parse_ipv4(packet)
    dgram = parse_udp(whole.payload, whole.src, whole.dst)
    assert len(dgram.payload) == 4000


def test_fragment_leaves_small_and_df_packets_alone() -> None:
    small = udp_packet(100)
    assert fragment_ipv4(small, 1500) == [small]
    df = build_ipv4(VM, REMOTE, PROTO_UDP, b"x" * 3000, dont_fragment=True)
    assert fragment_ipv4(df, 1500) == [df]


def test_fragment_copies_only_copied_options() -> None:
    # Options: a "copied" one (0x94 router alert, length 4) and a non-copied
    # timestamp-like one (0x44, length 4), then padding to 28 bytes.
    options = bytes([0x94, 4, 0, 0, 0x07, 4, 0, 0])
    hdr = bytearray(ipv4_header(VM, REMOTE, PROTO_UDP, 3000, dont_fragment=False) + options)
    hdr[0] = 0x40 | len(hdr) // 4
    struct.pack_into("!HH", hdr, 2, len(hdr) + 3000, 0)
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    packet = bytes(hdr) + bytes(range(256)) * 11 + bytes(184)
    parts = fragment_ipv4(packet, 1000)
    first, *rest = (parse_ipv4(p) for p in parts)
    assert first.header.tobytes()[20:] == options
    for p in rest:
        assert p.header.tobytes()[20:] == bytes([0x94, 4, 0, 0])
    r = Reassembler()
    assert feed(r, parts) == [packet]


def test_reassembly_timeout_sends_time_exceeded_when_first_fragment_seen() -> None:
    parts = fragment_ipv4(udp_packet(3000), 1500)
    r = Reassembler(timeout=30.0)
    assert feed(r, parts[:2], now=100.0) == []
    assert r.next_deadline() == 130.0
    r.handle_timer(129.9)
    assert len(r) == 1
    r.handle_timer(130.0)
    assert len(r) == 0 and r.next_deadline() is None and r.bytes_used == 0
    packets, effects = r.drain()
    assert effects == []
    (err,) = packets
    ip = parse_ipv4(err)
    assert ip.src == REMOTE and ip.dst == VM and ip.proto == PROTO_ICMP
    msg = parse_icmp(ip.payload)
    assert (msg.type, msg.code) == (TIME_EXCEEDED, 1)
    assert msg.payload.tobytes() == parts[0][:28]
    # The late fragment starts a new datagram, which never completes.
    assert feed(r, parts[2:], now=131.0) == []


def test_timeout_without_first_fragment_is_silent() -> None:
    parts = fragment_ipv4(udp_packet(3000), 1500)
    r = Reassembler()
    feed(r, parts[1:], now=0.0)
    r.handle_timer(31.0)
    assert r.drain() == ([], [])


def test_duplicates_are_ignored() -> None:
    packet = udp_packet(3000)
    parts = fragment_ipv4(packet, 1500)
    r = Reassembler()
    assert feed(r, [parts[0], parts[0], parts[1], parts[1], parts[2]]) == [packet]
    assert r.stats["frag_duplicate"] == 2


def test_overlap_discards_the_datagram_until_timeout() -> None:
    r = Reassembler()
    assert feed(r, [frag(b"A" * 16, 0, True)]) == []
    # Overlaps [8, 24): would rewrite bytes already received.
    assert feed(r, [frag(b"B" * 16, 8, True)]) == []
    assert r.stats["frag_overlap"] == 1
    # Even a fragment completing the original layout is refused now.
    assert feed(r, [frag(b"C" * 8, 16, False)]) == []
    assert len(r) == 1
    r.handle_timer(30.0)
    assert len(r) == 0 and r.drain() == ([], [])
    # After the timeout the key is usable again.
    assert feed(r, [frag(b"A" * 16, 0, True), frag(b"C" * 8, 16, False)], now=31.0)


def test_conflicting_last_fragments_discard() -> None:
    r = Reassembler()
    feed(r, [frag(b"x" * 8, 16, False), frag(b"y" * 8, 32, False)])
    assert r.stats["frag_overlap"] == 1
    r2 = Reassembler()
    feed(r2, [frag(b"x" * 8, 16, False), frag(b"y" * 8, 24, True)])  # beyond the end
    assert r2.stats["frag_overlap"] == 1


def test_invalid_fragments_dropped() -> None:
    r = Reassembler()
    assert feed(r, [frag(b"x" * 12, 0, True)]) == []  # not a multiple of 8
    assert feed(r, [frag(b"x" * 16, (MAX_DATAGRAM - 20) // 8 * 8, False)]) == []  # too big
    assert r.stats["frag_invalid"] == 1 and r.stats["frag_too_big"] == 1
    assert len(r) == 0


def test_total_bytes_bounded_oldest_evicted() -> None:
    r = Reassembler(max_bytes=10_000)
    for ident in range(10):
        feed(r, [frag(bytes(1480), 0, True, ident=ident)], now=float(ident))
        assert r.bytes_used <= 10_000
    assert r.stats["frag_evicted"] > 0
    # The newest datagrams survived, the oldest went first.
    assert r.next_deadline() == 35.0  # idents 5..9 remain
    assert len(r) == 5
    done = feed(r, [frag(bytes(8), 1480, False, ident=9)], now=10.0)
    assert len(done) == 1 and len(done[0]) == 20 + 1488


def test_fragment_bigger_than_budget_dropped() -> None:
    r = Reassembler(max_bytes=1000)
    assert feed(r, [frag(bytes(1480), 0, True)]) == []
    assert len(r) == 0 and r.bytes_used == 0


def test_reassembles_max_size_datagram() -> None:
    packet = udp_packet(65507)
    assert len(packet) == MAX_DATAGRAM
    parts = fragment_ipv4(packet, 1500)
    r = Reassembler()
    assert feed(r, parts) == [packet]


def test_reassembled_header_is_valid() -> None:
    packet = udp_packet(3000)
    whole = feed(Reassembler(), fragment_ipv4(packet, 576))[0]
    assert verify(whole[:20])
    ip = parse_ipv4(whole)
    assert not ip.is_fragment and not ip.dont_fragment


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=9000),
    mtu=st.integers(min_value=68, max_value=3000),
    data=st.data(),
)
def test_random_fragmentations_reassemble_exactly(size: int, mtu: int, data: st.DataObject) -> None:
    packet = udp_packet(size)
    parts = fragment_ipv4(packet, mtu)
    assert all(len(p) <= mtu for p in parts) or parts == [packet]
    # Re-fragment some pieces further (fragments of fragments), add
    # duplicates, and shuffle.
    pieces: list[bytes] = []
    for p in parts:
        sub = data.draw(st.integers(min_value=68, max_value=3000))
        pieces.extend(fragment_ipv4(p, sub))
    dupes = data.draw(st.lists(st.sampled_from(pieces), max_size=5))
    order = data.draw(st.permutations(pieces + dupes))
    r = Reassembler()
    out = feed(r, list(order))
    if len(pieces) == 1:
        assert out == [packet] * (1 + len(dupes))  # whole packets pass straight through
        return
    # Duplicates arriving after completion start a new datagram (as in Linux),
    # which may complete again with the same bytes or time out.
    assert out and all(o == packet for o in out)
    if not dupes:
        assert len(out) == 1 and len(r) == 0 and r.bytes_used == 0
    r.handle_timer(30.0)
    assert len(r) == 0 and r.bytes_used == 0


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=8191),
            st.booleans(),
            st.binary(min_size=0, max_size=64),
            st.integers(min_value=0, max_value=3),
        ),
        max_size=40,
    )
)
def test_garbage_fragments_never_raise(frags: list[tuple[int, bool, bytes, int]]) -> None:
    r = Reassembler(max_bytes=2048)
    now = 0.0
    for offset8, more, payload, ident in frags:
        now += 1.0
        p = frag(payload, offset8 * 8, more, ident=ident)
        whole = r.add(parse_ipv4(p), now)
        if whole is not None:
            ip = parse_ipv4(whole)
            assert not ip.is_fragment
        assert 0 <= r.bytes_used <= 2048
        r.handle_timer(now)
    r.handle_timer(now + 31.0)
    assert len(r) == 0 and r.bytes_used == 0
    for err in r.drain()[0]:
        parse_icmp(parse_ipv4(err).payload)


@given(st.binary(max_size=200), st.integers(min_value=68, max_value=2000))
def test_fragment_garbage_never_raises(blob: bytes, mtu: int) -> None:
    for part in fragment_ipv4(blob, mtu):
        assert isinstance(part, bytes)
        try:
            parse_ipv4(part)
        except ParseError:
            pass
