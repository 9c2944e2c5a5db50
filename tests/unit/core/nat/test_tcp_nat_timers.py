"""The TCP NAT's deadline heap stays about the size of its flow table (issue 14's soak drift).

The heap deletes lazily: a flow whose deadline moves leaves its old entry
behind. A keepalive deadline is two hours out and moves with every segment,
so while any flow lived those entries piled up without end.
"""

from __future__ import annotations

from tests.unit.support.tcp_nat_world import World


def heap_bounded(w: World) -> bool:
    return len(w.nat._timers) <= 2 * len(w.nat.by_id) + 64


def test_short_connections_leave_no_stale_deadlines_behind() -> None:
    w = World()
    _vm, idle = w.established(sport=10000)  # one long-lived flow, as in any real use
    for port in range(20000, 20400):
        vm = w.connect(sport=port)
        fid = max(w.nat.by_id)
        w.host_connected(fid)
        vm.conn.send(b"x", w.now)
        w.run()
        w.host_read(fid, b"x")
        vm.conn.shutdown(w.now)
        w.run()
        w.nat.host_eof(fid, w.now)
        w.run()
        w.advance(0.02)
        w.vms = [v for v in w.vms if not v.conn.closed]
        assert heap_bounded(w), (port, len(w.nat._timers), len(w.nat.by_id))
    assert list(w.nat.by_id) == [idle]


def test_a_stream_leaves_no_stale_deadlines_behind_and_timers_still_fire() -> None:
    w = World()
    _vm, idle = w.established(sport=10000)  # its deadline is earlier than the stale ones
    w.advance(1)
    vm = w.connect()
    fid = max(w.nat.by_id)
    w.host_connected(fid)
    for _ in range(300):  # every batch moves the keepalive deadline
        vm.conn.send(b"p" * 32768, w.now)
        w.run()
        w.advance(0.001)
        assert heap_bounded(w), len(w.nat._timers)
    assert bytes(w.host.socks[fid].received) == b"p" * (300 * 32768)
    w.nat.host_eof(fid, w.now)  # the host closes first: our side waits out TIME_WAIT
    w.run()
    vm.conn.shutdown(w.now)
    w.run()
    assert w.nat.by_id[fid].conn.state == "TIME_WAIT"  # type: ignore[union-attr]
    w.advance(300)  # the compacted heap still holds the TIME_WAIT deadline
    assert list(w.nat.by_id) == [idle] and len(w.nat._timers) <= 66
