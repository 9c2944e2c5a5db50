"""Side-by-side throughput and connection rate: pyvpnkit vs slirp4netns vs pasta.

Everything runs inside a test-made "host" namespace (no way out but a veth to
a test-made "world"), servers on that namespace's 127.0.0.1, clients in the
namespace each tool creates. Prints a table and the ratios pyvpnkit/peer.

    python3 bench/compare.py [--seconds 5] [--mtu 65520 --mtu 1500]
        [--tools pyvpnkit,slirp4netns,pasta] [--conn-only]
    python3 bench/compare.py --tools rootlesskit-pyvpnkit,rootlesskit-slirp4netns

The rootlesskit-* tools run Debian's rootlesskit --net=slirp4netns as a
temporary unprivileged user, with pyvpnkit-slirp4netns or slirp4netns as
the helper: the rootless-container setup, compared like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.netenv import NetEnv  # noqa: E402
from tests.integration.rootless import User, slirp4netns_binary  # noqa: E402

ROOTLESSKIT = ("rootlesskit-pyvpnkit", "rootlesskit-slirp4netns")
_user: User | None = None


def rootless_user() -> User:
    """One temporary user for the whole run (removed in main's finally)."""
    global _user
    if _user is None:
        _user = User.create()
    return _user

CONN_CLIENT = r"""
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    s = socket.create_connection((host, port))
    s.sendall(b"x"); s.recv(1); s.close()
    n += 1
print(n / secs)
"""

ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(1024)
print("ready", flush=True)
def serve(c):
    try:
        d = c.recv(1)
        if d: c.sendall(d)
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    serve(c)
"""


# pyvpnkit6: the same stack over IPv6, to [::1] through the IPv6 host alias. The VM's
# IPv6 is set by hand (as tests/integration/test_ipv6_nat.py does) until exec does it.
V6_ALIAS = "fd42:7076:6b69::2"
V6_SETUP = (
    "ip -6 addr replace fd42:7076:6b69::3/64 dev eth0 nodad; "
    f"for a in fd42:7076:6b69::1 {V6_ALIAS}; do "
    "ip -6 neigh replace $a lladdr f6:16:36:bc:f9:c6 dev eth0 nud permanent; done; "
)
IPERF_PORT = {"pyvpnkit6": 5203}  # its iperf3 server listens on [::1]


def wrap(tool: str, mtu: int, inner: str) -> str:
    """Shell command (run in the host namespace) that runs `inner` behind `tool`.

    `inner` may use $GW, the address that reaches the host's loopback.
    """
    if tool == "pyvpnkit6":
        return (
            f"{sys.executable} -m pyvpnkit exec --mtu {mtu} --hosts /dev/null "
            f"--dns-server 127.0.0.1#9 -- sh -c '{V6_SETUP} GW={V6_ALIAS}; {inner}'"
        )
    if tool == "pyvpnkit":
        return (
            f"GW=192.168.65.2 {sys.executable} -m pyvpnkit exec --mtu {mtu} --hosts /dev/null "
            f"--dns-server 127.0.0.1#9 -- sh -c 'GW=192.168.65.2; {inner}'"
        )
    if tool == "pasta":
        # As root pasta cannot map users; attach it to a namespace we make instead.
        ns = f"pvk-pt-{uuid.uuid4().hex[:8]}"
        pid = f"/tmp/{ns}.pid"
        return (
            f"ip netns add {ns}; "
            f"pasta --config-net -q --runas 0 -m {mtu} --netns /run/netns/{ns} --netns-only "
            f"-P {pid} 2>/dev/null; sleep 0.3; "
            f"ip netns exec {ns} sh -c 'GW=203.0.113.2; {inner}'; "
            f"kill $(cat {pid}); rm -f {pid}; ip netns del {ns}"
        )
    if tool == "slirp4netns":
        return (
            "unshare -n sleep 600 & NS=$!; sleep 0.2; "
            f"slirp4netns --configure --mtu={mtu} $NS tap0 >/dev/null 2>&1 & SL=$!; sleep 0.5; "
            f"nsenter -t $NS -n sh -c 'GW=10.0.2.2; {inner}'; "
            "kill $SL $NS"
        )
    if tool in ROOTLESSKIT:
        user = rootless_user()
        helper = slirp4netns_binary(user) if tool == "rootlesskit-pyvpnkit" else "slirp4netns"
        state = user.home / f"rk-{uuid.uuid4().hex[:8]}"
        cmd = user.cmd("rootlesskit", f"--state-dir={state}", "--net=slirp4netns",
                       f"--mtu={mtu}", f"--slirp4netns-binary={helper}",
                       "sh", "-c", f"GW=10.0.2.2; {inner}")
        return shlex.join(cmd)
    raise ValueError(tool)


def run_tool(env: NetEnv, tool: str, mtu: int, inner: str, timeout: float) -> tuple[str, str]:
    """Run `inner` behind `tool`; whatever happens, no daemonized peer is left behind."""
    before = set(Path("/tmp").glob("pvk-pt-*.pid"))
    try:
        out = env.run_in("host", "sh", "-c", wrap(tool, mtu, inner), check=False, timeout=timeout)
        return out.stdout, out.stderr
    except subprocess.TimeoutExpired:
        return "", "timed out"
    finally:
        for pidfile in set(Path("/tmp").glob("pvk-pt-*.pid")) - before:
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
            pidfile.unlink(missing_ok=True)


def iperf(env: NetEnv, tool: str, mtu: int, seconds: int, reverse: bool) -> float:
    port = IPERF_PORT.get(tool, 5201)
    inner = f"iperf3 -c $GW -p {port} -t {seconds} -J {'-R' if reverse else ''}"
    stdout, stderr = run_tool(env, tool, mtu, inner, seconds + 60)
    try:
        text = stdout[stdout.index("{") :]
        data = json.loads(text[: text.rindex("}") + 1])
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError) as exc:
        direction = "down" if reverse else "up"
        print(f"  {tool} mtu {mtu} {direction} failed: {exc}: {stderr[-300:]}", file=sys.stderr)
        return float("nan")


def conn_rate(env: NetEnv, tool: str, mtu: int, seconds: int) -> float:
    script = REPO / "bench" / ".conn_client.py"
    script.write_text(CONN_CLIENT)
    inner = f"{sys.executable} {script} $GW 5202 {seconds}"
    stdout, stderr = run_tool(env, tool, mtu, inner, seconds + 60)
    try:
        return float(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  {tool} conn rate failed: {stderr[-300:]}", file=sys.stderr)
        return float("nan")


def available(tool: str) -> bool:
    if tool in ("pyvpnkit", "pyvpnkit6"):
        return True
    if tool in ROOTLESSKIT:
        peer = tool == "rootlesskit-pyvpnkit" or shutil.which("slirp4netns") is not None
        return peer and shutil.which("rootlesskit") is not None
    return shutil.which(tool) is not None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--mtu", type=int, action="append")
    ap.add_argument("--tools", default="pyvpnkit,pyvpnkit6,slirp4netns,pasta")
    ap.add_argument("--skip-conn", action="store_true")
    ap.add_argument("--conn-only", action="store_true")
    args = ap.parse_args()
    mtus = args.mtu or [65520, 1500]
    tools = [t for t in args.tools.split(",") if available(t)]
    env = NetEnv()
    try:
        env.start(
            "host", "iperf3", "-s", "-B", "127.0.0.1", "-p", "5201", stdout=subprocess.DEVNULL
        )
        env.start("host", "iperf3", "-s", "-B", "::1", "-p", "5203", stdout=subprocess.DEVNULL)
        proc = env.start("host", sys.executable, "-c", ECHO_SERVER, "5202", stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.3)
        results: dict[tuple[str, int], dict[str, float]] = {}
        for mtu in mtus:
            for tool in tools:
                r = {}
                if not args.conn_only:
                    r["up"] = iperf(env, tool, mtu, args.seconds, reverse=False)
                    r["down"] = iperf(env, tool, mtu, args.seconds, reverse=True)
                if not args.skip_conn and mtu == mtus[0] and tool not in IPERF_PORT:
                    r["conn/s"] = conn_rate(env, tool, mtu, args.seconds)
                results[(tool, mtu)] = r
                print(
                    f"{tool:23} mtu {mtu:5}: " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()),
                    flush=True,
                )
        print("\nratios pyvpnkit / peer (same run):")
        pairs = [("pyvpnkit", t) for t in tools
                 if t not in ("pyvpnkit", "pyvpnkit6", *ROOTLESSKIT)]
        if "pyvpnkit6" in tools and "pyvpnkit" in tools:
            pairs.append(("pyvpnkit6", "pyvpnkit"))  # IPv6 / IPv4, same stack, same run
        if all(t in tools for t in ROOTLESSKIT):
            pairs.append(ROOTLESSKIT)
        for mtu in mtus:
            for mine, peer in pairs:
                ours, theirs = results.get((mine, mtu)), results.get((peer, mtu))
                if ours is None or theirs is None:
                    continue
                print(
                    f"  {mine} vs {peer:12} mtu {mtu:5}: "
                    + "  ".join(f"{k} {ours[k] / theirs[k]:.2f}x" for k in ours if k in theirs)
                )
    finally:
        env.close()
        if _user is not None:
            _user.remove()
        (REPO / "bench" / ".conn_client.py").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
