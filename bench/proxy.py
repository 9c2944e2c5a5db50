"""A large download through the transparent HTTP proxy vs the same download with it off.

Runs in test-made namespaces (tests/integration/proxyenv.py): curl in a
pyvpnkit VM downloads from a web server in the "world" namespace, either
straight through the NAT (proxy off), through the proxy to tinyproxy on the
host namespace's loopback, or through the proxy's machine to the original
destination (an excluded name); as a reference, curl also uses tinyproxy
itself (through the NAT to the host alias), which shows tinyproxy's own
cost. HTTPS is compared the same way (a CONNECT tunnel vs the NAT). Rounds
alternate; the medians and ratios to "off" are printed. Needs root, tinyproxy and openssl.

    python3 bench/proxy.py [--size-mb 200] [--rounds 3] [--mtu 65520]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.proxyenv import NAME, PROXY, ProxyEnv, proxy_env  # noqa: E402


def cases(env: ProxyEnv, size: int) -> dict[str, tuple[str, list[str]]]:
    http = f"http://{NAME}/bytes/{size}"
    https = f"--cacert {env.tmp / 'cert.pem'} https://{NAME}/bytes/{size}"
    return {
        "http, proxy off": (http, []),
        "http, via tinyproxy": (http, ["--http-proxy", PROXY]),
        "http, excluded (machine, direct)": (http, ["--http-proxy", PROXY, "--no-proxy", NAME]),
        # Reference: the VM itself uses tinyproxy (via the host alias), no pyvpnkit proxy.
        "http, curl -x tinyproxy (reference)": (f"-x http://192.168.65.2:8888 {http}", []),
        "https, proxy off": (https, []),
        "https, CONNECT via tinyproxy": (https, ["--https-proxy", PROXY]),
    }


def download(env: ProxyEnv, url: str, options: list[str], mtu: int) -> float:
    """curl's own measure of the transfer, in Gbit/s (pyvpnkit's start-up excluded)."""
    script = f"curl -sS --max-time 120 -o /dev/null -w '%{{speed_download}}\\n' {url}"
    out = env.vm(script, "--mtu", str(mtu), *options, timeout=180)
    if out.returncode != 0:
        raise SystemExit(f"download failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip()) * 8 / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mtu", type=int, default=65520)
    args = parser.parse_args()
    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="pvk-proxy-bench-") as tmp, \
            proxy_env(Path(tmp)) as env:
        runs: dict[str, list[float]] = {name: [] for name in cases(env, size)}
        for _ in range(args.rounds):
            for name, (url, options) in cases(env, size).items():
                runs[name].append(download(env, url, options, args.mtu))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print(f"{args.size_mb} MB downloads, MTU {args.mtu}, {args.rounds} rounds (median Gbit/s)")
    for name, value in medians.items():
        base = medians["https, proxy off" if name.startswith("https") else "http, proxy off"]
        print(f"  {name:<36} {value:6.2f}   {value / base:5.2f}x of off   "
              f"runs: {' '.join(f'{v:.2f}' for v in runs[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
