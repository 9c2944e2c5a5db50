"""TCP sequence-number arithmetic modulo 2**32 (RFC 9293 3.4).

The connection keeps sequence numbers *unwrapped* (plain, ever-growing ints)
so every internal comparison is an ordinary one; wire values are converted
at the edge with :func:`unwrap`. The modular helpers serve the edges and tests.
"""

from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def sub(a: int, b: int) -> int:
    """Signed distance a - b, assuming the two are less than 2**31 apart."""
    d = (a - b) & MASK
    return d - 0x100000000 if d >= HALF else d


def lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


def gt(a: int, b: int) -> bool:
    return 0 < ((a - b) & MASK) < HALF


def ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < HALF


def unwrap(wire: int, ref: int) -> int:
    """The unwrapped number with low 32 bits ``wire`` nearest to unwrapped ``ref``."""
    d = (wire - ref) & MASK
    return ref + (d - 0x100000000 if d >= HALF else d)
