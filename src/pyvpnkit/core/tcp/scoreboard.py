"""What the peer has selectively acknowledged (RFC 2018, RFC 6675 scoreboard).

Disjoint, sorted byte intervals above SND.UNA, in the connection's unwrapped
sequence numbers. The sender only touches it when SACK blocks arrive or
during loss recovery, so it favours simplicity over speed: a few dozen
intervals at most in practice (one per hole in flight).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

MAX_INTERVALS = 512  # beyond this, new SACK information is ignored (always safe)


class Scoreboard:
    __slots__ = ("_starts", "_ends", "sacked")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.sacked = 0  # bytes covered

    def __bool__(self) -> bool:
        return bool(self._starts)

    @property
    def high(self) -> int:
        """End of the highest SACKed byte (the scoreboard must not be empty)."""
        return self._ends[-1]

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self.sacked = 0

    def add(self, start: int, end: int) -> None:
        """Mark [start, end) SACKed, merging with what touches it."""
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, start)  # first interval ending at or after start
        j = bisect_right(starts, end)  # intervals i..j-1 touch [start, end)
        if i == j:
            if len(starts) >= MAX_INTERVALS:
                return
            starts.insert(i, start)
            ends.insert(i, end)
            self.sacked += end - start
            return
        new_start = min(start, starts[i])
        new_end = max(end, ends[j - 1])
        covered = sum(ends[k] - starts[k] for k in range(i, j))
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]
        self.sacked += new_end - new_start - covered

    def ack(self, una: int) -> bool:
        """Forget what lies below the cumulative ACK ``una``; False if the peer reneged
        (it acknowledged up to, but not past, data it had SACKed: a receiver holding
        that data would have acknowledged it too)."""
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, una)  # intervals ending at or below una are done
        if i:
            self.sacked -= sum(ends[k] - starts[k] for k in range(i))
            del starts[:i], ends[:i]
        return not starts or starts[0] > una

    def next_hole(self, seq: int, limit: int) -> tuple[int, int] | None:
        """The first un-SACKed range at or after ``seq`` and below ``limit``."""
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, seq)
        if i < len(starts) and starts[i] <= seq:
            seq = ends[i]
            i += 1
        if seq >= limit:
            return None
        end = starts[i] if i < len(starts) and starts[i] < limit else limit
        return seq, end

    def hole_bytes(self, lo: int, hi: int) -> int:
        """Un-SACKed bytes in [lo, hi)."""
        if hi <= lo:
            return 0
        covered = 0
        starts, ends = self._starts, self._ends
        for k in range(bisect_right(ends, lo), len(starts)):
            s = starts[k]
            if s >= hi:
                break
            covered += min(ends[k], hi) - max(s, lo)
        return hi - lo - covered


class RetransmitLog:
    """The ranges resent in one recovery, in send order, to notice lost retransmissions.

    Within a recovery, holes are resent in sequence order, so send order is
    sequence order. The link does not reorder: a resent range still missing
    when one resent after it, or new data sent after it, has arrived was
    lost again (what RACK finds with timestamps, RFC 8985). Each range is
    judged once; ranges found lost are queued to be resent (:meth:`next_lost`).
    """

    __slots__ = ("_starts", "_ends", "_marks", "_checked", "_lost")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._marks: list[int] = []  # SND.MAX when each was resent
        self._checked = 0
        self._lost: list[tuple[int, int]] = []

    def reset(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self._marks.clear()
        self._checked = 0
        self._lost.clear()

    def record(self, start: int, end: int, mark: int) -> None:
        self._starts.append(start)
        self._ends.append(end)
        self._marks.append(mark)

    def detect(self, sb: Scoreboard, una: int, newest: tuple[int, int] | None) -> None:
        """Judge the resent ranges older than the newest one known to have arrived.

        ``newest`` is the peer's first SACK block, which holds its latest arrival.
        """
        starts = self._starts
        if self._checked >= len(starts) or not sb:
            return
        upto = bisect_left(self._marks, sb.high)  # new data sent after these arrived
        if newest is not None:
            lo, hi = newest
            j = bisect_right(starts, hi - 1) - 1  # the last range starting inside the block
            if j >= upto and starts[j] >= lo and self._ends[j] <= hi:
                upto = j
        ends = self._ends
        for k in range(self._checked, upto):
            start = starts[k] if starts[k] > una else una
            if ends[k] > start and sb.hole_bytes(start, ends[k]):
                self._lost.append((start, ends[k]))
        if upto > self._checked:
            self._checked = upto

    def lost_bytes(self, sb: Scoreboard, una: int) -> int:
        """Bytes of the ranges lost again that the peer still misses."""
        return sum(sb.hole_bytes(s if s > una else una, e) for s, e in self._lost)

    def next_lost(self, sb: Scoreboard, una: int, size: int) -> tuple[int, int] | None:
        """Take up to ``size`` still missing bytes of the first range lost again:
        (start, length), or None when none is left."""
        lost = self._lost
        while lost:
            start, end = lost[0]
            hole = sb.next_hole(start if start > una else una, end)
            if hole is None:
                lost.pop(0)
                continue
            start, stop = hole
            n = min(stop - start, size)
            lost[0] = (start + n, end)
            return start, n
        return None
