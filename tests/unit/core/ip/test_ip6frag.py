"""IPv6 reassembly: exact bytes through extension headers, bounds, timeouts, hostile input."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.core.ip.ip6frag import Ipv6Reassembler
from pyvpnkit.wire import icmpv6, ipv6, udp
from pyvpnkit.wire.errors import ParseError

VM = bytes.fromhex("fd4270766b6900000000000000000003")
REMOTE = bytes.fromhex("20010db8000000000000000000000001")
DSTOPTS = bytes((ipv6.NH_FRAGMENT, 0)) + bytes(6)  # names the Fragment header after it


def whole_udp(size: int, with_dstopts: bool = False) -> bytes:
    dgram = udp.build_udp(VM, REMOTE, 4000, 53, bytes(i * 7 % 251 for i in range(size)))
    if with_dstopts:
        opts = bytes((ipv6.NH_UDP, 0)) + bytes(6)
        return ipv6.build_ipv6(VM, REMOTE, ipv6.NH_DSTOPTS, opts + dgram)
    return ipv6.build_ipv6(VM, REMOTE, ipv6.NH_UDP, dgram)


def fragments(packet: bytes, size: int, ident: int = 42, with_dstopts: bool = False) -> list[bytes]:
    """Split like a sender would: unfragmentable part, Fragment header, 8-byte-aligned data."""
    unfrag_len = 48 if with_dstopts else 40
    first_nh = packet[6]
    inner = packet[unfrag_len - 8] if with_dstopts else first_nh
    data = packet[unfrag_len:]
    out = []
    for off in range(0, len(data), size):
        chunk = data[off : off + size]
        more = off + size < len(data)
        fh = ipv6.fragment_header(inner, off, more, ident)
        if with_dstopts:
            ext = DSTOPTS + fh
            out.append(ipv6.build_ipv6(VM, REMOTE, ipv6.NH_DSTOPTS, ext + chunk))
        else:
            out.append(ipv6.build_ipv6(VM, REMOTE, ipv6.NH_FRAGMENT, fh + chunk))
    return out


def feed(r: Ipv6Reassembler, frames: list[bytes], now: float = 0.0) -> list[bytes]:
    done = []
    for f in frames:
        got = r.add(ipv6.parse_ipv6(f), now)
        if got is not None:
            done.append(got)
    return done


def test_reassembles_in_any_order() -> None:
    packet = whole_udp(3000)
    frames = fragments(packet, 1232)
    random.Random(1).shuffle(frames)
    r = Ipv6Reassembler()
    assert feed(r, frames) == [packet]
    pkt = ipv6.parse_ipv6(packet)
    assert bytes(udp.parse_udp(pkt.payload, VM, REMOTE).payload)[:3] == bytes((0, 7, 14))
    assert len(r) == 0 and r.bytes_used == 0 and r.stats["reassembled"] == 1


def test_unfragmentable_headers_are_kept_and_relinked() -> None:
    packet = whole_udp(2000, with_dstopts=True)
    r = Ipv6Reassembler()
    [got] = feed(r, fragments(packet, 1024, with_dstopts=True))
    assert got == packet
    assert ipv6.parse_ipv6(got).proto == ipv6.NH_UDP


def test_non_fragment_passes_through() -> None:
    packet = whole_udp(10)
    assert Ipv6Reassembler().add(ipv6.parse_ipv6(packet), 0.0) == packet


def test_overlap_and_duplicates() -> None:
    frames = fragments(whole_udp(3000), 1024)
    r = Ipv6Reassembler()
    assert feed(r, [frames[0], frames[0]]) == []
    assert r.stats["frag_duplicate"] == 1
    overlapping = ipv6.build_ipv6(
        VM, REMOTE, ipv6.NH_FRAGMENT, ipv6.fragment_header(ipv6.NH_UDP, 1016, True, 42) + bytes(16)
    )
    assert feed(r, [overlapping] + frames[1:]) == []
    assert r.stats["frag_overlap"] == 1


def test_too_big_and_misaligned_are_dropped() -> None:
    r = Ipv6Reassembler()
    big = ipv6.build_ipv6(
        VM, REMOTE, ipv6.NH_FRAGMENT, ipv6.fragment_header(ipv6.NH_UDP, 65528, False, 1) + bytes(16)
    )
    odd = ipv6.build_ipv6(
        VM, REMOTE, ipv6.NH_FRAGMENT, ipv6.fragment_header(ipv6.NH_UDP, 0, True, 2) + bytes(13)
    )
    assert feed(r, [big, odd]) == []
    assert r.stats["frag_too_big"] == 1 and r.stats["frag_invalid"] == 1


def test_timeout_sends_icmpv6_time_exceeded_when_fragment_zero_came() -> None:
    frames = fragments(whole_udp(3000), 1232)
    r = Ipv6Reassembler(timeout=60.0)
    feed(r, frames[:1], now=5.0)
    feed(r, frames[2:], now=5.0)  # without the first: no error when it expires
    assert r.next_deadline() == 65.0
    r.handle_timer(64.9)
    assert r.drain() == ([], [])
    r.handle_timer(65.0)
    [err], _ = r.drain()
    pkt = ipv6.parse_ipv6(err)
    assert (pkt.src, pkt.dst, pkt.proto) == (REMOTE, VM, ipv6.NH_ICMPV6)
    msg = icmpv6.parse_icmpv6(pkt.payload, REMOTE, VM)
    assert (msg.type, msg.code) == (icmpv6.TIME_EXCEEDED, icmpv6.REASSEMBLY_TIME_EXCEEDED)
    assert bytes(msg.body[8:24]) == VM and len(r) == 0


def test_budget_evicts_oldest() -> None:
    r = Ipv6Reassembler(max_bytes=8000)
    for ident in range(10):
        feed(r, fragments(whole_udp(3000), 1232, ident=ident)[:1])
    assert r.bytes_used <= 8000 and r.stats["frag_evicted"] > 0


@given(
    st.lists(st.tuples(st.integers(0, 8190), st.booleans(), st.binary(max_size=64)), max_size=20)
)
def test_hostile_fragments_never_raise(frags: list[tuple[int, bool, bytes]]) -> None:
    r = Ipv6Reassembler(max_bytes=4096)
    for units, more, data in frags:
        raw = ipv6.build_ipv6(
            VM,
            REMOTE,
            ipv6.NH_FRAGMENT,
            ipv6.fragment_header(ipv6.NH_UDP, units * 8, more, 5) + data,
        )
        got = r.add(ipv6.parse_ipv6(raw), 0.0)
        if got is not None:
            try:
                ipv6.parse_ipv6(got)
            except ParseError:
                raise AssertionError("reassembled packet does not parse") from None
    assert r.bytes_used <= 4096
    r.handle_timer(1000.0)
    assert len(r) == 0 and r.bytes_used == 0
