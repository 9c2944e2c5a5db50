"""Port forwarding into VMs: host listeners (TCP, UDP, unix) whose clients reach a VM port.

A TCP or unix client is accepted here and handed over whole: the stack opens
a TCP connection into the VM (``open_to_vm``) and the host TCP executor relays
bytes and half-closes as for outbound flows. UDP datagrams go through the
sans-I/O ``UdpForwarder``; its replies come back as ``UdpForwardReply``
effects and leave from the listener's own socket, so clients see answers from
the address they sent to. This module only reports each client's address
(unless the forward has ``forward_source`` off); which source the VM sees is
the core's decision (core/forwards.py ``forward_source``).

What a forward may be (addresses, ports, protocols, which VM) is decided in
core/forwards.py; this module does the sockets. Bind errors are reported
with Docker's wording ("port is already allocated", "cannot assign requested
address", "permission denied") and never stop the service. Binding 127.0.0.1
(or 0.0.0.0) for TCP also tries ::1 (or ::), as vpnkit does, so clients that
resolve "localhost" to ::1 connect too.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyvpnkit.core.effects import Client, Effect, UdpForwardReply
from pyvpnkit.core.forwards import (
    ForwardError,
    join_host_port,
    parse_publish,
    protocol_of,
    split_host_port,
    vm_target,
)
from pyvpnkit.core.ip.family import addr_text
from pyvpnkit.core.nat.tcp_nat import READ_CHUNK
from pyvpnkit.links.sockets import remove_stale_unix

if TYPE_CHECKING:
    from pyvpnkit.core.switch.stack import Stack
    from pyvpnkit.runtime.engine import Engine
    from pyvpnkit.runtime.host_tcp import HostTcp

log = logging.getLogger("pyvpnkit.forward")

ACCEPTS_PER_WAKEUP = 64
READS_PER_WAKEUP = 256
_ACCEPT_BACKOFF = 0.5  # seconds without accepting after EMFILE/ENFILE
_DUAL_STACK = {"127.0.0.1": "::1", "0.0.0.0": "::"}

Forwards = list[dict[str, str | bool]]  # the method ``list`` shadows the builtin in the class


@dataclass(eq=False)
class _Listener:
    lid: int
    protocol: str
    local: str
    remote_ip: bytes | None  # None: the first VM, looked up at each use
    remote_port: int
    socks: list[socket.socket] = field(default_factory=list)
    path_inode: tuple[int, int] | None = None  # the unix socket file we made
    udp_target: tuple[bytes, int] | None = None
    paused: bool = False
    forward_source: bool = True  # the VM sees each client's address (core/forwards.py)


class Forwarder:
    """Exposes host ports into the stack's VMs; the API and --publish drive it."""

    def __init__(
        self, engine: Engine, stack: Stack, host_tcp: HostTcp, forward_source: bool = True,
        backlog: int | None = None, allowed_binds: tuple[str, ...] = (),
    ) -> None:
        self.forward_source = forward_source  # the default of each expose (--no-forward-source)
        self.backlog = backlog or socket.SOMAXCONN  # --listen-backlog
        self.allowed_binds = allowed_binds  # --allowed-bind-addresses; (): any
        self.engine = engine
        self.stack = stack
        self.host_tcp = host_tcp  # accepted clients are handed to it whole
        self.loop = engine.loop
        self.stats: Counter[str] = Counter()
        self._by_key: dict[tuple[str, str], _Listener] = {}
        self._by_id: dict[int, _Listener] = {}
        self._next_id = 1
        self._buf = bytearray(65536)

    # -- public API ----------------------------------------------------------

    def expose(
        self, local: str, remote: str, protocol: str = "tcp", forward_source: bool | None = None
    ) -> dict[str, str | bool]:
        """Listen on ``local`` and forward to ``remote`` ("IP:PORT"; empty IP = first VM).

        ``forward_source`` (None: the forwarder's default): the VM sees each
        client's address rather than the gateway's.
        """
        protocol = protocol_of(protocol)
        remote_ip, remote_port = vm_target(self.stack.config, remote)
        local = self._normalize_local(local, protocol)
        if (local, protocol) in self._by_key:
            raise ForwardError(f"{local}/{protocol} is already exposed", 409)
        lst = _Listener(self._next_id, protocol, local, remote_ip, remote_port)
        lst.forward_source = self.forward_source if forward_source is None else forward_source
        if protocol == "unix":
            self._listen_unix(lst)
        else:
            self._listen_inet(lst)
        self._next_id += 1
        self._by_key[(lst.local, protocol)] = lst
        self._by_id[lst.lid] = lst
        if protocol == "udp":
            self._retarget_udp(lst)
        info = self._describe(lst)
        log.info("exposed %s/%s -> %s", info["local"], protocol, info["remote"])
        return info

    def unexpose(self, local: str, protocol: str = "tcp") -> None:
        protocol = protocol_of(protocol)
        key = (self._normalize_local(local, protocol), protocol)
        lst = self._by_key.pop(key, None)
        if lst is None:
            raise ForwardError(f"{key[0]}/{protocol} is not exposed", 404)
        del self._by_id[lst.lid]
        self._close_listener(lst)
        log.info("unexposed %s/%s", lst.local, protocol)

    def list(self) -> Forwards:
        return [self._describe(lst) for lst in self._by_id.values()]

    def close(self) -> None:
        for lst in list(self._by_id.values()):
            self.unexpose(lst.local, lst.protocol)

    def first_vm(self) -> bytes:
        """Where an empty remote IP points: the lowest VM address seen, else the first one."""
        vms = self.stack.vms
        return min(vms) if vms else self.stack.config.lowest_ip

    # -- validation ----------------------------------------------------------

    @staticmethod
    def _normalize_local(local: str, protocol: str) -> str:
        if protocol == "unix":
            if not isinstance(local, str) or not local:
                raise ForwardError("local must be a unix socket path")
            path = local.removeprefix("unix://")
            if "\0" in path or not path:
                raise ForwardError(f"bad unix socket path {local!r}")
            return os.path.abspath(path)
        host, port = split_host_port(local, "local")
        return join_host_port(host or "0.0.0.0", port)

    # -- listening -----------------------------------------------------------

    def _listen_inet(self, lst: _Listener) -> None:
        host, port = split_host_port(lst.local, "local")
        if self.allowed_binds and host not in self.allowed_binds:
            raise ForwardError(f"listen {lst.protocol} {lst.local}: {host} is not among "
                               f"--allowed-bind-addresses {','.join(self.allowed_binds)}", 403)
        kind = socket.SOCK_STREAM if lst.protocol == "tcp" else socket.SOCK_DGRAM
        sock = self._bind(host, port, kind, lst.protocol, lst.local)
        port = sock.getsockname()[1]
        lst.local = join_host_port(host, port)
        lst.socks.append(sock)
        if lst.protocol == "tcp":
            other = _DUAL_STACK.get(host)
            if other is not None and socket.has_ipv6:
                try:
                    lst.socks.append(self._bind(other, port, kind, "tcp", lst.local))
                except ForwardError as exc:
                    log.debug("no IPv6 twin for %s: %s", lst.local, exc)
            for s in lst.socks:
                self.loop.add_reader(s.fileno(), self._on_accept, lst, s)
        else:
            self.loop.add_reader(sock.fileno(), self._on_datagram, lst, sock)

    def _bind(self, host: str, port: int, kind: int, proto: str, shown: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # Accepted sockets inherit it (Linux, the BSDs, macOS), as host_tcp wants.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise _bind_error(exc, proto, shown) from None
        return sock

    def _listen_unix(self, lst: _Listener) -> None:
        path = lst.local
        remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            st = os.stat(path)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise _bind_error(exc, "unix", path) from None
        lst.path_inode = (st.st_dev, st.st_ino)
        lst.socks.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_accept, lst, sock)

    def _close_listener(self, lst: _Listener) -> None:
        for sock in lst.socks:
            if not lst.paused:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        lst.socks.clear()
        if lst.protocol == "udp":
            self.stack.udp_forward.remove(lst.lid)
        if lst.path_inode is not None:
            try:
                st = os.stat(lst.local)
                if (st.st_dev, st.st_ino) == lst.path_inode:
                    os.unlink(lst.local)
            except OSError:
                pass

    # -- TCP and unix clients ------------------------------------------------

    def _on_accept(self, lst: _Listener, sock: socket.socket) -> None:
        accepted = False
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                client, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The pending client stays readable: stop polling for a while.
                    log.warning("accept on %s: %s; pausing", lst.local, exc)
                    self._pause(lst)
                else:
                    log.debug("accept on %s: %s", lst.local, exc)
                break
            try:
                early = _sent_already(client)
            except OSError as exc:  # reset before we got to it: nothing to forward
                log.debug("client on %s: %s", lst.local, exc)
                client.close()
                continue
            peer = (addr[0], addr[1]) if lst.forward_source and lst.protocol == "tcp" else None
            # TCP_NODELAY came from the listener (_bind): one system call fewer per client.
            accepted |= self._open(client, lst.remote_ip or self.first_vm(), lst.remote_port,
                                   lst.local, early, peer, nodelay_set=lst.protocol == "tcp")
        if accepted:
            self.engine.settle()  # the SYNs leave in this loop iteration, not the next

    def connect(self, client: socket.socket, remote: str, early: bytes = b"") -> None:
        """Relay a connected host stream to ``remote`` ("IP:PORT", a VM) from the gateway.

        gvproxy's /tunnel and SSH forwards use this; ``early`` is data the
        client already sent. ForwardError for a remote that is not a VM address.
        """
        vm_ip, port = vm_target(self.stack.config, remote)
        if self._open(client, vm_ip or self.first_vm(), port, remote, early):
            self.engine.wake()

    def _open(
        self, client: socket.socket, vm_ip: bytes, port: int, what: str, early: bytes = b"",
        peer: Client | None = None, nodelay_set: bool = False,
    ) -> bool:
        """Relay ``client`` to vm_ip:port; the VM sees ``peer`` as the core maps it
        (None: from the gateway). False if no connection could be opened."""
        now = self.loop.time()
        try:
            fid = self.stack.tcp.open_to_vm(vm_ip, port, now, peer)
        except RuntimeError as exc:
            log.warning("forward %s: %s", what, exc)
            client.close()
            self.stats["tcp_no_port"] += 1
            return False
        self.stats["tcp_accepted"] += 1
        self.host_tcp.adopt(fid, client, nodelay_set)
        if early:
            self.stack.tcp.host_data(fid, early, now)
        return True

    def _pause(self, lst: _Listener) -> None:
        if lst.paused:
            return
        lst.paused = True
        for s in lst.socks:
            self.loop.remove_reader(s.fileno())
        self.loop.call_later(_ACCEPT_BACKOFF, self._unpause, lst)

    def _unpause(self, lst: _Listener) -> None:
        if not lst.paused or self._by_id.get(lst.lid) is not lst:
            return
        lst.paused = False
        for s in lst.socks:
            self.loop.add_reader(s.fileno(), self._on_accept, lst, s)

    # -- UDP -----------------------------------------------------------------

    def _retarget_udp(self, lst: _Listener) -> tuple[bytes, int]:
        target = (lst.remote_ip or self.first_vm(), lst.remote_port)
        if target != lst.udp_target:
            self.stack.udp_forward.add(lst.lid, *target, keep_source=lst.forward_source)
            lst.udp_target = target
        return target

    def _on_datagram(self, lst: _Listener, sock: socket.socket) -> None:
        self._retarget_udp(lst)
        fwd = self.stack.udp_forward
        now = self.loop.time()
        buf = self._buf
        got = 0
        for _ in range(READS_PER_WAKEUP):
            try:
                n, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. a pending ICMP error from an earlier reply
                log.debug("recvfrom on %s: %s", lst.local, exc)
                continue
            got += 1
            fwd.host_datagram(lst.lid, (addr[0], addr[1]), bytes(buf[:n]), now)
        if got:
            self.stats["udp_in"] += got
            self.engine.settle()  # to the VM in this loop iteration, not the next

    # -- the executor of UdpForwardReply (replies leave from the listener's socket)

    effects = (UdpForwardReply,)

    def execute(self, eff: Effect) -> None:
        if isinstance(eff, UdpForwardReply):
            self._reply(eff)

    def fail(self, effect: Effect) -> None:
        """A reply raised: it is lost, as a datagram may be."""

    def _reply(self, eff: UdpForwardReply) -> None:
        lst = self._by_id.get(eff.listener_id)
        if lst is None or lst.protocol != "udp" or not lst.socks:
            self.stats["udp_reply_dropped"] += 1
            return
        try:
            lst.socks[0].sendto(eff.payload, eff.client)
        except OSError as exc:
            self.stats["udp_reply_error"] += 1
            log.debug("sendto %s on %s: %s", eff.client, lst.local, exc)
            return
        self.stats["udp_out"] += 1

    # -- helpers -------------------------------------------------------------

    def _describe(self, lst: _Listener) -> dict[str, str | bool]:
        vm_ip = lst.remote_ip or self.first_vm()
        remote = join_host_port(addr_text(vm_ip), lst.remote_port)
        info: dict[str, str | bool] = {"local": lst.local, "remote": remote,
                                       "protocol": lst.protocol}
        if not lst.forward_source and lst.protocol != "unix":
            info["forward_source"] = False  # shown when off: by default gvproxy's three keys
        return info


def _sent_already(client: socket.socket) -> bytes:
    """What an accepted client has already sent (clients of HTTP and most protocols speak
    first): it rides with our ACK of the VM's SYN-ACK instead of a segment of its own, and
    the reader finds nothing to wake for. Empty when it has sent nothing (or closed)."""
    try:
        return client.recv(READ_CHUNK, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return b""


def _bind_error(exc: OSError, proto: str, local: str) -> ForwardError:
    """Docker's wording, so tools that parse it (and people who know it) understand."""
    if exc.errno == errno.EADDRINUSE:
        return ForwardError(f"Bind for {local} failed: port is already allocated", 409)
    if exc.errno == errno.EADDRNOTAVAIL:
        return ForwardError(f"listen {proto} {local}: bind: cannot assign requested address")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ForwardError(f"listen {proto} {local}: bind: permission denied", 403)
    return ForwardError(f"listen {proto} {local}: {exc.strerror or exc}", 500)


def remove_stale_socket(path: str) -> None:
    """links.sockets.remove_stale_unix's rule, in the API's words (ForwardError, 409)."""
    try:
        remove_stale_unix(path)
    except FileExistsError:
        raise ForwardError(f"listen unix {path}: file exists and is not a socket", 409) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ForwardError(f"listen unix {path}: address already in use", 409) from None
        raise _bind_error(exc, "unix", path) from None


__all__ = [
    "ForwardError",
    "Forwarder",
    "join_host_port",
    "parse_publish",
    "remove_stale_socket",
    "split_host_port",
]
