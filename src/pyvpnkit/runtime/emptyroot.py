"""Moving the process into an empty root, as slirp4netns --enable-sandbox does.

A new mount namespace (inside a new user namespace when the process has no
privileges to make one) whose root is a small read-only tmpfs holding only
/etc and /run, bound read-only from the host: resolv.conf and hosts stay
readable, everything else (homes, /root, /var, /usr, /proc) is gone, and
nothing mounted or unmounted here propagates back out. Every mount is made a
slave first, so the host's later changes under /etc and /run (a VPN
rewriting resolv.conf) still show inside.

Python imports nothing after this: the caller loads what it will need first.
Needs a single-threaded process (unshare(CLONE_NEWUSER) refuses otherwise).
"""

from __future__ import annotations

import ctypes
import errno
import os

from pyvpnkit.runtime import sysns

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1 << 10
MS_NODIRATIME = 1 << 11
MS_BIND = 1 << 12
MS_REC = 1 << 14
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MNT_DETACH = 2
# statvfs f_flag bits -> the mount flags a remount must repeat (the kernel keeps
# a less privileged namespace from changing them)
_KEPT_FLAGS = ((os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
               (os.ST_RELATIME, MS_RELATIME), (os.ST_NOSUID, MS_NOSUID),
               (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
NEW_ROOT = "/tmp"  # mounted over in our namespace only, as slirp4netns does
KEPT = ("/etc", "/run")


def _new_mount_namespace() -> bool:
    """Our own mount namespace; a user namespace too (True) when we may not make one alone."""
    if os.geteuid() == 0:
        try:
            sysns.unshare(sysns.CLONE_NEWNS)
            return False
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
    sysns.unshare_as_root(sysns.CLONE_NEWNS)
    return True


def _bind_read_only(source: str, target: str) -> None:
    sysns.mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    held = os.statvfs(target).f_flag
    flags |= sum(ms for st, ms in _KEPT_FLAGS if held & st)
    sysns.mount(source, target, None, flags)


def _bind_escaped_resolv_conf(root: str) -> None:
    """resolv.conf may be a symlink out of /etc and /run: bind its target too."""
    real = os.path.realpath("/etc/resolv.conf")
    if not os.path.isfile(real) or any(real.startswith(k + "/") for k in KEPT):
        return
    dest = root + real
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    with open(dest, "w"):
        pass
    _bind_read_only(real, dest)


def _pivot_root(new_root: str, put_old: str) -> None:
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown on {os.uname().machine}")
    if sysns.libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")


def enter() -> bool:
    """Pivot into the empty root; True if that took a new user namespace. Raises OSError."""
    new_userns = _new_mount_namespace()
    sysns.mount("none", "/", None, MS_REC | MS_SLAVE)  # nothing propagates back out
    sysns.mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=64k,mode=0755")
    for name in (*KEPT, "/old"):
        os.mkdir(NEW_ROOT + name, 0o755)
    for name in KEPT:
        _bind_read_only(name, NEW_ROOT + name)
    _bind_escaped_resolv_conf(NEW_ROOT)
    os.chdir(NEW_ROOT)
    _pivot_root(".", "old")
    os.chdir("/")
    if sysns.libc.umount2(b"/old", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount /old: {os.strerror(err)}")
    os.rmdir("/old")
    try:
        sysns.mount("tmpfs", "/", "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                    | MS_NOEXEC)
    except OSError:
        pass  # the tmpfs stays writable (slirp4netns also goes on: its #163); Landlock holds
    return new_userns
