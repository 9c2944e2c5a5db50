"""Issue 4 end to end: dig, curl, socat and ping inside the VM namespace.

The DNS forwarder's upstream is a dnspython server on the host namespace's
loopback; nothing here can reach the machine's real resolvers.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.netenv import WORLD_IP, NetEnv, exec_args

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig")


@pytest.fixture
def dns_port(netenv: NetEnv) -> int:
    _proc, port = netenv.start_helper("host", "dns_server.py")
    return int(port)


def vm(netenv: NetEnv, dns_port: int, script: str, timeout: float = 60) -> str:
    cmd = netenv.pyvpnkit("exec", *exec_args(dns_port), "--", "sh", "-c", script)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def sections(output: str) -> list[str]:
    return output.split("=====\n")


DIG = "dig @192.168.65.1 +time=2 +tries=1"


def test_forwarded_record_types_udp_and_tcp(netenv: NetEnv, dns_port: int) -> None:
    queries = [
        ("www.example.test", "A", "203.0.113.2"),
        ("www.example.test", "AAAA", "2001:db8::2"),
        ("example.test", "MX", "10 mail.example.test."),
        ("example.test", "TXT", '"hello from the test zone"'),
        ("_http._tcp.example.test", "SRV", "0 5 80 www.example.test."),
    ]
    script = "; echo =====; ".join(
        f"{DIG} {proto} +short {name} {rtype}"
        for proto in ("+notcp", "+tcp")
        for name, rtype, _ in queries
    )
    outs = sections(vm(netenv, dns_port, script))
    expected = [want for _ in range(2) for _n, _t, want in queries]
    assert [o.strip() for o in outs] == expected


def test_builtin_names_nodata_and_nxdomain(netenv: NetEnv, dns_port: int) -> None:
    script = "; echo =====; ".join([
        f"{DIG} +short host.docker.internal",
        f"{DIG} +short gateway.docker.internal",
        f"{DIG} +short host.internal",
        f"{DIG} +short vm.internal",
        f"{DIG} host.docker.internal MX",
        f"{DIG} nosuch.example.test",
        f"{DIG} +tcp +short gateway.internal",
        f"{DIG} +short host.docker.internal AAAA",
    ])
    outs = sections(vm(netenv, dns_port, script))
    assert outs[0].strip() == "192.168.65.2"
    assert outs[1].strip() == "192.168.65.1"
    assert outs[2].strip() == "192.168.65.2"
    assert outs[3].strip() == "192.168.65.3"
    assert "status: NOERROR" in outs[4] and "ANSWER: 0" in outs[4]
    assert "status: NXDOMAIN" in outs[5]
    assert outs[6].strip() == "192.168.65.1"
    assert outs[7].strip() == "fd42:7076:6b69::2"


def test_a_repeated_builtin_question_gets_the_kept_answer(netenv: NetEnv, dns_port: int) -> None:
    """The second asker is served the kept wire answer: its own spelling and id, to dig."""
    script = "; echo =====; ".join([
        f"{DIG} +noall +answer host.docker.internal",
        f"{DIG} +noall +answer HOST.Docker.Internal",
        f"{DIG} +tcp +noall +answer Host.Docker.Internal",
    ])
    outs = [o.split() for o in sections(vm(netenv, dns_port, script))]
    assert outs[0][:1] == ["host.docker.internal."] and outs[0][-1] == "192.168.65.2"
    assert outs[1][:1] == ["HOST.Docker.Internal."] and outs[1][-1] == "192.168.65.2"
    assert outs[2][:1] == ["Host.Docker.Internal."] and outs[2][-1] == "192.168.65.2"


def test_large_answer_truncated_over_udp_complete_over_tcp(netenv: NetEnv, dns_port: int) -> None:
    script = (f"{DIG} +notcp +ignore +noedns big.example.test TXT; echo =====; "
              f"{DIG} +tcp +short big.example.test TXT | wc -l")
    udp, tcp = sections(vm(netenv, dns_port, script))
    assert " tc" in udp.split("flags:")[1].split(";")[0], udp
    assert tcp.strip() == "20"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_host_docker_internal(netenv: NetEnv, dns_port: int) -> None:
    _p, port = netenv.start_helper("host", "http_server.py", "127.0.0.1")
    out = vm(netenv, dns_port, f"curl -sS --max-time 10 http://host.docker.internal:{port}/")
    assert out == "hello pyvpnkit\n"


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
def test_udp_echo_to_world_and_host(netenv: NetEnv, dns_port: int) -> None:
    _p, wport = netenv.start_helper("world", "udp_echo.py", WORLD_IP)
    _p, hport = netenv.start_helper("host", "udp_echo.py", "127.0.0.1")
    big = "y" * 8000  # crosses the MTU: fragmented both ways
    script = (
        f"echo hello-world | socat -T2 - UDP:{WORLD_IP}:{wport}; echo =====; "
        f"echo hello-host | socat -T2 - UDP:192.168.65.2:{hport}; echo =====; "
        f"printf {big} | socat -T2 -b 65535 - UDP:{WORLD_IP}:{wport} | wc -c"
    )
    world, host, size = sections(vm(netenv, dns_port, script))
    assert world.strip() == "hello-world"
    assert host.strip() == "hello-host"
    assert size.strip() == "8000"


def test_ping_world(netenv: NetEnv, dns_port: int) -> None:
    out = vm(netenv, dns_port, f"ping -c 2 -W 2 {WORLD_IP}")
    assert "2 received" in out or "2 packets received" in out


def test_udp_port_unreachable_reported(netenv: NetEnv, dns_port: int) -> None:
    # A closed port in the world answers ICMP port unreachable; the VM's socket sees it.
    script = (
        "python3 -c \"import socket; s=socket.socket(2,2); s.settimeout(3); "
        f"s.connect(('{WORLD_IP}', 9)); s.send(b'x'); "
        "exec('try:\\n s.recv(1)\\nexcept ConnectionRefusedError: print(\\'refused\\')')\""
    )
    assert vm(netenv, dns_port, script).strip() == "refused"


def test_dns_cache_serves_aged_answers(netenv: NetEnv, dns_port: int) -> None:
    """--dns-cache: the upstream always says TTL 60; a cached answer 2 s later says less."""
    script = (f"{DIG} +noall +answer www.example.test; sleep 2.2; echo =====; "
              f"{DIG} +noall +answer WWW.example.test; echo =====; "
              f"{DIG} +noall +answer www.example.test AAAA")
    cmd = netenv.pyvpnkit("exec", *exec_args(dns_port), "--dns-cache", "16",
                          "--", "sh", "-c", script)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    first, second, other = (o.split() for o in sections(out.stdout))
    assert first[1] == "60" and first[-1] == "203.0.113.2"
    assert second[0] == "WWW.example.test." and int(second[1]) <= 58
    assert second[-1] == "203.0.113.2"
    assert other[1] == "60" and other[-1] == "2001:db8::2"  # another type: upstream
