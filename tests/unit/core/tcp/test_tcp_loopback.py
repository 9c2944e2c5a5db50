"""Two TcpConnections back to back through a lossy, reordering, duplicating network.

One side connect()s, the other is accept()ed from the first SYN; both are
this same machine. Each side sends a random byte string, half-closes, and
must receive the other's bytes exactly; both must end CLOSED. The receiving
applications consume slowly and in bursts, so windows close and reopen.
Also fuzzes the machine with arbitrary segments in every state.
"""

from __future__ import annotations

import heapq
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvpnkit.core.tcp import (
    Closed,
    DataReceived,
    PeerClosed,
    Reset,
    TcpConnection,
    TcpSettings,
    TimedOut,
)
from pyvpnkit.wire.ipv4 import PROTO_TCP, ipv4_header, parse_ipv4
from pyvpnkit.wire.tcp import ACK, FIN, RST, SYN, TcpOptions, build_tcp, encode_options, parse_tcp

A_IP = bytes([10, 0, 0, 1])
B_IP = bytes([10, 0, 0, 2])


@dataclass
class App:
    """The host side of one connection: feeds its data, consumes what arrives."""

    name: str
    to_send: bytes
    sent: int = 0
    shut: bool = False
    got: bytearray = field(default_factory=bytearray)
    unconsumed: int = 0
    eof: bool = False
    closed: bool = False
    reset: bool = False
    timed_out: bool = False

    def pump(self, conn: TcpConnection, now: float, rng: random.Random) -> None:
        if self.sent < len(self.to_send) and conn.send_space:
            chunk = rng.choice([1, 100, 3000, 20000, 1 << 20])
            self.sent += conn.send(memoryview(self.to_send)[self.sent : self.sent + chunk], now)
        if self.sent == len(self.to_send) and not self.shut:
            self.shut = True
            conn.shutdown(now)

    def events(self, events: list[object]) -> None:
        for ev in events:
            if isinstance(ev, DataReceived):
                assert not self.eof
                self.got += ev.data
                self.unconsumed += len(ev.data)
            elif isinstance(ev, PeerClosed):
                assert not self.eof
                self.eof = True
            elif isinstance(ev, Closed):
                assert not self.closed
                self.closed = True
            elif isinstance(ev, Reset):
                self.reset = True
            elif isinstance(ev, TimedOut):
                self.timed_out = True


def rst_for(src: bytes, dst: bytes, raw: bytes) -> bytes | None:
    """What a host answers for a segment to a forgotten connection (as the NAT does)."""
    ip = parse_ipv4(raw)
    seg = parse_tcp(ip.payload, ip.src, ip.dst)
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        tcp = build_tcp(src, dst, seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    else:
        ack = (seg.seq + seg.seg_len) & 0xFFFFFFFF
        tcp = build_tcp(src, dst, seg.dst_port, seg.src_port, 0, ack, RST | ACK, 0)
    return ipv4_header(src, dst, PROTO_TCP, len(tcp)) + tcp


def run_pair(
    data_a: bytes,
    data_b: bytes,
    rng: random.Random,
    *,
    loss: float,
    dup: float,
    jitter: float,
    mss_a: int,
    mss_b: int,
    rcv_a: int,
    rcv_b: int,
    snd_a: int,
    snd_b: int,
    opts_b: dict[str, Any],
    consume_delay: float,
) -> tuple[App, App, float]:
    now = 0.0
    common: dict[str, Any] = dict(
        keepalive=None,
        delayed_ack=0.0,
        fin_wait_2_timeout=None,
        msl=1.0,
        max_retries=60,
        max_rto=4.0,
        user_timeout=1e6,
        syn_retries=8,
    )
    a = TcpConnection(
        local_ip=A_IP,
        local_port=1111,
        remote_ip=B_IP,
        remote_port=2222,
        iss=rng.getrandbits(32),
        settings=TcpSettings(mss=mss_a, rcv_buffer=rcv_a, snd_buffer=snd_a, **common),
    )
    b: TcpConnection | None = None
    app_a, app_b = App("a", data_a), App("b", data_b)
    a.connect(now)
    queue: list[tuple[float, int, bytes, bytes]] = []  # (time, tiebreak, dst ip, packet)
    tick = 0
    next_consume = {"a": 0.0, "b": 0.0}
    drops_in_a_row = {A_IP: 0, B_IP: 0}

    def transmit(src: bytes, dst: bytes, packets: list[bytes]) -> None:
        nonlocal tick
        for pkt in packets:
            ip = parse_ipv4(pkt)
            assert ip.src == src and ip.dst == dst and ip.dont_fragment
            parse_tcp(ip.payload, ip.src, ip.dst)  # checksum must verify
            # Lossy, but never a black hole (the random source may be adversarial).
            if rng.random() < loss and drops_in_a_row[src] < 3:
                drops_in_a_row[src] += 1
                continue
            drops_in_a_row[src] = 0
            copies = 2 if rng.random() < dup else 1
            for _ in range(copies):
                tick += 1
                delay = 0.0005 + rng.random() * jitter
                heapq.heappush(queue, (now + delay, tick, dst, pkt))

    for _step in range(200_000):
        for name, conn, app, src, dst in (("a", a, app_a, A_IP, B_IP), ("b", b, app_b, B_IP, A_IP)):
            if conn is None:
                continue
            if not conn.closed:
                app.pump(conn, now, rng)
                if app.unconsumed and now >= next_consume[name]:
                    n = rng.randint(1, app.unconsumed)
                    app.unconsumed -= n
                    conn.consumed(n, now)
                    next_consume[name] = now + rng.random() * consume_delay
            packets, events = conn.drain()
            app.events(events)
            transmit(src, dst, packets)
        if a.closed and b is not None and b.closed:
            return app_a, app_b, now
        candidates = [t for t, *_ in queue[:1]]
        for conn in (a, b):
            if conn is not None:
                d = conn.next_deadline()
                if d is not None:
                    candidates.append(d)
        for name, app, conn in (("a", app_a, a), ("b", app_b, b)):
            if app.unconsumed and conn is not None and not conn.closed:
                candidates.append(max(next_consume[name], now))
        assert candidates, f"stalled: a={a.state} b={b.state if b else None}"
        now = max(now, min(candidates))
        while queue and queue[0][0] <= now:
            _, _, dst, pkt = heapq.heappop(queue)
            ip = parse_ipv4(pkt)
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
            if dst == B_IP and b is None:
                if seg.flags & SYN and not seg.flags & ACK:
                    b = TcpConnection.accept(
                        seg,
                        now,
                        local_ip=B_IP,
                        local_port=2222,
                        remote_ip=A_IP,
                        remote_port=1111,
                        iss=rng.getrandbits(32),
                        settings=TcpSettings(
                            mss=mss_b, rcv_buffer=rcv_b, snd_buffer=snd_b, **common, **opts_b
                        ),
                    )
                continue
            conn = a if dst == A_IP else b
            assert conn is not None
            if conn.closed:
                answer = rst_for(dst, ip.src, pkt)
                if answer is not None:
                    transmit(dst, ip.src, [answer])
                continue
            conn.handle_segment(seg, now)
        for conn in (a, b):
            if conn is not None:
                d = conn.next_deadline()
                if d is not None and d <= now:
                    conn.handle_timer(now)
    raise AssertionError(f"no convergence: a={a.state} b={b.state if b else None}")


def _blob(n: int) -> bytes:
    return random.Random(n).randbytes(n)


# TCP_EXAMPLES=2000 for a long soak.
@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(
    max_examples=int(os.environ.get("TCP_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    data_a=st.binary(max_size=3000) | st.integers(0, 200_000).map(_blob),
    data_b=st.binary(max_size=3000) | st.integers(0, 200_000).map(_blob),
    rng=st.randoms(use_true_random=False),
    loss=st.sampled_from([0.0, 0.02, 0.1, 0.25]),
    dup=st.sampled_from([0.0, 0.05, 0.2]),
    jitter=st.sampled_from([0.0, 0.001, 0.01, 0.2]),
    mss_a=st.sampled_from([100, 536, 1460, 9000, 65480]),
    mss_b=st.sampled_from([100, 536, 1460, 9000, 65480]),
    rcv_a=st.sampled_from([1000, 20_000, 70_000, 1 << 20]),
    rcv_b=st.sampled_from([1000, 20_000, 70_000, 1 << 20]),
    snd_a=st.sampled_from([500, 10_000, 1 << 20]),
    snd_b=st.sampled_from([500, 10_000, 1 << 20]),
    opts_b=st.fixed_dictionaries(
        {"sack": st.booleans(), "timestamps": st.booleans(), "window_scaling": st.booleans()}
    ),
    consume_delay=st.sampled_from([0.0, 0.01, 0.5]),
)
def test_transfer_both_ways_through_bad_network(**kw: Any) -> None:
    data_a, data_b = kw["data_a"], kw["data_b"]
    app_a, app_b, _ = run_pair(**kw)
    assert bytes(app_b.got) == data_a
    assert bytes(app_a.got) == data_b
    assert app_a.eof and app_b.eof
    assert app_a.closed and app_b.closed
    assert not app_a.timed_out and not app_b.timed_out


def test_clean_network_big_transfer_is_quick() -> None:
    data_a, data_b = random.randbytes(3_000_000), random.randbytes(1_000_000)
    app_a, app_b, elapsed = run_pair(
        data_a,
        data_b,
        random.Random(1),
        loss=0.0,
        dup=0.0,
        jitter=0.0,
        mss_a=65480,
        mss_b=65480,
        rcv_a=4 << 20,
        rcv_b=4 << 20,
        snd_a=4 << 20,
        snd_b=4 << 20,
        opts_b={},
        consume_delay=0.0,
    )
    assert bytes(app_b.got) == data_a and bytes(app_a.got) == data_b
    assert not app_a.reset and not app_b.reset
    assert elapsed < 2.5  # no timeouts needed: only TIME_WAIT (2 s) and link delays


# -- robustness: arbitrary segments never raise ---------------------------------------

LOCAL = bytes([192, 168, 65, 2])
VM = bytes([192, 168, 65, 3])

_seg_strategy = st.tuples(
    st.integers(0, 0xFF),  # flags
    st.integers(-70_000, 70_000) | st.integers(0, 0xFFFFFFFF),  # seq offset or absolute
    st.integers(-70_000, 70_000) | st.integers(0, 0xFFFFFFFF),  # ack offset or absolute
    st.integers(0, 0xFFFF),  # window
    st.binary(max_size=3000),
    st.builds(
        TcpOptions,
        mss=st.none() | st.integers(0, 0xFFFF),
        wscale=st.none() | st.integers(0, 14),
        sack_permitted=st.booleans(),
        timestamps=st.none() | st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)),
        sack_blocks=st.lists(
            st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)), max_size=2
        ).map(tuple),
    ),
    st.floats(0, 100),  # time step
)


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(
    syn_opts=_seg_strategy,
    segs=st.lists(_seg_strategy, max_size=30),
    actions=st.lists(st.integers(0, 6), max_size=30),
    active=st.booleans(),
)
def test_arbitrary_segments_never_raise(
    syn_opts: Any, segs: list[Any], actions: list[int], active: bool
) -> None:
    now = 10.0
    peer_iss = 123456
    common: dict[str, Any] = dict(
        local_ip=LOCAL,
        local_port=80,
        remote_ip=VM,
        remote_port=4000,
        iss=0xFFFFFF00,
        settings=TcpSettings(rcv_buffer=5000, snd_buffer=5000, delayed_ack=0.0),
    )
    options = syn_opts[5]
    if active:
        conn = TcpConnection(**common)
        conn.connect(now)
    else:
        raw = build_tcp(VM, LOCAL, 4000, 80, peer_iss, 0, SYN, syn_opts[3], encode_options(options))
        conn = TcpConnection.accept(parse_tcp(raw, VM, LOCAL), now, **common)
    conn.drain()
    for i, (flags, dseq, dack, window, payload, opts, dt) in enumerate(segs):
        seq = (peer_iss + 1 + dseq) & 0xFFFFFFFF if -70_000 <= dseq <= 70_000 else dseq
        ack = (0xFFFFFF01 + dack) & 0xFFFFFFFF if -70_000 <= dack <= 70_000 else dack
        try:
            enc = encode_options(opts)
        except ValueError:
            enc = b""
        raw = build_tcp(VM, LOCAL, 4000, 80, seq, ack, flags, window, enc, payload)
        conn.handle_segment(parse_tcp(raw, VM, LOCAL), now)
        action = actions[i] if i < len(actions) else 0
        if action == 1:
            conn.send(payload or b"x", now)
        elif action == 2:
            conn.consumed(len(payload) + 1, now)
        elif action == 3:
            conn.shutdown(now)
        elif action == 4:
            conn.abort(now)
        elif action == 5:
            d = conn.next_deadline()
            if d is not None:
                now = max(now, d)
                conn.handle_timer(now)
        packets, _ = conn.drain()
        for p in packets:
            ip = parse_ipv4(p)
            parse_tcp(ip.payload, ip.src, ip.dst)
        now += dt
        conn.handle_timer(now)
        assert conn.send_space >= 0
        d = conn.next_deadline()
        assert d is None or d == d  # not NaN
    # Whatever happened, the machine can still be wound down.
    conn.abort(now)
    conn.drain()
    assert conn.closed and conn.next_deadline() is None


def test_fin_only_through_pair() -> None:
    app_a, app_b, _ = run_pair(
        b"",
        b"",
        random.Random(5),
        loss=0.0,
        dup=0.0,
        jitter=0.0,
        mss_a=1460,
        mss_b=1460,
        rcv_a=1 << 20,
        rcv_b=1 << 20,
        snd_a=1 << 20,
        snd_b=1 << 20,
        opts_b={},
        consume_delay=0.0,
    )
    assert app_a.eof and app_b.eof and app_a.closed and app_b.closed
    assert FIN  # flags module imported for the fuzz strategy
