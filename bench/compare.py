"""Side-by-side throughput, connection rate, latency, DNS and CPU cost:
pyvpnkit vs slirp4netns vs pasta.

Everything runs inside a test-made "host" namespace (no way out but a veth to
a test-made "world"), servers on that namespace's 127.0.0.1 (iperf3, echo
servers, dnsmasq on port 53 with its resolv.conf pointing there), clients
(bench/clients.py) in the namespace each tool creates. Each figure is the
median of --reps runs, the tools alternating (rotated order every round).
Prints the table and the ratios pyvpnkit/peer. bench/README.md has each
peer's command line. The pub_* tests (bench/published.py) run the servers
behind the stack and the clients on the host, through published ports.

    python3 bench/compare.py [--seconds 3] [--reps 3] [--mtu 65520 --mtu 1500]
        [--tools pyvpnkit,slirp4netns,pasta-user]
        [--tests up,down,conn,tcp_rr,udp_rr,dns,udp_up,udp_down,pub_in,pub_out,pub_conn,pub_udp_rr]
        [--baseline-src DIR] [--parallel N]
    python3 bench/compare.py --tools rootlesskit-pyvpnkit,rootlesskit-slirp4netns

Tools: pyvpnkit; pyvpnkit6 (the same over IPv6: every test to [::1] via the
IPv6 alias, DNS to the stack's IPv6 address); pyvpnkit-uvloop (the same under uvloop, if installed);
pyvpnkit-base (the code in --baseline-src, for before/after); pyvpnkit-pure (the
pure-Python build installed for --pure-python, beside the compiled one this
script's Python runs); slirp4netns;
pasta-user (rootless, as podman runs it: `pasta --config-net -- CMD` as an
unprivileged user); pasta (as root, attached to a namespace we made: slow
upload, see bench/README.md); rootlesskit-* (Debian's rootlesskit
--net=slirp4netns as a temporary user, with pyvpnkit-slirp4netns or
slirp4netns as the helper; no CPU figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import published  # noqa: E402

from tests.integration.netenv import WORLD_IP, NetEnv  # noqa: E402
from tests.integration.rootless import User, slirp4netns_binary  # noqa: E402

ROOTLESSKIT = ("rootlesskit-pyvpnkit", "rootlesskit-slirp4netns")
PEERS = ("slirp4netns", "pasta-user", "pasta")
CLIENTS = REPO / "bench" / "clients.py"
DNS_FORWARD = "169.254.1.1"  # pasta's --dns-forward address (podman uses one like it)
_user: User | None = None


def rootless_user() -> User:
    """One temporary user for the whole run (removed in main's finally)."""
    global _user
    if _user is None:
        _user = User.create()
    return _user


ECHO_SERVER = r"""
import selectors, socket, sys, threading
conn_port, rr_port, udp_port = (int(a) for a in sys.argv[1:4])
ADDRS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))
if sys.argv[4:] == ["any"]:  # inside a VM, behind published ports
    ADDRS = ((socket.AF_INET, "0.0.0.0"),)
# One selector serves every TCP connection at once (--parallel clients): a
# connection's recv runs only when it is readable, so no client waits on another.
sel = selectors.DefaultSelector()
def listener(port, family, addr, once):
    srv = socket.socket(family); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port)); srv.listen(1024)
    sel.register(srv, selectors.EVENT_READ, (True, once))
def udp(family, addr):
    u = socket.socket(family, socket.SOCK_DGRAM); u.bind((addr, udp_port))
    while True:
        d, a = u.recvfrom(65536); u.sendto(d, a)
for fam, addr in ADDRS:
    listener(conn_port, fam, addr, True)  # connection rate: echo one byte, close
    listener(rr_port, fam, addr, False)  # request/response: echo until EOF
    threading.Thread(target=udp, args=(fam, addr), daemon=True).start()
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        sock, (listening, once) = key.fileobj, key.data
        if listening:
            c, _ = sock.accept()
            if not once:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(c, selectors.EVENT_READ, (False, once))
            continue
        try:
            d = sock.recv(65536)
            if d:
                sock.sendall(d)
        except OSError:
            d = b""
        if once or not d:
            sel.unregister(sock); sock.close()
"""


# pyvpnkit6: the same stack over IPv6, every test to the servers' [::1] twins through
# the IPv6 host alias, DNS to the stack's IPv6 address. The VM's IPv6 is set by
# hand, idempotently, as tests/integration/test_ipv6_nat.py does.
V6_ALIAS = "fd42:7076:6b69::2"
V6_DNS = "fd42:7076:6b69::1"
V6_SETUP = (
    "ip -6 addr replace fd42:7076:6b69::3/64 dev eth0 nodad; "
    f"for a in fd42:7076:6b69::1 {V6_ALIAS}; do "
    "ip -6 neigh replace $a lladdr f6:16:36:bc:f9:c6 dev eth0 nud permanent; done; "
)


# The clients need only the standard library, and pasta-user runs them as a temporary
# user, who cannot run an interpreter under /root (pyenv's): the system's python3 then.
CLIENT_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def client(gw: str, dns: str, stack: str, secs: int, tests: str, parallel: int = 1) -> str:
    return f"{CLIENT_PYTHON} {CLIENTS} {gw} {dns} {stack} {secs} {tests} --parallel {parallel}"


def wrap(tool: str, mtu: int, run: str) -> str:
    """Shell command (run in the host namespace) that runs the clients behind `tool`.

    `run` is clients.py's command line with $GW, $DNS and $STACK (the stack's pid)
    left for the shell inside to fill in.
    """
    inner = run.replace("$GW", "{gw}").replace("$DNS", "{dns}").replace("$STACK", "{stack}")
    if tool.startswith("pyvpnkit") and tool not in ROOTLESSKIT:
        py = f"{STACK_PREFIX}{sys.executable} -m pyvpnkit"
        if tool == "pyvpnkit-uvloop":
            py = (f"{STACK_PREFIX}{sys.executable} -c 'import runpy, uvloop; uvloop.install(); "
                  "runpy.run_module(\"pyvpnkit\", run_name=\"__main__\")'")
        elif tool == "pyvpnkit-base":
            py = f"PYTHONPATH={BASELINE_SRC} {py}"
        elif tool == "pyvpnkit-pure":
            py = f"{STACK_PREFIX}{PURE_PYTHON} -m pyvpnkit"
        # The command runs as the stack's direct child: $PPID is the stack.
        gw = V6_ALIAS if tool == "pyvpnkit6" else "192.168.65.2"
        dns = V6_DNS if tool == "pyvpnkit6" else "192.168.65.1"
        body = inner.format(gw=gw, dns=dns, stack="$PPID")
        if tool == "pyvpnkit6":
            body = V6_SETUP + body
        cache = " --dns-cache 1000" if tool == "pyvpnkit-dnscache" else ""
        return (f"{py} exec --mtu {mtu} --hosts /dev/null --dns-server 127.0.0.1#53{cache} "
                f"-- sh -c {shlex.quote(body)}")
    if tool == "pasta-user":
        # Rootless, as podman and its users run it: pasta makes the user and
        # network namespaces, copies the host's addresses and routes, and maps
        # the gateway address to the host's loopback. The command sees pasta
        # only through the pid file (it runs in pasta's own pid namespace).
        pid = f"/tmp/pvk-ptu-{uuid.uuid4().hex[:8]}.pid"
        body = inner.format(gw=WORLD_IP, dns=DNS_FORWARD, stack=f"$(cat {pid})")
        cmd = rootless_user().cmd(
            "pasta", "--config-net", "-q", "-m", str(mtu), "--dns-forward", DNS_FORWARD,
            "--", "sh", "-c", body)
        # setpriv, env and pasta each exec the next: this shell's pid becomes pasta's.
        return f"sh -c {shlex.quote(f'echo $$ > {pid}; exec {shlex.join(cmd)}')}; rm -f {pid}"
    if tool == "pasta":
        # As root pasta cannot map users; attach it to a namespace we make instead.
        ns = f"pvk-pt-{uuid.uuid4().hex[:8]}"
        pid = f"/tmp/{ns}.pid"
        body = inner.format(gw=WORLD_IP, dns=DNS_FORWARD, stack="$STACK")
        return (
            f"ip netns add {ns}; "
            f"pasta --config-net -q --runas 0 -m {mtu} --dns-forward {DNS_FORWARD} "
            f"--netns /run/netns/{ns} --netns-only -P {pid} 2>/dev/null; sleep 0.3; "
            f"STACK=$(cat {pid}) ip netns exec {ns} sh -c {shlex.quote(body)}; "
            f"kill $(cat {pid}); rm -f {pid}; ip netns del {ns}"
        )
    if tool == "slirp4netns":
        body = inner.format(gw="10.0.2.2", dns="10.0.2.3", stack="$STACK")
        return (
            "unshare -n sleep 600 & NS=$!; sleep 0.2; "
            f"{STACK_PREFIX}slirp4netns --configure --mtu={mtu} $NS tap0 >/dev/null 2>&1 & "
            "SL=$!; "
            # Until --configure's default route is in (a fixed sleep lost whole rounds
            # on a busy machine: every client's connect failed at once).
            "for i in $(seq 200); do nsenter -t $NS -n ip route show default | grep -q . "
            "&& break; sleep 0.05; done; "
            f"STACK=$SL nsenter -t $NS -n sh -c {shlex.quote(body)}; "
            "kill $SL $NS; wait"  # until slirp4netns has exited (and valgrind written its file)
        )
    if tool in ROOTLESSKIT:
        user = rootless_user()
        helper = slirp4netns_binary(user) if tool == "rootlesskit-pyvpnkit" else "slirp4netns"
        state = user.home / f"rk-{uuid.uuid4().hex[:8]}"
        body = inner.format(gw="10.0.2.2", dns="10.0.2.3", stack="0")
        cmd = user.cmd("rootlesskit", f"--state-dir={state}", "--net=slirp4netns",
                       f"--mtu={mtu}", f"--slirp4netns-binary={helper}", "sh", "-c", body)
        return shlex.join(cmd)
    raise ValueError(tool)


def run_tool(
    env: NetEnv, tool: str, mtu: int, run: str, timeout: float, publish: bool = False
) -> dict[str, float]:
    """Run the clients behind `tool` (with `publish`, on the host through published ports to
    servers behind it); whatever happens, no daemonized peer is left behind."""
    before = set(Path("/tmp").glob("pvk-pt-*.pid"))
    if publish:
        command = published.wrap(tool, mtu, run, ECHO_SERVER,
                                 lambda *a: rootless_user().cmd(*a), BASELINE_SRC)
    else:
        command = wrap(tool, mtu, run)
    try:
        out = env.run_in("host", "sh", "-c", command, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {tool} mtu {mtu}: timed out", file=sys.stderr)
        return {}
    finally:
        for pidfile in set(Path("/tmp").glob("pvk-pt-*.pid")) - before:
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
            pidfile.unlink(missing_ok=True)
    if out.stderr.strip():
        print(f"  {tool} mtu {mtu}: {out.stderr.strip()[-300:]}", file=sys.stderr)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            prefix = "pub " if publish else ""
            return {prefix + k: float(v) for k, v in json.loads(line).items()}
    return {}


def available(tool: str) -> bool:
    if tool in ("pyvpnkit", "pyvpnkit6", "pyvpnkit-base", "pyvpnkit-dnscache"):
        return True
    if tool == "pyvpnkit-uvloop":
        return importlib.util.find_spec("uvloop") is not None
    if tool == "pyvpnkit-pure":
        return os.access(PURE_PYTHON, os.X_OK)
    if tool in ROOTLESSKIT:
        peer = tool == "rootlesskit-pyvpnkit" or shutil.which("slirp4netns") is not None
        return peer and shutil.which("rootlesskit") is not None
    return shutil.which(tool.removesuffix("-user")) is not None


class Servers:
    """iperf3, the echo servers and dnsmasq on the host namespace's loopback,
    with a resolv.conf there naming 127.0.0.1 (what slirp4netns and pasta forward to)."""

    def __init__(self, env: NetEnv) -> None:
        self.resolv = Path(f"/etc/netns/{env.host}/resolv.conf")
        self.resolv.parent.mkdir(parents=True, exist_ok=True)
        self.resolv.write_text("nameserver 127.0.0.1\n")
        for bind in ("127.0.0.1", "::1"):
            env.start("host", "iperf3", "-s", "-B", bind, "-p", "5201",
                      stdout=subprocess.DEVNULL)
        proc = env.start("host", sys.executable, "-c", ECHO_SERVER, "5202", "5203", "5204",
                         stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()
        # Static answers, no upstream: the same local server for every stack.
        env.start("host", "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53",
                  "--listen-address=127.0.0.1,::1", "--bind-interfaces", "--user=root",
                  "--address=/bench.test/203.0.113.77", "--log-facility=/dev/null",
                  "--local-ttl=300",  # a real answer's TTL (with 0 nothing could be cached)
                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def close(self) -> None:
        self.resolv.unlink(missing_ok=True)
        try:
            self.resolv.parent.rmdir()
        except OSError:
            pass


def usable(value: float | None) -> bool:
    """Measured (not missing or NaN) and not zero, so a ratio means something."""
    return value is not None and value == value and value != 0


def fmt(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main() -> None:
    global BASELINE_SRC, PURE_PYTHON
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mtu", type=int, action="append")
    ap.add_argument("--tools", default="pyvpnkit,pyvpnkit6,slirp4netns,pasta-user")
    ap.add_argument("--tests", default="up,down,conn,tcp_rr,udp_rr,dns,udp_up,udp_down,"
                    + ",".join(published.TESTS))
    ap.add_argument("--parallel", type=int, default=1,
                    help="N clients run each test at once (iperf3 -P N); figures are sums")
    ap.add_argument("--baseline-src", default="", help="src dir run as the pyvpnkit-base tool")
    ap.add_argument("--pure-python", default=PURE_PYTHON,
                    help="python of a venv with the pure build (PYVPNKIT_PURE=1 pip install .)")
    args = ap.parse_args()
    BASELINE_SRC = args.baseline_src
    PURE_PYTHON = args.pure_python
    mtus = args.mtu or [65520, 1500]
    tools = [t for t in args.tools.split(",") if available(t)]
    env = NetEnv()
    servers = None
    try:
        servers = Servers(env)
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        asked = args.tests.split(",")
        outbound = ",".join(t for t in asked if t not in published.TESTS)
        pub = ",".join(published.TESTS[t] for t in asked if t in published.TESTS)
        limit = len(asked) * (args.seconds + 30) + 30
        for mtu in mtus:
            for rep in range(args.reps):
                order = tools[rep % len(tools):] + tools[: rep % len(tools)]
                for tool in order:
                    r: dict[str, float] = {}
                    if outbound:
                        run = client("$GW", "$DNS", "$STACK", args.seconds, outbound,
                                     args.parallel)
                        r = run_tool(env, tool, mtu, run, limit)
                    if pub and tool in published.AVAILABLE:
                        run = client("$GW", "-", "$STACK", args.seconds, pub, args.parallel)
                        r.update(run_tool(env, tool, mtu, run, limit, publish=True))
                    runs.setdefault((tool, mtu), []).append(r)
                    print(f"  round {rep + 1} {tool} mtu {mtu}: "
                          + "  ".join(f"{k} {fmt(v)}" for k, v in r.items()), flush=True)
        medians: dict[tuple[str, int], dict[str, float]] = {}
        for key, rs in runs.items():
            names = dict.fromkeys(k for r in rs for k in r)
            medians[key] = {k: statistics.median(r[k] for r in rs if k in r) for k in names}
        cols = list(dict.fromkeys(k for m in medians.values() for k in m))
        print(f"\nmedians of {args.reps} rounds, {args.seconds} s each, "
              f"{args.parallel} parallel client(s) "
              "(Gbit/s; per second; CPU s per GB moved, lower is better):")
        print(f"{'tool':24} {'mtu':>5} " + " ".join(f"{c:>11}" for c in cols))
        for (tool, mtu), m in medians.items():
            print(f"{tool:24} {mtu:5} "
                  + " ".join(f"{fmt(m.get(c, float('nan'))):>11}" for c in cols))
        print("\nratios ours / peer (above 1 is better for us, except CPU/GB):")
        mine = [t for t in tools if t.startswith("pyvpnkit") and t not in ROOTLESSKIT]
        pairs = [(a, b) for a in mine for b in tools if b in PEERS]
        pairs += [(a, "pyvpnkit") for a in mine
                  if a not in ("pyvpnkit", "pyvpnkit-pure") and "pyvpnkit" in tools]
        if "pyvpnkit" in tools and "pyvpnkit-pure" in tools:
            pairs.append(("pyvpnkit", "pyvpnkit-pure"))  # the compiled build's speed-up
        if all(t in tools for t in ROOTLESSKIT):
            pairs.append(ROOTLESSKIT)
        for mtu in mtus:
            for a, b in pairs:
                ours, theirs = medians.get((a, mtu), {}), medians.get((b, mtu), {})
                shared = [k for k in cols if usable(ours.get(k)) and usable(theirs.get(k))]
                print(f"  {a} vs {b:12} mtu {mtu:5}: "
                      + "  ".join(f"{k} {ours[k] / theirs[k]:.2f}x" for k in shared))
    finally:
        env.close()
        if servers is not None:
            servers.close()
        if _user is not None:
            _user.remove()


BASELINE_SRC = ""
# A command prefix for the stack process of pyvpnkit and slirp4netns
# (bench/instructions.py runs them under valgrind).
STACK_PREFIX = ""
PURE_PYTHON = "/opt/pyvpnkit-venv-pure/bin/python"  # .ci/run's pure venv

if __name__ == "__main__":
    main()
