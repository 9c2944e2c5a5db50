"""The NAT's delayed ACK: a request's ACK rides on the host's answer, never waits long."""

from __future__ import annotations

from pyvpnkit.core.tcp.settings import DELAYED_ACK
from tests.unit.support.tcp_nat_world import Vm, World


def request() -> tuple[World, Vm, int, int]:
    """A connection past its first exchange where the VM sent one more byte; SND.UNA
    before it."""
    w = World()
    vm, fid = w.established()
    vm.conn.send(b"q", w.now)
    w.run()
    w.host_read(fid, b"a")
    una = vm.conn.snd_una
    vm.conn.send(b"q", w.now)
    w.run()
    assert w.host.socks[fid].received == b"qq"
    return w, vm, fid, una


def test_the_ack_rides_on_the_hosts_answer() -> None:
    w, vm, fid, una = request()
    assert vm.conn.snd_una == una  # no pure ACK yet
    w.host_read(fid, b"b")
    assert vm.received == b"ab" and vm.conn.snd_una == una + 1


def test_an_unanswered_request_is_acked_after_the_delay() -> None:
    w, vm, _, una = request()
    w.advance(DELAYED_ACK / 2)
    assert vm.conn.snd_una == una
    w.advance(DELAYED_ACK)
    assert vm.conn.snd_una == una + 1


def test_every_second_full_segment_is_acked_at_once() -> None:
    w = World()
    vm, fid = w.established()
    una = vm.conn.snd_una
    n = 2 * vm.conn.snd_mss
    vm.conn.send(bytes(n), w.now)
    w.run()
    assert len(w.host.socks[fid].received) == n
    assert vm.conn.snd_una == una + n


def test_a_fin_is_acked_at_once() -> None:
    w = World()
    vm, fid = w.established()
    una = vm.conn.snd_una
    vm.conn.send(b"q", w.now)
    vm.conn.shutdown(w.now)
    w.run()
    assert vm.conn.snd_una == una + 2


def _count_to_vm(w: World) -> list[int]:
    """Packets the NAT sends the VM from now on (a one-element counter)."""
    n = [0]
    deliver = w._deliver

    def counting(raw: bytes) -> None:
        n[0] += 1
        deliver(raw)

    w._deliver = counting  # type: ignore[method-assign]
    return n


def test_the_first_window_update_rides_on_the_answer() -> None:
    """Taking the first byte opens the SYN's unscaled 64 KB window to the whole
    buffer; the VM still has room, so that update waits for the host's answer
    instead of costing a frame of its own (one per short connection)."""
    w = World()
    vm, fid = w.established()
    una = vm.conn.snd_una
    sent = _count_to_vm(w)
    vm.conn.send(b"q", w.now)
    w.run()
    assert w.host.socks[fid].received == b"q"
    assert sent[0] == 0 and vm.conn.snd_una == una
    w.host_read(fid, b"a")
    assert sent[0] == 1 and vm.received == b"a" and vm.conn.snd_una == una + 1
    assert vm.conn.snd_wnd > 0xFFFF  # the update came with the answer


def test_an_unanswered_first_byte_gets_its_window_update_after_the_delay() -> None:
    w = World()
    vm, _ = w.established()
    vm.conn.send(b"q", w.now)
    w.run()
    assert vm.conn.snd_wnd <= 0xFFFF
    w.advance(DELAYED_ACK * 1.5)
    assert vm.conn.snd_wnd > 0xFFFF
