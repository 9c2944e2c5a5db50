"""Every VM transport behind one call: `start_listener(kind, url, sink, mtu)`."""

from __future__ import annotations

from pyvpnkit.links.base import MAX_SEND_QUEUE, FrameSink, Link, Listener, VifError
from pyvpnkit.links.packet import start_bess_listener, start_vfkit_listener
from pyvpnkit.links.stdio import open_stdio
from pyvpnkit.links.stream import start_stream_listener
from pyvpnkit.links.url import ListenURLError, parse_listen_url
from pyvpnkit.links.vpnkit import start_vpnkit_listener
from pyvpnkit.wire.framing import QEMU

KINDS = ("qemu", "vpnkit", "bess", "vfkit", "stdio")


async def start_listener(kind: str, url: str, sink: FrameSink, mtu: int) -> Listener:
    """Listen on ``url`` for VMs speaking ``kind``; every peer becomes a Link of ``sink``.

    Raises ListenURLError for a URL the kind cannot use, OSError when binding fails
    (including AF_VSOCK missing on this host).
    """
    addr = parse_listen_url(url, kind)
    if kind == "qemu":
        return await start_stream_listener(kind, url, addr, sink, mtu, QEMU)
    if kind == "vpnkit":
        return await start_vpnkit_listener(url, addr, sink, mtu)
    if kind == "bess":
        return await start_bess_listener(url, addr, sink, mtu)
    if kind == "vfkit":
        return await start_vfkit_listener(url, addr, sink, mtu)
    return await open_stdio(sink, mtu)


__all__ = [
    "KINDS",
    "MAX_SEND_QUEUE",
    "FrameSink",
    "Link",
    "Listener",
    "ListenURLError",
    "VifError",
    "parse_listen_url",
    "start_listener",
]
