"""IPv4 fragment reassembly (packets from VMs) and fragmentation (packets to VMs).

Reassembly holds attacker-controlled state, so it is bounded like Linux's
``ipfrag_*`` settings: a byte budget for all pending datagrams (oldest evicted
first), 65535 bytes per datagram and a 30 s lifetime. Overlapping fragments
discard the whole datagram (as Linux does since CVE-2018-5391) so no one can
rewrite a header that was already checked; exact duplicates are ignored.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from pyvpnkit.core.effects import Effect
from pyvpnkit.core.nat.icmp_errors import time_exceeded
from pyvpnkit.core.switch.outbox import Outbox
from pyvpnkit.wire.checksum import internet_checksum
from pyvpnkit.wire.ipv4 import FLAG_DF, FLAG_MF, OFFSET_MASK, IPv4Packet

MAX_DATAGRAM = 65535
MIN_MTU = 68  # RFC 791: every link carries 68 bytes unfragmented
# Accounting overheads so floods of tiny fragments exhaust the budget too.
_ENTRY_COST = 256
_FRAGMENT_COST = 64

_Key = tuple[bytes, bytes, int, int]


@dataclass(slots=True)
class _Pending:
    deadline: float
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)
    received: int = 0
    total: int | None = None  # payload length, known once the last fragment came
    header: bytes | None = None  # header of the fragment at offset 0
    quote: bytes | None = None  # first fragment's header + 8 bytes, for the timeout error
    cost: int = _ENTRY_COST
    dead: bool = False  # overlap seen: drop every fragment until the deadline


class FragmentReassembly:
    """The family-neutral part: bounded, expiring storage of fragments by key.

    Subclasses (IPv4 here, IPv6 in ip6frag.py) turn packets into keys and
    offsets and say how the whole datagram's header and timeout error look.
    """

    max_datagram: ClassVar[int] = MAX_DATAGRAM  # header + payload

    def __init__(
        self,
        *,
        max_bytes: int = 4 * 1024 * 1024,
        timeout: float = 30.0,
        send_time_exceeded: bool = True,
        outbox: Outbox | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.send_time_exceeded = send_time_exceeded
        self.stats: Counter[str] = Counter()
        self._pending: dict[_Key, _Pending] = {}  # insertion order == deadline order
        self._used = 0
        self._box = outbox if outbox is not None else Outbox()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def bytes_used(self) -> int:
        return self._used

    def _add(
        self,
        key: _Key,
        off: int,
        more: bool,
        payload: memoryview,
        header: bytes | memoryview,
        now: float,
    ) -> bytes | None:
        """Store one fragment of the datagram ``key``; the whole datagram once complete.

        ``header`` is what the whole datagram's header is made from (kept from
        fragment zero); its length counts toward ``max_datagram``.
        """
        size = len(payload)
        end = off + size
        if size == 0 or (more and size % 8):
            self.stats["frag_invalid"] += 1
            return None
        entry = self._pending.get(key)
        if len(header) + end > self.max_datagram:
            self.stats["frag_too_big"] += 1
            if entry is not None:
                self._kill(entry)
            return None
        if entry is None:
            entry = self._new_entry(key, now)
            if entry is None:
                return None
        if entry.dead:
            self.stats["frag_dropped_dead"] += 1
            return None
        if not more:
            if (entry.total is not None and entry.total != end) or (
                entry.ends and entry.ends[-1] > end
            ):
                self._overlap(entry)
                return None
        elif entry.total is not None and end > entry.total:
            self._overlap(entry)
            return None
        i = bisect_left(entry.starts, off)
        n = len(entry.starts)
        if i < n and entry.starts[i] == off and entry.ends[i] == end:
            self.stats["frag_duplicate"] += 1
            return None
        if (i > 0 and entry.ends[i - 1] > off) or (i < n and entry.starts[i] < end):
            self._overlap(entry)
            return None
        cost = size + _FRAGMENT_COST
        if not self._make_room(cost, keep=key):
            self.stats["frag_no_memory"] += 1
            self._drop(key)
            return None
        entry.starts.insert(i, off)
        entry.ends.insert(i, end)
        entry.parts.insert(i, payload.tobytes())
        entry.received += size
        entry.cost += cost
        self._used += cost
        if not more:
            entry.total = end
        if off == 0:
            entry.header = bytes(header)
            entry.quote = entry.header + entry.parts[i][:8]
        if entry.total is None or entry.received != entry.total:
            return None
        # No overlaps and every byte of [0, total) counted: the datagram is whole.
        self._drop(key)
        self.stats["reassembled"] += 1
        assert entry.header is not None
        return self._whole_header(entry.header, entry.total) + b"".join(entry.parts)

    def _whole_header(self, header: bytes, payload_len: int) -> bytes:
        """The header of the reassembled datagram, from fragment zero's ``header``."""
        raise NotImplementedError

    def _timeout_error(self, key: _Key, quote: bytes) -> bytes | None:
        """The error for the VM when a datagram whose fragment zero came times out."""
        raise NotImplementedError

    def _new_entry(self, key: _Key, now: float) -> _Pending | None:
        if not self._make_room(_ENTRY_COST, keep=None):
            self.stats["frag_no_memory"] += 1
            return None
        entry = _Pending(deadline=now + self.timeout)
        self._pending[key] = entry
        self._used += entry.cost
        return entry

    def _make_room(self, cost: int, keep: _Key | None) -> bool:
        """Evict the oldest datagrams (never ``keep``) until ``cost`` fits."""
        if cost > self.max_bytes:
            return False
        while self._used + cost > self.max_bytes:
            victim = next((k for k in self._pending if k != keep), None)
            if victim is None:
                return False
            self.stats["frag_evicted"] += 1
            self._drop(victim)
        return True

    def _drop(self, key: _Key) -> None:
        entry = self._pending.pop(key)
        self._used -= entry.cost

    def _kill(self, entry: _Pending) -> None:
        self._used -= entry.cost - _ENTRY_COST
        entry.cost = _ENTRY_COST
        entry.dead = True
        entry.starts, entry.ends, entry.parts = [], [], []
        entry.quote = None

    def _overlap(self, entry: _Pending) -> None:
        self.stats["frag_overlap"] += 1
        self._kill(entry)

    def next_deadline(self) -> float | None:
        for entry in self._pending.values():
            return entry.deadline
        return None

    def handle_timer(self, now: float) -> None:
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if entry.deadline > now:
                break
            self._drop(key)
            if entry.dead:
                continue
            self.stats["frag_timeout"] += 1
            if self.send_time_exceeded and entry.quote is not None:
                # "Fragment reassembly time exceeded" only when fragment zero arrived.
                err = self._timeout_error(key, entry.quote)
                if err is not None:
                    self._box.packets.append(err)

    def drain(self) -> tuple[list[bytes], list[Effect]]:
        """ICMP reassembly-timeout errors for VMs (no effects)."""
        return self._box.take()


class Reassembler(FragmentReassembly):
    """Collects IPv4 fragments keyed by (src, dst, proto, ident) (RFC 791)."""

    def add(self, pkt: IPv4Packet, now: float) -> bytes | None:
        """Store one fragment; return the whole IPv4 packet once it is complete."""
        if not pkt.is_fragment:
            return pkt.header.tobytes() + pkt.payload.tobytes()
        key = (pkt.src, pkt.dst, pkt.proto, pkt.ident)
        return self._add(key, pkt.frag_offset, pkt.more_fragments, pkt.payload, pkt.header, now)

    def _whole_header(self, header: bytes, payload_len: int) -> bytes:
        return _rewrite_header(header, payload_len)

    def _timeout_error(self, key: _Key, quote: bytes) -> bytes | None:
        # RFC 792: sent from the address the VM was talking to.
        return time_exceeded(quote, key[1], 1)


def _rewrite_header(header: bytes, payload_len: int) -> bytes:
    """The first fragment's header made whole: new length, no MF/offset, new checksum."""
    hdr = bytearray(header)
    struct.pack_into("!H", hdr, 2, len(hdr) + payload_len)
    struct.pack_into("!H", hdr, 6, struct.unpack_from("!H", hdr, 6)[0] & FLAG_DF)
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr)


def _copied_options(options: bytes) -> bytes:
    """Options with the "copied" bit set, which every fragment must carry (RFC 791)."""
    out = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of list
            break
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        length = options[i + 1]
        if kind & 0x80:
            out += options[i : i + length]
        i += length
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most ``mtu`` bytes.

    Packets that fit, have DF set or are malformed come back unchanged (as a
    one-element list); fragmenting a fragment keeps its offset and MF flag.
    """
    if mtu < MIN_MTU:
        raise ValueError(f"MTU {mtu} is below the IPv4 minimum {MIN_MTU}")
    if len(packet) <= mtu or len(packet) < 20:
        return [packet]
    ihl = (packet[0] & 0xF) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    frag = struct.unpack_from("!H", packet, 6)[0]
    if packet[0] >> 4 != 4 or ihl < 20 or total < ihl or total > len(packet):
        return [packet]
    if total <= mtu or frag & FLAG_DF:
        return [packet[:total]]
    header = packet[:ihl]
    later_header = header[:20] + _copied_options(header[20:])
    base = (frag & OFFSET_MASK) * 8
    last_mf = frag & FLAG_MF
    payload = memoryview(packet)[ihl:total]
    out: list[bytes] = []
    pos = 0
    while pos < len(payload):
        hdr = header if pos == 0 else later_header
        room = (mtu - len(hdr)) & ~7
        chunk = payload[pos : pos + room]
        more = pos + len(chunk) < len(payload)
        h = bytearray(hdr)
        h[0] = 0x40 | (len(hdr) // 4)
        struct.pack_into("!H", h, 2, len(hdr) + len(chunk))
        struct.pack_into("!H", h, 6, (FLAG_MF if more else last_mf) | ((base + pos) >> 3))
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, internet_checksum(h))
        out.append(bytes(h) + chunk.tobytes())
        pos += len(chunk)
    return out


__all__ = ["MAX_DATAGRAM", "MIN_MTU", "FragmentReassembly", "Reassembler", "fragment_ipv4"]
