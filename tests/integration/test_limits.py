"""Issue 14: descriptor limits, SYN floods into a black hole, a silent DNS upstream."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyvpnkit.api.client import ApiClient
from tests.integration.netenv import HELPERS, WORLD_IP, NetEnv, exec_args, wait_for

HOST_ALIAS = "192.168.65.2"
FLOOD = str(HELPERS / "conn_flood.py")


def echo_server(netenv: NetEnv, where: str = "host", ip: str = "127.0.0.1") -> int:
    _proc, port = netenv.start_helper(where, "conn_flood.py", "serve", ip, "0")
    return int(port)


def run_flood(
    netenv: NetEnv, nofile: str, *client: str, extra: tuple[str, ...] = (), timeout: float = 150
) -> tuple[dict[str, object], str]:
    """The stack started under `prlimit --nofile=SOFT:HARD`, running a conn_flood client."""
    cmd = ["prlimit", f"--nofile={nofile}", *netenv.pyvpnkit(
        "exec", *exec_args(), "--log-level", "info", *extra, "--", sys.executable, FLOOD, *client
    )]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_10000_concurrent_connections_from_a_soft_limit_of_1024(netenv: NetEnv) -> None:
    port = echo_server(netenv)
    res, log = run_flood(netenv, "1024:20000", "hold", HOST_ALIAS, str(port), "10000", "0")
    assert res["ok"] == 10000, res
    assert "descriptor limit: soft 20000 (was 1024), hard 20000" in log
    assert "Traceback" not in log
    # Every descriptor comes back once the connections are closed.
    assert res["fds_after_close"] <= res["idle_fds"] + 8, res  # type: ignore[operator]
    per_flow = (res["peak_rss_kb"] - res["idle_rss_kb"]) * 1024 / 10000  # type: ignore[operator]
    print(f"\n10,000 flows: idle RSS {res['idle_rss_kb']} KB, {per_flow:.0f} B/flow, "
          f"{res['seconds']} s")


@contextmanager
def stack_for_vm(
    netenv: NetEnv, log_path: Path, *args: str, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`pyvpnkit run --netns VM ARGS` (logging to log_path) for a fresh VM namespace."""
    vm = f"pvk-vm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", vm], check=True)
    try:
        with open(log_path, "w") as log_file:
            stack = subprocess.Popen(
                [*prefix, *netenv.pyvpnkit("run", *exec_args(), "--log-level", "info",
                                           "--netns", vm, *args)],
                stderr=log_file, start_new_session=True,
            )
        netenv.procs.append(stack)
        assert wait_for(lambda: "pyvpnkit running" in log_path.read_text(), 15)
        yield stack, vm
    finally:
        subprocess.run(["ip", "netns", "del", vm], check=False)
        # `run --netns NAME` writes /etc/netns/NAME/resolv.conf and removes it when it
        # is gone; should that ever fail, the test still leaves nothing behind.
        shutil.rmtree(f"/etc/netns/{vm}", ignore_errors=True)


def hold_from(vm: str, stack_pid: int, port: int, n: int, after: int) -> dict[str, Any]:
    """conn_flood.py hold, run in the VM namespace with the test's own descriptor limit."""
    out = subprocess.run(
        ["ip", "netns", "exec", vm, sys.executable, FLOOD, "hold", HOST_ALIAS, str(port),
         str(n), str(after), str(stack_pid)], capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_beyond_a_low_hard_limit_connections_are_refused_at_once(
    netenv: NetEnv, tmp_path: Path
) -> None:
    """`run --netns` under a hard limit of 1,024 (the VM's client has its own, higher one)."""
    port = echo_server(netenv)
    log_path = tmp_path / "stack.log"
    api = f"unix://{tmp_path}/api.sock"
    with stack_for_vm(netenv, log_path, "--api", api,
                      prefix=("prlimit", "--nofile=1024:1024")) as (stack, vm):
        res = hold_from(vm, stack.pid, port, 1500, 300)
        limits = ApiClient(api).stats()["limits"]
    log = log_path.read_text()
    # /stats counts what was refused and why; nothing escaped as an error.
    descriptors = limits["descriptors"]
    assert descriptors["tcp_refused"] == descriptors["refused_budget"] == res["refused"], limits
    assert descriptors["peak"] == descriptors["capacity"] and descriptors["in_use"] == 0, limits
    assert limits["errors_contained"] == {"callback": 0}, limits
    print(f"\nhard limit 1024: {res['ok']} served, {res['refused']} refused, "
          f"slowest refusal {res['max_refusal_s']} s")
    assert res["hung"] == 0 and res["reset"] == 0 and res["other"] == 0, res
    assert 800 <= res["ok"] < 1024, res
    assert res["ok"] + res["refused"] == 1500, res
    assert res["max_refusal_s"] < 2.0, res
    assert res["after"]["ok"] == 300, res
    assert "out of descriptors (budget): refused" in log
    assert "Traceback" not in log and "Too many open files" not in log


def test_when_the_kernel_says_emfile_connections_are_refused_at_once(
    netenv: NetEnv, tmp_path: Path
) -> None:
    """The limit lowered under a running stack: the kernel's EMFILE, not the budget, says no."""
    port = echo_server(netenv)
    log_path = tmp_path / "stack.log"
    with stack_for_vm(netenv, log_path) as (stack, vm):
        subprocess.run(["prlimit", "--pid", str(stack.pid), "--nofile=600:600"], check=True)
        res = hold_from(vm, stack.pid, port, 1000, 200)
    log = log_path.read_text()
    assert res["hung"] == 0 and res["reset"] == 0 and res["other"] == 0, res
    assert 400 <= res["ok"] < 600 and res["ok"] + res["refused"] == 1000, res
    assert res["max_refusal_s"] < 2.0, res
    assert res["after"]["ok"] == 200, res
    assert "out of descriptors (emfile): refused" in log
    assert "Traceback" not in log


BLACKHOLE = """table inet pvkhole {
  chain input { type filter hook input priority 0; policy accept;
    tcp dport 9 drop
  }
}"""


def test_syn_flood_into_a_black_hole_is_bounded(netenv: NetEnv) -> None:
    """10,000 SYNs to a black hole: pending connects capped, other destinations served at once."""
    netenv.run_in("world", "nft", "-f", "-", input=BLACKHOLE)
    port = echo_server(netenv, "world", WORLD_IP)
    py = sys.executable
    script = (
        f"{py} {FLOOD} syn {WORLD_IP} 9 10000 6 & sleep 3; "
        f"{py} {FLOOD} hold {WORLD_IP} {port} 50 0 $PPID; st=$?; wait; exit $st"
    )
    cmd = netenv.pyvpnkit(
        "exec", *exec_args(), "--log-level", "info", "--max-pending-connects", "256",
        "--connect-timeout", "30", "--", "sh", "-c", script,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nduring the flood: {res['ok']} served in {res['seconds']} s, stack fds "
          f"{res['idle_fds']}, RSS {res['idle_rss_kb']} KB")
    # The working destination is served at once, during the flood.
    assert res["ok"] == 50 and res["seconds"] < 3.0, res
    # Only the capped number of connects hold a socket; memory stays small.
    assert res["idle_fds"] < 256 + 64, res
    assert res["idle_rss_kb"] < 100_000, res
    assert "Traceback" not in out.stderr


SILENT = """table inet pvksilent {
  counter a {}
  counter b {}
  chain input { type filter hook input priority 0; policy accept;
    udp dport 5301 counter name a drop
    udp dport 5302 counter name b drop
  }
}"""


def test_silent_dns_upstreams_give_servfail_within_the_timeout(netenv: NetEnv) -> None:
    """Two upstreams that never answer: both are tried, SERVFAIL after --dns-timeout."""
    netenv.run_in("host", "nft", "-f", "-", input=SILENT)
    script = (
        "import time, dns.message, dns.query, dns.rcode\n"
        "q = dns.message.make_query('silent.example.', 'A')\n"
        "t = time.monotonic()\n"
        "r = dns.query.udp(q, '192.168.65.1', timeout=10)\n"
        "print(dns.rcode.to_text(r.rcode()), round(time.monotonic() - t, 2))\n"
    )
    cmd = netenv.pyvpnkit(
        "exec", "--hosts", "/dev/null", "--dns-server", "127.0.0.1#5301",
        "--dns-server", "127.0.0.1#5302", "--dns-timeout", "2", "--",
        sys.executable, "-c", script,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    rcode, seconds = out.stdout.split()
    assert rcode == "SERVFAIL"
    assert 1.8 <= float(seconds) < 3.0, seconds
    counters = netenv.run_in("host", "nft", "list", "counters").stdout
    assert counters.count("packets 0 ") == 0, counters  # both servers were asked


def test_runas_drops_root_after_setup_and_keeps_serving(netenv: NetEnv, tmp_path: Path) -> None:
    port = echo_server(netenv)
    log_path = tmp_path / "stack.log"
    with stack_for_vm(netenv, log_path, "--runas", "nobody") as (stack, vm):
        status = Path(f"/proc/{stack.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["65534"] * 4, uid_line
        assert hold_from(vm, stack.pid, port, 20, 0)["ok"] == 20
        stack.terminate()
        assert stack.wait(10) == 0
    assert "Traceback" not in log_path.read_text()
