"""Opening a TAP device: raw Ethernet frames through a file descriptor.

With IFF_VNET_HDR every frame carries a 10-byte virtio-net header. We use it
to skip checksums both ways (the kernel on the other side of the TAP is the
only peer, and nothing can corrupt a frame in between) and to exchange TCP
segments far larger than the MTU (TSO/GSO): the kernel splits or merges them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
PLAIN_HDR = VNET_HDR.pack(0, 0, 0, 0, 0, 0)  # complete frame, checksums included


def open_tap(ifname: str, vnet_hdr: bool = False, multi_queue: bool = False) -> int:
    """Create (or attach to) TAP ``ifname`` in the current network namespace.

    Returns a non-blocking fd; frames carry no packet-info header, and a
    virtio-net header when ``vnet_hdr`` is set. With ``multi_queue`` the fd is
    one more queue of a multi-queue TAP (the kernel refuses to mix the kinds).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        flags |= IFF_MULTI_QUEUE if multi_queue else 0
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def attach_tap(ifname: str) -> int:
    """Attach to existing TAP ``ifname`` (with a virtio-net header), as one more queue if
    it was made multi-queue (`ip tuntap add ... multi_queue`): the kernel answers
    EINVAL when the kinds differ, and /sys may show another namespace's devices."""
    try:
        return open_tap(ifname, vnet_hdr=True)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        try:
            return open_tap(ifname, vnet_hdr=True, multi_queue=True)
        except OSError:
            raise exc from None


def tap_error(ifname: str, exc: OSError) -> str:
    """What open_tap's failure means, in words (the kernel's errno alone misleads)."""
    if exc.errno == errno.EBUSY:
        return f"TAP {ifname} is already in use (served by another pyvpnkit?)"
    if exc.errno == errno.EINVAL:
        return f"{ifname} exists and is not a TAP device pyvpnkit can attach to"
    if exc.errno == errno.EPERM:
        return f"not allowed to create or attach TAP {ifname} (needs CAP_NET_ADMIN)"
    return f"cannot open TAP {ifname}: {exc.strerror}"


def enable_offloads(fd: int) -> None:
    """Let the kernel hand us partial checksums and TCP super-segments (TSO4, TSO6)."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
