"""Profile pyvpnkit's stack process under one bench/clients.py load with py-spy.

    python3 bench/profile_stack.py TEST [--seconds 8] [--mtu 65520] [--top 25] [--native]
    python3 bench/profile_stack.py TEST --strace   # system calls per operation instead
    python3 bench/profile_stack.py TEST --perf     # interpreter vs kernel, by symbol
    python3 bench/profile_stack.py TEST --cpu      # user and system CPU per operation

TEST is one of clients.py's tests (conn, tcp_rr, udp_rr, dns, up, down). The
stack runs in a test-made namespace like in compare.py; with --published the
servers run behind it and the client on the host through published ports, as
compare.py's pub_* rows (TEST conn, udp_rr, up or down); py-spy (pip install
py-spy) samples it while the client runs. Prints the functions with the most
samples on top of the stack (self) and anywhere on it (inclusive). With
--strace, `strace -c` counts the stack's system calls instead (it slows the
stack down, but the calls per operation stay what they are). --cpu reads the
stack's user and system CPU time per operation apart: the user share (our
Python) moves less with the machine's load than the kernel's wake-ups do.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import published  # noqa: E402
from compare import CLIENTS, ECHO_SERVER, Servers  # noqa: E402

from tests.integration.netenv import NetEnv  # noqa: E402


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw format: one collapsed stack per line, frames joined by ';', then a count."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", anywhere)):
        print(f"\ntop {top} by {title} samples:")
        for frame, n in counter.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {frame}")


def cpu_per_op(stack: subprocess.Popen[bytes], seconds: int) -> None:
    """The stack's user and system CPU per operation over `seconds` of the client's run."""
    def times() -> tuple[int, int]:
        fields = Path(f"/proc/{stack.pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]), int(fields[12])  # utime, stime in clock ticks

    start = times()
    time.sleep(seconds)
    end = times()
    assert stack.stdout is not None
    (name, rate), = json.loads(stack.stdout.read().decode().strip().splitlines()[-1]).items()
    us = 1e6 / os.sysconf("SC_CLK_TCK") / (rate * seconds)
    print(f"{name} {rate:,.0f}: user {(end[0] - start[0]) * us:.1f} µs, "
          f"system {(end[1] - start[1]) * us:.1f} µs per operation")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("test")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--mtu", type=int, default=65520)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    ap.add_argument("--strace", action="store_true", help="count system calls (strace -c)")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="run the stack under cProfile, stats to FILE (exact call counts)")
    ap.add_argument("--stack-args", default="",
                    help="more pyvpnkit exec options, e.g. '--dns-cache 1000'")
    ap.add_argument("--perf", action="store_true",
                    help="perf record: the interpreter's and the kernel's share by symbol")
    ap.add_argument("--published", action="store_true",
                    help="servers behind the stack, the client on the host via published ports")
    ap.add_argument("--cpu", action="store_true", help="user and system CPU µs per operation")
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    env = NetEnv()
    servers = None
    stop = Path(tempfile.gettempdir()) / f"pvk-prof-{os.getpid()}.stop"
    try:
        client = f"sleep 1; {sys.executable} {CLIENTS} 192.168.65.2 192.168.65.1 0 "
        if args.published:  # the client on the host, started by a shell beside the stack
            inside = ["--", "sh", "-c", published.servers(ECHO_SERVER, str(stop))]
            publish = published.publish_args()
        else:
            servers = Servers(env)
            inside = ["--", "sh", "-c", client + f"{args.seconds + 1} {args.test}"]
            publish = []
        stack = env.start(
            "host", sys.executable,
            *(["-m", "cProfile", "-o", args.cprofile] if args.cprofile else []),
            "-m", "pyvpnkit", "exec", "--mtu", str(args.mtu),
            "--hosts", "/dev/null", "--dns-server", "127.0.0.1#53", *args.stack_args.split(),
            *publish, *inside,
            stdout=subprocess.PIPE,
        )
        if args.published:
            env.run_in("host", "sh", "-c", published.WAIT)
            host_client = env.start(
                "host", "sh", "-c", f"sleep 1; export BENCH_PORT_OFFSET={published.OFFSET}; "
                + client.replace("192.168.65.2", "127.0.0.1") +
                f"{args.seconds + 1} {args.test}; touch {stop}", stdout=subprocess.PIPE)
            assert host_client.stdout is not None
            stack.stdout = host_client.stdout  # what each mode prints is the client's figures
        time.sleep(1.5)  # the stack is up and the client about to start
        if args.strace:
            trace = subprocess.run(
                ["timeout", "-s", "INT", str(args.seconds),
                 "strace", "-f", "-c", "-p", str(stack.pid)],
                capture_output=True, text=True)
            assert stack.stdout is not None
            print(stack.stdout.read().decode().strip(), "(slowed down by strace)")
            print(trace.stderr)
            return
        if args.cpu:
            cpu_per_op(stack, args.seconds)
            return
        if args.cprofile:
            assert stack.stdout is not None
            print(stack.stdout.read().decode().strip(), "(under cProfile)")
            stack.wait()
            pstats.Stats(args.cprofile).sort_stats("tottime").print_stats(args.top)
            return
        if args.perf:
            with tempfile.TemporaryDirectory() as tmp:
                data = str(Path(tmp) / "perf.data")
                subprocess.run(["perf", "record", "-q", "-o", data, "-p", str(stack.pid),
                                "--", "sleep", str(args.seconds)], check=True,
                               capture_output=True)
                assert stack.stdout is not None
                print(stack.stdout.read().decode().strip(), "(under perf)")
                report = subprocess.run(
                    ["perf", "report", "-i", data, "--stdio", "--percent-limit", "0.3",
                     "--sort", os.environ.get("PERF_SORT", "dso,sym")],
                    capture_output=True, text=True)
                print("\n".join(line for line in report.stdout.splitlines()
                                if line and not line.startswith("#")))
            return
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "profile.txt"
            cmd = [pyspy, "record", "--format", "raw", "-o", str(raw), "-r", "500",
                   "-d", str(args.seconds), "-p", str(stack.pid)]
            subprocess.run(cmd + (["--native"] if args.native else []),
                           check=True, capture_output=True)
            assert stack.stdout is not None
            print(stack.stdout.read().decode().strip())
            summarize(raw, args.top)
    finally:
        env.close()
        stop.unlink(missing_ok=True)
        if servers is not None:
            servers.close()


if __name__ == "__main__":
    main()
