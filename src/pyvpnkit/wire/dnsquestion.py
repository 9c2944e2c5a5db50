"""The header and question of a DNS message (RFC 1035 4.1), and a query's EDNS size.

Forwarding a query needs only these: who asked what, and how big an answer
fits. Reading them by hand costs a fraction of a full dnspython parse, which
stays for the answers the stack builds itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

HEADER_LEN = 12
TYPE_OPT = 41
_HEADER = struct.Struct("!6H")
_TYPE_CLASS = struct.Struct("!HH")
_OPT_TAIL = struct.Struct("!HHIH")  # type, class (= UDP payload), ttl, rdlength
_RECORD = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U32 = struct.Struct("!I")
_MAX_NAME = 255
_DO = 0x8000  # DNSSEC OK, in the OPT record's TTL field
TYPE_SOA = 6


@dataclass(slots=True)
class DnsQuestion:
    """`name` is the question's name in wire form with the asker's spelling (0x20
    case is echoed); `key` is the same in lower case, for case-insensitive
    matching. `edns_payload` is the OPT record's UDP size, None without OPT."""

    id: int
    flags: int
    name: bytes
    key: bytes
    qtype: int
    qclass: int
    edns_payload: int | None
    dnssec_ok: bool = False  # the OPT record's DO bit

    @property
    def labels(self) -> tuple[bytes, ...]:
        """The name's labels (for dnspython, on the paths that build an answer)."""
        return name_labels(self.name)


def name_labels(name: bytes) -> tuple[bytes, ...]:
    """The labels of a name in uncompressed wire form (as `_name_end` checked it)."""
    labels = []
    at = 0
    while length := name[at]:
        labels.append(name[at + 1 : at + 1 + length])
        at += 1 + length
    return tuple(labels)


def _name_end(buf: bytes, offset: int) -> int:
    """Where the uncompressed name at `offset` ends; a question's name has nothing
    before it to point at, so compression there is refused like any other oddity."""
    end = len(buf)
    limit = offset + _MAX_NAME
    while True:
        if offset >= end:
            raise ParseError("DNS name runs past the message")
        length = buf[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0:
            raise ParseError(f"DNS label type {length >> 6} in a question")
        offset += length + 1
        if offset >= limit:
            raise ParseError("DNS name too long or truncated")


def parse_reply_question(buf: bytes) -> tuple[int, int, tuple[bytes, int, int] | None]:
    """(id, flags, (key, qtype, qclass) or None when the reply has no question).
    Only header and question are read: a reply's records are relayed, not parsed."""
    if len(buf) < HEADER_LEN:
        raise ParseError(f"DNS message too short ({len(buf)} bytes)")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(buf)
    if qdcount == 0:
        return qid, flags, None
    if qdcount != 1:
        raise ParseError(f"{qdcount} questions in a DNS message")
    offset = _name_end(buf, HEADER_LEN)
    if offset + 4 > len(buf):
        raise ParseError("DNS question truncated")
    qtype, qclass = _TYPE_CLASS.unpack_from(buf, offset)
    return qid, flags, (buf[HEADER_LEN:offset].lower(), qtype, qclass)


def parse_query(buf: bytes) -> DnsQuestion:
    """A query of the common shape: one question, no answer or authority
    records, at most an OPT record, nothing after. Anything else raises
    ParseError, and the caller parses it the slow, complete way."""
    if len(buf) < HEADER_LEN:
        raise ParseError(f"DNS message too short ({len(buf)} bytes)")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(buf)
    if qdcount != 1 or ancount or nscount or arcount > 1:
        raise ParseError("not a plain one-question DNS query")
    name_end = _name_end(buf, HEADER_LEN)
    if name_end + 4 > len(buf):
        raise ParseError("DNS question truncated")
    qtype, qclass = _TYPE_CLASS.unpack_from(buf, name_end)
    offset = name_end + 4
    payload: int | None = None
    opt_ttl = 0
    if arcount:
        # The OPT pseudo-record: root owner name, type 41, then its options.
        if offset + 1 + _OPT_TAIL.size > len(buf) or buf[offset] != 0:
            raise ParseError("DNS additional record is not a root OPT")
        rtype, payload, opt_ttl, rdlength = _OPT_TAIL.unpack_from(buf, offset + 1)
        if rtype != TYPE_OPT:
            raise ParseError(f"DNS additional record of type {rtype}")
        offset += 1 + _OPT_TAIL.size + rdlength
    if offset != len(buf):
        raise ParseError("DNS query length does not match its records")
    name = buf[HEADER_LEN:name_end]
    return DnsQuestion(
        qid, flags, name, name.lower(), qtype, qclass, payload, bool(opt_ttl & _DO)
    )


@dataclass(slots=True)
class ReplyTtls:
    """Where a reply's TTLs are, for a cache that ages them in place.
    `offsets`: each record's TTL field (OPT, whose "TTL" holds flags, excluded);
    `ttl`: the smallest of them, None without records; `negative_ttl`: for an
    authority-section SOA, min(its TTL, its MINIMUM) as RFC 2308 has it."""

    offsets: list[int]
    ttl: int | None
    negative_ttl: int | None


def _skip_name(buf: bytes, offset: int) -> int:
    """The offset after a (possibly compressed) name in a record."""
    end = len(buf)
    for _ in range(128):  # a 255-byte name has at most 127 labels
        if offset >= end:
            raise ParseError("DNS name runs past the message")
        length = buf[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > end:
                raise ParseError("DNS name pointer truncated")
            return offset + 2
        if length & 0xC0:
            raise ParseError(f"DNS label type {length >> 6}")
        offset += length + 1
    raise ParseError("DNS name too long")


def reply_ttls(buf: bytes) -> ReplyTtls:
    """Walk a reply's records (names skipped, rdata not read but SOA's MINIMUM)."""
    if len(buf) < HEADER_LEN:
        raise ParseError(f"DNS message too short ({len(buf)} bytes)")
    _, _, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(buf)
    offset = HEADER_LEN
    for _ in range(qdcount):
        offset = _skip_name(buf, offset) + 4
    offsets: list[int] = []
    ttls: list[int] = []
    negative: int | None = None
    for index in range(ancount + nscount + arcount):
        offset = _skip_name(buf, offset)
        if offset + _RECORD.size > len(buf):
            raise ParseError("DNS record truncated")
        rtype, _, ttl, rdlength = _RECORD.unpack_from(buf, offset)
        rdata_end = offset + _RECORD.size + rdlength
        if rdata_end > len(buf):
            raise ParseError("DNS record data truncated")
        if rtype != TYPE_OPT:
            offsets.append(offset + 4)
            ttls.append(ttl)
            in_authority = ancount <= index < ancount + nscount
            if rtype == TYPE_SOA and in_authority and negative is None and rdlength >= 22:
                negative = min(ttl, _U32.unpack_from(buf, rdata_end - 4)[0])
        offset = rdata_end
    return ReplyTtls(offsets, min(ttls) if ttls else None, negative)


__all__ = [
    "DnsQuestion",
    "ParseError",
    "ReplyTtls",
    "name_labels",
    "parse_query",
    "parse_reply_question",
    "reply_ttls",
]
