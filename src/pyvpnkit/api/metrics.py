"""Prometheus metrics, read from the machines' own integer counters at scrape time.

Nothing here runs per packet: the core keeps plain integers (``Vm.bytes_in``,
``Stack.stats``, ``core.histogram.Histogram``...) and :class:`StackCollector`
turns them into metric families when Prometheus asks. Labels stay bounded:
VMs by address, rules by id, drops by reason, never a flow.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pyvpnkit.api.server import stats_of
from pyvpnkit.core.histogram import Histogram
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.runtime.forwarder import Forwarder
from pyvpnkit.runtime.host_tcp import HostTcp
from pyvpnkit.runtime.http_proxy import HttpProxy
from pyvpnkit.runtime.limits import DescriptorBudget


@dataclass
class MetricSources:
    """What a running service can report; the parts a caller lacks stay None."""

    stack: Stack
    budget: DescriptorBudget | None = None
    host_tcp: HostTcp | None = None
    forwarder: Forwarder | None = None
    http_proxy: HttpProxy | None = None


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(h.bounds, h.counts, strict=False):
        running += count
        buckets.append((repr(bound), running))
    buckets.append(("+Inf", running + h.counts[-1]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


class StackCollector(Collector):
    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        stack = src.stack
        vm_bytes = CounterMetricFamily(
            "pyvpnkit_vm_bytes", "IPv4 bytes per VM: in = from the VM, out = to it",
            labels=["vm", "direction"])
        vm_packets = CounterMetricFamily(
            "pyvpnkit_vm_packets", "IPv4 packets per VM: in = from the VM, out = to it",
            labels=["vm", "direction"])
        for ip, vm in list(stack.vms.items()):
            addr = socket.inet_ntoa(ip)
            vm_bytes.add_metric([addr, "in"], vm.bytes_in)
            vm_bytes.add_metric([addr, "out"], vm.bytes_out)
            vm_packets.add_metric([addr, "in"], vm.packets_in)
            vm_packets.add_metric([addr, "out"], vm.packets_out)
        yield vm_bytes
        yield vm_packets
        s = stack.stats
        frames = CounterMetricFamily("pyvpnkit_frames", "Ethernet frames from and to VMs",
                                     labels=["direction"])
        frames.add_metric(["in"], s.get("frames_in", 0))
        frames.add_metric(["out"], s.get("frames_out", 0))
        yield frames
        report = stats_of(stack)
        active = GaugeMetricFamily("pyvpnkit_flows_active", "NAT flows open now",
                                   labels=["proto"])
        for proto in ("tcp", "udp", "icmp", "udp_forward"):
            active.add_metric([proto], report["flows"][proto])
        yield active
        opened = CounterMetricFamily("pyvpnkit_flows_opened", "NAT flows opened",
                                     labels=["proto"])
        opened.add_metric(["tcp"], stack.tcp.stats.get("opened", 0))
        opened.add_metric(["udp"], stack.udp.opened)
        opened.add_metric(["icmp"], stack.icmp.opened)
        yield opened
        yield _histogram("pyvpnkit_host_connect_seconds",
                         "From a VM's SYN to the host connect's success",
                         stack.tcp.connect_latency)
        failures = CounterMetricFamily("pyvpnkit_host_connect_failures",
                                       "Host connects that failed, by errno", labels=["errno"])
        if src.host_tcp is not None:
            for name, count in sorted(src.host_tcp.connect_errors.items()):
                failures.add_metric([name], count)
        yield failures
        queries = CounterMetricFamily("pyvpnkit_dns_queries",
                                      "DNS queries to the gateway by how they were answered",
                                      labels=["result"])
        for result, count in sorted(stack.dns.stats.items()):
            if result != "queries":
                queries.add_metric([result], count)
        yield queries
        yield _histogram("pyvpnkit_dns_upstream_seconds", "Upstream DNS answer time",
                         stack.dns.forwarder.latency)
        forwarded = CounterMetricFamily("pyvpnkit_forwarded_connections",
                                        "Connections and datagrams into published ports",
                                        labels=["proto"])
        if src.forwarder is not None:
            fs = src.forwarder.stats
            forwarded.add_metric(["tcp"], fs.get("tcp_accepted", 0))
            forwarded.add_metric(["udp"], fs.get("udp_in", 0))
        yield forwarded
        proxied = CounterMetricFamily(
            "pyvpnkit_http_proxy_outcomes",
            "HTTP proxy: upstream connections by route (proxy, direct), local answers by status",
            labels=["outcome"])
        if src.http_proxy is not None:
            for outcome, count in sorted(src.http_proxy.outcomes.items()):
                proxied.add_metric([outcome], count)
        yield proxied
        rules = {name: CounterMetricFamily(f"pyvpnkit_rule_{name}", doc, labels=["rule"])
                 for name, doc in (("matches", "Frames a conditions rule matched"),
                                   ("drops", "Frames a rule dropped (drop, loss, full queue)"),
                                   ("rejects", "Frames a rule rejected"),
                                   ("delayed", "Frames a rule queued"))}
        queued = GaugeMetricFamily("pyvpnkit_rule_queued_bytes",
                                   "Bytes a rule holds in the delay queue", labels=["rule"])
        for rule in stack.conditions.rules:
            c = rule.counters
            label = [str(rule.id)]
            rules["matches"].add_metric(label, c.matches)
            rules["drops"].add_metric(label, c.drops)
            rules["rejects"].add_metric(label, c.rejects)
            rules["delayed"].add_metric(label, c.delayed)
            queued.add_metric(label, c.queued_bytes)
        yield from rules.values()
        yield queued
        drops = CounterMetricFamily("pyvpnkit_dropped_frames", "Frames dropped, by reason",
                                    labels=["reason"])
        for reason, count in report["drops"].items():
            drops.add_metric([reason], count)
        yield drops
        if src.budget is not None:
            yield GaugeMetricFamily("pyvpnkit_descriptors_in_use",
                                    "Host sockets flows hold", value=src.budget.in_use)
            yield GaugeMetricFamily("pyvpnkit_descriptors_budget",
                                    "Host sockets flows may hold", value=src.budget.capacity)


def make_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry with our collector and the process's (RSS, CPU, open descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StackCollector(sources))
    ProcessCollector(registry=registry)
    return registry


__all__ = ["MetricSources", "StackCollector", "make_registry"]
