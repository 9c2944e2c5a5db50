"""--runas: give up root once everything that needs it is open, as pasta does.

Root is needed only to open TAPs in other namespaces, bind listeners (low
ports, sockets in root-owned directories) and raise the descriptor limit.
After that the process switches to the given user for good (supplementary
groups dropped, then the group, then the user, so there is no way back).

What it can still do as that user: everything it already holds (TAPs,
listening sockets, the API socket, host sockets) keeps working, and new host
TCP/UDP connections need no privilege. What it cannot do any more: open raw
ICMP sockets (pings then need net.ipv4.ping_group_range to include the
group), bind ports below 1024 for new port forwards, remove socket files in
directories the user cannot write, or signal processes of other users.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd

log = logging.getLogger("pyvpnkit")


class RunAsError(Exception):
    """The --runas value names no user or group, or we are not root."""


def resolve(spec: str) -> tuple[int, int]:
    """(uid, gid) for USER[:GROUP]; names or numbers; the user's own group by default."""
    user, _, group = spec.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        if not user.isdigit():
            raise RunAsError(f"--runas: no such user {user!r}") from None
        uid, gid = int(user), int(user)
    else:
        uid, gid = pw.pw_uid, pw.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise RunAsError(f"--runas: no such group {group!r}") from None
    return uid, gid


def drop_to(spec: str) -> None:
    """Become USER[:GROUP] for good; a no-op for the current user."""
    uid, gid = resolve(spec)
    if os.geteuid() == uid:
        return
    if os.geteuid() != 0:
        raise RunAsError(f"--runas {spec}: only root can switch users")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    log.info("running as uid %d gid %d from now on", uid, gid)
