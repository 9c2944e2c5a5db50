"""vpnkit's gateway forwards, DHCP file and DNS zones, in the core: parsing, the table,
and VM traffic to gateway ports going to host addresses (and answers coming back)."""

from __future__ import annotations

import dns.message
import pytest

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.dns.forwarder import Forwarder
from pyvpnkit.core.effects import TcpOpen, UdpOpen, UdpSend, UpstreamQuery
from pyvpnkit.core.nat.gateway_forwards import (
    GatewayForward,
    GatewayForwards,
    parse_json,
    parse_list,
)
from pyvpnkit.core.services.dhcp import parse_dhcp_json
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.wire.dnsquestion import parse_query
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV4, build_ethernet, parse_ethernet
from pyvpnkit.wire.icmp import ECHO_REPLY, ECHO_REQUEST, build_icmp, parse_icmp
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, build_ipv4, parse_ipv4
from pyvpnkit.wire.tcp import SYN, build_tcp
from pyvpnkit.wire.udp import build_udp, parse_udp

CFG = NetConfig(ipv6=None)
GW = CFG.gateway_ip
VM = ip4("192.168.65.3")
VM_MAC = bytes.fromhex("020000000003")


def test_parsing_the_file_and_the_flags() -> None:
    text = ('[{"protocol":"tcp","external_port":80,"internal_ip":"127.0.0.1","internal_port":8080},'
            ' {"protocol":"udp","external_port":53,"internal_ip":"10.0.0.1","internal_port":5353}]')
    assert parse_json(text) == (GatewayForward("tcp", 80, "127.0.0.1", 8080),
                                GatewayForward("udp", 53, "10.0.0.1", 5353))
    assert parse_list("udp", "1:2.2.2.2:3,4:5.5.5.5:6") == (
        GatewayForward("udp", 1, "2.2.2.2", 3), GatewayForward("udp", 4, "5.5.5.5", 6))
    assert parse_list("tcp", "") == ()
    for bad, message in [
        ("{}", "expected a JSON list"), ("[1]", "entry 0: expected an object"),
        ('[{"protocol":"sctp","external_port":1,"internal_ip":"1.1.1.1","internal_port":1}]',
         "tcp or udp"),
        ('[{"protocol":"tcp","external_port":0,"internal_ip":"1.1.1.1","internal_port":1}]',
         "external_port 0"),
        ('[{"protocol":"tcp","external_port":1,"internal_ip":"::1","internal_port":1}]',
         "IPv4"),
        ('[{"protocol":"tcp","external_port":1,"internal_ip":"1.1.1.1"}]',
         'missing "internal_port"'),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_json(bad)
    with pytest.raises(ValueError, match="expected <local port>"):
        parse_list("tcp", "80:1.1.1.1")


def test_static_entries_win_and_updates_replace_the_dynamic_ones() -> None:
    table = GatewayForwards((GatewayForward("tcp", 80, "127.0.0.1", 1),))
    table.update((GatewayForward("tcp", 80, "127.0.0.1", 2),
                  GatewayForward("udp", 80, "1.1.1.1", 3)))
    assert table.lookup("tcp", 80) == ("127.0.0.1", 1) and table.lookup("udp", 80) == ("1.1.1.1", 3)
    table.update(())
    assert table.lookup("udp", 80) is None and table


def from_vm(stack: Stack, packet: bytes, now: float = 1.0) -> tuple[list, list]:
    stack.receive(1, build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4, packet), now)
    return stack.drain(now)


def test_vm_traffic_to_gateway_ports_goes_to_the_host_address() -> None:
    stack = Stack(CFG)
    stack.gateway_forwards = GatewayForwards(parse_list("tcp", "8080:127.0.0.1:80")
                                             + parse_list("udp", "5300:10.1.2.3:53"))
    syn = build_tcp(VM, GW, 40000, 8080, 1000, 0, SYN, 65535)
    _frames, effects = from_vm(stack, build_ipv4(VM, GW, PROTO_TCP, syn))
    assert [e for e in effects if isinstance(e, TcpOpen)] == [TcpOpen(1, "127.0.0.1", 80, None)]
    _frames, effects = from_vm(stack, build_ipv4(VM, GW, PROTO_UDP,
                                                 build_udp(VM, GW, 4000, 5300, b"q")))
    (opened, sent) = effects
    assert isinstance(opened, UdpOpen) and isinstance(sent, UdpSend)
    assert (sent.dst_ip, sent.dst_port, sent.payload) == ("10.1.2.3", 53, b"q")
    # The answer comes back from gateway:5300, not from the host address.
    stack.udp.host_datagram(sent.flow_id, "10.1.2.3", 53, b"a", 2.0)
    ((_link, frame),), _ = stack.drain(2.0)
    pkt = parse_ipv4(parse_ethernet(frame).payload)
    dgram = parse_udp(pkt.payload, pkt.src, pkt.dst)
    assert (pkt.src, dgram.src_port, dgram.dst_port, bytes(dgram.payload)) == (GW, 5300, 4000, b"a")
    # Ports without a forward still answer as before.
    _frames, effects = from_vm(stack, build_ipv4(VM, GW, PROTO_UDP,
                                                 build_udp(VM, GW, 4000, 5301, b"q")))
    assert effects == [] and stack.stats["drop_spoofed_source"] == 0


def test_dhcp_file() -> None:
    assert parse_dhcp_json('{"searchDomains": ["a.example", "b.example"], "domainName": "x"}') \
        == ("x", ("a.example", "b.example"))
    assert parse_dhcp_json("{}") == (None, ())
    for bad in ("[]", '{"searchDomains": "a"}', '{"domainName": 1}', '{"searchDomains": ["a..b"]}'):
        with pytest.raises(ValueError):
            parse_dhcp_json(bad)


def test_dns_zones_pick_the_servers() -> None:
    fwd = Forwarder([("10.0.0.1", 53), ("10.0.0.2", 53)])
    fwd.set_zones({("10.0.0.2", 53): ("corp.example",)})

    def first_server(name: str) -> tuple[str, int]:
        wire = dns.message.make_query(name, "A").to_wire()
        q = parse_query(wire)
        fwd.submit(wire, (q.key, q.qtype, q.qclass), None, "udp", 0.0)
        return next(e.server for e in fwd.drain() if isinstance(e, UpstreamQuery))

    assert first_server("a.b.CORP.example") == ("10.0.0.2", 53)
    assert first_server("corp.example") == ("10.0.0.2", 53)
    assert first_server("notcorp.example") == ("10.0.0.1", 53)
    assert first_server("example") == ("10.0.0.1", 53)


# -- gvproxy's NAT table and gateway virtual IPs ----------------------------------

VIP = ip4("192.168.65.200")


def test_nat_table_sends_flows_to_a_virtual_ip_on_to_the_host_address() -> None:
    stack = Stack(NetConfig(ipv6=None, nat=((VIP, "10.9.8.7"),), virtual_ips=(VIP,)))
    syn = build_tcp(VM, VIP, 40000, 22, 1000, 0, SYN, 65535)
    _frames, effects = from_vm(stack, build_ipv4(VM, VIP, PROTO_TCP, syn))
    assert [e for e in effects if isinstance(e, TcpOpen)] == [TcpOpen(1, "10.9.8.7", 22, None)]
    _frames, effects = from_vm(stack, build_ipv4(VM, VIP, PROTO_UDP,
                                                 build_udp(VM, VIP, 4000, 53, b"q")))
    sent = effects[-1]
    assert isinstance(sent, UdpSend) and (sent.dst_ip, sent.dst_port) == ("10.9.8.7", 53)
    stack.udp.host_datagram(sent.flow_id, "10.9.8.7", 53, b"a", 2.0)
    ((_link, frame),), _ = stack.drain(2.0)
    pkt = parse_ipv4(parse_ethernet(frame).payload)
    assert (pkt.src, parse_udp(pkt.payload, pkt.src, pkt.dst).src_port) == (VIP, 53)
    assert stack.pool.owner(VIP) is None and VIP not in stack.pool.leases().values()
    ping = build_icmp(ECHO_REQUEST, 0, b"\x00\x01\x00\x01", b"hi")
    ((_link, frame),), _ = from_vm(stack, build_ipv4(VM, VIP, PROTO_ICMP, ping))
    pkt = parse_ipv4(parse_ethernet(frame).payload)
    assert pkt.src == VIP and parse_icmp(pkt.payload).type == ECHO_REPLY
