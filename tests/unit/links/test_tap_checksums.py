"""--verify-checksums over a TAP with a virtio-net header: NEEDS_CSUM frames are not
"wrong", their checksum is left for the receiver; every other bad checksum is dropped.

A datagram socketpair stands in for /dev/net/tun (one frame per read, header first).
"""

from __future__ import annotations

import asyncio
import socket

import dns.message

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.core.switch.stack_settings import StackSettings
from pyvpnkit.links.tap import TapLink
from pyvpnkit.links.tapdev import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.wire.checksum import pseudo_header_sum
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV4, build_ethernet
from pyvpnkit.wire.ipv4 import PROTO_UDP, build_ipv4
from pyvpnkit.wire.udp import build_udp

CFG = NetConfig(ipv6=None)  # IPv4 only: no router advertisements among the frames
VM_MAC = b"\x02\x00\x00\x00\x00\x03"


def dns_query_frame(partial: bool) -> bytes:
    """A DNS query to the gateway whose UDP checksum field is not the full checksum.

    ``partial``: the field holds the pseudo-header sum, as a kernel with
    checksum offload leaves it; otherwise the full checksum, corrupted.
    """
    query = dns.message.make_query("host.docker.internal", "A").to_wire()
    udp = bytearray(build_udp(CFG.lowest_ip, CFG.gateway_ip, 40000, 53, query))
    if partial:
        udp[6:8] = pseudo_header_sum(CFG.lowest_ip, CFG.gateway_ip, PROTO_UDP, len(udp)).to_bytes(
            2, "big"
        )
    else:
        udp[6] ^= 0x5A
    ip = build_ipv4(CFG.lowest_ip, CFG.gateway_ip, PROTO_UDP, bytes(udp))
    frame = build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4, ip)
    flags = VIRTIO_NET_HDR_F_NEEDS_CSUM if partial else 0
    return VNET_HDR.pack(flags, 0, 0, 0, 14 + 20, 6) + frame


async def _exchange(frame: bytes) -> tuple[Stack, bytes | None]:
    stack = Stack(CFG, StackSettings(verify_checksums=True))
    engine = Engine(stack)
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    link = TapLink(ours.detach(), engine, CFG.mtu, vnet_hdr=True)
    link_id = engine.link_id(link)
    assert link_id is not None
    stack.add_vm(link_id, VM_MAC, CFG.lowest_ip)
    kernel.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(kernel, frame)
    try:
        reply: bytes | None = await asyncio.wait_for(loop.sock_recv(kernel, 65536), 1.0)
    except TimeoutError:
        reply = None
    link.close()
    kernel.close()
    return stack, reply


def test_needs_csum_frame_is_answered() -> None:
    stack, reply = asyncio.run(_exchange(dns_query_frame(partial=True)))
    assert stack.stats["drop_malformed"] == 0
    assert reply is not None
    answer = dns.message.from_wire(reply[10 + 14 + 20 + 8 :])
    assert str(answer.answer[0][0]) == "192.168.65.2"


def test_wrong_checksum_without_needs_csum_is_dropped() -> None:
    stack, reply = asyncio.run(_exchange(dns_query_frame(partial=False)))
    assert reply is None
    assert stack.stats["drop_malformed"] == 1
    assert "checksum" in stack.last_error
