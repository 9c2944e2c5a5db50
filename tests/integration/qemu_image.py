"""A tiny boot image for the real-QEMU test: the host's kernel plus a busybox initramfs.

The initramfs is written by hand as a newc cpio (gzip), so building it needs
no root, no mknod and no cpio tool: it holds busybox (plus its shared
libraries when the host's busybox is dynamic), the kernel modules the virtio
NIC needs (decompressed, as busybox insmod reads only plain .ko files), a
/dev/console node, and an /init script supplied by the test.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

# The NIC: virtio_net over virtio_pci; dependencies come from modules.dep.
NIC_MODULES = ("virtio_pci", "virtio_net")
_KO_SUFFIX = re.compile(r"\.ko(\.xz|\.gz|\.zst)?$")


class ImageError(Exception):
    """This machine lacks something the image needs (the test skips with this reason)."""


@dataclass(frozen=True)
class Kernel:
    image: Path  # /boot/vmlinuz-VERSION
    version: str

    @property
    def modules_dir(self) -> Path:
        return Path("/lib/modules") / self.version


def find_kernel() -> Kernel:
    """The newest /boot/vmlinuz-* that has its modules installed."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / version / "modules.dep").exists() and os.access(image, os.R_OK):
            found.append(Kernel(image, version))
    if not found:
        raise ImageError("no readable /boot/vmlinuz-* with /lib/modules/<version>/modules.dep")
    return max(
        found, key=lambda k: [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", k.version)]
    )


def boot_kernel(kernel: Kernel, dest: Path) -> Path:
    """The kernel to hand QEMU: an uncompressed vmlinux when it has a PVH entry, else the bzImage.

    Under TCG the guest spends about 8 s unpacking an xz bzImage before the
    kernel even starts; unpacking it here with lzma takes about 1 s.
    """
    config = Path("/boot") / f"config-{kernel.version}"
    if not config.exists() or "CONFIG_PVH=y" not in config.read_text():
        return kernel.image
    raw = kernel.image.read_bytes()
    if len(raw) < 0x250 or raw[0x202:0x206] != b"HdrS":
        return kernel.image
    setup_sects = raw[0x1F1] or 4
    offset, length = struct.unpack_from("<II", raw, 0x248)  # boot protocol 2.08+
    payload = raw[(setup_sects + 1) * 512 + offset :][:length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        else:
            return kernel.image  # zstd, lz4, ...: let the guest unpack it
    except (lzma.LZMAError, zlib.error):
        return kernel.image
    if not elf.startswith(b"\x7fELF"):
        return kernel.image
    dest.write_bytes(elf)
    return dest


def _module_name(path: str) -> str:
    return _KO_SUFFIX.sub("", os.path.basename(path)).replace("-", "_")


def module_load_order(kernel: Kernel, wanted: tuple[str, ...] = NIC_MODULES) -> list[Path]:
    """Module files to insmod, dependencies first; built-in modules need no file."""
    mdir = kernel.modules_dir
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (mdir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[_module_name(target)] = (target, rest.split())
    builtin = set()
    builtin_file = mdir / "modules.builtin"
    if builtin_file.exists():
        builtin = {_module_name(x) for x in builtin_file.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in deps:
            if name in builtin:
                return
            raise ImageError(f"kernel {kernel.version} has no module {name}")
        target, needs = deps[name]
        for dep in reversed(needs):  # modules.dep lists the deepest dependency last
            visit(_module_name(dep))
        order.append(mdir / target)

    for name in wanted:
        visit(name)
    return order


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, whatever compression the distribution used."""
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ImageError(f"{path} is zstd-compressed and the zstd tool is missing")
        return subprocess.run([zstd, "-dc", str(path)], check=True, capture_output=True).stdout
    return raw


def busybox_files(busybox: str) -> dict[str, bytes]:
    """busybox and, when it is dynamically linked, its loader and libraries (by ldd)."""
    files = {"/bin/busybox": Path(busybox).read_bytes()}
    out = subprocess.run(["ldd", busybox], capture_output=True, text=True)
    if out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr:
        return files
    for line in out.stdout.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+)", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            files[m.group(1)] = Path(m.group(1)).read_bytes()  # symlinks followed
    return files


@dataclass
class Cpio:
    """A newc archive built in memory."""

    entries: list[bytes] = field(default_factory=list)
    _ino: int = 1
    _dirs: set[str] = field(default_factory=set)

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.lstrip("/").encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (
            self._ino,
            mode,
            0,
            0,
            nlink,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(name_b),
            0,
        )
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        pad_name = (-(len(hdr) + len(name_b))) % 4
        self.entries.append(hdr + name_b + b"\0" * pad_name + data + b"\0" * ((-len(data)) % 4))

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._dirs:
                self._dirs.add(d)
                self._add(d, stat.S_IFDIR | 0o755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path))
        self._add(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path))
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.mkdir(os.path.dirname(path))
        self._add(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def build(self) -> bytes:
        trailer = Cpio()
        trailer._ino = 0
        trailer._add("TRAILER!!!", 0)
        return b"".join(self.entries + trailer.entries)


def build_initramfs(
    dest: Path, kernel: Kernel, init_script: str, extra_files: dict[str, str] | None = None
) -> Path:
    """Write DEST (gzip'd newc cpio) with busybox, the NIC modules and ``init_script`` as /init.

    The script finds the modules, in load order, listed in /modules.order.
    """
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ImageError("busybox is not installed")
    cpio = Cpio()
    for d in (
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/etc",
        "/run",
    ):
        cpio.mkdir(d)
    cpio.chardev("/dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs exists
    cpio.chardev("/dev/null", 1, 3, 0o666)
    for path, data in busybox_files(busybox).items():
        cpio.file(path, data, 0o755)
    cpio.symlink("/bin/sh", "busybox")
    names = []
    for module in module_load_order(kernel):
        name = _module_name(str(module))
        cpio.file(f"/lib/modules/{name}.ko", read_module(module))
        names.append(name)
    cpio.file("/modules.order", ("\n".join(names) + "\n").encode())
    for extra, text in (extra_files or {}).items():
        cpio.file(extra, text.encode(), 0o755)
    cpio.file("/init", init_script.encode(), 0o755)
    dest.write_bytes(gzip.compress(cpio.build(), compresslevel=1))
    return dest
