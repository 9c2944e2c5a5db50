"""run --tap on a multi-queue TAP: each process serves one queue (bench/multiqueue.py's set-up).

Two `pyvpnkit run --tap` attach to one TAP made with `multi_queue`; the kernel
spreads the flows of the namespace over both queues and keeps each flow on
the queue that answered it, so every connection completes (no reset) and
both processes hold some of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.netenv import HELPERS, NetEnv, exec_args, wait_for

TAP = "pvkmq0"
CONNECTIONS = 200

# Opens the connections through the TAP (each echo-checked), prints the counts,
# and holds them open until its stdin closes.
HOLD = f"""
import json, sys
sys.path.insert(0, {str(HELPERS)!r})
from conn_flood import open_many
result = open_many("192.168.65.2", int(sys.argv[1]), {CONNECTIONS})
held = result.pop("held")
print(json.dumps(result), flush=True)
sys.stdin.read()
"""


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_two_processes_share_a_multi_queue_tap(netenv: NetEnv, tmp_path: Path) -> None:
    netenv.run_in("host", "ip", "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue",
                  "vnet_hdr")
    netenv.run_in("host", "sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
    netenv.run_in("host", "ip", "addr", "add", "192.168.65.3/24", "dev", TAP)
    netenv.run_in("host", "ip", "link", "set", TAP, "up")
    pidfiles = [tmp_path / f"{i}.pid" for i in range(2)]
    workers = [netenv.start_pyvpnkit("run", *exec_args(), "--no-ipv6", "--tap", TAP,
                                     "--pid-file", str(p)) for p in pidfiles]
    assert wait_for(lambda: all(p.exists() for p in pidfiles), timeout=30)
    idle = [fd_count(w.pid) for w in workers]
    # The gateway answers ping, whichever queue the echo request lands on.
    netenv.run_in("host", "ping", "-c", "3", "-i", "0.2", "-W", "5", "192.168.65.1")
    _server, port = netenv.start_helper("host", "conn_flood.py", "serve", "127.0.0.1", "0")
    client = netenv.start("host", sys.executable, "-c", HOLD, port,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    result = json.loads(client.stdout.readline())
    try:
        assert result["ok"] == CONNECTIONS, result
        # Each process holds a host socket for some of the connections it serves.
        grown = [fd_count(w.pid) - before for w, before in zip(workers, idle, strict=True)]
        assert all(g >= CONNECTIONS // 10 for g in grown), grown
        assert sum(grown) >= CONNECTIONS, grown
    finally:
        client.stdin.close()
        client.wait(10)
