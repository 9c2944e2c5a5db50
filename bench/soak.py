"""Soak run: N minutes of mixed traffic through pyvpnkit, sampling its RSS, descriptors, flows.

A VM namespace behind `pyvpnkit run --netns` (inside a test-made host namespace
whose only way out is a veth to a test-made world) runs, all at once:
many short TCP connections to the host alias, long streams both ways to the
world, UDP echoes, DNS queries to the gateway (answered by a local test
server) and pings. Every --interval seconds the stack's RSS, open descriptors
and flow counts (from the API's /stats) are printed; at the end, the trend:
RSS drift after warm-up, whether the TCP deadline heap stayed bounded by the
flow count, and whether descriptors came back to the baseline
(descriptors other than the host sockets of flows still open, such as UDP
flows waiting for their idle timeout, plus the few opened once on first use).

    python bench/soak.py [--minutes 30] [--interval 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if importlib.util.find_spec("pyvpnkit") is None:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

from pyvpnkit.api.client import ApiClient  # noqa: E402
from tests.integration.netenv import WORLD_IP, NetEnv, wait_for  # noqa: E402

# Runs in the VM namespace for SECONDS; prints one JSON line of counts at the end.
TRAFFIC = r"""
import json, socket, subprocess, sys, threading, time
import dns.message, dns.query
alias_port, world_tcp, world_udp, secs = map(int, sys.argv[1:5])
end = time.monotonic() + secs
counts = {"short_tcp": 0, "stream_mb": 0, "udp": 0, "dns": 0, "errors": 0}

def loop(fn, pause):
    while time.monotonic() < end:
        try:
            fn()
        except Exception:
            counts["errors"] += 1
            time.sleep(0.5)
        time.sleep(pause)

def short_tcp():
    s = socket.create_connection(("192.168.65.2", alias_port), timeout=10)
    s.sendall(b"x"); assert s.recv(1) == b"x"; s.close()
    counts["short_tcp"] += 1

def stream(cmd):
    def run():
        n = 16 << 20
        s = socket.create_connection(("203.0.113.2", world_tcp), timeout=30)
        if cmd == "GET":
            s.sendall(b"GET %d\n" % n)
            got = 0
            while chunk := s.recv(1 << 18):
                got += len(chunk)
            assert got == n
        else:
            s.sendall(b"PUT %d\n" % n)
            block = b"p" * (1 << 20)
            for _ in range(16):
                s.sendall(block)
            assert len(s.recv(100)) >= 64
        s.close()
        counts["stream_mb"] += 16
    return run

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(2)
def udp_echo():
    udp.sendto(b"u" * 100, ("203.0.113.2", world_udp))
    udp.recvfrom(200)
    counts["udp"] += 1

def dns_query():
    q = dns.message.make_query("www.example.test.", "A")
    dns.query.udp(q, "192.168.65.1", timeout=3)
    counts["dns"] += 1

jobs = [(short_tcp, 0.02), (stream("GET"), 0.5), (stream("PUT"), 0.5), (udp_echo, 0.01),
        (dns_query, 0.05)]
threads = [threading.Thread(target=loop, args=job) for job in jobs]
pings = [subprocess.Popen(["ping", "-q", "-i", "0.2", "-w", str(secs), ip],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
         for ip in ("192.168.65.1", "203.0.113.2")]
for t in threads:
    t.start()
for t in threads:
    t.join()
counts["ping_ok"] = sum(p.wait() == 0 for p in pings)
print(json.dumps(counts), flush=True)
"""


# Sockets opened once and kept: the DNS upstream socket, the API's connection.
LAZY_FDS = 3


def sample(pid: int, api: ApiClient) -> dict[str, int]:
    """RSS, descriptors, flows; ``other_fds``: descriptors that are not a flow's host socket."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    stats = api.stats()
    flows = stats["flows"]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    flow_fds = stats["limits"]["descriptors"]["in_use"] + flows["icmp"]
    return {"rss_kb": rss, "fds": fds, "other_fds": fds - flow_fds,
            "tcp": flows["tcp"], "udp": flows["udp"], "icmp": flows["icmp"],
            "tcp_timers": stats["tables"]["tcp_timers"]}


def tables_bounded(s: dict[str, int]) -> bool:
    """The TCP deadline heap follows the flow count (its stale entries once grew without end).

    The stack keeps it under 2 * flows + 64 after each batch; the slack covers
    flows that end between a batch and the sample.
    """
    return s["tcp_timers"] <= 3 * s["tcp"] + 128


def soak(seconds: float, interval: float, report: Callable[[str], None] = print) -> dict:
    env = NetEnv()
    vm = f"pvk-soak-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", vm], check=True)
    tmp = tempfile.mkdtemp(prefix="pvk-soak-")
    try:
        _p, alias_port = env.start_helper("host", "conn_flood.py", "serve", "127.0.0.1", "0")
        _p, dns_port = env.start_helper("host", "dns_server.py")
        _p, tcp_port = env.start_helper("world", "tcp_server.py", WORLD_IP, "0")
        _p, udp_port = env.start_helper("world", "udp_echo.py", WORLD_IP, "0")
        api_url = f"unix://{tmp}/api.sock"
        stack = env.start_pyvpnkit(
            "run", "--hosts", "/dev/null", "--dns-server", f"127.0.0.1#{dns_port}",
            "--netns", vm, "--api", api_url, stderr=subprocess.DEVNULL,
        )
        if not wait_for(lambda: os.path.exists(f"{tmp}/api.sock"), 15):
            raise RuntimeError("pyvpnkit did not start")
        api = ApiClient(api_url)
        time.sleep(0.5)
        baseline = sample(stack.pid, api)
        report(f"baseline: {baseline}")
        traffic = subprocess.Popen(
            ["ip", "netns", "exec", vm, sys.executable, "-c", TRAFFIC, alias_port, tcp_port,
             udp_port, str(int(seconds))], stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        samples = []
        t0 = time.monotonic()
        while traffic.poll() is None:
            time.sleep(min(interval, max(0.0, seconds + 30 - (time.monotonic() - t0))))
            if traffic.poll() is not None:
                break
            s = sample(stack.pid, api)
            s["t"] = round(time.monotonic() - t0)
            samples.append(s)
            report(f"t={s['t']:>5}s rss={s['rss_kb'] / 1024:6.1f} MB fds={s['fds']:>5} "
                   f"(flows {s['fds'] - s['other_fds']:>4}) "
                   f"tcp={s['tcp']:>4} udp={s['udp']:>4} icmp={s['icmp']:>3} "
                   f"tcp_timers={s['tcp_timers']:>5}")
            if time.monotonic() - t0 > seconds + 60:
                traffic.kill()
        counts = json.loads((traffic.stdout.read() if traffic.stdout else "").strip() or "{}")
        end = sample(stack.pid, api)
        for _ in range(50):  # flows close once both FINs are acknowledged
            if end["other_fds"] <= baseline["other_fds"] + LAZY_FDS:
                break
            time.sleep(0.2)
            end = sample(stack.pid, api)
        warm = [s for s in samples if s["t"] >= seconds / 5] or samples
        drift_mb = (warm[-1]["rss_kb"] - warm[0]["rss_kb"]) / 1024 if warm else 0.0
        result = {
            "seconds": seconds, "traffic": counts, "baseline": baseline,
            "rss_drift_after_warmup_mb": round(drift_mb, 2),
            "rss_peak_mb": round(max((s["rss_kb"] for s in samples), default=0) / 1024, 1),
            "fds_baseline": baseline["fds"], "fds_end": end["fds"],
            "flow_sockets_end": end["fds"] - end["other_fds"],
            "fds_back": end["other_fds"] <= baseline["other_fds"] + LAZY_FDS,
            "tcp_timers_max": max((s["tcp_timers"] for s in samples), default=0),
            "tables_bounded": all(map(tables_bounded, samples)),
        }
        report(json.dumps(result))
        return result
    finally:
        env.close()
        subprocess.run(["ip", "netns", "del", vm], check=False)
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=10.0)
    args = p.parse_args()
    res = soak(args.minutes * 60, args.interval, report=lambda line: print(line, flush=True))
    ok = res["fds_back"] and res["tables_bounded"] and not res["traffic"].get("errors")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
