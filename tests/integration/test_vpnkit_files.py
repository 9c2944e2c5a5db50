"""vpnkit's gateway forwards (flags and a watched file), its DHCP file and its --dns zones,
with real clients: a VM program dialling the gateway's ports, udhcpc, DNS questions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dns.message
import pytest

from tests.integration import vmclient
from tests.integration.netenv import WORLD_IP, NetEnv, exec_args, wait_for
from tests.integration.test_forward_source import PEERS, ctl
from tests.integration.test_vpnkit_cli import GATEWAY, GATEWAY_MAC, UUID, tmpdir_short
from tests.integration.vmclient import Guest

__all__ = ["tmpdir_short"]  # the fixture, for the vpnkit test below
GW = "192.168.65.1"


def forwards_file(path: Path, port: int, target: int) -> None:
    path.write_text(json.dumps([{"protocol": "tcp", "external_port": port,
                                 "internal_ip": "127.0.0.1", "internal_port": target}]))


def test_gateway_forwards_from_flags_and_a_watched_file(netenv: NetEnv, tmp_path: Path) -> None:
    netenv.start_helper("host", "fwd_peers.py", "echo", "127.0.0.1", "19100")
    _p, udp_port = netenv.start_helper("world", "udp_echo.py", WORLD_IP)
    table = tmp_path / "gateway.json"
    forwards_file(table, 8082, 19100)
    control = str(tmp_path / "ctl.sock")
    proc = netenv.start_pyvpnkit(
        "exec", *exec_args(), "--tcpv4-forwards", "8081:127.0.0.1:19100",
        "--udpv4-forwards", f"5301:{WORLD_IP}:{udp_port}", "--gateway-forwards", str(table),
        "--", sys.executable, PEERS, "vm", control,
        stdout=subprocess.PIPE, stderr=(tmp_path / "log").open("wb"),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    assert ctl(control, f"tcp-ask {GW} 8081") == "ping"  # the flag, to the host's loopback
    assert ctl(control, f"udp-ask {GW} 5301") == "ping"  # to the world, answered from :5301
    assert ctl(control, f"tcp-ask {GW} 8082") == "ping"  # the file
    forwards_file(table, 8083, 19100)
    assert wait_for(lambda: ctl(control, f"tcp-ask {GW} 8083") == "ping", timeout=10)
    assert ctl(control, f"tcp-ask {GW} 8082") == "ConnectionRefusedError"
    table.write_text("[not json")  # a bad file is logged; the last good table stays
    assert wait_for(lambda: "keeping the previous" in (tmp_path / "log").read_text(), timeout=10)
    assert ctl(control, f"tcp-ask {GW} 8083") == "ping"
    assert "Traceback" not in (tmp_path / "log").read_text()


UDHCPC = """#!/bin/sh
[ "$1" = bound ] && echo "LEASE domain=$domain search=$search"
exit 0
"""


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_dhcp_file_and_its_reload(netenv: NetEnv, tmp_path: Path) -> None:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC)
    script.chmod(0o755)
    dhcp = tmp_path / "dhcp.json"
    dhcp.write_text('{"searchDomains": ["a.example", "b.example"], "domainName": "vm.example"}')
    again = tmp_path / "again"
    udhcpc = f"busybox udhcpc -n -q -f -i eth0 -O search -s {script}"
    proc = netenv.start_pyvpnkit(
        "exec", *exec_args(), "--no-config-net", "--dhcp-path", str(dhcp), "--",
        "sh", "-c", f"ip link set eth0 up && {udhcpc} && while true; do "
        f"while [ ! -e {again} ]; do sleep 0.1; done; rm {again}; {udhcpc}; done",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None

    def lease() -> str:
        line = b""
        while not line.startswith(b"LEASE"):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, "no lease"
        return line.decode().strip()

    assert lease() == "LEASE domain=vm.example search=a.example b.example"
    dhcp.write_text('{"searchDomains": ["c.example"]}')

    def renewed() -> bool:  # the file is checked every second
        again.touch()
        return lease() == "LEASE domain=localdomain search=c.example"

    assert wait_for(renewed, timeout=10, interval=0.3)


def test_vpnkit_dns_zones(netenv: NetEnv, tmpdir_short: str) -> None:
    """Names in a server's zone go to it; other names to the others (vpnkit's --dns)."""
    _p, general = netenv.start_helper("host", "fixed_dns.py", "203.0.113.10")
    _p, corp = netenv.start_helper("host", "fixed_dns.py", "203.0.113.20")
    Path(tmpdir_short, "dns").write_text(
        f"nameserver 127.0.0.1#{general}\nnameserver 127.0.0.1#{corp}\nzone corp.example\n")
    sock = f"{tmpdir_short}/vpnkit-ethernet.sock"
    proc = netenv.start("host", sys.executable, "-m", "pyvpnkit.frontends.vpnkit",
                        "--ethernet", sock,
                        "--dns", f"{tmpdir_short}/dns", "--hosts", "/dev/null")
    assert wait_for(lambda: Path(sock).exists() or proc.poll() is not None)
    io, _hello = vmclient.connect_vpnkit(f"unix://{sock}", UUID)
    guest = Guest(io, _hello.vif.mac)
    try:
        guest.dhcp()

        def ask(name: str) -> str:
            guest.send_udp(GATEWAY_MAC, GATEWAY, 40053, 53,
                           dns.message.make_query(name, "A").to_wire())
            answer = dns.message.from_wire(guest.recv_udp(40053)[3])
            return str(answer.answer[0][0])

        assert ask("www.other.test") == "203.0.113.10"
        assert ask("host.corp.example") == "203.0.113.20"
        assert ask("corp.example") == "203.0.113.20"
    finally:
        guest.close()

