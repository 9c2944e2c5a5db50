"""Issue 5 with a real guest: QEMU boots the host's kernel and a busybox initramfs,
gets its address from pyvpnkit's DHCP and downloads a file from the host.

The guest's /init loads the virtio NIC modules, runs udhcpc, fetches 1 MiB
from an HTTP server on the test namespace's 127.0.0.1 through the host alias
192.168.65.2, prints the sha256 on the serial console and powers off. QEMU
runs under TCG (no KVM needed); the kernel is unpacked on the host (TCG would
spend 8 s on that), so a boot takes about 7 s.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.netenv import NetEnv, exec_args, stack_python, wait_for
from tests.integration.qemu_image import ImageError, boot_kernel, build_initramfs, find_kernel

pytestmark = pytest.mark.qemu

QEMU = "qemu-system-x86_64"
HTTP_PORT = 48080  # in the test's own namespace
QEMU_TCP_PORT = 47002
BLOB_SIZE = 1 << 20
BOOT_TIMEOUT = 60.0
QEMU_MACHINE = (
    "-machine q35 -accel tcg -m 256 -smp 1 -nodefaults -display none -serial stdio -no-reboot"
).split()

# Boots to a guest with eth0 up; each test's /init goes on from here.
BOOT = """#!/bin/sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko || echo "PVK-MODFAIL $m"; done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip link set eth0 up
"""
INIT = BOOT + """echo "PVK-UP $(cut -d' ' -f1 /proc/uptime)"
udhcpc -i eth0 -f -n -q -t 10 -T 1 -O mtu -s /udhcpc.sh || echo "PVK-NODHCP"
wget -q -O /tmp/blob http://192.168.65.2:{port}/blob
echo "PVK-WGET rc=$? size=$(wc -c < /tmp/blob) at $(cut -d' ' -f1 /proc/uptime)"
echo "PVK-SHA256 $(sha256sum /tmp/blob)"
n=0
while [ $n -lt 100 ]; do
    ip -6 addr show dev eth0 scope global | grep -q fd42 && \
        ! ip -6 addr show dev eth0 | grep -q tentative && break
    sleep 0.1; n=$((n+1))
done
echo "PVK-V6 $(ip -6 addr show dev eth0 scope global | grep -o 'fd42[0-9a-f:]*/64')"
ping -6 -c 1 -W 2 fd42:7076:6b69::1 >/dev/null && echo "PVK-PING6 ok"
poweroff -f
"""

UDHCPC = """#!/bin/sh
case "$1" in
bound|renew)
    ifconfig "$interface" "$ip" netmask "$subnet" ${mtu:+mtu $mtu}
    route add default gw "$router" dev "$interface"
    echo "PVK-LEASE ip=$ip subnet=$subnet router=$router dns=$dns mtu=$mtu"
    ;;
esac
"""


def _netdev_backends() -> set[str]:
    out = subprocess.run([QEMU, "-netdev", "help"], capture_output=True, text=True, timeout=30)
    return set(out.stdout.split())


@dataclass(frozen=True)
class BootImage:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="module")
def boot_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootImage]:
    """Kernel and initramfs, built once for every way of attaching the NIC."""
    yield from build_boot_image(tmp_path_factory, INIT.format(port=HTTP_PORT))


def build_boot_image(factory: pytest.TempPathFactory, init: str) -> Iterator[BootImage]:
    """A fixture's image with ``init`` as /init; skips when the machine lacks a part."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (Debian: qemu-system-x86)")
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (Debian: busybox)")
    d = factory.mktemp("qemu-image")
    try:
        kernel = find_kernel()
        initrd = build_initramfs(d / "initrd.gz", kernel, init, {"/udhcpc.sh": UDHCPC})
    except ImageError as exc:
        pytest.skip(f"{exc} (Debian: linux-image-amd64)")
    yield BootImage(boot_kernel(kernel, d / "vmlinux"), initrd)
    shutil.rmtree(d, ignore_errors=True)  # the vmlinux is some 60 MB


def _netdev(backend: str, d: str) -> tuple[list[str], str]:
    """(pyvpnkit listen options, QEMU -netdev value) for one way of attaching the NIC."""
    if backend == "stream":
        return (
            ["--listen-qemu", f"unix://{d}/qemu.sock"],
            f"stream,id=n0,server=off,addr.type=unix,addr.path={d}/qemu.sock",
        )
    if backend == "socket":
        return (
            ["--listen-qemu", f"tcp://127.0.0.1:{QEMU_TCP_PORT}"],
            f"socket,id=n0,connect=127.0.0.1:{QEMU_TCP_PORT}",
        )
    return (
        ["--listen-vfkit", f"unixgram://{d}/vfkit.sock"],
        f"dgram,id=n0,local.type=unix,local.path={d}/vm.sock,"
        f"remote.type=unix,remote.path={d}/vfkit.sock",
    )


@pytest.mark.parametrize("backend", ["stream", "socket", "dgram"])
def test_qemu_guest_dhcp_and_download(netenv: NetEnv, boot_image: BootImage, backend: str) -> None:
    if backend not in _netdev_backends():
        pytest.skip(f"this QEMU has no -netdev {backend} (stream and dgram need QEMU 7.2+)")
    d = tempfile.mkdtemp(prefix="pvk-q-")  # short: unix socket paths must fit 108 bytes
    qemu: subprocess.Popen[bytes] | None = None
    try:
        www = Path(d) / "www"
        www.mkdir()
        blob = os.urandom(BLOB_SIZE)
        (www / "blob").write_bytes(blob)

        http = netenv.start(
            "host", sys.executable, "-u", "-m", "http.server", str(HTTP_PORT), "--bind",
            "127.0.0.1", "--directory", str(www), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert http.stdout is not None and b"Serving HTTP" in http.stdout.readline()

        listen, netdev = _netdev(backend, d)
        log = Path(d) / "pyvpnkit.log"
        with log.open("wb") as f:
            pvk = netenv.start(
                "host", *stack_python(), "-m", "pyvpnkit", "run", *exec_args(),
                "--log-level", "info", *listen, stderr=f,
            )  # fmt: skip
        ready = wait_for(
            lambda: "pyvpnkit running" in log.read_text() or pvk.poll() is not None, 15
        )
        assert ready and pvk.poll() is None, log.read_text()

        console = Path(d) / "console.log"
        start = time.monotonic()
        with console.open("wb") as out:
            qemu = netenv.start(
                "host", QEMU, *QEMU_MACHINE, "-kernel", str(boot_image.kernel),
                "-initrd", str(boot_image.initrd), "-append", "console=ttyS0 quiet panic=-1",
                "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            qemu.wait(BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the guest did not power off within {BOOT_TIMEOUT} s:\n"
                f"{console.read_text(errors='replace')}\n{log.read_text()}"
            )
        took = time.monotonic() - start
        text = console.read_text(errors="replace")
        where = f"\n--- console ---\n{text}\n--- pyvpnkit ---\n{log.read_text()}"

        assert "PVK-MODFAIL" not in text and "PVK-NODHCP" not in text, where
        lease = re.search(r"PVK-LEASE ip=(\S+) subnet=(\S+) router=(\S+) dns=(\S+) mtu=(\S*)", text)
        assert lease, where
        assert lease.groups() == (
            "192.168.65.3",
            "255.255.255.0",
            "192.168.65.1",
            "192.168.65.1",
            "1500",
        ), where
        assert f"PVK-WGET rc=0 size={BLOB_SIZE} " in text, where
        sha = re.search(r"PVK-SHA256 ([0-9a-f]{64})", text)
        assert sha and sha.group(1) == hashlib.sha256(blob).hexdigest(), where
        # IPv6 too: the kernel's SLAAC from our RAs, then echo to the gateway.
        assert re.search(r"PVK-V6 fd42:7076:6b69:0:[0-9a-f:]+/64", text), where
        assert "PVK-PING6 ok" in text, where
        assert pvk.poll() is None, where
        up = re.search(r"PVK-UP (\S+)", text)
        done = re.search(r"PVK-WGET .* at (\S+)", text)
        print(
            f"{backend}: {took:.1f} s in all; guest uptime {up and up.group(1)} s with eth0 up, "
            f"{done and done.group(1)} s with the download done"
        )
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait(10)
        netenv.close()
        shutil.rmtree(d, ignore_errors=True)
