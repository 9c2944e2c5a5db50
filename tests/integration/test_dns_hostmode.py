"""`--dns-mode host` end to end: dig in the VM namespace, answers from the host
namespace's own resolver (getaddrinfo/getnameinfo).

pyvpnkit runs in a private mount namespace inside the test-made host
namespace, with a test hosts file over /etc/hosts and `hosts: files` over
/etc/nsswitch.conf, so the OS resolver knows the test names and asks no DNS
server at all. Other record types go to the dnspython test upstream on the
host namespace's loopback; nothing can reach the machine's real resolvers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.netenv import NetEnv

pytestmark = pytest.mark.skipif(
    shutil.which("dig") is None or shutil.which("unshare") is None, reason="needs dig, unshare"
)

HOSTS = """127.0.0.1 localhost
10.77.0.5 app.hostonly.test
fd77::5 app.hostonly.test
10.77.0.6 v4only.hostonly.test
"""

DIG = "dig @192.168.65.1 +time=3 +tries=1"
MOUNTS = (
    "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/nsswitch.conf "
    "&& mount --bind \"$2\" /etc/resolv.conf && shift 2 && exec \"$@\""
)


def run_vm(
    netenv: NetEnv, tmp_path: Path, pyvpnkit_args: list[str], queries: list[str]
) -> list[str]:
    """Run the dig commands in a VM namespace behind a host-mode pyvpnkit."""
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    nss = tmp_path / "nsswitch.conf"
    nss.write_text("hosts: files\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("")  # no upstream unless --dns-server names one
    script = "; echo =====; ".join(queries)
    cmd = netenv.cmd(
        "host", "unshare", "-m", "--propagation", "private", "sh", "-c", MOUNTS,
        str(hosts), str(nss), str(resolv),
        sys.executable, "-m", "pyvpnkit", "exec", "--dns-mode", "host", "--hosts", "/dev/null",
        *pyvpnkit_args, "--", "sh", "-c", script,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split("=====\n")


def test_addresses_from_host_resolver_other_types_upstream(
    netenv: NetEnv, tmp_path: Path
) -> None:
    _proc, port = netenv.start_helper("host", "dns_server.py")
    outs = run_vm(netenv, tmp_path, ["--dns-server", f"127.0.0.1#{port}"], [
        f"{DIG} +short app.hostonly.test A",
        f"{DIG} +short app.hostonly.test AAAA",
        f"{DIG} +tcp +short app.hostonly.test A",
        f"{DIG} v4only.hostonly.test AAAA",
        f"{DIG} nosuch.hostonly.test A",
        f"{DIG} +short -x 10.77.0.5",
        f"{DIG} +short example.test MX",
        f"{DIG} +short _http._tcp.example.test SRV",
        f"{DIG} www.example.test A",
        f"{DIG} +short host.docker.internal",
    ])
    assert outs[0].strip() == "10.77.0.5"
    assert outs[1].strip() == "fd77::5"
    assert outs[2].strip() == "10.77.0.5"
    assert "status: NOERROR" in outs[3] and "ANSWER: 0" in outs[3], outs[3]
    assert "status: NXDOMAIN" in outs[4], outs[4]
    assert outs[5].strip() == "app.hostonly.test."
    assert outs[6].strip() == "10 mail.example.test."  # forwarded: getaddrinfo has no MX
    assert outs[7].strip() == "0 5 80 www.example.test."
    # The upstream knows www.example.test, but addresses come only from the OS resolver.
    assert "status: NXDOMAIN" in outs[8], outs[8]
    assert outs[9].strip() == "192.168.65.2"


def test_other_types_without_upstream_servfail_not_nxdomain(
    netenv: NetEnv, tmp_path: Path
) -> None:
    outs = run_vm(netenv, tmp_path, [], [
        f"{DIG} +short app.hostonly.test A",
        f"{DIG} example.test MX",
        f"{DIG} +noedns example.test TXT",
    ])
    assert outs[0].strip() == "10.77.0.5"
    assert "status: SERVFAIL" in outs[1], outs[1]
    assert "EDE: 21" in outs[1] and "only A, AAAA and PTR" in outs[1], outs[1]
    assert "status: SERVFAIL" in outs[2] and "EDE" not in outs[2], outs[2]
