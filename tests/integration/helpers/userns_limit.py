"""Run a command as UID inside a user namespace whose user.max_user_namespaces is 0.

Root makes the namespace (ids 0-65535 mapped to themselves), sets the limit
there (the limit is per user namespace and applies to everything below it),
then drops to UID and execs the command: for that command, creating a user
namespace fails exactly as on a host with the sysctl at 0.
"""

from __future__ import annotations

import os
import sys

from pyvpnkit.runtime import sysns


def main() -> int:
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    cmd = sys.argv[3:]
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        sysns.unshare(sysns.CLONE_NEWUSER)
        os.write(to_parent_w, b"u")
        os.read(to_child_r, 1)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.execvp(cmd[0], cmd)
    os.read(to_parent_r, 1)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("0 0 65536")
    os.write(to_child_w, b"m")
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
