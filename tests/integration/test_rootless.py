"""Issue 9: pyvpnkit without root — `exec` as an ordinary user, and the slirp4netns
drop-in under Debian's rootlesskit — run by a user these tests create."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netenv import HELPERS, WORLD_IP, NetEnv, exec_args, wait_for
from tests.integration.rootless import User, run, slirp4netns_binary, unusable_reason

_UNUSABLE = unusable_reason()
pytestmark = pytest.mark.skipif(_UNUSABLE is not None, reason=str(_UNUSABLE))
SIZE = 3_000_000  # bytes per download: several windows, still quick
NAME, NAME_IP = "www.example.test", "203.0.113.2"  # from helpers/dns_server.py


def _servers(netenv: NetEnv) -> tuple[str, str]:
    """A download server on the host's loopback and one in the world; their ports."""
    _p, local = netenv.start_helper("host", "tcp_server.py", "127.0.0.1")
    _p, world = netenv.start_helper("world", "tcp_server.py", WORLD_IP)
    return local, world


def _guest_checks(user: User, gateway: str, dns: str, local: str | None, world: str) -> str:
    """Shell run inside the guest: ping, two downloads (JSON lines), one DNS answer."""
    client = f"{sys.executable} {user.home}/tcp_client.py"
    lines = [f"ping -c 1 -W 3 {gateway} >/dev/null && echo PING-OK"]
    if local is not None:
        lines.append(f"{client} get {gateway} {local} {SIZE}")
    lines.append(f"{client} get {WORLD_IP} {world} {SIZE}")
    lines.append(f"echo DNS=$(dig +short +time=2 +tries=2 @{dns} {NAME})")
    return "; ".join(lines)


def _check_output(out: subprocess.CompletedProcess[str], downloads: int) -> None:
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "PING-OK" in text, text + out.stderr
    results = [json.loads(line) for line in text.splitlines() if line.startswith('{"bytes"')]
    assert results == [{"bytes": SIZE, "ok": True}] * downloads, text + out.stderr
    assert f"DNS={NAME_IP}" in text, text + out.stderr
    assert "Traceback" not in out.stderr


# -- pyvpnkit exec ------------------------------------------------------------


def test_exec_as_user(netenv: NetEnv, user: User) -> None:
    """ping the gateway, download from the host's loopback and the world, resolve a name."""
    local, world = _servers(netenv)
    _p, dns_port = netenv.start_helper("host", "dns_server.py")
    script = _guest_checks(user, "192.168.65.2", "192.168.65.1", local, world)
    cmd = user.in_host(netenv, sys.executable, "-m", "pyvpnkit", "exec",
                       *exec_args(int(dns_port)), "--", "sh", "-c", f"id -u; {script}")
    out = run(cmd)
    _check_output(out, downloads=2)
    assert out.stdout.splitlines()[0] == "0"  # root inside its own user namespace


def test_exec_command_dies_with_pyvpnkit(netenv: NetEnv, user: User) -> None:
    """SIGKILL to pyvpnkit takes the command with it (PR_SET_PDEATHSIG)."""
    pidfile = user.home / "cmd.pid"
    cmd = user.in_host(netenv, sys.executable, "-m", "pyvpnkit", "exec", *exec_args(), "--",
                       "sh", "-c", f"echo $$ > {pidfile}; exec sleep 300")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20)
        child = int(pidfile.read_text())
        assert Path(f"/proc/{child}").exists()
        proc.kill()  # nsenter, setpriv and env exec: this is pyvpnkit itself
        proc.wait(10)
        assert wait_for(lambda: not _alive(child), 10), "the command outlived pyvpnkit"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _stops(proc: subprocess.Popen[Any], timeout: float = 10) -> bool:
    """True if PROC ends within TIMEOUT; else its process group is killed."""
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def _terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _stops(proc, timeout)


def _one_line_125(out: subprocess.CompletedProcess[str], words: str) -> None:
    assert out.returncode == 125, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], out.stderr
    assert lines[0].startswith("pyvpnkit: ")


def test_exec_without_user_namespaces_says_why(netenv: NetEnv, user: User) -> None:
    """user.max_user_namespaces=0 (set in an enclosing namespace): one line, exit 125."""
    inner = [sys.executable, "-m", "pyvpnkit", "exec", *exec_args(), "--", "true"]
    env_args = [e for e in user.env() if e.startswith("PYTHONPATH=")]
    cmd = ["nsenter", f"--net=/run/netns/{netenv.host}", sys.executable,
           str(HELPERS / "userns_limit.py"), str(user.uid), str(user.gid),
           "env", "-i", *user.env(), *inner]
    out = run(cmd, env={**os.environ, **dict(e.split("=", 1) for e in env_args)})
    _one_line_125(out, "user.max_user_namespaces=0")


def test_exec_without_tun_device_says_why(netenv: NetEnv, user: User) -> None:
    inner = " ".join(user.cmd(sys.executable, "-m", "pyvpnkit", "exec", *exec_args(), "--",
                              "true"))
    cmd = ["nsenter", f"--net=/run/netns/{netenv.host}", "unshare", "-m", "sh", "-c",
           f"mount -t tmpfs none /dev/net && exec {inner}"]
    _one_line_125(run(cmd), "/dev/net/tun is missing")


# -- rootlesskit --net=slirp4netns --slirp4netns-binary=pyvpnkit-slirp4netns ----------


def _rootlesskit(netenv: NetEnv, user: User, resolv: Path, *args: str) -> list[str]:
    """rootlesskit as USER in the host namespace, seeing RESOLV as /etc/resolv.conf."""
    state = user.home / f"rk-{os.urandom(4).hex()}"
    inner = user.cmd(
        "rootlesskit", f"--state-dir={state}", "--net=slirp4netns",
        f"--slirp4netns-binary={slirp4netns_binary(user)}", "--copy-up=/etc", *args,
    )
    return ["nsenter", f"--net=/run/netns/{netenv.host}", "unshare", "-m", "sh", "-c",
            f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh", *inner]


def _resolv(user: User) -> Path:
    """The host's resolv.conf for the drop-in: the test DNS server on 127.0.0.1:53."""
    path = user.home / "resolv.conf"
    path.write_text("nameserver 127.0.0.1\n")
    path.chmod(0o644)
    return path


needs_rootlesskit = pytest.mark.skipif(shutil.which("rootlesskit") is None,
                                       reason="needs rootlesskit")


@needs_rootlesskit
@pytest.mark.parametrize("loopback", [True, False], ids=["host-loopback", "no-host-loopback"])
def test_rootlesskit_slirp4netns(netenv: NetEnv, user: User, loopback: bool) -> None:
    local, world = _servers(netenv)
    netenv.start_helper("host", "dns_server.py", "53")
    # with host loopback also confined, as rootlesskit's --slirp4netns-sandbox/seccomp do
    extra = (["--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"] if loopback
             else ["--disable-host-loopback"])
    script = _guest_checks(user, "10.0.2.2", "10.0.2.3", local if loopback else None, world)
    if not loopback:  # 10.0.2.2 must not reach the host's 127.0.0.1
        script += f"; {sys.executable} {user.home}/tcp_client.py refused 10.0.2.2 {local}"
    out = run(_rootlesskit(netenv, user, _resolv(user), *extra, "sh", "-c", script))
    _check_output(out, downloads=2 if loopback else 1)
    if not loopback:  # as with slirp4netns: an unreachable network (ENETUNREACH)
        assert "[Errno 101]" in json.loads(out.stdout.splitlines()[-1])["error"], out.stdout


@needs_rootlesskit
def test_rootlesskit_port_driver_slirp4netns(netenv: NetEnv, user: User) -> None:
    """`-p 127.0.0.1:PORT:PORT/tcp` through the API socket: a host client reaches the guest,
    with the sandbox and seccomp filter in force."""
    port = "18765"
    server = f"{sys.executable} {user.home}/tcp_server.py 0.0.0.0 {port}"
    cmd = _rootlesskit(netenv, user, _resolv(user), "--port-driver=slirp4netns",
                       # "auto": rootlesskit finds both flags in our --help and passes them
                       "--slirp4netns-sandbox=auto", "--slirp4netns-seccomp=auto",
                       "-p", f"127.0.0.1:{port}:{port}/tcp", "sh", "-c", f"exec {server}")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == port, proc.stderr.read() if proc.stderr else ""
        got: dict[str, object] = {}

        def fetched() -> bool:
            out = netenv.run_in("host", sys.executable, str(HELPERS / "tcp_client.py"), "get",
                                "127.0.0.1", port, str(SIZE), check=False, timeout=30)
            got.update(json.loads(out.stdout) if out.returncode == 0 else {"err": out.stderr})
            return got.get("ok") is True

        assert wait_for(fetched, 20, 0.3), got
        [drop_in] = _drop_ins(user)
        cmdline = Path(f"/proc/{drop_in}/cmdline").read_bytes().split(b"\0")
        assert b"--enable-sandbox" in cmdline and b"--enable-seccomp" in cmdline, str(cmdline)
        _assert_confined(drop_in)
    finally:
        _terminate(proc, 10)


# -- rootless podman with network_cmd_path = pyvpnkit-slirp4netns ----------------------

CONTAINERS_CONF = """[engine]
network_cmd_path = "{helper}"
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
STORAGE_CONF = """[storage]
driver = "vfs"
rootless_storage_path = "{home}/storage"
runroot = "{home}/run/storage"
"""
APPLETS = ("sh", "httpd", "nc", "sha256sum", "nslookup", "echo", "printf", "sleep")


def _drop_ins(user: User) -> list[int]:
    """PIDs of USER's pyvpnkit-slirp4netns processes."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == user.uid:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                # python -m pyvpnkit.frontends.slirp4netns, or python .../bin/pyvpnkit-slirp4netns
                # (not rootlesskit, whose --slirp4netns-binary names it)
                if b"pyvpnkit.frontends.slirp4netns" in args[:3] or any(
                        a.endswith(b"/pyvpnkit-slirp4netns") for a in args[:2]):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _assert_confined(pid: int) -> None:
    """What --enable-sandbox --enable-seccomp promise, seen from outside."""
    status = _status(pid)
    assert status["NoNewPrivs"].strip() == "1", status
    assert status["Seccomp"].strip() == "2", status  # a filter is loaded


def _busybox_image(dest: Path) -> Path:
    """A tarball of a root filesystem with Debian's busybox and the libraries it needs."""
    root = dest / "rootfs"
    (root / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    shutil.copy(busybox, root / "bin" / "busybox")
    ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True, check=True).stdout
    for lib in [w for w in ldd.split() if w.startswith("/")]:
        (root / lib.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, root / lib.lstrip("/"))
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("hello from the container\n")
    tarball = dest / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
    return tarball


@pytest.mark.skipif(shutil.which("podman") is None or shutil.which("busybox") is None,
                    reason="needs podman and busybox")
def test_podman_network_cmd_path(netenv: NetEnv, user: User) -> None:
    """podman --network slirp4netns:port_handler=slirp4netns: world download, DNS on
    10.0.2.3, and a published port answered through our API socket."""
    import hashlib

    from tests.integration.helpers.tcp_server import pattern

    _p, world = netenv.start_helper("world", "tcp_server.py", WORLD_IP)
    netenv.start_helper("host", "dns_server.py", "53")
    home = user.home
    (home / "containers.conf").write_text(CONTAINERS_CONF.format(helper=slirp4netns_binary(user)))
    (home / "storage.conf").write_text(STORAGE_CONF.format(home=home))
    tarball = _busybox_image(home)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(home)], check=True)
    env = [f"CONTAINERS_CONF={home}/containers.conf",
           f"CONTAINERS_STORAGE_CONF={home}/storage.conf"]

    def podman(*args: str) -> list[str]:
        inner = user.cmd("env", *env, "podman", *args)
        return ["nsenter", f"--net=/run/netns/{netenv.host}", "unshare", "-m", "sh", "-c",
                f'mount --bind {_resolv(user)} /etc/resolv.conf && exec "$@"', "sh", *inner]

    out = run(podman("import", str(tarball), "localhost/pvk-busybox:1"), timeout=60)
    assert out.returncode == 0, out.stderr
    n, port = 200_000, "18766"
    script = (f"printf 'GET {n}\\n' | nc {WORLD_IP} {world} | sha256sum; "
              f"nslookup {NAME} 10.0.2.3; httpd -p 8080 -h /www; echo READY; "
              # PID 1 ignores signals it has no handler for: stop at once on SIGTERM.
              "trap 'exit 0' TERM; while :; do sleep 0.2; done")
    proc = subprocess.Popen(
        podman("run", "--rm", "--network", "slirp4netns:port_handler=slirp4netns",
               "-p", f"127.0.0.1:{port}:8080", "localhost/pvk-busybox:1", "sh", "-c", script),
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while "READY" not in lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        text = "\n".join(lines)
        assert "READY" in lines, text + (proc.stderr.read() if proc.stderr else "")
        assert hashlib.sha256(pattern(n)).hexdigest() in text, text
        assert f"Address: {NAME_IP}" in text or f"Address 1: {NAME_IP}" in text, text
        got: dict[str, str] = {}

        def fetched() -> bool:
            res = netenv.run_in("host", "curl", "-sS", "--max-time", "5",
                                f"http://127.0.0.1:{port}/", check=False, timeout=30)
            got["out"] = res.stdout + res.stderr
            return res.stdout == "hello from the container\n"

        assert wait_for(fetched, 20, 0.3), got
        [drop_in] = _drop_ins(user)  # podman passes both flags when --help lists them
        _assert_confined(drop_in)
    finally:
        _terminate(proc, 20)


# -- the drop-in's own lifecycle (as root: no user namespace to join) ------------------


def _start_drop_in(netenv: NetEnv, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """pyvpnkit-slirp4netns in the host namespace with a ready pipe and an exit pipe;
    returns the process and the write end of the exit pipe."""
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{netenv.host}", sys.executable, "-m",
         "pyvpnkit.frontends.slirp4netns", "-c", "-r", str(ready_w), "-e", str(exit_r), *args],
        pass_fds=(ready_w, exit_r), start_new_session=True,
    )
    os.close(ready_w)
    os.close(exit_r)
    with os.fdopen(ready_r, "rb") as ready:
        assert ready.read() == b"1"  # written once, then closed
    return proc, exit_w


def test_drop_in_path_target_exits_when_namespace_is_removed(netenv: NetEnv) -> None:
    name = f"pvk-s4-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc, exit_w = _start_drop_in(netenv, "--netns-type=path", f"/run/netns/{name}", "tap0")
        ping = subprocess.run(["ip", "netns", "exec", name, "ping", "-c1", "-W3", "10.0.2.2"],
                              capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        subprocess.run(["ip", "netns", "del", name], check=True)
        assert _stops(proc), "still running after its namespace was removed"
        os.close(exit_w)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_drop_in_enable_ipv6_slaac_and_dns_address(netenv: NetEnv) -> None:
    """--enable-ipv6: the guest takes fd00::/64 by SLAAC; fd00::2 and fd00::3 answer echo."""
    name = f"pvk-s6-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    proc = None
    try:
        proc, exit_w = _start_drop_in(netenv, "--enable-ipv6", "--netns-type=path",
                                      f"/run/netns/{name}", "tap0")

        def pinged(target: str) -> bool:
            return subprocess.run(["ip", "netns", "exec", name, "ping", "-6", "-c1", "-W1",
                                   target], capture_output=True, timeout=30).returncode == 0

        assert wait_for(lambda: pinged("fd00::2"), 15, 0.3)
        assert pinged("fd00::3")
        addr = subprocess.run(["ip", "netns", "exec", name, "ip", "-6", "-o", "addr", "show",
                               "tap0", "scope", "global"], capture_output=True, text=True).stdout
        assert "inet6 fd00::" in addr and "/64" in addr, addr
        os.close(exit_w)
        assert _stops(proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_drop_in_pid_target_exit_fd_and_target_exit(netenv: NetEnv) -> None:
    for end in ("exit-fd", "target"):
        target = subprocess.Popen(["unshare", "-n", "sleep", "60"], start_new_session=True)
        try:
            assert wait_for(lambda: os.readlink(f"/proc/{target.pid}/ns/net")  # noqa: B023
                            != os.readlink("/proc/self/ns/net"), 5)
            proc, exit_w = _start_drop_in(netenv, str(target.pid), "tap0")
            if end == "exit-fd":
                os.close(exit_w)
            else:
                target.kill()
            assert _stops(proc), f"still running after the {end} went away"
            assert proc.returncode == 0
            if end == "target":
                os.close(exit_w)
        finally:
            target.kill()
            target.wait()


def test_sandbox_applies_what_help_says(netenv: NetEnv, tmp_path: Path) -> None:
    """As root with --enable-sandbox --enable-seccomp: no_new_privs, capabilities down to
    NET_BIND_SERVICE (+ NET_RAW where ping sockets are refused: ICMP echo needs a raw
    socket), a seccomp filter, a root holding only /etc and /run; and it still serves the
    guest and its API, and removes the API socket at exit (allowed by its Landlock rule)."""
    name = f"pvk-s4-{os.urandom(4).hex()}"
    sock = tmp_path / "api.sock"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc, exit_w = _start_drop_in(netenv, "--enable-sandbox", "--enable-seccomp",
                                      "-a", str(sock), "--netns-type=path",
                                      f"/run/netns/{name}", "tap0")
        _assert_confined(proc.pid)  # nsenter execs the drop-in: same pid
        status = _status(proc.pid)
        ping_sockets = netenv.run_in("host", "cat", "/proc/sys/net/ipv4/ping_group_range")
        low, high = map(int, ping_sockets.stdout.split())
        kept = hex((1 << 10) | (0 if low <= 0 <= high else 1 << 13))
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert hex(int(status[field], 16)) == kept, (field, status[field])
        assert sorted(os.listdir(f"/proc/{proc.pid}/root")) == ["etc", "run"]
        assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
        ping = subprocess.run(["ip", "netns", "exec", name, "ping", "-c1", "-W3", "10.0.2.2"],
                              capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(sock))
            client.sendall(b'{"execute":"list_hostfwd"}')
            client.shutdown(socket.SHUT_WR)
            assert json.loads(client.recv(4096)) == {"return": {"entries": []}}
        os.close(exit_w)
        assert _stops(proc) and proc.returncode == 0
        assert not sock.exists()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
