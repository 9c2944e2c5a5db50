"""--verify-checksums over a TAP with a virtio-net header: NEEDS_CSUM frames are not
"wrong", their checksum is left for the receiver; every other bad checksum is dropped.

A datagram socketpair stands in for /dev/net/tun (one frame per read, header first).
"""

from __future__ import annotations

import asyncio
import socket

import dns.message
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.core.switch.stack_settings import StackSettings
from pyvpnkit.links.tap import TapLink, _udp_unfragmented
from pyvpnkit.links.tapdev import PLAIN_HDR, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.wire.checksum import ones_sum, pseudo_header_sum
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV4, build_ethernet
from pyvpnkit.wire.ipv4 import PROTO_UDP, build_ipv4
from pyvpnkit.wire.udp import build_udp, parse_udp

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


def test_udp_reply_goes_out_with_a_partial_checksum() -> None:
    """Our UDP leaves a virtio-net TAP as NEEDS_CSUM with the pseudo-header sum in the
    field (the kernel trusts or completes it); completed, it is the right checksum."""
    _stack, reply = asyncio.run(_exchange(dns_query_frame(partial=True)))
    assert reply is not None
    flags, gso, hdr_len, _size, start, offset = VNET_HDR.unpack_from(reply)
    assert (flags, gso, hdr_len, start, offset) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 42, 34, 6)
    udp = reply[10 + 34 :]
    field = int.from_bytes(udp[6:8], "big")
    src, dst = reply[10 + 26 : 10 + 30], reply[10 + 30 : 10 + 34]
    assert field == pseudo_header_sum(src, dst, PROTO_UDP, len(udp)) % 0xFFFF
    complete = ~ones_sum(udp[:6] + b"\0\0" + udp[8:], field) & 0xFFFF
    parse_udp(udp[:6] + complete.to_bytes(2, "big") + udp[8:], src, dst)  # verifies


def test_udp_fragments_and_ipv6_udp_frames() -> None:
    """A fragment cannot carry a partial checksum: it goes out as it is."""
    ip = bytearray(build_ipv4(CFG.gateway_ip, CFG.lowest_ip, PROTO_UDP, bytes(16)))
    frame = build_ethernet(VM_MAC, CFG.gateway_mac, ETHERTYPE_IPV4, bytes(ip))
    assert _udp_unfragmented(frame)
    for byte, bit in ((6, 0x20), (7, 0x01)):  # more fragments; a non-zero offset
        ip[byte] |= bit
        assert not _udp_unfragmented(frame[:14] + bytes(ip))
        ip[byte] &= ~bit
    v6 = bytearray(frame[:12] + b"\x86\xdd" + bytes(40 + 8))
    v6[14 + 6] = PROTO_UDP
    assert _udp_unfragmented(bytes(v6))
    v6[14 + 6] = 44  # a fragment header first
    assert not _udp_unfragmented(bytes(v6))

    ip[6] |= 0x20
    fragment = frame[:14] + bytes(ip)

    async def send(frame: bytes) -> bytes:
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        link = TapLink(ours.detach(), Engine(Stack(CFG)), CFG.mtu, vnet_hdr=True)
        link.send_frame(frame)
        out = kernel.recv(65536)
        link.close()
        kernel.close()
        return out

    assert asyncio.run(send(fragment)) == PLAIN_HDR + fragment
    # Ethernet padding (a frame switched from another VM) is not part of the sum.
    udp = build_udp(CFG.gateway_ip, CFG.lowest_ip, 1, 2, b"hi")
    padded = build_ethernet(VM_MAC, CFG.gateway_mac, ETHERTYPE_IPV4,
                            build_ipv4(CFG.gateway_ip, CFG.lowest_ip, PROTO_UDP, udp)) + bytes(16)
    out = asyncio.run(send(padded))
    assert VNET_HDR.unpack_from(out)[0] == VIRTIO_NET_HDR_F_NEEDS_CSUM
    field = int.from_bytes(out[10 + 34 + 6 : 10 + 34 + 8], "big")
    assert field == pseudo_header_sum(CFG.gateway_ip, CFG.lowest_ip, PROTO_UDP, 10) % 0xFFFF


def test_wrong_checksum_without_needs_csum_is_dropped() -> None:
    stack, reply = asyncio.run(_exchange(dns_query_frame(partial=False)))
    assert reply is None
    assert stack.stats["drop_malformed"] == 1
    assert "checksum" in stack.last_error


@settings(max_examples=200, deadline=None)
@given(
    v6=st.booleans(),
    src=st.binary(min_size=16, max_size=16),
    dst=st.binary(min_size=16, max_size=16),
    payload=st.integers(min_value=0, max_value=3000),
)
def test_tcp_goes_out_with_the_pseudo_header_sum(
    v6: bool, src: bytes, dst: bytes, payload: int
) -> None:
    """_send_tcp's field is pseudo_header_sum's value for both families, GSO or not."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    link = TapLink.__new__(TapLink)
    link.fd, link.mtu, link.vnet_hdr = a.fileno(), 1500, True
    if v6:
        ip = b"\x60" + bytes(5) + b"\x06\x40" + src + dst
        addr_src, addr_dst = src, dst
    else:
        addr_src, addr_dst = src[:4], dst[:4]
        ip = b"\x45" + bytes(8) + b"\x06" + bytes(2) + addr_src + addr_dst
    tcp = bytes(12) + b"\x50" + bytes(7) + bytes(payload)
    frame = bytes(12) + (b"\x86\xdd" if v6 else b"\x08\x00") + ip + tcp
    try:
        link._send_tcp(frame, v6=v6)
        out = b.recv(70000)
    finally:
        a.close()
        b.close()
    field = int.from_bytes(out[10 + 14 + len(ip) + 16 :][:2], "big")
    assert field == pseudo_header_sum(addr_src, addr_dst, 6, len(tcp))
    gso = VNET_HDR.unpack_from(out)[1]
    assert (gso != 0) == (len(frame) > 1500 + 14)
