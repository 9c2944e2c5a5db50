"""Capabilities: probed once, reported by --version; on a foreign host each missing one
costs only the feature that needs it, which says so in one line (issue 25)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pyvpnkit.runtime.capabilities import capabilities

FOREIGN = Path(__file__).resolve().parents[2] / "foreign"


def _python(*args: str, foreign: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if foreign:
        env["PYTHONPATH"] = str(FOREIGN)
    return subprocess.run([sys.executable, *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _pyvpnkit(*args: str, foreign: bool) -> subprocess.CompletedProcess[str]:
    return _python("-m", "pyvpnkit", *args, foreign=foreign)


def test_probed_once() -> None:
    assert capabilities() is capabilities()
    caps = capabilities().as_dict()
    assert caps["system"].startswith(sys.platform)  # type: ignore[union-attr]
    assert caps["icmp"] in ("ping", "raw", "dgram", "none")


def test_version_reports_the_linux_host() -> None:
    out = _pyvpnkit("--version", foreign=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("pyvpnkit ") and "epoll event loop" in lines[1]
    assert "TCP keepalive idle: TCP_KEEPIDLE" in out.stdout


def test_version_reports_what_the_foreign_host_lacks() -> None:
    out = _pyvpnkit("--version", foreign=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "poll event loop" in text and "epoll" not in text
    for line in ("TAP devices (run --tap): no, vnet_hdr offloads: no",
                 "network namespaces (exec, run --netns): no", "IP_RECVERR ICMP errors: no",
                 "SO_PEEK_OFF: no", "seccomp: no", "inotify: no",
                 "TCP keepalive idle: TCP_KEEPALIVE"):
        assert line in text, text


def test_namespace_features_say_what_is_missing_in_one_line() -> None:
    instead = "use run --listen-qemu, --listen-vfkit or --listen-vpnkit\n"
    cases = {
        ("exec", "--", "true"): "exec needs Linux network namespaces; ",
        ("run", "--netns", "x"): "--netns needs Linux network namespaces; ",
        ("run", "--tap", "x"): "--tap needs a Linux TAP device (/dev/net/tun); ",
    }
    for args, why in cases.items():
        out = _pyvpnkit(args[0], "--dns-server", "127.0.0.1#9", *args[1:], foreign=True)
        assert (out.returncode, out.stderr) == (125, f"pyvpnkit: {why}{instead}"), args


def test_host_connections_probe_as_tcp_keepalive_says_on_both_hosts() -> None:
    """TCP_KEEPIDLE on Linux; macOS's TCP_KEEPALIVE where it is missing (the stand-in
    gives that name Linux's number, so the kernel confirms the value)."""
    code = ("import socket; from pyvpnkit.runtime.host_tcp import keepalive_options; "
            "s = socket.socket(); [s.setsockopt(*o) for o in keepalive_options((600, 30, 5))]; "
            "print(*(s.getsockopt(socket.IPPROTO_TCP, o) for o in (4, 5, 6)))")
    for foreign in (False, True):
        out = _python("-c", code, foreign=foreign)
        assert out.stdout == "600 30 5\n", (foreign, out.stderr)
