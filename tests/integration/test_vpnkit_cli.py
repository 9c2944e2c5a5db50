"""`pyvpnkit-vpnkit` driven as rootlesskit's --net=vpnkit drives vpnkit.

rootlesskit runs `vpnkit --ethernet PATH --mtu N [--host-ip 0.0.0.0]`; its parent
connects with a fresh UUID, learns MAC and IP (the Go vmnet client's DHCP
DISCOVER) and keeps that connection open without reading it; its child connects
with the same UUID and carries the namespace's frames. Debian's rootlesskit has
that driver compiled out, so vmclient.rootlesskit_parent stands in for the parent
and a vmclient Guest on the second connection for the child. Everything runs in
the test's host namespace; DNS goes to a test server on its loopback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from tests.integration import vmclient
from tests.integration.helpers.tcp_server import pattern
from tests.integration.netenv import WORLD_IP, NetEnv, stack_python, wait_for
from tests.integration.vmclient import Guest

SIZE = 200_000
HOST_ALIAS = socket.inet_aton("192.168.65.2")
GATEWAY = socket.inet_aton("192.168.65.1")
GATEWAY_MAC = bytes.fromhex("f61636bcf9c6")
UUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@dataclass
class Vpnkit:
    proc: subprocess.Popen[bytes]
    dir: str
    log: Path

    @property
    def url(self) -> str:
        return f"unix://{self.dir}/vpnkit-ethernet.sock"

    def alive(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"pyvpnkit-vpnkit exited {code}:\n{self.log.read_text()}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def tmpdir_short() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="pvk-")  # unix socket paths must fit 108 bytes
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_vpnkit(env: NetEnv, d: str, *flags: str) -> Vpnkit:
    """rootlesskit's command line, plus a test DNS server and no hosts file."""
    _p, dns_port = env.start_helper("host", "dns_server.py")
    Path(d, "dns").write_text(f"nameserver 127.0.0.1#{dns_port}\n")
    log = Path(d, "vpnkit.log")
    with log.open("wb") as f:
        proc = env.start(
            "host", *stack_python(), "-m", "pyvpnkit.frontends.vpnkit",
            "--ethernet", f"{d}/vpnkit-ethernet.sock", "--mtu", "1500", *flags,
            "--dns", f"{d}/dns", "--hosts", "/dev/null", "--debug",
            stderr=f,
        )  # fmt: skip
    vk = Vpnkit(proc, d, log)
    up = wait_for(lambda: os.path.exists(f"{d}/vpnkit-ethernet.sock") or proc.poll() is not None)
    assert up and vk.alive() is None, vk.alive() or "no --ethernet socket"
    return vk


def parent_and_child(vk: Vpnkit) -> tuple[vmclient.StreamIO, Guest, bytes]:
    """The two handshakes with one UUID; both must name the same VIF."""
    parent_io, mac, ip = vmclient.rootlesskit_parent(vk.url, UUID)
    child_io, hello = vmclient.connect_vpnkit(vk.url, UUID)
    assert hello.vif.mac == mac and hello.vif.mtu == 1500
    child = Guest(child_io, mac, "child")
    assert child.dhcp().ip == ip  # the address the parent configured stays the child's
    return parent_io, child, ip


def read_pcap(sock: socket.socket) -> list[bytes]:
    sock.settimeout(2)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    frames, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<IIII", data, pos)[2]
        frames.append(data[pos + 16 : pos + 16 + caplen])
        pos += 16 + caplen
    return frames


def test_rootlesskit_handshakes_dhcp_arp_dns_download(netenv: NetEnv, tmpdir_short: str) -> None:
    _p, port = netenv.start_helper("host", "tcp_server.py", "127.0.0.1", "0")
    vk = start_vpnkit(netenv, tmpdir_short, "--pcap", f"{tmpdir_short}/pcap.sock")
    capture = socket.socket(socket.AF_UNIX)
    capture.connect(f"{tmpdir_short}/pcap.sock")
    parent_io, child, ip = parent_and_child(vk)
    try:
        assert child.gateway() == GATEWAY_MAC
        body = child.fetch(HOST_ALIAS, int(port), f"GET {SIZE}\n".encode())
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(SIZE)).digest()

        query = dns.message.make_query("www.example.test", "A")
        child.send_udp(GATEWAY_MAC, GATEWAY, 40053, 53, query.to_wire())
        _mac, src, _sport, answer = child.recv_udp(40053)
        rrs = dns.message.from_wire(answer).find_rrset(
            dns.message.ANSWER, dns.name.from_text("www.example.test"), 1, dns.rdatatype.A
        )
        assert src == GATEWAY and [r.address for r in rrs] == [WORLD_IP]

        # Nothing went to the parent's connection once the child had connected.
        assert parent_io.recv(0.3) is None
    finally:
        child.close()
        parent_io.close()
    frames = read_pcap(capture)
    capture.close()
    assert any(f[6:12] == child.mac for f in frames) and any(f[6:12] == GATEWAY_MAC for f in frames)
    assert vk.stop() == 0, vk.log.read_text()
    assert not os.path.exists(f"{tmpdir_short}/vpnkit-ethernet.sock")


def test_host_ip_zero_refuses_the_host_alias(netenv: NetEnv, tmpdir_short: str) -> None:
    _p, port = netenv.start_helper("host", "tcp_server.py", "127.0.0.1", "0")
    _w, world_port = netenv.start_helper("world", "tcp_server.py", WORLD_IP, "0")
    vk = start_vpnkit(netenv, tmpdir_short, "--host-ip", "0.0.0.0")
    parent_io, child, _ip = parent_and_child(vk)
    try:
        with pytest.raises(ConnectionError, match="Reset"):
            child.fetch(HOST_ALIAS, int(port), b"GET 10\n", timeout=10)
        body = child.fetch(socket.inet_aton(WORLD_IP), int(world_port), f"GET {SIZE}\n".encode())
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(SIZE)).digest()
    finally:
        child.close()
        parent_io.close()
    assert vk.alive() is None, vk.alive()


def test_usage_error_from_the_command(tmpdir_short: str) -> None:
    out = subprocess.run(
        [*stack_python(), "-m", "pyvpnkit.frontends.vpnkit", "--ethernet", f"{tmpdir_short}/e.sock",
         "--http", f"{tmpdir_short}/http.json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 124
    assert out.stderr == (f"pyvpnkit-vpnkit: --http {tmpdir_short}/http.json: "
                          "No such file or directory\n")
