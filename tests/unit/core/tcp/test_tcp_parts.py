"""The TCP machine's building blocks: sequence arithmetic, reassembly, send buffer,
RTO estimator, NewReno and the packet builder."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.tcp import seq
from pyvpnkit.core.tcp.congestion import NewReno
from pyvpnkit.core.tcp.packet import PacketBuilder, raw_sum
from pyvpnkit.core.tcp.reassembly import Reassembly
from pyvpnkit.core.tcp.rto import RtoEstimator
from pyvpnkit.core.tcp.sendbuf import SendBuffer
from pyvpnkit.wire.checksum import ones_sum
from pyvpnkit.wire.ipv4 import ipv4_header
from pyvpnkit.wire.tcp import build_tcp

# -- seq ----------------------------------------------------------------------------


@given(st.integers(0, 1 << 40), st.integers(-(1 << 31) + 1, (1 << 31) - 1))
def test_unwrap_recovers_nearby_numbers(ref: int, delta: int) -> None:
    target = ref + delta
    assert seq.unwrap(target & seq.MASK, ref) == target


# -- reassembly ---------------------------------------------------------------------


def test_reassembly_merges_trims_and_pops() -> None:
    r = Reassembly()
    data = bytes(range(256)) * 4
    assert r.add(110, data[110:120]) == 10
    assert r.add(130, data[130:140]) == 10
    assert r.add(115, data[115:135]) == 10  # only the gap 120..130 is new
    assert r.intervals == [(110, 140)]
    assert r.add(110, data[110:140]) == 0  # exact duplicate
    assert r.add(200, data[200:210]) == 10
    assert r.add(140, data[140:150]) == 10  # adjacent: merged
    assert r.intervals == [(110, 150), (200, 210)]
    assert r.bytes == 50
    chunks, nxt = r.pop(100)
    assert chunks == [] and nxt == 100  # still a hole at 100..110
    chunks, nxt = r.pop(112)  # 110..112 was already delivered by another segment
    assert b"".join(chunks) == data[112:150] and nxt == 150
    assert r.intervals == [(200, 210)] and r.bytes == 10


def test_reassembly_clip_and_sack_blocks() -> None:
    r = Reassembly()
    for start in (10, 30, 50, 70, 90):
        r.add(start, b"x" * 5)
    r.add(50, b"y" * 8)  # latest arrival extends the 50 block
    assert r.sack_blocks(3) == [(50, 58), (10, 15), (30, 35)]
    assert r.sack_blocks(4)[0] == (50, 58)
    r.clip(72)
    assert r.intervals == [(10, 15), (30, 35), (50, 58), (70, 72)]
    assert r.bytes == 5 + 5 + 8 + 2
    assert b"".join(r.pop(10)[0]) == b"xxxxx"


def test_reassembly_interval_and_chunk_limits() -> None:
    r = Reassembly(max_intervals=2)
    assert r.add(10, b"a") and r.add(20, b"b")
    assert r.add(30, b"c") == 0  # would be a third interval
    assert r.add(11, b"a") == 1  # merging is still fine
    assert len(r) == 2
    r = Reassembly(max_chunks=3)
    assert r.add(10, b"a") and r.add(11, b"b") and r.add(12, b"c")
    assert r.add(13, b"d") == 0  # a tiny-segment flood stops at the chunk budget
    chunks, nxt = r.pop(10)
    assert b"".join(chunks) == b"abc" and nxt == 13
    assert r.add(20, b"e") == 1  # budget freed by delivery
    r.clip(20)
    assert r.add(30, b"f") and r.add(31, b"g") and r.add(32, b"h")


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)), max_size=40))
def test_reassembly_matches_a_byte_model(pieces: list[tuple[int, int]]) -> None:
    stream = bytes(random.Random(7).randbytes(400))
    r = Reassembly()
    have: set[int] = set()
    nxt = 50
    out = bytearray()
    for start, length in pieces:
        if start + length <= nxt:
            continue
        s = max(start, nxt)
        r.add(s, memoryview(stream)[s : start + length])
        have.update(range(s, start + length))
        assert r.bytes == len(have)
        chunks, new = r.pop(nxt)
        out += b"".join(chunks)
        while nxt in have:
            have.discard(nxt)
            nxt += 1
        assert new == nxt
        assert r.bytes == len(have)
    assert bytes(out) == stream[50:nxt]


# -- send buffer --------------------------------------------------------------------


def test_send_buffer_acks_and_slices() -> None:
    b = SendBuffer(1000)
    b.append(b"hello ")
    b.append(memoryview(b"world!!")[:5])
    assert len(b) == 11 and b.end == 1011
    assert bytes(b.slice(1006, 5)) == b"world"
    assert b.ack(999) == 0
    assert b.ack(1002) == 2 and b.base == 1002
    assert bytes(b.slice(1002, 100)) == b"llo world"
    b.append(b"x")  # no exported buffer may block the resize
    assert b.ack(5000) == 10 and len(b) == 0 and b.base == 1012


# -- RTO ----------------------------------------------------------------------------


def test_rto_follows_rfc6298() -> None:
    r = RtoEstimator()
    assert r.rto == 1.0
    r.sample(0.5)
    assert r.srtt == 0.5 and r.rttvar == 0.25 and r.rto == pytest.approx(1.5)
    r.sample(0.5)
    assert r.rttvar == pytest.approx(0.1875) and r.rto == pytest.approx(0.5 + 0.75)
    for _ in range(50):
        r.sample(0.0001)
    assert r.rto == 0.2  # floor
    r.backoff()
    r.backoff()
    assert r.rto == pytest.approx(0.8) and r.backoffs == 2
    for _ in range(20):
        r.backoff()
    assert r.rto == 60.0  # ceiling


# -- NewReno ------------------------------------------------------------------------


def test_newreno_slow_start_then_avoidance() -> None:
    cc = NewReno(1000, 0)
    assert cc.cwnd == 10_000
    cc.on_ack(10_000, 10_000, 0)
    assert cc.cwnd == 20_000  # slow start: every acked byte
    cc.ssthresh = 20_000
    cc.on_ack(30_000, 20_000, 0)
    assert cc.cwnd == 21_000  # avoidance: about one MSS per window


def test_newreno_fast_retransmit_partial_and_full_ack() -> None:
    cc = NewReno(1000, 0)
    una, snd_max = 1, 10_001
    assert not cc.on_dupack(una, snd_max) and not cc.on_dupack(una, snd_max)
    assert cc.on_dupack(una, snd_max)  # third: fast retransmit
    assert cc.in_recovery and cc.ssthresh == 5000 and cc.cwnd == 8000
    assert not cc.on_dupack(una, snd_max) and cc.cwnd == 9000  # inflation
    assert cc.on_ack(3001, 3000, 7000)  # partial: retransmit the next hole
    assert cc.in_recovery and cc.cwnd == 9000 - 3000 + 1000
    assert not cc.on_ack(10_001, 7000, 0)  # full
    assert not cc.in_recovery and cc.cwnd == 1000 + 1000
    # Dupacks for data sent before the last loss episode's recovery point don't restart it.
    cc.on_timeout(10_001, 20_001)
    assert cc.cwnd == 1000 and cc.ssthresh == 5000
    for _ in range(3):
        assert not cc.on_dupack(15_001, 20_001)


# -- packet builder -----------------------------------------------------------------


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300)
@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 10).map(lambda n: b"\x01" * (4 * n)),
    st.binary(max_size=3000) | st.sampled_from([b"\xff" * 20001, b"\x00" * 65001, b"\xff\xff"]),
)
def test_packet_builder_matches_wire_codecs(
    src: bytes, dst: bytes, port: int, num: int, flags: int, opts: bytes, payload: bytes
) -> None:
    pkt = PacketBuilder(src, dst, port, 80).build(num, num ^ 0xFFFF, flags, port, opts, payload)
    tcp = build_tcp(src, dst, port, 80, num, num ^ 0xFFFF, flags, port, opts, payload)
    assert pkt == ipv4_header(src, dst, 6, len(tcp)) + tcp


def test_packet_builder_without_checksum_and_raw_sum() -> None:
    pkt = PacketBuilder(b"\x01" * 4, b"\x02" * 4, 1, 2, checksum=False).build(1, 2, 0x10, 3)
    assert pkt[36:38] == b"\x00\x00"
    for n in (0, 1, 2, 1023, 1024, 1025, 65535, 65536, 200_001):
        data = os.urandom(n)
        assert raw_sum(data) == int.from_bytes(data + b"\x00" * (n & 1), "big") % 0xFFFF
        assert raw_sum(data) % 0xFFFF == ones_sum(data) % 0xFFFF


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.binary(max_size=9000)),
            st.tuples(st.just("ack"), st.integers(0, 20000)),
            st.tuples(st.just("slice"), st.tuples(st.integers(0, 30000), st.integers(0, 20000))),
        ),
        max_size=60,
    )
)
def test_send_buffer_matches_a_bytearray_model(ops: list[tuple[str, object]]) -> None:
    b = SendBuffer(7)
    model = bytearray()
    base = 7
    for op, arg in ops:
        if op == "append":
            assert isinstance(arg, bytes)
            b.append(memoryview(bytearray(arg)))  # a mutable source must be copied
            model += arg
        elif op == "ack":
            assert isinstance(arg, int)
            n = max(0, min(arg, len(model)))
            assert b.ack(base + arg) == n
            del model[:n]
            base += n
        else:
            assert isinstance(arg, tuple)
            off, n = arg
            off = min(off, len(model))
            assert bytes(b.slice(base + off, n)) == bytes(model[off : off + n])
        assert len(b) == len(model) and b.base == base and b.end == base + len(model)
