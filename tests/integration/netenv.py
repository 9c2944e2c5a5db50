"""Test-made network namespaces: a "host" whose only way out is a veth to a "world".

Nothing here can reach a real network: the host namespace has no other
interface, and the world namespace has only its end of the veth.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

WORLD_IP = "203.0.113.2"
HOST_WORLD_IP = "203.0.113.1"
WORLD_IP6 = "2001:db8::2"
HOST_WORLD_IP6 = "2001:db8::1"
REPO = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent / "helpers"
FOREIGN = REPO / "tests" / "foreign"  # the foreign-host stand-in (its sitecustomize.py)
# Set by test_foreign_host.py for the tests it re-runs: the stack then runs as on a Mac.
FOREIGN_RUN = os.environ.get("PYVPNKIT_TEST_FOREIGN_HOST") == "1"


def stack_python() -> list[str]:
    """The interpreter command for pyvpnkit itself (never for clients or servers).

    Under the foreign-host stand-in only the stack's Python loses Linux's features.
    """
    if FOREIGN_RUN:
        return ["env", f"PYTHONPATH={FOREIGN}", sys.executable]
    return [sys.executable]


def sh(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


class NetEnv:
    def __init__(self, pcap_dir: Path | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.host = f"pvk-h-{tag}"
        self.world = f"pvk-w-{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pcap_dir = pcap_dir
        sh("ip", "netns", "add", self.host)
        sh("ip", "netns", "add", self.world)
        try:
            veth_h, veth_w = f"vh{tag}", f"vw{tag}"
            sh(
                "ip",
                "link",
                "add",
                veth_h,
                "netns",
                self.host,
                "type",
                "veth",
                "peer",
                "name",
                veth_w,
                "netns",
                self.world,
            )
            self.run_in("host", "ip", "link", "set", "lo", "up")
            self.run_in("world", "ip", "link", "set", "lo", "up")
            self.run_in("host", "ip", "addr", "add", f"{HOST_WORLD_IP}/24", "dev", veth_h)
            self.run_in("world", "ip", "addr", "add", f"{WORLD_IP}/24", "dev", veth_w)
            self.run_in("host", "ip", "link", "set", veth_h, "up")
            self.run_in("world", "ip", "link", "set", veth_w, "up")
            self.run_in("host", "ip", "route", "add", "default", "via", WORLD_IP)
            # IPv6 on the same veth (documentation prefix; nodad: usable at once).
            v6 = (("host", HOST_WORLD_IP6, veth_h), ("world", WORLD_IP6, veth_w))
            for which, addr, dev in v6:
                self.run_in(which, "ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
            self.run_in("host", "ip", "-6", "route", "add", "default", "via", WORLD_IP6)
        except BaseException:
            self.close()
            raise

    def ns(self, which: str) -> str:
        return self.host if which == "host" else self.world

    def cmd(self, which: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(which), *args]

    def run_in(
        self,
        which: str,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace; on timeout its whole process group is killed."""
        proc = subprocess.Popen(
            self.cmd(which, *args),
            text=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def start(self, which: str, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        """Start a background process in a namespace; stopped by pid at close()."""
        proc = subprocess.Popen(self.cmd(which, *args), start_new_session=True, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def pyvpnkit(self, *args: str) -> list[str]:
        """Command line running pyvpnkit in the host namespace."""
        return self.cmd("host", *stack_python(), "-m", "pyvpnkit", *args)

    def start_pyvpnkit(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        """pyvpnkit in the background in the host namespace (stopped at close())."""
        return self.start("host", *stack_python(), "-m", "pyvpnkit", *args, **kw)

    def start_helper(
        self, which: str, script: str, *args: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start helpers/SCRIPT; wait for its first stdout line (ready, or its port)."""
        proc = self.start(
            which, sys.executable, str(HELPERS / script), *args, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"{script} did not start")
        return proc, line

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self.procs.clear()
        for name in (self.host, self.world):
            sh("ip", "netns", "del", name, check=False)
            # A namespace's own resolver file (`ip netns exec` binds /etc/netns/NAME/*)
            # dies with it, whoever wrote it and however its writer ended.
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def exec_args(dns_port: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """pyvpnkit options every test uses: never the machine's real resolvers."""
    args = ["--hosts", "/dev/null"]
    args += ["--dns-server", f"127.0.0.1#{dns_port or 9}"]
    return [*args, *extra]
