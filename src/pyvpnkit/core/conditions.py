"""Network conditions and egress rules, per VM and destination: sans-I/O.

An ordered rule list sits between the VMs and the rest of the stack; the
first rule that matches a frame decides: ``allow``, ``reject`` (an RST or an
ICMP unreachable to the VM at once), ``drop`` (silence, both directions) or
``impair`` (loss, duplication, delay with jitter and a rate limit, in either
direction). The stack calls :meth:`Conditions.outbound` for each IP frame a VM
sends and :meth:`Conditions.inbound` for each batch it sends to VMs, only while
``busy``; a stack without rules pays one attribute test per frame.

Delays are deadlines (``next_deadline``/``handle_timer``), never sleeps; the
queue is bounded in bytes (past it frames are dropped and counted). Loss,
duplication and jitter draw from an injected ``random`` so tests are
deterministic. A rule ``to`` a DNS name matches the addresses the stack's DNS
answered for that name (``dns_answer``, fed by the stack as answers leave).

Frames to and from the stack's own addresses (DHCP, DNS, the gateway) are
exempt, unless a rule's ``to`` names the address.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any, Final

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.nat.icmp_errors import build_error_kind
from pyvpnkit.core.nat.tcp_nat import rst_for
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, parse_ipv4
from pyvpnkit.wire.ipv6 import NH_ICMPV6, parse_ipv6
from pyvpnkit.wire.tcp import RST, parse_tcp

ACTIONS: Final = ("allow", "reject", "drop", "impair")
PROTOS: Final[dict[str, tuple[int, ...] | None]] = {
    "any": None, "tcp": (PROTO_TCP,), "udp": (PROTO_UDP,), "icmp": (PROTO_ICMP, NH_ICMPV6),
}
DIRECTIONS: Final = ("both", "out", "in")
DEFAULT_QUEUE_BYTES: Final = 16 * 1024 * 1024
MAX_NAMES: Final = 4096  # names whose answered addresses are kept
_FIELDS: Final = frozenset({
    "id", "vm", "to", "port", "proto", "action", "delay_ms", "jitter_ms", "loss",
    "duplicate", "rate_kbit", "direction",
})
_IMPAIR: Final = ("delay_ms", "jitter_ms", "loss", "duplicate", "rate_kbit")
_ETH_IPV4: Final = b"\x08\x00"
_ETH_IPV6: Final = b"\x86\xdd"


class ConditionError(ValueError):
    """A rule that cannot be used; the message names the field."""


def _norm_name(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(slots=True)
class RuleCounters:
    """Plain integers, read by /stats and the metrics at scrape time."""

    matches: int = 0
    drops: int = 0  # drop action, loss, queue overflow
    rejects: int = 0
    delayed: int = 0
    duplicated: int = 0
    overflow: int = 0  # of drops: the delay queue was full
    queued_frames: int = 0
    queued_bytes: int = 0


@dataclass(slots=True)
class Rule:
    """One parsed rule; ``spec`` is what the user gave (normalised), for GET."""

    id: int
    spec: dict[str, Any]
    action: str
    vm_ip: bytes | None = None
    vm_mac: bytes | None = None
    to_net: tuple[int, int, int] | None = None  # (address length, network int, mask int)
    to_name: str | None = None
    port: int | None = None
    protos: tuple[int, ...] | None = None
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    rate: float = 0.0  # bytes per second, 0: unlimited
    out: bool = True
    into: bool = True
    free_at: list[float] = field(default_factory=lambda: [0.0, 0.0])  # token bucket, per dir
    counters: RuleCounters = field(default_factory=RuleCounters)

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        return {"id": self.id, **self.spec, "stats": {
            "matches": c.matches, "drops": c.drops, "rejects": c.rejects,
            "delayed": c.delayed, "duplicated": c.duplicated, "overflow": c.overflow,
            "queued_frames": c.queued_frames, "queued_bytes": c.queued_bytes,
        }}


def _number(body: dict[str, Any], name: str, low: float, high: float | None) -> float:
    value = body.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConditionError(f'"{name}" must be a number')
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConditionError(f'"{name}" must be {bound}, not {value}')
    return float(value)


def parse_rule(body: object, rule_id: int) -> Rule:
    """A rule from its JSON object; ConditionError names the first bad field."""
    if not isinstance(body, dict):
        raise ConditionError("a rule must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ConditionError(f'unknown field "{unknown[0]}"')
    spec: dict[str, Any] = {}
    impairs = [k for k in _IMPAIR if body.get(k) not in (None, 0)]
    action = body.get("action", "impair" if impairs else None)
    if action not in ACTIONS:
        raise ConditionError(f'"action" must be one of {", ".join(ACTIONS)}')
    if impairs and action != "impair":
        raise ConditionError(f'"{impairs[0]}" needs "action": "impair"')
    rule = Rule(rule_id, spec, str(action))
    vm = body.get("vm")
    if vm is not None:
        if not isinstance(vm, str):
            raise ConditionError('"vm" must be an address or a MAC')
        try:
            rule.vm_ip = ipaddress.ip_address(vm).packed
            spec["vm"] = str(ipaddress.ip_address(vm))
        except ValueError:
            parts = vm.replace("-", ":").split(":")
            try:
                mac = bytes(int(p, 16) for p in parts)
            except ValueError:
                mac = b""
            if len(parts) != 6 or len(mac) != 6 or any(len(p) > 2 for p in parts):
                raise ConditionError(f'"vm" must be an address or a MAC, not {vm!r}') from None
            rule.vm_mac = mac
            spec["vm"] = mac.hex(":")
    to = body.get("to")
    if to is not None:
        if not isinstance(to, str) or not to:
            raise ConditionError('"to" must be a CIDR, an address or a DNS name')
        try:
            net = ipaddress.ip_network(to, strict=False)
        except ValueError:
            name = _norm_name(to)
            labels = name.split(".")
            if not name or any(not lb or len(lb) > 63 for lb in labels) or " " in name:
                raise ConditionError(f'"to" must be a CIDR, an address or a DNS name, '
                                     f'not {to!r}') from None
            rule.to_name = name
            spec["to"] = name
        else:
            rule.to_net = (len(net.network_address.packed), int(net.network_address),
                           int(net.netmask))
            spec["to"] = str(net)
    port = body.get("port")
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConditionError('"port" must be an integer 1..65535')
        rule.port = port
        spec["port"] = port
    proto = body.get("proto", "any")
    if proto not in PROTOS:
        raise ConditionError(f'"proto" must be one of {", ".join(PROTOS)}')
    rule.protos = PROTOS[proto]
    spec["proto"] = proto
    spec["action"] = rule.action
    if rule.action == "impair":
        rule.delay = _number(body, "delay_ms", 0, 60_000) / 1000
        rule.jitter = _number(body, "jitter_ms", 0, 60_000) / 1000
        rule.loss = _number(body, "loss", 0, 1)
        rule.duplicate = _number(body, "duplicate", 0, 1)
        rule.rate = _number(body, "rate_kbit", 0, None) * 1000 / 8
        direction = body.get("direction", "both")
        if direction not in DIRECTIONS:
            raise ConditionError(f'"direction" must be one of {", ".join(DIRECTIONS)}')
        rule.out = direction != "in"
        rule.into = direction != "out"
        for k in _IMPAIR:
            if body.get(k) not in (None, 0):
                spec[k] = body[k]
        spec["direction"] = direction
    return rule


def _addr_int_match(rule: Rule, addr: bytes) -> bool:
    net = rule.to_net
    assert net is not None
    return net[0] == len(addr) and (int.from_bytes(addr) & net[2]) == net[1]


class Conditions:
    """The rule list, its counters and its delay queue.

    Frames out (VM to stack) come back from :meth:`due_out` when their delay
    is over; frames in (stack to VM) from :meth:`inbound` on the drain after.
    """

    def __init__(self, config: NetConfig, rng: random.Random | None = None) -> None:
        self.rules: list[Rule] = []
        self._next_id = 1
        self._rng = rng or random.Random()
        self.queue_limit = DEFAULT_QUEUE_BYTES  # --conditions-queue-bytes
        self.queued_bytes = 0
        self.busy = False  # rules exist or frames wait: the stack calls us
        self.wants_names = False  # a rule names a DNS name: the stack feeds us answers
        self._heap: list[tuple[float, int, bool, int, bytes, bool, Rule]] = []
        self._seq = 0
        self._ready_out: list[tuple[int, bytes, bool]] = []
        self._ready_in: list[tuple[int, bytes]] = []
        self.replies: list[tuple[int, bytes]] = []  # reject answers: (link, IP packet)
        self.names: dict[str, set[bytes]] = {}
        own = [config.gateway_ip, config.dns_ip, b"\xff\xff\xff\xff",
               config.subnet.broadcast_address.packed]
        if config.ipv6 is not None:
            own += [config.ipv6.gateway_ip, config.ipv6.dns_ip,
                    ipaddress.IPv6Address("fe80::1").packed]
        self._own = frozenset(own)

    # -- the rule list -------------------------------------------------------

    def add(self, body: object) -> Rule:
        rule = parse_rule(body, self._next_id)
        self._next_id += 1
        self.rules.append(rule)
        self._changed()
        return rule

    def replace(self, bodies: object) -> list[Rule]:
        """All of a list or nothing: a bad rule leaves the old list in place."""
        if not isinstance(bodies, list):
            raise ConditionError("the rules must be a JSON list")
        rules = []
        for i, body in enumerate(bodies):
            try:
                rules.append(parse_rule(body, self._next_id + i))
            except ConditionError as exc:
                raise ConditionError(f"rule {i + 1}: {exc}") from None
        self._next_id += len(rules)
        self.rules = rules
        self._changed()
        return rules

    def remove(self, rule_id: int) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        self._changed()
        return len(self.rules) != before

    def _changed(self) -> None:
        self.wants_names = any(r.to_name is not None for r in self.rules)
        self._refresh()

    def _refresh(self) -> None:
        self.busy = bool(self.rules or self._heap or self._ready_out or self._ready_in
                         or self.replies)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rules]

    # -- DNS names -----------------------------------------------------------

    def dns_answer(self, data: bytes) -> None:
        """Remember the A/AAAA addresses of an answer under every name of its chain."""
        # Imported here: only a rule naming a name needs dnspython's parser, and the
        # command line (which imports this module for its defaults) starts faster without.
        import dns.exception
        import dns.message
        import dns.rdatatype

        try:
            msg = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError):
            return
        addrs: set[bytes] = set()
        owners: set[str] = set()
        for rrset in msg.answer:
            owners.add(_norm_name(rrset.name.to_text()))
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addrs.update(ipaddress.ip_address(rd.address).packed for rd in rrset)
        if not addrs:
            return
        for name in owners:
            if name not in self.names and len(self.names) >= MAX_NAMES:
                del self.names[next(iter(self.names))]
            self.names.setdefault(name, set()).update(addrs)

    def _name_has(self, name: str, addr: bytes) -> bool:
        found = self.names.get(name)
        return found is not None and addr in found

    # -- matching ------------------------------------------------------------

    def _match(self, mac: bytes, vm_ip: bytes, remote: bytes, proto: int,
               port: int | None) -> Rule | None:
        own = remote in self._own or _local_scope(remote)
        for rule in self.rules:
            if rule.vm_ip is not None and rule.vm_ip != vm_ip:
                continue
            if rule.vm_mac is not None and rule.vm_mac != mac:
                continue
            if rule.to_net is not None:
                if not _addr_int_match(rule, remote):
                    continue
            elif own:
                continue  # the stack's own services: only a rule naming them applies
            elif rule.to_name is not None and not self._name_has(rule.to_name, remote):
                continue
            if rule.protos is not None and proto not in rule.protos:
                continue
            if rule.port is not None and rule.port != port:
                continue
            return rule
        return None

    # -- frames --------------------------------------------------------------

    def outbound(self, link: int, frame: bytes | memoryview, now: float,
                 partial: bool) -> bool:
        """A frame from a VM: True to handle it now, False when we took it."""
        head = _headers(frame)
        if head is None or not self.rules:
            return True
        vm_ip, remote, proto, port, offset = head
        rule = self._match(bytes(frame[6:12]), vm_ip, remote, proto, port)
        if rule is None:
            return True
        c = rule.counters
        c.matches += 1
        action = rule.action
        if action == "allow":
            return True
        if action == "drop":
            c.drops += 1
            return False
        if action == "reject":
            c.rejects += 1
            self._reject(link, frame, offset, proto)
            return False
        if not rule.out:
            return True
        self._impair(rule, 0, now, link, bytes(frame), partial, True)
        return False

    def inbound(self, frames: list[tuple[int, bytes]], now: float) -> list[tuple[int, bytes]]:
        """Frames the stack made for VMs: those to send now, with earlier ones now due."""
        out = self._ready_in
        self._ready_in = []
        if self.replies:
            out.extend(self.replies)
            self.replies = []
        rules = self.rules
        for link, frame in frames:
            head = _headers(frame, inbound=True) if rules else None
            rule = None
            if head is not None:
                vm_ip, remote, proto, port, _ = head
                rule = self._match(frame[0:6], vm_ip, remote, proto, port)
            if rule is None:
                out.append((link, frame))
                continue
            c = rule.counters
            c.matches += 1
            if rule.action == "drop":
                c.drops += 1
            elif rule.action == "impair" and rule.into:
                self._impair(rule, 1, now, link, frame, False, False)
            else:
                out.append((link, frame))  # allow, reject (outbound only), impair out-only
        if self._ready_in:  # impaired without delay
            out.extend(self._ready_in)
            self._ready_in = []
        self._refresh()
        return out

    def _reject(self, link: int, frame: bytes | memoryview, offset: int, proto: int) -> None:
        packet = bytes(frame[14:])
        try:
            if proto == PROTO_TCP:
                pkt = parse_ipv4(packet) if offset == 0 else parse_ipv6(packet)
                seg = parse_tcp(pkt.payload, pkt.src, pkt.dst, False)
                if seg.flags & RST:
                    return
                reply: bytes | None = rst_for(pkt, seg)
            else:
                dst = packet[16:20] if offset == 0 else packet[24:40]
                kind = "port_unreachable" if proto == PROTO_UDP else "admin_prohibited"
                reply = build_error_kind(packet, dst, kind)
        except ParseError:
            return
        if reply is not None:
            eth = bytes(frame[6:12]) + bytes(frame[0:6]) + bytes(frame[12:14])
            self.replies.append((link, eth + reply))
            self.busy = True

    def _impair(self, rule: Rule, way: int, now: float, link: int, frame: bytes,
                partial: bool, out: bool) -> None:
        c = rule.counters
        rng = self._rng
        if rule.loss and rng.random() < rule.loss:
            c.drops += 1
            return
        copies = 2 if rule.duplicate and rng.random() < rule.duplicate else 1
        if copies == 2:
            c.duplicated += 1
        for _ in range(copies):
            size = len(frame)
            if self.queued_bytes + size > self.queue_limit:
                c.drops += 1
                c.overflow += 1
                return
            when = now
            if rule.rate:
                start = max(now, rule.free_at[way])
                rule.free_at[way] = when = start + size / rule.rate
            delay = rule.delay
            if rule.jitter:
                delay = max(0.0, delay + rng.uniform(-rule.jitter, rule.jitter))
            when += delay
            if when <= now:  # loss or duplication alone: no wait, order kept
                if out:
                    self._ready_out.append((link, frame, partial))
                else:
                    self._ready_in.append((link, frame))
                continue
            c.delayed += 1
            c.queued_frames += 1
            c.queued_bytes += size
            self.queued_bytes += size
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, out, link, frame, partial, rule))
        self.busy = True

    # -- timers --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self._heap:
            return self._heap[0][0]
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, out, link, frame, partial, rule = heapq.heappop(heap)
            size = len(frame)
            self.queued_bytes -= size
            rule.counters.queued_frames -= 1
            rule.counters.queued_bytes -= size
            if out:
                self._ready_out.append((link, frame, partial))
            else:
                self._ready_in.append((link, frame))

    def due_out(self) -> list[tuple[int, bytes, bool]]:
        """VM frames whose delay is over: the stack handles them now, without rules."""
        ready = self._ready_out
        self._ready_out = []
        return ready


def _local_scope(addr: bytes) -> bool:
    """Multicast and link-local (NDP, mDNS...): the link's own business."""
    if len(addr) == 16:
        return addr[0] == 0xFF or (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80)
    return 224 <= addr[0] < 240 or addr[:2] == b"\xa9\xfe"


def _headers(frame: bytes | memoryview, inbound: bool = False
             ) -> tuple[bytes, bytes, int, int | None, int] | None:
    """(VM address, remote address, protocol, remote port, 0 IPv4 / 1 IPv6) of an
    Ethernet frame carrying IP; the port is None for non-first fragments and ICMP."""
    kind = bytes(frame[12:14])
    if kind == _ETH_IPV4 and len(frame) >= 34:
        src, dst = bytes(frame[26:30]), bytes(frame[30:34])
        proto = frame[23]
        ihl = (frame[14] & 0x0F) * 4
        first = not (frame[20] & 0x1F or frame[21])
        start = 14 + ihl
        family = 0
    elif kind == _ETH_IPV6 and len(frame) >= 54:
        src, dst = bytes(frame[22:38]), bytes(frame[38:54])
        proto = frame[20]
        first = True
        start = 54
        family = 1
    else:
        return None
    port = None
    if first and proto in (PROTO_TCP, PROTO_UDP) and len(frame) >= start + 4:
        at = start if inbound else start + 2
        port = int.from_bytes(frame[at:at + 2])
    if inbound:
        return dst, src, proto, port, family
    return src, dst, proto, port, family


__all__ = ["ConditionError", "Conditions", "Rule", "RuleCounters", "parse_rule"]
