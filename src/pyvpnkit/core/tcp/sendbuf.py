"""Bytes queued for the peer: unacknowledged then unsent, addressed by unwrapped sequence.

A single bytearray: CPython deletes from the front of a bytearray by moving
its start pointer, so acknowledging is O(1) and appending is amortised O(n).
Slices handed out are copies (bytearray slicing is one memcpy), so no
buffer export ever pins the bytearray against resizing.
"""

from __future__ import annotations


class SendBuffer:
    __slots__ = ("_buf", "base")

    def __init__(self, base: int) -> None:
        self._buf = bytearray()
        self.base = base  # sequence number of the first byte held

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def end(self) -> int:
        """Sequence number just after the last byte held."""
        return self.base + len(self._buf)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def ack(self, seq: int) -> int:
        """Drop the bytes before ``seq``; returns how many were dropped."""
        n = seq - self.base
        if n <= 0:
            return 0
        if n >= len(self._buf):
            n = len(self._buf)
            self._buf.clear()
        else:
            del self._buf[:n]
        self.base += n
        return n

    def slice(self, seq: int, n: int) -> bytearray:
        off = seq - self.base
        return self._buf[off : off + n]
