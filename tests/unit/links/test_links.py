"""VM transports over real sockets: every listener kind, with in-test clients."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pyvpnkit.links import sockets as link_sockets
from pyvpnkit.links.listeners import (
    MAX_SEND_QUEUE,
    Link,
    Listener,
    ListenURLError,
    VifError,
    parse_listen_url,
    start_listener,
)
from pyvpnkit.links.packet import DatagramListener, PacketLink
from pyvpnkit.links.stdio import open_stdio
from pyvpnkit.links.stream import StreamLink
from pyvpnkit.links.url import VMADDR_CID_ANY, vsock_available
from pyvpnkit.links.vpnkit import VpnkitLink
from pyvpnkit.wire import vmnet
from pyvpnkit.wire.framing import QEMU, U16LE, Framing

MTU = 1500
UUID = "9efa82d7-ebd5-4287-b1cc-ac4160a39b7d"
VM_MAC = b"\x02\x50\x00\x00\x00\x07"
VM_IP = b"\xc0\xa8\x41\x07"


def frame(tag: int, size: int = 60) -> bytes:
    return bytes([tag]) * size


class FakeSink:
    """Records everything; echoes frames back when ``echo`` is set."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.opened: list[Link] = []
        self.closed: list[Link] = []
        self.frames: list[tuple[Link, bytes]] = []
        self.vif_calls: list[tuple[str, bytes | None]] = []
        self.vif_error: str | None = None
        self.close_on_frame: bytes | None = None
        self.event = asyncio.Event()

    def link_opened(self, link: Link) -> None:
        self.opened.append(link)
        self.event.set()

    def frame_received(self, link: Link, data: bytes) -> None:
        assert type(data) is bytes
        self.frames.append((link, data))
        if data == self.close_on_frame:
            link.close()
        elif self.echo:
            link.send_frame(data)
        self.event.set()

    def link_closed(self, link: Link) -> None:
        assert link in self.opened and link not in self.closed
        self.closed.append(link)
        self.event.set()

    def vif_request(self, uuid: str, preferred_ip: bytes | None) -> tuple[bytes, bytes]:
        self.vif_calls.append((uuid, preferred_ip))
        if self.vif_error is not None:
            raise VifError(self.vif_error)
        return VM_MAC, preferred_ip or VM_IP

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not cond():
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(wait(), timeout)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 20))


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(buf)), 5)
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def recv_frame(sock: socket.socket, framing: Framing) -> bytes:
    (n,) = framing.header.unpack(await recv_exact(sock, framing.header.size))
    return await recv_exact(sock, n)


async def expect_eof(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        except ConnectionResetError:
            return
        if not data:
            return


async def connect_unix(path: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, path)
    return s


async def connect_tcp(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


async def send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


# -- URLs ------------------------------------------------------------------------


def test_parse_listen_urls() -> None:
    a = parse_listen_url("unix:///tmp/x.sock", "qemu")
    assert (a.scheme, a.path) == ("unix", "/tmp/x.sock")
    a = parse_listen_url("tcp://127.0.0.1:1234", "vpnkit")
    assert (a.host, a.port) == ("127.0.0.1", 1234)
    assert parse_listen_url("vsock://1024").sockaddr() == (VMADDR_CID_ANY, 1024)
    assert parse_listen_url("vsock://:1024").sockaddr() == (VMADDR_CID_ANY, 1024)
    assert parse_listen_url("vsock://3:1024").sockaddr() == (3, 1024)
    assert parse_listen_url("unixpacket:///run/b.sock", "bess").path == "/run/b.sock"
    assert parse_listen_url("unixgram:///run/v.sock", "vfkit").path == "/run/v.sock"
    assert parse_listen_url("unix://@abstract").path == "\0abstract"
    assert parse_listen_url("unix:///tmp/with%20space").path == "/tmp/with space"
    assert parse_listen_url("stdio", "stdio").scheme == "stdio"
    assert parse_listen_url("-").scheme == "stdio"


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("qemu", "unixgram:///tmp/x"),
        ("vfkit", "unix:///tmp/x"),
        ("bess", "tcp://127.0.0.1:1"),
        ("qemu", "tcp://127.0.0.1"),
        ("qemu", "tcp://127.0.0.1:99999"),
        ("qemu", "unix://"),
        ("qemu", "vsock://x:y"),
        ("qemu", "http://127.0.0.1:80"),
        ("qemu", "/tmp/x.sock"),
        ("tap", "unix:///tmp/x"),
    ],
)
def test_bad_listen_urls(kind: str, url: str) -> None:
    with pytest.raises(ListenURLError):
        parse_listen_url(url, kind)


# -- qemu ------------------------------------------------------------------------


def test_qemu_unix_two_clients_echo(tmp_path: Path) -> None:
    path = str(tmp_path / "qemu.sock")

    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("qemu", f"unix://{path}", sink, MTU)
        assert os.stat(path).st_mode & 0o777 == link_sockets.SOCKET_MODE
        a, b = await connect_unix(path), await connect_unix(path)
        await sink.until(lambda: len(sink.opened) == 2)
        # Several frames in one write, and one frame split over two writes.
        await send(a, QEMU.encode_many([frame(1), frame(2, 1514)]))
        wire = QEMU.encode(frame(3, 100))
        await send(b, wire[:3])
        await asyncio.sleep(0.01)
        await send(b, wire[3:])
        assert await recv_frame(a, QEMU) == frame(1)
        assert await recv_frame(a, QEMU) == frame(2, 1514)
        assert await recv_frame(b, QEMU) == frame(3, 100)
        links = {lnk for lnk, _ in sink.frames}
        assert len(links) == 2
        assert all(lnk.name.startswith(f"qemu:unix://{path}#") for lnk in links)
        assert all(lnk.mac is None and lnk.mtu == MTU for lnk in links)
        a.close()
        await sink.until(lambda: len(sink.closed) == 1)
        assert len(listener.links) == 1
        listener.close()
        await sink.until(lambda: len(sink.closed) == 2)
        await expect_eof(b)
        b.close()
        assert not os.path.exists(path)

    run(body)


def test_qemu_tcp_bad_length_closes_only_that_client() -> None:
    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("qemu", "tcp://127.0.0.1:0", sink, MTU)
        port = listener.address[1]
        good, bad = await connect_tcp(port), await connect_tcp(port)
        await sink.until(lambda: len(sink.opened) == 2)
        # A runt (intact length, too short for Ethernet) is passed on for the
        # switch to drop and count; the stream goes on.
        await send(bad, QEMU.encode(frame(9)) + b"\x00\x00\x00\x05" + b"short")
        assert await recv_frame(bad, QEMU) == frame(9)
        assert await recv_frame(bad, QEMU) == b"short"
        assert not sink.closed
        # A length beyond any frame loses the framing: only that client is closed.
        await send(bad, QEMU.encode(frame(10)) + b"\x7f\xff\xff\xff")
        await expect_eof(bad)
        await sink.until(lambda: len(sink.closed) == 1)
        # The frames before the bad header were still delivered.
        assert [f for _, f in sink.frames] == [frame(9), b"short", frame(10)]
        for i in range(20):
            await send(good, QEMU.encode(frame(i)))
            assert await recv_frame(good, QEMU) == frame(i)
        # Oversized (beyond 128 KiB) also closes.
        await send(good, b"\x7f\xff\xff\xff")
        await expect_eof(good)
        await sink.until(lambda: len(sink.closed) == 2)
        good.close()
        bad.close()
        listener.close()

    run(body)


def test_sink_closing_the_link_stops_delivery(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sock")

    async def body() -> None:
        sink = FakeSink(echo=False)
        sink.close_on_frame = frame(2)
        listener = await start_listener("qemu", f"unix://{path}", sink, MTU)
        c = await connect_unix(path)
        await send(c, QEMU.encode_many([frame(1), frame(2), frame(3)]))
        await sink.until(lambda: len(sink.closed) == 1)
        assert [f for _, f in sink.frames] == [frame(1), frame(2)]
        await expect_eof(c)
        c.close()
        listener.close()

    run(body)


def test_send_queue_is_bounded(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sock")

    async def body() -> None:
        sink = FakeSink(echo=False)
        listener = await start_listener("qemu", f"unix://{path}", sink, MTU)
        c = await connect_unix(path)  # never reads
        await sink.until(lambda: len(sink.opened) == 1)
        link = sink.opened[0]
        assert isinstance(link, StreamLink)
        big = frame(7, 60000)
        for _ in range(200):  # 12 MB against a 4 MiB bound
            link.send_frame(big)
        link.send_frames([big] * 10)
        assert link.dropped > 0
        assert link.queued <= MAX_SEND_QUEUE + len(big) + 4
        # Another VM on the same listener is not stalled by the one that stopped reading.
        d = await connect_unix(path)
        await sink.until(lambda: len(sink.opened) == 2)
        sink.opened[1].send_frame(frame(8))
        assert await asyncio.wait_for(recv_frame(d, QEMU), 2) == frame(8)
        c.close()
        d.close()
        listener.close()

    run(body)


def test_send_frames_batches_into_one_stream(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sock")

    async def body() -> None:
        sink = FakeSink(echo=False)
        listener = await start_listener("qemu", f"unix://{path}", sink, MTU)
        c = await connect_unix(path)
        await sink.until(lambda: len(sink.opened) == 1)
        sink.opened[0].send_frames([frame(i) for i in range(5)])
        for i in range(5):
            assert await recv_frame(c, QEMU) == frame(i)
        c.close()
        listener.close()

    run(body)


# -- unix socket files --------------------------------------------------------


def test_stale_socket_is_replaced_live_one_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # file left behind, nobody listening

    async def body() -> None:
        sink = FakeSink()
        first = await start_listener("qemu", f"unix://{path}", sink, MTU)
        with pytest.raises(OSError) as info:
            await start_listener("qemu", f"unix://{path}", sink, MTU)
        assert info.value.errno == errno.EADDRINUSE
        first.close()
        assert not os.path.exists(path)
        regular = tmp_path / "file"
        regular.write_text("data")
        with pytest.raises(FileExistsError):
            await start_listener("qemu", f"unix://{regular}", sink, MTU)
        assert regular.read_text() == "data"

    run(body)


def test_close_does_not_unlink_a_replaced_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")

    async def body() -> None:
        listener = await start_listener("qemu", f"unix://{path}", FakeSink(), MTU)
        os.unlink(path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(path)
        listener.close()
        assert os.path.exists(path)
        other.close()

    run(body)


# -- vpnkit ----------------------------------------------------------------------


async def vpnkit_handshake(
    sock: socket.socket, command: vmnet.Command, pipelined: bytes = b""
) -> vmnet.Response:
    await send(sock, vmnet.encode_init(b"h" * 40))
    init = vmnet.decode_init(await recv_exact(sock, vmnet.INIT_LEN))
    assert init.version == vmnet.VERSION
    await send(sock, vmnet.encode_command(command) + pipelined)
    return vmnet.decode_response(await recv_exact(sock, vmnet.RESPONSE_LEN))


def test_vpnkit_handshake_and_frames(tmp_path: Path) -> None:
    path = str(tmp_path / "vpnkit.sock")

    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("vpnkit", f"unix://{path}", sink, MTU)
        a = await connect_unix(path)
        resp = await vpnkit_handshake(a, vmnet.EthernetCommand(UUID))
        assert resp == vmnet.VifResponse(MTU, MTU + 50, VM_MAC)
        await sink.until(lambda: len(sink.opened) == 1)
        link = sink.opened[0]
        assert isinstance(link, VpnkitLink)
        assert (link.mac, link.uuid, link.ip) == (VM_MAC, UUID, VM_IP)
        assert sink.vif_calls == [(UUID, None)]
        await send(a, U16LE.encode_many([frame(1), frame(2, 1514)]))
        assert await recv_frame(a, U16LE) == frame(1)
        assert await recv_frame(a, U16LE) == frame(2, 1514)

        # Second VM: preferred address, and frames pipelined behind the command.
        b = await connect_unix(path)
        want = b"\xc0\xa8\x41\x09"
        resp = await vpnkit_handshake(
            b, vmnet.PreferredIPv4Command(UUID.replace("9", "8"), want), U16LE.encode(frame(5))
        )
        assert isinstance(resp, vmnet.VifResponse)
        assert sink.vif_calls[-1] == (UUID.replace("9", "8"), want)
        assert await recv_frame(b, U16LE) == frame(5)

        # A runt from b is passed on (for the switch to drop); b stays up.
        await send(b, b"\x03\x00abc" + b"\x00\x00" + U16LE.encode(frame(7)))
        assert await recv_frame(b, U16LE) == b"abc"
        assert await recv_frame(b, U16LE) == b""
        assert await recv_frame(b, U16LE) == frame(7)
        b.close()
        await sink.until(lambda: len(sink.closed) == 1)
        await send(a, U16LE.encode(frame(6)))
        assert await recv_frame(a, U16LE) == frame(6)
        a.close()
        b.close()
        listener.close()

    run(body)


def test_vpnkit_zero_uuid_gets_one_assigned(tmp_path: Path) -> None:
    path = str(tmp_path / "vpnkit.sock")

    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("vpnkit", f"unix://{path}", sink, MTU)
        c = await connect_unix(path)
        resp = await vpnkit_handshake(c, vmnet.EthernetCommand(None))
        assert isinstance(resp, vmnet.VifResponse)
        (uuid, _), *_ = sink.vif_calls
        assert len(uuid) == 36 and uuid.count("-") == 4
        c.close()
        listener.close()

    run(body)


@pytest.mark.parametrize("reason", ["address in use", "address out of range", "pool empty"])
def test_vpnkit_vif_refused(tmp_path: Path, reason: str) -> None:
    path = str(tmp_path / "vpnkit.sock")

    async def body() -> None:
        sink = FakeSink()
        sink.vif_error = reason
        listener = await start_listener("vpnkit", f"unix://{path}", sink, MTU)
        c = await connect_unix(path)
        resp = await vpnkit_handshake(c, vmnet.PreferredIPv4Command(UUID, VM_IP))
        assert resp == vmnet.DisconnectResponse(reason)
        await expect_eof(c)
        assert sink.opened == [] and listener.links == set()
        c.close()
        listener.close()

    run(body)


def test_vpnkit_wrong_version_gets_our_init_then_eof(tmp_path: Path) -> None:
    path = str(tmp_path / "vpnkit.sock")

    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("vpnkit", f"unix://{path}", sink, MTU)
        c = await connect_unix(path)
        await send(c, vmnet.encode_init(version=2))
        init = vmnet.decode_init(await recv_exact(c, vmnet.INIT_LEN))
        assert init.version == 22
        await expect_eof(c)
        # Not vmnet at all (a qemu-framed VM on the vpnkit socket): closed, no reply.
        d = await connect_unix(path)
        await send(d, QEMU.encode(frame(1)) * 3)
        await expect_eof(d)
        # Unsupported bind command: a disconnect with the reason.
        e = await connect_unix(path)
        resp = await vpnkit_handshake(e, vmnet.BindIPv4Command(VM_IP, 80, True))
        assert isinstance(resp, vmnet.DisconnectResponse) and "Bind_ipv4" in resp.reason
        # Bad UUID text: a disconnect too.
        f = await connect_unix(path)
        await send(f, vmnet.encode_init())
        await recv_exact(f, vmnet.INIT_LEN)
        await send(f, b"\x01" + b"z" * 36 + bytes(4))
        resp = vmnet.decode_response(await recv_exact(f, vmnet.RESPONSE_LEN))
        assert isinstance(resp, vmnet.DisconnectResponse) and "UUID" in resp.reason
        assert sink.opened == [] and sink.closed == []
        for s in (c, d, e, f):
            s.close()
        listener.close()

    run(body)


def test_vpnkit_handshake_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyvpnkit.links import vpnkit as vpnkit_mod

    monkeypatch.setattr(vpnkit_mod, "HANDSHAKE_TIMEOUT", 0.05)
    path = str(tmp_path / "vpnkit.sock")

    async def body() -> None:
        listener = await start_listener("vpnkit", f"unix://{path}", FakeSink(), MTU)
        c = await connect_unix(path)
        await send(c, b"VMN3T")  # and then nothing
        await expect_eof(c)
        c.close()
        listener.close()

    run(body)


# -- bess (SOCK_SEQPACKET) -------------------------------------------------------


def test_bess_seqpacket(tmp_path: Path) -> None:
    path = str(tmp_path / "bess.sock")

    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("bess", f"unixpacket://{path}", sink, MTU)
        loop = asyncio.get_running_loop()
        a = await connect_unix(path, socket.SOCK_SEQPACKET)
        b = await connect_unix(path, socket.SOCK_SEQPACKET)
        await sink.until(lambda: len(sink.opened) == 2)
        for i in range(5):
            await send(a, frame(i, 100 + i))
        for i in range(5):
            assert await loop.sock_recv(a, 4096) == frame(i, 100 + i)
        # Undersized and oversized messages are dropped; the link stays up.
        await send(b, b"tiny")
        await send(b, frame(8, MTU + 19))
        await send(b, frame(9, MTU + 18))
        assert await loop.sock_recv(b, 4096) == frame(9, MTU + 18)
        (blink,) = [lnk for lnk in sink.opened if lnk in {x for x, _ in sink.frames[-1:]}]
        assert isinstance(blink, PacketLink) and blink.bad == 2
        a.close()
        await sink.until(lambda: len(sink.closed) == 1)
        listener.close()
        await sink.until(lambda: len(sink.closed) == 2)
        await expect_eof(b)
        b.close()
        assert not os.path.exists(path)

    run(body)


def test_bess_send_queue_when_peer_is_slow(tmp_path: Path) -> None:
    path = str(tmp_path / "bess.sock")

    async def body() -> None:
        sink = FakeSink(echo=False)
        listener = await start_listener("bess", f"unixpacket://{path}", sink, MTU)
        loop = asyncio.get_running_loop()
        c = await connect_unix(path, socket.SOCK_SEQPACKET)
        await sink.until(lambda: len(sink.opened) == 1)
        link = sink.opened[0]
        n = 3000  # far more than a unix socket buffers, far less than the 4 MiB bound
        for i in range(n):
            link.send_frame(struct.pack("!I", i) + bytes(1000))
        assert isinstance(link, PacketLink)
        assert link.queued > 0 and link.dropped == 0
        for i in range(n):
            msg = await asyncio.wait_for(loop.sock_recv(c, 4096), 5)
            assert struct.unpack_from("!I", msg)[0] == i
        c.close()
        listener.close()

    run(body)


# -- vfkit (SOCK_DGRAM) ----------------------------------------------------------


async def vfkit_client(tmp_path: Path, server: str, name: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / name))
    s.setblocking(False)
    s.connect(server)
    return s


def test_vfkit_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "vfkit.sock")

    async def body() -> None:
        sink = FakeSink()
        listener = await start_listener("vfkit", f"unixgram://{path}", sink, MTU)
        assert isinstance(listener, DatagramListener)
        loop = asyncio.get_running_loop()
        a = await vfkit_client(tmp_path, path, "a.sock")
        b = await vfkit_client(tmp_path, path, "b.sock")
        await send(a, b"VFKT")  # old-vfkit greeting: opens the link, is not a frame
        await sink.until(lambda: len(sink.opened) == 1)
        assert sink.frames == []
        await send(a, frame(1))
        await send(b, frame(2))  # no greeting: the first frame opens the link
        assert await loop.sock_recv(a, 4096) == frame(1)
        assert await loop.sock_recv(b, 4096) == frame(2)
        assert len(sink.opened) == 2
        await send(b, b"short")
        await send(b, frame(3, MTU + 18))
        assert await loop.sock_recv(b, 4096) == frame(3, MTU + 18)
        # A new greeting from a known peer: the VM restarted, so a fresh link.
        await send(a, b"VFKT")
        await sink.until(lambda: len(sink.opened) == 3)
        assert sink.closed == [sink.opened[0]]
        # An unbound sender cannot be answered and is ignored.
        anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        anon.sendto(frame(4), path)
        anon.close()
        await send(a, frame(5))
        assert await loop.sock_recv(a, 4096) == frame(5)
        assert frame(4) not in [f for _, f in sink.frames]
        # The peer's socket disappearing closes its link on the next send.
        blink = listener.peers[str(tmp_path / "b.sock")]
        b.close()
        os.unlink(tmp_path / "b.sock")
        blink.send_frame(frame(6))
        assert blink in sink.closed
        listener.close()
        assert len(sink.closed) == 3
        a.close()
        assert not os.path.exists(path)

    run(body)


# -- vsock -----------------------------------------------------------------------


def test_vsock_listener_or_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        if vsock_available():
            listener = await start_listener("qemu", "vsock://:45721", FakeSink(), MTU)
            assert listener.address[1] == 45721
            listener.close()
        monkeypatch.delattr(socket, "AF_VSOCK", raising=False)
        with pytest.raises(OSError, match="AF_VSOCK"):
            await start_listener("vpnkit", "vsock://45722", FakeSink(), MTU)

    run(body)


# -- stdio -----------------------------------------------------------------------


def test_stdio_over_pipes() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        to_link_r, to_link_w = os.pipe()
        from_link_r, from_link_w = os.pipe()
        sink = FakeSink()
        listener = await open_stdio(sink, MTU, to_link_r, from_link_w)
        await sink.until(lambda: len(sink.opened) == 1)
        os.write(to_link_w, U16LE.encode_many([frame(1), frame(2, 1514)]))
        await sink.until(lambda: len(sink.frames) == 2)
        out = b""
        want = U16LE.encode_many([frame(1), frame(2, 1514)])
        while len(out) < len(want):
            out += await loop.run_in_executor(None, os.read, from_link_r, 65536)
        assert out == want
        os.close(to_link_w)  # EOF on the link's input ends the link
        await asyncio.wait_for(listener.wait_closed(), 5)
        assert sink.closed == sink.opened
        assert await loop.run_in_executor(None, os.read, from_link_r, 10) == b""
        os.close(from_link_r)

    run(body)


STDIO_CHILD = """
import asyncio, sys
from pyvpnkit.links.listeners import start_listener

class Echo:
    def link_opened(self, link): print("noise on stdout", flush=True)
    def frame_received(self, link, frame): link.send_frame(frame[::-1])
    def link_closed(self, link): print("closed", file=sys.stderr, flush=True)
    def vif_request(self, uuid, ip): raise AssertionError

async def main():
    listener = await start_listener("stdio", "stdio", Echo(), 1500)
    await listener.wait_closed()

asyncio.run(main())
"""


def test_stdio_process_takes_over_fds_0_and_1() -> None:
    src = Path(__file__).resolve().parents[3] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    frames = [bytes(range(14, 80)), b"\xaa" * 1514]
    proc = subprocess.run(
        [sys.executable, "-c", STDIO_CHILD],
        input=U16LE.encode_many(frames),
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    # Stray prints went to stderr; stdout carries only frames.
    assert proc.stdout == U16LE.encode_many([f[::-1] for f in frames])
    assert b"noise on stdout" in proc.stderr and b"closed" in proc.stderr


def test_stdio_refuses_regular_files(tmp_path: Path) -> None:
    async def body() -> None:
        f = tmp_path / "in"
        f.write_bytes(b"")
        rfd = os.open(f, os.O_RDONLY)
        r, w = os.pipe()
        with pytest.raises(OSError, match="pipes"):
            await open_stdio(FakeSink(), MTU, rfd, w)
        os.close(r)

    run(body)


def test_listener_kinds_share_the_abc(tmp_path: Path) -> None:
    async def body() -> None:
        sink = FakeSink()
        made = [
            await start_listener("qemu", f"unix://{tmp_path}/1.sock", sink, MTU),
            await start_listener("vpnkit", "tcp://127.0.0.1:0", sink, MTU),
            await start_listener("bess", f"unixpacket://{tmp_path}/2.sock", sink, MTU),
            await start_listener("vfkit", f"unixgram://{tmp_path}/3.sock", sink, MTU),
        ]
        for listener in made:
            assert isinstance(listener, Listener)
            listener.close()
            listener.close()  # idempotent
        assert sorted(os.listdir(tmp_path)) == []

    run(body)
