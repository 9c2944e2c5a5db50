"""The TCP NAT against a fake host, with bytes and a fake clock (see support/tcp_nat_world.py).

Host-first connects and refusals, data both ways, flow control (host reads
paused and resumed, a host that takes no writes), half-close both ways,
resets both ways, keepalive, redirects, local services and port forwards.
"""

from __future__ import annotations

import ipaddress

import pytest

from pyvpnkit.core import forwards
from pyvpnkit.core.config import ip4
from pyvpnkit.core.effects import TcpOpen
from pyvpnkit.core.nat.tcp_nat import READ_CHUNK, Redirect, TcpNat
from pyvpnkit.core.tcp import Closed, DataReceived, Established, PeerClosed, Reset
from pyvpnkit.wire.ipv4 import parse_ipv4
from pyvpnkit.wire.tcp import ACK, FIN, RST, SYN
from tests.unit.support.tcp_nat_world import CFG, VM, VM2, HostSocket, World

# -- opening -----------------------------------------------------------------


def test_connects_on_the_host_first_then_answers_the_vm() -> None:
    w = World()
    vm = w.connect(sport=40001)
    fid = w.only_flow()
    assert w.host.socks[fid].open == TcpOpen(fid, "203.0.113.5", 80)
    assert vm.conn.state == "SYN_SENT" and w.nat.stats["opened"] == 1
    # The VM retransmits its SYN while the host connects: absorbed, still one flow.
    w.advance(1.5)
    assert vm.conn.state == "SYN_SENT" and len(w.nat) == 1 and w.stray == []
    w.host_connected(fid)
    assert vm.conn.state == "ESTABLISHED" and vm.events == [Established()]
    w.nat.host_connected(fid, w.now)  # a late duplicate changes nothing
    w.run()
    assert vm.events == [Established()]


def test_refused_connection_resets_the_vm_at_once() -> None:
    w = World()
    vm = w.connect()
    fid = w.only_flow()
    w.nat.host_connect_failed(fid, w.now)
    w.run()
    assert vm.events == [Reset(), Closed()] and vm.conn.closed
    assert len(w.nat) == 0 and w.nat.stats["refused"] == 1
    assert w.host.socks[fid].closed is None  # the runtime already forgot the socket
    assert w.nat.closed_log[-1].startswith("tcp 192.168.65.3:40000 -> 203.0.113.5:80 up=0 ")
    assert w.nat.closed_log[-1].endswith("end=refused")


def test_host_socket_error_while_connecting_is_a_refusal() -> None:
    w = World()
    vm = w.connect()
    w.nat.host_reset(w.only_flow(), w.now)
    w.run()
    assert vm.events == [Reset(), Closed()] and w.nat.stats["refused"] == 1


def test_vm_gives_up_while_the_host_connects() -> None:
    w = World()
    vm = w.connect()
    fid = w.only_flow()
    vm.conn.abort(w.now)  # no RST from SYN_SENT: send one by hand
    assert w.send_raw(RST, seq=1001) == []
    assert len(w.nat) == 0 and w.host.socks[fid].closed is True
    assert w.nat.closed_log[-1].endswith("end=abandoned while connecting")
    # The host connect completing afterwards finds nothing to answer.
    w.nat.host_connected(fid, w.now)
    w.nat.host_connect_failed(fid, w.now)
    w.run()
    assert w.nat.stats["refused"] == 0


def test_segments_that_open_nothing_are_answered_with_rst() -> None:
    w = World()
    (rst,) = w.send_raw(ACK, seq=5, ack=77)  # a stray ACK: RST with its ack as seq
    assert rst.flags == RST and rst.seq == 77
    (rst,) = w.send_raw(FIN, seq=5, payload=b"xy")  # no ACK: RST|ACK past its end
    assert rst.flags == RST | ACK and rst.ack == 5 + 2 + 1
    assert w.send_raw(RST, seq=5) == []  # never answer an RST
    assert w.send_raw(SYN | ACK, seq=5, ack=9)[0].flags == RST
    assert w.nat.stats["rst_sent"] == 3 and len(w.nat) == 0


@pytest.mark.parametrize(
    "dst, port",
    [
        (CFG.gateway_ip, 80),  # the gateway serves nothing on this port
        (ip4("192.168.65.77"), 80),  # an address no VM owns
        (ip4("127.0.0.1"), 80),  # not routable from a VM
    ],
)
def test_syn_nobody_serves_is_refused(dst: bytes, port: int) -> None:
    w = World()
    vm = w.connect(dst=dst, port=port)
    assert vm.events == [Reset(), Closed()] and len(w.nat) == 0
    assert w.host.socks == {} and w.nat.stats["rst_sent"] == 1


def test_host_address_goes_to_host_loopback() -> None:
    w = World()
    w.connect(dst=CFG.host_ip, port=8080)
    (sock,) = w.host.socks.values()
    assert sock.open.host == "127.0.0.1" and sock.open.port == 8080


def test_redirect_rule_opens_a_unix_socket() -> None:
    rule = Redirect(ipaddress.IPv4Network("203.0.113.0/24"), 80, "/run/app.sock")
    w = World(redirects=(rule,))
    vm, fid = w.established()
    assert w.host.socks[fid].open == TcpOpen(fid, "", 80, "/run/app.sock")
    w.connect(port=443, sport=40002)  # another port: not redirected
    assert [s.open.unix_path for s in w.host.socks.values()] == ["/run/app.sock", None]
    assert vm.conn.state == "ESTABLISHED"


# -- data and flow control -----------------------------------------------------


def test_data_both_ways() -> None:
    w = World()
    vm, fid = w.established()
    vm.conn.send(b"GET / HTTP/1.0\r\n\r\n", w.now)
    w.run()
    assert w.host.socks[fid].received == b"GET / HTTP/1.0\r\n\r\n"
    w.host_read(fid, b"HTTP/1.0 200 OK\r\n\r\nhello")
    assert vm.received == b"HTTP/1.0 200 OK\r\n\r\nhello"
    big = bytes(range(256)) * 4000
    vm.conn.send(big, w.now)
    w.run()
    assert w.host.socks[fid].received[-len(big) :] == big
    flow = w.nat.by_id[fid]
    assert (flow.bytes_up, flow.bytes_down) == (len(big) + 18, 24)


def test_host_reads_pause_while_the_vm_does_not_acknowledge_then_refill_and_resume() -> None:
    w = World(snd_buffer=2 * READ_CHUNK)
    vm, fid = w.established(rcv_buffer=64 * 1024)
    vm.consume = False  # the VM application reads nothing: its window closes
    sock = w.host.socks[fid]
    chunks = [bytes([i]) * READ_CHUNK for i in range(4)]
    w.host_read(fid, chunks[0])
    assert not sock.paused
    w.host_read(fid, chunks[1])  # the send buffer is full: stop reading the host
    assert sock.paused
    flow = w.nat.by_id[fid]
    assert not flow.pending and vm.conn.rcv_nxt - 1001 < 2 * READ_CHUNK
    # Reads already under way when the pause was asked for land in the overflow.
    half = READ_CHUNK // 2
    w.nat.host_data(fid, chunks[2][:half], w.now)
    w.nat.host_data(fid, chunks[2][half:], w.now)
    w.run()
    # (The send buffer had room for what the VM acknowledged into its window.)
    assert len(flow.pending) == READ_CHUNK - len(vm.received) and sock.paused
    # The VM reads: windows open, the buffer drains, the overflow is refilled, reads resume.
    vm.consume = True
    vm.conn.consumed(len(vm.received), w.now)
    w.run()
    assert not flow.pending and not sock.paused
    w.host_read(fid, chunks[3])
    assert vm.received == b"".join(chunks)


def test_host_that_takes_no_writes_closes_the_vm_window() -> None:
    w = World(rcv_buffer=64 * 1024)
    vm, fid = w.established()
    w.host.kernel_full = True
    data = bytes(200 * 1024)
    taken = vm.conn.send(data, w.now)
    w.run()
    sock = w.host.socks[fid]
    # The NAT took only what its window allowed, and keeps it until the host takes it.
    assert 60 * 1024 < len(sock.wbuf) == vm.conn.snd_una - 1001 <= 64 * 1024
    assert vm.conn.snd_wnd == 0
    w.host.kernel_full = False
    w.host.flush(fid, w.now)
    w.run()
    assert sock.received == data[:taken] and vm.conn.snd_una == 1001 + taken


# -- closing -----------------------------------------------------------------


def test_vm_half_closes_first_and_the_host_keeps_sending() -> None:
    w = World()
    vm, fid = w.established()
    sock = w.host.socks[fid]
    vm.conn.send(b"request", w.now)
    vm.conn.shutdown(w.now)
    w.run()
    assert sock.received == b"request" and sock.shut and sock.closed is None
    w.host_read(fid, b"response")
    assert vm.received == b"response"
    w.nat.host_eof(fid, w.now)
    w.run()
    assert vm.events[-3:] == [DataReceived(b"response"), PeerClosed(), Closed()]
    assert sock.closed is False and len(w.nat) == 0  # LAST_ACK -> CLOSED: flow gone
    assert w.nat.closed_log[-1].endswith("up=7 down=8 duration=0.000s end=closed")
    w.advance(60)
    assert vm.conn.closed


def test_host_half_closes_first_and_the_vm_keeps_sending() -> None:
    w = World()
    vm, fid = w.established()
    sock = w.host.socks[fid]
    w.host_read(fid, b"banner")
    w.nat.host_eof(fid, w.now)
    w.run()
    assert vm.received == b"banner" and PeerClosed() in vm.events
    vm.conn.send(b"still talking", w.now)
    w.run()
    assert sock.received == b"still talking" and not sock.shut
    vm.conn.shutdown(w.now)
    w.run()
    # The NAT closed second, in TIME_WAIT: the host socket is closed, the flow lingers.
    assert sock.shut and sock.closed is False
    assert w.nat.by_id[fid].conn.state == "TIME_WAIT"  # type: ignore[union-attr]
    w.advance(2 * 15 + 1)
    assert len(w.nat) == 0 and w.nat.closed_log[-1].endswith("end=closed")


def test_host_eof_waits_for_the_overflow_to_reach_the_vm() -> None:
    w = World(snd_buffer=READ_CHUNK)
    vm, fid = w.established(rcv_buffer=32 * 1024)
    vm.consume = False
    # Reads done before the pause took effect: the tail overflows the send buffer.
    w.nat.host_data(fid, bytes(READ_CHUNK), w.now)
    w.nat.host_data(fid, b"tail", w.now)
    w.nat.host_eof(fid, w.now)
    w.run()
    flow = w.nat.by_id[fid]
    assert flow.pending == b"tail" and flow.conn is not None
    assert flow.conn.state == "ESTABLISHED"  # no FIN before the tail
    vm.consume = True
    vm.conn.consumed(len(vm.received), w.now)
    w.run()
    assert vm.received == bytes(READ_CHUNK) + b"tail" and vm.events[-1] == PeerClosed()


def test_vm_reuses_the_port_pair_of_a_flow_in_time_wait() -> None:
    w = World()
    vm, fid = w.established()
    w.nat.host_eof(fid, w.now)
    w.run()
    vm.conn.shutdown(w.now)
    w.run()
    assert w.nat.by_id[fid].conn.state == "TIME_WAIT"  # type: ignore[union-attr]
    vm2 = w.connect(iss=900000)  # same ports, new SYN
    assert len(w.nat) == 1 and fid not in w.nat.by_id
    w.host_connected(w.only_flow())
    assert vm2.conn.state == "ESTABLISHED"


# -- resets --------------------------------------------------------------------


def test_vm_reset_resets_the_host_socket() -> None:
    w = World()
    vm, fid = w.established()
    vm.conn.abort(w.now)
    w.run()
    assert w.host.socks[fid].closed is True and len(w.nat) == 0


def test_host_reset_resets_the_vm() -> None:
    w = World()
    vm, fid = w.established()
    w.nat.host_reset(fid, w.now)
    w.run()
    assert vm.events[-2:] == [Reset(), Closed()] and len(w.nat) == 0
    assert w.host.socks[fid].closed is None  # the runtime closed it already
    # Reports about a flow that is gone change nothing.
    w.nat.host_reset(fid, w.now)
    w.nat.host_sent(fid, 1, w.now)
    w.nat.host_data(fid, b"x", w.now)
    w.nat.host_eof(fid, w.now)
    w.run()
    assert w.stray == [] and vm.events[-2:] == [Reset(), Closed()]


def test_vm_leaving_the_switch_resets_its_flows_only() -> None:
    w = World()
    vm, fid = w.established()
    other = w.connect(src=VM2, sport=50000)
    w.nat.forget_vm(VM, w.now)
    w.run()
    assert w.host.socks[fid].closed is True and len(w.nat) == 1
    assert other.conn.state == "SYN_SENT"


# -- timers ------------------------------------------------------------------


def test_keepalive_probes_an_idle_vm_and_gives_up_when_it_is_gone() -> None:
    w = World(keepalive=(30.0, 75.0, 9))
    vm, fid = w.established()
    assert w.nat.next_deadline() == pytest.approx(130.0)
    w.advance(31)  # probed at 130; the VM's answer restarts the idle time
    assert w.nat.next_deadline() == pytest.approx(160.0)
    assert len(w.nat) == 1 and vm.conn.state == "ESTABLISHED"
    vm.online = False
    w.advance(30 + 9 * 75 + 1)
    assert len(w.nat) == 0 and w.host.socks[fid].closed is True


def test_no_deadline_without_flows() -> None:
    w = World()
    assert w.nat.next_deadline() is None
    vm, fid = w.established()
    w.nat.host_reset(fid, w.now)
    w.run()
    w.nat.handle_timer(w.now + 1000)  # the forgotten flow's timer entries are skipped
    assert w.nat.next_deadline() is None and w.stray == []


# -- the gateway's own services and port forwards -------------------------------


class Echo:
    """A service the stack terminates itself: echoes, closes when the VM does."""

    def __init__(self) -> None:
        self.nat: TcpNat | None = None
        self.eofs: list[int] = []

    def received(self, flow_id: int, data: bytes, now: float) -> None:
        assert self.nat is not None
        self.nat.local_send(flow_id, data.upper(), now)

    def eof(self, flow_id: int, now: float) -> None:
        self.eofs.append(flow_id)
        assert self.nat is not None
        self.nat.host_eof(flow_id, now)


def test_local_service_on_the_gateway() -> None:
    echo = Echo()
    w = World(local_service=lambda ip, port: echo if port == 7 else None)
    echo.nat = w.nat
    vm = w.connect(dst=CFG.gateway_ip, port=7)
    assert vm.conn.state == "ESTABLISHED" and w.host.socks == {}  # no host socket
    vm.conn.send(b"ping", w.now)
    w.run()
    assert vm.received == b"PING"
    vm.conn.shutdown(w.now)
    w.run()
    assert echo.eofs == [1] and vm.events[-2:] == [PeerClosed(), Closed()]


def test_port_forward_opens_into_the_vm_from_the_gateway() -> None:
    w = World()
    fid = w.nat.open_to_vm(VM, 8080, w.now)
    w.host.socks[fid] = HostSocket(TcpOpen(fid, "client", 0), connected=True)
    packets, _ = w.nat.drain(w.now)
    (syn,) = packets
    ip = parse_ipv4(syn)
    assert ip.src == CFG.gateway_ip and ip.dst == VM
    vm = w.accept(syn)
    assert vm.conn.state == "ESTABLISHED"
    w.host_read(fid, b"hello vm")
    assert vm.received == b"hello vm"
    vm.conn.send(b"hello host", w.now)
    w.run()
    assert w.host.socks[fid].received == b"hello host"
    # The next forward gets the next gateway port.
    fid2 = w.nat.open_to_vm(VM, 8080, w.now)
    assert w.nat.by_id[fid2].key[3] == w.nat.by_id[fid].key[3] + 1


def forward_source(w: World, fid: int) -> tuple[bytes, int]:
    """Where the SYN of forward ``fid`` comes from, as the VM sees it."""
    (syn,) = [p for p in w.nat.drain(w.now)[0]]
    ip = parse_ipv4(syn)
    assert w.nat.by_id[fid].key[2:] == (ip.src, int.from_bytes(syn[20:22], "big"))
    return w.nat.by_id[fid].key[2], w.nat.by_id[fid].key[3]


def test_port_forward_shows_the_client_and_its_answers_reach_it() -> None:
    w = World()
    fid = w.nat.open_to_vm(VM, 8080, w.now, ("203.0.113.9", 40001))
    w.host.socks[fid] = HostSocket(TcpOpen(fid, "client", 0), connected=True)
    packets, _ = w.nat.drain(w.now)
    ip = parse_ipv4(packets[0])
    assert (ip.src, w.nat.by_id[fid].key[3]) == (ip4("203.0.113.9"), 40001)
    vm = w.accept(packets[0])
    vm.conn.send(b"hello client", w.now)
    w.run()
    assert w.host.socks[fid].received == b"hello client"


@pytest.mark.parametrize("client, shown", [
    (("127.0.0.1", 5000), (CFG.host_ip, 5000)),  # loopback: the host alias
    (("::1", 5000), (CFG.host_ip, 5000)),
    (("::ffff:203.0.113.9", 5000), (ip4("203.0.113.9"), 5000)),  # a mapped IPv4 client
    (("2001:db8::9", 5000), (CFG.gateway_ip, None)),  # another family: the gateway
    (("192.168.65.7", 5000), (CFG.gateway_ip, None)),  # inside the VM network: the gateway
])
def test_port_forward_source_by_client(client: tuple[str, int], shown: tuple) -> None:
    w = World()
    src, port = forward_source(w, w.nat.open_to_vm(VM, 8080, w.now, client))
    assert src == shown[0] and (port == shown[1] if shown[1] else 32768 <= port <= 60999)


def test_forward_sources_remember_each_address_per_family_within_a_bound() -> None:
    sources = forwards.ForwardSources(CFG)
    vm6 = bytes.fromhex("fd427076" "6b690000" "00000000" "00000003")
    clients = ["127.0.0.1", "::1", "203.0.113.9", "::ffff:203.0.113.9", "2001:db8::9", "x"]
    for _ in range(2):  # the second round from the table
        for vm in (VM, vm6):
            for ip in clients:
                assert sources(vm, ip) == forwards.forward_source(CFG, vm, ip)
    for n in range(forwards.ForwardSources.LIMIT + 10):
        sources(VM, f"198.51.{n // 256}.{n % 256}")
    assert len(sources._known) <= forwards.ForwardSources.LIMIT
    assert sources(VM, "198.51.0.7") == ip4("198.51.0.7")


def test_port_forward_collisions_keep_the_address_and_change_the_port() -> None:
    """A VM flow of its own to the client's address and port, and a second client
    shown by the same address and port: neither is taken over."""
    w = World()
    vm = w.connect(dst=ip4("203.0.113.9"), port=40001, sport=8080)  # VM 8080 -> client:40001
    mine = w.only_flow()
    fid = w.nat.open_to_vm(VM, 8080, w.now, ("203.0.113.9", 40001))
    src, port = forward_source(w, fid)
    assert src == ip4("203.0.113.9") and port != 40001
    assert w.nat.flows[(VM, 8080, ip4("203.0.113.9"), 40001)].flow_id == mine
    a = w.nat.open_to_vm(VM, 8080, w.now, ("127.0.0.1", 5000))
    b = w.nat.open_to_vm(VM, 8080, w.now, ("::1", 5000))
    assert w.nat.by_id[a].key[2:] == (CFG.host_ip, 5000)
    assert w.nat.by_id[b].key[2] == CFG.host_ip and w.nat.by_id[b].key[3] != 5000
    assert vm.conn.state == "SYN_SENT"


def test_port_forward_runs_out_of_gateway_ports() -> None:
    w = World()
    nat = w.nat
    first = nat.by_id[nat.open_to_vm(VM, 22, w.now)].key[3]
    for port in range(first + 1, first + 65):  # the next 64 ports are all taken
        nat.flows[(VM, 22, CFG.gateway_ip, port)] = nat.by_id[1]
    with pytest.raises(RuntimeError, match="no free gateway port"):
        nat.open_to_vm(VM, 22, w.now)
