"""--verify-checksums over exec's TAP, whose kernel hands over partial checksums
(virtio-net NEEDS_CSUM with TX checksum offload): TCP and UDP still work."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.netenv import WORLD_IP, NetEnv, exec_args

pytestmark = pytest.mark.skipif(
    shutil.which("dig") is None or shutil.which("curl") is None, reason="needs dig and curl"
)


def test_tcp_and_udp_with_verify_checksums(netenv: NetEnv) -> None:
    _p, dns_port = netenv.start_helper("host", "dns_server.py")
    _p, http_port = netenv.start_helper("world", "http_server.py", WORLD_IP, "0")
    script = (
        "dig @192.168.65.1 +time=2 +tries=1 +short www.example.test; "
        f"curl -sS -m 10 http://{WORLD_IP}:{http_port}/"
    )
    cmd = netenv.pyvpnkit(
        "exec", *exec_args(int(dns_port)), "--verify-checksums", "--", "sh", "-c", script
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("\n")[:2] == ["203.0.113.2", "hello pyvpnkit"]
