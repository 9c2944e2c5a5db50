"""Issue 3 end to end: the Linux kernel in the VM namespace is the peer TCP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.integration.netenv import HELPERS, WORLD_IP, NetEnv, exec_args

MB32 = 32 * 1024 * 1024

LOSS_RULES = """
table inet pvkloss {
  chain in { type filter hook input priority 0; numgen random mod 100 < 3 drop; }
  chain out { type filter hook output priority 0; numgen random mod 100 < 3 drop; }
}
"""


@pytest.fixture
def servers(netenv: NetEnv) -> dict[str, tuple[str, int]]:
    _p, host_port = netenv.start_helper("host", "tcp_server.py", "127.0.0.1", "0")
    _p, world_port = netenv.start_helper("world", "tcp_server.py", WORLD_IP, "0")
    return {"alias": ("192.168.65.2", int(host_port)), "world": (WORLD_IP, int(world_port))}


def client(netenv: NetEnv, *args: str, mtu: int = 1500, loss: bool = False,
           timeout: float = 240) -> dict[str, object]:
    script = f"{sys.executable} {HELPERS / 'tcp_client.py'} {' '.join(args)}"
    if loss:
        script = f"nft -f - <<'EOF'\n{LOSS_RULES}\nEOF\n{script}"
    cmd = netenv.pyvpnkit("exec", *exec_args(), "--mtu", str(mtu), "--", "sh", "-c", script)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["alias", "world"])
def test_download_and_upload_32mb(netenv: NetEnv, servers, where: str) -> None:
    host, port = servers[where]
    got = client(netenv, "get", host, str(port), str(MB32))
    assert got == {"bytes": MB32, "ok": True}
    assert client(netenv, "put", host, str(port), str(MB32)) == {"ok": True}


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
@pytest.mark.parametrize("where", ["alias", "world"])
def test_transfer_with_3_percent_loss(netenv: NetEnv, servers, where: str) -> None:
    host, port = servers[where]
    assert client(netenv, "get", host, str(port), str(MB32), loss=True)["ok"] is True
    assert client(netenv, "put", host, str(port), str(MB32), loss=True) == {"ok": True}


def test_connection_refused_at_once(netenv: NetEnv) -> None:
    res = client(netenv, "refused", "192.168.65.2", "1")
    assert res["refused"] is True, res
    assert res["seconds"] < 1.0
    res = client(netenv, "refused", WORLD_IP, "1")
    assert res["refused"] is True and res["seconds"] < 1.0, res


def test_half_close(netenv: NetEnv, servers) -> None:
    host, port = servers["alias"]
    assert client(netenv, "half", host, str(port)) == {"ok": True}


def test_many_connections_leak_no_fds(netenv: NetEnv, servers) -> None:
    host, port = servers["alias"]
    res = client(netenv, "many", host, str(port), "1000", "200")
    assert res["sequential_ok"] == 1000 and res["concurrent_ok"] == 200, res
    assert res["fds_after"] <= res["fds_before"], res


def test_large_mtu_transfer(netenv: NetEnv, servers) -> None:
    host, port = servers["alias"]
    assert client(netenv, "get", host, str(port), str(MB32), mtu=65520)["ok"] is True
    assert client(netenv, "put", host, str(port), str(MB32), mtu=65520) == {"ok": True}


def test_outbound_redirect_to_unix_socket(netenv: NetEnv, tmp_path) -> None:
    """vpnkit --forwards: VM connections to a prefix/port go to a host unix socket."""
    sock_path = tmp_path / "redirect.sock"
    rules = tmp_path / "forwards.json"
    rules.write_text(json.dumps([{"protocol": "tcp", "dst_prefix": "198.51.100.0/24",
                                  "dst_port": 80, "path": str(sock_path)}]))
    netenv.start("host", "socat", f"UNIX-LISTEN:{sock_path},fork", "EXEC:cat")
    from tests.integration.netenv import wait_for

    assert wait_for(sock_path.exists)
    script = ("printf 'through the unix socket' | socat -t2 - TCP:198.51.100.7:80; echo; "
              "socat -T2 - TCP:198.51.100.7:81,connect-timeout=2 </dev/null || echo refused")
    cmd = netenv.pyvpnkit("exec", *exec_args(), "--forwards", str(rules), "--",
                          "sh", "-c", script)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "through the unix socket"
    assert lines[-1] == "refused"  # port 81 is not redirected: the test world drops it


def test_slow_host_reader_bounds_memory(netenv: NetEnv, servers) -> None:
    """A host reader that stalls closes the VM's window: the stack does not buffer the upload."""
    host, port = servers["alias"]
    res = client(netenv, "slowput", host, str(port), str(MB32), mtu=65520)
    assert res["ok"] is True, res
    # 32 MB went through; the stack may hold its 2 MB receive window and some slack.
    assert res["rss_growth_kb"] < 16 * 1024, res
