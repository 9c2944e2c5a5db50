"""Idle connections are never closed by us (moby/vpnkit#234, #587: closed after 300 s),
and a long stop fires each due timer once. Hours pass on the fake clock."""

from __future__ import annotations

import pytest

from tests.unit.support.tcp_nat_world import World

HOUR = 3600.0


def exchange(w: World, fid: int) -> None:
    """Data both ways on the flow: it still works."""
    (vm,) = [v for v in w.vms if not v.conn.closed]
    vm.conn.send(b"ping", w.now)
    w.run()
    assert w.host.socks[fid].received.endswith(b"ping")
    w.host_read(fid, b"pong")
    assert vm.received.endswith(b"pong")


def test_without_keepalive_an_idle_connection_has_no_timer_at_all() -> None:
    w = World(keepalive=None)
    vm, fid = w.established()
    assert w.nat.next_deadline() is None  # no idle timer of our own
    w.advance(24 * HOUR)
    assert len(w.nat) == 1 and vm.conn.state == "ESTABLISHED"
    assert w.host.socks[fid].closed is None
    exchange(w, fid)


def test_with_keepalive_an_answering_vm_keeps_its_connection_for_hours() -> None:
    w = World()  # the default: probe after 7200 s idle
    vm, fid = w.established()
    assert w.nat.next_deadline() == pytest.approx(w.now + 7200)
    w.advance(10 * HOUR)
    assert len(w.nat) == 1 and vm.conn.state == "ESTABLISHED"
    exchange(w, fid)


def test_a_long_stop_fires_the_due_keepalive_once() -> None:
    """Stopped for 5 h (SIGSTOP): on waking, one probe, not the 9 a loop of catch-ups
    would send, and the VM's answer keeps the connection."""
    w = World(keepalive=(30.0, 75.0, 9))
    _vm, fid = w.established()
    w.now += 5 * HOUR
    w.nat.handle_timer(w.now)
    packets, _effects = w.nat.drain(w.now)
    assert len(packets) == 1
    for p in packets:
        w._deliver(p)
    w.run()
    assert len(w.nat) == 1 and w.nat.next_deadline() == pytest.approx(w.now + 30)
    exchange(w, fid)
