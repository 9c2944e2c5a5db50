"""asyncio side of the gateway DNS server: the executor of UpstreamQuery effects
(real sockets to the upstream servers), and hosts-file reloads.

UDP uses one connected socket per upstream server (the kernel then drops
datagrams from anyone else, and ICMP unreachable surfaces as an error);
replies are matched to tokens by the upstream id the core assigned. TCP
uses one short-lived connection per query, as DNS-over-TCP clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Protocol

from pyvpnkit.core.dns.tcpframing import encode_tcp_message
from pyvpnkit.core.effects import Effect, UpstreamQuery
from pyvpnkit.runtime.filewatch import Signature, read_text, signature

MAX_UDP_REPLY = 65535


class _RandomIds:
    """Unpredictable 16-bit ids from the OS's CSPRNG, read 1 KiB at a time:
    secrets.randbelow(0x10000) made about two getrandom() calls per query."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> int:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(1024), 0
        self._at += 2
        return int.from_bytes(self._pool[self._at - 2 : self._at], "big")


secure_query_id = _RandomIds()
"""Unpredictable upstream query ids (pass as DnsServer(new_id=...))."""


class UpstreamTarget(Protocol):
    def handle_upstream_reply(self, token: int, data: bytes, now: float) -> None: ...
    def handle_upstream_error(self, token: int, now: float) -> None: ...


class _UdpChannel:
    """A connected UDP socket to one upstream server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiting: dict[int, tuple[int, float]] = {}  # upstream id -> (token, expiry)


class DnsUpstream:
    """Performs UpstreamQuery effects and reports back to `target`, then `wake()`s
    the owner so it drains the effects those reports caused."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: UpstreamTarget,
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] | None = None,
        tcp_timeout: float = 5.0,
        token_ttl: float = 10.0,
    ) -> None:
        self._loop = loop
        self._target = target
        self._wake = wake
        self._clock = clock or loop.time
        self.tcp_timeout = tcp_timeout
        self.token_ttl = token_ttl
        self._udp: dict[tuple[str, int], _UdpChannel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_prune = 0.0
        self._closed = False

    effects = (UpstreamQuery,)

    def execute(self, effect: Effect) -> None:
        if self._closed or not isinstance(effect, UpstreamQuery):
            return
        if effect.transport == "tcp":
            task = self._loop.create_task(self._tcp_query(effect))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._udp_query(effect)

    def fail(self, effect: Effect) -> None:
        """Sending raised: nothing to undo; the forwarder's timeout tries the next server."""

    def close(self) -> None:
        self._closed = True
        for server in list(self._udp):
            self._drop_channel(server)
        for task in self._tasks:
            task.cancel()

    # -- UDP -------------------------------------------------------------------------

    def _udp_query(self, effect: UpstreamQuery) -> None:
        now = self._clock()
        if now >= self._next_prune:
            self._prune(now)
        data = effect.data
        try:
            channel = self._udp.get(effect.server)
            if channel is not None and not self._send(channel, data):
                # The socket's source address may be gone (the host's address
                # moved: EINVAL): a new socket takes the host's current one.
                self._drop_channel(effect.server)
                channel = None
            if channel is None:
                channel = self._channel(effect.server)
                if not self._send(channel, data):
                    raise OSError("send failed")
        except OSError:
            # Reported on the next turn: we are inside the owner's drain loop.
            self._loop.call_soon(self._report_error, [effect.token])
            return
        channel.waiting[data[0] << 8 | data[1]] = (effect.token, now + self.token_ttl)

    @staticmethod
    def _send(channel: _UdpChannel, data: bytes) -> bool:
        try:
            channel.sock.send(data)
        except BlockingIOError:
            pass  # send buffer full: as good as a lost datagram, the core resends
        except OSError:
            return False
        return True

    def _channel(self, server: tuple[str, int]) -> _UdpChannel:
        channel = self._udp.get(server)
        if channel is not None:
            return channel
        # Numeric only: resolving a name here would need DNS, i.e. ourselves.
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            server[0], server[1], type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            raise
        channel = _UdpChannel(sock)
        self._udp[server] = channel
        self._loop.add_reader(sock.fileno(), self._on_readable, server)
        return channel

    def _drop_channel(self, server: tuple[str, int]) -> None:
        channel = self._udp.pop(server, None)
        if channel is not None:
            self._loop.remove_reader(channel.sock.fileno())
            channel.sock.close()

    def _on_readable(self, server: tuple[str, int]) -> None:
        channel = self._udp.get(server)
        if channel is None:
            return
        delivered = False
        now = self._clock()
        for _ in range(64):  # bounded: a flooding server must not starve the loop
            try:
                data = channel.sock.recv(MAX_UDP_REPLY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # ICMP unreachable etc.: every query waiting on this server is lost.
                tokens = [token for token, _ in channel.waiting.values()]
                channel.waiting.clear()
                for token in tokens:
                    self._target.handle_upstream_error(token, now)
                delivered = delivered or bool(tokens)
                break  # the reader fires again if datagrams are still queued
            if len(data) < 12:
                continue
            entry = channel.waiting.pop(data[0] << 8 | data[1], None)
            if entry is None:
                continue  # late, duplicate or spoofed
            self._target.handle_upstream_reply(entry[0], data, now)
            delivered = True
        if delivered:
            self._wake()

    def _prune(self, now: float) -> None:
        self._next_prune = now + self.token_ttl
        for channel in self._udp.values():
            stale = [uid for uid, (_, expiry) in channel.waiting.items() if expiry <= now]
            for uid in stale:
                del channel.waiting[uid]

    # -- TCP -------------------------------------------------------------------------

    async def _tcp_query(self, effect: UpstreamQuery) -> None:
        host, port = effect.server
        try:
            async with asyncio.timeout(self.tcp_timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(encode_tcp_message(effect.data))
                    await writer.drain()
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            self._report_error([effect.token])
            return
        self._target.handle_upstream_reply(effect.token, data, self._clock())
        self._wake()

    def _report_error(self, tokens: list[int]) -> None:
        now = self._clock()
        for token in tokens:
            self._target.handle_upstream_error(token, now)
        self._wake()


class HostsFileWatcher:
    """Reloads a hosts file into the server when it changes, checking the file
    at most every `min_interval` seconds (on queries, not with a poll loop)."""

    def __init__(
        self, path: str, load: Callable[[str], None], *, min_interval: float = 1.0
    ) -> None:
        self.path = path
        self._load = load
        self.min_interval = min_interval
        self._next_check = float("-inf")
        self._signature: Signature | bool = False  # False: never read

    def check(self, now: float) -> bool:
        """Reload if due and changed; True when the server got new contents."""
        if now < self._next_check:
            return False
        self._next_check = now + self.min_interval
        current = signature(self.path)
        if current == self._signature:
            return False
        text = read_text(self.path) if current is not None else None
        self._signature = current if text is not None else None
        self._load(text or "")
        return True
