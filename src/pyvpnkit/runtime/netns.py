"""Wiring a network namespace to the stack, as slirp4netns and pasta do.

The TAP device is created *inside* the target namespace by a forked child,
which hands the fd back over a unix socket; the stack keeps running in the
caller's namespace and so uses the host's network for its sockets.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass

from pyvpnkit.runtime import sysns
from pyvpnkit.runtime.tap import open_tap, tap_error

SIOCGIFHWADDR = 0x8927


@dataclass(frozen=True)
class IfaceSetup:
    ifname: str = "eth0"
    config_net: bool = True  # address, default route, MTU; else only bring the link up
    address: str = "192.168.65.3"
    prefixlen: int = 24
    gateway: str = "192.168.65.1"
    mtu: int = 1500
    resolv_conf: str | None = None  # file to bind-mount over /etc/resolv.conf (exec only)
    vnet_hdr: bool = True  # frames carry a virtio-net header (checksum and TSO offloads)


@dataclass
class Attached:
    tap_fd: int
    mac: bytes
    pid: int  # the child: the command for exec, an exited helper for attach
    control: socket.socket | None = None  # exec: write one byte to let the command start
    netns_ino: int = 0  # exec: the namespace's inode, to find what the command left running

    def release(self) -> None:
        """Let the command start (exec): the stack is ready for its frames."""
        if self.control is not None:
            try:
                self.control.send(b"g")
            finally:
                self.control.close()
                self.control = None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdin=subprocess.DEVNULL)


def _configure(setup: IfaceSetup) -> bytes:
    """Runs inside the namespace: create the TAP and configure it."""
    fd = open_tap(setup.ifname, vnet_hdr=setup.vnet_hdr)
    _ip("link", "set", "lo", "up")
    _ip("link", "set", setup.ifname, "mtu", str(setup.mtu))
    _ip("link", "set", setup.ifname, "up")
    if setup.config_net:
        _ip("addr", "add", f"{setup.address}/{setup.prefixlen}", "dev", setup.ifname)
        _ip("route", "add", "default", "via", setup.gateway, "dev", setup.ifname)
    # /sys still shows the parent namespace's devices; ask the kernel directly.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", setup.ifname.encode()))
    mac = ifr[18:24]
    return fd.to_bytes(4, "little") + mac


def _child_send(sock: socket.socket, setup: IfaceSetup) -> None:
    info = _configure(setup)
    fd = int.from_bytes(info[:4], "little")
    socket.send_fds(sock, [info[4:]], [fd])
    os.close(fd)


def _receive(sock: socket.socket, pid: int) -> tuple[int, bytes]:
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1024, 1)
    if not fds:
        _pid, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        reason = msg.decode(errors="replace")  # attach's child says what failed
        raise RuntimeError(reason or f"setting up the namespace failed (child exit status {code})")
    return fds[0], msg


def spawn(cmd: list[str], setup: IfaceSetup) -> Attached:
    """Fork CMD into new network + mount namespaces wired to a TAP we keep.

    The command waits until :meth:`Attached.release` so no frame is lost.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            parent.close()
            sysns.unshare(sysns.CLONE_NEWNET | sysns.CLONE_NEWNS)
            sysns.mount("none", "/", None, sysns.MS_REC | sysns.MS_PRIVATE)
            try:  # /sys shows the namespace it was mounted in: show ours
                sysns.mount("sysfs", "/sys", "sysfs", 0)
            except OSError:
                pass
            if setup.resolv_conf and os.path.exists("/etc/resolv.conf"):
                try:
                    sysns.mount(setup.resolv_conf, "/etc/resolv.conf", None, sysns.MS_BIND)
                except OSError as exc:
                    print(f"pyvpnkit: cannot replace /etc/resolv.conf: {exc}", file=sys.stderr)
            _child_send(child, setup)
            if child.recv(1) != b"g":
                os._exit(125)
            child.close()
            os.execvp(cmd[0], cmd)
        except BaseException as exc:  # noqa: BLE001 - report anything, never return
            print(f"pyvpnkit: {exc}", file=sys.stderr)
        os._exit(127)
    child.close()
    try:
        fd, mac = _receive(parent, pid)
    except BaseException:
        parent.close()
        raise
    return Attached(fd, mac, pid, parent, os.stat(f"/proc/{pid}/ns/net").st_ino)


def stop_leftovers(netns_ino: int, sig: int = signal.SIGTERM) -> int:
    """Signal every process still in the exec namespace (the command's daemons).

    The namespace is ours: once the command exits, nothing in it can reach
    the network any more, so leaving its background processes running would
    only leak them. Returns how many were signalled.
    """
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == netns_ino:
                os.kill(int(entry), sig)
                count += 1
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return count


def netns_path(name: str) -> str:
    """`NAME` means /run/netns/NAME (as `ip netns` names them); a path is used as is."""
    return name if "/" in name else f"/run/netns/{name}"


def attach(netns: str, setup: IfaceSetup) -> Attached:
    """Create and configure a TAP inside an existing namespace; return its fd.

    Raises OSError when the namespace cannot be opened, RuntimeError with the
    reason (sent back by the child) when it cannot be entered or wired.
    """
    path = netns_path(netns)
    nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            parent.close()
            try:
                sysns.setns(nsfd, sysns.CLONE_NEWNET)
            except OSError as exc:
                raise RuntimeError(f"{path} is not a network namespace") from exc
            try:
                _child_send(child, setup)
            except OSError as exc:
                raise RuntimeError(tap_error(setup.ifname, exc)) from None
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"configuring {setup.ifname} failed: {exc}") from None
            code = 0
        except BaseException as exc:  # noqa: BLE001 - the parent reports it
            child.sendall(str(exc).encode())
        os._exit(code)
    os.close(nsfd)
    child.close()
    try:
        fd, mac = _receive(parent, pid)
    finally:
        parent.close()
    os.waitpid(pid, 0)
    return Attached(fd, mac, pid)
