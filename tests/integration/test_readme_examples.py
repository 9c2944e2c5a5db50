"""The README's shell examples, run as pasted (issue 15).

Each ```sh block runs with `bash -e -o pipefail` inside a test-made host
namespace, with `pyvpnkit` on PATH, the servers the block talks to (an HTTP
server on the host's 127.0.0.1:8080, an iperf3 server) and a test DNS server
as the namespace's only resolver (/etc/netns/NAME/resolv.conf): nothing
reaches the machine's network or its resolvers.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netenv import REPO, NetEnv

# Blocks not run here, with the reason; matched by a string in the block.
EXCLUDED = {
    "apt-get install": "installs packages from the network",
    "bash .ci/run": "runs this very test suite",
    "not slow and not integration": "runs this very test suite (its fast part)",
    "qemu-system-x86_64": "needs QEMU and a guest kernel (tests/integration/test_qemu.py)",
    "--listen-vfkit": "needs hyperkit or vfkit, macOS hypervisors",
    "python3 -m venv": "installs from PyPI (CI installs the same way, into its own venv)",
    "rootlesskit --net=slirp4netns": "interactive, as an ordinary user: test_rootless.py runs "
    "this command line as a user it creates",
    "rootlesskit --net=vpnkit": "Debian's rootlesskit has its vpnkit driver compiled out: "
    "test_vpnkit_cli.py drives pyvpnkit-vpnkit as rootlesskit does",
    "--http-proxy proxy.corp": "needs a company proxy (tests/integration/test_http_proxy.py)",
    "brew install": "macOS only (Homebrew)",
    "libexec/pyvpnkit/gvproxy": "macOS podman machine set-up (test_gvproxy.py runs the drop-in)",
}
# What each block run here must print, and the servers it talks to (matched by a
# string in the block).
EXPECTED = {
    "curl http://host.docker.internal:8080/": [
        "hello pyvpnkit", "lease of 192.168.65.3 obtained", "iperf Done."
    ],
    "--api unix:///tmp/pvk.sock": ["\n200\n", "udp   127.0.0.1:5353", '"frames_in"'],
    "pyvpnkit-gvproxy -listen": ['"local": "127.0.0.1:2222"', '"Name": "apps.internal."'],
    "pyvpnkit conditions add": ["3 packets transmitted", "reject", "matches="],
    "--metrics-listen 9100": ['pyvpnkit_frames_total{direction="in"}'],
}
SERVERS = {
    "curl http://host.docker.internal:8080/": [
        ("helper", "http_server.py", "127.0.0.1", "8080"),
        ("iperf3", "-s", "-B", "127.0.0.1"),  # port 5201
    ],
}


def sh_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S)


def runnable() -> list[str]:
    blocks = [b for b in sh_blocks() if not any(key in b for key in EXCLUDED)]
    assert len(blocks) + len(EXCLUDED) == len(sh_blocks())  # each exclusion is used once
    return blocks


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[NetEnv, str]]:
    """A host namespace whose resolver is a test DNS server; PATH with `pyvpnkit`."""
    netenv = NetEnv()
    resolv = Path(f"/etc/netns/{netenv.host}/resolv.conf")
    try:
        resolv.parent.mkdir(parents=True)
        resolv.write_text("nameserver 127.0.0.1\n")
        netenv.start_helper("host", "dns_server.py", "53")
        commands = (
            ("pyvpnkit", "pyvpnkit"), ("pyvpnkit-gvproxy", "pyvpnkit.frontends.gvproxy.cli")
        )
        for name, module in commands:
            wrapper = tmp_path / name
            wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m {module} "$@"\n')
            wrapper.chmod(0o755)
        yield netenv, f"{tmp_path}:/usr/sbin:/usr/bin:/sbin:/bin"
    finally:
        netenv.close()
        shutil.rmtree(resolv.parent, ignore_errors=True)


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("curl", "udhcpc", "iperf3")),
    reason="needs curl, udhcpc and iperf3",
)
@pytest.mark.parametrize("block", runnable(), ids=lambda b: b.split("\n")[0][:40])
def test_readme_block_works_when_pasted(env: tuple[NetEnv, str], block: str) -> None:
    netenv, path = env
    for key, servers in SERVERS.items():
        for server in servers if key in block else []:
            if server[0] == "helper":
                netenv.start_helper("host", *server[1:])
            else:
                netenv.start("host", *server)
                listening = "until ss -ltn | grep -q :5201; do sleep 0.05; done"
                netenv.run_in("host", "sh", "-c", listening, timeout=10)
    out = netenv.run_in(
        "host", "env", f"PATH={path}", "bash", "-e", "-o", "pipefail", "-c", block,
        check=False, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    (want,) = [lines for key, lines in EXPECTED.items() if key in block]
    for line in want:
        assert line in out.stdout + out.stderr, out.stdout + out.stderr
