"""A large download through the transparent HTTP proxy vs the same download with it off.

Runs in test-made namespaces (tests/integration/proxyenv.py): curl in a
pyvpnkit VM downloads from a web server in the "world" namespace, either
straight through the NAT (proxy off), through the proxy to an upstream proxy
on the host namespace's loopback (Debian's tinyproxy or squid), or through
the proxy's machine to the original destination (an excluded name). As a
reference, curl also uses the upstream itself (through the NAT to the host
alias, no pyvpnkit proxy), which shows the upstream's own cost. HTTPS is
compared the same way (a CONNECT tunnel vs the NAT). Rounds alternate; the
medians, ratios to "off" and the pyvpnkit process's CPU milliseconds per MB
are printed. Needs root, tinyproxy, openssl and (for --upstream squid) squid.

    python3 bench/proxy.py [--size-mb 200] [--rounds 3] [--mtu 65520]
        [--upstream tinyproxy,squid] [--cold] [--only WORDS] [--baseline-src DIR]

pyvpnkit runs from this checkout's src/ (PYTHONPATH); --baseline-src DIR runs
every proxied case a second time with PYTHONPATH=DIR (another checkout's
src/), in the same rounds: before/after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.netenv import NetEnv, exec_args, wait_for  # noqa: E402
from tests.integration.proxyenv import NAME, PROXY, ProxyEnv, proxy_env  # noqa: E402

SQUID_PORT = 3129  # not 3128: 192.168.65.2:3128 is still the host's, but keep them apart
SQUID = f"127.0.0.1:{SQUID_PORT}"
# A squid that only relays: no cache, the test DNS server, no hosts file, no
# other ports, gone at once on SIGTERM. Run as root it drops to user proxy.
SQUID_CONF = """http_port {addr}
visible_hostname pvk-bench-squid
http_access allow all
cache deny all
cache_mem 0 MB
dns_nameservers 127.0.0.1
hosts_file none
pid_filename none
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
cache_store_log none
coredump_dir {dir}
pinger_enable off
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
logfile_rotate 0
"""
# name: (address for pyvpnkit, port on the host alias, a word of its command line)
UPSTREAMS = {"tinyproxy": (PROXY, 8888, "tinyproxy-8888.conf"),
             "squid": (SQUID, SQUID_PORT, "squid.conf")}


def start_squid(net: NetEnv, tmp: Path) -> None:
    """squid on the host namespace's loopback (stopped with the namespaces)."""
    work = tmp / "squid"
    work.mkdir()
    shutil.chown(work, "proxy", "proxy")
    conf = work / "squid.conf"
    conf.write_text(SQUID_CONF.format(addr=SQUID, dir=work))
    net.start("host", "squid", "-N", "-f", str(conf),
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = f"import socket; socket.create_connection(('127.0.0.1', {SQUID_PORT}), 1)"
    ok = wait_for(lambda: net.run_in("host", "python3", "-c", probe, check=False).returncode == 0,
                  timeout=15)
    if not ok:
        raise SystemExit(f"squid did not start: {(work / 'cache.log').read_text()[-500:]}")


def cases(env: ProxyEnv, size: int, upstreams: list[str]) -> dict[str, tuple[str, list[str]]]:
    http = f"http://{NAME}/bytes/{size}"
    https = f"--cacert {env.tmp / 'cert.pem'} https://{NAME}/bytes/{size}"
    out: dict[str, tuple[str, list[str]]] = {
        "http, proxy off": (http, []),
        "http, excluded (machine, direct)": (http, ["--http-proxy", PROXY, "--no-proxy", NAME]),
    }
    for name in upstreams:
        addr, port, _cmd = UPSTREAMS[name]
        out[f"http, via {name}"] = (http, ["--http-proxy", addr])
        # Reference: the VM itself uses the upstream (via the host alias), no pyvpnkit proxy.
        out[f"http, curl -x {name} (reference)"] = (f"-x http://192.168.65.2:{port} {http}", [])
    out["https, proxy off"] = (https, [])
    for name in upstreams:
        out[f"https, CONNECT via {name}"] = (https, ["--https-proxy", UPSTREAMS[name][0]])
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def find_pid(net: NetEnv, needle: str) -> int:
    """The pid of the process NetEnv started whose command line holds ``needle``."""
    for proc in net.procs:
        if needle in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"):
            return proc.pid
    raise SystemExit(f"no process {needle!r}")


def download(env: ProxyEnv, url: str, options: list[str], mtu: int, src: str | None,
             size: int, warm: bool, others: list[int]) -> list[float]:
    """curl's own measure of the transfer in Gbit/s, then the pyvpnkit process's CPU ms
    per MB during it ($PPID: the VM command is its child), then the same for each of
    ``others`` (pids; over the whole VM command). With ``warm``, a 1-byte
    download of the same kind goes first, so that one-off costs (the proxy's modules
    loading at its first flow, compiled from source when there are no .pyc files)
    stay out of the figure, like pyvpnkit's own start-up."""
    stat = "cut -d' ' -f14,15 /proc/$PPID/stat"
    first = f"curl -sS -o /dev/null {url.replace(f'/bytes/{size}', '/bytes/1')}; " if warm else ""
    script = (f"{first}a=$({stat}); curl -sS --max-time 120 -o /dev/null "
              f"-w '%{{speed_download}}\\n' {url}; b=$({stat}); echo $a $b")
    cmd = env.net.pyvpnkit("exec", *exec_args(53), "--mtu", str(mtu), *options,
                           "--", "sh", "-c", script)
    before = [cpu_ticks(pid) for pid in others]
    # This checkout's pyvpnkit, not whichever one the interpreter would import.
    environ = dict(os.environ, PYTHONPATH=src or str(REPO / "src"))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=environ)
    if out.returncode != 0:
        raise SystemExit(f"download failed: {out.stderr.strip().splitlines()[-1:]}")
    speed, ticks = out.stdout.split("\n", 1)
    u0, s0, u1, s1 = (int(t) for t in ticks.split())
    after = [cpu_ticks(pid) for pid in others]
    ticks_per_mb = os.sysconf("SC_CLK_TCK") / 1000 * (size / 1e6)
    cpu = [u1 + s1 - u0 - s0, *(b - a for a, b in zip(before, after, strict=True))]
    return [float(speed) * 8 / 1e9, *(t / ticks_per_mb for t in cpu)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mtu", type=int, default=65520)
    parser.add_argument("--upstream", default="tinyproxy,squid",
                        help="comma-separated: tinyproxy, squid")
    parser.add_argument("--cold", action="store_true",
                        help="no 1-byte warm-up download before the measured one")
    parser.add_argument("--only", default="",
                        help="comma-separated words: run only the cases naming one (and 'off')")
    parser.add_argument("--baseline-src", help="also run the proxied cases with this src/")
    args = parser.parse_args()
    upstreams = [u for u in args.upstream.split(",") if u]
    if unknown := set(upstreams) - set(UPSTREAMS):
        parser.error(f"unknown upstream: {', '.join(sorted(unknown))}")
    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="pvk-proxy-bench-") as tmp, \
            proxy_env(Path(tmp)) as env:
        if "squid" in upstreams:
            start_squid(env.net, Path(tmp))
        # CPU of the web server and of each upstream, by pid: their columns below.
        pids = [find_pid(env.net, "proxy_web.py")]
        pids += [find_pid(env.net, UPSTREAMS[u][2]) for u in upstreams]
        plan: list[tuple[str, str, list[str], str | None]] = []
        words = [w for w in args.only.split(",") if w]
        for name, (url, options) in cases(env, size, upstreams).items():
            if words and "off" not in name and not any(w in name for w in words):
                continue
            plan.append((name, url, options, None))
            if args.baseline_src and options:
                plan.append((f"{name} [base]", url, options, args.baseline_src))
        runs: dict[str, list[list[float]]] = {row[0]: [] for row in plan}
        for i in range(args.rounds):
            order = plan if i % 2 == 0 else plan[::-1]  # alternate the order too
            for name, url, options, src in order:
                runs[name].append(download(env, url, options, args.mtu, src, size,
                                           not args.cold, pids))
    med = {name: [statistics.median(col) for col in zip(*values, strict=True)]
           for name, values in runs.items()}
    print(f"{args.size_mb} MB downloads{' (cold)' if args.cold else ''}, MTU {args.mtu}, "
          f"{args.rounds} rounds: median Gbit/s, ratio to off, CPU ms/MB of pyvpnkit, "
          f"the web server and {', '.join(upstreams)}")
    print(f"  {'':<44} {'Gbit/s':>6}  {'ratio':>5}  {'pvk':>5} {'web':>5} "
          + " ".join(f"{u[:5]:>5}" for u in upstreams) + "   runs (Gbit/s)")
    for name, values in med.items():
        base = med["https, proxy off" if name.startswith("https") else "http, proxy off"][0]
        cpu = " ".join(f"{c:5.2f}" for c in values[1:])
        print(f"  {name:<44} {values[0]:6.2f}  {values[0] / base:4.2f}x  {cpu}"
              f"   {' '.join(f'{run[0]:.2f}' for run in runs[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
