"""Network conditions and egress rules, and the Prometheus metrics, measured end to end.

Two "VMs" (namespaces whose TAPs helpers/tap_vm.py relays over --listen-qemu)
at 192.168.65.3 and .4 reach servers in the test's world namespace through
`pyvpnkit run`; the test changes the rules through the API as a user would,
and measures from inside the VM with helpers/conditions_probe.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyvpnkit.api.client import ApiClient
from tests.integration.netenv import HELPERS, WORLD_IP, NetEnv, exec_args, sh, wait_for

VMS = {"a": ("192.168.65.3", "02:00:00:00:00:03"), "b": ("192.168.65.4", "02:00:00:00:00:04")}
METRICS_PORT = 19100
MB4 = 4 * 1024 * 1024


@dataclass
class Lab:
    env: NetEnv
    api: ApiClient
    vm_ns: dict[str, str]
    tcp_port: int
    udp_port: int
    dir: Path

    def in_vm(self, vm: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.vm_ns[vm], *args], capture_output=True,
                              text=True, timeout=timeout)

    def probe(self, vm: str, *args: str) -> dict[str, Any]:
        out = self.in_vm(vm, sys.executable, str(HELPERS / "conditions_probe.py"), *args)
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def connect_ms(self, vm: str = "a", count: int = 5) -> float:
        result = self.probe(vm, "connect", WORLD_IP, str(self.tcp_port), str(count))
        assert result["error"] is None, result
        return float(result["ms"])

    def ping_ms(self, vm: str = "a") -> float:
        out = self.in_vm(vm, "ping", "-c", "5", "-i", "0.2", "-q", WORLD_IP)
        match = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
        assert out.returncode == 0 and match, out.stdout + out.stderr
        return float(match.group(1))

    def rule(self, **fields: Any) -> dict[str, Any]:
        return self.api.add_condition(fields)


@pytest.fixture
def lab(netenv: NetEnv) -> Iterator[Lab]:
    d = Path(tempfile.mkdtemp(prefix="pvk-cond-"))
    tag = uuid.uuid4().hex[:8]
    vm_ns = {name: f"pvk-{name}-{tag}" for name in VMS}
    try:
        _p, tcp_port = netenv.start_helper("world", "tcp_server.py", WORLD_IP, "0")
        _p, udp_port = netenv.start_helper("world", "udp_echo.py", WORLD_IP, "0")
        stack = netenv.start_pyvpnkit(
            "run", *exec_args(), "--listen-qemu", f"unix://{d}/vm.sock", "--api",
            f"unix://{d}/api.sock", "--metrics-listen", str(METRICS_PORT), "--pid-file",
            str(d / "pid"), stderr=open(d / "stack.log", "w"))  # noqa: SIM115
        assert wait_for(lambda: (d / "pid").exists() or stack.poll() is not None, 20)
        assert stack.poll() is None, (d / "stack.log").read_text()
        for name, (ip, mac) in VMS.items():
            ns = vm_ns[name]
            sh("ip", "netns", "add", ns)
            relay = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(HELPERS / "tap_vm.py"),
                 str(d / "vm.sock"), "eth0", mac], stdout=subprocess.PIPE, start_new_session=True)
            netenv.procs.append(relay)
            assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"],
                        ["ip", "route", "add", "default", "via", "192.168.65.1"]):
                sh("ip", "netns", "exec", ns, *cmd)
        lab = Lab(netenv, ApiClient(f"unix://{d}/api.sock"), vm_ns, int(tcp_port),
                  int(udp_port), d)
        for name in VMS:  # the switch learns each VM from its first packet
            assert wait_for(lambda n=name: lab.probe(n, "connect", WORLD_IP, tcp_port, "1",
                                                     "2")["error"] is None, 20)
        yield lab
    finally:
        netenv.close()
        for ns in vm_ns.values():
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(d, ignore_errors=True)


def test_delay_adds_to_connect_time_and_ping(lab: Lab) -> None:
    base_connect, base_ping = lab.connect_ms(), lab.ping_ms()
    lab.rule(to=WORLD_IP, delay_ms=100, direction="out")
    connect, ping = lab.connect_ms(), lab.ping_ms()
    print(f"connect {base_connect:.1f} -> {connect:.1f} ms, ping {base_ping:.1f} -> {ping:.1f} ms")
    assert 80 <= connect - base_connect <= 120
    assert 80 <= ping - base_ping <= 120
    assert lab.api.conditions()[0]["stats"]["delayed"] > 0
    lab.api.clear_conditions()
    assert lab.connect_ms() < base_connect + 20
    # The other VM was never touched: a rule for one VM only.
    lab.rule(vm=VMS["a"][0], delay_ms=100, direction="out")
    assert lab.connect_ms("b") < base_connect + 20
    assert lab.connect_ms("a") >= base_connect + 80


def test_loss_on_udp(lab: Lab) -> None:
    lab.rule(to=WORLD_IP, proto="udp", loss=0.3, direction="out")
    result = lab.probe("a", "udp", WORLD_IP, str(lab.udp_port), "500")
    share = result["received"] / result["sent"]
    print(f"UDP echo success with loss=0.3: {share:.3f}")
    assert 0.6 <= share <= 0.8
    lab.api.clear_conditions()
    assert lab.probe("a", "udp", WORLD_IP, str(lab.udp_port), "200")["received"] == 200


def test_rate_limits_a_download_and_clearing_restores_speed(lab: Lab) -> None:
    lab.rule(to=WORLD_IP, rate_kbit=8000)
    slow = lab.probe("a", "get", WORLD_IP, str(lab.tcp_port), str(MB4))
    ideal = MB4 * 8 / 8_000_000
    print(f"4 MB at 8000 kbit/s: {slow['seconds']:.2f} s (payload alone {ideal:.2f} s)")
    assert slow["bytes"] == MB4 and slow["seconds"] >= 3.6
    assert slow["seconds"] < ideal * 1.5
    lab.api.clear_conditions()
    fast = lab.probe("a", "get", WORLD_IP, str(lab.tcp_port), str(MB4))
    print(f"4 MB without rules: {fast['seconds']:.2f} s")
    assert fast["bytes"] == MB4 and fast["seconds"] < 2.0


def test_reject_refuses_at_once_and_drop_times_out(lab: Lab) -> None:
    port = str(lab.tcp_port)
    lab.rule(to=WORLD_IP, port=lab.tcp_port, action="reject")
    refused = lab.probe("a", "connect", WORLD_IP, port, "1", "3")
    assert refused["error"] == "refused" and refused["ms"] < 100, refused
    lab.api.request("PUT", "/conditions", [{"to": WORLD_IP, "port": lab.tcp_port,
                                            "action": "drop"}])
    dropped = lab.probe("a", "connect", WORLD_IP, port, "1", "2")
    assert dropped["error"] == "timeout", dropped
    # An allow list: the gateway's DNS and the second VM's traffic are untouched.
    lab.api.request("PUT", "/conditions", [{"vm": VMS["a"][0], "action": "reject"}])
    assert lab.probe("a", "connect", WORLD_IP, port, "1", "3")["error"] == "refused"
    assert lab.probe("b", "connect", WORLD_IP, port, "1", "3")["error"] is None
    stats = lab.api.stats()["conditions"][0]["stats"]
    assert stats["rejects"] >= 1 and stats["matches"] >= 1


def test_conditions_file_is_watched(netenv: NetEnv, tmp_path: Path) -> None:
    _p, port = netenv.start_helper("world", "tcp_server.py", WORLD_IP, "0")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"to": WORLD_IP, "action": "reject"}]))
    script = (f"{sys.executable} {HELPERS / 'conditions_probe.py'} connect {WORLD_IP} {port} 1 3;"
              f"echo '[]' > {rules}; sleep 2.5;"
              f"{sys.executable} {HELPERS / 'conditions_probe.py'} connect {WORLD_IP} {port} 1 3")
    out = subprocess.run(netenv.pyvpnkit("exec", *exec_args(), "--conditions", str(rules), "--",
                                         "sh", "-c", script),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["error"] == "refused" and second["error"] is None
    rules.write_text('[{"action": "explode"}]')
    bad = subprocess.run(netenv.pyvpnkit("exec", *exec_args(), "--conditions", str(rules), "--",
                                         "true"), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f'pyvpnkit: --conditions {rules}: rule 1: "action" must be one of allow, reject, drop, '
        'impair']


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package")
def test_prometheus_scrapes_the_vm_bytes(lab: Lab) -> None:
    text = subprocess.run(["ip", "netns", "exec", lab.env.host, "curl", "-s",
                           f"http://127.0.0.1:{METRICS_PORT}/metrics"], capture_output=True,
                          timeout=30).stdout
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    (lab.dir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pyvpnkit\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}']}}]\n")
    prom = lab.env.start(
        "host", "prometheus", f"--config.file={lab.dir / 'prometheus.yml'}",
        f"--storage.tsdb.path={lab.dir / 'tsdb'}", "--web.listen-address=127.0.0.1:19090",
        stdout=subprocess.DEVNULL, stderr=open(lab.dir / "prometheus.log", "w"))  # noqa: SIM115

    def query(expr: str) -> list[Any]:
        code = ("import json,sys,urllib.parse,urllib.request;"
                "u='http://127.0.0.1:19090/api/v1/query?query='+urllib.parse.quote(sys.argv[1]);"
                "print(urllib.request.urlopen(u,timeout=5).read().decode())")
        out = lab.env.run_in("host", sys.executable, "-c", code, expr, check=False)
        if out.returncode != 0:
            return []
        result: list[Any] = json.loads(out.stdout)["data"]["result"]
        return result

    assert wait_for(lambda: query("up") != [] or prom.poll() is not None, 30, 0.5)
    assert prom.poll() is None, (lab.dir / "prometheus.log").read_text()
    lab.rule(to=WORLD_IP, rate_kbit=40000, direction="in")  # a download of about 6 s
    started = time.monotonic()
    download = subprocess.Popen(
        ["ip", "netns", "exec", lab.vm_ns["a"], sys.executable,
         str(HELPERS / "conditions_probe.py"), "get", WORLD_IP, str(lab.tcp_port),
         str(30 * 1024 * 1024)], stdout=subprocess.PIPE, start_new_session=True)
    lab.env.procs.append(download)
    expr = f'rate(pyvpnkit_vm_bytes_total{{vm="{VMS["a"][0]}",direction="out"}}[5s])'
    rates: list[float] = []

    def busy() -> bool:
        rates[:] = [float(r["value"][1]) for r in query(expr)]
        return bool(rates) and rates[0] > 1_000_000

    assert wait_for(busy, 20, 0.5), rates
    print(f"prometheus: rate of VM a's bytes after {time.monotonic() - started:.1f} s: "
          f"{rates[0] / 1e6:.1f} MB/s")
    download.wait(60)
