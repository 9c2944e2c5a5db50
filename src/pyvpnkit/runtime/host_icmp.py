"""Host ICMP sockets for the ICMP NAT (ping and traceroute -I from VMs).

Preferred: unprivileged ping sockets (SOCK_DGRAM/IPPROTO_ICMP), allowed for
the groups in ``net.ipv4.ping_group_range``. The kernel replaces the echo
identifier with the socket's own, so there is one socket per flow and replies
are mapped by socket; IP_RECVERR delivers TTL-exceeded and unreachable errors.
Fallback when that sysctl excludes us but we hold CAP_NET_RAW: one raw socket
with identifiers we allocate per flow. macOS and the BSDs let any user open
SOCK_DGRAM/IPPROTO_ICMP sockets, but these behave as raw ones (every ICMP
message, the IPv4 header included, the identifier left as sent): there they are
used the raw way ("dgram" mode). Otherwise echo requests are dropped
after one warning naming the sysctl. IPv6 echo uses the same two kinds of
socket with IPPROTO_ICMPV6 (the same sysctl governs both families); the
kernel computes ICMPv6 checksums on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pyvpnkit.core.effects import Effect, IcmpClose, IcmpEchoSend
from pyvpnkit.core.nat.icmp_errors import kind_from_icmp, kind_from_icmp6, kind_from_send_errno
from pyvpnkit.core.nat.icmp_nat import EchoIdents, IcmpNat
from pyvpnkit.runtime.errqueue import enable_recverr, get_ttl, read_errqueue, set_ttl
from pyvpnkit.runtime.hostwatch import RouteErrors
from pyvpnkit.runtime.limits import EXHAUSTED, DescriptorBudget, reason_of
from pyvpnkit.runtime.nonblocking import nonblocking_socket
from pyvpnkit.wire import icmp as icmpw
from pyvpnkit.wire import icmpv6 as icmp6
from pyvpnkit.wire.errors import ParseError

log = logging.getLogger(__name__)

PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"
SOL_RAW = 255
ICMP_FILTER = 1
MAX_READS_PER_WAKEUP = 256

Mode = Literal["ping", "raw", "dgram"]
# Only Linux's ping sockets map replies to the socket by identifier (and only
# Linux has ICMP_FILTER).
LINUX = sys.platform.startswith("linux")

def ping_group_range(path: str = PING_GROUP_RANGE) -> tuple[int, int] | None:
    """The (low, high) gids allowed to open ping sockets, or None if unreadable."""
    try:
        with open(path) as f:
            low, high = f.read().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def _try_socket(kind: int) -> bool:
    try:
        socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
    except OSError:
        return False
    return True


def choose_mode(prefer: Literal["auto", "ping", "raw"] = "auto") -> Mode | None:
    """Ping sockets when the sysctl allows us, else a raw socket when permitted."""
    if prefer in ("auto", "ping") and _try_socket(socket.SOCK_DGRAM):
        return "ping" if LINUX else "dgram"
    if prefer in ("auto", "raw") and _try_socket(socket.SOCK_RAW):
        return "raw"
    return None


def _echo_request(ident: int, seq: int, payload: bytes, v6: bool = False) -> bytes:
    if v6:  # the kernel fills in the ICMPv6 checksum (it covers the pseudo-header)
        return struct.pack("!BBHHH", icmp6.ECHO_REQUEST, 0, 0, ident, seq) + payload
    return icmpw.build_icmp(icmpw.ECHO_REQUEST, 0, icmpw.echo_rest(ident, seq), payload)


_ECHO_REPLIES = (icmpw.ECHO_REPLY, icmp6.ECHO_REPLY)
_ICMP6_ERRORS = (icmp6.DEST_UNREACHABLE, icmp6.PACKET_TOO_BIG, icmp6.TIME_EXCEEDED)


@dataclass(slots=True)
class _PingSocket:
    sock: socket.socket
    ttl: int


class HostIcmp:
    """Executes IcmpEchoSend/IcmpClose effects and feeds replies and errors to the NAT."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        nat: IcmpNat,
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] | None = None,
        mode: Literal["auto", "ping", "raw"] = "auto",
        budget: DescriptorBudget | None = None,
        route_errors: RouteErrors | None = None,
    ) -> None:
        self._loop = loop
        self._nat = nat
        self._wake = wake
        self._clock = clock or loop.time
        self.budget = budget or DescriptorBudget(1 << 30, self._clock)
        self.route_errors = route_errors or RouteErrors()
        self.mode: Mode | None = choose_mode(mode)
        if self.mode == "raw" and mode == "auto":
            rng = ping_group_range()
            log.info(
                "ping sockets not allowed (net.ipv4.ping_group_range %s excludes gid %d): "
                "using a raw ICMP socket",
                f"{rng[0]} {rng[1]}" if rng else "unreadable",
                os.getegid(),
            )
        self.stats: Counter[str] = Counter()
        self._warned = False
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        # ping mode
        self._socks: dict[int, _PingSocket] = {}
        # raw mode
        self._raw: socket.socket | None = None
        self._raw_ttl = 0
        self._raw6: socket.socket | None = None
        self._raw6_ttl = 0
        self._idents = EchoIdents(os.getpid())

    effects = (IcmpEchoSend, IcmpClose)

    def execute(self, effect: Effect) -> None:
        if isinstance(effect, IcmpEchoSend):
            self._on_echo(effect)
        elif isinstance(effect, IcmpClose):
            self._close_flow(effect.flow_id)

    def fail(self, effect: Effect) -> None:
        """An effect for this flow raised: drop its socket; the next echo opens a new one."""
        flow_id = getattr(effect, "flow_id", None)
        if flow_id is not None:
            self._close_flow(flow_id)

    def _on_echo(self, eff: IcmpEchoSend) -> None:
        if self.mode == "ping":
            self._ping_send(eff)
        elif self.mode is not None:
            self._raw_send(eff)
        else:
            self._warn_disabled()

    def close(self) -> None:
        for flow_id in list(self._socks):
            self._close_flow(flow_id)
        for raw in (self._raw, self._raw6):
            if raw is not None:
                self._loop.remove_reader(raw.fileno())
                raw.close()
        self._raw = self._raw6 = None
        self._idents.clear()


    def _warn_disabled(self) -> None:
        self.stats["echo_dropped"] += 1
        if self._warned:
            return
        self._warned = True
        rng = ping_group_range()
        shown = f"{rng[0]} {rng[1]}" if rng else "unreadable"
        log.warning(
            "ICMP echo from VMs is disabled: gid %d is outside net.ipv4.ping_group_range (%s) "
            "and raw sockets need CAP_NET_RAW; allow it with "
            "'sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"'",
            os.getegid(),
            shown,
        )

    # -- ping sockets: one per flow ------------------------------------------

    def _ping_send(self, eff: IcmpEchoSend) -> None:
        ps = self._socks.get(eff.flow_id)
        v6 = ":" in eff.dst_ip
        if ps is None:
            ps = self._ping_open(eff.flow_id, v6)
            if ps is None:
                self.stats["echo_dropped"] += 1
                return
        ps.ttl = set_ttl(ps.sock, ps.ttl, eff.ttl, self.stats)
        self._sendto(ps.sock, _echo_request(eff.ident, eff.seq, eff.payload, v6), eff)

    def _ping_open(self, flow_id: int, v6: bool) -> _PingSocket | None:
        if not self.budget.take("icmp"):
            return None
        try:
            family, proto = _family(v6)
            sock = nonblocking_socket(family, socket.SOCK_DGRAM, proto)
        except OSError as exc:
            self.budget.give()
            if exc.errno in EXHAUSTED:
                self.budget.refused("icmp", reason_of(exc))
            else:
                log.warning("cannot open an ICMP ping socket: %s", exc)
            return None
        try:
            enable_recverr(sock)
            ttl = get_ttl(sock)
            self._loop.add_reader(sock.fileno(), self._ping_readable, flow_id)
        except OSError as exc:
            sock.close()
            self.budget.give()
            log.warning("cannot set up an ICMP ping socket: %s", exc)
            return None
        ps = _PingSocket(sock, ttl)
        self._socks[flow_id] = ps
        return ps

    def _ping_readable(self, flow_id: int) -> None:
        ps = self._socks.get(flow_id)
        if ps is None:
            return
        now = self._clock()
        got = 0
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n, addr = ps.sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # a pending ICMP error: read below from the error queue
            # Ping sockets return the ICMP message without the IP header.
            if n >= 8 and self._buf[0] in _ECHO_REPLIES:
                seq = int.from_bytes(self._buf[6:8], "big")
                self._nat.host_echo_reply(flow_id, addr[0], seq, bytes(self._view[8:n]), now)
                got += 1
                if flow_id not in self._socks:
                    return
        for err in read_errqueue(ps.sock):
            kind = err.kind
            if kind is None or len(err.data) < 8:
                continue
            seq = int.from_bytes(err.data[6:8], "big")
            self._nat.host_error(flow_id, kind, err.offender, seq, now)
            got += 1
        if got:
            self._wake()

    # -- one raw socket, our own identifiers ----------------------------------

    def _raw_socket(self, v6: bool = False) -> socket.socket | None:
        """The raw socket of the family (opened on first use), or None."""
        current = self._raw6 if v6 else self._raw
        if current is not None:
            return current
        what = "ICMPv6" if v6 else "ICMP"
        family, proto = _family(v6)
        try:
            kind = socket.SOCK_DGRAM if self.mode == "dgram" else socket.SOCK_RAW
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            log.warning("cannot open a raw %s socket: %s", what, exc)
            return None
        try:
            sock.setblocking(False)
            if not v6 and LINUX:
                wanted = (1 << icmpw.ECHO_REPLY) | (1 << icmpw.DEST_UNREACHABLE)
                wanted |= 1 << icmpw.TIME_EXCEEDED
                # ICMP_FILTER (Linux) blocks the types whose bit is set; a host
                # without it wakes us for other types too, which parsing drops.
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~wanted & 0xFFFFFFFF))
            ttl = get_ttl(sock)
            self._loop.add_reader(sock.fileno(), self._raw6_readable if v6 else self._raw_readable)
        except OSError as exc:
            sock.close()
            log.warning("cannot set up a raw %s socket: %s", what, exc)
            return None
        if v6:
            self._raw6, self._raw6_ttl = sock, ttl
        else:
            self._raw, self._raw_ttl = sock, ttl
        return sock

    def _raw_send(self, eff: IcmpEchoSend) -> None:
        v6 = ":" in eff.dst_ip
        sock = self._raw_socket(v6)
        ident = self._idents.ident(eff.flow_id, eff.dst_ip)
        if sock is None or ident is None:
            self.stats["echo_dropped"] += 1
            return
        if v6:
            self._raw6_ttl = set_ttl(sock, self._raw6_ttl, eff.ttl, self.stats)
        else:
            self._raw_ttl = set_ttl(sock, self._raw_ttl, eff.ttl, self.stats)
        self._sendto(sock, _echo_request(ident, eff.seq, eff.payload, v6), eff)

    def _raw6_readable(self) -> None:
        sock = self._raw6
        if sock is None:
            return
        now = self._clock()
        got = 0
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n, addr = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if self._raw6_message(self._view[:n], addr[0].partition("%")[0], now):
                got += 1
        if got:
            self._wake()

    def _raw6_message(self, msg: memoryview, src: str, now: float) -> bool:
        """One ICMPv6 message (raw IPv6 sockets give no IP header); True when it was ours."""
        if len(msg) < 8:
            return False
        typ, code = msg[0], msg[1]
        if typ == icmp6.ECHO_REPLY:
            ident, seq = struct.unpack_from("!HH", msg, 4)
            flow_id = self._idents.flow(ident, src)
            if flow_id is None:
                return False
            self._nat.host_echo_reply(flow_id, src, seq, bytes(msg[8:]), now)
            return True
        # An error quotes our IPv6 packet: fixed header, then our echo request.
        quoted = msg[8:]
        if typ not in _ICMP6_ERRORS or len(quoted) < 48 or quoted[6] != 58 or quoted[40] != 128:
            return False
        kind = kind_from_icmp6(typ, code)
        dst = socket.inet_ntop(socket.AF_INET6, bytes(quoted[24:40]))
        ident, seq = struct.unpack_from("!HH", quoted, 44)
        flow_id = self._idents.flow(ident, dst)
        if kind is None or flow_id is None:
            return False
        self._nat.host_error(flow_id, kind, src, seq, now)
        return True

    def _raw_readable(self) -> None:
        sock = self._raw
        if sock is None:
            return
        now = self._clock()
        got = 0
        buf = self._buf
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if self._raw_packet(n, addr[0], now):
                got += 1
        if got:
            self._wake()

    def _raw_packet(self, n: int, src: str, now: float) -> bool:
        """Dispatch one received IPv4+ICMP packet; True when it was for one of our flows."""
        try:
            report = icmpw.parse_echo_report(self._view[:n])
        except ParseError:
            return False
        if report.quoted_dst is None:  # an echo reply
            flow_id = self._idents.flow(report.ident, src)
            if flow_id is None:
                return False
            self._nat.host_echo_reply(flow_id, src, report.seq, bytes(report.payload), now)
            return True
        kind = kind_from_icmp(report.type, report.code)
        flow_id = self._idents.flow(report.ident, socket.inet_ntoa(report.quoted_dst))
        if kind is None or flow_id is None:
            return False
        self._nat.host_error(flow_id, kind, src, report.seq, now)
        return True

    # -- shared ------------------------------------------------------------------

    def _sendto(self, sock: socket.socket, message: bytes, eff: IcmpEchoSend) -> None:
        for attempt in (0, 1):
            try:
                sock.sendto(message, (eff.dst_ip, 0))
                self.stats["echo_sent"] += 1
                return
            except (BlockingIOError, InterruptedError):
                self.stats["echo_would_block"] += 1
                return
            except OSError as exc:
                if attempt == 0:
                    continue  # maybe a pending error from an earlier ICMP message
                self.stats["echo_send_error"] += 1
                self.route_errors.note(exc.errno)
                kind = kind_from_send_errno(exc.errno)
                if kind is not None:
                    self._nat.host_error(eff.flow_id, kind, None, eff.seq, self._clock())
                    self._wake()
                else:
                    log.debug("ICMP sendto %s failed: %s", eff.dst_ip, exc)

    def _close_flow(self, flow_id: int) -> None:
        ps = self._socks.pop(flow_id, None)
        if ps is not None:
            self.budget.give()
            self._loop.remove_reader(ps.sock.fileno())
            ps.sock.close()
        self._idents.forget(flow_id)


def _family(v6: bool) -> tuple[int, int]:
    if v6:
        return socket.AF_INET6, socket.IPPROTO_ICMPV6
    return socket.AF_INET, socket.IPPROTO_ICMP


__all__ = [
    "HostIcmp",
    "choose_mode",
    "ping_group_range",
]
