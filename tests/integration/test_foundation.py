"""Issue 2 end to end: a real DHCP client and ping inside a namespace wired to the stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.netenv import NetEnv, exec_args

UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
echo "LEASE ip=$ip subnet=$subnet router=$router dns=$dns mtu=$mtu domain=$domain"
"""


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_udhcpc_gets_lease(netenv: NetEnv, tmp_path) -> None:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    cmd = netenv.pyvpnkit(
        "exec", *exec_args(), "--no-config-net", "--",
        "sh", "-c",
        f"ip link set eth0 up && busybox udhcpc -n -q -f -i eth0 -O mtu -s {script}",
    )
    import subprocess

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lease = [line for line in out.stdout.splitlines() if line.startswith("LEASE")]
    assert lease, out.stdout + out.stderr
    fields = dict(kv.split("=", 1) for kv in lease[0].split()[1:])
    assert fields["ip"] == "192.168.65.3"
    assert fields["subnet"] == "255.255.255.0"
    assert fields["router"] == "192.168.65.1"
    assert fields["dns"].split() == ["192.168.65.1"]
    assert fields["mtu"] == "1500"


@pytest.mark.parametrize("target", ["192.168.65.1", "192.168.65.2"])
def test_ping_gateway_and_host_alias(netenv: NetEnv, target: str) -> None:
    import subprocess

    cmd = netenv.pyvpnkit("exec", *exec_args(), "--", "ping", "-c", "2", "-W", "2", target)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 received" in out.stdout or "2 packets received" in out.stdout


def test_exec_exit_status_and_config(netenv: NetEnv) -> None:
    import subprocess

    cmd = netenv.pyvpnkit(
        "exec", *exec_args(), "--mtu", "9000", "--",
        "sh", "-c", "ip -o addr show eth0; ip route; cat /sys/class/net/eth0/mtu; "
        "cat /etc/resolv.conf; exit 7",
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 7, out.stderr
    assert "192.168.65.3/24" in out.stdout
    assert "default via 192.168.65.1" in out.stdout
    assert "\n9000\n" in out.stdout
    assert "nameserver 192.168.65.1" in out.stdout


def test_run_attaches_to_existing_netns(netenv: NetEnv) -> None:
    """`pyvpnkit run --netns NAME` wires a namespace made elsewhere; SIGTERM stops it cleanly."""
    import signal
    import subprocess
    import time
    import uuid

    name = f"pvk-vm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc = netenv.start_pyvpnkit("run", *exec_args(), "--netns", name)
        ok = False
        for _ in range(50):
            out = subprocess.run(["ip", "netns", "exec", name, "ping", "-c", "1", "-W", "1",
                                  "192.168.65.1"], capture_output=True, text=True)
            if out.returncode == 0:
                ok = True
                break
            time.sleep(0.1)
        assert ok, out.stdout + out.stderr
        addr = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "addr", "show", "eth0"],
                              capture_output=True, text=True).stdout
        assert "192.168.65.3/24" in addr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        # `run --netns NAME` writes /etc/netns/NAME/resolv.conf and removes it when it
        # is gone; should that ever fail, the test still leaves nothing behind.
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_pcap_shows_dhcp_and_tcp(netenv: NetEnv, tmp_path) -> None:
    """--pcap writes a file tcpdump reads: the DHCP exchange and a TCP handshake are in it."""
    import subprocess

    _p, port = netenv.start_helper("host", "http_server.py", "127.0.0.1")
    pcap = tmp_path / "session.pcap"
    cmd = netenv.pyvpnkit(
        "exec", *exec_args(), "--pcap", str(pcap), "--no-config-net", "--",
        "sh", "-c",
        "ip link set eth0 up && busybox udhcpc -n -q -f -i eth0 >/dev/null 2>&1 && "
        f"curl -sS --max-time 5 http://192.168.65.2:{port}/",
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello pyvpnkit\n"
    dump = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    text = dump.stdout
    assert "BOOTP/DHCP, Request" in text and "BOOTP/DHCP, Reply" in text
    assert f"192.168.65.2.{port}: Flags [S]" in text
    assert f"192.168.65.2.{port} > 192.168.65.3." in text and "Flags [S.]" in text


def test_exec_stops_what_the_command_left_running(netenv: NetEnv) -> None:
    import subprocess
    import time

    cmd = netenv.pyvpnkit("exec", *exec_args(), "--", "sh", "-c",
                          "sleep 300 >/dev/null 2>&1 & echo $!")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"background process {pid} still running after exec returned")


def test_closing_a_netenv_removes_its_resolver_files() -> None:
    """A test or bench that gives a namespace its own resolv.conf and dies before its
    own cleanup leaves nothing under /etc/netns: NetEnv.close removes both names'."""
    env = NetEnv()
    paths = [Path(f"/etc/netns/{name}/resolv.conf") for name in (env.host, env.world)]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("nameserver 127.0.0.1\n")
    env.close()
    assert not any(path.parent.exists() for path in paths)
