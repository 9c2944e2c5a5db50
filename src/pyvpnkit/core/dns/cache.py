"""A small cache of forwarded DNS answers (off unless --dns-cache N).

Entries are upstream replies kept as bytes with the offsets of their TTL
fields, so a hit is one copy of the stored reply with the asker's id and
spelling of the name written in and the TTLs lowered by the time the answer
spent here: no parse, no dnspython. The key holds everything that changes an
answer besides the name and type: the RD, AD and CD bits, EDNS and its DO bit.

What is kept, and for how long: NOERROR answers for their smallest TTL;
negative ones (NXDOMAIN, or NOERROR without answers) for the smallest TTL and
the SOA's min(TTL, MINIMUM) (RFC 2308), and not at all without that SOA.
Truncated replies and failures (SERVFAIL, REFUSED...) are never kept. At most
`max_entries` answers; the least recently used goes first.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from pyvpnkit.wire.dnsquestion import ParseError, reply_ttls

CacheKey = tuple[bytes, int, int, int, bool, bool]  # key, qtype, qclass, flags, EDNS, DO

KEY_FLAGS = 0x0100 | 0x0020 | 0x0010  # RD, AD, CD: bits of a query that change the answer
_TC = 0x0200
_NOERROR, _NXDOMAIN = 0, 3
_TTL = struct.Struct("!I")


@dataclass(slots=True)
class _Entry:
    reply: bytes
    ttl_offsets: list[int]
    stored: float
    expires: float


class AnswerCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every answer (the upstreams changed: a VPN's split DNS answers differently)."""
        self._entries.clear()

    def get(self, key: CacheKey, now: float, qid: bytes, name: bytes) -> bytes | None:
        """The cached answer for `key` with id `qid` and question name `name`
        (the asker's spelling, same length as the stored one), or None."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        out = bytearray(entry.reply)
        out[0:2] = qid
        out[12 : 12 + len(name)] = name
        age = int(now - entry.stored)
        if age > 0:
            for at in entry.ttl_offsets:
                ttl = _TTL.unpack_from(out, at)[0]
                _TTL.pack_into(out, at, ttl - age if ttl > age else 0)
        return bytes(out)

    def put(self, key: CacheKey, reply: bytes, now: float) -> None:
        """Keep `reply` (the upstream's answer to the question in `key`) if it may be."""
        if len(reply) < 12 or reply[2] << 8 & _TC:
            return
        rcode = reply[3] & 0xF
        if rcode not in (_NOERROR, _NXDOMAIN):
            return
        try:
            ttls = reply_ttls(reply)
        except ParseError:
            return
        lifetime = ttls.ttl
        answers = reply[6] << 8 | reply[7]
        if rcode == _NXDOMAIN or answers == 0:
            if ttls.negative_ttl is None:
                return  # no SOA: nothing says how long "no such data" holds
            lifetime = min(ttls.negative_ttl, ttls.ttl if ttls.ttl is not None else 0)
        if not lifetime:
            return
        entries = self._entries
        if key not in entries and len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[key] = _Entry(reply, ttls.offsets, now, now + lifetime)
        entries.move_to_end(key)


__all__ = ["KEY_FLAGS", "AnswerCache", "CacheKey"]
