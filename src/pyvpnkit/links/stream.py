"""Byte-stream links: length-prefixed frames over unix, TCP or vsock connections.

Each accepted connection is one :class:`StreamLink`, an asyncio Protocol: every
chunk the loop reads is cut into all the whole frames it holds and handed to
the sink in one go; outgoing frames are framed into one buffer per write so a
batch costs one syscall. A bad length header closes that connection only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pyvpnkit.links.base import MAX_SEND_QUEUE, FrameSink, Link, Listener
from pyvpnkit.links.sockets import BoundUnixPath, listen_stream
from pyvpnkit.links.url import ListenAddress
from pyvpnkit.wire.framing import Framing, FramingError

log = logging.getLogger("pyvpnkit.links")


class StreamLink(Link, asyncio.Protocol):
    """One VM connection speaking a length-prefixed framing."""

    def __init__(
        self,
        sink: FrameSink,
        mtu: int,
        name: str,
        framing: Framing,
        on_close: Callable[[StreamLink], None] | None = None,
    ) -> None:
        self.sink = sink
        self.mtu = mtu
        self.name = name
        self.mac = None
        self.dropped = 0
        self.framing = framing
        self._encode = framing.encode
        self._frame_limit = framing.header_limit
        self._decoder = framing.decoder(framing.max_frame(mtu))
        self._on_close = on_close
        self._transport: asyncio.BaseTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._opened = False  # link_opened reported to the sink
        self._closed = False

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if self._writer is None:
            assert isinstance(transport, asyncio.WriteTransport)
            self._writer = transport
        if self._closed:  # closed (e.g. listener shut down) before the loop got here
            transport.close()
            return
        self.stream_started()

    def stream_started(self) -> None:
        """The transport is ready; plain framings go straight to the data phase."""
        self._open()

    def data_received(self, data: bytes) -> None:
        self.frames_from(data)

    def eof_received(self) -> bool | None:
        log.debug("%s: peer closed the stream", self.name)
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._closed:
            log.info("%s: connection lost: %s", self.name, exc)
        self.close()

    # -- data phase ------------------------------------------------------------

    def _open(self) -> None:
        self._opened = True
        self.sink.link_opened(self)

    def frames_from(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            return
        try:
            frames = self._decoder.feed(data)
        except FramingError as exc:
            self._deliver(exc.frames)
            log.warning("%s: bad frame length (%s); closing this connection", self.name, exc)
            self.abort()
            return
        self._deliver(frames)

    def _deliver(self, frames: list[bytes]) -> None:
        deliver = self.sink.frame_received
        for frame in frames:
            if self._closed:  # the sink may close us from inside frame_received
                return
            deliver(self, frame)

    # -- Link ------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        w = self._writer
        if (
            w is None
            or not self._opened
            or self._closed
            or len(frame) > self._frame_limit
            or w.get_write_buffer_size() > MAX_SEND_QUEUE
        ):
            self.dropped += 1
            return
        w.write(self._encode(frame))

    def send_frames(self, frames: list[bytes]) -> None:
        w = self._writer
        if w is None or not self._opened or self._closed:
            self.dropped += len(frames)
            return
        room = MAX_SEND_QUEUE - w.get_write_buffer_size()
        if room < 0:
            self.dropped += len(frames)
            return
        lim = self._frame_limit
        batch = [f for f in frames if len(f) <= lim]
        self.dropped += len(frames) - len(batch)
        if batch:
            w.write(self.framing.encode_many(batch))

    def close(self) -> None:
        self._shut(abort=False)

    def abort(self) -> None:
        """Close without flushing queued output (the peer misbehaved)."""
        self._shut(abort=True)

    def _shut(self, abort: bool) -> None:
        if self._closed:
            return
        self._closed = True
        for t in {id(x): x for x in (self._transport, self._writer) if x is not None}.values():
            if abort and isinstance(t, asyncio.WriteTransport):
                t.abort()
            else:
                t.close()
        if self._opened:
            self.sink.link_closed(self)
        if self._on_close is not None:
            self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Bytes waiting in the transport's write buffer."""
        w = self._writer
        return 0 if w is None or self._closed else w.get_write_buffer_size()


LinkFactory = Callable[[str, Callable[[StreamLink], None]], StreamLink]


class StreamListener(Listener):
    """Accepts connections on a stream socket; one link per connection."""

    def __init__(self, kind: str, url: str, addr: ListenAddress, factory: LinkFactory) -> None:
        self.kind = kind
        self.url = url
        self.links = set()
        self._addr = addr
        self._factory = factory
        self._count = 0
        self._server: asyncio.AbstractServer | None = None
        self._bound: BoundUnixPath | None = None
        self._sockname: Any = None

    async def start(self) -> None:
        sock, self._bound = listen_stream(self._addr)
        self._sockname = sock.getsockname()
        try:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(self._protocol, sock=sock)
        except BaseException:
            sock.close()
            if self._bound is not None:
                self._bound.unlink()
            raise
        log.info("%s: listening on %s", self.kind, self.url)

    def _protocol(self) -> StreamLink:
        self._count += 1
        link = self._factory(f"{self.kind}:{self.url}#{self._count}", self._forget)
        self.links.add(link)
        return link

    def _forget(self, link: StreamLink) -> None:
        self.links.discard(link)

    @property
    def address(self) -> Any:
        return self._sockname

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self.links):
            link.close()
        if self._bound is not None:
            self._bound.unlink()
            self._bound = None


async def start_stream_listener(
    kind: str, url: str, addr: ListenAddress, sink: FrameSink, mtu: int, framing: Framing
) -> StreamListener:
    def factory(name: str, on_close: Callable[[StreamLink], None]) -> StreamLink:
        return StreamLink(sink, mtu, name, framing, on_close)

    listener = StreamListener(kind, url, addr, factory)
    await listener.start()
    return listener
