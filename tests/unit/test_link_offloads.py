"""TAP offloads are the link's, not the stack's: a socket transport beside a TAP keeps both right.

A VM behind a TAP with a virtio-net header gets TCP super-segments with the
checksum left to the kernel; a VM behind a hypervisor socket on the same stack
gets MTU-sized segments with full checksums. (Before, one socket listener
turned offloads off for every VM.)
"""

from __future__ import annotations

import asyncio
import random

import pytest

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import Effect, TcpOpen
from pyvpnkit.core.stack import Stack
from pyvpnkit.links.base import Link
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.wire import ethernet, ipv4, tcp
from pyvpnkit.wire.errors import ParseError

CFG = NetConfig(ipv6=None)
WORLD = ip4("203.0.113.2")
DATA = bytes(40_000)


class VmLink(Link):
    def __init__(self, name: str, offloads: bool) -> None:
        self.name, self.mtu, self.mac, self.offloads = name, CFG.mtu, None, offloads
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


class Connects:
    """The host side: every connect succeeds at once."""

    effects = (TcpOpen,)

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.opened: list[int] = []  # flow ids

    def execute(self, effect: Effect) -> None:
        assert isinstance(effect, TcpOpen)
        self.opened.append(effect.flow_id)
        self.stack.tcp.host_connected(effect.flow_id, 0.0)

    def fail(self, effect: Effect) -> None:
        pass

    def close(self) -> None:
        pass


def frame(mac: bytes, src: bytes, segment: bytes) -> bytes:
    packet = ipv4.build_ipv4(src, WORLD, ipv4.PROTO_TCP, segment)
    return ethernet.build_ethernet(CFG.gateway_mac, mac, ethernet.ETHERTYPE_IPV4, packet)


def segments(link: VmLink, check: bool) -> list[tuple[int, tcp.TcpSegment]]:
    """(frame length, segment) for each TCP frame the link got."""
    out = []
    for raw in link.frames:
        pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(raw).payload)
        out.append((len(raw), tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst, check=check)))
    return out


def test_offloads_follow_each_vms_link() -> None:
    loop = asyncio.new_event_loop()
    try:
        engine = Engine(Stack(CFG, rng=random.Random(1)), loop)
        host = Connects(engine.stack)
        engine.add_executor(host)
        tap, sock = VmLink("tap", offloads=True), VmLink("qemu", offloads=False)
        vms = [(tap, bytes.fromhex("020000000001"), ip4("192.168.65.3")),
               (sock, bytes.fromhex("020000000002"), ip4("192.168.65.4"))]
        for link, _mac, _ip in vms:
            engine.link_opened(link)
        for link, mac, ip in vms:
            syn_opts = tcp.encode_options(tcp.TcpOptions(mss=1460))
            syn = tcp.build_tcp(ip, WORLD, 40000, 80, 1000, 0, tcp.SYN, 64240, syn_opts)
            engine.frame_received(link, frame(mac, ip, syn))
            engine.flush()  # the host connect
            engine.flush()  # the SYN-ACK
            ((_n, synack),) = segments(link, check=False)
            ack = tcp.build_tcp(ip, WORLD, 40000, 80, 1001, synack.seq + 1, tcp.ACK, 64240)
            engine.frame_received(link, frame(mac, ip, ack))
            engine.flush()
            link.frames.clear()
        for flow_id in host.opened:
            engine.stack.tcp.host_data(flow_id, DATA, 0.1)
        engine.flush()
        # The TAP VM: one super-segment, its checksum left partial for the kernel.
        ((size, _seg),) = segments(tap, check=False)
        assert size > 14 + CFG.mtu
        with pytest.raises(ParseError):
            segments(tap, check=True)
        # The socket VM: MSS-sized segments, every checksum complete.
        sent = segments(sock, check=True)
        assert len(sent) > 1 and all(size <= 14 + CFG.mtu for size, _seg in sent)
        assert sum(len(seg.payload) for _size, seg in sent) == sum(
            len(seg.payload) for _size, seg in segments(tap, check=False)
        )
    finally:
        loop.close()
