"""TCP NAT flows: one summary line each (SYN to close, logged once) and keepalive options."""

from __future__ import annotations

from pyvpnkit.app.options import Options, stack_settings
from pyvpnkit.core.effects import TcpOpen
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.wire import ethernet, ipv4, tcp
from tests.unit.core.switch.test_stack import VM_IP, WORLD, ip_frame, make_stack, syn


def from_vm(seq: int, ack: int, flags: int) -> bytes:
    segment = tcp.build_tcp(VM_IP, WORLD, 40000, 80, seq, ack, flags, 64240)
    return ip_frame(WORLD, ipv4.PROTO_TCP, segment)


def to_vm(stack: Stack, now: float) -> list[tcp.TcpSegment]:
    frames, _effects = stack.drain(now)
    out = []
    for _link, frame in frames:
        pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(frame).payload)
        out.append(tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst))
    return out


def established(stack: Stack) -> tuple[int, int]:
    """A VM flow to WORLD:80 opened at t=0; returns (flow id, our next sequence number)."""
    stack.receive(1, syn(WORLD, 80), 0.0)
    (open_,) = stack.drain(0.0)[1]
    assert isinstance(open_, TcpOpen)
    stack.tcp.host_connected(open_.flow_id, 0.1)
    (synack,) = to_vm(stack, 0.1)
    stack.receive(1, from_vm(1001, synack.seq + 1, tcp.ACK), 0.2)
    stack.drain(0.2)
    return open_.flow_id, synack.seq + 1


def logged(stack: Stack) -> list[str]:
    lines = list(stack.tcp.closed_log)
    stack.tcp.closed_log.clear()
    return lines


def test_flow_logged_once_at_close_not_after_time_wait() -> None:
    stack = make_stack()
    fid, seq = established(stack)
    stack.tcp.host_eof(fid, 31.0)  # the host closes first: we end in TIME_WAIT
    (fin,) = to_vm(stack, 31.0)
    assert fin.flags & tcp.FIN
    stack.receive(1, from_vm(1001, seq + 1, tcp.ACK | tcp.FIN), 31.5)
    stack.drain(31.5)
    assert logged(stack) == [
        "tcp 192.168.65.3:40000 -> 203.0.113.2:80 up=0 down=0 duration=31.500s end=closed"
    ]
    deadline = stack.tcp.next_deadline()
    assert deadline is not None and deadline >= 61.5  # 2 MSL of TIME_WAIT
    stack.handle_timer(deadline)
    stack.drain(deadline)
    assert len(stack.tcp) == 0 and logged(stack) == []


def test_flow_of_a_vm_that_leaves_is_logged_with_the_time_it_left() -> None:
    stack = make_stack()
    established(stack)
    stack.link_closed(1, 45.0)
    stack.drain(45.0)
    (line,) = logged(stack)
    assert line.endswith("duration=45.000s end=reset")


def test_tcp_keepalive_option_sets_idle_interval_and_count() -> None:
    from pyvpnkit.frontends.cli import make_parser

    args = make_parser().parse_args(["exec", "--tcp-keepalive", "10,2,3", "--", "true"])
    assert args.tcp_keepalive == (10.0, 2.0, 3)
    assert make_parser().parse_args(["exec", "--tcp-keepalive", "0", "--", "true"]).tcp_keepalive \
        is None
    idle_only = make_parser().parse_args(["exec", "--tcp-keepalive", "30", "--", "true"])
    assert idle_only.tcp_keepalive == (30.0, 75.0, 9)  # the default interval and count
    stack = Stack(make_stack().config, stack_settings(Options(tcp_keepalive=args.tcp_keepalive)))
    established(stack)
    probes = []
    for _ in range(4):  # a dead VM: three probes 2 s apart after 10 s idle, then a reset
        deadline = stack.tcp.next_deadline()
        assert deadline is not None
        stack.handle_timer(deadline)
        (seg,) = to_vm(stack, deadline)
        probes.append((round(deadline, 3), seg.flags & tcp.RST != 0))
    assert probes == [(10.2, False), (12.2, False), (14.2, False), (16.2, True)]
    (line,) = logged(stack)
    assert line.endswith("duration=16.200s end=timeout")
