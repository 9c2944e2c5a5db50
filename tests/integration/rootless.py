"""An unprivileged user for the rootless tests, and commands run as that user.

The user gets a unique name, a home under /tmp, subordinate id ranges (for
rootlesskit and podman) and is removed afterwards with everything it ran.
Commands run in a NetEnv's host namespace through `nsenter --net` (not `ip
netns exec`, which remounts /sys) and `setpriv`, with this interpreter: the
venv of Debian's Python is world-readable, and so must be the package.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyvpnkit
from tests.integration.netenv import HELPERS, NetEnv

PACKAGE_DIR = Path(pyvpnkit.__file__).resolve().parents[1]
SUBID_COUNT = 65536


def _world_readable(path: Path) -> bool:
    """Every directory up to PATH is searchable by others, and PATH is readable."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH or (part == path and not mode & stat.S_IROTH):
            return False
    return True


def unusable_reason() -> str | None:
    for tool in ("useradd", "userdel", "setpriv", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not _world_readable(PACKAGE_DIR / "pyvpnkit"):
        return f"{PACKAGE_DIR} is not readable by other users"
    if not _world_readable(Path(sys.executable).resolve()):
        return f"{sys.executable} is not usable by other users"
    return None


def _free_subid_start() -> int:
    end = 100000
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(name).read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return end


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def create(cls) -> User:
        name = f"pvk{uuid.uuid4().hex[:8]}"
        home = Path(tempfile.mkdtemp(prefix="pvk-u-"))
        start = _free_subid_start()
        ids = f"{start}-{start + SUBID_COUNT - 1}"
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-U", name],
                       check=True, capture_output=True)
        user = cls(name, int(_id("-u", name)), int(_id("-g", name)), home)
        try:
            if not _has_subids(name):  # Debian's useradd usually assigns them already
                subprocess.run(["usermod", "--add-subuids", ids, "--add-subgids", ids, name],
                               check=True, capture_output=True)
            os.chown(home, user.uid, user.gid)
            home.chmod(0o755)
            (home / "run").mkdir(mode=0o700)
            os.chown(home / "run", user.uid, user.gid)
            for script in ("tcp_client.py", "tcp_server.py"):
                shutil.copy(HELPERS / script, home / script)
                (home / script).chmod(0o644)
        except BaseException:
            user.remove()
            raise
        return user

    def env(self) -> list[str]:
        env = [f"HOME={self.home}", f"XDG_RUNTIME_DIR={self.home}/run", f"USER={self.name}",
               f"TMPDIR={self.home}",
               "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"]
        if not str(Path(pyvpnkit.__file__).resolve()).startswith(sys.prefix):
            env.append(f"PYTHONPATH={PACKAGE_DIR}")  # a source tree, not installed
        return env

    def cmd(self, *args: str) -> list[str]:
        """ARGS as this user, with a clean environment."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "env", "-i", *self.env(), *args]

    def in_host(self, env: NetEnv, *args: str) -> list[str]:
        """ARGS as this user in the test's host namespace."""
        return ["nsenter", f"--net=/run/netns/{env.host}", *self.cmd(*args)]

    def remove(self) -> None:
        for pid in _pids_of(self.uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["userdel", self.name], capture_output=True)
        for name in ("/etc/subuid", "/etc/subgid"):
            _drop_lines(name, self.name)
        shutil.rmtree(self.home, ignore_errors=True)


def _id(flag: str, name: str) -> str:
    return subprocess.run(["id", flag, name], check=True, capture_output=True,
                          text=True).stdout.strip()


def _has_subids(name: str) -> bool:
    for path in ("/etc/subuid", "/etc/subgid"):
        Path(path).touch(exist_ok=True)
        if not any(line.startswith(f"{name}:") for line in Path(path).read_text().splitlines()):
            return False
    return True


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                continue
    return pids


def _drop_lines(path: str, name: str) -> None:
    try:
        lines = Path(path).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = [line for line in lines if not line.startswith(f"{name}:")]
    if kept != lines:
        Path(path).write_text("".join(kept))


def run(cmd: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run CMD in its own process group; on timeout the whole group is killed."""
    proc = subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, **kw)  # type: ignore[call-overload]
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out: {cmd}\n{out}\n{err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def slirp4netns_binary(user: User) -> str:
    """The installed console script, or (in a source tree) a wrapper that runs it."""
    script = Path(sys.executable).parent / "pyvpnkit-slirp4netns"
    if script.exists() and not any(e.startswith("PYTHONPATH=") for e in user.env()):
        return str(script)
    wrapper = user.home / "pyvpnkit-slirp4netns"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={PACKAGE_DIR} exec {sys.executable} '
                       '-m pyvpnkit.frontends.slirp4netns "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)
