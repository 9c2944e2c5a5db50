"""Length-prefixed Ethernet frames over byte streams (qemu, vpnkit, stdio).

A stream has no packet boundaries, so every frame carries a length header:
qemu's ``-netdev stream``/``socket`` uses a 4-byte big-endian length, the
vpnkit/hyperkit data phase and gvproxy's stdio mode a 2-byte little-endian one.
A length beyond any frame the link can carry means the stream is out of sync
(or is not speaking this framing at all); there is no way to resynchronise,
so the decoder raises :class:`FramingError` and the caller drops the
connection. A short length (0..13, a runt) still delimits its bytes: the runt
is handed on like any frame, for the switch to drop and count, and the stream
goes on. Closing there would cut the VM off the network for one bad frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

# The shortest frame worth carrying: an Ethernet header with no payload.
MIN_FRAME_LEN = 14
# gvproxy rejects stream frames above 128 KiB; a u32 length beyond that is garbage.
DEFAULT_U32_MAX = 128 * 1024
U16_MAX = 0xFFFF


class FramingError(ParseError):
    """A length header beyond any frame: the stream cannot be trusted any more.

    ``frames`` holds the whole frames decoded from the same chunk before the
    bad header, so a caller may still deliver them before closing.
    """

    def __init__(self, length: int, low: int, high: int, frames: list[bytes]) -> None:
        super().__init__(f"frame length {length} outside {low}..{high}")
        self.length = length
        self.frames = frames


@dataclass(frozen=True, slots=True)
class Framing:
    """One length-header format: how to write frames and how long they may be."""

    name: str
    header: struct.Struct
    limit: int  # the default (and, for u16, the only possible) maximum frame length

    def max_frame(self, mtu: int) -> int:
        """The acceptance limit for a link: the format's limit or MTU-sized frames."""
        return min(max(mtu + MIN_FRAME_LEN, self.limit), self.header_limit)

    @property
    def header_limit(self) -> int:
        return (1 << (8 * self.header.size)) - 1

    def encode(self, frame: bytes) -> bytes:
        """Header + frame as one buffer (one copy, one write syscall)."""
        n = len(frame)
        if n > self.header_limit:
            raise ValueError(f"{self.name}: frame of {n} bytes cannot be framed")
        return self.header.pack(n) + frame

    def encode_many(self, frames: Iterable[bytes]) -> bytes:
        """Several frames joined into one buffer, for batched writes."""
        pack, lim = self.header.pack, self.header_limit
        parts: list[bytes] = []
        for f in frames:
            if len(f) > lim:
                raise ValueError(f"{self.name}: frame of {len(f)} bytes cannot be framed")
            parts.append(pack(len(f)))
            parts.append(f)
        return b"".join(parts)

    def decoder(self, max_frame: int | None = None) -> FrameDecoder:
        return FrameDecoder(self, self.limit if max_frame is None else max_frame)


QEMU = Framing("qemu", struct.Struct(">I"), DEFAULT_U32_MAX)
U16LE = Framing("u16le", struct.Struct("<H"), U16_MAX)  # vpnkit data phase and stdio


class FrameDecoder:
    """Incremental decoder: feed arbitrary chunks, get back every whole frame.

    Whole frames are sliced straight out of the chunk when nothing is pending,
    so the common case (a recv holding many complete frames) copies each frame
    once; only a trailing partial frame is buffered.
    """

    __slots__ = ("_buf", "_hlen", "_unpack", "max_frame", "failed", "_bad_length")

    def __init__(self, framing: Framing, max_frame: int) -> None:
        if max_frame < MIN_FRAME_LEN:
            raise ValueError(f"max_frame {max_frame} below the minimum frame {MIN_FRAME_LEN}")
        self._buf = bytearray()
        self._hlen = framing.header.size
        self._unpack = framing.header.unpack_from
        self.max_frame = max_frame
        self.failed = False
        self._bad_length = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (or header) held back for the next chunk."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self.failed:  # no way to find the next frame boundary again
            raise FramingError(self._bad_length, 0, self.max_frame, [])
        frames: list[bytes] = []
        hlen, unpack, hi = self._hlen, self._unpack, self.max_frame
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        elif isinstance(data, bytes):
            buf = data
        else:
            buf = bytes(data)
        n = len(buf)
        off = 0
        with memoryview(buf) as mv:
            while n - off >= hlen:
                (length,) = unpack(buf, off)
                if length > hi:
                    self.failed = True
                    self._bad_length = length
                    self._buf = bytearray()
                    raise FramingError(length, 0, hi, frames)
                start = off + hlen
                end = start + length
                if end > n:
                    break
                frames.append(mv[start:end].tobytes())
                off = end
            if buf is self._buf:
                rest = None
            else:
                rest = mv[off:].tobytes() if off < n else None
        if buf is self._buf:
            if off:
                del self._buf[:off]
        elif rest is not None:
            self._buf = bytearray(rest)
        return frames
