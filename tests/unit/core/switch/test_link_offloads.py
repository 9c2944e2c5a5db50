"""TAP offloads are the link's, not the stack's: a socket transport beside a TAP keeps both right.

A VM behind a TAP with a virtio-net header gets TCP super-segments with the
checksum left to the kernel; a VM behind a hypervisor socket on the same stack
gets MTU-sized segments with full checksums. (Before, one socket listener
turned offloads off for every VM.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import random

import pytest

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import Effect, TcpOpen
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.links.base import Link
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.wire import ethernet, ipv4, ipv6, tcp
from pyvpnkit.wire.errors import ParseError

CFG = NetConfig()
DATA = bytes(40_000)
# family: (world address, the two VMs' addresses, header overhead)
FAMILIES = {
    4: (ip4("203.0.113.2"), ip4("192.168.65.3"), ip4("192.168.65.4")),
    6: (ipaddress.IPv6Address("2001:db8::2").packed,
        ipaddress.IPv6Address("fd42:7076:6b69::3").packed,
        ipaddress.IPv6Address("fd42:7076:6b69::4").packed),
}


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


def frame(mac: bytes, src: bytes, dst: bytes, segment: bytes) -> bytes:
    if len(src) == 4:
        packet, etype = ipv4.build_ipv4(src, dst, ipv4.PROTO_TCP, segment), ethernet.ETHERTYPE_IPV4
    else:
        packet, etype = ipv6.build_ipv6(src, dst, ipv4.PROTO_TCP, segment), ethernet.ETHERTYPE_IPV6
    return ethernet.build_ethernet(CFG.gateway_mac, mac, etype, packet)


def segments(link: VmLink, check: bool) -> list[tuple[int, tcp.TcpSegment]]:
    """(frame length, segment) for each TCP frame the link got (not NDP, not RAs)."""
    out = []
    for raw in link.frames:
        eth = ethernet.parse_ethernet(raw)
        pkt: ipv4.IPv4Packet | ipv6.IPv6Packet
        if eth.ethertype == ethernet.ETHERTYPE_IPV4:
            pkt = ipv4.parse_ipv4(eth.payload)
        else:
            pkt = ipv6.parse_ipv6(eth.payload)
        if pkt.proto == ipv4.PROTO_TCP:
            out.append((len(raw), tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst, check=check)))
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_offloads_follow_each_vms_link(family: int) -> None:
    world, ip_tap, ip_sock = FAMILIES[family]
    loop = asyncio.new_event_loop()
    try:
        engine = Engine(Stack(CFG, rng=random.Random(1)), loop)
        host = Connects(engine.stack)
        engine.add_executor(host)
        tap, sock = VmLink("tap", offloads=True), VmLink("qemu", offloads=False)
        vms = [(tap, bytes.fromhex("020000000001"), ip_tap),
               (sock, bytes.fromhex("020000000002"), ip_sock)]
        for link, _mac, _ip in vms:
            engine.link_opened(link)
        for link, mac, ip in vms:
            syn_opts = tcp.encode_options(tcp.TcpOptions(mss=1460))
            syn = tcp.build_tcp(ip, world, 40000, 80, 1000, 0, tcp.SYN, 64240, syn_opts)
            engine.frame_received(link, frame(mac, ip, world, syn))
            engine.flush()  # the host connect
            engine.flush()  # the SYN-ACK
            ((_n, synack),) = segments(link, check=False)
            ack = tcp.build_tcp(ip, world, 40000, 80, 1001, synack.seq + 1, tcp.ACK, 64240)
            engine.frame_received(link, frame(mac, ip, world, ack))
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
