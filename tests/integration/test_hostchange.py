"""Issue 20: the stack follows the host's network as it changes under it.

Each test runs `pyvpnkit run --netns VM` in the test's host namespace and
changes that namespace while the VM works: its resolv.conf (the namespace's
own file under /etc/netns, or a symlink in a private overlay of /etc), its
default route, its address; or it stops the stack with SIGSTOP; or it holds a
connection idle past vpnkit's 300 s. The DNS servers are tagged test servers
in the world namespace; nothing reaches the machine's resolvers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyvpnkit.api.client import ApiClient
from tests.integration.netenv import HELPERS, HOST_WORLD_IP, WORLD_IP, NetEnv, exec_args, wait_for

DNS_A, DNS_B = "203.0.113.53", "203.0.113.54"  # two upstreams in the world namespace
TAG_A, TAG_B = "198.51.100.1", "198.51.100.2"  # what each answers
FAR_IP = "198.51.100.9"  # a world address the host reaches only by its default route


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    vm: str
    log: Path
    api: ApiClient

    def host_network(self) -> dict[str, Any]:
        return self.api.stats()["host_network"]  # type: ignore[no-any-return]


@contextmanager
def stack(
    netenv: NetEnv, tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()
) -> Iterator[Running]:
    """`pyvpnkit run --netns VM ARGS --api ...` for a fresh VM namespace, logging at info."""
    vm = f"pvk-vm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", vm], check=True)
    log = tmp_path / "stack.log"
    api = f"unix://{tmp_path}/api.sock"
    try:
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                [*prefix, *netenv.pyvpnkit("run", "--hosts", "/dev/null", "--log-level", "info",
                                           "--api", api, "--netns", vm, *args)],
                stderr=log_file, start_new_session=True,
            )
        netenv.procs.append(proc)
        assert wait_for(lambda: "pyvpnkit running" in log.read_text(), 15), log.read_text()
        yield Running(proc, vm, log, ApiClient(api))
    finally:
        subprocess.run(["ip", "netns", "del", vm], check=False)
        shutil.rmtree(f"/etc/netns/{vm}", ignore_errors=True)


def world_address(netenv: NetEnv, ip: str) -> None:
    netenv.run_in("world", "ip", "addr", "add", f"{ip}/32", "dev", "lo")


def tagged_dns(netenv: NetEnv) -> None:
    """Two upstreams in the world: DNS_A answers TAG_A to everything, DNS_B TAG_B."""
    for server, tag in ((DNS_A, TAG_A), (DNS_B, TAG_B)):
        world_address(netenv, server)
        netenv.start_helper("world", "tag_dns.py", server, tag)


def ask(vm: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", vm, "dig", "@192.168.65.1", "+short",
                          "+time=1", "+tries=1", "which.test", "A"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def time_until_answer(vm: str, want: str, limit: float = 5.0) -> float:
    start = time.monotonic()
    assert wait_for(lambda: ask(vm) == want, limit, 0.05), f"never answered {want}"
    return time.monotonic() - start


@contextmanager
def host_resolv_conf(netenv: NetEnv, text: str) -> Iterator[Path]:
    """The host namespace's own resolv.conf (what `ip netns exec` shows as /etc/resolv.conf)."""
    path = Path(f"/etc/netns/{netenv.host}/resolv.conf")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        yield path
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig")
def test_resolv_conf_rewritten_in_place(netenv: NetEnv, tmp_path: Path) -> None:
    tagged_dns(netenv)
    with host_resolv_conf(netenv, f"nameserver {DNS_A}\n") as resolv, \
            stack(netenv, tmp_path) as s:
        assert ask(s.vm) == TAG_A
        with open(resolv, "r+") as f:  # in place: the same inode, as a VPN client writes it
            f.truncate(0)
            f.write(f"nameserver {DNS_B}\nsearch vpn.test\n")
        took = time_until_answer(s.vm, TAG_B)
        dns = s.host_network()["dns"]
        # Emptied: the last good list stays, with one warning.
        resolv.write_text("")
        time.sleep(1.5)
        assert ask(s.vm) == TAG_B
        # The guest still asks the stack: its resolv.conf did not change.
        guest = Path(f"/etc/netns/{s.vm}/resolv.conf").read_text()
    print(f"\nin-place rewrite: the guest got the new server's answer {took:.2f} s later")
    assert took < 2.0
    assert dns["upstreams"] == [f"{DNS_B}#53"] and dns["search"] == ["vpn.test"], dns
    assert dns["reloads"] == 1 and dns["watch"] == "inotify" and dns["loaded_at"], dns
    log = s.log.read_text()
    assert log.count(f"DNS upstreams from /etc/resolv.conf: {DNS_B} (search vpn.test)") == 1, log
    assert log.count("names no usable nameserver: keeping the DNS upstreams") == 1, log
    assert guest.startswith("nameserver 192.168.65.1\n")


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig")
def test_resolv_conf_target_replaced_through_a_symlink(netenv: NetEnv, tmp_path: Path) -> None:
    """/etc/resolv.conf -> .../stub-resolv.conf, replaced by rename as systemd-resolved does.

    The stack runs in a private mount namespace whose /etc is an overlay holding
    that symlink, so it reads /etc/resolv.conf as on such a host.
    """
    tagged_dns(netenv)
    run, upper, work = tmp_path / "run", tmp_path / "up", tmp_path / "work"
    for d in (run, upper, work):
        d.mkdir()
    target = run / "stub-resolv.conf"
    target.write_text(f"nameserver {DNS_A}\n")
    (upper / "resolv.conf").symlink_to(target)
    overlay = (f"mount --make-rprivate / && mount -t overlay overlay -o "
               f"lowerdir=/etc,upperdir={upper},workdir={work} /etc && exec \"$@\"")
    with stack(netenv, tmp_path, prefix=("unshare", "-m", "sh", "-c", overlay, "sh")) as s:
        assert ask(s.vm) == TAG_A
        (run / ".stub-resolv.conf.tmp").write_text(f"nameserver {DNS_B}\n")
        os.rename(run / ".stub-resolv.conf.tmp", target)
        took = time_until_answer(s.vm, TAG_B)
        dns = s.host_network()["dns"]
    print(f"\nsymlink target replaced: new server's answer {took:.2f} s later")
    assert took < 2.0
    assert dns["upstreams"] == [f"{DNS_B}#53"] and dns["reloads"] == 1, dns


def test_explicit_dns_server_is_never_overridden(netenv: NetEnv, tmp_path: Path) -> None:
    with host_resolv_conf(netenv, f"nameserver {DNS_A}\n") as resolv, \
            stack(netenv, tmp_path, "--dns-server", DNS_B) as s:
        resolv.write_text(f"nameserver {DNS_A}\nnameserver 203.0.113.55\n")
        time.sleep(1.5)
        dns = s.host_network()["dns"]
    assert dns["upstreams"] == [f"{DNS_B}#53"] and dns["source"] == "--dns-server", dns
    assert dns["watch"] == "none"


def test_arp_probe_for_the_gateway_is_answered(netenv: NetEnv, tmp_path: Path) -> None:
    """A VM that checks whether 192.168.65.1 is free (RFC 5227, arping -D) learns it is not."""
    with stack(netenv, tmp_path, *exec_args()) as s:
        def probe(ip: str) -> tuple[int, float]:
            start = time.monotonic()
            out = subprocess.run(["ip", "netns", "exec", s.vm, "busybox", "arping", "-D", "-f",
                                  "-I", "eth0", "-c", "2", "-w", "3", ip],
                                 capture_output=True, text=True, timeout=10)
            return out.returncode, time.monotonic() - start

        gateway, gateway_s = probe("192.168.65.1")
        alias, _ = probe("192.168.65.2")
        free, _ = probe("192.168.65.9")
        defended = s.host_network()["arp_probes_defended"]
    print(f"\narping -D 192.168.65.1: in use, answered in {gateway_s:.2f} s")
    assert (gateway, alias, free) == (1, 1, 0)
    assert defended >= 2, defended  # the gateway's and the alias's probes, in /stats


# -- routes and addresses ------------------------------------------------------------


class Probe:
    """conn_probe.py in the VM namespace: one command, one answer line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc, self._in, self._out = proc, proc.stdin, proc.stdout

    def send(self, line: str) -> None:
        self._in.write(line + "\n")
        self._in.flush()

    def answer(self) -> str:
        return self._out.readline().strip()

    def __call__(self, line: str) -> str:
        self.send(line)
        return self.answer()


@contextmanager
def probe_client(vm: str, host: str, port: int, echo_timeout: float = 30) -> Iterator[Probe]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", vm, sys.executable, str(HELPERS / "conn_probe.py"), host,
         str(port), str(echo_timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        probe = Probe(proc)
        assert probe.answer() == "connected"
        yield probe
    finally:
        proc.kill()
        proc.wait()


def world_echo_server(netenv: NetEnv) -> int:
    _proc, port = netenv.start_helper("world", "tcp_server.py", "0.0.0.0")
    return int(port)


def test_route_removed_and_restored(netenv: NetEnv, tmp_path: Path) -> None:
    world_address(netenv, FAR_IP)
    port = world_echo_server(netenv)
    with stack(netenv, tmp_path, *exec_args()) as s, probe_client(s.vm, FAR_IP, port) as cmd:
        assert cmd("echo one") == "got one"
        netenv.run_in("host", "ip", "route", "del", "default")
        failed = cmd("connect").split()
        udp = cmd("udp").split()
        start = time.monotonic()
        ping = subprocess.run(["ip", "netns", "exec", s.vm, "ping", "-c", "1", "-W", "3",
                               FAR_IP], capture_output=True, text=True, timeout=10)
        ping_s = time.monotonic() - start
        netenv.run_in("host", "ip", "route", "add", "default", "via", WORLD_IP)
        again = cmd("connect").split()
        held = cmd("echo two")
        routes = s.host_network()["routes"]
    print(f"\nno route: connect failed with {failed[1]} in {failed[2]} s, UDP {udp[1]} in "
          f"{udp[2]} s, ping in {ping_s:.2f} s; "
          f"route back: connect in {again[1]} s")
    assert failed[:2] == ["error", "ENETUNREACH"] and float(failed[2]) < 1.0, failed
    assert udp[:2] == ["error", "ENETUNREACH"] and float(udp[2]) < 1.0, udp
    # ping's own wait is 3 s: the error came from us, not a timeout (the 2 s include
    # starting `ip netns exec ping` on a loaded machine).
    assert ping.returncode != 0 and "Unreachable" in ping.stdout and ping_s < 2.0, ping.stdout
    assert again[0] == "ok" and held == "got two"
    assert routes["errors"].get("ENETUNREACH", 0) >= 2, routes


def test_address_moved(netenv: NetEnv, tmp_path: Path) -> None:
    """The host's address changes under a connection: the VM's side is reset, new ones
    work, and DNS still reaches the same upstream (its socket had the old address)."""
    port = world_echo_server(netenv)
    tagged_dns(netenv)
    veth = "vh" + netenv.host.removeprefix("pvk-h-")
    with stack(netenv, tmp_path, "--dns-server", DNS_A) as s, \
            probe_client(s.vm, WORLD_IP, port) as cmd:
        assert cmd("echo one") == "got one"
        assert ask(s.vm) == TAG_A
        netenv.run_in("host", "ip", "addr", "del", f"{HOST_WORLD_IP}/24", "dev", veth)
        netenv.run_in("host", "ip", "addr", "add", "203.0.113.5/24", "dev", veth)
        netenv.run_in("host", "ip", "route", "replace", "default", "via", WORLD_IP)
        reset = cmd("wait-reset").split()
        again = cmd("connect").split()
        dns_after = ask(s.vm)
        routes = s.host_network()["routes"]
    print(f"\naddress moved: the held connection was reset after {reset[2]} s")
    assert reset[:2] == ["reset", "ECONNRESET"] and float(reset[2]) < 3.0, reset
    assert again[0] == "ok", again
    assert dns_after == TAG_A
    assert routes["vanished_source_resets"] == 1, routes


# -- stops and idle connections (slow) -------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# A longer stop by hand: PYVPNKIT_STOP_SECONDS=3600 pytest -s -k sigstop
STOP = float(os.environ.get("PYVPNKIT_STOP_SECONDS", "60"))


@pytest.mark.slow
def test_sigstop_for_60_s_then_sigcont(netenv: NetEnv, tmp_path: Path) -> None:
    """Stopped for a minute while the VM sends: the data arrives at once after SIGCONT,
    timers catch up once, and the stack is idle again (its CPU over 5 s).

    Keepalive probes after 20 s idle, 3 at most: its deadline falls due during the
    stop, and a catch-up that ran every missed probe would give the connection up.
    """
    port = world_echo_server(netenv)
    with stack(netenv, tmp_path, *exec_args(), "--tcp-keepalive", "20,5,3") as s, \
            probe_client(s.vm, WORLD_IP, port, echo_timeout=STOP + 30) as cmd:
        assert cmd("echo one") == "got one"
        os.kill(s.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(STOP / 2)
            cmd.send("echo two")  # the VM sends while the stack is stopped
            time.sleep(STOP / 2)
        finally:
            os.kill(s.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert cmd.answer() == "got two"
        answer_s = time.monotonic() - resumed
        cpu0 = cpu_seconds(s.proc.pid)
        time.sleep(5)
        idle_cpu = cpu_seconds(s.proc.pid) - cpu0
        assert cmd("echo three") == "got three" and cmd("connect").startswith("ok")
        clock = s.host_network()["clock"]
    print(f"\nSIGSTOP {STOP:.0f} s: echo {answer_s:.2f} s after SIGCONT; CPU over the next 5 s "
          f"{idle_cpu:.2f} s; {clock}")
    assert answer_s < 2.0
    assert idle_cpu < 0.25
    assert clock["catch_ups"] == 1 and STOP - 5 <= clock["longest_stop_s"] < STOP + 10, clock


@pytest.mark.slow
def test_idle_connection_kept_for_310_s(netenv: NetEnv, tmp_path: Path) -> None:
    """No traffic for 310 s, past vpnkit's 300 s: the connection still works both ways."""
    port = world_echo_server(netenv)
    with stack(netenv, tmp_path, *exec_args()) as s, probe_client(s.vm, WORLD_IP, port) as cmd:
        assert cmd("echo before") == "got before"
        time.sleep(310)
        assert cmd("echo after") == "got after"
        flows = s.api.stats()["flows"]
    assert flows["tcp"] == 1, flows
