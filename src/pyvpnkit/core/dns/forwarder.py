"""Sans-I/O forwarding of DNS queries to upstream servers.

A query is sent to one server at a time, best server first; every
`resend_interval` without an answer it is sent to the next one (cycling), and
after `timeout` it fails. A server that left `down_after` attempts in a row
unanswered is tried last until it answers again, so a dead first server costs
nothing once noticed. Each query gets its own upstream id (injected source,
unique among the queries in flight) so VM queries with equal ids never mix.
Replies are matched by the token of the attempt plus id and question, and
returned byte for byte: every record type passes unchanged.
"""

from __future__ import annotations

import heapq
import itertools
from builtins import object  # noqa: UP029  (mypyc finds dataclass field types here)
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.opcode
import dns.rcode

from pyvpnkit.core.effects import UpstreamQuery
from pyvpnkit.core.histogram import Histogram
from pyvpnkit.wire.dnsquestion import name_labels, parse_reply_question
from pyvpnkit.wire.errors import ParseError

Server = tuple[str, int]
Question = tuple[bytes, int, int]  # (lower-case wire qname, rdtype, rdclass)

_QR = 0x8000
# Answers that say "this server cannot help", so another one is worth asking.
_RETRYABLE = frozenset(
    int(r) for r in (dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP)
)
_OPCODE_QUERY = int(dns.opcode.QUERY)


@dataclass(slots=True)  # not frozen: one per query, and a frozen __init__ costs more
class Resolved:
    """A forwarded query finished. `reply` still carries the upstream id;
    None means no server gave a usable answer in time."""

    context: object
    reply: bytes | None


@dataclass(slots=True)
class _Health:
    misses: int = 0  # consecutive attempts left unanswered


@dataclass(slots=True)
class _Attempt:
    serial: int
    server: Server
    sent_at: float
    done: bool = False  # answered or errored
    counted: bool = False  # already counted as a miss


@dataclass(slots=True)
class _Pending:
    serial: int
    upstream_id: int
    wire: bytes
    question: Question
    context: object
    transport: str
    deadline: float
    next_send: float
    order: list[Server]
    cursor: int = 0
    tried: set[Server] = field(default_factory=set)
    dead: set[Server] = field(default_factory=set)  # errored for this query
    tokens: list[int] = field(default_factory=list)
    fallback: bytes | None = None  # a SERVFAIL/REFUSED reply, better than nothing

    @property
    def next_event(self) -> float:
        return min(self.next_send, self.deadline)


def _counter_ids() -> Callable[[], int]:
    """Deterministic ids for tests; the runtime injects unpredictable ones."""
    counter = itertools.count(1)
    return lambda: next(counter) & 0xFFFF


class Forwarder:
    def __init__(
        self,
        servers: Iterable[Server],
        *,
        new_id: Callable[[], int] | None = None,
        resend_interval: float = 1.0,
        timeout: float = 5.0,
        down_after: int = 3,
        max_pending: int = 1024,
    ) -> None:
        self._servers: list[Server] = []
        self._health: dict[Server, _Health] = {}
        self._order: list[Server] | None = None  # servers that are down last; None: to sort
        self._zones: dict[Server, tuple[tuple[bytes, ...], ...]] = {}
        self.set_servers(servers)
        self._new_id = new_id or _counter_ids()
        self.resend_interval = resend_interval
        self.timeout = timeout
        self.down_after = down_after
        self.max_pending = min(max_pending, 32768)  # leaves free ids to draw
        self._pending: dict[int, _Pending] = {}
        self._by_uid: dict[int, int] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._heap: list[tuple[float, int]] = []
        self._serials = itertools.count(1)
        self._tokens = itertools.count(1)
        self._out: list[UpstreamQuery | Resolved] = []
        self.latency = Histogram()  # upstream answers, for the metrics

    # -- configuration and introspection -------------------------------------------

    def set_servers(self, servers: Iterable[Server]) -> None:
        """Replace the server list; health of servers that stay is kept."""
        self._servers = list(dict.fromkeys(servers))
        self._health = {s: self._health.get(s, _Health()) for s in self._servers}
        self._order = None

    def set_zones(self, zones: dict[Server, tuple[str, ...]]) -> None:
        """vpnkit's per-server zones (its --dns file's ``zone`` lines): a name inside a
        server's zones goes only to the servers whose zones hold it; other names go to
        every server, as vpnkit's resolver chooses."""
        self._zones = {
            server: tuple(tuple(z.lower().rstrip(".").encode("idna").split(b".")) for z in names)
            for server, names in zones.items() if names
        }

    def _zoned(self, order: list[Server], name: bytes) -> list[Server]:
        labels = name_labels(name)
        matching = [s for s in order if any(
            len(zone) <= len(labels) and labels[len(labels) - len(zone):] == zone
            for zone in self._zones.get(s, ()))]
        return matching or order

    @property
    def servers(self) -> list[Server]:
        return list(self._servers)

    def is_down(self, server: Server) -> bool:
        health = self._health.get(server)
        return health is not None and health.misses >= self.down_after

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # -- inputs ---------------------------------------------------------------------

    def submit(
        self, query: bytes, question: Question, context: object, transport: str, now: float
    ) -> bool:
        """Start forwarding `query` (a whole DNS message). False when too busy."""
        if len(self._pending) >= self.max_pending or len(query) < 12:
            return False
        uid = self._new_id() & 0xFFFF
        while uid in self._by_uid:
            uid = self._new_id() & 0xFFFF
        order = self._order
        if order is None:
            down = self.down_after
            order = sorted(self._servers, key=lambda s: self._health[s].misses >= down)
            self._order = order  # shared by the queries: never changed, only replaced
        if self._zones:
            order = self._zoned(order, question[0])
        serial = next(self._serials)
        deadline = now + self.timeout
        next_send = now + self.resend_interval
        p = _Pending(
            serial, uid, uid.to_bytes(2, "big") + query[2:], question, context, transport,
            deadline, next_send, order,
        )
        self._pending[serial] = p
        self._by_uid[uid] = serial
        if not order:
            self._finish(p)
            return True
        p.cursor = 1
        self._send(p, order[0], now)  # what _send_next picks first: nothing has failed yet
        heapq.heappush(self._heap, (next_send if next_send < deadline else deadline, serial))
        return True

    def handle_reply(self, token: int, data: bytes, now: float) -> None:
        attempt = self._attempts.get(token)
        if attempt is None or attempt.done:
            return
        p = self._pending[attempt.serial]
        verdict = self._check_reply(p, data)
        if verdict is None:
            return  # not a reply to this query (spoofed, stale or garbage)
        attempt.done = True
        self.latency.observe(now - attempt.sent_at)
        health = self._health.get(attempt.server)
        if health is not None:
            if health.misses >= self.down_after:
                self._order = None  # back up: first again
            health.misses = 0
        if verdict:
            self._finish(p, data)
            return
        p.fallback = data
        p.dead.add(attempt.server)
        self._after_failure(p, now)

    def handle_error(self, token: int, now: float) -> None:
        attempt = self._attempts.get(token)
        if attempt is None or attempt.done:
            return
        attempt.done = True
        self._count_miss(attempt)
        p = self._pending[attempt.serial]
        p.dead.add(attempt.server)
        self._after_failure(p, now)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, serial = heap[0]
            p = self._pending.get(serial)
            if p is not None and p.next_event == when:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, serial = heapq.heappop(heap)
            p = self._pending.get(serial)
            if p is None or p.next_event != when:
                continue
            self._count_overdue(p, now)
            if now >= p.deadline:
                self._finish(p, p.fallback)
                continue
            self._send_next(p, now)
            p.next_send = now + self.resend_interval
            self._schedule(p)

    def drain(self) -> list[UpstreamQuery | Resolved]:
        out, self._out = self._out, []
        return out

    # -- internals ------------------------------------------------------------------

    def _schedule(self, p: _Pending) -> None:
        heapq.heappush(self._heap, (p.next_event, p.serial))

    def _send_next(self, p: _Pending, now: float) -> None:
        """Send to the next server in the query's order that has not failed it."""
        n = len(p.order)
        for _ in range(n):
            server = p.order[p.cursor % n]
            p.cursor += 1
            if server not in p.dead:
                self._send(p, server, now)
                return

    def _send(self, p: _Pending, server: Server, now: float) -> None:
        token = next(self._tokens)
        self._attempts[token] = _Attempt(p.serial, server, now)
        p.tokens.append(token)
        p.tried.add(server)
        self._out.append(UpstreamQuery(token, server, p.transport, p.wire))

    def _after_failure(self, p: _Pending, now: float) -> None:
        """An attempt failed outright: try an untried server at once, or give up
        when every server has failed this query."""
        alive = [s for s in p.order if s not in p.dead]
        if not alive:
            self._finish(p, p.fallback)
            return
        untried = [s for s in alive if s not in p.tried]
        if untried:
            p.cursor = p.order.index(untried[0])
            self._send_next(p, now)
            p.next_send = now + self.resend_interval
            self._schedule(p)

    def _count_miss(self, attempt: _Attempt) -> None:
        if not attempt.counted:
            attempt.counted = True
            health = self._health.get(attempt.server)
            if health is not None:
                health.misses += 1
                if health.misses == self.down_after:
                    self._order = None  # down: last from now on

    def _count_overdue(self, p: _Pending, now: float) -> None:
        for token in p.tokens:
            a = self._attempts[token]
            if not a.done and a.sent_at + self.resend_interval <= now:
                self._count_miss(a)

    def _check_reply(self, p: _Pending, data: bytes) -> bool | None:
        """True: the answer. False: a failure reply worth keeping as fallback.
        None: not a reply to this query at all."""
        try:
            qid, flags, question = parse_reply_question(data)
        except ParseError:
            return None
        if qid != p.upstream_id or not flags & _QR or (flags >> 11) & 0xF != _OPCODE_QUERY:
            return None
        rcode = flags & 0xF
        if question is None:
            return False if rcode in _RETRYABLE else None  # e.g. FORMERR for our EDNS
        if question != p.question:
            return None
        return rcode not in _RETRYABLE

    def _finish(self, p: _Pending, reply: bytes | None = None) -> None:
        del self._pending[p.serial]
        del self._by_uid[p.upstream_id]
        for token in p.tokens:
            del self._attempts[token]
        self._out.append(Resolved(p.context, reply))


__all__ = ["Forwarder", "Resolved", "Server", "UpstreamQuery"]
