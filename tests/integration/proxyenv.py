"""A test world for the HTTP proxy: DNS, web servers and tinyproxy upstreams.

Shared by tests/integration/test_http_proxy.py and bench/proxy.py. The host
namespace gets its own resolv.conf (the test DNS server on its loopback), so
tinyproxy, which resolves names itself, and pyvpnkit never ask the
machine's resolvers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.netenv import WORLD_IP, NetEnv, exec_args, sh, wait_for

NAME = "www.example.test"  # in the test DNS zone: 203.0.113.2
PROXY = "127.0.0.1:8888"
AUTH_PROXY = "127.0.0.1:8889"  # BasicAuth user secret

TINYPROXY_CONF = """Port {port}
Listen 127.0.0.1
Timeout 60
LogFile "{log}"
LogLevel Info
MaxClients 50
ConnectPort 443
ConnectPort 8443
ViaProxyName "tinyproxy"
{extra}
"""


@dataclass
class ProxyEnv:
    net: NetEnv
    tmp: Path
    log: Path
    auth_log: Path

    def vm(
        self, script: str, *options: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script in a VM (pyvpnkit exec) with these pyvpnkit options."""
        cmd = self.net.pyvpnkit("exec", *exec_args(53), "--log-level", "info", *options,
                                "--", "sh", "-c", script)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def proxied(self, needle: str, log: Path | None = None) -> bool:
        """Whether tinyproxy's log holds a request line containing ``needle``."""
        text = (log or self.log).read_text(errors="replace")
        return any("Request (file descriptor" in line and needle in line
                   for line in text.splitlines())


def _start_tinyproxy(net: NetEnv, tmp: Path, port: int, extra: str) -> Path:
    log = tmp / f"tinyproxy-{port}.log"
    conf = tmp / f"tinyproxy-{port}.conf"
    conf.write_text(TINYPROXY_CONF.format(port=port, log=log, extra=extra))
    net.start("host", "tinyproxy", "-d", "-c", str(conf),
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"

    def listening() -> bool:
        return net.run_in("host", "python3", "-c", probe, check=False).returncode == 0

    assert wait_for(listening, timeout=10), f"tinyproxy on {port} did not start"
    return log



@contextmanager
def proxy_env(tmp: Path) -> Iterator[ProxyEnv]:
    """Namespaces, the test DNS as the host's resolver, web servers, two tinyproxies."""
    os.chmod(tmp, 0o755)
    net = NetEnv()
    netns_dir = Path(f"/etc/netns/{net.host}")
    try:
        netns_dir.mkdir(parents=True)
        (netns_dir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        net.start_helper("host", "dns_server.py", "53")
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
           "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
           "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"))
        net.start_helper("world", "proxy_web.py", WORLD_IP, str(tmp / "cert.pem"),
                         str(tmp / "key.pem"))
        log = _start_tinyproxy(net, tmp, 8888, "")
        auth_log = _start_tinyproxy(net, tmp, 8889, "BasicAuth user secret")
        yield ProxyEnv(net, tmp, log, auth_log)
    finally:
        net.close()
        shutil.rmtree(netns_dir, ignore_errors=True)
