"""Out-of-order receive queue: disjoint byte intervals keyed by unwrapped sequence.

Each interval keeps the chunks it was built from (slices of one copy of each
segment's payload), so merging never copies bytes; the data is joined once,
when it is delivered. Overlapping or duplicate bytes are trimmed on arrival
(the first copy wins). Callers only insert bytes inside the receive window,
which bounds the bytes; ``max_intervals`` and ``max_chunks`` bound the
bookkeeping, so a flood of tiny segments cannot cost more than the window.
Refusing out-of-order data is always allowed: the peer sends it again.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

Chunk = bytes | memoryview


class Reassembly:
    __slots__ = (
        "_starts",
        "_ends",
        "_chunks",
        "bytes",
        "max_intervals",
        "max_chunks",
        "_nchunks",
        "_last",
    )

    def __init__(self, max_intervals: int = 1024, max_chunks: int = 16384) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._chunks: list[list[Chunk]] = []
        self.bytes = 0  # payload bytes held
        self.max_intervals = max_intervals
        self.max_chunks = max_chunks
        self._nchunks = 0
        self._last = -1  # start of the most recent arrival (for SACK block order)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def add(self, start: int, data: Chunk) -> int:
        """Insert ``data`` at ``start``; returns how many new bytes were kept."""
        end = start + len(data)
        if end <= start or self._nchunks >= self.max_chunks:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, start)  # first interval ending at or after start
        j = bisect_right(starts, end)  # intervals from i to j touch [start, end)
        if i == j:
            if len(starts) >= self.max_intervals:
                return 0
            starts.insert(i, start)
            ends.insert(i, end)
            self._chunks.insert(i, [data])
            self._nchunks += 1
            self.bytes += len(data)
            self._last = start
            return len(data)
        view = memoryview(data) if not isinstance(data, memoryview) else data
        pieces: list[Chunk] = []
        added = 0
        if start < starts[i]:
            pieces.append(view[: starts[i] - start])
            added += starts[i] - start
        for k in range(i, j):
            pieces.extend(self._chunks[k])
            gap_end = starts[k + 1] if k + 1 < j else end
            if gap_end > ends[k]:
                pieces.append(view[ends[k] - start : gap_end - start])
                added += gap_end - ends[k]
        new_start = min(start, starts[i])
        new_end = max(end, ends[j - 1])
        self._nchunks += len(pieces) - sum(len(c) for c in self._chunks[i:j])
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]
        self._chunks[i:j] = [pieces]
        self.bytes += added
        self._last = start
        return added

    def pop(self, rcv_nxt: int) -> tuple[list[Chunk], int]:
        """Chunks that continue the stream at ``rcv_nxt`` and the new ``rcv_nxt``.

        Intervals wholly below ``rcv_nxt`` are dropped; a partly covered one is trimmed.
        """
        starts, ends = self._starts, self._ends
        out: list[Chunk] = []
        while starts and starts[0] <= rcv_nxt:
            s, e = starts.pop(0), ends.pop(0)
            chunks = self._chunks.pop(0)
            self._nchunks -= len(chunks)
            self.bytes -= e - s
            if e <= rcv_nxt:
                continue
            skip = rcv_nxt - s
            for c in chunks:
                n = len(c)
                if skip >= n:
                    skip -= n
                    continue
                out.append(c[skip:] if skip else c)
                skip = 0
            rcv_nxt = e
        return out, rcv_nxt

    def clip(self, limit: int) -> None:
        """Forget everything at or beyond ``limit`` (e.g. data after the peer's FIN)."""
        starts, ends = self._starts, self._ends
        while starts and ends[-1] > limit:
            s, e = starts[-1], ends[-1]
            if s >= limit:
                starts.pop()
                ends.pop()
                self._nchunks -= len(self._chunks.pop())
                self.bytes -= e - s
                continue
            keep = limit - s
            kept: list[Chunk] = []
            for c in self._chunks[-1]:
                if keep <= 0:
                    break
                kept.append(c[:keep] if len(c) > keep else c)
                keep -= len(c)
            self._nchunks += len(kept) - len(self._chunks[-1])
            self._chunks[-1] = kept
            ends[-1] = limit
            self.bytes -= e - limit

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` blocks: the one holding the latest arrival first (RFC 2018 4)."""
        starts, ends = self._starts, self._ends
        if not starts or limit <= 0:
            return []
        k = bisect_right(starts, self._last) - 1
        if k < 0 or ends[k] <= self._last:
            k = 0
        blocks = [(starts[k], ends[k])]
        for m in range(len(starts)):
            if len(blocks) >= limit:
                break
            if m != k:
                blocks.append((starts[m], ends[m]))
        return blocks
