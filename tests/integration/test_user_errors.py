"""Every mistake a newcomer made (issue 15): one line naming the problem and the value,
a documented exit code (2 usage, 125 setup failed, 126 not executable, 127 not found),
and never a traceback. Each runs as pasted, inside a test-made namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netenv import NetEnv, exec_args

EXEC = ["exec", *exec_args()]


@pytest.fixture(scope="module")
def env() -> Iterator[NetEnv]:
    netenv = NetEnv()
    try:
        yield netenv
    finally:
        netenv.close()


def pyvpnkit(env: NetEnv, *args: str, timeout: float = 30) -> tuple[int, str]:
    """Exit code and the last line of stderr; fails on a traceback anywhere."""
    out = subprocess.run(env.pyvpnkit(*args), capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    return out.returncode, lines[-1] if lines else ""


USAGE_ERRORS = [
    (["--subnet", "10.0.0.0/33"], "--subnet '10.0.0.0/33': not an IPv4 network"),
    (["--subnet", "banana"], "--subnet 'banana': not an IPv4 network"),
    (["--subnet", "fd00::/64"], "--subnet fd00::/64: IPv6 subnets are not supported yet"),
    (["--subnet", "10.0.0.0/30"], "--subnet 10.0.0.0/30: too small"),
    (["--lowest-ip", "192.168.65.200", "--highest-ip", "192.168.65.100"],
     "--lowest-ip 192.168.65.200 is above --highest-ip 192.168.65.100"),
    (["--gateway-ip", "10.0.0.1"], "--gateway-ip 10.0.0.1 is not a host address of --subnet"),
    (["--lowest-ip", "192.168.65.1"], "--gateway-ip 192.168.65.1 is inside the VM pool"),
    (["--gateway-ip", "192.168.65.3"], "--gateway-ip 192.168.65.3 is inside the VM pool"),
    (["--host-ip", "192.168.65.1"], "--gateway-ip and --host-ip are both 192.168.65.1"),
    (["--ifname", "waytoolonginterfacename"],
     "--ifname 'waytoolonginterfacename': an interface name has 1 to 15"),
    (["--ifname", "lo"], "--ifname 'lo': lo is the namespace's loopback"),
    (["--ifname", ""], "--ifname '': an interface name has 1 to 15"),
    (["--ifname", "a/b"], "--ifname 'a/b': an interface name has no '/'"),
    (["--udp-idle-timeout", "0"], "--udp-idle-timeout '0': must be a number of seconds above 0"),
    (["--udp-idle-timeout", "-1"], "--udp-idle-timeout '-1': must be a number of seconds"),
    (["--udp-max-flows", "0"], "--udp-max-flows '0': must be a whole number"),
    (["--udp-max-flows", "-3"], "--udp-max-flows '-3': must be a whole number"),
    (["--pcap-snaplen", "0"], "--pcap-snaplen '0': must be a whole number from 1"),
    (["--pcap-snaplen", "-1"], "--pcap-snaplen '-1': must be a whole number"),
    (["--dns-server", "127.0.0.1#70000"],
     "--dns-server '127.0.0.1#70000': port 70000 is not in 1..65535"),
    (["--mtu", "abc"], "--mtu 'abc': MTU must be a whole number from 576 to 65520"),
    (["--mtu", "575"], "--mtu '575': MTU must be a whole number from 576 to 65520"),
    (["--tcp-keepalive", "1,2"], "--tcp-keepalive '1,2': use IDLE[,INTERVAL,COUNT]"),
    (["--ready-fd", "99"], "pyvpnkit: --ready-fd 99: not an open file descriptor"),
]


@pytest.mark.parametrize(
    ("args", "line"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS]
)
def test_bad_option_values_are_usage_errors(env: NetEnv, args: list[str], line: str) -> None:
    code, last = pyvpnkit(env, *EXEC, *args, "--", "true")
    assert code == 2 and line in last, last


ONE_LINE = [
    (["exec", "--ifname", "waytoolonginterfacename", "--", "true"],
     "pyvpnkit exec: --ifname 'waytoolonginterfacename': an interface name has 1 to 15 "
     "characters (see --help)"),
    (["run", "--mtu", "abc", "--tap", "x"],
     "pyvpnkit run: --mtu 'abc': MTU must be a whole number from 576 to 65520 (see --help)"),
    (["exec", "--bogus", "--", "true"], "pyvpnkit: unrecognized arguments: --bogus (see --help)"),
]


@pytest.mark.parametrize(("args", "line"), ONE_LINE, ids=[" ".join(a) for a, _ in ONE_LINE])
def test_argparse_errors_are_one_line(args: list[str], line: str) -> None:
    """The whole of stderr is the one line: no usage block before it (issue 21)."""
    out = subprocess.run([sys.executable, "-m", "pyvpnkit", *args],
                         capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stderr) == (2, line + "\n")


def test_vpnkit_flag_errors_are_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "pyvpnkit.frontends.vpnkit", "--mtu", "x"],
                         capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stderr) == (
        124, "pyvpnkit-vpnkit: --mtu: 'x' is not an integer (see --help)\n")


def test_forwards_file_errors(env: NetEnv, tmp_path: Path) -> None:
    code, last = pyvpnkit(env, *EXEC, "--forwards", "/nonexistent.json", "--", "true")
    assert (code, last) == (
        125, "pyvpnkit: --forwards /nonexistent.json: No such file or directory")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, last = pyvpnkit(env, *EXEC, "--forwards", str(bad), "--", "true")
    assert code == 2 and last.startswith(f"pyvpnkit: --forwards {bad}: not JSON"), last
    entries = [
        ([{"protocol": "tcp", "dst_port": 80, "path": "/x"}], 'entry 0: missing "dst_prefix"'),
        (["10.0.0.0/8"], 'entry 0: expected an object with dst_prefix, dst_port and path, got "10'),
        ([{"dst_prefix": "10.0.0.0/8", "dst_port": 80, "path": "/x"},
          {"dst_prefix": "10.0.0.0/8", "dst_port": "http", "path": "/x"}],
         "entry 1: dst_port 'http' is not a port number 1..65535"),
        ([{"dst_prefix": "10.0.0.300/8", "dst_port": 80, "path": "/x"}],
         "entry 0: dst_prefix '10.0.0.300/8' is not an IPv4 prefix"),
        ([{"protocol": "udp", "dst_prefix": "10.0.0.0/8", "dst_port": 80, "path": "/x"}],
         "entry 0: protocol 'udp': only \"tcp\" is supported"),
    ]
    for rules, line in entries:
        bad.write_text(json.dumps(rules))
        code, last = pyvpnkit(env, *EXEC, "--forwards", str(bad), "--", "true")
        assert code == 2 and last.startswith(f"pyvpnkit: --forwards {bad} {line}"), last


def test_pcap_unwritable(env: NetEnv) -> None:
    code, last = pyvpnkit(env, *EXEC, "--pcap", "/nonexistent/x.pcap", "--", "true")
    assert (code, last) == (125, "pyvpnkit: --pcap /nonexistent/x.pcap: No such file or directory")


def test_command_not_found_or_not_executable(env: NetEnv, tmp_path: Path) -> None:
    assert pyvpnkit(env, *EXEC, "--", "/no/such/cmd") == (
        127, "pyvpnkit: /no/such/cmd: No such file or directory")
    assert pyvpnkit(env, *EXEC, "--", "no-such-command-pvk") == (
        127, "pyvpnkit: no-such-command-pvk: command not found")
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    assert pyvpnkit(env, *EXEC, "--", str(plain)) == (
        126, f"pyvpnkit: {plain}: Permission denied (not executable)")
    if not os.listdir("/proc/sys/fs/binfmt_misc") or set(
        os.listdir("/proc/sys/fs/binfmt_misc")
    ) <= {"register", "status"}:
        plain.chmod(0o755)
        assert pyvpnkit(env, *EXEC, "--", str(plain)) == (
            126, f"pyvpnkit: {plain}: Exec format error (neither ELF nor a #! script)")


def test_api_socket_in_missing_directory(env: NetEnv) -> None:
    code, last = pyvpnkit(env, *EXEC, "--api", "unix:///nonexistent/dir/a.sock", "--", "true")
    assert code == 125 and last.endswith(
        "cannot serve --api unix:///nonexistent/dir/a.sock: No such file or directory"), last


def test_listen_port_in_use(env: NetEnv) -> None:
    holder = env.start("host", "python3", "-c", "import socket,time; s=socket.socket(); "
                       "s.bind(('127.0.0.1', 47999)); s.listen(); print('ok', flush=True); "
                       "time.sleep(60)", stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"ok"
    code, last = pyvpnkit(env, "run", *exec_args(), "--listen-qemu", "tcp://127.0.0.1:47999")
    assert code == 125 and last.endswith(
        "cannot listen on --listen-qemu tcp://127.0.0.1:47999: Address already in use"), last


def test_run_netns_missing_or_served(env: NetEnv) -> None:
    assert pyvpnkit(env, "run", *exec_args(), "--netns", "nosuchns-pvk") == (
        125, "pyvpnkit: --netns nosuchns-pvk: no such network namespace (/run/netns/nosuchns-pvk)")
    assert pyvpnkit(env, "run", *exec_args(), "--netns", "/proc/999999/ns/net") == (
        125, "pyvpnkit: --netns /proc/999999/ns/net: no such network namespace "
        "(/proc/999999/ns/net)")
    assert pyvpnkit(env, "run", *exec_args(), "--netns", "/etc/hostname") == (
        125, "pyvpnkit: --netns /etc/hostname: /etc/hostname is not a network namespace")
    first = env.start_pyvpnkit("run", *exec_args(), "--netns", env.world, "--ifname", "pvk0")
    try:
        # The first one serves pvk0 once the interface exists in the world namespace.
        for _ in range(100):
            if env.run_in("world", "ip", "link", "show", "pvk0", check=False).returncode == 0:
                break
            subprocess.run(["sleep", "0.1"])
        assert pyvpnkit(env, "run", *exec_args(), "--netns", env.world, "--ifname", "pvk0") == (
            125, f"pyvpnkit: --netns {env.world}: TAP pvk0 is already in use "
            "(served by another pyvpnkit?)")
    finally:
        first.terminate()
        first.wait(10)


def test_run_tap_that_does_not_exist(env: NetEnv) -> None:
    assert pyvpnkit(env, "run", *exec_args(), "--tap", "nosuchtap") == (
        125, "pyvpnkit: --tap nosuchtap: no such interface (create it first: "
        "ip tuntap add nosuchtap mode tap)")
