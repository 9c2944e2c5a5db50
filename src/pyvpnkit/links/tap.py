"""TAP link: whole Ethernet frames through a /dev/net/tun file descriptor.

With a virtio-net header (IFF_VNET_HDR) the link tells the kernel that our
frames need no checksum verification, accepts the kernel's TCP
super-segments with partial checksums, and hands TCP packets larger than the
MTU to the kernel as GSO so it cuts them into MTU-sized segments. Whole UDP
datagrams go out with partial checksums too (the NAT leaves them unsummed).
"""

from __future__ import annotations

import asyncio
import logging
import os

from pyvpnkit.links.base import FrameSink, Link
from pyvpnkit.links.tapdev import (
    PLAIN_HDR,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    VNET_HDR_LEN,
    enable_offloads,
)

log = logging.getLogger("pyvpnkit.links")

# Frames read per readiness callback before yielding to other links.
READ_BATCH = 256
GSO_MAX = 65535 + 14 + 40  # an IPv6 payload length does not count its 40-byte header


PROTO_UDP = 17


def _udp_unfragmented(frame: bytes) -> bool:
    """A whole UDP datagram over IPv4 (no MF flag, offset 0) or IPv6 (UDP right
    after the fixed header): a fragment cannot carry a partial checksum."""
    if frame[12:14] == b"\x08\x00":
        return frame[23] == PROTO_UDP and frame[20] & 0x3F == 0 and frame[21] == 0
    return frame[12:14] == b"\x86\xdd" and frame[20] == PROTO_UDP


def _udp_hdr(ip_end: int) -> bytes:
    return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, ip_end + 8, 0,
                         ip_end, 6)


_UDP_HDRS = {14 + 20: _udp_hdr(14 + 20), 14 + 40: _udp_hdr(14 + 40)}  # IPv4 without options, IPv6


class TapLink(Link):
    batches = True  # _on_readable ends every batch with batch_done() or close()
    expires = False

    def __init__(
        self, fd: int, sink: FrameSink, mtu: int, name: str = "tap", vnet_hdr: bool = False
    ) -> None:
        self.fd = fd
        self.sink = sink
        self.mtu = mtu
        self.name = name
        self.mac = None
        self.dropped = 0
        self.vnet_hdr = self.offloads = vnet_hdr
        self._loop = asyncio.get_running_loop()
        self._bufsize = mtu + 14 + 4
        if vnet_hdr:
            try:
                enable_offloads(fd)
                self._bufsize = max(self._bufsize, GSO_MAX) + VNET_HDR_LEN
            except OSError as exc:
                log.warning("%s: no TAP offloads (%s); checksums in software", name, exc)
                self._bufsize += VNET_HDR_LEN
        os.set_blocking(fd, False)
        sink.link_opened(self)
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        read, fd, size = os.read, self.fd, self._bufsize
        deliver = self.sink.frame_received
        skip = VNET_HDR_LEN if self.vnet_hdr else 0
        for _ in range(READ_BATCH):
            try:
                frame = read(fd, size)
            except BlockingIOError:
                break
            except OSError as exc:
                log.error("%s: read failed: %s", self.name, exc)
                self.close()
                return
            if len(frame) <= skip:
                self.close()
                return
            # NEEDS_CSUM: the kernel left the L4 checksum partial (only the
            # pseudo-header sum), so there is nothing to verify. A TCP
            # super-segment (GSO hint) is just a large segment to our TCP.
            if skip:
                partial = bool(frame[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM)
                deliver(self, memoryview(frame)[skip:], partial)  # type: ignore[arg-type]
            else:
                deliver(self, frame)
            if self.fd < 0:
                return
        self.sink.batch_done()

    def send_frame(self, frame: bytes) -> None:
        try:
            if self.vnet_hdr and frame[12:14] == b"\x08\x00" and frame[23] == 6:
                self._send_tcp(frame)
            elif self.vnet_hdr and frame[12:14] == b"\x86\xdd" and frame[20] == 6:
                self._send_tcp(frame, v6=True)
            elif self.vnet_hdr and _udp_unfragmented(frame):
                self._send_udp(frame)
            elif self.vnet_hdr:
                os.writev(self.fd, (PLAIN_HDR, frame))
            else:
                os.write(self.fd, frame)
        except BlockingIOError:
            self.dropped += 1
        except (OSError, IndexError) as exc:
            # EIO while the interface is down, EINVAL for an oversized frame.
            self.dropped += 1
            log.debug("%s: write failed: %s", self.name, exc)

    def _send_tcp(self, frame: bytes, v6: bool = False) -> None:
        """TCP goes out with a partial checksum (the kernel trusts or completes it).

        Our TCP may skip computing checksums; the field gets the pseudo-header
        sum that NEEDS_CSUM requires. A packet larger than the MTU is marked
        GSO so the kernel cuts it into MTU-sized segments (TSO in software).
        Our IPv6 packets have no extension headers: TCP follows the fixed header.
        """
        ip_end = 54 if v6 else 14 + (frame[14] & 0x0F) * 4
        tcp_hlen = (frame[ip_end + 12] >> 4) * 4
        tcp_len = len(frame) - ip_end
        # The pseudo-header sum as _send_udp takes it: the address words as one
        # integer (2**16 is 1 mod 0xFFFF), a quarter of pseudo_header_sum's cost.
        partial = (int.from_bytes(frame[22:54] if v6 else frame[26:34], "big") + 6 + tcp_len
                   ) % 0xFFFF
        if len(frame) <= self.mtu + 14:
            gso_type, gso_size = VIRTIO_NET_HDR_GSO_NONE, 0
        else:
            gso_type = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
            gso_size = self.mtu - (ip_end - 14) - tcp_hlen
        hdr = VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, ip_end + tcp_hlen, gso_size, ip_end, 16
        )
        view = memoryview(frame)
        os.writev(
            self.fd,
            (hdr, view[: ip_end + 16], partial.to_bytes(2, "big"), view[ip_end + 18 :]),
        )

    def _send_udp(self, frame: bytes) -> None:
        """UDP goes out with a partial checksum, as TCP does: the kernel delivering
        it trusts it (or completes it when it forwards), so the NAT need not sum
        the payload. The field gets the pseudo-header sum whatever it held."""
        v6 = frame[12] == 0x86
        ip_end = 54 if v6 else 14 + (frame[14] & 0x0F) * 4
        addresses = frame[22:54] if v6 else frame[26:34]
        # The address words summed as one integer (2**16 is 1 mod 0xFFFF), and UDP's
        # own length: a frame switched from another VM may carry Ethernet padding.
        length = int.from_bytes(frame[ip_end + 4 : ip_end + 6], "big")
        partial = (int.from_bytes(addresses, "big") + PROTO_UDP + length) % 0xFFFF
        view = memoryview(frame)
        os.writev(self.fd, (
            _UDP_HDRS.get(ip_end) or _udp_hdr(ip_end),
            view[: ip_end + 6], partial.to_bytes(2, "big"), view[ip_end + 8 :],
        ))

    def close(self) -> None:
        if self.fd < 0:
            return
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
        self.sink.link_closed(self)
