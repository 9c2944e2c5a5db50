"""Issue 21: what slirp4netns's own test scripts (tests/*.sh upstream) check, in our words.

Each test runs pyvpnkit-slirp4netns as an unprivileged user, as those scripts
do, against a target made with `unshare -r -n` by that user, inside the
test's host namespace. The guest side is driven as root with nsenter.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netenv import HOST_WORLD_IP, NetEnv, wait_for
from tests.integration.rootless import User, run, slirp4netns_binary, unusable_reason

_UNUSABLE = unusable_reason()
pytestmark = pytest.mark.skipif(_UNUSABLE is not None, reason=str(_UNUSABLE))
NAME, NAME_IP = "www.example.test", "203.0.113.2"  # from helpers/dns_server.py


class Guest:
    """A target namespace of USER's (`unshare -r -n sleep`) and the drop-ins serving it."""

    def __init__(self, netenv: NetEnv, user: User) -> None:
        self.netenv, self.user = netenv, user
        self.procs: list[subprocess.Popen[bytes]] = []
        # nsenter, setpriv, env and unshare exec in turn: the pid is sleep's
        self.target = self._start(user.in_host(netenv, "unshare", "-r", "-n", "sleep", "300"))
        self.pid = self.target.pid
        assert wait_for(self._sleeping, 10)

    def _sleeping(self) -> bool:
        """unshare has made the namespaces once it has exec'd sleep."""
        return Path(f"/proc/{self.pid}/comm").read_text().strip() == "sleep"

    def _start(self, cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL,
                                **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def drop_in(self, *args: str, pre: tuple[str, ...] = (), **kw: object
                ) -> subprocess.Popen[bytes]:
        """pyvpnkit-slirp4netns ARGS as the user in the host namespace."""
        cmd = self.user.in_host(self.netenv, slirp4netns_binary(self.user), *args)
        return self._start([*pre, *cmd] if pre else cmd, **kw)

    def sh(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """ARGS as root in the target's network namespace."""
        return run(["nsenter", "-t", str(self.pid), "-n", *args], timeout=timeout)

    def has(self, ifname: str) -> bool:
        return self.sh("ip", "link", "show", ifname).returncode == 0

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait(10)


@pytest.fixture
def guest(netenv: NetEnv, user: User) -> Iterator[Guest]:
    g = Guest(netenv, user)
    try:
        yield g
    finally:
        g.close()


def test_tap_without_configure_dhcp_gives_dot_15(guest: Guest) -> None:
    """No -c: the TAP is made at once and left alone; the guest's DHCP gets 10.0.2.15."""
    if shutil.which("udhcpc") is None:
        pytest.skip("needs udhcpc")
    guest.drop_in(str(guest.pid), "tap0")
    assert wait_for(lambda: guest.has("tap0"), 10, 0.005)
    assert "inet " not in guest.sh("ip", "-4", "addr", "show", "tap0").stdout
    assert guest.sh("ip", "link", "set", "tap0", "up").returncode == 0
    out = guest.sh("timeout", "20", "udhcpc", "-q", "-f", "-n", "-t", "10", "-i", "tap0",
                   "-s", "/bin/true")
    assert out.returncode == 0 and "10.0.2.15" in out.stdout + out.stderr, out


def test_options_after_the_pid_and_the_api_at_once(guest: Guest, user: User) -> None:
    """`-c PID --api-socket PATH tap11` (getopt permutes); the API answers as soon as the
    TAP exists; a socket path longer than sun_path is refused at start."""
    sock = user.home / f"api-{os.urandom(3).hex()}.sock"
    too_long = str(user.home / ("x" * 110))
    refused = run(user.in_host(guest.netenv, slirp4netns_binary(user), "-c", str(guest.pid),
                               "--api-socket", too_long, "tap12"))
    assert refused.returncode != 0
    assert "the specified API socket path is too long" in refused.stderr, refused.stderr
    guest.drop_in("-c", str(guest.pid), "--api-socket", str(sock), "tap11")
    assert wait_for(lambda: guest.has("tap11"), 10, 0.005)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(str(sock))  # listening since the TAP was made
        client.sendall(b'{"execute": "list_hostfwd"}')
        client.shutdown(socket.SHUT_WR)
        assert json.loads(client.recv(4096)) == {"return": {"entries": []}}
    assert "inet 10.0.2.100/24" in guest.sh("ip", "addr", "show", "tap11").stdout


def _connect_errno(guest: Guest, host: str, port: str) -> int:
    code = (f"import socket\ns=socket.socket(socket.AF_INET6 if ':' in {host!r} "
            f"else socket.AF_INET)\ns.settimeout(10)\nprint(s.connect_ex(({host!r}, {port})))")
    out = guest.sh(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_disable_host_loopback_is_an_unreachable_network(guest: Guest) -> None:
    _p, port = guest.netenv.start_helper("host", "tcp_server.py", "127.0.0.1")
    guest.drop_in("-c", "--disable-host-loopback", str(guest.pid), "tap11")
    assert wait_for(lambda: guest.sh("ping", "-c1", "-W1", "10.0.2.2").returncode == 0, 20, 0.2)
    assert _connect_errno(guest, "10.0.2.2", port) == errno.ENETUNREACH


def _peer_server(netenv: NetEnv, bind: str) -> tuple[subprocess.Popen[bytes], str]:
    """A TCP server in the host namespace that prints the address of its first client."""
    family = "socket.AF_INET6" if ":" in bind else "socket.AF_INET"
    code = (f"import socket\ns=socket.socket({family})\ns.bind(({bind!r}, 0))\ns.listen()\n"
            "print(s.getsockname()[1], flush=True)\nc, peer = s.accept()\n"
            "print(peer[0], flush=True)\n")
    proc = netenv.start("host", sys.executable, "-c", code, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


@pytest.mark.parametrize("flag", ["--outbound-addr=203.0.113.1", "--outbound-addr=veth-h",
                                  "--outbound-addr6=2001:db8::1"])
def test_outbound_addr_is_the_source_the_far_end_sees(guest: Guest, flag: str) -> None:
    """Connections to the host loopback come from the chosen address (or interface's)."""
    v6 = flag.startswith("--outbound-addr6")
    if flag.endswith("veth-h"):  # the host namespace's interface towards the world
        links = guest.netenv.run_in("host", "ip", "-o", "-4", "addr", "show").stdout
        ifname = next(line.split()[1] for line in links.splitlines() if HOST_WORLD_IP in line)
        flag = f"--outbound-addr={ifname}"
    server, port = _peer_server(guest.netenv, "::1" if v6 else "127.0.0.1")
    extra = ("--enable-ipv6",) if v6 else ()
    guest.drop_in("-c", *extra, flag, str(guest.pid), "tap11")
    gateway = "fd00::2" if v6 else "10.0.2.2"
    ping = ("ping", "-6") if v6 else ("ping",)
    assert wait_for(lambda: guest.sh(*ping, "-c1", "-W1", gateway).returncode == 0, 30, 0.3)
    assert _connect_errno(guest, gateway, port) == 0
    assert server.stdout is not None
    assert server.stdout.readline().decode().strip() == ("2001:db8::1" if v6 else HOST_WORLD_IP)


def test_sandbox_confinement_as_seen_from_outside(guest: Guest, user: User,
                                                  tmp_path: Path) -> None:
    """--enable-sandbox unprivileged: own user and mount namespaces, root is a tmpfs with
    only /etc and /run, only cap_net_bind_service; it still serves DNS, TCP and the API."""
    guest.netenv.start_helper("host", "dns_server.py", "53")
    resolv = user.home / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    resolv.chmod(0o644)
    _p, port = guest.netenv.start_helper("host", "tcp_server.py", "127.0.0.1")
    sock = user.home / f"api-{os.urandom(3).hex()}.sock"
    r, w = os.pipe()
    pre = ("unshare", "-m", "bash", "-c",
           f'mount --bind {resolv} /etc/resolv.conf && exec "$@" 3>&{w} {w}>&-', "sh")
    err = tmp_path / "stderr"
    with open(err, "wb") as errf:
        proc = guest.drop_in("--ready-fd=3", "--enable-sandbox", "--enable-seccomp", "-c",
                             "--api-socket", str(sock), str(guest.pid), "tap11",
                             pre=pre, pass_fds=(w,), stderr=errf)
    os.close(w)
    with os.fdopen(r, "rb") as ready:
        assert ready.read() == b"1", err.read_text()
    drop_in = proc.pid  # unshare, sh, nsenter, setpriv and env exec in turn
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{drop_in}/status").read_text().splitlines() if ":\t" in line)
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 1 << 10, status
    getpcaps = shutil.which("getpcaps")
    if getpcaps is not None:
        caps = run([getpcaps, str(drop_in)]).stdout + run([getpcaps, str(drop_in)]).stderr
        assert "cap_net_bind_service" in caps and "cap_sys_admin" not in caps, caps
    assert sorted(os.listdir(f"/proc/{drop_in}/root")) == ["etc", "run"]
    for ns in ("user", "mnt"):
        assert os.readlink(f"/proc/{drop_in}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    # and it still works: DNS (record types load lazily), TCP to the host, the API
    dig = guest.sh("dig", "+short", "+time=3", "+tries=3", "@10.0.2.3", NAME)
    assert dig.stdout.strip() == NAME_IP, dig
    assert _connect_errno(guest, "10.0.2.2", port) == 0
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(str(sock))
        client.sendall(b'{"execute":"add_hostfwd","arguments":{"proto":"tcp",'
                       b'"host_addr":"127.0.0.1","host_port":0,"guest_port":80}}')
        client.shutdown(socket.SHUT_WR)
        reply = json.loads(client.recv(4096))
    assert "error" in reply or "return" in reply, reply  # answered, whatever the port
    os.killpg(proc.pid, 15)
    proc.wait(20)
    assert not sock.exists()  # removed through its directory, which the sandbox hides
    assert "Error" not in err.read_text(), err.read_text()
