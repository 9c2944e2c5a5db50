"""The DNS server on the gateway (UDP and TCP port 53), sans-I/O.

Order of authority: built-in names, then the hosts file, then the upstream
servers (forwarded unchanged, whatever the record type). In host mode
(`mode="host"`) A, AAAA and PTR go to the host's OS resolver instead (see
hostmode.py); other types still go upstream. Answers over UDP
obey the client's size limit (512, or its EDNS payload up to what fits the
VM's MTU): bigger ones are cut to the question with TC set so the client
retries over TCP. Bad queries never raise: garbage and responses are
dropped, a readable header gets FORMERR or NOTIMP.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.cache import KEY_FLAGS, AnswerCache, CacheKey
from pyvpnkit.core.dns.forwarder import Forwarder, Question, Resolved, Server
from pyvpnkit.core.dns.hostmode import (
    UNSUPPORTED_TEXT,
    HostDone,
    HostLookups,
    host_question,
)
from pyvpnkit.core.dns.names import LocalNames
from pyvpnkit.core.dns.zones import NoSuchName
from pyvpnkit.core.effects import HostResolve, UpstreamQuery
from pyvpnkit.wire.dnsquestion import parse_query
from pyvpnkit.wire.errors import ParseError

log = logging.getLogger("pyvpnkit.dns")

MODES = ("forward", "host")

UDP_DEFAULT_LIMIT = 512  # RFC 1035 limit without EDNS
TCP_LIMIT = 65535
LOCAL_MEMO_SIZE = 256  # local answers kept as wire bytes (emptied when full)
_HEADER = struct.Struct("!6H")
_QR = 0x8000
_TC = 0x0200
_RD = 0x0100
_OPCODE_QUERY = int(dns.opcode.QUERY)
_IN = int(dns.rdataclass.IN)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs more, one per query
class DnsAnswer:
    """Send `data` to `client` (a UDP datagram, or one TCP message to which the
    caller adds the 2-byte length)."""

    client: Hashable
    transport: str
    data: bytes


@dataclass(slots=True)
class _Origin:
    """Who asked, remembered while a query is upstream."""

    client: Hashable
    transport: str
    raw: bytes  # the query; dnspython reads it only if we must answer ourselves
    qid: int
    edns: bool
    limit: int
    dup_key: tuple[Hashable, int, Question] | None
    cache_key: CacheKey | None = None  # where the answer goes in the cache, if on


def header_only_reply(data: bytes, rcode: int) -> bytes:
    """A reply with no sections, for queries we cannot or will not parse."""
    qid, flags = struct.unpack_from("!HH", data)
    flags = _QR | (flags & (0x7800 | _RD)) | (rcode & 0xF)
    return _HEADER.pack(qid, flags, 0, 0, 0, 0)


def truncate_reply(wire: bytes, limit: int, edns_payload: int | None) -> bytes:
    """Keep header and question, drop every record, set TC (RFC 2181 9)."""
    try:
        msg = dns.message.from_wire(wire, question_only=True)
        cut = dns.message.Message(id=msg.id)
        cut.flags = msg.flags | dns.flags.TC
        cut.question = list(msg.question)
        if edns_payload is not None:
            cut.use_edns(0, payload=edns_payload)
        out = cut.to_wire()
        if len(out) <= limit:
            return out
    except Exception:  # a reply dnspython cannot read still gets a valid TC header
        pass
    qid, flags = struct.unpack_from("!HH", wire)
    return _HEADER.pack(qid, flags | _TC | _QR, 0, 0, 0, 0)


class DnsServer:
    def __init__(
        self,
        config: NetConfig,
        upstreams: list[tuple[str, int]],
        hosts_text: str = "",
        *,
        new_id: Callable[[], int] | None = None,
        resend_interval: float = 1.0,
        timeout: float = 5.0,
        down_after: int = 3,
        max_pending: int = 1024,
        udp_cap: int | None = None,
        mode: str = "forward",
        host_timeout: float = 5.0,
        host_max_inflight: int = 64,
        cache_size: int = 0,
    ) -> None:
        """`new_id` draws upstream query ids; pass an unpredictable source in
        production (the default counter is deterministic, for tests).
        `udp_cap` bounds EDNS answers so they fit one frame (default MTU-28).
        `mode` "host" sends A/AAAA/PTR to the OS resolver (HostResolve effects),
        at most `host_max_inflight` at once, each SERVFAIL after `host_timeout`.
        `cache_size` > 0 keeps up to that many forwarded answers (cache.py)."""
        if mode not in MODES:
            raise ValueError(f"DNS mode must be one of {MODES}, not {mode!r}")
        self.config = config
        self.mode = mode
        self.names = LocalNames(config, hosts_text)
        self.forwarder = Forwarder(
            upstreams,
            new_id=new_id,
            resend_interval=resend_interval,
            timeout=timeout,
            down_after=down_after,
            max_pending=max_pending,
        )
        self.host = HostLookups(
            timeout=host_timeout, max_inflight=host_max_inflight, max_waiting=max_pending
        )
        self.cache = AnswerCache(cache_size) if cache_size > 0 else None
        # Our own answers to the built-in names and the hosts file, as wire bytes
        # (dnspython builds each in ~100 us; a copy with the asker's id is ~1 us),
        # valid while self.names.version stays.
        self._local_wire: dict[CacheKey, bytes] = {}
        self._local_version = -1
        self._unsupported_logged: set[int] = set()
        self.udp_cap = max(UDP_DEFAULT_LIMIT, udp_cap or config.mtu - 28)
        self._udp_inflight: set[tuple[Hashable, int, Question]] = set()
        self._effects: list[DnsAnswer | UpstreamQuery | HostResolve] = []
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "queries",
                "dropped",
                "formerr",
                "notimp",
                "local",
                "forwarded",
                "servfail",
                "truncated",
                "duplicates",
                "host",
                "unsupported",
                "cached",
            ),
            0,
        )

    # -- configuration -------------------------------------------------------------

    def set_vm_addresses(self, addrs: list[bytes]) -> None:
        self.names.set_vm_addresses(addrs)

    def load_hosts(self, text: str) -> None:
        self.names.load_hosts(text)

    def set_upstreams(self, upstreams: Iterable[Server]) -> None:
        """New queries go to `upstreams`; those in flight finish on their own servers."""
        self.forwarder.set_servers(upstreams)
        if self.cache is not None:
            self.cache.clear()

    # -- inputs ----------------------------------------------------------------------

    def handle_query(
        self, data: bytes | memoryview, client: Hashable, transport: str, now: float
    ) -> None:
        self.stats["queries"] += 1
        raw = bytes(data)
        if len(raw) < 12:
            self.stats["dropped"] += 1
            return
        flags = raw[2] << 8 | raw[3]
        if flags & _QR:
            self.stats["dropped"] += 1  # never answer answers (reflection loops)
            return
        if (flags >> 11) & 0xF != _OPCODE_QUERY:
            self.stats["notimp"] += 1
            self._answer(client, transport, header_only_reply(raw, dns.rcode.NOTIMP))
            return
        try:
            fast = parse_query(raw)
        except ParseError:
            self._query_slow(raw, client, transport, now)
            return
        if transport != "udp":
            limit = TCP_LIMIT
        elif fast.edns_payload is None:
            limit = UDP_DEFAULT_LIMIT
        else:
            limit = max(UDP_DEFAULT_LIMIT, min(fast.edns_payload, self.udp_cap))
        edns = fast.edns_payload is not None
        key: CacheKey = (
            fast.key, fast.qtype, fast.qclass, flags & KEY_FLAGS, edns, fast.dnssec_ok
        )
        qname = None
        if self.names.may_answer(fast.key):
            memo = self._local_memo()
            wire = memo.get(key) if memo is not None else None
            if wire is not None:
                self.stats["local"] += 1
                out = bytearray(wire)
                out[0:2] = raw[:2]
                out[12 : 12 + len(fast.name)] = fast.name  # the asker's spelling
                self._send(client, transport, bytes(out), limit, self._our_payload(edns))
                return
            qname = dns.name.Name((*fast.labels, b""))
            local = self.names.lookup(qname, fast.qtype, fast.qclass)
            if local is not None:
                # Answered with dnspython, and kept for the next asker.
                keep = key if memo is not None else None
                self._query_slow(raw, client, transport, now, local, keep)
                return
        cache_key: CacheKey | None = None
        if self.cache is not None:
            cache_key = key
            hit = self.cache.get(cache_key, now, raw[:2], fast.name)
            if hit is not None:
                self.stats["cached"] += 1
                self._send(client, transport, hit, limit, self._our_payload(edns))
                return
        if qname is None and self.mode == "host":
            qname = dns.name.Name((*fast.labels, b""))
        question = (fast.key, fast.qtype, fast.qclass)
        self._forward(
            raw, fast.id, edns, limit, qname, question, client, transport, now, cache_key
        )

    def _query_slow(
        self,
        raw: bytes,
        client: Hashable,
        transport: str,
        now: float,
        local: list[dns.rrset.RRset] | NoSuchName | None = None,
        memo_key: CacheKey | None = None,
    ) -> None:
        """A query outside the fast path's shape, or one we answer ourselves
        (`local`: the answer the fast path already looked up; `memo_key`: keep it)."""
        try:
            if _HEADER.unpack_from(raw)[2] != 1:
                raise ValueError("exactly one question is supported")
            query = dns.message.from_wire(raw)
        except Exception:  # any parse failure with a readable header
            self.stats["formerr"] += 1
            self._answer(client, transport, header_only_reply(raw, dns.rcode.FORMERR))
            return
        limit = self._limit(query, transport)
        q = query.question[0]
        if local is None:
            local = self.names.lookup(q.name, q.rdtype, q.rdclass)
        if local is not None:
            self.stats["local"] += 1
            wire = self._reply_local(query, local, client, transport, limit)
            if memo_key is not None:
                if len(self._local_wire) >= LOCAL_MEMO_SIZE:
                    self._local_wire.clear()
                self._local_wire[memo_key] = wire
            return
        question = (q.name.to_digestable(), q.rdtype, q.rdclass)
        self._forward(
            raw, query.id, query.edns >= 0, limit, q.name, question, client, transport, now
        )

    def _forward(
        self,
        raw: bytes,
        qid: int,
        edns: bool,
        limit: int,
        qname: dns.name.Name | None,
        question: Question,
        client: Hashable,
        transport: str,
        now: float,
        cache_key: CacheKey | None = None,
    ) -> None:
        """Send upstream (or, in host mode, to the OS resolver) a query not ours.
        `qname` (dnspython's) is needed in host mode only."""
        dup_key: tuple[Hashable, int, Question] | None = None
        if transport == "udp":
            # A stub retransmitting the same query must not start a second chase.
            dup_key = (client, qid, question)
            if dup_key in self._udp_inflight:
                self.stats["duplicates"] += 1
                return
        origin = _Origin(client, transport, raw, qid, edns, limit, dup_key, cache_key)
        if self.mode == "host" and question[2] == _IN:
            assert qname is not None
            if self._ask_host(origin, qname, question[1], now):
                return
        if not self.forwarder.submit(raw, question, origin, transport, now):
            self._servfail(origin)
            return
        if dup_key is not None:
            self._udp_inflight.add(dup_key)
        self.stats["forwarded"] += 1
        self._pump(now)

    def handle_upstream_reply(self, token: int, data: bytes, now: float) -> None:
        self.forwarder.handle_reply(token, bytes(data), now)
        self._pump(now)

    def handle_upstream_error(self, token: int, now: float) -> None:
        self.forwarder.handle_error(token, now)
        self._pump(now)

    def handle_host_answer(
        self, token: int, addresses: list[str] | None, error: str | None, now: float
    ) -> None:
        """Result of a HostResolve: address texts (for PTR: host names), or
        `addresses` None and `error` one of hostmode.NXDOMAIN/NODATA/SERVFAIL."""
        self.host.handle_answer(token, addresses, error, now)
        self._pump(now)

    def next_deadline(self) -> float | None:
        when = self.forwarder.next_deadline()
        if self.mode != "host":
            return when  # no host lookups outside host mode
        host = self.host.next_deadline()
        if host is not None and (when is None or host < when):
            return host
        return when

    def handle_timer(self, now: float) -> None:
        self.forwarder.handle_timer(now)
        self.host.handle_timer(now)
        self._pump(now)

    def drain(self) -> list[DnsAnswer | UpstreamQuery | HostResolve]:
        out = self._effects
        if not out:
            return []  # the common case: the stack asks several times per drain
        self._effects = []
        return out

    # -- internals -------------------------------------------------------------------

    def _limit(self, query: dns.message.Message, transport: str) -> int:
        if transport != "udp":
            return TCP_LIMIT
        if query.edns < 0:
            return UDP_DEFAULT_LIMIT
        return max(UDP_DEFAULT_LIMIT, min(query.payload, self.udp_cap))

    def _our_payload(self, edns: bool) -> int | None:
        return self.udp_cap if edns else None

    def _reply_local(
        self,
        query: dns.message.Message,
        rrsets: list[dns.rrset.RRset] | NoSuchName,
        client: Hashable,
        transport: str,
        limit: int,
    ) -> bytes:
        """Answer from the zones or tables; returns the whole reply (before truncation)."""
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=self.udp_cap
        )
        response.flags |= dns.flags.AA
        if isinstance(rrsets, NoSuchName):
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer = list(rrsets)
        # Render in full (dnspython would stop at the client's size); _send truncates.
        wire = response.to_wire(max_size=TCP_LIMIT)
        self._send(client, transport, wire, limit, self._our_payload(query.edns >= 0))
        return wire

    def _local_memo(self) -> dict[CacheKey, bytes] | None:
        """The kept local answers, emptied when the tables changed; None while zones
        exist (theirs may hold other names and records than the question's)."""
        if self.names.zones.keys:
            return None
        if self._local_version != self.names.version:
            self._local_wire.clear()
            self._local_version = self.names.version
        return self._local_wire

    def _ask_host(
        self, origin: _Origin, qname: dns.name.Name, rdtype: int, now: float
    ) -> bool:
        """Host mode: start an OS lookup, or answer what nobody here can.
        False: forward upstream as in forward mode."""
        name = host_question(qname, rdtype)
        if name is None:
            if self.forwarder.servers:
                return False  # hybrid: the OS resolver for addresses, upstream for the rest
            self._unsupported(origin, rdtype)
            return True
        if not self.host.submit(name, rdtype, qname, origin, now):
            self._servfail(origin)
            return True
        if origin.dup_key is not None:
            self._udp_inflight.add(origin.dup_key)
        self.stats["host"] += 1
        self._pump(now)
        return True

    def _unsupported(self, origin: _Origin, rdtype: int) -> None:
        """SERVFAIL, not NXDOMAIN: the name may well exist (vpnkit issue #509)."""
        self.stats["unsupported"] += 1
        if rdtype not in self._unsupported_logged:
            self._unsupported_logged.add(rdtype)
            log.warning(
                "DNS host mode without upstream servers: %s queries get SERVFAIL (%s)",
                dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype)),
                UNSUPPORTED_TEXT,
            )
        ede = None
        if origin.edns:
            ede = dns.edns.EDEOption(dns.edns.EDECode.NOT_SUPPORTED, UNSUPPORTED_TEXT)
        self._respond(origin, dns.rcode.SERVFAIL, ede=ede)

    def _servfail(self, origin: _Origin) -> None:
        self.stats["servfail"] += 1
        self._respond(origin, dns.rcode.SERVFAIL)

    def _respond(
        self,
        origin: _Origin,
        rcode: dns.rcode.Rcode,
        answer: list[dns.rrset.RRset] | None = None,
        ede: dns.edns.EDEOption | None = None,
    ) -> None:
        """Answer a query we resolved ourselves (host lookups, failures)."""
        try:
            query = dns.message.from_wire(origin.raw)
        except Exception:  # the fast path let through an option dnspython rejects
            self._answer(origin.client, origin.transport, header_only_reply(origin.raw, rcode))
            return
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=self.udp_cap
        )
        response.set_rcode(rcode)
        if answer:
            response.answer = answer
        if ede is not None:
            response.use_edns(0, 0, self.udp_cap, options=[ede])
        self._send(
            origin.client,
            origin.transport,
            response.to_wire(max_size=TCP_LIMIT),
            origin.limit,
            self._our_payload(origin.edns),
        )

    def _pump(self, now: float) -> None:
        for item in self.forwarder.drain():
            if isinstance(item, UpstreamQuery):
                self._effects.append(item)
                continue
            self._resolved(item, now)
        if self.mode != "host":
            return  # no host lookups outside host mode
        for host_item in self.host.drain():
            if isinstance(host_item, HostResolve):
                self._effects.append(host_item)
                continue
            self._host_done(host_item)

    def _host_done(self, item: HostDone) -> None:
        origin = item.context
        assert isinstance(origin, _Origin)
        if origin.dup_key is not None:
            self._udp_inflight.discard(origin.dup_key)
        if item.rcode == dns.rcode.SERVFAIL:
            self._servfail(origin)
            return
        self._respond(origin, item.rcode, list(item.rrsets))

    def _resolved(self, item: Resolved, now: float) -> None:
        origin = item.context
        assert isinstance(origin, _Origin)
        if origin.dup_key is not None:
            self._udp_inflight.discard(origin.dup_key)
        reply = item.reply
        if reply is None:
            self._servfail(origin)
            return
        if origin.cache_key is not None and self.cache is not None:
            self.cache.put(origin.cache_key, reply, now)
        wire = origin.qid.to_bytes(2, "big") + reply[2:]
        if len(wire) > origin.limit:
            self._send(origin.client, origin.transport, wire, origin.limit,
                       self._our_payload(origin.edns))
        else:
            self._effects.append(DnsAnswer(origin.client, origin.transport, wire))

    def _send(
        self,
        client: Hashable,
        transport: str,
        wire: bytes,
        limit: int,
        edns_payload: int | None,
    ) -> None:
        if len(wire) > limit:
            self.stats["truncated"] += 1
            wire = truncate_reply(wire, limit, edns_payload)
        self._answer(client, transport, wire)

    def _answer(self, client: Hashable, transport: str, wire: bytes) -> None:
        self._effects.append(DnsAnswer(client, transport, wire))
