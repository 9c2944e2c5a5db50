"""TCP sequence-number arithmetic modulo 2**32 (RFC 9293 3.4).

The connection keeps sequence numbers *unwrapped* (plain, ever-growing ints)
so every internal comparison is an ordinary one; wire values are converted
at the edge with :func:`unwrap`, the one modular operation needed.
"""

from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000


def unwrap(wire: int, ref: int) -> int:
    """The unwrapped number with low 32 bits ``wire`` nearest to unwrapped ``ref``."""
    d = (wire - ref) & MASK
    return ref + (d - 0x100000000 if d >= HALF else d)
