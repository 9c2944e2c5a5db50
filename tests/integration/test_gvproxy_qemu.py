"""A real QEMU guest on `pyvpnkit-gvproxy -listen-qemu` with gvproxy's defaults.

The guest (the test kernel and busybox initramfs of test_qemu.py) has the
MAC gvproxy's static lease names, so DHCP must give it 192.168.127.2; it
downloads a file through the host alias 192.168.127.254, looks up a name
added through /services/dns/add before it booted, and serves HTTP that the
test reaches through /tunnel. The notification socket sees the link come
and go.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netenv import NetEnv, sh, stack_python, wait_for
from tests.integration.test_gvproxy import GUEST, GUEST_MAC, Notifications
from tests.integration.test_qemu import (
    BOOT,
    QEMU,
    QEMU_MACHINE,
    BootImage,
    _netdev_backends,
    build_boot_image,
)

pytestmark = pytest.mark.qemu

HTTP_PORT = 48081
BLOB_SIZE = 1 << 20
BOOT_TIMEOUT = 90.0

INIT = BOOT + """udhcpc -i eth0 -f -n -q -t 10 -T 1 -O mtu -s /udhcpc.sh || echo "PVK-NODHCP"
wget -q -O /tmp/blob http://192.168.127.254:{port}/blob
echo "PVK-WGET rc=$? size=$(wc -c < /tmp/blob)"
echo "PVK-SHA256 $(sha256sum /tmp/blob)"
echo "PVK-DNS $(nslookup web.apps.test 192.168.127.1 2>&1 | tr '\\n' ' ')"
mkdir -p /www && echo guest-page > /www/index.html && httpd -p 8080 -h /www && echo PVK-HTTPD
n=0
while [ $n -lt 600 ]; do
    wget -q -O /tmp/done http://192.168.127.254:{port}/done && break
    sleep 0.1; n=$((n+1))
done
poweroff -f
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootImage]:
    yield from build_boot_image(tmp_path_factory, INIT.format(port=HTTP_PORT))


def _tunnel_get(api: Path, ip: str, port: int) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(api))
        s.sendall(f"POST /tunnel?ip={ip}&port={port} HTTP/1.1\r\nHost: x\r\n"
                  "Content-Length: 0\r\n\r\nGET / HTTP/1.0\r\n\r\n".encode())
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    return got


def test_qemu_guest_on_gvproxy_defaults(netenv: NetEnv, image: BootImage) -> None:
    backends = _netdev_backends()
    d = Path(tempfile.mkdtemp(prefix="pvk-gq-"))
    if "stream" in backends:
        netdev = f"stream,id=n0,server=off,addr.type=unix,addr.path={d}/qemu.sock"
        listen = f"unix://{d}/qemu.sock"
    else:
        netdev, listen = "socket,id=n0,connect=127.0.0.1:47003", "tcp://127.0.0.1:47003"
    qemu: subprocess.Popen[bytes] | None = None
    try:
        www = d / "www"
        www.mkdir()
        blob = os.urandom(BLOB_SIZE)
        (www / "blob").write_bytes(blob)
        http = netenv.start(
            "host", sys.executable, "-u", "-m", "http.server", str(HTTP_PORT), "--bind",
            "127.0.0.1", "--directory", str(www), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert http.stdout is not None and b"Serving HTTP" in http.stdout.readline()
        _dns, dns_port = netenv.start_helper("host", "dns_server.py")
        notes = Notifications(str(d / "notify.sock"))
        log = d / "gvproxy.log"
        with log.open("wb") as f:
            gv = netenv.start(
                "host", *stack_python(), "-m", "pyvpnkit.frontends.gvproxy.cli",
                "-listen-qemu", listen,
                "-listen", f"unix://{d}/api.sock", "-notification", f"unix://{d}/notify.sock",
                "-dns-server", f"127.0.0.1#{dns_port}", "-hosts", "/dev/null", stderr=f,
            )  # fmt: skip
        assert wait_for(lambda: notes.seen("ready") or gv.poll() is not None, 20), log.read_text()
        zone = {"Name": "apps.test.", "Records": [{"Name": "web", "IP": "10.1.2.3"}]}
        sh("curl", "-sS", "--fail", "--unix-socket", str(d / "api.sock"), "-d",
           json.dumps(zone), "http://gvproxy/services/dns/add", timeout=10)

        console = d / "console.log"
        with console.open("wb") as out:
            qemu = netenv.start(
                "host", QEMU, *QEMU_MACHINE, "-kernel", str(image.kernel),
                "-initrd", str(image.initrd), "-append", "console=ttyS0 quiet panic=-1",
                "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def where() -> str:
            return (f"\n--- console ---\n{console.read_text(errors='replace')}"
                    f"\n--- gvproxy ---\n{log.read_text(errors='replace')}")

        assert wait_for(lambda: "PVK-HTTPD" in console.read_text(errors="replace")
                        or qemu.poll() is not None, BOOT_TIMEOUT), where()
        page = _tunnel_get(d / "api.sock", GUEST, 8080)
        (www / "done").write_text("done\n")
        try:
            qemu.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the guest did not power off{where()}")
        text = console.read_text(errors="replace")
        assert "PVK-MODFAIL" not in text and "PVK-NODHCP" not in text, where()
        lease = re.search(r"PVK-LEASE ip=(\S+) subnet=(\S+) router=(\S+) dns=(\S+) mtu=(\S*)", text)
        assert lease and lease.groups() == (
            GUEST, "255.255.255.0", "192.168.127.1", "192.168.127.1", "1500"), where()
        assert f"PVK-WGET rc=0 size={BLOB_SIZE}" in text, where()
        sha = re.search(r"PVK-SHA256 ([0-9a-f]{64})", text)
        assert sha and sha.group(1) == hashlib.sha256(blob).hexdigest(), where()
        dns_line = re.search(r"PVK-DNS (.*)", text)
        assert dns_line and "10.1.2.3" in dns_line.group(1), where()
        assert page.startswith(b"OKHTTP/1.") and page.endswith(b"guest-page\n"), page
        assert notes.seen("connection_established", GUEST_MAC), notes.messages
        assert wait_for(lambda: notes.seen("connection_closed", GUEST_MAC), 10), notes.messages
        assert gv.poll() is None, where()
        started = time.monotonic()
        gv.terminate()
        assert gv.wait(10) == 0 and time.monotonic() - started < 10, where()
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait(10)
        netenv.close()
        shutil.rmtree(d, ignore_errors=True)
