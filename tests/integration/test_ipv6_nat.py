"""IPv6 through the NATs with the Linux kernel as the VM (issue 11, data plane).

The VM namespace's IPv6 is configured by hand (address, default route and a
permanent neighbor entry for the gateway and the alias), so these tests need
no NDP: they exercise only TCP/UDP/ICMPv6 NAT to AF_INET6 host sockets.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.netenv import HELPERS, WORLD_IP6, NetEnv, exec_args, wait_for

MB32 = 32 * 1024 * 1024
PREFIX = "fd42:7076:6b69::"
GATEWAY6, ALIAS6, VM6 = PREFIX + "1", PREFIX + "2", PREFIX + "3"
GATEWAY_MAC = "f6:16:36:bc:f9:c6"

# The VM's side of IPv6, by hand (idempotent, so it also holds once exec configures IPv6).
VM_SETUP = " && ".join(
    [
        f"ip -6 addr replace {VM6}/64 dev eth0 nodad",
        f"ip -6 neigh replace {GATEWAY6} lladdr {GATEWAY_MAC} dev eth0 nud permanent",
        f"ip -6 neigh replace {ALIAS6} lladdr {GATEWAY_MAC} dev eth0 nud permanent",
        f"ip -6 route replace default via {GATEWAY6} dev eth0",
    ]
)


def in_vm(netenv: NetEnv, script: str, *extra: str, timeout: float = 120) -> str:
    cmd = netenv.pyvpnkit("exec", *exec_args(), *extra, "--", "sh", "-c",
                          f"{VM_SETUP} && {script}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def client(netenv: NetEnv, *args: str) -> dict[str, object]:
    script = f"{sys.executable} {HELPERS / 'tcp_client.py'} {' '.join(args)}"
    return json.loads(in_vm(netenv, script).strip().splitlines()[-1])


@pytest.fixture
def servers(netenv: NetEnv) -> dict[str, tuple[str, int]]:
    _p, host_port = netenv.start_helper("host", "tcp_server.py", "::1", "0")
    _p, world_port = netenv.start_helper("world", "tcp_server.py", WORLD_IP6, "0")
    return {"alias": (ALIAS6, int(host_port)), "world": (WORLD_IP6, int(world_port))}


@pytest.mark.parametrize("where", ["alias", "world"])
def test_ipv6_download_and_upload_32mb(netenv: NetEnv, servers, where: str) -> None:
    host, port = servers[where]
    script = (
        f"{sys.executable} {HELPERS / 'tcp_client.py'} get {host} {port} {MB32} && "
        f"{sys.executable} {HELPERS / 'tcp_client.py'} put {host} {port} {MB32}"
    )
    lines = in_vm(netenv, script).strip().splitlines()
    assert json.loads(lines[-2]) == {"bytes": MB32, "ok": True}
    assert json.loads(lines[-1]) == {"ok": True}


def test_ipv6_refused_at_once(netenv: NetEnv) -> None:
    for host in (ALIAS6, WORLD_IP6):
        res = client(netenv, "refused", host, "1")
        assert res["refused"] is True and res["seconds"] < 1.0, res


def test_ipv6_half_close(netenv: NetEnv, servers) -> None:
    host, port = servers["world"]
    assert client(netenv, "half", host, str(port)) == {"ok": True}


def test_ipv6_udp_echo_and_port_unreachable(netenv: NetEnv) -> None:
    _p, wport = netenv.start_helper("world", "udp_echo.py", WORLD_IP6)
    _p, hport = netenv.start_helper("host", "udp_echo.py", "::1")
    probe = (
        "import socket,sys\n"
        "for host, port in ((sys.argv[1], int(sys.argv[2])), (sys.argv[3], int(sys.argv[4]))):\n"
        "    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)\n"
        "    s.sendto(b'x' * 3000, (host, port)); d, a = s.recvfrom(65535)\n"
        "    assert d == b'x' * 3000 and a[0] == host, a\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)\n"
        "s.connect((sys.argv[1], 9)); s.send(b'x')\n"
        "try:\n    s.recv(10)\nexcept ConnectionRefusedError:\n    print('refused')\n"
    )
    out = in_vm(netenv, f"{sys.executable} -c \"$P\" {WORLD_IP6} {wport} {ALIAS6} {hport}"
                .replace("$P", probe.replace('"', '\\"')))
    assert out.strip().splitlines()[-1] == "refused", out


def test_ping6_world(netenv: NetEnv) -> None:
    out = in_vm(netenv, f"ping -6 -c 2 -i 0.2 -W 3 {WORLD_IP6}")
    assert " 0% packet loss" in out, out


def test_forward_from_host_ipv6_into_vm_ipv4_and_ipv6(netenv: NetEnv, tmp_path) -> None:
    api = f"unix://{tmp_path / 'api.sock'}"
    # The VM speaks IPv6 once (a ping to the alias) so the switch knows where it is.
    servers = (
        f"ping -6 -c 1 -W 2 {ALIAS6} >/dev/null; "
        "socat TCP4-LISTEN:8080,fork,reuseaddr EXEC:cat & a=$!; "
        f"socat TCP6-LISTEN:8083,bind=[{VM6}],fork,reuseaddr EXEC:cat & b=$!; "
        "trap 'kill $a $b; exit 0' TERM INT; wait"
    )
    netenv.start_pyvpnkit(
        "exec", *exec_args(), "--api", api, "-p", "[::1]:18090:8080",
        "--", "sh", "-c", f"{VM_SETUP} && {servers}",
        stderr=(tmp_path / "log").open("wb"),
    )

    def echo(address: str, text: str) -> bool:
        res = netenv.run_in("host", "socat", "-t2", "-T3", "-", address, input=text,
                            check=False, timeout=10)
        return res.stdout == text

    assert wait_for(lambda: echo("TCP6:[::1]:18090", "to v4\n"), timeout=10), \
        (tmp_path / "log").read_text()
    res = netenv.run_in("host", sys.executable, "-m", "pyvpnkit", "expose", "--api", api,
                        "[::1]:18091", f"[{VM6}]:8083", check=False, timeout=20)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"tcp [::1]:18091 -> [{VM6}]:8083"
    assert wait_for(lambda: echo("TCP6:[::1]:18091", "to v6\n"), timeout=10), \
        (tmp_path / "log").read_text()


def test_curl_names_with_a_and_aaaa(netenv: NetEnv) -> None:
    """A name with A and AAAA: curl reaches it over IPv6; with no IPv6 route on the
    host an IPv6 connect fails at once, so a client that tried IPv6 first falls back
    to IPv4 without waiting. (Linux prefers IPv4 over IPv6 from a unique-local source
    for global destinations (RFC 6724 rule 5), so plain curl picks IPv4 here anyway.)"""
    _p, dns_port = netenv.start_helper("host", "dns_server.py")
    _p, http_port = netenv.start_helper("world", "http_server.py", "::")
    curl = ("curl -sS -o /dev/null --max-time 10 -w '%{{http_code}} %{{remote_ip}} "
            "%{{time_total}}\\n' {} http://{}:" + http_port)
    connect = (f"{sys.executable} -c \"import socket; s = socket.socket(socket.AF_INET6); "
               "print(s.connect_ex(('2001:db9::2', 80)) == __import__('errno').ENETUNREACH)\"")
    script = "; ".join([
        curl.format("-6", "www.example.test"),
        curl.format("-6", "dual.example.test"),
        curl.format("", "dual.example.test"),
        connect,
    ])
    netenv.run_in("host", "ip", "-6", "route", "del", "default")
    cmd = netenv.pyvpnkit("exec", *exec_args(int(dns_port)), "--", "sh", "-c",
                          f"{VM_SETUP} && {script}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    www6, dual6, dual, unreachable = (line.split() for line in out.stdout.strip().splitlines())
    assert unreachable == ["True"], out.stdout  # "no route", as the host said
    assert www6[:2] == ["200", WORLD_IP6], out.stdout + out.stderr
    assert dual6[0] == "000" and float(dual6[-1]) < 1.0, out.stdout
    assert "(7) Failed to connect to dual.example.test" in out.stderr, out.stderr
    assert dual[:2] == ["200", "203.0.113.2"], out.stdout
