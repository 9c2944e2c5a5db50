"""Published ports keep the client's address: what a service in the VM sees.

The VM runs helpers/fwd_peers.py (TCP 8080, UDP 8081, each answering with the
peer it sees); clients run in the world namespace (two addresses there), on
the host namespace's loopback, over IPv4 and IPv6. The collisions: the VM's
own flows to a client's address and port, and clients sharing a port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyvpnkit.api.client import ApiClient
from tests.integration.netenv import (
    HELPERS,
    HOST_WORLD_IP,
    HOST_WORLD_IP6,
    WORLD_IP,
    WORLD_IP6,
    NetEnv,
    exec_args,
    wait_for,
)

PEERS = str(HELPERS / "fwd_peers.py")
WORLD_IP_2 = "203.0.113.3"
GATEWAY = "192.168.65.1"
ALIAS = "192.168.65.2"

UDP_ASK = """
import socket, sys
host, port, lport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(3)
s.bind(("::" if fam == socket.AF_INET6 else sys.argv[4], lport))
s.sendto(b"hi", (host, port))
print(s.recvfrom(100)[0].decode())
"""


def start_vm(netenv: NetEnv, tmp_path: Path, *extra: str) -> tuple[str, str]:
    """pyvpnkit exec with the peer servers in the VM; returns (control path, API URL)."""
    control, api = str(tmp_path / "ctl.sock"), f"unix://{tmp_path / 'api.sock'}"
    proc = netenv.start_pyvpnkit(
        "exec", *exec_args(), "--api", api, *extra,
        "-p", "0.0.0.0:18080:8080", "-p", "0.0.0.0:18081:8081/udp", "-p", "[::]:18081:8081/udp",
        "--", sys.executable, PEERS, "vm", control,
        stdout=subprocess.PIPE, stderr=(tmp_path / "pyvpnkit.log").open("wb"),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return control, api


def ctl(control: str, line: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(control)
        s.sendall(line.encode() + b"\n")
        return s.makefile().readline().strip()


def tcp_clients(netenv: NetEnv, which: str, dst: str, port: int, lport: int,
                *addrs: str) -> list[dict[str, object]]:
    res = netenv.run_in(which, sys.executable, PEERS, "clients", dst, str(port), str(lport),
                        *addrs, check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    out: list[dict[str, object]] = json.loads(res.stdout)
    assert all(c["echo"] for c in out), out
    return out


def udp_ask(netenv: NetEnv, which: str, dst: str, lport: int, src: str = "0.0.0.0",
            port: int = 18081) -> str:
    res = netenv.run_in(which, sys.executable, "-c", UDP_ASK, dst, str(port), str(lport), src,
                        check=False, timeout=15)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def wait_published(netenv: NetEnv) -> None:
    def up() -> bool:
        res = netenv.run_in("world", sys.executable, PEERS, "clients", HOST_WORLD_IP, "18080",
                            "0", WORLD_IP, check=False, timeout=15)
        return res.returncode == 0
    assert wait_for(up, timeout=15), "the published port never answered"


def test_clients_keep_their_address(netenv: NetEnv, tmp_path: Path) -> None:
    control, api = start_vm(netenv, tmp_path)
    netenv.run_in("world", "ip", "addr", "add", f"{WORLD_IP_2}/24",
                  "dev", _world_veth(netenv))
    wait_published(netenv)

    # TCP, IPv4: the client's address and port; two clients sharing a port stay apart.
    (one,) = tcp_clients(netenv, "world", HOST_WORLD_IP, 18080, 41000, WORLD_IP)
    assert one["first"] == f"peer={WORLD_IP}:41000"
    both = tcp_clients(netenv, "world", HOST_WORLD_IP, 18080, 41001, WORLD_IP, WORLD_IP_2)
    assert [c["first"] for c in both] == [f"peer={WORLD_IP}:41001", f"peer={WORLD_IP_2}:41001"]

    # TCP, IPv6: into the VM's IPv4 service the gateway stands in; into its IPv6 one, kept.
    (v6,) = tcp_clients(netenv, "world", HOST_WORLD_IP6, 18080, 41002, WORLD_IP6)
    assert str(v6["first"]).startswith(f"peer={GATEWAY}:")
    ApiClient(api).expose("[::]:18090", "[fd42:7076:6b69::3]:8080")
    (v6,) = tcp_clients(netenv, "world", HOST_WORLD_IP6, 18090, 41003, WORLD_IP6)
    assert v6["first"] == f"peer=[{WORLD_IP6}]:41003"

    # UDP: the same, per client; an IPv6 client of the IPv4 VM is the gateway.
    assert udp_ask(netenv, "world", HOST_WORLD_IP, 41010, WORLD_IP) == f"peer={WORLD_IP}:41010"
    assert udp_ask(netenv, "world", HOST_WORLD_IP, 41010, WORLD_IP_2) == \
        f"peer={WORLD_IP_2}:41010"
    assert udp_ask(netenv, "world", HOST_WORLD_IP6, 41011).startswith(f"peer={GATEWAY}:")
    ApiClient(api).expose("[::]:18091", "[fd42:7076:6b69::3]:8081", "udp")
    assert udp_ask(netenv, "world", HOST_WORLD_IP6, 41012, port=18091) == \
        f"peer=[{WORLD_IP6}]:41012"

    # Loopback clients are the host alias; 127.0.0.1 and ::1 on one port do not collide.
    (lo,) = tcp_clients(netenv, "host", "127.0.0.1", 18080, 41020, "127.0.0.1")
    assert lo["first"] == f"peer={ALIAS}:41020"
    v4, v6 = tcp_clients(netenv, "host", "127.0.0.1", 18080, 41021, "127.0.0.1")[0], \
        tcp_clients(netenv, "host", "::1", 18080, 41021, "::1")[0]
    assert v4["first"] == f"peer={ALIAS}:41021" and str(v6["first"]).startswith(f"peer={ALIAS}:")
    assert udp_ask(netenv, "host", "127.0.0.1", 41022, "127.0.0.1") == f"peer={ALIAS}:41022"
    assert "Traceback" not in (tmp_path / "pyvpnkit.log").read_text()


def test_the_vms_own_flows_to_a_client_are_kept_apart(netenv: NetEnv, tmp_path: Path) -> None:
    """The VM dials the client's address and port from the published port's target port
    first; the client then connects to the published port from that same address and port."""
    control, _api = start_vm(netenv, tmp_path)
    wait_published(netenv)
    netenv.start_helper("world", "fwd_peers.py", "echo", WORLD_IP, "41030")
    assert ctl(control, f"tcp-out {WORLD_IP} 41030") == "hello-out"
    (fwd,) = tcp_clients(netenv, "world", HOST_WORLD_IP, 18080, 41030, WORLD_IP)
    first = str(fwd["first"])
    assert first.startswith(f"peer={WORLD_IP}:") and first != f"peer={WORLD_IP}:41030"
    assert ctl(control, "tcp-out-again") == "again"  # the VM's own connection still works

    proc = netenv.start("world", "env", "LPORT=41040", sys.executable, PEERS, "udp-collide",
                        HOST_WORLD_IP, "18081", stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"41040"
    assert ctl(control, f"udp-out {WORLD_IP} 41040") == f"{WORLD_IP}:41040 answer:from-world"
    seen = json.loads(proc.stdout.readline())
    assert seen["reply_from"] == f"{HOST_WORLD_IP}:18081"  # the answer came back through it
    assert seen["reply"].startswith(f"peer={WORLD_IP}:")
    assert seen["reply"] != f"peer={WORLD_IP}:41040"


def test_no_forward_source_shows_the_gateway(netenv: NetEnv, tmp_path: Path) -> None:
    _control, api = start_vm(netenv, tmp_path, "--no-forward-source")
    wait_published(netenv)
    (one,) = tcp_clients(netenv, "world", HOST_WORLD_IP, 18080, 41050, WORLD_IP)
    assert str(one["first"]).startswith(f"peer={GATEWAY}:")
    assert udp_ask(netenv, "world", HOST_WORLD_IP, 41051, WORLD_IP).startswith(f"peer={GATEWAY}:")
    listed = ApiClient(api).forwards()
    assert {f["local"]: f.get("forward_source") for f in listed} == {
        "0.0.0.0:18080": False, "0.0.0.0:18081": False, "[::]:18081": False}


def _world_veth(netenv: NetEnv) -> str:
    out = netenv.run_in("world", "ip", "-o", "link", "show", "type", "veth").stdout
    name = out.split(":")[1].strip().partition("@")[0]
    if not name:
        pytest.fail(f"no veth in the world namespace: {out!r}")
    return name
