"""A seccomp filter through libseccomp (the maintained C library), by ctypes.

Policy as slirp4netns's: allow by default and refuse what a user-mode
network stack never needs once it is set up (debugging other processes,
kernel modules, mounts, namespaces, exec, reboot, keyrings, clocks, BPF,
io_uring). Refused calls fail with EPERM rather than killing the process,
so a path nobody foresaw logs an error instead of dying silently.

Namespaces can also be made by clone(2) with CLONE_NEW* flags: those are
refused too. clone3(2) passes its flags in memory a filter cannot read, so
it gets ENOSYS, which makes glibc fall back to clone(2) for threads.
"""

from __future__ import annotations

import ctypes
import errno
import os

LIBRARY = "libseccomp.so.2"
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_TSYNC = 4  # apply to every thread of the process, not just the caller
SCMP_CMP_MASKED_EQ = 7
# clone(2)'s namespace flags: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
CLONE_NEW = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

DENIED = (
    # other processes: tracing, reading and writing their memory, stealing fds
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "pidfd_send_signal",
    "kcmp", "perf_event_open", "lookup_dcookie",
    # kernel modules, kexec, reboot, swap, accounting, the kernel log
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "syslog",
    # mounts and the filesystem's root
    "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at",
    # namespaces and exec: nothing runs after set-up
    "setns", "unshare", "execve", "execveat",
    # keyrings, clocks, BPF, userfaultfd, io_uring (its operations bypass seccomp)
    "keyctl", "add_key", "request_key",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "iopl", "ioperm", "quotactl", "vhangup",
)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _errno_action(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)  # SCMP_ACT_ERRNO


def load_library() -> ctypes.CDLL:
    """libseccomp, or OSError naming what is missing (Debian: libseccomp2)."""
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError:
        raise OSError(errno.ENOENT, f"{LIBRARY} not found (install libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


Rule = tuple[str, str, int, list[_ArgCmp]]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def version() -> str:
    """libseccomp's version, as slirp4netns -v reports it; OSError when it is missing."""
    lib = load_library()
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    v = lib.seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def _rules(machine: str) -> list[Rule]:
    """(syscall, label for the log, action, argument conditions).

    Several rules for one call are or-ed.
    """
    eperm = _errno_action(errno.EPERM)
    rules: list[Rule] = [(name, name, eperm, []) for name in DENIED]
    rules.append(("clone3", "clone3 (ENOSYS)", _errno_action(errno.ENOSYS), []))
    if machine not in ("s390", "s390x"):  # clone's flags are its first argument elsewhere
        rules += [("clone", "clone(CLONE_NEW*)", eperm,
                   [_ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)]) for flag in CLONE_NEW]
    return rules


def install() -> list[str]:
    """Load the filter into every thread; returns what it refuses, for the log.

    Calls this architecture does not have are left out. Raises OSError when
    libseccomp is missing or the kernel refuses the filter.
    """
    lib = load_library()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    denied: list[str] = []
    try:
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "seccomp_attr_set")
        for name, label, action, conds in _rules(os.uname().machine):
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a system call of this architecture
                continue
            array = (_ArgCmp * len(conds))(*conds) if conds else None
            _check(lib.seccomp_rule_add_array(ctx, action, number, len(conds), array),
                   f"seccomp_rule_add {name}")
            if label not in denied:
                denied.append(label)
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)
    return denied


def _check(rc: int, what: str) -> None:
    if rc < 0:  # libseccomp returns -errno
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
