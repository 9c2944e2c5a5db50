"""Issue 5 end to end: every VM transport through the real stack, and several VMs on one switch.

`pyvpnkit run --listen-...` runs in the test-made host namespace; the "VMs"
are tests/integration/vmclient.py guests that speak each transport's framing,
get an address with DHCP, ARP for the gateway and download through the NAT
from a server on the host namespace's 127.0.0.1 (via the host alias).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from pyvpnkit.api.client import ApiClient
from pyvpnkit.core.switch.ippool import mac_for_uuid
from pyvpnkit.wire.framing import QEMU, U16LE
from tests.integration import vmclient
from tests.integration.helpers.tcp_server import pattern
from tests.integration.netenv import (
    FOREIGN_RUN,
    WORLD_IP,
    NetEnv,
    exec_args,
    stack_python,
    wait_for,
)
from tests.integration.vmclient import Guest, LinkClosed, VifRefused

SIZE = 100_000
HOST_ALIAS = socket.inet_aton("192.168.65.2")
GATEWAY = socket.inet_aton("192.168.65.1")
GATEWAY_MAC = bytes.fromhex("f616 36bc f9c6")
QEMU_TCP_PORT = 47001  # in the test's own namespace: nothing else listens there
VMCLIENT = Path(vmclient.__file__)
UUID_A = "6f1b2c3d-0000-4000-8000-00000000000a"
UUID_B = "6f1b2c3d-0000-4000-8000-00000000000b"


@dataclass
class Switch:
    env: NetEnv
    proc: subprocess.Popen[bytes]
    dir: str
    server_port: int
    log: Path

    def url(self, kind: str) -> str:
        return {
            "qemu": f"unix://{self.dir}/qemu.sock",
            "qemu-tcp": f"tcp://127.0.0.1:{QEMU_TCP_PORT}",
            "vpnkit": f"unix://{self.dir}/vpnkit.sock",
            "bess": f"unixpacket://{self.dir}/bess.sock",
            "vfkit": f"unixgram://{self.dir}/vfkit.sock",
        }[kind]

    def guest(self, mac: bytes | None = None, name: str = "vm") -> Guest:
        """A qemu-framed guest dialled from the test process (unix paths cross namespaces)."""
        return Guest(vmclient.connect_qemu(self.url("qemu")), mac or vmclient.random_mac(), name)

    def vpnkit_guest(
        self, uuid: str | None, preferred_ip: bytes | None = None, name: str = "vm"
    ) -> tuple[Guest, vmclient.VpnkitHello]:
        io, hello = vmclient.connect_vpnkit(self.url("vpnkit"), uuid, preferred_ip)
        return Guest(io, hello.vif.mac, name), hello

    def fetch(self, guest: Guest) -> bytes:
        return guest.fetch(HOST_ALIAS, self.server_port, f"GET {SIZE}\n".encode())

    def alive(self) -> str | None:
        """None while pyvpnkit runs; otherwise its exit status and log."""
        code = self.proc.poll()
        return None if code is None else f"pyvpnkit exited {code}:\n{self.log.read_text()}"


def _start_switch(env: NetEnv, extra: tuple[str, ...] = ()) -> Switch:
    d = tempfile.mkdtemp(prefix="pvk-")  # short: unix socket paths must fit 108 bytes
    _p, port = env.start_helper("host", "tcp_server.py", "127.0.0.1", "0")
    log = Path(d) / "pyvpnkit.log"
    with log.open("wb") as f:
        proc = env.start(
            "host",
            *stack_python(),
            "-m",
            "pyvpnkit",
            "run",
            *exec_args(),
            "--log-level",
            "info",
            "--api",
            f"unix://{d}/api.sock",
            "--listen-qemu",
            f"unix://{d}/qemu.sock",
            "--listen-qemu",
            f"tcp://127.0.0.1:{QEMU_TCP_PORT}",
            "--listen-vpnkit",
            f"unix://{d}/vpnkit.sock",
            # macOS has no AF_UNIX SOCK_SEQPACKET, so no bess.
            *(() if FOREIGN_RUN else ("--listen-bess", f"unixpacket://{d}/bess.sock")),
            "--listen-vfkit",
            f"unixgram://{d}/vfkit.sock",
            *extra,
            stderr=f,
        )
    sw = Switch(env, proc, d, int(port), log)
    # Listeners start in option order; the vfkit socket is the last one.
    ok = wait_for(lambda: os.path.exists(f"{d}/vfkit.sock") or proc.poll() is not None, 15)
    assert ok and sw.alive() is None, sw.alive() or "pyvpnkit did not start listening"
    return sw


@pytest.fixture
def switch(netenv: NetEnv) -> Iterator[Switch]:
    sw = _start_switch(netenv)
    try:
        yield sw
    finally:
        netenv.close()  # stops pyvpnkit before its socket directory goes
        shutil.rmtree(sw.dir, ignore_errors=True)


def _expected_sha() -> str:
    return hashlib.sha256(pattern(SIZE)).hexdigest()


def _check_lease(lease: vmclient.Lease) -> None:
    assert lease.ip[:3] == b"\xc0\xa8\x41" and 3 <= lease.ip[3] <= 254, lease
    assert lease.router == GATEWAY and lease.dns == GATEWAY, lease
    assert lease.netmask == b"\xff\xff\xff\x00" and lease.mtu == 1500, lease


# -- every transport ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["qemu", "qemu-tcp", "vpnkit", "bess", "vfkit"])
def test_transport_dhcp_arp_and_tcp(switch: Switch, kind: str) -> None:
    """The guest runs in the host namespace: tcp://127.0.0.1 is only reachable there."""
    if kind == "bess" and FOREIGN_RUN:
        pytest.skip("macOS has no AF_UNIX SOCK_SEQPACKET")
    extra: list[str] = []
    if kind == "vpnkit":
        extra = ["--uuid", UUID_A]
    elif kind == "vfkit":
        extra = ["--own-path", f"{switch.dir}/vm-vfkit.sock"]
    out = switch.env.run_in(
        "host",
        sys.executable,
        str(VMCLIENT),
        kind.removesuffix("-tcp"),
        switch.url(kind),
        "--fetch",
        f"192.168.65.2:{switch.server_port}:{SIZE}",
        *extra,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr + switch.log.read_text()
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ip"] == "192.168.65.3", res  # a fresh switch hands out the pool's first address
    assert res["router"] == "192.168.65.1" and res["dns"] == "192.168.65.1", res
    assert res["netmask"] == "255.255.255.0" and res["mtu"] == 1500, res
    assert res["gateway_mac"] == GATEWAY_MAC.hex(":"), res
    assert res["bytes"] == SIZE and res["sha256"] == _expected_sha(), res
    if kind == "vpnkit":
        assert res["server_version"] == 22, res
        assert res["vif_mtu"] == 1500 and res["vif_max_packet"] == 1550, res
        assert res["mac"] == mac_for_uuid(UUID_A).hex(":"), res
    assert switch.alive() is None, switch.alive()


def test_stdio_transport(netenv: NetEnv) -> None:
    """`run --listen-stdio`: u16-LE frames on the child's stdin/stdout, no handshake."""
    _p, port = netenv.start_helper("host", "tcp_server.py", "127.0.0.1", "0")
    proc = netenv.start(
        "host",
        *stack_python(),
        "-m",
        "pyvpnkit",
        "run",
        *exec_args(),
        "--listen-stdio",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    guest = Guest(
        vmclient.pipe_io(proc.stdout.fileno(), proc.stdin.fileno()), vmclient.random_mac(), "stdio"
    )
    lease = guest.dhcp(timeout=15)  # the first frame also waits for the interpreter to start
    _check_lease(lease)
    assert lease.ip == socket.inet_aton("192.168.65.3")
    assert guest.gateway() == GATEWAY_MAC
    body = guest.fetch(HOST_ALIAS, int(port), f"GET {SIZE}\n".encode())
    assert hashlib.sha256(body).hexdigest() == _expected_sha()
    assert guest.ping(GATEWAY, GATEWAY_MAC, b"stdio ping") == GATEWAY_MAC
    assert proc.poll() is None
    # The parent going away (stdin EOF) ends the service, as gvproxy does.
    proc.stdin.close()
    assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""


def test_dns_udp_ping_forwarding_and_api_over_qemu(switch: Switch) -> None:
    """What a Mac's VM uses beyond DHCP and TCP: DNS, UDP and ping out, a published port,
    the API (its /stats reports the host's capabilities, the foreign host's under the stand-in)."""
    _p, echo_port = switch.env.start_helper("world", "udp_echo.py", WORLD_IP)
    guest = switch.guest(name="services")
    try:
        lease = guest.dhcp()
        gw_mac = guest.gateway()
        query = dns.message.make_query("host.docker.internal", "A")
        guest.send_udp(gw_mac, GATEWAY, 40053, 53, query.to_wire())
        answer = dns.message.from_wire(guest.recv_udp(40053)[3])
        assert [r.to_text() for r in answer.find_rrset(
            answer.answer, answer.question[0].name, 1, dns.rdatatype.A)] == ["192.168.65.2"]
        world = socket.inet_aton(WORLD_IP)
        guest.send_udp(gw_mac, world, 40001, int(echo_port), b"to the world")
        assert guest.recv_udp(40001)[1:] == (world, int(echo_port), b"to the world")
        assert guest.ping(world, gw_mac, b"ping the world") == gw_mac
        assert hashlib.sha256(switch.fetch(guest)).hexdigest() == _expected_sha()

        api = ApiClient(f"unix://{switch.dir}/api.sock")
        local = "127.0.0.1:47002"
        body = {"local": local, "remote": f"{socket.inet_ntoa(lease.ip)}:5353", "protocol": "udp"}
        assert api.request("POST", "/services/forwarder/expose", body)[0] == 200
        client = switch.env.start(
            "host", sys.executable, "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.settimeout(10); s.sendto(b'published', ('127.0.0.1', 47002)); print(s.recv(99))",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        _mac, src, sport, data = guest.recv_udp(5353, timeout=10)
        assert data == b"published"
        guest.send_udp(gw_mac, src, 5353, sport, b"published back")
        out, _ = client.communicate(timeout=10)
        assert out.strip() == b"b'published back'"

        status, data = api.request("GET", "/stats")
        platform = json.loads(data)["platform"]
        assert status == 200 and platform["selector"] == ("poll" if FOREIGN_RUN else "epoll")
        if FOREIGN_RUN:  # the stand-in took effect in the stack's Python
            assert not platform["namespaces"] and not platform["ip_recverr"], platform
            assert platform["tcp_keepalive_idle"] == "TCP_KEEPALIVE", platform
    finally:
        guest.close()
    assert switch.alive() is None, switch.alive()


# -- several VMs on one switch --------------------------------------------------------


def _serve_in_background(guest: Guest, seconds: float) -> threading.Thread:
    """Let ``guest`` answer ARP and pings while the test drives another guest."""
    t = threading.Thread(target=guest.drain_background, args=(seconds,), daemon=True)
    t.start()
    return t


def test_two_vms_get_own_addresses_and_reach_each_other(switch: Switch) -> None:
    vm1, vm2 = switch.guest(name="vm1"), switch.guest(name="vm2")
    try:
        l1, l2 = vm1.dhcp(), vm2.dhcp()
        _check_lease(l1)
        _check_lease(l2)
        assert l1.ip != l2.ip
        for vm in (vm1, vm2):  # both use the NAT at the same switch
            assert hashlib.sha256(switch.fetch(vm)).hexdigest() == _expected_sha()

        # ARP across the switch: the request is flooded to vm2, vm2's answer comes back.
        t = _serve_in_background(vm2, 2.0)
        assert vm1.arp(l2.ip) == vm2.mac
        assert vm1.ping(l2.ip, vm2.mac, b"vm1 to vm2") == vm2.mac
        t.join()

        # A UDP datagram vm1 -> vm2 crosses as sent (L2 switched, nothing rewritten).
        vm1.send_udp(vm2.mac, l2.ip, 40000, 40001, b"hello vm2")
        src_mac, src_ip, sport, payload = vm2.recv_udp(40001)
        assert (src_mac, src_ip, sport, payload) == (vm1.mac, l1.ip, 40000, b"hello vm2")

        # And the other way round, addressed to the gateway's MAC: routed by IP.
        vm2.send_udp(GATEWAY_MAC, l1.ip, 40002, 40003, b"hello vm1")
        src_mac, src_ip, sport, payload = vm1.recv_udp(40003)
        assert (src_ip, sport, payload) == (l2.ip, 40002, b"hello vm1")
    finally:
        vm1.close()
        vm2.close()
    assert switch.alive() is None, switch.alive()


def test_arp_for_a_quiet_vm_is_answered_by_that_vm_only(switch: Switch) -> None:
    """A VM that only did DHCP has sent no IP packet yet; the gateway must not claim its address."""
    vm1, vm2 = switch.guest(name="vm1"), switch.guest(name="vm2")
    try:
        vm1.dhcp()
        l2 = vm2.dhcp()
        t = _serve_in_background(vm2, 1.5)
        assert vm1.ip is not None
        vm1.send_eth(
            b"\xff" * 6,
            0x0806,
            vmclient.build_arp(vmclient.ARP_REQUEST, vm1.mac, vm1.ip, bytes(6), l2.ip),
        )
        answers: list[bytes] = []
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            frame = vm1.io.recv(left)
            arp = vmclient.arp_of(frame) if frame else None
            if arp is not None and arp.op == vmclient.ARP_REPLY and arp.spa == l2.ip:
                answers.append(arp.sha)
        t.join()
        assert answers == [vm2.mac], [a.hex(":") for a in answers]
    finally:
        vm1.close()
        vm2.close()


def test_returning_mac_gets_its_address_back(switch: Switch) -> None:
    mac = vmclient.random_mac()
    first = switch.guest(mac, "first")
    ip = first.dhcp().ip
    assert hashlib.sha256(switch.fetch(first)).hexdigest() == _expected_sha()
    first.close()

    other = switch.guest(name="other")  # a newcomer while the first VM is away
    assert other.dhcp().ip != ip
    again = switch.guest(mac, "again")
    try:
        assert again.dhcp().ip == ip
        assert hashlib.sha256(switch.fetch(again)).hexdigest() == _expected_sha()
    finally:
        again.close()
        other.close()


def test_vpnkit_uuid_keeps_mac_and_address(switch: Switch) -> None:
    a, hello = switch.vpnkit_guest(UUID_A, name="a")
    mac_a = hello.vif.mac
    assert mac_a == mac_for_uuid(UUID_A) and hello.vif.mtu == 1500
    ip_a = a.dhcp().ip
    a.close()

    b, hello_b = switch.vpnkit_guest(UUID_B, name="b")
    assert hello_b.vif.mac != mac_a
    ip_b = b.dhcp().ip
    assert ip_b != ip_a

    # A third client cannot take A's address by asking for it ...
    with pytest.raises(VifRefused, match="not available"):
        switch.vpnkit_guest("6f1b2c3d-0000-4000-8000-00000000000c", preferred_ip=ip_a)

    # ... and A, reconnecting, gets the same MAC and (by DHCP) the same address.
    a2, hello2 = switch.vpnkit_guest(UUID_A, name="a2")
    try:
        assert hello2.vif.mac == mac_a
        assert a2.dhcp().ip == ip_a
        assert hashlib.sha256(switch.fetch(a2)).hexdigest() == _expected_sha()
    finally:
        a2.close()
        b.close()

    # A client that names a free address gets exactly that one.
    want = socket.inet_aton("192.168.65.77")
    c, _hello = switch.vpnkit_guest("6f1b2c3d-0000-4000-8000-00000000000d", preferred_ip=want)
    try:
        assert c.dhcp().ip == want
    finally:
        c.close()


def _assert_hung_up(io: vmclient.StreamIO) -> None:
    with pytest.raises(LinkClosed):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            io.recv(deadline - time.monotonic())
        raise AssertionError("the switch kept a connection with a bad length prefix")


def test_bad_length_prefix_drops_only_that_client(switch: Switch) -> None:
    """A length beyond any frame: the framing is lost, that client (only) is hung up on."""
    good = switch.guest(name="good")
    try:
        good.dhcp()
        io = vmclient.connect_qemu(switch.url("qemu"))
        io.send_raw(b"\xff\xff\xff\xff")
        _assert_hung_up(io)
        io.close()
        assert hashlib.sha256(switch.fetch(good)).hexdigest() == _expected_sha()
    finally:
        good.close()
    assert switch.alive() is None, switch.alive()


@pytest.mark.parametrize("kind", ["qemu", "vpnkit"])
def test_runt_frames_are_dropped_and_the_link_stays(switch: Switch, kind: str) -> None:
    """0-, 1- and 13-byte frames with intact length prefixes cost only themselves."""
    if kind == "qemu":
        guest = switch.guest(name="runts")
        header = QEMU.header
    else:
        guest, _hello = switch.vpnkit_guest(UUID_B, name="runts")
        header = U16LE.header
    try:
        io = guest.io
        assert isinstance(io, vmclient.StreamIO)
        for n in (0, 1, 13):
            io.send_raw(header.pack(n) + b"r" * n)
        guest.dhcp()
        assert hashlib.sha256(switch.fetch(guest)).hexdigest() == _expected_sha()
    finally:
        guest.close()
    assert switch.alive() is None, switch.alive()


def test_dhcp_pool_exhaustion_gives_no_offer_and_a_log_line(netenv: NetEnv) -> None:
    sw = _start_switch(netenv, ("--highest-ip", "192.168.65.3"))
    first, second = guests = (sw.guest(name="first"), sw.guest(name="second"))
    try:
        assert first.dhcp().ip == socket.inet_aton("192.168.65.3")
        with pytest.raises(TimeoutError):
            second.dhcp(timeout=2)
        assert wait_for(lambda: "DHCP: no free address" in sw.log.read_text(), 5)
        # The VM that has the address is still served.
        assert hashlib.sha256(sw.fetch(first)).hexdigest() == _expected_sha()
    finally:
        for guest in guests:
            guest.close()
        netenv.close()
        shutil.rmtree(sw.dir, ignore_errors=True)
