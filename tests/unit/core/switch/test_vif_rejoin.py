"""rootlesskit's vpnkit driver: two vmnet connections with one UUID, the first left open.

rootlesskit's parent connects, learns MAC and IP (by the Go client's DHCP
DISCOVER), and keeps that connection open without reading it; the child then
connects with the same UUID and carries the namespace's frames. Both must get
the same MAC and IP, and the switch must send the VM's frames to the second.
The stack and engine are real; the links are fakes that record frames.
"""

from __future__ import annotations

import asyncio

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.links.base import Link
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.wire.arp import ARP_REPLY, ARP_REQUEST, build_arp, parse_arp
from pyvpnkit.wire.ethernet import (
    BROADCAST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    build_ethernet,
    parse_ethernet,
)
from pyvpnkit.wire.ipv4 import PROTO_UDP, build_ipv4, parse_ipv4
from pyvpnkit.wire.udp import build_udp
from tests.integration.vmclient import vmnet_go_discover, vmnet_go_offer

CFG = NetConfig()
UUID = "0c8a3cbe-7b4b-4a38-a1b1-e4c1b8f5a2d0"
OTHER_MAC = bytes.fromhex("525400000009")
OTHER_IP = ip4("192.168.65.9")


class FakeLink(Link):
    def __init__(self, name: str, mac: bytes | None = None, ip: bytes | None = None) -> None:
        self.name, self.mtu, self.mac, self.ip = name, 1500, mac, ip
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


def _udp_to(ip: bytes, payload: bytes) -> bytes:
    """From the other VM to ``ip``, addressed to the gateway: the switch routes it by IP."""
    udp = build_udp(OTHER_IP, ip, 5000, 6000, payload)
    return build_ethernet(
        CFG.gateway_mac, OTHER_MAC, ETHERTYPE_IPV4, build_ipv4(OTHER_IP, ip, PROTO_UDP, udp)
    )


def _payloads(link: FakeLink) -> list[bytes]:
    out = []
    for frame in link.frames:
        eth = parse_ethernet(frame)
        if eth.ethertype == ETHERTYPE_IPV4:
            out.append(bytes(parse_ipv4(eth.payload).payload[8:]))
    return out


def test_same_uuid_twice_same_vif_and_frames_follow_the_second() -> None:
    async def body() -> None:
        stack = Stack(CFG)
        engine = Engine(stack)

        # The parent: handshake, then the Go client's DISCOVER (IP header checksum 0).
        mac, ip = engine.vif_request(UUID, None)
        parent = FakeLink("parent", mac, ip)
        engine.link_opened(parent)
        engine.frame_received(parent, vmnet_go_discover(mac))
        engine.flush()
        offers = [a for a in (vmnet_go_offer(f, mac) for f in parent.frames) if a is not None]
        assert offers == [ip], parent.frames

        # The child: the same UUID while the parent's connection stays open.
        assert engine.vif_request(UUID, None) == (mac, ip)
        child = FakeLink("child", mac, ip)
        engine.link_opened(child)
        parent.frames.clear()

        # Before the child says a word, traffic for its address goes to the child.
        other = FakeLink("other")
        engine.link_opened(other)
        stack.add_vm(engine.link_id(other) or 0, OTHER_MAC, OTHER_IP)
        engine.frame_received(other, _udp_to(ip, b"to the child"))
        engine.flush()
        assert _payloads(child) == [b"to the child"] and parent.frames == []

        # The child's ARP for the gateway is answered on the child's link.
        child.frames.clear()
        arp = build_arp(ARP_REQUEST, mac, ip, bytes(6), CFG.gateway_ip)
        engine.frame_received(child, build_ethernet(BROADCAST, mac, ETHERTYPE_ARP, arp))
        engine.flush()
        replies = [parse_arp(parse_ethernet(f).payload) for f in child.frames]
        assert [(r.op, r.spa, r.sha) for r in replies] == [
            (ARP_REPLY, CFG.gateway_ip, CFG.gateway_mac)
        ]

        # The parent hanging up at last does not take the child's address away.
        engine.link_closed(parent)
        child.frames.clear()
        engine.frame_received(other, _udp_to(ip, b"still there"))
        engine.flush()
        assert _payloads(child) == [b"still there"] and parent.frames == []
        engine.close()

    asyncio.run(body())


def test_zero_ip_header_checksum_is_accepted_a_wrong_one_is_not() -> None:
    """The Go vmnet client leaves the IPv4 header checksum 0; a wrong non-zero one is damage."""
    stack = Stack(CFG)
    frame = bytearray(vmnet_go_discover(bytes.fromhex("02aabbccddee")))
    stack.receive(1, bytes(frame), 0.0)
    assert stack.stats["drop_malformed"] == 0
    frames, _effects = stack.drain(0.0)
    assert len(frames) == 1  # the OFFER
    frame[14 + 10 : 14 + 12] = b"\x12\x34"
    stack.receive(1, bytes(frame), 0.0)
    assert stack.stats["drop_malformed"] == 1
