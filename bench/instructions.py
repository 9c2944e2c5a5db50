"""User-space instructions per operation of each stack process, counted, not timed.

    python3 bench/instructions.py [--seconds 4] [--mtu 1500] [--reps 2]
        [--tools pyvpnkit,pyvpnkit-pure,slirp4netns] [--tests tcp_rr,conn,udp_rr,dns,up,down]
        [--pure-python PY] [--keep DIR]

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
CLONE_FILES)); it is skipped. --keep DIR keeps the callgrind files, named
TOOL.TEST.Ns.cg.PID, for `callgrind_annotate` (where the instructions go: the
difference between the short and the long run's files is the per-operation part).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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


def measure(
    env: NetEnv, tool: str, test: str, mtu: int, seconds: int, keep: str | None = None
) -> float | None:
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
            if keep:
                for f in out_dir.glob("cg.*"):
                    shutil.copy(f, Path(keep) / f"{tool}.{test}.{secs}s.{f.name}")
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--tools", default="pyvpnkit,slirp4netns")
    ap.add_argument("--tests", default="tcp_rr,conn,udp_rr,dns")
    ap.add_argument("--keep", metavar="DIR",
                    help="keep the callgrind files there (callgrind_annotate: where they go)")
    ap.add_argument("--pure-python", default=compare.PURE_PYTHON,
                    help="python of a venv with the pure build, for the pyvpnkit-pure tool")
    args = ap.parse_args()
    compare.PURE_PYTHON = args.pure_python
    tools = [t for t in args.tools.split(",") if compare.available(t)]
    for tool in [t for t in tools if t.startswith("pasta")]:
        print(f"{tool}: not measured, valgrind refuses pasta's clone() flags", flush=True)
        tools.remove(tool)
    tests = args.tests.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    env = NetEnv()
    servers = None
    try:
        servers = Servers(env)
        for rep in range(args.reps):
            for test in tests:
                for tool in tools:
                    per_op = measure(env, tool, test, args.mtu, args.seconds, args.keep)
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
    peers = [t for t in tools if t in compare.PEERS]
    print("\nratios ours / peer, means of the runs (below 1: fewer instructions than the peer):")
    for ours in (t for t in tools if t not in peers):
        for peer in peers:
            shared = [k for k in tests if results.get((ours, k)) and results.get((peer, k))]
            print(f"  {ours} vs {peer:12}: " + "  ".join(
                f"{k} {mean(results[ours, k]) / mean(results[peer, k]):.2f}x" for k in shared))


if __name__ == "__main__":
    main()
