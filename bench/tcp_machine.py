"""Micro-benchmark of the sans-I/O TCP machine with 64 KB segments (MTU 65520).

Receive: in-order data segments from the VM -> handle_segment, one drain (ACK) per
batch, consumed(). Send: send() -> drain() builds segments -> the VM's ACKs.
Parsing of the incoming frames is done up front and not timed.

    PYTHONPATH=src python3 bench/tcp_machine.py
"""

from __future__ import annotations

import os
import time

from pyvpnkit.core.tcp import TcpConnection, TcpSettings
from pyvpnkit.wire.tcp import ACK, SYN, TcpOptions, TcpSegment, build_tcp, encode_options, parse_tcp

LOCAL = bytes([192, 168, 65, 2])
VM = bytes([192, 168, 65, 3])
MSS = 65520 - 40
SEGMENTS = 400
BATCH = 8  # frames handled per drain, as the runtime does per loop iteration
TS = encode_options(TcpOptions(timestamps=(1, 1)))
PAYLOAD = os.urandom(MSS - len(TS))


def vm_segment(seq: int, ack: int, payload: bytes = b"", flags: int = ACK) -> TcpSegment:
    raw = build_tcp(
        VM, LOCAL, 40000, 80, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0xFFFF, TS, payload
    )
    return parse_tcp(raw, VM, LOCAL)


def connection(checksum: bool) -> TcpConnection:
    syn = parse_tcp(
        build_tcp(
            VM,
            LOCAL,
            40000,
            80,
            1000,
            0,
            SYN,
            0xFFFF,
            encode_options(TcpOptions(mss=MSS, wscale=7, sack_permitted=True, timestamps=(1, 0))),
        ),
        VM,
        LOCAL,
    )
    c = TcpConnection.accept(
        syn,
        0.0,
        local_ip=LOCAL,
        local_port=80,
        remote_ip=VM,
        remote_port=40000,
        iss=5000,
        settings=TcpSettings(
            mss=MSS, checksum=checksum, rcv_buffer=64 << 20, snd_buffer=64 << 20, delayed_ack=0.0
        ),
    )
    c.drain()
    c.handle_segment(vm_segment(1001, 5001), 0.0)
    c.drain()
    return c


def bench_receive(checksum: bool) -> float:
    c = connection(checksum)
    segs = [vm_segment(1001 + i * len(PAYLOAD), 5001, PAYLOAD) for i in range(SEGMENTS)]
    # The SYN-ACK offered 64 KiB; the first ACK opens the scaled window.
    c.handle_segment(segs[0], 0.5)
    c.drain()
    c.consumed(len(PAYLOAD), 0.5)
    t0 = time.perf_counter()
    now = 1.0
    for i in range(1, SEGMENTS, BATCH):
        for s in segs[i : i + BATCH]:
            c.handle_segment(s, now)
        packets, events = c.drain()
        for ev in events:
            c.consumed(len(ev.data), now)  # type: ignore[attr-defined]
        assert packets
    dt = time.perf_counter() - t0
    assert c.rcv_nxt == 1001 + SEGMENTS * len(PAYLOAD)
    return SEGMENTS / dt


def bench_send(checksum: bool) -> float:
    c = connection(checksum)
    chunk = PAYLOAD * 4
    sent = 0
    segments = 0
    acks = [vm_segment(1001, 5001 + i * len(PAYLOAD)) for i in range(SEGMENTS + 1)]
    t0 = time.perf_counter()
    now = 1.0
    acked = 0
    while segments < SEGMENTS:
        c.send(chunk, now)
        packets, _ = c.drain()
        segments += len(packets)
        sent += len(chunk)
        # The VM acknowledges every other segment it got.
        while acked + 2 <= segments and acked + 2 <= SEGMENTS:
            acked += 2
            c.handle_segment(acks[acked], now)
    dt = time.perf_counter() - t0
    return segments / dt


def main() -> None:
    for checksum in (True, False):
        rx = bench_receive(checksum)
        tx = bench_send(checksum)
        bits = len(PAYLOAD) * 8
        print(
            f"checksum={'on ' if checksum else 'off'}  "
            f"receive {rx:8.0f} seg/s ({rx * bits / 1e9:5.2f} Gbit/s)   "
            f"send {tx:8.0f} seg/s ({tx * bits / 1e9:5.2f} Gbit/s)"
        )


if __name__ == "__main__":
    main()
