"""Landlock by raw system calls: no writes to the filesystem after set-up.

Reading stays allowed everywhere (the hosts file and resolv.conf are reread,
modules are imported lazily); every kind of write, executing files, device
ioctls on files opened later, and (ABI 6) signals to and abstract unix
sockets of processes outside the sandbox are refused. Descriptors opened
before (the TAP, a pcap file, the API socket) keep working: Landlock checks
at open time. TCP is not restricted: published ports bind and connect
anywhere at any time.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

from pyvpnkit.runtime.sysns import libc

# Landlock's system call numbers are the same on both (asm-generic numbering).
SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE, REMOVE_FILE = 1 << 0, 1 << 5
WRITES_V1 = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove, make
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall(number: int, *args: object) -> int:
    ret: int = libc.syscall(ctypes.c_long(number), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock: {os.strerror(err)}")
    return ret


def abi() -> tuple[int, str]:
    """(ABI version, "") where Landlock works, else (0, why not)."""
    if not sys.platform.startswith("linux"):
        return 0, "Linux only"
    numbers = SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return 0, f"not supported by pyvpnkit on {os.uname().machine}"
    try:
        return _syscall(numbers[0], None, ctypes.c_size_t(0), CREATE_RULESET_VERSION), ""
    except AttributeError:  # a C library without syscall()
        return 0, "no syscall() in the C library"
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return 0, "not built into this kernel"
        if exc.errno == errno.EOPNOTSUPP:
            return 0, "disabled in this kernel (not in lsm= at boot)"
        return 0, f"unavailable ({exc.strerror})"


def restrict(version: int, removable_in: list[int]) -> str:
    """Enforce on the calling thread and its future threads; returns what, for the log.

    Files may still be removed directly in the ``removable_in`` directories,
    given as open (O_PATH) descriptors: the API socket's, unlinked at exit,
    which the sandbox's empty root no longer shows by path. Requires no_new_privs.
    """
    create, add_rule, restrict_self = SYSCALLS[os.uname().machine]
    fs = EXECUTE | WRITES_V1
    fs |= REFER if version >= 2 else 0
    fs |= TRUNCATE if version >= 3 else 0
    fs |= IOCTL_DEV if version >= 5 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    attr = _RulesetAttr(fs, 0, scoped)
    ruleset = _syscall(create, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    try:
        for fd in removable_in:
            rule = _PathBeneath(REMOVE_FILE, fd)
            _syscall(add_rule, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        _syscall(restrict_self, ruleset, 0)
    finally:
        os.close(ruleset)
    what = f"Landlock ABI {version}: no filesystem writes or exec"
    if scoped:
        what += ", signals and abstract sockets only within"
    return what
