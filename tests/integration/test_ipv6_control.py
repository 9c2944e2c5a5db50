"""Issue 11, the control plane: the kernel as the IPv6 peer of our RAs, DHCPv6, echo and DNS."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from tests.integration.netenv import NetEnv, exec_args

GW6 = "fd42:7076:6b69::1"
ALIAS6 = "fd42:7076:6b69::2"


def run(netenv: NetEnv, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(netenv.pyvpnkit("exec", *exec_args(), *args), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_exec_configures_ipv6_ping_and_dns(netenv: NetEnv, tmp_path) -> None:
    pcap = tmp_path / "v6.pcap"
    out = run(
        netenv, "--pcap", str(pcap), "--",
        "sh", "-c",
        "ip -6 -o addr show dev eth0 scope global; ip -6 route; cat /etc/resolv.conf; "
        f"ping -6 -c1 -W2 {GW6} && ping -6 -c1 -W2 {ALIAS6} && ping -6 -c1 -W2 fe80::1%eth0 && "
        f"dig +short +tcp +time=2 +tries=1 AAAA gateway.docker.internal @{GW6} && "
        f"dig +short +notcp +time=2 +tries=1 AAAA host.docker.internal @{GW6}",
    )
    text = out.stdout
    assert "fd42:7076:6b69::3/64" in text
    assert "default via fe80::1 dev eth0" in text
    assert f"nameserver 192.168.65.1\nnameserver {GW6}\n" in text
    assert text.count("1 received") == 3
    assert text.rstrip().endswith(f"{GW6}\n{ALIAS6}")  # over TCP, then over UDP
    if shutil.which("tcpdump"):
        dump = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True)
        assert f"fd42:7076:6b69::3 > {GW6}: ICMP6, echo request" in dump.stdout
        assert f"{GW6} > fd42:7076:6b69::3: ICMP6, echo reply" in dump.stdout


def test_no_ipv6_leaves_ipv6_off(netenv: NetEnv) -> None:
    out = run(netenv, "--no-ipv6", "--", "sh", "-c",
              "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; cat /etc/resolv.conf")
    assert out.stdout == "1\nnameserver 192.168.65.1\n"


def test_slaac_from_our_router_advertisements(netenv: NetEnv) -> None:
    """--no-config-net: the kernel takes the prefix and the default route from our RAs."""
    script = (
        "for i in $(seq 100); do ip -6 -o addr show dev eth0 scope global | grep fd42 "
        "| grep -qv tentative "
        "&& ip -6 route | grep -q 'default via fe80::1' && break; sleep 0.1; done; "
        "cat /proc/sys/net/ipv6/conf/eth0/accept_ra; ip -6 -o addr show dev eth0 scope global; "
        f"ip -6 route; ping -6 -c1 -W2 {GW6}"
    )
    out = run(netenv, "--no-config-net", "--", "sh", "-c", script)
    lines = out.stdout.splitlines()
    assert lines[0] == "2"
    assert "inet6 fd42:7076:6b69:0:" in out.stdout and "/64 scope global dynamic" in out.stdout
    assert "default via fe80::1 dev eth0 proto ra" in out.stdout
    assert "1 received" in out.stdout


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="needs dhclient (isc-dhcp-client)")
def test_dhclient6_gets_an_address(netenv: NetEnv, tmp_path) -> None:
    """A real DHCPv6 client: Solicit/Advertise/Request/Reply, the pool's first address."""
    lease, pid = tmp_path / "leases", tmp_path / "pid"
    script = (
        "for i in $(seq 50); do ip -6 -o addr show dev eth0 scope link | grep -qv tentative "
        "&& break; sleep 0.1; done; "
        f"timeout 20 dhclient -6 -1 -lf {lease} -pf {pid} eth0; "
        f"ip -6 -o addr show dev eth0 scope global; cat {lease}; dhclient -6 -x -pf {pid}"
    )
    out = run(netenv, "--no-config-net", "--", "sh", "-c", script)
    assert "inet6 fd42:7076:6b69::3/128" in out.stdout, out.stdout + out.stderr
    assert f"dhcp6.name-servers {GW6};" in out.stdout


def test_run_netns_gets_ipv6(netenv: NetEnv) -> None:
    """`run --netns`: the namespace made elsewhere is configured for IPv6 too."""
    name = f"pvk-v6-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc = netenv.start_pyvpnkit("run", *exec_args(), "--netns", name)
        try:
            ok = False
            for _ in range(50):
                out = subprocess.run(["ip", "netns", "exec", name, "ping", "-6", "-c", "1",
                                      "-W", "1", ALIAS6], capture_output=True, text=True)
                if out.returncode == 0:
                    ok = True
                    break
                time.sleep(0.1)
            assert ok, out.stdout + out.stderr
            resolv = open(f"/etc/netns/{name}/resolv.conf").read()
            assert f"nameserver {GW6}\n" in resolv
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        # `run --netns NAME` writes /etc/netns/NAME/resolv.conf and removes it when it
        # is gone; should that ever fail, the test still leaves nothing behind.
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
