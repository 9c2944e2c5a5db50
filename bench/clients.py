"""The client half of bench/compare.py, run inside each stack's namespace.

    python3 bench/clients.py GW DNS STACK_PID SECONDS [TESTS] [--parallel N]

Runs the tests (comma-separated; default all) one after the other against the
servers compare.py started on the host namespace's loopback (reached through
GW) and the DNS address DNS, and prints one JSON object: rates, and for the
iperf3 runs the stack process's CPU seconds per GB moved (from
/proc/STACK_PID/stat; STACK_PID 0 = not measured, PID,PID,...: their sum).

With --parallel N, N clients run each test at once: iperf3 with -P N, the rate
tests in N forked processes (fairer than threads on a few cores). A figure is
then the aggregate: the sum of the N rates, and the stack's CPU over all N
clients' operations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

# BENCH_PORT_OFFSET: the servers' ports as published on the host (compare.py's published rows)
_OFF = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
IPERF_PORT, CONN_PORT, RR_PORT, UDP_PORT = (5201 + _OFF, 5202 + _OFF, 5203 + _OFF, 5204 + _OFF)
DNS_NAME = os.environ.get("BENCH_DNS_NAME", "bench.test")  # another name: see README
ALL = ("up", "down", "conn", "tcp_rr", "udp_rr", "dns", "udp_up", "udp_down")


def cpu_seconds(pids: str) -> float:
    """utime + stime of the comma-separated `pids` (fields 14 and 15 of /proc/PID/stat)."""
    ticks = 0
    for pid in pids.split(","):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (the parallel clients)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def iperf(
    gw: str, secs: float, reverse: bool, stack: str, udp: bool = False, streams: int = 1
) -> dict[str, float]:
    """TCP, or UDP as fast as it goes in 1400-byte datagrams (-u -b 0 -l 1400): the
    receiver's goodput (of all `streams`), and the stack's CPU per GB it delivered."""
    before = cpu_seconds(stack) if stack != "0" else 0.0
    cmd = ["iperf3", "-c", gw, "-p", str(IPERF_PORT), "-t", str(secs), "-J", "-P", str(streams)]
    cmd += ["-R"] if reverse else []
    cmd += ["-u", "-b", "0", "-l", "1400"] if udp else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    cpu = cpu_seconds(stack) - before if stack != "0" else float("nan")
    summary = json.loads(out.stdout)["end"]
    end = summary.get("sum_received") or summary["sum"]
    gbytes = end["bytes"] / 1e9
    return {"gbit": end["bits_per_second"] / 1e9, "cpu_per_gb": cpu / gbytes}


def conn_rate(gw: str, secs: float) -> float:
    """connect, 1-byte echo, close; connections per second."""
    n = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        s = socket.create_connection((gw, CONN_PORT))
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("connection closed before the echo")
        s.close()
        n += 1
    return n / secs


def tcp_rr(gw: str, secs: float) -> float:
    """1-byte ping-pong on one connection with TCP_NODELAY; transactions per second."""
    s = socket.create_connection((gw, RR_PORT))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    end = time.monotonic() + secs
    while n % 64 or time.monotonic() < end:
        s.send(b"x")
        if not s.recv(1):
            raise RuntimeError("echo server closed")
        n += 1
    s.close()
    return n / secs


def _udp_loop(sock: socket.socket, make: object, secs: float) -> float:
    """Send, wait for the answer (resend after 0.2 s of silence); per second."""
    n = 0
    sock.settimeout(0.2)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        msg = make(n)  # type: ignore[operator]
        sock.send(msg)
        while True:
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                if time.monotonic() >= end:
                    return n / secs  # a stack that answers nothing gives 0, not a hang
                sock.send(msg)
                continue
            if reply[:2] == msg[:2]:
                break
        n += 1
    return n / secs


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp_rr(gw: str, secs: float) -> float:
    s = socket.socket(_family(gw), socket.SOCK_DGRAM)
    s.connect((gw, UDP_PORT))
    return _udp_loop(s, lambda n: struct.pack("!H", n & 0xFFFF) + b"x", secs)


def dns_query(qid: int) -> bytes:
    """An A query for DNS_NAME with recursion desired, as a stub sends it."""
    qname = b"".join(bytes((len(p),)) + p.encode() for p in DNS_NAME.split(".")) + b"\0"
    return struct.pack("!6H", qid & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\0\1\0\1"


def dns_rate(server: str, secs: float) -> float:
    """Sequential A queries, one at a time; queries per second."""
    s = socket.socket(_family(server), socket.SOCK_DGRAM)
    s.connect((server, 53))
    return _udp_loop(s, dns_query, secs)


# test: (column, operation, client); each also reports the stack's CPU µs per operation
RATES: dict[str, tuple[str, str, Callable[[str, float], float]]] = {
    "conn": ("conn/s", "conn", conn_rate),
    "tcp_rr": ("tcp rr/s", "tcp rr", tcp_rr),
    "udp_rr": ("udp rr/s", "udp rr", udp_rr),
    "dns": ("dns q/s", "dns q", dns_rate),
}


def in_parallel(fn: Callable[[str, float], float], addr: str, secs: float, n: int) -> float:
    """The sum of `n` forked clients' rates, each running `fn` at the same time."""
    if n == 1:
        return fn(addr, secs)
    children: list[tuple[int, int]] = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one client, its rate (or its error) as text down the pipe
            os.close(r)
            try:
                os.write(w, repr(fn(addr, secs)).encode())
            except BaseException as exc:  # noqa: BLE001 - reported by the parent
                os.write(w, f"error {exc!r}".encode())
            finally:
                os._exit(0)
        os.close(w)
        children.append((pid, r))
    total = 0.0
    errors: list[str] = []
    for pid, r in children:
        with os.fdopen(r, "rb") as f:
            text = f.read().decode()
        os.waitpid(pid, 0)
        if text.startswith("error") or not text:
            errors.append(text)
        else:
            total += float(text)
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} parallel clients failed, first: {errors[0]}")
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gw")
    ap.add_argument("dns")
    ap.add_argument("stack", help="the stack's pid, or pids (comma-separated); 0: none")
    ap.add_argument("secs", type=float)
    ap.add_argument("tests", nargs="?", default=",".join(ALL))
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--server", default="", help="the servers' pids: their CPU per operation too")
    args = ap.parse_args()
    gw, dns, stack, secs, n = args.gw, args.dns, args.stack, args.secs, args.parallel
    out: dict[str, float] = {}
    for test in args.tests.split(","):
        try:
            if test in ("up", "down", "udp_up", "udp_down"):
                r = iperf(gw, secs, test.endswith("down"), stack, test.startswith("udp"), n)
                out[test] = r["gbit"]
                out[f"cpu/GB {test}"] = r["cpu_per_gb"]
            elif test in RATES:
                name, op, fn = RATES[test]
                before = cpu_seconds(stack) if stack != "0" else 0.0
                server = cpu_seconds(args.server) if args.server else 0.0
                clients = own_cpu_seconds()
                rate = in_parallel(fn, dns if test == "dns" else gw, secs, n)
                out[name] = rate
                if stack != "0" and rate:  # less noisy than the rate on a busy machine
                    cpu = cpu_seconds(stack) - before
                    out[f"cpu us/{op}"] = 1e6 * cpu / (rate * secs)
                if args.server and rate:  # where the rest of the machine's time goes
                    out[f"client cpu us/{op}"] = 1e6 * (own_cpu_seconds() - clients) / (rate * secs)
                    cpu = cpu_seconds(args.server) - server
                    out[f"server cpu us/{op}"] = 1e6 * cpu / (rate * secs)
        except Exception as exc:  # one failed test must not lose the others
            print(f"{test} failed: {exc!r}", file=sys.stderr)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
