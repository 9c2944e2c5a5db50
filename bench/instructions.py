"""User-space instructions per operation of each stack process, counted, not timed.

    python3 bench/instructions.py [--seconds 4] [--mtu 1500] [--reps 2]
        [--tools pyvpnkit,pyvpnkit-pure,slirp4netns,pasta-user,slirp4netns/step]
        [--tests tcp_rr,conn,udp_rr,dns,up,down] [--window 30] [--pure-python PY]

compare.py's set-up (its servers, namespaces and command lines), with the stack
process run under `valgrind --tool=callgrind` (pyvpnkit: the interpreter running
`pyvpnkit exec`; slirp4netns). Each test runs in its own stack instance twice, for
--seconds and for three times as long; the instructions difference over the
operations difference is the stack's user-space instructions per operation,
start-up and shut-down cancelled out. The kernel's work for the stack (system
calls, the TAP, the sockets, wake-ups) is not counted. Callgrind writes one file
per process (`%p`: slirp4netns forks); the one with the most instructions is the
process that did the work. up/down: per MB moved (iperf3's receiver). Under
valgrind the stacks run 30-50x slower (slirp4netns much less: it spends few
instructions of its own): choose --seconds so each run has at least ~1,000
operations (printed). Work done per second rather than per operation (timers,
idle wake-ups) is spread over the operations of the run, so a run slowed by
other jobs on the machine reads a few percent higher.

pasta cannot run under valgrind (3.19 refuses its clone(CLONE_VM | CLONE_VFORK |
CLONE_FILES)), so pasta-user, and any TOOL/step, is counted by bench/stepcount.c
instead: the running stack single-stepped with ptrace for --window seconds in
the middle of a run, over the operations the host namespace's own counters saw
meanwhile (conn, tcp_rr, udp_rr, dns only). Slowed some 1000-fold the stacks do
extra work per operation (retransmissions, timers): slirp4netns reads 1.2x
callgrind's figure for UDP and DNS and 1.5x for TCP request/response this way,
and pasta's TCP nearly stalls, so treat those figures as rough upper bounds.
Single-stepped pasta runs with its port scans off (-t/-u/-T/-U none).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402
from compare import NetEnv, Servers, client, run_tool  # noqa: E402

# slirp4netns's TAP is configured a while after it starts under valgrind: wait for the route.
WAIT_ROUTE = "for i in $(seq 300); do ip route | grep -q default && break; sleep 0.1; done; "


def instructions(out_dir: Path) -> tuple[int, list[int]]:
    """The most instructions any one process's callgrind file counts, and all of them."""
    totals = []
    for f in out_dir.glob("cg.*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                totals.append(int(line.split()[1]))
                break
    return max(totals, default=0), sorted(totals, reverse=True)


def operations(figures: dict[str, float], test: str, seconds: int) -> float:
    """Operations the client completed (MB moved for up/down)."""
    if test in ("up", "down", "udp_up", "udp_down"):
        return figures[test] * 1e9 / 8 / 1e6 * seconds
    rate = next(v for k, v in figures.items() if not k.startswith("cpu"))
    return rate * seconds


def measure(env: NetEnv, tool: str, test: str, mtu: int, seconds: int) -> float | None:
    runs = []
    for secs in (seconds, 3 * seconds):
        out_dir = Path(tempfile.mkdtemp(prefix="pvk-cg-"))
        out_dir.chmod(0o777)  # pasta-user runs as the temporary user
        try:
            compare.STACK_PREFIX = (f"valgrind -q --tool=callgrind "
                                    f"--callgrind-out-file={out_dir}/cg.%p ")
            run = WAIT_ROUTE + client("$GW", "$DNS", "0", secs, test)
            figures = run_tool(env, tool, mtu, run, timeout=30 * secs + 120)
            total, each = instructions(out_dir)
        finally:
            compare.STACK_PREFIX = ""
            shutil.rmtree(out_dir, ignore_errors=True)
        if not figures or not total:
            print(f"  {tool} {test} {secs} s: no figures ({figures}) or no callgrind "
                  f"output ({each})", flush=True)
            return None
        ops = operations(figures, test, secs)
        unit = "MB" if test.endswith(("up", "down")) else "ops"
        print(f"  {tool} {test} {secs} s: {ops:,.0f} {unit}, "
              f"{total:,} instructions (processes: {', '.join(f'{n:,}' for n in each)})",
              flush=True)
        runs.append((total, ops))
    (i1, n1), (i2, n2) = runs
    return (i2 - i1) / (n2 - n1) if n2 > n1 else None


def stack_ops(env: NetEnv, test: str) -> float:
    """Operations through the stack so far, counted in the host namespace: accepted
    connections (conn), bytes the TCP echo server read (tcp_rr, 1 per transaction),
    datagrams received over 2 (udp_rr, dns: the server's and the stack's socket's)."""
    if test == "tcp_rr":
        out = env.run_in("host", "ss", "-tinH", "state", "established", "sport", "=", ":5203")
        return sum(int(w.split(":")[1]) for w in out.stdout.split()
                   if w.startswith("bytes_received:"))
    lines = [ln.split() for ln in env.run_in("host", "cat", "/proc/net/snmp").stdout.splitlines()]
    proto, field = ("Tcp:", "PassiveOpens") if test == "conn" else ("Udp:", "InDatagrams")
    names, values = (ln for ln in lines if ln[0] == proto)
    value = int(values[names.index(field)])
    return value if test == "conn" else value / 2


def measure_stepped(env: NetEnv, tool: str, test: str, mtu: int, window: int) -> float | None:
    """Instructions per operation by bench/stepcount.c: the stack's process single-stepped
    for `window` seconds in the middle of a run, over the operations the host namespace's
    counters saw meanwhile (start-up is never counted, so one window is enough)."""
    out_dir = Path(tempfile.mkdtemp(prefix="pvk-cg-"))
    out_dir.chmod(0o777)  # pasta-user runs as the temporary user
    try:
        stepcount = out_dir / "stepcount"
        subprocess.run(["cc", "-O2", "-o", str(stepcount), str(Path(__file__).parent /
                        "stepcount.c")], check=True)
        pidfile = out_dir / "pid"
        compare.STACK_PREFIX = f"sh -c 'echo $$ > {pidfile}; exec \"$0\" \"$@\"' "
        run = WAIT_ROUTE + client("$GW", "$DNS", "0", window + 10, test)
        result: dict[str, float] = {}
        thread = threading.Thread(target=lambda: result.update(
            run_tool(env, tool, mtu, run, timeout=window + 120)))
        thread.start()
        for _ in range(300):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        time.sleep(4)  # the namespace configured, the client at work
        # The counters are read while the stack is stopped, before and after the window.
        step = subprocess.Popen([str(stepcount), pidfile.read_text().strip(), str(window)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert step.stdin is not None and step.stdout is not None
        step.stdout.readline()
        before = stack_ops(env, test)
        step.stdin.write("\n")
        step.stdin.flush()
        total = int(step.stdout.readline().split()[1])
        ops = stack_ops(env, test) - before
        step.stdin.write("\n")
        step.stdin.close()
        step.wait()
        thread.join()
    finally:
        compare.STACK_PREFIX = ""
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"  {tool} {test}: {ops:,.0f} ops in {window} s single-stepped, {total:,} "
          f"instructions (client: {result})", flush=True)
    return total / ops if ops and total else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--tools", default="pyvpnkit,slirp4netns,pasta-user")
    ap.add_argument("--tests", default="tcp_rr,conn,udp_rr,dns")
    ap.add_argument("--window", type=int, default=30,
                    help="seconds single-stepped, for TOOL/step and pasta-user")
    ap.add_argument("--pure-python", default=compare.PURE_PYTHON,
                    help="python of a venv with the pure build, for the pyvpnkit-pure tool")
    args = ap.parse_args()
    compare.PURE_PYTHON = args.pure_python
    # Single-stepped pasta without its once-a-second port scans (-t/-u/-T/-U auto, the
    # default): stretched 1,000-fold in time, they would be counted as its work.
    compare.PASTA = "pasta -t none -u none -T none -U none"
    tools = [t for t in args.tools.split(",") if compare.available(t.split("/")[0])]
    tests = args.tests.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    env = NetEnv()
    servers = None
    try:
        servers = Servers(env)
        for rep in range(args.reps):
            for test in tests:
                for tool in tools:
                    name, step = tool.split("/")[0], "/step" in tool or tool == "pasta-user"
                    per_op = (measure_stepped(env, name, test, args.mtu, args.window) if step
                              else measure(env, name, test, args.mtu, args.seconds))
                    if per_op is not None:
                        results.setdefault((tool, test), []).append(per_op)
                        print(f"round {rep + 1} {tool} {test}: {per_op:,.0f} per op", flush=True)
    finally:
        env.close()
        if servers is not None:
            servers.close()
        if compare._user is not None:
            compare._user.remove()
    print(f"\nuser-space instructions per operation (per MB for up/down), MTU {args.mtu}, "
          f"each run of {args.reps}:")
    print(f"{'test':8} " + " ".join(f"{t:>24}" for t in tools))
    for test in tests:
        cells = [" / ".join(f"{v:,.0f}" for v in results.get((t, test), [])) or "-"
                 for t in tools]
        print(f"{test:8} " + " ".join(f"{c:>24}" for c in cells))
    peers = [t for t in tools if t.split("/")[0] in compare.PEERS]
    print("\nratios ours / peer, means of the runs (below 1: fewer instructions than the peer):")
    for ours in (t for t in tools if t not in peers):
        for peer in peers:
            shared = [k for k in tests if results.get((ours, k)) and results.get((peer, k))]
            print(f"  {ours} vs {peer:12}: " + "  ".join(
                f"{k} {mean(results[ours, k]) / mean(results[peer, k]):.2f}x" for k in shared))


if __name__ == "__main__":
    main()
