"""CPU time of the sans-I/O stack per request/response and per short connection.

The same steps as bench/compare.py's tcp_rr and conn tests (and pub_conn,
pub_udp_rr: through a published port into the VM), without sockets or
the event loop: a VM (our own TcpConnection, not timed) exchanges frames with a
Stack (timed), and a fake host answers its effects the way runtime/host_tcp.py
does (a write is taken at once; the answer comes back as host data). The
clock is the thread's CPU clock, so other jobs on the machine barely move the
figure: use it to compare two versions of the core while the machine is busy.

    python3 bench/stack_ops.py [--ops 20000] [--rounds 5] [--ops-only pub_conn,pub_udp_rr]

Each line also gives the frames the stack handled per operation (to it + from it).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from pathlib import Path

if importlib.util.find_spec("pyvpnkit") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pyvpnkit.core.config import NetConfig, ip4  # noqa: E402
from pyvpnkit.core.effects import (  # noqa: E402
    TcpCloseHost,
    TcpOpen,
    TcpShutdown,
    TcpWrite,
    UdpForwardReply,
)
from pyvpnkit.core.switch.stack import Stack  # noqa: E402
from pyvpnkit.core.tcp import DataReceived, TcpConnection, TcpSettings  # noqa: E402
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV4, build_ethernet  # noqa: E402
from pyvpnkit.wire.ipv4 import PROTO_UDP, parse_ipv4  # noqa: E402
from pyvpnkit.wire.tcp import parse_tcp  # noqa: E402
from pyvpnkit.wire.udp import build_ipv4_udp, parse_udp  # noqa: E402

VM_MAC = bytes.fromhex("020000000003")
VM_IP = ip4("192.168.65.3")
HOST = ip4("192.168.65.2")
LINK = 1
clock = time.thread_time_ns


# The VM's own TCP (not timed): delays its ACKs as Linux does, so the next request
# carries the ACK.
VM_TCP = TcpSettings(mss=65480, rcv_buffer=1 << 20, snd_buffer=1 << 20, delayed_ack=0.04)

class Bench:
    """One stack, one VM; ``spent`` accumulates the stack's CPU nanoseconds."""

    def __init__(self) -> None:
        self.cfg = NetConfig()
        # As under exec (a TAP with offloads only): the link fills in TCP checksums.
        self.stack = Stack(self.cfg, rng=random.Random(1))
        self.stack.link_opened(LINK, offloads=True)
        self.stack.log_flows(False)  # as at the default --log-level warning
        self.now = 1000.0
        self.spent = 0
        self.sport = 30000
        self.frames = 0  # frames to and from the stack
        self._replies: list[UdpForwardReply] = []  # what _settle saw, for the pub_* loads
        self._host_writes: list[bytes] = []
        # The VM's address is learned from a first frame (as DHCP or ARP would).

    def _stack_receive(self, frame: bytes) -> None:
        self.frames += 1
        t = clock()
        self.stack.receive(LINK, frame, self.now, True)
        self.spent += clock() - t

    def _settle(self, host_reply: bytes = b"", eof_after_reply: bool = False) -> list[bytes]:
        """Drain, perform effects like the runtime (re-draining while they feed the stack)."""
        stack, nat = self.stack, self.stack.tcp
        out: list[bytes] = []
        t = clock()
        while True:
            frames, effects = stack.drain(self.now)
            again = False
            for eff in effects:
                if type(eff) is TcpOpen:
                    nat.host_connected(eff.flow_id, self.now)
                    again = True
                elif type(eff) is TcpWrite:
                    again = nat.host_sent(eff.flow_id, len(eff.data), self.now) or again
                    if host_reply:
                        self.spent += clock() - t
                        self._pending = (eff.flow_id, host_reply, eof_after_reply)
                        t = clock()
                elif type(eff) in (TcpShutdown, TcpCloseHost):
                    pass
            out.extend(f for _link, f in frames)
            self._replies += [e for e in effects if type(e) is UdpForwardReply]
            self._host_writes += [e.data for e in effects if type(e) is TcpWrite]
            if not again:
                break
        stack.next_deadline()
        self.spent += clock() - t
        self.frames += len(out)
        return out

    def host_answer(self) -> list[bytes]:
        fid, data, eof = self._pending
        t = clock()
        self.stack.tcp.host_data(fid, data, self.now)
        if eof:
            self.stack.tcp.host_eof(fid, self.now)
        self.spent += clock() - t
        return self._settle()

    # -- the VM side (not timed) ------------------------------------------------

    def vm_conn(self, port: int) -> TcpConnection:
        self.sport += 1
        return TcpConnection(
            local_ip=VM_IP, local_port=self.sport, remote_ip=HOST, remote_port=port,
            iss=random.getrandbits(32), settings=VM_TCP,
        )  # fmt: skip

    def vm_out(self, conn: TcpConnection) -> list[bytes]:
        packets, _events = conn.drain()
        return [build_ethernet(self.cfg.gateway_mac, VM_MAC, ETHERTYPE_IPV4, p) for p in packets]

    def vm_in(self, conn: TcpConnection, frames: list[bytes]) -> None:
        for f in frames:
            ip = parse_ipv4(memoryview(f)[14:])
            conn.handle_segment(parse_tcp(ip.payload, ip.src, ip.dst, False), self.now)

    def exchange(self, conn: TcpConnection, reply: bytes = b"", eof: bool = False) -> None:
        """The VM's pending segments to the stack and back until both are quiet."""
        for _ in range(50):
            frames = self.vm_out(conn)
            if not frames:
                return
            for f in frames:
                self._stack_receive(f)
            back = self._settle(reply, eof)
            reply = b""
            if getattr(self, "_pending", None) is not None:
                back += self.host_answer()
                self._pending = None
            self.vm_in(conn, back)
        raise AssertionError("no quiet")

    # -- the two loads ----------------------------------------------------------

    def rr(self, ops: int) -> float:
        conn = self.vm_conn(5203)
        conn.connect(self.now)
        self._pending = None
        self.exchange(conn)
        assert conn.state == "ESTABLISHED", conn.state
        self.spent = self.frames = 0
        for _ in range(ops):
            self.now += 0.0001
            conn.send(b"x", self.now)
            self.exchange(conn, b"x")
            conn.drain()
        return self.spent / ops / 1000

    def conn(self, ops: int) -> float:
        self.spent = self.frames = 0
        for _ in range(ops):
            self.now += 0.0001
            conn = self.vm_conn(5202)
            conn.connect(self.now)
            self._pending = None
            self.exchange(conn)
            conn.send(b"x", self.now)
            self.exchange(conn, b"x", eof=True)
            conn.shutdown(self.now)
            self.exchange(conn)
            assert conn.state in ("TIME_WAIT", "CLOSED"), conn.state
        return self.spent / ops / 1000

    # -- through published ports (the runtime's forwarder calls what is timed here) ----

    def _timed(self, fn: object, *args: object) -> None:
        t = clock()
        fn(*args)  # type: ignore[operator]
        self.spent += clock() - t

    def pub_conn(self, ops: int) -> float:
        """A host client connects (its 1 byte already read), the VM's server echoes and
        closes, the client reads and closes: as compare.py's pub_conn."""
        self.conn(1)  # the stack learns the VM
        nat = self.stack.tcp
        self.spent = self.frames = 0
        for i in range(ops):
            self.now += 0.0001
            client = ("127.0.0.1", 40000 + i % 20000)
            t = clock()
            fid = nat.open_to_vm(VM_IP, 5202, self.now, client)
            nat.host_data(fid, b"x", self.now)  # read at accept (runtime/forwarder.py)
            self.spent += clock() - t
            self._host_writes = []
            syn = self._settle()
            ip = parse_ipv4(memoryview(syn[0])[14:])
            seg = parse_tcp(ip.payload, ip.src, ip.dst, False)
            vm = TcpConnection.accept(
                seg, self.now, local_ip=VM_IP, local_port=5202, remote_ip=bytes(ip.src),
                remote_port=seg.src_port, iss=random.getrandbits(32), settings=VM_TCP)
            eof = False
            for _ in range(50):
                packets, events = vm.drain()
                for ev in events:
                    if isinstance(ev, DataReceived):  # the server echoes and closes
                        vm.send(ev.data, self.now)
                        vm.shutdown(self.now)
                packets += vm.drain()[0]
                if not packets:
                    break
                for p in packets:
                    self._stack_receive(build_ethernet(self.cfg.gateway_mac, VM_MAC,
                                                       ETHERTYPE_IPV4, p))
                back = self._settle()
                if self._host_writes and not eof:  # the client read its echo and closes
                    eof = True
                    self._timed(nat.host_eof, fid, self.now)
                    back += self._settle()
                self.vm_in(vm, back)
            assert vm.state in ("TIME_WAIT", "CLOSED", "LAST_ACK"), vm.state
        return self.spent / ops / 1000

    def pub_udp_rr(self, ops: int) -> float:
        """A host client's datagram through a published UDP port, the VM's echo back."""
        self.conn(1)
        fwd = self.stack.udp_forward
        fwd.add(1, VM_IP, 5204, keep_source=True)
        client = ("127.0.0.1", 40000)
        self.spent = self.frames = 0
        for _ in range(ops):
            self.now += 0.0001
            self._timed(fwd.host_datagram, 1, client, b"x", self.now)
            self._replies = []
            for f in self._settle():
                ip = parse_ipv4(memoryview(f)[14:])
                assert ip.proto == PROTO_UDP
                d = parse_udp(ip.payload, ip.src, ip.dst, False)
                self._stack_receive(build_ethernet(
                    self.cfg.gateway_mac, VM_MAC, ETHERTYPE_IPV4,
                    build_ipv4_udp(VM_IP, bytes(ip.src), 5204, d.src_port, d.payload.tobytes())))
            self._settle()
            assert len(self._replies) == 1, self._replies
        return self.spent / ops / 1000


    def _udp_flow(self) -> int:
        """The VM's iperf3 -u flow to the world: opened by a first datagram."""
        self.conn(1)  # the stack learns the VM
        self._stack_receive(self._udp_frame())
        self._settle()
        flow = self.stack.udp.flow_of(VM_IP, 41000)
        assert flow is not None
        self.spent = self.frames = 0
        return flow

    def _udp_frame(self) -> bytes:
        # The kernel leaves the checksum partial on a TAP with offloads (not summed here).
        return build_ethernet(self.cfg.gateway_mac, VM_MAC, ETHERTYPE_IPV4, build_ipv4_udp(
            VM_IP, WORLD, 41000, 5201, UDP_PAYLOAD))

    def udp_up(self, ops: int) -> float:
        """iperf3 -u -l 1400 from the VM: a datagram in, its UdpSend out, a drain per
        ``UDP_BATCH`` datagrams (as a TAP read batch ends)."""
        self._udp_flow()
        frame = self._udp_frame()
        sent = 0
        for i in range(ops):
            self._stack_receive(frame)
            if i % UDP_BATCH == UDP_BATCH - 1:
                t = clock()
                sent += len(self.stack.drain(self.now)[1])
                self.spent += clock() - t
        assert sent >= ops - UDP_BATCH, sent
        return self.spent / ops / 1000

    def udp_down(self, ops: int) -> float:
        """iperf3 -u -R: the host socket's datagrams to the VM, a drain per ``UDP_BATCH``
        (as runtime/host_udp.py reads a socket's queue, then wakes the engine once)."""
        flow = self._udp_flow()
        nat, buf = self.stack.udp, memoryview(bytearray(UDP_PAYLOAD))
        got = 0
        t = clock()
        for i in range(ops):
            nat.host_datagram(flow, "203.0.113.5", 5201, buf, self.now)
            if i % UDP_BATCH == UDP_BATCH - 1:
                got += len(self.stack.drain(self.now)[0])
        self.spent += clock() - t
        self.frames = got
        assert got >= ops - UDP_BATCH, got
        return self.spent / ops / 1000


WORLD = ip4("203.0.113.5")
UDP_PAYLOAD = bytes(1400)
UDP_BATCH = 32
OPS = ("rr", "conn", "pub_conn", "pub_udp_rr", "udp_up", "udp_down")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ops-only", default=",".join(OPS), help=f"some of {','.join(OPS)}")
    args = ap.parse_args()
    for name in args.ops_only.split(","):
        ops = args.ops if name in ("rr", "pub_udp_rr", "udp_up", "udp_down") else args.ops // 4
        runs, frames = [], 0.0
        for _ in range(args.rounds):
            bench = Bench()
            runs.append(getattr(bench, name)(ops))
            frames = bench.frames / ops
        print(f"{name}: {statistics.median(runs):.1f} us of stack CPU per op, {frames:.1f} frames "
              f"(median of {args.rounds}: {', '.join(f'{r:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
