"""Why a namespace set-up step failed, said in one line with the fix.

The forked child that builds a namespace cannot print a useful error itself:
it only knows an errno. This module turns (step, errno, the sysctls that
gate user namespaces) into the sentence the parent prints before exiting
125, so users learn which knob to turn instead of reading a traceback.
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False  # not typing's, nor collections.abc at run time: on the TAP's path
if TYPE_CHECKING:  # (runtime/netns, bench/startup.py), both cost start-up time
    from collections.abc import Callable

SYSCTL_MAX_USERNS = "/proc/sys/user/max_user_namespaces"
SYSCTL_UNPRIV_CLONE = "/proc/sys/kernel/unprivileged_userns_clone"  # Debian/Ubuntu patch
SYSCTL_APPARMOR = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"  # Ubuntu 23.10+

TUN = "/dev/net/tun"


def read_sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


class SetupError(Exception):
    """A set-up step failed; ``str()`` is the one line for the user."""


def explain(
    step: str, exc: OSError, sysctl: Callable[[str], str | None] = read_sysctl
) -> str:
    """One line naming what failed, why, and how to fix it.

    ``step`` is one of "userns", "netns", "setns", "tun", "ip", or a free
    description used as is for anything else.
    """
    code = exc.errno or 0
    reason = exc.strerror or str(exc)
    if step == "userns":
        return _userns(code, reason, sysctl)
    if step == "tun":
        if code == errno.ENOENT:
            return (f"{TUN} is missing: load the tun module (modprobe tun) or create it "
                    f"(mknod -m 666 {TUN} c 10 200)")
        if code in (errno.EACCES, errno.EPERM):
            return (f"cannot open {TUN} ({reason}): make it usable by everyone "
                    f"(chmod 666 {TUN}), as the tun module does by default")
        if code == errno.EBUSY:
            return "the TAP device is in use by another program (only one may attach to it)"
        return f"cannot create the TAP device: {reason}"
    if step == "ip":
        if code == errno.ENOENT:
            return "the `ip` command is missing: install iproute2 (apt-get install iproute2)"
        return f"configuring the interface with `ip` failed: {reason}"
    if step == "netns":
        if code == errno.EPERM:
            return ("creating a network namespace was refused (Operation not permitted): "
                    "a security policy or seccomp filter forbids unshare(2)")
        return f"creating a network namespace failed: {reason}"
    if step == "setns":
        if code == errno.EPERM:
            return ("joining the target namespace was refused: run as the user who owns "
                    "its user namespace (or as root)")
        return f"joining the target namespace failed: {reason}"
    return f"{step}: {reason}"


def _userns(code: int, reason: str, sysctl: Callable[[str], str | None]) -> str:
    root = "or run as root"
    if code == errno.ENOSPC or sysctl(SYSCTL_MAX_USERNS) == "0":
        return ("user namespaces are disabled (user.max_user_namespaces=0): enable them with "
                f"`sysctl -w user.max_user_namespaces=15000`, {root}")
    if code == errno.EPERM and sysctl(SYSCTL_UNPRIV_CLONE) == "0":
        return ("unprivileged user namespaces are disabled "
                "(kernel.unprivileged_userns_clone=0): enable them with "
                f"`sysctl -w kernel.unprivileged_userns_clone=1`, {root}")
    if code == errno.EPERM and sysctl(SYSCTL_APPARMOR) == "1":
        return ("AppArmor refuses unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns=1): allow `userns` in an "
                f"AppArmor profile for this Python, {root}")
    if code == errno.EPERM:
        return ("creating a user namespace was refused (Operation not permitted) by a "
                f"security module or seccomp filter: check that `unshare -rn true` works, {root}")
    if code == errno.EUSERS:
        return f"too many nested user namespaces: run pyvpnkit from an outer namespace, {root}"
    return f"creating a user namespace failed: {reason}"
