"""Bytes queued for the peer: unacknowledged then unsent, addressed by unwrapped sequence.

A queue of immutable chunks (host reads are 256 KB): appending and
acknowledging never copy or move the data, and a segment that lies inside
one chunk is handed out as a zero-copy memoryview. Small appends are merged
into the last small chunk, so the chunk count stays low whatever the read
pattern.
"""

from __future__ import annotations

from collections import deque

_SMALL = 4096  # appends below this are merged into a small last chunk
_MERGE_LIMIT = 16384  # ... while that chunk is below this


class SendBuffer:
    __slots__ = ("_chunks", "_head", "_len", "base")

    def __init__(self, base: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already acknowledged
        self._len = 0
        self.base = base  # sequence number of the first byte held

    def __len__(self) -> int:
        return self._len

    @property
    def end(self) -> int:
        """Sequence number just after the last byte held."""
        return self.base + self._len

    def append(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        chunks = self._chunks
        if n < _SMALL and chunks and len(chunks[-1]) < _MERGE_LIMIT:
            chunks[-1] = chunks[-1] + data
        else:
            chunks.append(data if type(data) is bytes else bytes(data))
        self._len += n

    def ack(self, seq: int) -> int:
        """Drop the bytes before ``seq``; returns how many were dropped."""
        n = seq - self.base
        if n <= 0:
            return 0
        if n >= self._len:
            n = self._len
            self._chunks.clear()
            self._head = 0
        else:
            chunks = self._chunks
            left = n + self._head
            while left >= len(chunks[0]):
                left -= len(chunks.popleft())
            self._head = left
        self._len -= n
        self.base += n
        return n

    def slice(self, seq: int, n: int) -> bytes | memoryview:
        """Up to ``n`` bytes from ``seq``: a view when they lie in one chunk."""
        off = seq - self.base + self._head
        n = min(n, self.base + self._len - seq)
        if n <= 0:
            return b""
        parts: list[bytes | memoryview] = []
        for chunk in self._chunks:
            size = len(chunk)
            if off >= size:
                off -= size
                continue
            take = min(size - off, n)
            if not parts and take == n:
                return memoryview(chunk)[off : off + n]
            parts.append(memoryview(chunk)[off : off + take])
            n -= take
            off = 0
            if not n:
                break
        return b"".join(parts)
