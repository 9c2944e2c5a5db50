"""pyvpnkit-gvproxy with a namespace as the VM: sshd, -ssh-port, -forward-sock, the API.

The "VM" is a third namespace whose TAP is relayed (helpers/tap_vm.py) into
the drop-in through the API's /connect with qemu framing, MAC
5a:94:ef:e4:0c:ee and gvproxy's address 192.168.127.2. It runs Debian's
sshd (keys made here), a unix-socket echo service (the -forward-dest) and
dig. The drop-in runs in the test's host namespace with gvproxy's defaults,
a test DNS server as upstream and no hosts file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.netenv import FOREIGN_RUN, HELPERS, NetEnv, sh, stack_python, wait_for

SSHD = "/usr/sbin/sshd"
GUEST = "192.168.127.2"
GUEST_MAC = "5a:94:ef:e4:0c:ee"
SSH_PORT = 2223

SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey {d}/host_key
AuthorizedKeysFile {d}/id.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
AllowStreamLocalForwarding yes
"""


@dataclass
class Notifications:
    """A -notification listener: every JSON line received."""

    path: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
            self.messages += [json.loads(line) for line in data.splitlines() if line]

    def seen(self, kind: str, mac: str | None = None) -> bool:
        return any(m["notification_type"] == kind and (mac is None or m.get("mac_address") == mac)
                   for m in self.messages)


@dataclass
class Setup:
    env: NetEnv
    vm: str  # the VM namespace
    d: Path
    notes: Notifications
    gvproxy: subprocess.Popen[bytes]
    tap: subprocess.Popen[bytes]

    def in_vm(self, *args: str, timeout: float = 20) -> str:
        return sh("ip", "netns", "exec", self.vm, *args, timeout=timeout).stdout

    def api(self, method: str, path: str, body: object = None, sock: str = "api.sock") -> str:
        cmd = ["curl", "-sS", "--fail-with-body", "--unix-socket", str(self.d / sock),
               "-X", method, f"http://gvproxy{path}"]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        return sh(*cmd, timeout=10).stdout

    def log(self) -> str:
        return (self.d / "gvproxy.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def gv() -> Iterator[Setup]:
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("needs Debian's openssh-server and openssh-client")
    if shutil.which("dig") is None or shutil.which("socat") is None:
        pytest.skip("needs dig (dnsutils) and socat")
    env = NetEnv()
    vm = f"pvk-vm-{uuid.uuid4().hex[:8]}"
    d = Path(tempfile.mkdtemp(prefix="pvk-gv-"))  # short: unix socket paths
    sh("ip", "netns", "add", vm)
    try:
        for key in ("host_key", "id"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key))
        (d / "sshd_config").write_text(SSHD_CONFIG.format(d=d))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        _dns, dns_port = env.start_helper("host", "dns_server.py")
        notes = Notifications(str(d / "notify.sock"))
        with (d / "gvproxy.log").open("wb") as log:
            gvproxy = env.start(
                "host", *stack_python(), "-m", "pyvpnkit.frontends.gvproxy.cli", "-debug",
                "-listen", f"unix://{d}/api.sock", "-listen-qemu", f"unix://{d}/qemu.sock",
                "-services", f"unix://{d}/svc.sock",
                "--ssh-port", str(SSH_PORT), "-notification", f"unix://{d}/notify.sock",
                "-forward-sock", str(d / "host.sock"), "-forward-dest", str(d / "guest.sock"),
                "-forward-user", "root", "-forward-identity", str(d / "id"),
                "-pid-file", str(d / "gvproxy.pid"),
                "-dns-server", f"127.0.0.1#{dns_port}", "-hosts", "/dev/null",
                stderr=log,
            )  # fmt: skip
        assert wait_for(lambda: notes.seen("ready") or gvproxy.poll() is not None, 20)
        assert gvproxy.poll() is None, (d / "gvproxy.log").read_text()
        tap = subprocess.Popen(
            ["ip", "netns", "exec", vm, sys.executable, str(HELPERS / "tap_vm.py"),
             str(d / "api.sock"), "eth0", GUEST_MAC, "--connect"],
            stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        env.procs.append(tap)
        assert tap.stdout is not None and tap.stdout.readline().strip() == b"ready"
        setup = Setup(env, vm, d, notes, gvproxy, tap)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{GUEST}/24", "dev", "eth0"],
                    ["ip", "route", "add", "default", "via", "192.168.127.1"]):
            setup.in_vm(*cmd)
        env.procs.append(subprocess.Popen(["ip", "netns", "exec", vm, SSHD, "-D", "-e", "-f",
                                           str(d / "sshd_config")], start_new_session=True))
        env.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", vm, "socat", f"UNIX-LISTEN:{d}/guest.sock,fork", "EXEC:cat"],
            start_new_session=True))
        yield setup
    finally:
        env.close()
        # sshd's per-connection children start their own sessions: stop every process
        # left in the VM namespace by its pid.
        for pid in sh("ip", "netns", "pids", vm, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", vm, check=False)
        shutil.rmtree(d, ignore_errors=True)


def test_ssh_port_reaches_the_guest_sshd(gv: Setup) -> None:
    ssh = ["ssh", "-p", str(SSH_PORT), "-i", str(gv.d / "id"), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=10", "root@127.0.0.1", "ip -o -4 addr show eth0"]
    deadline = time.monotonic() + 20
    while True:  # sshd may still be starting
        out = gv.env.run_in("host", *ssh, check=False, timeout=30)
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert out.returncode == 0, out.stderr + gv.log()
    assert f"inet {GUEST}/24" in out.stdout


def test_forward_sock_relays_to_a_guest_unix_socket(gv: Setup) -> None:
    assert wait_for(lambda: (gv.d / "guest.sock").exists() and (gv.d / "host.sock").exists(), 10)
    payload = os.urandom(300_000)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(gv.d / "host.sock"))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close passes through ssh to socat and back
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
    assert got == payload, gv.log()


def test_tunnel_from_the_host_to_the_guest(gv: Setup) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(gv.d / "api.sock"))
        s.sendall(f"POST /tunnel?ip={GUEST}&port=22 HTTP/1.1\r\nHost: unix\r\n"
                  "Content-Length: 0\r\n\r\n".encode())
        got = b""
        while b"\n" not in got[2:]:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
    assert got.startswith(b"OKSSH-2.0-OpenSSH"), got


def test_dns_zones_through_the_api_and_dig_in_the_guest(gv: Setup) -> None:
    def dig(name: str) -> str:
        return gv.in_vm("dig", "+short", "+tries=2", "+time=2", "@192.168.127.1", name).strip()

    assert dig("host.containers.internal") == "192.168.127.254"
    assert dig("gateway.docker.internal") == "192.168.127.1"
    gv.api("POST", "/services/dns/add", {"Name": "apps.test.", "Records": [
        {"Name": "web", "IP": "10.1.2.3"}, {"Regexp": "^api-[0-9]+$", "IP": "10.1.2.4"}]})
    assert dig("web.apps.test") == "10.1.2.3"
    assert dig("api-7.apps.test") == "10.1.2.4"
    status = gv.in_vm("dig", "+tries=1", "@192.168.127.1", "nothing.apps.test")
    assert "status: NXDOMAIN" in status
    # Records for an existing zone are merged in front of the old ones.
    gv.api("POST", "/services/dns/add", {"name": "apps.test.",
                                         "records": [{"name": "web", "ip": "10.9.9.9"}]})
    assert dig("web.apps.test") == "10.9.9.9"
    assert dig("api-7.apps.test") == "10.1.2.4"
    zones = json.loads(gv.api("GET", "/services/dns/all"))
    assert [z["Name"] for z in zones] == ["containers.internal.", "docker.internal.", "apps.test."]
    assert json.loads(gv.api("GET", "/services/dns/all", sock="svc.sock")) == zones
    # Other names go to the upstream server (the test's).
    assert dig("www.example.test") == "203.0.113.2"


def test_api_routes_and_the_gateway_forwarder_api_in_the_guest(gv: Setup) -> None:
    leases = json.loads(gv.api("GET", "/leases"))
    assert leases.get(GUEST) == GUEST_MAC
    assert json.loads(gv.api("GET", "/services/dhcp/leases")) == leases
    assert GUEST_MAC in json.loads(gv.api("GET", "/cam"))
    stats = json.loads(gv.api("GET", "/stats"))
    assert stats["BytesReceived"] > 0 and stats["BytesSent"] > 0
    assert stats["platform"]["selector"] == ("poll" if FOREIGN_RUN else "epoll")  # the stand-in's
    inside = gv.in_vm("curl", "-sS", "--max-time", "10",
                      "http://192.168.127.1/services/forwarder/all")
    assert {"local": f"127.0.0.1:{SSH_PORT}", "remote": f"{GUEST}:22",
            "protocol": "tcp"} in json.loads(inside)
    # -services serves the same API without /connect.
    code = sh("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket",
              str(gv.d / "svc.sock"), "-X", "POST", "http://gvproxy/connect", timeout=10).stdout
    assert code == "404"
    # gvproxy serves only the forwarder there.
    code = gv.in_vm("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                    "http://192.168.127.1/leases")
    assert code == "404"


def test_cloud_metadata_is_refused_at_once(gv: Setup) -> None:
    def rst_sent() -> int:
        return int(json.loads(gv.api("GET", "/stats"))["connections"]["tcp_rst_sent"])

    before = rst_sent()
    started = time.monotonic()
    out = subprocess.run(["ip", "netns", "exec", gv.vm, "curl", "-sS", "--max-time", "5",
                          "http://169.254.169.254/"], capture_output=True, text=True)
    assert out.returncode == 7, out.stderr  # could not connect: an RST, not a timeout
    assert time.monotonic() - started < 4
    assert rst_sent() == before + 1


def test_notifications_and_link_close(gv: Setup) -> None:
    assert gv.notes.seen("ready")
    assert gv.notes.seen("connection_established", GUEST_MAC)
    gv.tap.terminate()
    gv.tap.wait(10)
    assert wait_for(lambda: gv.notes.seen("connection_closed", GUEST_MAC), 10), gv.notes.messages
    assert gv.gvproxy.poll() is None  # the service outlives its VM's connection
    # Exactly the number: podman parses it with strconv.Atoi.
    assert (gv.d / "gvproxy.pid").read_text() == str(gv.gvproxy.pid)


def test_unservable_vm_socket_is_a_hypervisor_error_and_exit_1(netenv: NetEnv) -> None:
    d = Path(tempfile.mkdtemp(prefix="pvk-gv-"))
    try:
        notes = Notifications(str(d / "notify.sock"))
        out = netenv.run_in(
            "host", *stack_python(), "-m", "pyvpnkit.frontends.gvproxy.cli", "-ssh-port", "-1",
            "-listen-qemu", f"unix://{d}/missing-dir/qemu.sock", "-hosts", "/dev/null",
            "-dns-server", "127.0.0.1#9", "-notification", f"unix://{d}/notify.sock",
            check=False, timeout=30,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr and "missing-dir" in out.stderr
        assert wait_for(lambda: notes.seen("hypervisor_error"), 5), notes.messages
        assert not notes.seen("ready")
    finally:
        shutil.rmtree(d, ignore_errors=True)
