"""Host-resolver DNS mode (`--dns-mode host`), sans-I/O.

Some hosts know names only through their OS resolver (VPN split DNS,
systemd-resolved routing domains, mDNS, nsswitch modules), so A, AAAA and
PTR questions are answered from getaddrinfo/getnameinfo, which the runtime
calls for us (`HostResolve` effects). Those calls cannot answer other record
types; the DnsServer forwards them to the upstream servers when there are
any, and otherwise answers SERVFAIL with an Extended DNS Error "Not
Supported", never NXDOMAIN (vpnkit's NXDOMAIN made SRV/MX/TXT lookups fail
for good, issue #509).

getaddrinfo hides CNAMEs and TTLs: answers are flattened to address records
owned by the query name, with a fixed `HOST_TTL`.

Whatever addresses it gives a VM (127.0.0.1 for localhost,
::ffff:127.0.0.1 from a hosts file), the VM's connection to them goes
through the NATs and core/routes like any other: answering is not reaching.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import socket
from builtins import object  # noqa: UP029  (mypyc finds dataclass field types here)
from collections import deque
from dataclasses import dataclass

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from pyvpnkit.core.effects import HostResolve

HOST_TTL = 30  # getaddrinfo gives no TTL; short, so host-side changes show up soon

# How the runtime classifies a failed lookup (the `error` of handle_answer).
NXDOMAIN = "nxdomain"  # EAI_NONAME: the name does not exist
NODATA = "nodata"  # the name exists, but has no address of the asked family
SERVFAIL = "servfail"  # EAI_AGAIN, EAI_FAIL, timeout, anything else

UNSUPPORTED_TEXT = "host resolver mode answers only A, AAAA and PTR"

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
PTR = dns.rdatatype.PTR

_IN_ADDR = dns.name.from_text("in-addr.arpa.")
_IP6 = dns.name.from_text("ip6.arpa.")
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class HostDone:
    """A host lookup finished: the reply's rcode and answer rrsets."""

    context: object
    rcode: dns.rcode.Rcode
    rrsets: tuple[dns.rrset.RRset, ...]


def _looks_numeric(text: str) -> bool:
    """getaddrinfo parses "10", "0x7f.1" or "::1" as addresses, not names."""
    if ":" in text:
        return True
    try:
        socket.inet_aton(text)  # pure parsing, no I/O
    except OSError:
        return False
    return True


def host_question(qname: dns.name.Name, rdtype: int) -> str | None:
    """What to ask the host's resolver for (qname, rdtype), or None when it
    cannot answer: other types, names with bytes a hostname cannot hold,
    numeric names, and reverse names that are not one whole address."""
    if rdtype == PTR:
        return reverse_address(qname)
    if rdtype not in (A, AAAA):
        return None
    text = qname.to_text(omit_final_dot=True)
    # No trailing dot: glibc's files backend would not match "name." in /etc/hosts.
    if not text or text == "." or "\\" in text or _looks_numeric(text):
        return None
    return text


def reverse_address(qname: dns.name.Name) -> str | None:
    """The address a full in-addr.arpa / ip6.arpa name stands for, else None."""
    try:
        if qname.is_subdomain(_IN_ADDR):
            labels = [lb.decode("ascii") for lb in qname.relativize(_IN_ADDR).labels]
            if len(labels) != 4 or not all(lb.isdigit() and len(lb) <= 3 for lb in labels):
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(labels))))
        if qname.is_subdomain(_IP6):
            labels = [lb.decode("ascii").lower() for lb in qname.relativize(_IP6).labels]
            if len(labels) != 32 or not all(len(lb) == 1 and lb in _HEX for lb in labels):
                return None
            digits = "".join(reversed(labels))
            return str(ipaddress.IPv6Address(int(digits, 16)))
    except (UnicodeDecodeError, ValueError):
        return None
    return None


def address_rrsets(
    qname: dns.name.Name, rdtype: int, addresses: list[str]
) -> tuple[dns.rrset.RRset, ...]:
    """One rrset of the asked family, deduplicated, in resolver order; () is NODATA.

    Addresses of the other family, unparsable ones and zone ids are dropped.
    """
    size = 4 if rdtype == A else 16
    kind = dns.rdatatype.RdataType.make(rdtype)
    packed: dict[bytes, None] = {}
    for text in addresses:
        try:
            p = ipaddress.ip_address(text.split("%", 1)[0]).packed
        except ValueError:
            continue
        if len(p) == size:
            packed[p] = None
    if not packed:
        return ()
    rrset = dns.rrset.RRset(qname, IN, kind)
    for p in packed:
        rrset.add(dns.rdata.from_text(IN, kind, str(ipaddress.ip_address(p))), HOST_TTL)
    return (rrset,)


def ptr_rrsets(qname: dns.name.Name, hostnames: list[str]) -> tuple[dns.rrset.RRset, ...] | None:
    """PTR rrset for the names getnameinfo gave; None if none is a valid name."""
    rrset = dns.rrset.RRset(qname, IN, PTR)
    for host in hostnames:
        try:
            target = dns.name.from_text(host.rstrip(".") + ".")
            rrset.add(dns.rdata.from_text(IN, PTR, target.to_text()), HOST_TTL)
        except Exception:  # dnspython raises several kinds for bad names
            continue
    return (rrset,) if len(rrset) else None


@dataclass(slots=True)
class _Lookup:
    token: int
    name: str
    rdtype: int
    qname: dns.name.Name
    context: object
    deadline: float
    started: bool = False


class HostLookups:
    """Host lookups in flight: at most `max_inflight` handed to the runtime at
    once (the rest wait their turn, up to `max_waiting`), each answered
    SERVFAIL after `timeout` whatever the runtime does."""

    def __init__(
        self, *, timeout: float = 5.0, max_inflight: int = 64, max_waiting: int = 1024
    ) -> None:
        self.timeout = timeout
        self.max_inflight = max(1, max_inflight)
        self.max_waiting = max_waiting
        self._lookups: dict[int, _Lookup] = {}
        self._waiting: deque[int] = deque()
        self._inflight = 0
        self._heap: list[tuple[float, int]] = []
        self._tokens = itertools.count(1)
        self._out: list[HostResolve | HostDone] = []
        self.timeouts = 0

    @property
    def pending_count(self) -> int:
        return len(self._lookups)

    def submit(
        self, name: str, rdtype: int, qname: dns.name.Name, context: object, now: float
    ) -> bool:
        """Queue a lookup; False when too many are already waiting."""
        if len(self._lookups) - self._inflight >= self.max_waiting:
            return False
        token = next(self._tokens)
        lookup = _Lookup(token, name, rdtype, qname, context, now + self.timeout)
        self._lookups[token] = lookup
        heapq.heappush(self._heap, (lookup.deadline, token))
        self._waiting.append(token)
        self._start_waiting()
        return True

    def handle_answer(
        self, token: int, addresses: list[str] | None, error: str | None, now: float
    ) -> None:
        """The runtime's result; late (timed-out) or unknown tokens are ignored."""
        lookup = self._lookups.get(token)
        if lookup is None or not lookup.started:
            return
        if addresses is not None:
            self._finish(lookup, *self._answer(lookup, addresses))
        elif error == NXDOMAIN:
            self._finish(lookup, dns.rcode.NXDOMAIN, ())
        elif error == NODATA:
            # A PTR name "without data" still has no name to give.
            rcode = dns.rcode.NXDOMAIN if lookup.rdtype == PTR else dns.rcode.NOERROR
            self._finish(lookup, rcode, ())
        else:
            self._finish(lookup, dns.rcode.SERVFAIL, ())
        self._start_waiting()

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, token = heap[0]
            if token in self._lookups:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token = heapq.heappop(heap)
            lookup = self._lookups.get(token)
            if lookup is not None:
                self.timeouts += 1
                self._finish(lookup, dns.rcode.SERVFAIL, ())
        self._start_waiting()

    def drain(self) -> list[HostResolve | HostDone]:
        out, self._out = self._out, []
        return out

    # -- internals ------------------------------------------------------------------

    def _answer(
        self, lookup: _Lookup, addresses: list[str]
    ) -> tuple[dns.rcode.Rcode, tuple[dns.rrset.RRset, ...]]:
        if lookup.rdtype == PTR:
            if not addresses:
                return dns.rcode.NXDOMAIN, ()
            rrsets = ptr_rrsets(lookup.qname, addresses)
            return (dns.rcode.SERVFAIL, ()) if rrsets is None else (dns.rcode.NOERROR, rrsets)
        return dns.rcode.NOERROR, address_rrsets(lookup.qname, lookup.rdtype, addresses)

    def _start_waiting(self) -> None:
        while self._inflight < self.max_inflight and self._waiting:
            lookup = self._lookups.get(self._waiting.popleft())
            if lookup is None:
                continue  # timed out while waiting
            lookup.started = True
            self._inflight += 1
            self._out.append(HostResolve(lookup.token, lookup.name, lookup.rdtype))

    def _finish(
        self, lookup: _Lookup, rcode: dns.rcode.Rcode, rrsets: tuple[dns.rrset.RRset, ...]
    ) -> None:
        del self._lookups[lookup.token]
        if lookup.started:
            self._inflight -= 1
        self._out.append(HostDone(lookup.context, rcode, rrsets))


__all__ = [
    "HOST_TTL",
    "NODATA",
    "NXDOMAIN",
    "SERVFAIL",
    "UNSUPPORTED_TEXT",
    "HostDone",
    "HostLookups",
    "HostResolve",
    "address_rrsets",
    "host_question",
    "ptr_rrsets",
    "reverse_address",
]
