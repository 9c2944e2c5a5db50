"""Host UDP sockets for the UDP NAT: one non-blocking socket per VM endpoint.

Sockets are unconnected (full cone) with IP_RECVERR, so ICMP errors for any
destination land in the error queue with the destination and the reporting
router; the NAT turns them into ICMP for the VM.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pyvpnkit.core.effects import Effect, UdpClose, UdpOpen, UdpSend
from pyvpnkit.core.nat.icmp_errors import kind_from_send_errno
from pyvpnkit.core.nat.udp_nat import UdpNat
from pyvpnkit.runtime.errqueue import enable_recverr, get_ttl, read_errqueue, set_ttl
from pyvpnkit.runtime.hostwatch import RouteErrors
from pyvpnkit.runtime.limits import EXHAUSTED, DescriptorBudget, reason_of
from pyvpnkit.runtime.nonblocking import nonblocking_socket

log = logging.getLogger(__name__)

MAX_READS_PER_WAKEUP = 256  # fairness: other flows and the VM link get a turn

# sendto() reports an ICMP error that arrived earlier (sk_err) instead of
# sending; those datagrams deserve one more try.
_PENDING_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


@dataclass(slots=True)
class _HostSocket:
    sock: socket.socket
    ttl: int  # the IP_TTL currently set
    last_dst: tuple[str, int] | None = None


class HostUdp:
    """Executes UdpOpen/UdpSend/UdpClose effects and feeds host events to the NAT."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        nat: UdpNat,
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] | None = None,
        budget: DescriptorBudget | None = None,
        outbound: tuple[str, str] = ("", ""),
        route_errors: RouteErrors | None = None,
    ) -> None:
        self._loop = loop
        self._nat = nat
        self._outbound = outbound  # source addresses (runtime/outbound.py)
        self._wake = wake
        self._clock = clock or loop.time
        self.budget = budget or DescriptorBudget(1 << 30, self._clock)
        self.route_errors = route_errors or RouteErrors()
        self._socks: dict[int, _HostSocket] = {}
        self._unopened: set[int] = set()  # open failed (EMFILE...): retried on send
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._socks)

    effects: ClassVar[tuple[type[Effect], ...]] = (UdpOpen, UdpSend, UdpClose)

    def execute(self, effect: Effect) -> None:
        if isinstance(effect, UdpSend):
            self._sendto(effect)
        elif isinstance(effect, UdpOpen):
            self._open(effect.flow_id, len(effect.vm[0]) == 16)
        elif isinstance(effect, UdpClose):
            self._close(effect.flow_id)

    def close(self) -> None:
        """Close every host socket (engine shutdown)."""
        for flow_id in list(self._socks):
            self._close(flow_id)

    def _open(self, flow_id: int, v6: bool) -> _HostSocket | None:
        """The flow's host socket, or None (counted) when no descriptor is to be had."""
        if not self.budget.take("udp"):
            self._unopened.add(flow_id)
            return None
        try:
            sock = nonblocking_socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            self._open_failed(flow_id, exc)
            return None
        try:
            enable_recverr(sock)
            sock.bind((self._outbound[v6] or ("::" if v6 else "0.0.0.0"), 0))
            ttl = get_ttl(sock)
            self._loop.add_reader(sock.fileno(), self._readable, flow_id)
        except OSError as exc:
            sock.close()
            self._open_failed(flow_id, exc)
            return None
        self._unopened.discard(flow_id)
        hs = _HostSocket(sock, ttl)
        self._socks[flow_id] = hs
        return hs

    def _open_failed(self, flow_id: int, exc: OSError) -> None:
        self.budget.give()
        self.stats["open_failed"] += 1
        self._unopened.add(flow_id)
        if exc.errno in EXHAUSTED:
            self.budget.refused("udp", reason_of(exc))
        else:
            log.warning("cannot set up a host UDP socket: %s", exc)

    def _close(self, flow_id: int) -> None:
        self._unopened.discard(flow_id)
        hs = self._socks.pop(flow_id, None)
        if hs is None:
            return
        self.budget.give()
        self._loop.remove_reader(hs.sock.fileno())
        hs.sock.close()

    def fail(self, effect: Effect) -> None:
        """An effect for this flow raised: drop its socket; the next datagram opens a new one."""
        flow_id = getattr(effect, "flow_id", None)
        if flow_id is not None:
            self._close(flow_id)

    def _sendto(self, eff: UdpSend) -> None:
        hs = self._socks.get(eff.flow_id)
        if hs is None:
            if eff.flow_id not in self._unopened:
                self.stats["send_unknown_flow"] += 1
                return
            hs = self._open(eff.flow_id, ":" in eff.dst_ip)
            if hs is None:
                # Out of descriptors: the VM hears "unreachable" rather than silence.
                self.stats["send_dropped"] += 1
                self._nat.host_error(
                    eff.flow_id, "host_unreachable", None, eff.dst_ip, eff.dst_port, self._clock()
                )
                self._wake()
                return
        sock = hs.sock
        if eff.ttl != hs.ttl:
            hs.ttl = set_ttl(sock, hs.ttl, eff.ttl, self.stats)
        dst = (eff.dst_ip, eff.dst_port)
        hs.last_dst = dst
        for attempt in (0, 1):
            try:
                sock.sendto(eff.payload, dst)
                self.stats["sent"] += 1
                return
            except (BlockingIOError, InterruptedError):
                self.stats["send_would_block"] += 1  # UDP may drop; the VM retries
                return
            except OSError as exc:
                if attempt == 0 and exc.errno in _PENDING_ERRNOS:
                    # An earlier ICMP error (sk_err), consumed by this call: report
                    # it from the error queue, then send this datagram after all.
                    if self._deliver_errors(eff.flow_id, hs, False, self._clock()):
                        self._wake()
                    continue
                self.stats["send_error"] += 1
                self.route_errors.note(exc.errno)
                kind = kind_from_send_errno(exc.errno)
                if kind is not None:
                    self._nat.host_error(
                        eff.flow_id, kind, None, eff.dst_ip, eff.dst_port, self._clock()
                    )
                    self._wake()
                else:
                    log.debug("UDP sendto %s failed: %s", dst, exc)
                return

    def _readable(self, flow_id: int) -> None:
        hs = self._socks.get(flow_id)
        if hs is None:
            return
        sock, view, nat = hs.sock, self._view, self._nat
        now = self._clock()
        got = 0
        check_errors = False
        refused = False
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n, addr = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # A pending ICMP error (sk_err); the error queue says for whom.
                check_errors = True
                refused = refused or exc.errno == errno.ECONNREFUSED
                continue
            got += 1
            # A view of the shared buffer: the NAT copies it into the reply it builds.
            nat.host_datagram(flow_id, addr[0], addr[1], view[:n], now)
            if flow_id not in self._socks:
                return  # the NAT evicted this flow while we were reading
        if got == 0:
            check_errors = True  # woken for EPOLLERR: the error queue is not empty
        if check_errors and self._deliver_errors(flow_id, hs, refused, now):
            got += 1
        if got:
            self._wake()

    def _deliver_errors(self, flow_id: int, hs: _HostSocket, refused: bool, now: float) -> bool:
        errors = read_errqueue(hs.sock)
        delivered = False
        for err in errors:
            kind = err.kind
            dst = err.dst or hs.last_dst
            if kind is None or dst is None:
                self.stats["errqueue_ignored"] += 1
                continue
            self._nat.host_error(flow_id, kind, err.offender, dst[0], dst[1], now, mtu=err.mtu)
            delivered = True
        if not errors and refused and hs.last_dst is not None:
            self._nat.host_error(
                flow_id, "port_unreachable", None, hs.last_dst[0], hs.last_dst[1], now
            )
            delivered = True
        return delivered


__all__ = ["HostUdp", "MAX_READS_PER_WAKEUP"]
