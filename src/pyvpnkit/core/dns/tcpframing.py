"""DNS over TCP framing (RFC 1035 4.2.2): each message is preceded by its
length as 2 bytes, big-endian. Pipelined and split messages are both normal,
so the decoder is a tiny buffer machine fed whatever the stream delivers."""

from __future__ import annotations

MAX_MESSAGE = 0xFFFF


def encode_tcp_message(message: bytes) -> bytes:
    """Prefix `message` with its 2-byte length. ValueError if over 65535 bytes."""
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"DNS message of {len(message)} bytes does not fit TCP framing")
    return len(message).to_bytes(2, "big") + message


class DnsTcpDecoder:
    """Turns a byte stream into whole DNS messages (without the length)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Add stream bytes; return every message now complete, in order."""
        self._buf += data
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            end = pos + 2 + size
            if end > len(buf):
                break
            out.append(bytes(buf[pos + 2 : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back (nonzero at EOF = truncated)."""
        return len(self._buf)
