"""Wiring a network namespace to the stack, as slirp4netns and pasta do.

The TAP device is created *inside* the target namespace by a forked child,
which hands the fd back over a unix socket; the stack keeps running in the
caller's namespace and so uses the host's network for its sockets.

Without root, `spawn` first creates a user namespace in which the caller is
root (uid and gid mapped one to one, as `unshare -rn` does): the network and
mount namespaces made with it belong to it, so the child may create the TAP,
mount sysfs and bind-mount resolv.conf there. A child that fails sends one
line naming the cause (see nsdiag) instead of the fd; the parent raises it as
`SetupError`, which the command line prints and exits 125 on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys

# _socket, not socket; no signal, contextlib or dataclasses: those import enum
# and more, which costs slirp4netns's launchers more than making the TAP
# (bench/startup.py). _socket's sockets have all this module uses.
from _socket import (
    AF_INET,
    AF_UNIX,
    CMSG_LEN,
    SCM_RIGHTS,
    SOCK_DGRAM,
    SOCK_STREAM,
    SOL_SOCKET,
    socketpair,
)
from _socket import socket as Socket

from pyvpnkit.errors import NOT_EXECUTABLE, NOT_FOUND, SETUP_FAILED
from pyvpnkit.links.tapdev import open_tap, tap_error
from pyvpnkit.runtime import sysns
from pyvpnkit.runtime.nsdiag import SetupError, explain

SIOCGIFHWADDR = 0x8927


class IfaceSetup:
    """How the TAP is made and configured inside the namespace.

    A plain class, not a dataclass: this module is on the path to the TAP
    that launchers wait for, and dataclasses costs more to import than the
    TAP takes to make (see bench/startup.py).
    """

    __slots__ = ("ifname", "bring_up", "config_net", "address", "prefixlen", "gateway", "mtu",
                 "mac", "resolv_conf", "vnet_hdr", "ipv6", "ipv6_address", "ipv6_gateway")

    def __init__(
        self,
        ifname: str = "eth0",
        bring_up: bool = True,  # False: leave the interface alone (slirp4netns without -c)
        config_net: bool = True,  # address, default route, MTU; else only bring the link up
        address: str = "192.168.65.3",
        prefixlen: int = 24,
        gateway: str = "192.168.65.1",
        mtu: int = 1500,
        mac: str | None = None,  # set the interface's MAC (slirp4netns --macaddress)
        resolv_conf: str | None = None,  # bind-mounted over /etc/resolv.conf (exec only)
        vnet_hdr: bool = True,  # frames carry a virtio-net header (checksum and TSO offloads)
        ipv6: bool = False,  # False: IPv6 off on the interface (--no-ipv6)
        ipv6_address: str = "",  # with config_net: this /64 address, default via ipv6_gateway
        ipv6_gateway: str = "fe80::1",
    ) -> None:
        self.ifname = ifname
        self.bring_up = bring_up
        self.config_net = config_net
        self.address = address
        self.prefixlen = prefixlen
        self.gateway = gateway
        self.mtu = mtu
        self.mac = mac
        self.resolv_conf = resolv_conf
        self.vnet_hdr = vnet_hdr
        self.ipv6 = ipv6
        self.ipv6_address = ipv6_address
        self.ipv6_gateway = ipv6_gateway


class Attached:
    """The TAP's fd and MAC, and the child that made it."""

    __slots__ = ("tap_fd", "mac", "pid", "control", "netns_ino")

    def __init__(
        self,
        tap_fd: int,
        mac: bytes,
        pid: int,  # the child: the command for exec, an exited helper for attach
        control: Socket | None = None,  # exec: one byte lets the command start
        netns_ino: int = 0,  # exec: the namespace's inode, to find what the command left
    ) -> None:
        self.tap_fd = tap_fd
        self.mac = mac
        self.pid = pid
        self.control = control
        self.netns_ino = netns_ino

    def release(self) -> None:
        """Let the command start (exec): the stack is ready for its frames."""
        if self.control is not None:
            try:
                self.control.send(b"g")
            finally:
                self.control.close()
                self.control = None


class _StepFailed(Exception):
    def __init__(self, step: str, exc: OSError) -> None:
        super().__init__(explain(step, exc))


class _step:  # noqa: N801 - used as `with _step("ip"):`
    """Tag an OSError with the set-up step it happened in (for the user's message)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        pass

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, OSError):
            raise _StepFailed(self.name, exc) from exc


def _ip(commands: list[str]) -> None:
    """Run COMMANDS in one `ip -batch -`: one process, not one per command.

    Each ip run costs a fork and exec, and exec's command waits for all of
    them (bench/startup.py). ip stops at the first failure and names its line.
    """
    import subprocess  # in the child, once the TAP exists

    with _step("ip"):
        proc = subprocess.run(["ip", "-batch", "-"], input="\n".join(commands).encode(),
                              capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        failed = next((line for line in reversed(err) if line.startswith("Command failed -:")),
                      "")
        number = failed.rpartition(":")[2]
        command = commands[int(number) - 1] if number.isdigit() else " ".join(commands)
        cause = next((line for line in reversed(err) if line != failed), "")
        raise _StepFailed("ip", OSError(0, f"ip {command}: {cause}"))


def _configure(setup: IfaceSetup) -> tuple[int, bytes]:
    """Runs inside the namespace: create (or open) the TAP and configure it."""
    try:
        fd = open_tap(setup.ifname, vnet_hdr=setup.vnet_hdr)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):  # /dev/net/tun itself
            raise _StepFailed("tun", exc) from exc
        raise SetupError(tap_error(setup.ifname, exc)) from exc
    if setup.bring_up:
        has_ipv6 = _ipv6_sysctls(setup)  # before the link comes up
        name = setup.ifname
        commands = ["link set lo up"]
        if setup.mac:
            commands.append(f"link set {name} address {setup.mac}")
        commands += [f"link set {name} mtu {setup.mtu}", f"link set {name} up"]
        if setup.config_net:
            commands += [f"addr add {setup.address}/{setup.prefixlen} dev {name}",
                         f"route add default via {setup.gateway} dev {name}"]
        if setup.config_net and has_ipv6 and setup.ipv6_address:
            # nodad: the command starts at once and must be able to use the address.
            commands += [f"addr add {setup.ipv6_address}/64 dev {name} nodad",
                         f"route add ::/0 via {setup.ipv6_gateway} dev {name}"]  # no -6 in a batch
        _ip(commands)
    # /sys still shows the parent namespace's devices; ask the kernel directly.
    s = Socket(AF_INET, SOCK_DGRAM)
    try:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", setup.ifname.encode()))
    finally:
        s.close()
    return fd, ifr[18:24]


def _ipv6_sysctls(setup: IfaceSetup) -> bool:
    """IPv6 on the interface as asked, before it comes up; False when it stays off.

    Configured (exec): a static address and route, as for IPv4, so no SLAAC
    beside it. --no-config-net: the kernel configures itself from our RAs.
    --no-ipv6: IPv6 off, so the kernel sends nothing no one answers.
    """
    conf = f"/proc/sys/net/ipv6/conf/{setup.ifname}/"
    if not os.path.isdir(conf):
        return False  # a kernel without IPv6
    if not setup.ipv6:
        values = {"disable_ipv6": "1"}
    elif setup.config_net and setup.ipv6_address:
        values = {"accept_ra": "0", "autoconf": "0"}
    else:
        values = {"accept_ra": "2"}  # RAs even if the namespace forwards
    for name, value in values.items():
        try:
            _write(conf + name, value)
        except OSError as exc:  # /proc/sys read-only (a container): IPv6 as the kernel has it
            print(f"pyvpnkit: cannot set {conf}{name}: {exc.strerror}", file=sys.stderr)
            break
    return setup.ipv6


def _child_send(sock: Socket, setup: IfaceSetup) -> None:
    fd, mac = _configure(setup)
    sock.sendmsg([mac], [(SOL_SOCKET, SCM_RIGHTS, struct.pack("i", fd))])  # socket.send_fds
    os.close(fd)


def _child_failed(sock: Socket, exc: BaseException) -> None:
    """Tell the parent why, in one line; it prints it (never a traceback)."""
    known = isinstance(exc, (_StepFailed, SetupError))
    message = str(exc) if known else f"{type(exc).__name__}: {exc}"
    try:
        sock.sendall(message.encode(errors="replace")[:4000])
    except OSError:
        pass


def _receive(sock: Socket, pid: int) -> tuple[int, bytes]:
    msg, ancdata, _flags, _addr = sock.recvmsg(4096, CMSG_LEN(4))  # socket.recv_fds
    fds = [struct.unpack("i", data[:4])[0] for level, kind, data in ancdata
           if level == SOL_SOCKET and kind == SCM_RIGHTS and len(data) >= 4]
    if not fds:
        _pid, status = os.waitpid(pid, 0)
        text = msg.decode(errors="replace").strip()
        code = os.waitstatus_to_exitcode(status)
        raise SetupError(text or f"setting up the namespace failed (child exit status {code})")
    return fds[0], msg


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _new_namespaces() -> None:
    """New network + mount namespaces; without root, inside a new user namespace.

    The user namespace maps the caller one to one to root (like `unshare -r`).
    """
    if os.geteuid() == 0:
        with _step("netns"):
            sysns.unshare(sysns.CLONE_NEWNET | sysns.CLONE_NEWNS)
        return
    with _step("userns"):
        sysns.unshare_as_root(sysns.CLONE_NEWNET | sysns.CLONE_NEWNS)


def _exec_child(sock: Socket, cmd: list[str], setup: IfaceSetup, parent: int) -> None:
    """The command's side of `spawn`: namespaces, TAP, mounts, wait for go, exec."""
    _new_namespaces()
    with _step("making the mount namespace private"):
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
    _child_send(sock, setup)
    if sock.recv(1) != b"g":
        os._exit(SETUP_FAILED)
    sock.close()
    # Die with pyvpnkit even if it is SIGKILLed (as `unshare --kill-child`); set
    # late because credential changes (the user namespace) clear it. If the
    # parent died before, getppid() already names another process.
    import signal

    sysns.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(SETUP_FAILED)
    os.execvp(cmd[0], cmd)


def spawn(cmd: list[str], setup: IfaceSetup) -> Attached:
    """Fork CMD into new network + mount namespaces wired to a TAP we keep.

    The command waits until :meth:`Attached.release` so no frame is lost.
    Raises SetupError (one line for the user) when the namespace cannot be made.
    """
    parent, child = socketpair(AF_UNIX, SOCK_STREAM)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = SETUP_FAILED
        try:
            parent.close()
            _exec_child(child, cmd, setup, me)
        except BaseException as exc:  # noqa: BLE001 - report anything, never return
            if child.fileno() != -1:
                _child_failed(child, exc)
            else:  # the parent runs the stack already: the command itself failed
                print(f"pyvpnkit: {cmd[0]}: {getattr(exc, 'strerror', None) or exc}",
                      file=sys.stderr)
                code = NOT_FOUND if isinstance(exc, FileNotFoundError) else NOT_EXECUTABLE
        os._exit(code)
    child.close()
    try:
        fd, mac = _receive(parent, pid)
    except BaseException:
        parent.close()
        raise
    return Attached(fd, mac, pid, parent, os.stat(f"/proc/{pid}/ns/net").st_ino)


def stop_leftovers(netns_ino: int, sig: int = 15) -> int:  # SIGTERM
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


def _join(nsfds: list[tuple[int, int, str]]) -> None:
    for fd, nstype, path in nsfds:
        try:
            sysns.setns(fd, nstype)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a file, or a namespace of another type
                kind = "user" if nstype == sysns.CLONE_NEWUSER else "network"
                raise SetupError(f"{path} is not a {kind} namespace") from None
            raise _StepFailed("setns", exc) from exc


def attach(netns: str, setup: IfaceSetup, userns: str | None = None) -> Attached:
    """Open (creating if needed) and configure a TAP inside an existing namespace.

    With ``userns``, that user namespace is joined first (a rootless
    container's), unless it is already ours. Raises SetupError.
    """
    wanted = [(netns_path(netns), sysns.CLONE_NEWNET, "network")]
    if userns is not None:
        wanted.insert(0, (userns, sysns.CLONE_NEWUSER, "user"))
    nsfds: list[tuple[int, int, str]] = []
    try:
        if userns is not None and os.stat(userns).st_ino == os.stat("/proc/self/ns/user").st_ino:
            del wanted[0]  # already ours: setns into it would fail
        for path, nstype, _kind in wanted:
            nsfds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), nstype, path))
    except OSError as exc:
        for fd, _type, _path in nsfds:
            os.close(fd)
        kind = wanted[len(nsfds)][2]
        if isinstance(exc, FileNotFoundError):
            raise SetupError(f"no such {kind} namespace ({exc.filename})") from None
        raise SetupError(f"cannot open {kind} namespace {exc.filename}: {exc.strerror}") from None
    parent, child = socketpair(AF_UNIX, SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = SETUP_FAILED
        try:
            parent.close()
            _join(nsfds)
            _child_send(child, setup)
            code = 0
        except BaseException as exc:  # noqa: BLE001
            _child_failed(child, exc)
        os._exit(code)
    for fd, _type, _path in nsfds:
        os.close(fd)
    child.close()
    try:
        fd, mac = _receive(parent, pid)
    finally:
        parent.close()
    os.waitpid(pid, 0)
    return Attached(fd, mac, pid)
