"""Whole-stack fuzzer: random and mutated frames of every protocol, through every framing.

Valid frames (ARP, DHCP, DNS over UDP and TCP, TCP to the host alias, the
world and the gateway, UDP, ICMP echo, IPv4 fragments, IPv6, VM-to-VM
unicast and broadcast) are generated for a few VMs, then mutated (bit flips,
truncation, runts, inserted bytes, random header fields) or replaced by
random bytes. Each frame goes through one transport's framing: the QEMU
u32-BE and vpnkit/stdio u16-LE stream framings (cut into random chunks, with
the occasional corrupted length prefix), or one frame per message as on
TAP, bess and vfkit. A fake host executes the stack's effects (connects that
succeed, fail or hang; writes taken; datagrams, pings and DNS answered with
echoes or garbage) and the clock moves on, so timers and host events run too.

Pass criteria: no exception escapes the stack or a decoder other than a lost
framing (which closes that stream, as a real link would); no frame is dropped
as an internal error; and afterwards ARP, DHCP and a TCP handshake still work.

    python bench/fuzz_stack.py [--frames 1000000] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

if importlib.util.find_spec("pyvpnkit") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pyvpnkit.core.config import NetConfig, ip4  # noqa: E402
from pyvpnkit.core.dns.forwarder import UpstreamQuery  # noqa: E402
from pyvpnkit.core.effects import TcpOpen, TcpWrite  # noqa: E402
from pyvpnkit.core.nat.icmp_nat import IcmpEchoSend  # noqa: E402
from pyvpnkit.core.nat.udp_nat import UdpSend  # noqa: E402
from pyvpnkit.core.switch.stack import Stack  # noqa: E402
from pyvpnkit.core.switch.stack_settings import StackSettings  # noqa: E402
from pyvpnkit.wire import arp, ethernet, icmp, ipv4, tcp, udp  # noqa: E402
from pyvpnkit.wire.framing import QEMU, U16LE, FramingError  # noqa: E402

CFG = NetConfig()
GW, HOST, WORLD = CFG.gateway_ip, CFG.host_ip, ip4("203.0.113.2")
VMS = [(bytes.fromhex(f"02000000000{i}"), ip4(f"192.168.65.{i + 2}")) for i in range(1, 4)]


def dhcp(mac: bytes, mtype: int, rng: random.Random) -> bytes:
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, rng.getrandbits(32), 0, 0,
                      b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac, b"", b"")
    opts = bytes([53, 1, mtype, 61, 7, 1]) + mac + b"\xff"
    return hdr + b"\x63\x82\x53\x63" + opts


def dns_query(rng: random.Random) -> bytes:
    name = rng.choice([b"\x04host\x06docker\x08internal\x00", b"\x07example\x03com\x00",
                       b"\x02vm\x08internal\x00", bytes(rng.randrange(256) for _ in range(12))])
    qtype = rng.choice([1, 28, 12, 16, 255, rng.randrange(65536)])
    return struct.pack("!HHHHHH", rng.getrandbits(16), 0x0100, 1, 0, 0, 0) + name + \
        struct.pack("!HH", qtype, 1)


class Generator:
    """Valid frames of every kind the stack speaks, for a few VMs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # (vm ip, vm port, peer ip, peer port) -> [our next seq, their next seq], from SYN-ACKs
        self.established: dict[tuple[bytes, int, bytes, int], list[int]] = {}
        self.kinds: list[Callable[[bytes, bytes], bytes]] = [
            self.arp, self.dhcp, self.dns_udp, self.tcp_syn, self.tcp_segment, self.tcp_data,
            self.tcp_data,
            self.udp_world, self.ping, self.fragment, self.ipv6, self.vm_to_vm, self.broadcast,
        ]

    def frame(self) -> bytes:
        mac, ip = self.rng.choice(VMS)
        return self.rng.choice(self.kinds)(mac, ip)

    def ip(self, mac: bytes, src: bytes, dst: bytes, proto: int, payload: bytes, **kw) -> bytes:
        packet = ipv4.build_ipv4(src, dst, proto, payload, **kw)
        return ethernet.build_ethernet(CFG.gateway_mac, mac, ethernet.ETHERTYPE_IPV4, packet)

    def arp(self, mac: bytes, ip: bytes) -> bytes:
        target = self.rng.choice([GW, HOST, WORLD, VMS[0][1], b"\0" * 4])
        body = arp.build_arp(self.rng.choice([1, 2]), mac, ip, b"\0" * 6, target)
        return ethernet.build_ethernet(ethernet.BROADCAST, mac, ethernet.ETHERTYPE_ARP, body)

    def dhcp(self, mac: bytes, ip: bytes) -> bytes:
        payload = dhcp(mac, self.rng.choice([1, 3, 4, 7, 8]), self.rng)
        dgram = udp.build_udp(b"\0" * 4, b"\xff" * 4, 68, 67, payload)
        packet = ipv4.build_ipv4(b"\0" * 4, b"\xff" * 4, ipv4.PROTO_UDP, dgram)
        return ethernet.build_ethernet(ethernet.BROADCAST, mac, ethernet.ETHERTYPE_IPV4, packet)

    def dns_udp(self, mac: bytes, ip: bytes) -> bytes:
        dgram = udp.build_udp(ip, GW, self.rng.randrange(1024, 65536), 53, dns_query(self.rng))
        return self.ip(mac, ip, GW, ipv4.PROTO_UDP, dgram)

    def tcp_syn(self, mac: bytes, ip: bytes) -> bytes:
        dst, port = self.rng.choice([(HOST, 8080), (WORLD, 80), (GW, 53), (GW, 22)])
        seg = tcp.build_tcp(ip, dst, self.rng.randrange(40000, 40064), port,
                            self.rng.getrandbits(32), 0, tcp.SYN, 64240)
        return self.ip(mac, ip, dst, ipv4.PROTO_TCP, seg)

    def tcp_segment(self, mac: bytes, ip: bytes) -> bytes:
        """ACK/data/FIN/RST on a port pair the SYNs use, with guessed sequence numbers."""
        dst, port = self.rng.choice([(HOST, 8080), (WORLD, 80), (GW, 53)])
        flags = self.rng.choice([tcp.ACK, tcp.ACK | tcp.PSH, tcp.FIN | tcp.ACK, tcp.RST, 0xFF])
        data = b"\x00\x1c" + dns_query(self.rng) if port == 53 else self.rng.randbytes(
            self.rng.choice([0, 1, 100, 1460]))
        seg = tcp.build_tcp(ip, dst, self.rng.randrange(40000, 40064), port,
                            self.rng.getrandbits(32), self.rng.getrandbits(32), flags,
                            self.rng.randrange(65536), payload=data)
        return self.ip(mac, ip, dst, ipv4.PROTO_TCP, seg)

    def learn(self, frame: bytes) -> None:
        """Note a SYN-ACK sent to a VM, so later segments of that flow are in sequence."""
        if len(frame) >= 54 and frame[23] == 6 and frame[47] == tcp.SYN | tcp.ACK:
            sport, dport, seq, ack = struct.unpack_from("!HHII", frame, 34)
            key = (frame[30:34], dport, frame[26:30], sport)
            self.established[key] = [ack, (seq + 1) & 0xFFFFFFFF]
            if len(self.established) > 256:
                del self.established[next(iter(self.established))]

    def tcp_data(self, mac: bytes, ip: bytes) -> bytes:
        """In-sequence data, FIN or RST on a flow the stack accepted."""
        if not self.established:
            return self.tcp_syn(mac, ip)
        key = self.rng.choice(list(self.established))
        vm_ip, vm_port, peer, port = key
        vm_mac = next(m for m, i in VMS if i == vm_ip) if any(i == vm_ip for _, i in VMS) else mac
        state = self.established[key]
        flags = self.rng.choice([tcp.ACK | tcp.PSH] * 6 + [tcp.FIN | tcp.ACK, tcp.RST])
        data = b"\x00\x1c" + dns_query(self.rng) if port == 53 else self.rng.randbytes(
            self.rng.choice([1, 100, 1460]))
        if flags & tcp.RST:
            data = b""
        seg = tcp.build_tcp(vm_ip, peer, vm_port, port, state[0], state[1], flags, 65535,
                            payload=data)
        state[0] = (state[0] + len(data) + (1 if flags & tcp.FIN else 0)) & 0xFFFFFFFF
        if flags & (tcp.FIN | tcp.RST):
            del self.established[key]
        return self.ip(vm_mac, vm_ip, peer, ipv4.PROTO_TCP, seg)

    def udp_world(self, mac: bytes, ip: bytes) -> bytes:
        dst = self.rng.choice([WORLD, HOST, ip4("198.51.100.7")])
        dgram = udp.build_udp(ip, dst, self.rng.randrange(1, 65536), self.rng.randrange(1, 65536),
                              self.rng.randbytes(self.rng.choice([0, 8, 512])))
        return self.ip(mac, ip, dst, ipv4.PROTO_UDP, dgram, ttl=self.rng.choice([1, 64]))

    def ping(self, mac: bytes, ip: bytes) -> bytes:
        dst = self.rng.choice([GW, HOST, WORLD])
        body = icmp.build_icmp(self.rng.choice([8, 8, 0, 3, 11]), 0,
                               icmp.echo_rest(self.rng.getrandbits(16), self.rng.getrandbits(16)),
                               self.rng.randbytes(56))
        return self.ip(mac, ip, dst, ipv4.PROTO_ICMP, body)

    def fragment(self, mac: bytes, ip: bytes) -> bytes:
        dgram = udp.build_udp(ip, WORLD, 5000, 5001, self.rng.randbytes(3000))
        packet = ipv4.build_ipv4(ip, WORLD, ipv4.PROTO_UDP, dgram, ident=self.rng.getrandbits(16))
        off = self.rng.choice([0, 1480, 2960]) // 8
        more = 0x2000 if off < 370 else 0
        body = packet[20 + off * 8: 20 + off * 8 + 1480]
        hdr = bytearray(packet[:20])
        struct.pack_into("!HH", hdr, 2, 20 + len(body), more | off)
        struct.pack_into("!H", hdr, 10, 0)
        csum = ~sum(struct.unpack("!10H", hdr)) & 0xFFFF
        hdr[10:12] = ((csum & 0xFFFF) + (csum >> 16)).to_bytes(2, "big")
        return ethernet.build_ethernet(CFG.gateway_mac, mac, ethernet.ETHERTYPE_IPV4,
                                       bytes(hdr) + body)

    def ipv6(self, mac: bytes, ip: bytes) -> bytes:
        return ethernet.build_ethernet(CFG.gateway_mac, mac, 0x86DD, self.rng.randbytes(60))

    def vm_to_vm(self, mac: bytes, ip: bytes) -> bytes:
        other_mac, other_ip = self.rng.choice(VMS)
        dgram = udp.build_udp(ip, other_ip, 7, 7, b"hello")
        packet = ipv4.build_ipv4(ip, other_ip, ipv4.PROTO_UDP, dgram)
        return ethernet.build_ethernet(other_mac, mac, ethernet.ETHERTYPE_IPV4, packet)

    def broadcast(self, mac: bytes, ip: bytes) -> bytes:
        return ethernet.build_ethernet(ethernet.BROADCAST, mac, 0x88B5, self.rng.randbytes(46))


def mutate(frame: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(8)
    b = bytearray(frame)
    if choice == 0:  # bit flips
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncation
        del b[rng.randrange(len(b)):]
    elif choice == 2:  # runt
        return frame[: rng.choice([0, 1, 13])]
    elif choice == 3:  # inserted bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randrange(1, 32))
    elif choice == 4:  # a random header byte (Ethernet, IPv4 and L4 headers)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(min(len(b), 60))
            b[i] = rng.randrange(256)
    elif choice == 5:  # an IPv4 header field set to an extreme
        if len(b) >= 34:
            field = rng.choice([14, 16, 20, 22, 23])
            b[field] = rng.choice([0, 0xFF, 0x45, 0x4F])
    elif choice == 6:  # appended junk
        b += rng.randbytes(rng.randrange(1, 200))
    else:  # totally random
        return rng.randbytes(rng.randrange(0, 1600))
    return bytes(b)


class FakeHost:
    """Executes effects the way a host might: success, failure, silence, garbage."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        self.stack = stack
        self.rng = rng
        self.effects: Counter[str] = Counter()

    def run(self, effects: list[object], now: float) -> None:
        rng, stack = self.rng, self.stack
        for eff in effects:
            self.effects[type(eff).__name__] += 1
            if isinstance(eff, TcpOpen):
                r = rng.random()
                if r < 0.6:
                    stack.tcp.host_connected(eff.flow_id, now)
                elif r < 0.8:
                    stack.tcp.host_connect_failed(eff.flow_id, now)
            elif isinstance(eff, TcpWrite):
                stack.tcp.host_sent(eff.flow_id, len(eff.data), now)
                r = rng.random()
                if r < 0.3:
                    stack.tcp.host_data(eff.flow_id, rng.randbytes(rng.randrange(1, 3000)), now)
                elif r < 0.35:
                    stack.tcp.host_eof(eff.flow_id, now)
                elif r < 0.37:
                    stack.tcp.host_reset(eff.flow_id, now)
            elif isinstance(eff, UdpSend):
                if rng.random() < 0.5:
                    stack.udp.host_datagram(eff.flow_id, eff.dst_ip, eff.dst_port,
                                            eff.payload[:64], now)
                else:
                    stack.udp.host_error(eff.flow_id, "port_unreachable", None, eff.dst_ip,
                                         eff.dst_port, now)
            elif isinstance(eff, IcmpEchoSend):
                stack.icmp.host_echo_reply(eff.flow_id, eff.dst_ip, eff.seq, b"pong", now)
            elif isinstance(eff, UpstreamQuery):
                r = rng.random()
                if r < 0.4:
                    reply = bytearray(eff.data)
                    reply[2] |= 0x80
                    stack.dns.handle_upstream_reply(eff.token, bytes(reply), now)
                elif r < 0.6:
                    stack.dns.handle_upstream_reply(eff.token, mutate(eff.data, rng), now)
                elif r < 0.8:
                    stack.dns.handle_upstream_error(eff.token, now)


class Transport:
    """One VM link's framing: stream framings are cut into chunks; packet links pass whole."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.framing = {"qemu": QEMU, "vpnkit": U16LE, "stdio": U16LE}.get(name)
        self.decoder = self.framing.decoder(self.framing.max_frame(1500)) if self.framing else None
        self.lost = 0  # streams closed because the framing was lost

    def carry(self, frames: list[bytes]) -> list[bytes]:
        if self.framing is None:  # tap, bess, vfkit: one frame per message
            return [f for f in frames if len(f) <= 65535 + 14]
        assert self.decoder is not None
        frames = [f for f in frames if len(f) <= self.framing.header_limit]
        data = bytearray(self.framing.encode_many(frames))
        if data and self.rng.random() < 0.002:  # a corrupted length prefix
            data[0] ^= 0xFF
        out: list[bytes] = []
        i = 0
        while i < len(data):
            j = min(len(data), i + self.rng.choice([1, 7, 64, 1500, 1 << 16]))
            try:
                out += self.decoder.feed(memoryview(data)[i:j])
            except FramingError as exc:
                out += exc.frames
                self.lost += 1  # a real link closes; the VM reconnects with a fresh stream
                self.decoder = self.framing.decoder(self.framing.max_frame(1500))
                break
            i = j
        return out


def still_serves(stack: Stack, now: float) -> list[str]:
    """ARP, DHCP and a TCP handshake from a fresh VM after the storm; the failures."""
    failures = []
    mac, ip = bytes.fromhex("02000000aaaa"), ip4("192.168.65.200")
    stack.drain(now)
    req = arp.build_arp(arp.ARP_REQUEST, mac, ip, b"\0" * 6, GW)
    stack.receive(9, ethernet.build_ethernet(ethernet.BROADCAST, mac, ethernet.ETHERTYPE_ARP,
                                             req), now)
    frames, _ = stack.drain(now)
    if not any(f[12:14] == b"\x08\x06" for _, f in frames):
        failures.append("ARP")
    gen = Generator(random.Random(0))
    stack.receive(9, gen.dhcp(mac, ip), now)
    frames, _ = stack.drain(now)
    if not any(len(f) > 282 and f[278:282] == b"\x63\x82\x53\x63" for _, f in frames):
        failures.append("DHCP")
    syn = tcp.build_tcp(ip, HOST, 50000, 8080, 1000, 0, tcp.SYN, 64240)
    stack.receive(9, gen.ip(mac, ip, HOST, ipv4.PROTO_TCP, syn), now)
    _frames, effects = stack.drain(now)
    opens = [e for e in effects if isinstance(e, TcpOpen)]
    if not opens:
        failures.append("TCP open")
    else:
        stack.tcp.host_connected(opens[0].flow_id, now)
        frames, _ = stack.drain(now)
        if not any(f[23] == 6 and f[47] == tcp.SYN | tcp.ACK for _, f in frames):
            failures.append("TCP SYN-ACK")
    return failures


def fuzz(frames: int, seed: int, report: Callable[[str], None] = print) -> dict[str, object]:
    rng = random.Random(seed)
    stack = Stack(CFG, StackSettings(max_pending_connects=64), rng=random.Random(seed),
                  dns_upstreams=[("127.0.0.1", 53)])
    host = FakeHost(stack, rng)
    gen = Generator(rng)
    links = {i: Transport(name, rng) for i, name in
             enumerate(["qemu", "vpnkit", "stdio", "tap", "bess", "vfkit"], start=1)}
    escaped: Counter[str] = Counter()
    now = 0.0
    sent = 0
    t0 = time.perf_counter()
    next_report = 100_000
    while sent < frames:
        batch = []
        for _ in range(rng.randrange(1, 33)):
            r = rng.random()
            f = gen.frame()
            batch.append(f if r < 0.3 else mutate(f, rng))
        link_id = rng.choice(list(links))
        for f in links[link_id].carry(batch):
            stack.receive(link_id, f, now)
        sent += len(batch)
        try:
            out, effects = stack.drain(now)
            host.run(effects, now)
            for _link, f in out:
                gen.learn(f)
            now += rng.choice([0.0, 0.001, 0.01, 0.2, 1.5])
            stack.handle_timer(now)
        except Exception as exc:  # noqa: BLE001 - counted: the run fails
            escaped[repr(exc)[:120]] += 1
        if sent >= next_report:
            next_report += 100_000
            report(f"{sent} frames, {sent / (time.perf_counter() - t0):.0f} frames/s")
    seconds = time.perf_counter() - t0
    return {
        "frames": sent,
        "seconds": round(seconds, 1),
        "frames_per_s": round(sent / seconds),
        "escaped": dict(escaped),
        "internal_errors": stack.stats["drop_internal_error"],
        "last_error": stack.last_error,
        "streams_lost": {t.name: t.lost for t in links.values() if t.lost},
        "drops": {k: v for k, v in stack.stats.items() if k.startswith("drop_")},
        "effects": dict(host.effects),
        "still_serves_failures": still_serves(stack, now + 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=random.randrange(1 << 32))
    args = p.parse_args()
    print(f"seed {args.seed}")
    res = fuzz(args.frames, args.seed)
    for k, v in res.items():
        print(f"{k}: {v}")
    ok = not res["escaped"] and not res["internal_errors"] and not res["still_serves_failures"]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
