"""Helpers for the TCP machine tests: a hand-driven VM peer and a fake clock.

Segments are built as bytes with ``build_tcp`` and parsed back with
``parse_tcp`` (checksum verified), exactly as the stack feeds the machine.
Also checks that every packet the machine sends is a well-formed IPv4 packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyvpnkit.core.tcp import TcpConnection, TcpSettings
from pyvpnkit.wire.ipv4 import PROTO_TCP, parse_ipv4
from pyvpnkit.wire.tcp import (
    ACK,
    FIN,
    RST,
    SYN,
    TcpOptions,
    TcpSegment,
    build_tcp,
    encode_options,
    parse_tcp,
)

LOCAL = bytes([192, 168, 65, 2])
VM = bytes([192, 168, 65, 3])
LPORT = 80
VPORT = 40000
M = 0xFFFFFFFF


def parse_out(pkt: bytes, src: bytes = LOCAL, dst: bytes = VM) -> TcpSegment:
    """Parse a packet the machine sent (verifying both checksums and DF)."""
    ip = parse_ipv4(pkt)
    assert ip.src == src and ip.dst == dst and ip.proto == PROTO_TCP
    assert ip.dont_fragment
    assert len(pkt) == 20 + len(ip.payload)
    return parse_tcp(ip.payload, ip.src, ip.dst)


ENDPOINT = frozenset(("local_ip", "local_port", "remote_ip", "remote_port", "iss"))


def kw(**extra: Any) -> dict[str, Any]:
    """A connection's arguments: ``extra`` names endpoint fields or TcpSettings fields.

    These tests drive the bare machine with 4 MiB buffers (window scale 7), and a pure
    ACK goes out at once (no delayed ACK).
    """
    base: dict[str, Any] = dict(local_ip=LOCAL, local_port=LPORT, remote_ip=VM, remote_port=VPORT,
                                iss=5000)
    settings: dict[str, Any] = dict(rcv_buffer=4 << 20, snd_buffer=4 << 20, delayed_ack=0.0)
    for key, value in extra.items():
        (base if key in ENDPOINT else settings)[key] = value
    return dict(base, settings=TcpSettings(**settings))


@dataclass
class Peer:
    """The VM side, driven by hand: tracks its own sequence and what it acknowledged."""

    iss: int = 1000
    mss: int | None = 1460
    wscale: int | None = 7
    sack: bool = True
    ts: bool = True
    window: int = 65535
    seq: int = 0  # next sequence number the peer sends
    ack: int = 0  # next sequence number the peer expects from us
    tsval: int = 777
    ts_echo: int = 0
    received: bytearray = field(default_factory=bytearray)
    fin_received: bool = False

    def __post_init__(self) -> None:
        self.seq = self.iss

    def seg(
        self,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: TcpOptions | None = None,
    ) -> TcpSegment:
        if options is None:
            options = TcpOptions(timestamps=(self.tsval, self.ts_echo)) if self.ts else TcpOptions()
        raw = build_tcp(
            VM,
            LOCAL,
            VPORT,
            LPORT,
            (self.seq if seq is None else seq) & M,
            (self.ack if ack is None else ack) & M,
            flags,
            self.window if window is None else window,
            encode_options(options),
            payload,
        )
        return parse_tcp(raw, VM, LOCAL)

    def syn(self) -> TcpSegment:
        opts = TcpOptions(
            mss=self.mss,
            wscale=self.wscale,
            sack_permitted=self.sack,
            timestamps=(self.tsval, 0) if self.ts else None,
        )
        s = self.seg(SYN, seq=self.iss, ack=0, options=opts)
        self.seq = self.iss + 1
        return s

    def data(self, payload: bytes, flags: int = ACK) -> TcpSegment:
        s = self.seg(flags, payload)
        self.seq += len(payload) + (1 if flags & FIN else 0)
        return s

    def fin(self) -> TcpSegment:
        return self.data(b"", ACK | FIN)

    def absorb(self, packets: list[bytes]) -> list[TcpSegment]:
        """Take the machine's packets as an in-order receiver (out-of-order ones are dropped)."""
        segs = [parse_out(p) for p in packets]
        for s in segs:
            if s.options.timestamps is not None:
                self.ts_echo = s.options.timestamps[0]
            if s.flags & RST:
                continue
            if s.flags & SYN:
                self.ack = (s.seq + 1) & M
                continue
            if s.seq == self.ack and (len(s.payload) or s.flags & FIN):
                self.received += s.payload
                self.ack = (self.ack + len(s.payload)) & M
                if s.flags & FIN:
                    self.fin_received = True
                    self.ack = (self.ack + 1) & M
        return segs


@dataclass
class Link:
    """A connection accepted from a Peer, with a fake clock."""

    conn: TcpConnection
    peer: Peer
    now: float = 100.0
    events: list[object] = field(default_factory=list)

    def drain(self) -> list[TcpSegment]:
        packets, events = self.conn.drain()
        self.events.extend(events)
        return self.peer.absorb(packets)

    def feed(self, *segs: TcpSegment) -> list[TcpSegment]:
        for s in segs:
            self.conn.handle_segment(s, self.now)
        return self.drain()

    def advance(self, dt: float) -> list[TcpSegment]:
        self.now += dt
        d = self.conn.next_deadline()
        if d is not None and d <= self.now:
            self.conn.handle_timer(self.now)
        return self.drain()

    def fire(self) -> list[TcpSegment]:
        """Jump the clock to the next deadline and run the timer."""
        d = self.conn.next_deadline()
        assert d is not None, "no timer armed"
        assert d >= self.now - 1e-9
        self.now = d
        self.conn.handle_timer(self.now)
        return self.drain()

    def take(self, kind: type) -> list[object]:
        got = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return got

    def received(self) -> bytes:
        from pyvpnkit.core.tcp import DataReceived

        out = b"".join(e.data for e in self.events if isinstance(e, DataReceived))
        self.events = [e for e in self.events if not isinstance(e, DataReceived)]
        return out


def establish(peer: Peer | None = None, **extra: Any) -> Link:
    """Handshake through accept(); returns a Link in ESTABLISHED with events cleared."""
    peer = peer or Peer()
    link = Link(TcpConnection.accept(peer.syn(), 100.0, **kw(**extra)), peer)
    (synack,) = link.drain()
    assert synack.flags == SYN | ACK
    assert link.feed(peer.seg(ACK)) == []
    assert link.conn.state == "ESTABLISHED"
    link.events.clear()
    return link
