"""Network conditions and egress rules, driven through the stack with a fake clock."""

from __future__ import annotations

import random

import dns.message
import dns.rrset
import pytest

from pyvpnkit.core.conditions import ConditionError, Conditions, parse_rule
from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import TcpOpen, UdpSend
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.wire import ethernet, icmp, ipv4, tcp, udp

VM_MAC = bytes.fromhex("020000000001")
VM2_MAC = bytes.fromhex("020000000002")
VM_IP = ip4("192.168.65.3")
VM2_IP = ip4("192.168.65.4")
GW = ip4("192.168.65.1")
WORLD = ip4("203.0.113.2")
CFG = NetConfig(ipv6=None)


def make_stack(seed: int = 1) -> Stack:
    stack = Stack(CFG, rng=random.Random(seed))
    stack.add_vm(1, VM_MAC, VM_IP)
    stack.add_vm(2, VM2_MAC, VM2_IP)
    return stack


def udp_frame(dst: bytes = WORLD, dport: int = 9, src: bytes = VM_IP, mac: bytes = VM_MAC,
              sport: int = 4000) -> bytes:
    body = udp.build_udp(src, dst, sport, dport, b"x" * 20)
    return ethernet.build_ethernet(
        CFG.gateway_mac, mac, ethernet.ETHERTYPE_IPV4, ipv4.build_ipv4(src, dst, 17, body)
    )


def syn_frame(dst: bytes = WORLD, dport: int = 80) -> bytes:
    seg = tcp.build_tcp(VM_IP, dst, 5000, dport, 1000, 0, tcp.SYN, 65535)
    return ethernet.build_ethernet(
        CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4, ipv4.build_ipv4(VM_IP, dst, 6, seg)
    )


def sends(stack: Stack, now: float) -> list[UdpSend]:
    _frames, effects = stack.drain(now)
    return [e for e in effects if isinstance(e, UdpSend)]


def fire(stack: Stack, now: float) -> None:
    stack.handle_timer(now)


def test_bad_rules_name_the_field() -> None:
    for body, field in [
        ({"action": "explode"}, '"action"'),
        ({"action": "drop", "port": 0}, '"port"'),
        ({"loss": 2}, '"loss"'),
        ({"action": "allow", "delay_ms": 5}, '"delay_ms"'),
        ({"action": "drop", "to": "not a name!"}, '"to"'),
        ({"action": "drop", "vm": "zz:zz"}, '"vm"'),
        ({"action": "drop", "proto": "sctp"}, '"proto"'),
        ({"delay_ms": 1, "direction": "up"}, '"direction"'),
        ({"action": "drop", "colour": 1}, '"colour"'),
    ]:
        with pytest.raises(ConditionError, match=field):
            parse_rule(body, 1)
    rule = parse_rule({"delay_ms": 100, "to": "Example.COM.", "vm": "02-00-00-00-00-01"}, 7)
    assert rule.to_json()["to"] == "example.com" and rule.to_json()["vm"] == "02:00:00:00:00:01"
    assert rule.action == "impair" and rule.delay == 0.1


def test_replace_is_all_or_nothing() -> None:
    cond = Conditions(CFG)
    cond.add({"action": "drop"})
    with pytest.raises(ConditionError, match="rule 2"):
        cond.replace([{"action": "allow"}, {"action": "nope"}])
    assert [r.action for r in cond.rules] == ["drop"]


def test_delay_holds_a_frame_until_its_deadline() -> None:
    stack = make_stack()
    stack.conditions.add({"delay_ms": 100, "direction": "out"})
    stack.receive(1, udp_frame(), 0.0)
    assert sends(stack, 0.0) == []
    assert stack.next_deadline() == pytest.approx(0.1)
    fire(stack, 0.1)
    assert len(sends(stack, 0.1)) == 1
    assert stack.conditions.rules[0].counters.delayed == 1
    assert stack.conditions.queued_bytes == 0


def test_inbound_delay_and_direction() -> None:
    stack = make_stack()
    stack.conditions.add({"delay_ms": 50, "direction": "in"})
    stack.receive(1, udp_frame(), 0.0)
    (send,) = sends(stack, 0.0)  # not delayed going out
    stack.udp.host_datagram(send.flow_id, "203.0.113.2", 9, b"reply", 0.01)
    frames, _ = stack.drain(0.01)
    assert frames == []
    fire(stack, 0.07)
    frames, _ = stack.drain(0.07)
    assert [link for link, _f in frames] == [1]


def test_loss_is_drawn_from_the_injected_rng() -> None:
    stack = make_stack(seed=7)
    stack.conditions.add({"loss": 0.3, "proto": "udp"})
    passed = 0
    for i in range(1000):
        stack.receive(1, udp_frame(sport=1000 + i % 50), float(i))
        passed += len(sends(stack, float(i)))
    assert 650 < passed < 750
    assert stack.conditions.rules[0].counters.drops == 1000 - passed


def test_rate_spaces_frames_by_size() -> None:
    stack = make_stack()
    stack.conditions.add({"rate_kbit": 8, "direction": "out"})  # 1000 bytes/s
    frame = udp_frame()
    for _ in range(3):
        stack.receive(1, frame, 0.0)
    times = []
    while (when := stack.next_deadline()) is not None and when < 10:
        fire(stack, when)
        if sends(stack, when):
            times.append(when)
    assert times == pytest.approx([len(frame) / 1000 * k for k in (1, 2, 3)])


def test_queue_is_bounded_in_bytes() -> None:
    stack = make_stack()
    stack.conditions.queue_limit = 300
    stack.conditions.add({"delay_ms": 1000})
    for _ in range(10):
        stack.receive(1, udp_frame(), 0.0)
    c = stack.conditions.rules[0].counters
    assert c.queued_frames == 300 // len(udp_frame()) and c.overflow == 10 - c.queued_frames
    assert stack.conditions.queued_bytes <= 300


def test_reject_answers_at_once_drop_stays_silent() -> None:
    stack = make_stack()
    stack.conditions.add({"action": "reject", "port": 80, "proto": "tcp"})
    stack.conditions.add({"action": "drop", "port": 81})
    stack.receive(1, syn_frame(dport=80), 0.0)
    frames, effects = stack.drain(0.0)
    assert not any(isinstance(e, TcpOpen) for e in effects)
    (link, frame), = frames
    pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(frame).payload)
    seg = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
    assert link == 1 and seg.flags & tcp.RST and seg.ack == 1001 and pkt.src == WORLD
    stack.receive(1, syn_frame(dport=81), 0.0)
    assert stack.drain(0.0) == ([], [])
    stack.receive(1, syn_frame(dport=82), 0.0)
    assert any(isinstance(e, TcpOpen) for e in stack.drain(0.0)[1])


def test_reject_udp_gets_port_unreachable() -> None:
    stack = make_stack()
    stack.conditions.add({"action": "reject"})
    stack.receive(1, udp_frame(), 0.0)
    (_, frame), = stack.drain(0.0)[0]
    pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(frame).payload)
    msg = icmp.parse_icmp(pkt.payload)
    assert (msg.type, msg.code) == (icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE)


def test_own_services_are_exempt_unless_named() -> None:
    stack = make_stack()
    stack.conditions.add({"action": "reject"})  # an allow list with nothing allowed
    stack.receive(1, udp_frame(dst=GW, dport=53), 0.0)
    assert stack.conditions.rules[0].counters.matches == 0
    stack.conditions.replace([{"action": "drop", "to": "192.168.65.1/32"}])
    stack.receive(1, udp_frame(dst=GW, dport=53), 0.0)
    assert stack.conditions.rules[0].counters.drops == 1


def test_rule_for_one_vm_leaves_another_alone() -> None:
    stack = make_stack()
    stack.conditions.add({"action": "drop", "vm": "192.168.65.3"})
    stack.receive(1, udp_frame(), 0.0)
    assert sends(stack, 0.0) == []
    stack.receive(2, udp_frame(src=VM2_IP, mac=VM2_MAC), 0.0)
    assert len(sends(stack, 0.0)) == 1


def test_to_a_name_matches_what_dns_answered() -> None:
    stack = make_stack()
    stack.conditions.add({"action": "drop", "to": "blocked.example"})
    stack.receive(1, udp_frame(), 0.0)
    assert len(sends(stack, 0.0)) == 1  # not answered yet: unknown address
    query = dns.message.make_query("www.blocked.example", "A")
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text("www.blocked.example.", 30, "IN", "CNAME",
                                             "blocked.example."))
    answer.answer.append(dns.rrset.from_text("blocked.example.", 30, "IN", "A", "203.0.113.2"))
    stack.conditions.dns_answer(answer.to_wire())
    stack.receive(1, udp_frame(sport=4001), 0.0)
    assert sends(stack, 0.0) == []


def test_clearing_rules_empties_the_hook() -> None:
    stack = make_stack()
    stack.conditions.add({"delay_ms": 10})
    stack.receive(1, udp_frame(), 0.0)
    stack.conditions.replace([])
    assert stack.conditions.busy  # the queued frame still leaves
    fire(stack, 0.01)
    assert len(sends(stack, 0.01)) == 1
    assert not stack.conditions.busy


def test_ipv6_reject_answers_with_an_ipv6_rst() -> None:
    from pyvpnkit.wire import ipv6

    cfg = NetConfig()
    cond = Conditions(cfg)
    cond.add({"action": "reject", "to": "2001:db8::/32", "proto": "tcp"})
    src, dst = bytes.fromhex("fd427076" "6b690000" "00000000" "00000003"), bytes.fromhex(
        "20010db8" + "00" * 11 + "02")
    seg = tcp.build_tcp(src, dst, 5000, 443, 7, 0, tcp.SYN, 65535)
    frame = ethernet.build_ethernet(cfg.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV6,
                                    ipv6.build_ipv6(src, dst, 6, seg))
    assert cond.outbound(1, frame, 0.0, False) is False
    (link, reply), = cond.inbound([], 0.0)
    pkt = ipv6.parse_ipv6(ethernet.parse_ethernet(reply).payload)
    rst = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
    assert (link, pkt.src, pkt.dst, rst.ack) == (1, dst, src, 8) and rst.flags & tcp.RST
