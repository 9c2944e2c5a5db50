"""Host TCP sockets for the TCP NAT: connect, relay, half-close, reset.

Raw non-blocking sockets with add_reader/add_writer keep the per-read cost
low. Every byte the kernel takes is reported back (``host_sent``) so the
window offered to the VM follows what the host side can absorb.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic  # asyncio's loop.time(), without its Python-level call
from typing import Any, ClassVar

from pyvpnkit.core.effects import (
    Effect,
    TcpCloseHost,
    TcpOpen,
    TcpPauseReading,
    TcpResumeReading,
    TcpShutdown,
    TcpWrite,
)
from pyvpnkit.core.nat.tcp_nat import READ_CHUNK, TcpNat
from pyvpnkit.runtime.hostwatch import RouteErrors
from pyvpnkit.runtime.limits import EXHAUSTED, DescriptorBudget, reason_of
from pyvpnkit.runtime.nonblocking import nonblocking_socket
from pyvpnkit.runtime.outbound import bind_source

log = logging.getLogger("pyvpnkit.tcp")

_LINGER_RESET = struct.pack("ii", 1, 0)
# The idle time before keepalive probes: TCP_KEEPIDLE on Linux, TCP_KEEPALIVE on macOS.
_KEEPIDLE: int | None = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
# A connect that fails so reaches the VM as the ICMP error that fails its own connect
# with the same errno; any other failure is an RST (ECONNREFUSED in the VM).
_UNREACHABLE = {errno.ENETUNREACH: "net_unreachable", errno.EHOSTUNREACH: "host_unreachable"}


@dataclass(eq=False)
class _HostConn:
    fid: int
    sock: socket.socket
    connected: bool = False
    reading: bool = False
    paused: bool = False
    wbuf: bytearray = field(default_factory=bytearray)
    shutdown_after_flush: bool = False
    close_after_flush: bool = False
    peek: bool = True  # a short read is followed by one more, until that finds nothing
    timeout: asyncio.TimerHandle | None = None
    source: tuple[Any, ...] | None = None  # our host address, port 0 (hostwatch checks it)


def keepalive_options(keepalive: tuple[float, float, int] | None) -> list[tuple[int, int, int]]:
    """setsockopt triples that make host connections probe as --tcp-keepalive says.

    None (the OS's defaults, which --tcp-keepalive's default matches) costs no call
    per connection. TCP_KEEPINTVL and TCP_KEEPCNT have these names on Linux and macOS.
    """
    if keepalive is None or _KEEPIDLE is None:
        return []
    idle, interval, count = keepalive
    return [(socket.IPPROTO_TCP, _KEEPIDLE, max(1, int(idle))),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval))),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)]


class HostTcp:
    """Executes the TCP NAT's effects on host sockets and reports what the kernel did."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        nat: TcpNat,
        wake: Callable[[], None],
        connect_timeout: float = 30.0,
        settle: Callable[[], None] | None = None,
        budget: DescriptorBudget | None = None,
        keepalive: tuple[float, float, int] | None = None,
        outbound: tuple[str, str] = ("", ""),
        route_errors: RouteErrors | None = None,
    ) -> None:
        self.loop = loop
        self.outbound = outbound  # source addresses (runtime/outbound.py)
        self.nat = nat
        self.route_errors = route_errors or RouteErrors()
        self._sources: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.wake = wake
        # Called at the end of a socket callback: answer now rather than on
        # the next loop iteration (defaults to wake, which defers).
        self.settle = settle or wake
        self.connect_timeout = connect_timeout
        self.connect_errors: Counter[str] = Counter()  # by errno name, for the metrics
        self.budget = budget or DescriptorBudget(1 << 30, loop.time)
        self.conns: dict[int, _HostConn] = {}
        self._keepalive = keepalive_options(keepalive)

    # -- effects -------------------------------------------------------------

    effects: ClassVar[tuple[type[Effect], ...]] = (
        TcpOpen, TcpWrite, TcpShutdown, TcpCloseHost, TcpPauseReading, TcpResumeReading
    )

    def execute(self, effect: Effect) -> None:
        if isinstance(effect, TcpWrite):  # the hot one first
            self._write(effect)
        elif isinstance(effect, TcpOpen):
            self._open(effect)
        elif isinstance(effect, TcpShutdown):
            self._shutdown(effect)
        elif isinstance(effect, TcpCloseHost):
            self._close(effect)
        elif isinstance(effect, TcpPauseReading):
            self._pause(effect)
        elif isinstance(effect, TcpResumeReading):
            self._resume(effect)

    def _open(self, eff: TcpOpen) -> None:
        if not self.budget.take("tcp"):
            self._refuse(eff.flow_id)
            return
        try:
            sock, address = self._socket_for(eff)
        except OSError as exc:
            self.budget.give()
            if exc.errno in EXHAUSTED:
                self.budget.refused("tcp", reason_of(exc))
            else:
                log.debug("flow %d: no host socket: %s", eff.flow_id, exc)
            # No IPv6 on this host at all: the VM hears "no route", as without a route.
            no_family = exc.errno == errno.EAFNOSUPPORT
            self._refuse(eff.flow_id, "net_unreachable" if no_family else None)
            return
        conn = _HostConn(eff.flow_id, sock)
        self.conns[conn.fid] = conn
        try:
            err = sock.connect_ex(address)
        except OSError as exc:  # e.g. a unix path too long
            err = exc.errno or errno.EINVAL
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._connect_failed(conn, err)
            return
        if self._established(sock):
            # Loopback handshakes finish inside connect(): skip a loop iteration.
            self._connected(conn)
            return
        self.loop.add_writer(sock.fileno(), self._on_connect, conn)
        conn.timeout = self.loop.call_later(
            self.connect_timeout, self._connect_failed, conn, errno.ETIMEDOUT
        )

    def _socket_for(self, eff: TcpOpen) -> tuple[socket.socket, str | tuple[str, int]]:
        if eff.unix_path is not None:
            sock = nonblocking_socket(socket.AF_UNIX, socket.SOCK_STREAM)
            return sock, eff.unix_path
        family = socket.AF_INET6 if ":" in eff.host else socket.AF_INET
        sock = nonblocking_socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A remote peer that vanishes is noticed and reset towards the VM.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for level, option, value in self._keepalive:
                sock.setsockopt(level, option, value)
            bind_source(sock, self.outbound)
        except OSError:
            sock.close()
            raise
        return sock, (eff.host, eff.port)

    def _refuse(self, flow_id: int, kind: str | None = None) -> None:
        """No host socket for a new flow: the VM gets an RST (or ``kind``'s ICMP error) at once."""
        self.nat.host_connect_failed(flow_id, monotonic(), kind)
        self.wake()

    def fail(self, effect: Effect) -> None:
        """An effect for this flow raised: drop its host socket, reset the VM's side."""
        flow_id = getattr(effect, "flow_id", None)
        if flow_id is None:
            return
        conn = self.conns.get(flow_id)
        if conn is not None:
            self._forget(conn)
        self.nat.host_reset(flow_id, monotonic())
        self.wake()

    def _write(self, eff: TcpWrite) -> None:
        conn = self.conns.get(eff.flow_id)
        if conn is None:
            return
        if conn.wbuf:
            conn.wbuf += eff.data
            return
        try:
            n = conn.sock.send(eff.data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._reset(conn, exc)
            return
        if n and self.nat.host_sent(conn.fid, n, monotonic()):
            self.wake()
        if n < len(eff.data):
            conn.wbuf += eff.data[n:]
            self.loop.add_writer(conn.sock.fileno(), self._on_writable, conn)

    def _shutdown(self, eff: TcpShutdown) -> None:
        conn = self.conns.get(eff.flow_id)
        if conn is None:
            return
        if conn.wbuf:
            conn.shutdown_after_flush = True
        else:
            self._shutdown_now(conn)

    def _close(self, eff: TcpCloseHost) -> None:
        conn = self.conns.get(eff.flow_id)
        if conn is None:
            return
        if eff.reset:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            self._forget(conn)
        elif conn.wbuf:
            conn.close_after_flush = True
            self._stop_reading(conn)
        else:
            self._forget(conn)

    def _pause(self, eff: TcpPauseReading) -> None:
        conn = self.conns.get(eff.flow_id)
        if conn is not None:
            conn.paused = True
            self._stop_reading(conn)

    def _resume(self, eff: TcpResumeReading) -> None:
        conn = self.conns.get(eff.flow_id)
        if conn is not None and conn.paused:
            conn.paused = False
            self._start_reading(conn)

    def adopt(self, flow_id: int, sock: socket.socket, nodelay_set: bool = False) -> None:
        """Take over an already connected host socket (a port forward's accepted client);
        ``nodelay_set``: it has TCP_NODELAY already (from its listener)."""
        sock.setblocking(False)
        if not nodelay_set and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _HostConn(flow_id, sock, connected=True)
        self.budget.add()
        self.conns[flow_id] = conn
        self._start_reading(conn)

    # -- socket events -------------------------------------------------------

    @staticmethod
    def _established(sock: socket.socket) -> bool:
        try:
            sock.getpeername()
        except OSError:
            return False
        return True

    def _on_connect(self, conn: _HostConn) -> None:
        self.loop.remove_writer(conn.sock.fileno())
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(conn, err)
            return
        self._connected(conn)

    def _connected(self, conn: _HostConn) -> None:
        if conn.timeout is not None:
            conn.timeout.cancel()
            conn.timeout = None
        conn.connected = True
        self.nat.host_connected(conn.fid, monotonic())
        self._start_reading(conn)
        self.wake()

    def _connect_failed(self, conn: _HostConn, err: int) -> None:
        if conn.connected or self.conns.get(conn.fid) is not conn:
            return
        name = errno.errorcode.get(err, str(err))
        log.debug("flow %d: connect failed: %s", conn.fid, name)
        self.connect_errors[name] += 1
        self.route_errors.note(err)
        self._forget(conn)
        kind = _UNREACHABLE.get(err)
        self.nat.host_connect_failed(conn.fid, monotonic(), kind)
        self.wake()

    def _on_readable(self, conn: _HostConn) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._reset(conn, exc)
            return
        now = monotonic()
        if data:
            self.nat.host_data(conn.fid, data, now)
            if len(data) >= READ_CHUNK or not conn.reading or not conn.peek:
                self.settle()
                return
            # A short read often precedes EOF: look once more so the FIN can
            # ride with the data instead of costing another loop iteration. A
            # connection where that found nothing (request/response) stops looking.
            try:
                data = conn.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                conn.peek = False
                self.settle()
                return
            except OSError as exc:
                self._reset(conn, exc)
                return
            if data:
                self.nat.host_data(conn.fid, data, now)
                self.settle()
                return
        self._stop_reading(conn)
        self.nat.host_eof(conn.fid, now)
        self.settle()

    def _on_writable(self, conn: _HostConn) -> None:
        try:
            n = conn.sock.send(conn.wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._reset(conn, exc)
            return
        del conn.wbuf[:n]
        if not conn.wbuf:
            self.loop.remove_writer(conn.sock.fileno())
            if conn.shutdown_after_flush:
                self._shutdown_now(conn)
            if conn.close_after_flush:
                self._forget(conn)
        if n and self.nat.host_sent(conn.fid, n, monotonic()):
            self.wake()

    # -- helpers -------------------------------------------------------------

    def _shutdown_now(self, conn: _HostConn) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _reset(self, conn: _HostConn, exc: OSError) -> None:
        log.debug("flow %d: host socket error: %s", conn.fid, exc)
        self.route_errors.note(exc.errno)
        self._forget(conn)
        self.nat.host_reset(conn.fid, monotonic())
        self.wake()

    def _start_reading(self, conn: _HostConn) -> None:
        if not conn.reading and not conn.paused and conn.connected:
            conn.reading = True
            self.loop.add_reader(conn.sock.fileno(), self._on_readable, conn)

    def _stop_reading(self, conn: _HostConn) -> None:
        if conn.reading:
            conn.reading = False
            self.loop.remove_reader(conn.sock.fileno())

    def _forget(self, conn: _HostConn) -> None:
        if self.conns.get(conn.fid) is conn:
            del self.conns[conn.fid]
            self.budget.give()
        if conn.timeout is not None:
            conn.timeout.cancel()
        fd = conn.sock.fileno()
        if fd >= 0:
            self._stop_reading(conn)
            self.loop.remove_writer(fd)
        conn.sock.close()

    def reset_vanished_sources(self, is_local: Callable[[tuple[Any, ...]], bool]) -> int:
        """Reset the connections whose host address the host no longer has.

        Their segments can no longer leave nor come back: without this they hang
        until retransmissions give up. `is_local` is asked once per distinct address.
        """
        by_source: dict[tuple[Any, ...], list[_HostConn]] = {}
        for conn in self.conns.values():
            if conn.source is None and conn.connected:
                try:
                    name = conn.sock.getsockname()
                except OSError:
                    continue
                source = (name[0], 0, *name[2:]) if isinstance(name, tuple) else ()
                conn.source = self._sources.setdefault(source, source)  # one tuple per address
            if conn.source:
                by_source.setdefault(conn.source, []).append(conn)
        gone = [c for source, conns in by_source.items() if not is_local(source) for c in conns]
        for conn in gone:
            self._reset(conn, OSError(errno.EADDRNOTAVAIL, "source address went away"))
        return len(gone)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._forget(conn)
