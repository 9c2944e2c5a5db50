"""The /conditions routes, the `pyvpnkit conditions` CLI and /metrics, over a real API socket."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from pyvpnkit.api.client import ApiClient, ApiError
from pyvpnkit.api.commands import dispatch
from pyvpnkit.api.metrics import MetricSources, make_registry
from pyvpnkit.api.server import make_app, start_api
from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import UdpSend
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.frontends import cli
from pyvpnkit.wire import ethernet, ipv4, udp

CFG = NetConfig(ipv6=None)
VM_MAC = bytes.fromhex("020000000001")
VM_IP = ip4("192.168.65.3")


class NoForwards:
    def expose(self, local: str, remote: str, protocol: str = "tcp") -> dict[str, str]:
        raise NotImplementedError

    def unexpose(self, local: str, protocol: str = "tcp") -> None:
        raise NotImplementedError

    def list(self) -> list[dict[str, str]]:
        return []


def traffic(stack: Stack) -> None:
    """One datagram out of the VM, one host reply back into it."""
    stack.add_vm(1, VM_MAC, VM_IP)
    body = udp.build_udp(VM_IP, ip4("203.0.113.2"), 4000, 9, b"x" * 100)
    frame = ethernet.build_ethernet(CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4,
                                    ipv4.build_ipv4(VM_IP, ip4("203.0.113.2"), 17, body))
    stack.receive(1, frame, 0.0)
    (send,) = [e for e in stack.drain(0.0)[1] if isinstance(e, UdpSend)]
    stack.udp.host_datagram(send.flow_id, "203.0.113.2", 9, b"y" * 50, 0.0)
    stack.drain(0.0)


def test_routes_cli_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"unix://{tmp_path / 'api.sock'}"
    parser = cli.make_parser()

    def run(*argv: str) -> tuple[int | None, str, str]:
        code = dispatch(parser.parse_args(list(argv)))
        out, err = capsys.readouterr()
        return code, out, err

    async def main() -> None:
        stack = Stack(CFG, rng=random.Random(1))
        registry = make_registry(MetricSources(stack))
        server = await start_api(url, make_app(NoForwards(), stack, metrics_registry=registry))
        try:
            api = ApiClient(url)
            rule = await asyncio.to_thread(api.add_condition, {"delay_ms": 100, "port": 443})
            assert rule["id"] == 1 and rule["action"] == "impair" and rule["stats"]["matches"] == 0
            with pytest.raises(ApiError, match='"loss"') as exc:
                await asyncio.to_thread(api.add_condition, {"loss": 5})
            assert exc.value.status == 400
            code, out, _ = await asyncio.to_thread(
                run, "conditions", "add", "--api", url, "--to", "example.com", "--delay",
                "0.1s", "--jitter", "10ms", "--loss", "5%", "--rate", "1mbit")
            assert code == 0 and out.split()[:2] == ["2", "impair"]
            added = (await asyncio.to_thread(api.conditions))[1]
            assert (added["delay_ms"], added["jitter_ms"], added["loss"], added["rate_kbit"]) == (
                100.0, 10.0, 0.05, 1000.0)
            code, out, _ = await asyncio.to_thread(
                run, "conditions", "add", "--api", url, "--reject", "--port", "25")
            assert code == 0 and "reject" in out
            code, out, _ = await asyncio.to_thread(run, "conditions", "list", "--api", url)
            assert [line.split()[0] for line in out.splitlines()] == ["1", "2", "3"]
            assert (await asyncio.to_thread(api.stats))["conditions"][2]["action"] == "reject"
            code, _, _ = await asyncio.to_thread(run, "conditions", "remove", "--api", url, "2")
            assert code == 0 and [r["id"] for r in stack.conditions.to_json()] == [1, 3]
            code, _, err = await asyncio.to_thread(run, "conditions", "remove", "--api", url, "9")
            assert code == 1 and "no rule 9" in err
            status, body = await asyncio.to_thread(
                api.request, "PUT", "/conditions", [{"action": "drop", "vm": "192.168.65.9"}])
            assert status == 200 and json.loads(body)[0]["vm"] == "192.168.65.9"
            status, body = await asyncio.to_thread(api.request, "PUT", "/conditions", [{"x": 1}])
            assert status == 400 and b'rule 1: unknown field "x"' in body
            code, _, _ = await asyncio.to_thread(run, "conditions", "clear", "--api", url)
            assert code == 0 and stack.conditions.rules == []
            stack.conditions.add({"action": "allow"})
            traffic(stack)
            status, text = await asyncio.to_thread(api.request, "GET", "/metrics")
            assert status == 200
            metrics = text.decode()
            assert 'pyvpnkit_vm_bytes_total{direction="in",vm="192.168.65.3"} 128.0' in metrics
            assert 'pyvpnkit_vm_bytes_total{direction="out",vm="192.168.65.3"} 78.0' in metrics
            assert 'pyvpnkit_rule_matches_total{rule="' in metrics
            assert "process_resident_memory_bytes" in metrics
            assert 'pyvpnkit_flows_active{proto="udp"} 1.0' in metrics
            assert 'pyvpnkit_flows_opened_total{proto="udp"} 1.0' in metrics
        finally:
            await server.close()

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus)")
def test_promtool_accepts_the_metrics() -> None:
    stack = Stack(CFG, rng=random.Random(1))
    stack.conditions.add({"delay_ms": 5, "port": 443})
    traffic(stack)
    stack.tcp.connect_latency.observe(0.003)
    text = generate_latest(make_registry(MetricSources(stack)))
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
