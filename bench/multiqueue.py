"""A multi-queue TAP served by K stack processes: does a second core pay? (issue 23, point 3)

    python3 bench/multiqueue.py [--queues 1,2] [--parallel 4,16] [--tests conn,tcp_rr,up,down]
        [--seconds 2] [--reps 2] [--mtu 1500]

A measurement, not a product. In compare.py's test-made host namespace (its
servers on 127.0.0.1, nothing beyond the namespace's veth) it makes a TAP
with `ip tuntap add ... multi_queue vnet_hdr`, gives it the VM's address
192.168.65.3/24, and starts K `pyvpnkit run --tap` processes: each attaches
one queue (IFF_MULTI_QUEUE) and is a whole stack of its own, with the same
config and so the same gateway MAC. bench/clients.py then runs in the same
namespace, its traffic to 192.168.65.2 leaving through the TAP, and the
stack's CPU is the sum over the K processes.

Why flows stay on one worker (drivers/net/tun.c): a frame the kernel sends
into the TAP goes to the queue `tun_automq_select_queue` picks: the queue
its flow was last written from (`tun_flow_update`, on every write once the
TAP has more than one queue), else the symmetric flow hash scaled to the
queue count. A flow's first frame (the SYN) picks a queue by hash; the
worker on it answers, which records that queue for the flow, and the hash is
symmetric, so both directions agree. Each run prints every worker's share of
the stack's CPU (both must work) and any client failure (a connection reset
or closed before its echo makes clients.py report the test as failed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clients import cpu_seconds  # noqa: E402
from compare import CLIENTS, ECHO_SERVER, Servers, fmt  # noqa: E402

from tests.integration.netenv import NetEnv, wait_for  # noqa: E402

TAP = "pvkmq0"


def machine_seconds() -> tuple[float, float, float]:
    """(busy CPU seconds of all CPUs, their softirq part, wall time) from /proc/stat: the
    whole machine, other jobs too. softirq is nobody's process time (the TAP's and
    loopback's receive work can run there). Not idle ticks: they can go backwards in a VM."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, softirq / tick, time.monotonic()


def echo_server(env: NetEnv) -> str:
    """The pid of compare.py's echo server (conn and tcp_rr's server)."""
    return next(str(p.pid) for p in env.procs if ECHO_SERVER in p.args)  # type: ignore[operator]


def one_run(env: NetEnv, queues: int, parallel: int, args: argparse.Namespace) -> dict[str, float]:
    """K workers on a fresh multi-queue TAP (an empty flow table), the clients, then teardown."""
    tag = uuid.uuid4().hex[:8]
    host = ("host",)
    env.run_in(*host, "ip", "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue", "vnet_hdr")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        env.run_in(*host, "sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
        env.run_in(*host, "ip", "addr", "add", "192.168.65.3/24", "dev", TAP)
        env.run_in(*host, "ip", "link", "set", TAP, "mtu", str(args.mtu), "up")
        pidfiles = [Path(f"/tmp/pvk-mq-{tag}-{i}.pid") for i in range(queues)]
        for pidfile in pidfiles:
            workers.append(env.start_pyvpnkit(
                "run", "--tap", TAP, "--mtu", str(args.mtu), "--no-ipv6", "--hosts", "/dev/null",
                "--dns-server", "127.0.0.1#53", "--pid-file", str(pidfile)))
        if not wait_for(lambda: all(p.exists() for p in pidfiles), timeout=30):
            raise RuntimeError("the workers did not start")
        pids = [str(w.pid) for w in workers]
        before = [cpu_seconds(pid) for pid in pids]
        machine = machine_seconds()
        out = env.run_in(*host, sys.executable, str(CLIENTS), "192.168.65.2", "192.168.65.1",
                         ",".join(pids), str(args.seconds), args.tests,
                         "--parallel", str(parallel), "--server", echo_server(env),
                         timeout=len(args.tests) * 60 + 60)
        used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        busy, softirq, wall = (b - a for a, b in zip(machine, machine_seconds(), strict=True))
        if out.stderr.strip():
            print(f"    clients: {out.stderr.strip()[-300:]}", file=sys.stderr)
        result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
        total = sum(used) or 1.0
        print(f"    K={queues} N={parallel}: worker CPU shares "
              + " ".join(f"{u / total:.0%}" for u in used)
              + f", stack cores busy {sum(used) / (args.seconds * len(args.tests.split(','))):.2f}"
              + f", machine busy {busy / wall:.2f} of {os.cpu_count()} cores"
              + f" (softirq {softirq / wall:.2f})"
              + "  " + "  ".join(f"{k} {fmt(v)}" for k, v in result.items()), flush=True)
        return result
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(10)
        env.run_in(*host, "ip", "link", "del", TAP, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", default="1,2")
    ap.add_argument("--parallel", default="4,16")
    ap.add_argument("--tests", default="conn,tcp_rr,up,down")
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--mtu", type=int, default=1500)
    args = ap.parse_args()
    queue_counts = [int(q) for q in args.queues.split(",")]
    parallels = [int(n) for n in args.parallel.split(",")]
    env = NetEnv()
    servers = None
    runs: dict[tuple[int, int], list[dict[str, float]]] = {}
    try:
        servers = Servers(env)
        for rep in range(args.reps):
            for parallel in parallels:
                shift = rep % len(queue_counts)  # alternate which K goes first
                for queues in queue_counts[shift:] + queue_counts[:shift]:
                    runs.setdefault((queues, parallel), []).append(
                        one_run(env, queues, parallel, args))
                    time.sleep(0.5)
    finally:
        env.close()
        if servers is not None:
            servers.close()
    medians = {key: {k: statistics.median(r[k] for r in rs if k in r)
                     for k in dict.fromkeys(k for r in rs for k in r)}
               for key, rs in runs.items()}
    cols = list(dict.fromkeys(k for m in medians.values() for k in m))
    print(f"\nmedians of {args.reps} rounds, {args.seconds} s each, MTU {args.mtu} "
          "(Gbit/s; per second; CPU of all workers per GB or per operation):")
    print(f"{'K':>2} {'N':>3} " + " ".join(f"{c:>13}" for c in cols))
    for (queues, parallel), m in sorted(medians.items()):
        print(f"{queues:2} {parallel:3} "
              + " ".join(f"{fmt(m.get(c, float('nan'))):>13}" for c in cols))
    base = min(queue_counts)
    for queues in queue_counts:
        for parallel in parallels:
            if queues == base:
                continue
            ours, ref = medians[(queues, parallel)], medians[(base, parallel)]
            shared = [k for k in cols if ours.get(k) and ref.get(k)]
            print(f"K={queues} vs K={base}, N={parallel}: "
                  + "  ".join(f"{k} {ours[k] / ref[k]:.2f}x" for k in shared))


if __name__ == "__main__":
    main()
