"""An in-test "VM": a minimal guest that talks to pyvpnkit over any of its transports.

It speaks a link's framing over a socket (or a pair of pipes) and then does
what a booting guest does: DHCP for an address, ARP for the gateway, and TCP
through the NAT. The TCP side is pyvpnkit's own sans-I/O TcpConnection in
active-open mode, so the NAT faces a complete TCP (windows, delayed ACKs,
retransmission timers), not a hand-rolled happy path.

As a script (run inside the namespace where pyvpnkit listens) it does
DHCP + ARP + one download and prints one JSON line::

    vmclient.py KIND URL --fetch HOST:PORT:SIZE [--uuid U] [--own-path P]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pyvpnkit.core.tcp import connection as tcpc
from pyvpnkit.core.tcp.events import Closed, DataReceived, Established, PeerClosed, Reset, TimedOut
from pyvpnkit.core.tcp.settings import TcpSettings
from pyvpnkit.links.url import parse_listen_url
from pyvpnkit.wire import dhcp as dhcpw
from pyvpnkit.wire import vmnet
from pyvpnkit.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ethernet import (
    BROADCAST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    build_ethernet,
    parse_ethernet,
)
from pyvpnkit.wire.framing import QEMU, U16LE, Framing
from pyvpnkit.wire.icmp import ECHO_REPLY, ECHO_REQUEST, build_icmp, echo_rest, parse_icmp
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from pyvpnkit.wire.tcp import parse_tcp
from pyvpnkit.wire.udp import build_udp, parse_udp

ZERO_IP = b"\0\0\0\0"
ALL_ONES = b"\xff\xff\xff\xff"
T = TypeVar("T")


class LinkClosed(Exception):
    """The switch closed our link."""


class VifRefused(Exception):
    """The vpnkit server answered the Ethernet command with a disconnect."""


# -- frame transports -------------------------------------------------------------


class FrameIO(Protocol):
    def send(self, frame: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes | None:
        """One frame, or None after ``timeout`` seconds; LinkClosed at end of stream."""
        ...

    def close(self) -> None: ...


class StreamIO:
    """Length-prefixed frames over a byte stream (a socket, or two pipe fds)."""

    def __init__(self, rfd: int, wfd: int, framing: Framing, owner: object = None) -> None:
        self.rfd, self.wfd, self.framing = rfd, wfd, framing
        self.owner = owner  # keeps the socket object (and its fd) alive
        self._decoder = framing.decoder(framing.header_limit)
        self._frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.send_raw(self.framing.encode(frame))

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def read_exact(self, n: int, timeout: float) -> bytes:
        """Handshake bytes, read before any framing applies."""
        buf = b""
        deadline = time.monotonic() + timeout
        while len(buf) < n:
            if not select.select([self.rfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"got {len(buf)} of {n} handshake bytes")
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                raise LinkClosed(f"closed after {len(buf)} of {n} handshake bytes")
            buf += chunk
        return buf

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while not self._frames:
            left = deadline - time.monotonic()
            if not select.select([self.rfd], [], [], max(0.0, left))[0]:
                return None
            try:
                chunk = os.read(self.rfd, 1 << 16)
            except ConnectionResetError as exc:
                raise LinkClosed(str(exc)) from exc
            if not chunk:
                raise LinkClosed("end of stream")
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.pop(0)

    def close(self) -> None:
        if isinstance(self.owner, socket.socket):
            self.owner.close()
        else:
            for fd in {self.rfd, self.wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


class PacketIO:
    """One frame per message (SOCK_SEQPACKET for bess, SOCK_DGRAM for vfkit)."""

    def __init__(self, sock: socket.socket, own_path: str | None = None) -> None:
        self.sock = sock
        self.own_path = own_path

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def recv(self, timeout: float) -> bytes | None:
        if not select.select([self.sock], [], [], timeout)[0]:
            return None
        try:
            data = self.sock.recv(1 << 17)
        except ConnectionResetError as exc:
            raise LinkClosed(str(exc)) from exc
        if not data and self.sock.type == socket.SOCK_SEQPACKET:
            raise LinkClosed("end of stream")
        return data

    def close(self) -> None:
        self.sock.close()
        if self.own_path:
            try:
                os.unlink(self.own_path)
            except FileNotFoundError:
                pass


def _stream_socket(url: str) -> socket.socket:
    addr = parse_listen_url(url)
    if addr.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    elif addr.scheme == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise ValueError(f"{url}: not a stream URL this client can dial")
    sock.connect(addr.sockaddr())
    return sock


def connect_qemu(url: str) -> StreamIO:
    sock = _stream_socket(url)
    return StreamIO(sock.fileno(), sock.fileno(), QEMU, sock)


@dataclass
class VpnkitHello:
    server_version: int
    server_commit: bytes
    vif: vmnet.VifResponse


def connect_vpnkit(
    url: str, uuid: str | None, preferred_ip: bytes | None = None, timeout: float = 5.0
) -> tuple[StreamIO, VpnkitHello]:
    """Dial, do the vmnet handshake (init, Ethernet command, VIF reply), return the data link."""
    sock = _stream_socket(url)
    io = StreamIO(sock.fileno(), sock.fileno(), U16LE, sock)
    try:
        io.send_raw(vmnet.encode_init(b"vmclient".ljust(40, b"0")))
        init = vmnet.decode_init(io.read_exact(vmnet.INIT_LEN, timeout))
        cmd: vmnet.Command
        if preferred_ip is None:
            cmd = vmnet.EthernetCommand(uuid)
        else:
            cmd = vmnet.PreferredIPv4Command(uuid, preferred_ip)
        io.send_raw(vmnet.encode_command(cmd))
        resp = vmnet.decode_response(io.read_exact(vmnet.RESPONSE_LEN, timeout))
    except BaseException:
        io.close()
        raise
    if isinstance(resp, vmnet.DisconnectResponse):
        io.close()
        raise VifRefused(resp.reason)
    return io, VpnkitHello(init.version, init.commit, resp)


def vmnet_go_discover(mac: bytes) -> bytes:
    """The DHCPDISCOVER frame vpnkit's Go vmnet client (rootlesskit's parent) sends.

    Byte for byte as go/pkg/vmnet builds it: XID 1, broadcast flag, only option
    53, no padding, and an IPv4 header checksum of 0 ("as if offloaded").
    """
    bootp = bytes([1, 1, 6, 0, 1, 0, 0, 0, 0, 0, 0x80, 0]) + bytes(16) + mac + bytes(202)
    dhcp = bootp + b"\x63\x82\x53\x63\x35\x01\x01\xff"
    udp = struct.pack("!HHHH", 68, 67, 8 + len(dhcp), 0) + dhcp
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x7F61, 0, 64, 17, 0, ZERO_IP, ALL_ONES
    )
    return build_ethernet(BROADCAST, mac, ETHERTYPE_IPV4, ip + udp)


def vmnet_go_offer(frame: bytes, mac: bytes) -> bytes | None:
    """The offered address if ``frame`` is what the Go vmnet client accepts as its answer."""
    if len(frame) < 14 or frame[:6] not in (BROADCAST, mac) or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    if len(ip) < 20:
        return None
    udp = ip[(ip[0] & 0xF) * 4 :]
    data = udp[8:]
    if udp[:4] != b"\x00\x43\x00\x44" or len(data) < 243 or data[0] != 2:
        return None
    return data[16:20] if data[4:8] == b"\x01\x00\x00\x00" else None


def rootlesskit_parent(url: str, uuid: str, timeout: float = 10.0) -> tuple[StreamIO, bytes, bytes]:
    """What rootlesskit's parent does: handshake, DHCP for the address, keep the link open.

    Returns (the open link, MAC, IP); the caller holds the link and never reads it again.
    """
    io, hello = connect_vpnkit(url, uuid, timeout=timeout)
    mac = hello.vif.mac
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        io.send(vmnet_go_discover(mac))  # resent every second, as the Go client does
        end = time.monotonic() + min(1.0, left)
        while (wait := end - time.monotonic()) > 0:
            frame = io.recv(wait)
            ip = vmnet_go_offer(frame, mac) if frame is not None else None
            if ip is not None:
                return io, mac, ip
    io.close()
    raise TimeoutError(f"no DHCP answer to the vmnet client's DISCOVER within {timeout} s")


def connect_bess(url: str) -> PacketIO:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(parse_listen_url(url, "bess").sockaddr())
    return PacketIO(sock)


def connect_vfkit(url: str, own_path: str) -> PacketIO:
    """vfkit's side: a datagram socket bound to its own path so the switch can answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(own_path)
    sock.connect(parse_listen_url(url, "vfkit").sockaddr())
    return PacketIO(sock, own_path)


def pipe_io(rfd: int, wfd: int) -> StreamIO:
    """The stdio transport seen from the parent: u16-LE frames over the child's pipes."""
    return StreamIO(rfd, wfd, U16LE)


# -- the guest --------------------------------------------------------------------


@dataclass
class Lease:
    ip: bytes
    router: bytes
    dns: bytes
    netmask: bytes
    mtu: int | None
    server_id: bytes
    lease_time: int


def random_mac(rng: random.Random | None = None) -> bytes:
    r = rng or random.Random()
    return bytes([0x52, 0x54, 0x00, r.randrange(256), r.randrange(256), r.randrange(256)])


def dotted(ip: bytes) -> str:
    return socket.inet_ntoa(ip)


class Guest:
    """A guest on one link: sends frames, waits for the ones it wants, answers ARP/ping."""

    def __init__(self, io: FrameIO, mac: bytes, name: str = "vm") -> None:
        self.io = io
        self.mac = mac
        self.name = name
        self.ip: bytes | None = None
        self.lease: Lease | None = None
        self.gateway_mac: bytes | None = None
        self.rng = random.Random()

    # -- frames ---------------------------------------------------------------

    def send_eth(self, dst_mac: bytes, ethertype: int, payload: bytes) -> None:
        self.io.send(build_ethernet(dst_mac, self.mac, ethertype, payload))

    def send_ip(self, dst_mac: bytes, packet: bytes) -> None:
        self.send_eth(dst_mac, ETHERTYPE_IPV4, packet)

    def expect(self, pick: Callable[[bytes], T | None], timeout: float, what: str) -> T:
        """Read frames until ``pick`` returns something; others get the guest's usual answers."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {what} within {timeout} s")
            frame = self.io.recv(left)
            if frame is None:
                continue
            got = pick(frame)
            if got is not None:
                return got
            self.background(frame)

    def background(self, frame: bytes) -> None:
        """What any guest does unasked: answer ARP for its address and pings to it."""
        if self.ip is None:
            return
        arp = arp_of(frame)
        if arp is not None and arp.op == ARP_REQUEST and arp.tpa == self.ip:
            self.send_eth(
                arp.sha, ETHERTYPE_ARP, build_arp(ARP_REPLY, self.mac, self.ip, arp.sha, arp.spa)
            )
            return
        pkt = ipv4_of(frame)
        if pkt is not None and pkt.dst == self.ip and pkt.proto == PROTO_ICMP:
            try:
                msg = parse_icmp(pkt.payload)
            except ParseError:
                return
            if msg.type == ECHO_REQUEST:
                reply = build_icmp(ECHO_REPLY, 0, msg.rest, msg.payload)
                src_mac = parse_ethernet(frame).src
                self.send_ip(src_mac, build_ipv4(self.ip, pkt.src, PROTO_ICMP, reply))

    def drain_background(self, seconds: float) -> None:
        """Keep answering ARP/ping for a while (the test's other guest may be asking)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self.io.recv(left)
            if frame is not None:
                self.background(frame)

    # -- DHCP -----------------------------------------------------------------

    def dhcp(self, timeout: float = 5.0) -> Lease:
        """DISCOVER, OFFER, REQUEST, ACK; the address becomes this guest's."""
        xid = self.rng.getrandbits(32)
        params = bytes([dhcpw.OPT_SUBNET_MASK, dhcpw.OPT_ROUTER, dhcpw.OPT_DNS, dhcpw.OPT_MTU])
        self._send_dhcp(
            xid,
            {dhcpw.OPT_MESSAGE_TYPE: bytes([dhcpw.DHCPDISCOVER]), dhcpw.OPT_PARAM_REQUEST: params},
        )
        offer = self.expect(self._dhcp_reply(xid, {dhcpw.DHCPOFFER}), timeout, "DHCPOFFER")
        server = offer.server_id
        assert server is not None, "OFFER without a server identifier"
        self._send_dhcp(
            xid,
            {
                dhcpw.OPT_MESSAGE_TYPE: bytes([dhcpw.DHCPREQUEST]),
                dhcpw.OPT_REQUESTED_IP: offer.yiaddr,
                dhcpw.OPT_SERVER_ID: server,
                dhcpw.OPT_PARAM_REQUEST: params,
            },
        )
        ack = self.expect(self._dhcp_reply(xid, {dhcpw.DHCPACK, dhcpw.DHCPNAK}), timeout, "DHCPACK")
        if ack.message_type != dhcpw.DHCPACK:
            raise RuntimeError(f"{self.name}: DHCP NAK: {ack.options.get(dhcpw.OPT_MESSAGE)!r}")
        if ack.yiaddr != offer.yiaddr:
            raise RuntimeError(
                f"{self.name}: ACK for {dotted(ack.yiaddr)}, offered {dotted(offer.yiaddr)}"
            )
        o = ack.options
        mtu = o.get(dhcpw.OPT_MTU)
        self.lease = Lease(
            ip=ack.yiaddr,
            router=o.get(dhcpw.OPT_ROUTER, b"")[:4],
            dns=o.get(dhcpw.OPT_DNS, b"")[:4],
            netmask=o.get(dhcpw.OPT_SUBNET_MASK, b""),
            mtu=int.from_bytes(mtu, "big") if mtu else None,
            server_id=server,
            lease_time=int.from_bytes(o.get(dhcpw.OPT_LEASE_TIME, b"\0\0\0\0"), "big"),
        )
        self.ip = ack.yiaddr
        return self.lease

    def _send_dhcp(self, xid: int, options: dict[int, bytes]) -> None:
        msg = dhcpw.DhcpMessage(
            op=dhcpw.BOOTREQUEST, xid=xid, chaddr=self.mac.ljust(16, b"\0"), options=options
        )
        udp = build_udp(ZERO_IP, ALL_ONES, 68, 67, dhcpw.build_dhcp(msg))
        self.send_ip(BROADCAST, build_ipv4(ZERO_IP, ALL_ONES, PROTO_UDP, udp, dont_fragment=False))

    def _dhcp_reply(self, xid: int, types: set[int]) -> Callable[[bytes], dhcpw.DhcpMessage | None]:
        def pick(frame: bytes) -> dhcpw.DhcpMessage | None:
            pkt = ipv4_of(frame)
            if pkt is None or pkt.proto != PROTO_UDP:
                return None
            try:
                dgram = parse_udp(pkt.payload, pkt.src, pkt.dst)
                if (dgram.src_port, dgram.dst_port) != (67, 68):
                    return None
                msg = dhcpw.parse_dhcp(dgram.payload)
            except ParseError:
                return None
            ok = msg.op == dhcpw.BOOTREPLY and msg.xid == xid and msg.message_type in types
            return msg if ok and msg.hwaddr == self.mac else None

        return pick

    # -- ARP, ICMP, UDP -------------------------------------------------------

    def arp(self, ip: bytes, timeout: float = 5.0) -> bytes:
        """who-has ``ip``: the MAC in the first reply."""
        assert self.ip is not None, "ARP needs an address (run dhcp() first)"
        self.send_eth(
            BROADCAST, ETHERTYPE_ARP, build_arp(ARP_REQUEST, self.mac, self.ip, bytes(6), ip)
        )

        def pick(frame: bytes) -> bytes | None:
            a = arp_of(frame)
            ok = a is not None and a.op == ARP_REPLY and a.spa == ip and a.tha == self.mac
            return a.sha if ok and a is not None else None

        return self.expect(pick, timeout, f"ARP reply for {dotted(ip)}")

    def gateway(self) -> bytes:
        assert self.lease is not None
        self.gateway_mac = self.arp(self.lease.router)
        return self.gateway_mac

    def ping(self, ip: bytes, dst_mac: bytes, payload: bytes, timeout: float = 5.0) -> bytes:
        """ICMP echo; returns the MAC the reply came from."""
        assert self.ip is not None
        ident, seq = self.rng.getrandbits(16), self.rng.getrandbits(16)
        msg = build_icmp(ECHO_REQUEST, 0, echo_rest(ident, seq), payload)
        self.send_ip(dst_mac, build_ipv4(self.ip, ip, PROTO_ICMP, msg))

        def pick(frame: bytes) -> bytes | None:
            pkt = ipv4_of(frame)
            if pkt is None or pkt.proto != PROTO_ICMP or pkt.src != ip or pkt.dst != self.ip:
                return None
            try:
                m = parse_icmp(pkt.payload)
            except ParseError:
                return None
            ok = m.type == ECHO_REPLY and m.rest == echo_rest(ident, seq) and m.payload == payload
            return parse_ethernet(frame).src if ok else None

        return self.expect(pick, timeout, f"echo reply from {dotted(ip)}")

    def send_udp(self, dst_mac: bytes, ip: bytes, sport: int, dport: int, payload: bytes) -> None:
        assert self.ip is not None
        udp = build_udp(self.ip, ip, sport, dport, payload)
        self.send_ip(dst_mac, build_ipv4(self.ip, ip, PROTO_UDP, udp))

    def recv_udp(self, dport: int, timeout: float = 5.0) -> tuple[bytes, bytes, int, bytes]:
        """(source MAC, source IP, source port, payload) of the next datagram to ``dport``."""

        def pick(frame: bytes) -> tuple[bytes, bytes, int, bytes] | None:
            pkt = ipv4_of(frame)
            if pkt is None or pkt.proto != PROTO_UDP or pkt.dst != self.ip:
                return None
            try:
                d = parse_udp(pkt.payload, pkt.src, pkt.dst)
            except ParseError:
                return None
            if d.dst_port != dport:
                return None
            return parse_ethernet(frame).src, pkt.src, d.src_port, bytes(d.payload)

        return self.expect(pick, timeout, f"UDP datagram to port {dport}")

    # -- TCP through the NAT --------------------------------------------------

    def fetch(self, ip: bytes, port: int, request: bytes, timeout: float = 30.0) -> bytes:
        """Open a TCP connection, send ``request``, read until the server closes, close."""
        assert self.ip is not None and self.lease is not None
        gw = self.gateway_mac or self.gateway()
        mtu = self.lease.mtu or 1500
        sport = self.rng.randrange(32768, 61000)
        conn = tcpc.TcpConnection(
            local_ip=self.ip,
            local_port=sport,
            remote_ip=ip,
            remote_port=port,
            iss=self.rng.getrandbits(32),
            settings=TcpSettings(mss=mtu - 40, keepalive=None, delayed_ack=0.0),
        )
        data = bytearray()
        deadline = time.monotonic() + timeout
        conn.connect(time.monotonic())
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"{self.name}: TCP to {dotted(ip)}:{port} stuck in "
                    f"{conn.state} after {len(data)} bytes"
                )
            due = conn.next_deadline()
            if due is not None and now >= due:
                conn.handle_timer(now)
            packets, events = conn.drain()
            for p in packets:
                self.send_ip(gw, p)
            for ev in events:
                if isinstance(ev, Established):
                    conn.send(request, now)
                elif isinstance(ev, DataReceived):
                    data += ev.data
                    conn.consumed(len(ev.data), now)
                elif isinstance(ev, PeerClosed):
                    conn.shutdown(now)
                elif isinstance(ev, (Reset, TimedOut)):
                    raise ConnectionError(
                        f"{self.name}: TCP {type(ev).__name__} after {len(data)} bytes"
                    )
                elif isinstance(ev, Closed):
                    return bytes(data)
            if packets or events:
                continue
            due = conn.next_deadline()
            wait = min(deadline, due if due is not None else deadline) - now
            frame = self.io.recv(max(wait, 0.0))
            if frame is None:
                continue
            pkt = ipv4_of(frame)
            if pkt is not None and pkt.proto == PROTO_TCP and pkt.src == ip and pkt.dst == self.ip:
                try:
                    seg = parse_tcp(pkt.payload, pkt.src, pkt.dst)
                except ParseError:
                    continue
                if seg.src_port == port and seg.dst_port == sport:
                    conn.handle_segment(seg, time.monotonic())
                    continue
            self.background(frame)

    def close(self) -> None:
        self.io.close()


def arp_of(frame: bytes) -> ArpPacket | None:
    try:
        eth = parse_ethernet(frame)
        return parse_arp(eth.payload) if eth.ethertype == ETHERTYPE_ARP else None
    except ParseError:
        return None


def ipv4_of(frame: bytes) -> IPv4Packet | None:
    try:
        eth = parse_ethernet(frame)
        return parse_ipv4(eth.payload) if eth.ethertype == ETHERTYPE_IPV4 else None
    except ParseError:
        return None


# -- script -----------------------------------------------------------------------


def open_guest(
    kind: str, url: str, mac: bytes | None, uuid: str | None, own_path: str | None
) -> tuple[Guest, dict[str, object]]:
    info: dict[str, object] = {}
    io: FrameIO
    if kind == "qemu":
        io = connect_qemu(url)
    elif kind == "vpnkit":
        io, hello = connect_vpnkit(url, uuid)
        mac = hello.vif.mac
        info.update(
            vif_mtu=hello.vif.mtu,
            vif_max_packet=hello.vif.max_packet_size,
            server_version=hello.server_version,
        )
    elif kind == "bess":
        io = connect_bess(url)
    elif kind == "vfkit":
        if own_path is None:
            raise SystemExit("vfkit needs --own-path")
        io = connect_vfkit(url, own_path)
    else:
        raise SystemExit(f"unknown kind {kind}")
    return Guest(io, mac or random_mac(), kind), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("kind", choices=["qemu", "vpnkit", "bess", "vfkit"])
    p.add_argument("url")
    p.add_argument("--fetch", required=True, metavar="HOST:PORT:SIZE")
    p.add_argument("--uuid")
    p.add_argument("--own-path")
    p.add_argument("--mac")
    args = p.parse_args(argv)
    host, port, size = args.fetch.split(":")
    mac = bytes.fromhex(args.mac.replace(":", "")) if args.mac else None
    t0 = time.monotonic()
    guest, info = open_guest(args.kind, args.url, mac, args.uuid, args.own_path)
    try:
        lease = guest.dhcp()
        gw_mac = guest.gateway()
        body = guest.fetch(socket.inet_aton(host), int(port), f"GET {int(size)}\n".encode())
    finally:
        guest.close()
    info.update(
        mac=guest.mac.hex(":"),
        ip=dotted(lease.ip),
        router=dotted(lease.router),
        dns=dotted(lease.dns),
        netmask=dotted(lease.netmask),
        mtu=lease.mtu,
        gateway_mac=gw_mac.hex(":"),
        bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        seconds=round(time.monotonic() - t0, 3),
    )
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
