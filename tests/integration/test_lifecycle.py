"""Launchers' view of pyvpnkit: --pid-file/--ready-fd once serving, exec's signal
escalation, and what `run --netns NAME` configures in the namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.netenv import NetEnv, exec_args, wait_for

NAMESERVERS = "nameserver 192.168.65.1\nnameserver fd42:7076:6b69::1\n"  # IPv4 first, then IPv6


def test_ready_fd_and_pid_file_written_once_serving(netenv: NetEnv, tmp_path: Path) -> None:
    pid_file = tmp_path / "pvk.pid"
    read_end, write_end = os.pipe()
    proc = netenv.start_pyvpnkit(
        "exec", *exec_args(), "--pid-file", str(pid_file), "--ready-fd", str(write_end),
        "--", "sleep", "30", pass_fds=(write_end,),
    )
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        assert ready.readline() == "ready\n"
        assert ready.read() == ""  # closed after the line
    # pyvpnkit runs under `ip netns exec`, which execs it: the Popen pid is its pid.
    assert pid_file.read_text() == f"{proc.pid}\n"
    proc.send_signal(signal.SIGTERM)  # passed on to sleep, which dies of it
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert not pid_file.exists()


def test_second_term_kills_a_command_that_ignores_signals(netenv: NetEnv) -> None:
    read_end, write_end = os.pipe()
    proc = netenv.start_pyvpnkit(
        "exec", *exec_args(), "--ready-fd", str(write_end),
        "--", "sh", "-c", "trap '' TERM INT; sleep 60", pass_fds=(write_end,),
    )
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        assert ready.readline() == "ready\n"
    time.sleep(0.3)  # let sh install its trap
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    code = proc.wait(15)
    assert code == 128 + signal.SIGKILL
    assert 1.5 < time.monotonic() - start < 10  # the 2 s grace, then SIGKILL


def test_run_netns_name_gets_resolv_conf_until_exit(netenv: NetEnv) -> None:
    resolv = Path(f"/etc/netns/{netenv.world}/resolv.conf")
    proc = netenv.start_pyvpnkit(
        "run", *exec_args(), "--netns", netenv.world, "--search", "corp.test",
        "--ifname", "pvk0",
    )
    assert wait_for(resolv.exists, 15)
    assert resolv.read_text() == NAMESERVERS + "search corp.test\n"
    seen = netenv.run_in("world", "cat", "/etc/resolv.conf").stdout
    assert seen == resolv.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not resolv.exists() and not resolv.parent.exists()


def test_run_netns_resolv_conf_goes_even_after_sigkill_and_runas(netenv: NetEnv) -> None:
    """A root child removes it once the stack is gone: after --runas, after SIGKILL."""
    resolv = Path(f"/etc/netns/{netenv.world}/resolv.conf")
    for extra, sig in ((("--runas", "nobody"), signal.SIGTERM), ((), signal.SIGKILL)):
        proc = netenv.start_pyvpnkit("run", *exec_args(), "--netns", netenv.world,
                                     "--ifname", "pvk0", *extra)
        assert wait_for(resolv.exists, 15)
        time.sleep(0.5)  # past --runas
        proc.send_signal(sig)
        proc.wait(10)
        assert wait_for(lambda: not resolv.parent.exists(), 5), (extra, sig)


def test_exec_resolv_conf_search_follows_options(netenv: NetEnv) -> None:
    def resolv(*args: str) -> str:
        cmd = netenv.pyvpnkit("exec", *exec_args(), *args, "--", "cat", "/etc/resolv.conf")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout

    assert resolv() == NAMESERVERS  # --domain localdomain is not searched
    assert resolv("--domain", "corp.test") == NAMESERVERS + "search corp.test\n"
    assert resolv("--search", "a.test", "--search", "b.test") == (
        NAMESERVERS + "search a.test b.test\n"
    )
