"""pyvpnkit-slirp4netns: the command lines rootlesskit and podman use, the API protocol,
and slirp4netns's layout in the stack (.2 gateway = host loopback, .3 DNS, .100 guest)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import pytest

from pyvpnkit.core.config import ip4
from pyvpnkit.core.effects import TcpOpen
from pyvpnkit.core.nat.udp_nat import UdpSend
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.frontends.slirp4netns import api
from pyvpnkit.frontends.slirp4netns.cli import bind_api_socket, layout, parse
from pyvpnkit.runtime.forwarder import ForwardError
from pyvpnkit.wire import ethernet, ipv4, tcp, udp

ROOTLESSKIT = ["--mtu", "65520", "-r", "3", "--disable-host-loopback", "--api-socket",
               "/run/user/1000/rk/.s4nn.sock", "--enable-sandbox", "--enable-seccomp",
               "--enable-ipv6", "4242", "tap0"]
PODMAN = ["--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
          "--cidr=10.0.3.0/24", "--enable-ipv6", "-c", "-e", "3", "-r", "4",
          "--api-socket", "/run/user/1000/libpod/tmp/x.net", "--netns-type=path",
          "/run/user/1000/netns/netns-1", "tap0"]


def test_help_lists_every_slirp4netns_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("-c, --configure", "-e", "--exit-fd", "-r", "--ready-fd", "-m", "--mtu",
                 "--cidr", "--disable-host-loopback", "-a", "--api-socket", "--netns-type",
                 "--userns-path", "-6", "--enable-ipv6", "--disable-dns", "--macaddress",
                 "--outbound-addr", "--outbound-addr6", "--enable-sandbox", "--enable-seccomp",
                 "--version", "--help"):
        assert flag in text, flag
    assert "fd00::/64" in text
    words = " ".join(text.split())
    assert "load a seccomp filter" in words and "where the kernel has Landlock" in words
    assert "empty read-only tmpfs with only /etc and /run" in words


def test_rootlesskit_command_line() -> None:
    opts = parse(ROOTLESSKIT)
    assert (opts.target, opts.tapname, opts.netns_type) == ("4242", "tap0", "pid")
    assert opts.mtu == 65520 and opts.ready_fd == 3 and opts.exit_fd is None
    assert not opts.configure and opts.enable_sandbox and opts.enable_seccomp
    cfg = layout(opts)
    assert not cfg.host_loopback and cfg.mtu == 65520
    assert cfg.gateway_ip == cfg.host_ip == ip4("10.0.2.2")
    assert cfg.dns_ip == ip4("10.0.2.3")
    # no -c: the TAP is left to the guest, whose DHCP client gets libslirp's .15
    assert (cfg.lowest_ip, cfg.highest_ip) == (ip4("10.0.2.15"), ip4("10.0.2.30"))


def test_podman_command_line() -> None:
    opts = parse(PODMAN)
    assert opts.netns_type == "path" and opts.target == "/run/user/1000/netns/netns-1"
    assert opts.configure and opts.exit_fd == 3 and opts.ready_fd == 4
    cfg = layout(opts)
    assert cfg.subnet == ipaddress.IPv4Network("10.0.3.0/24")
    assert (cfg.gateway_ip, cfg.dns_ip, cfg.lowest_ip) == (
        ip4("10.0.3.2"), ip4("10.0.3.3"), ip4("10.0.3.100"))


@pytest.mark.parametrize("argv", [
    ["--macaddress", "02:00:00:00:00:01", "1", "tap0"],  # only with -c
    ["--mtu", "70000", "1", "tap0"],
    ["notapid", "tap0"],
    ["--netns-type", "fd", "3", "tap0"],
    ["1", "tap0", "extra"],
])
def test_bad_command_lines_exit_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 1
    assert "error:" in capsys.readouterr().err


LONG_SOCKET = "/tmp/" + "a" * 103  # 108 bytes: one more than sun_path holds with its NUL


@pytest.mark.parametrize(("argv", "line"), [
    (["-c", "--cidr", "24", "1", "tap11"], "invalid CIDR: 24"),
    (["-c", "--cidr", "foo", "1", "tap11"], "invalid CIDR: foo"),
    (["-c", "--cidr", "10.0.2.0", "1", "tap11"], "invalid CIDR: 10.0.2.0"),
    (["--cidr", "10.0.2.300/24", "1"], "invalid network address: 10.0.2.300"),
    (["--cidr", "10.0.2.0/\u00b2", "1"], "invalid CIDR: 10.0.2.0/\u00b2"),
    (["-c", "--cidr", "10.0.2.100/24", "1", "tap11"],
     "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"),
    (["-c", "--cidr", "10.0.2.100/26", "1", "tap11"], "prefix length needs to be 1-25"),
    (["--cidr", "10.0.0.0/0", "1"], "prefix length needs to be 1-25"),
    (["-c", "1", "--api-socket", LONG_SOCKET, "tap11"],
     "the specified API socket path is too long (>= 108)"),
    (["--outbound-addr", "nosuchif0", "1"],
     "outbound-addr has to be valid ipv4 address or interface name."),
    (["--outbound-addr", "::1", "1"],
     "outbound-addr has to be valid ipv4 address or interface name."),
    (["--outbound-addr6", "127.0.0.1", "1"],
     "outbound-addr6 has to be valid ipv6 address or interface name."),
])
def test_refusals_keep_slirp4netns_wording(
        argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What slirp4netns's own test scripts grep for: its line alone, exit 1."""
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 1
    assert capsys.readouterr().err == line + "\n"


def test_options_may_follow_and_surround_the_positionals() -> None:
    """getopt_long permutes: `slirp4netns -c PID --api-socket PATH tap11` is one command."""
    opts = parse(["-c", "4242", "--api-socket", "/tmp/a.sock", "tap11", "--mtu=9000"])
    assert (opts.target, opts.tapname, opts.api_socket, opts.mtu) == (
        "4242", "tap11", "/tmp/a.sock", 9000)
    assert opts.configure


def test_cidr_places_the_guest_at_100_and_dhcp_at_15() -> None:
    opts = parse(["-c", "--cidr", "10.0.135.128/25", "1", "tap11"])
    assert str(opts.cidr) == "10.0.135.128/25"
    cfg = layout(opts)
    assert (cfg.lowest_ip, cfg.highest_ip) == (ip4("10.0.135.228"), ip4("10.0.135.228"))
    assert (cfg.gateway_ip, cfg.dns_ip) == (ip4("10.0.135.130"), ip4("10.0.135.131"))
    cfg = layout(parse(["--cidr", "10.0.135.128/25", "1"]))
    assert cfg.lowest_ip == ip4("10.0.135.143")


def test_outbound_addresses() -> None:
    assert parse(["1"]).outbound == ("", "")
    assert parse(["--outbound-addr=lo", "--outbound-addr6=lo", "1"]).outbound == (
        "127.0.0.1", "::1")
    assert parse(["--outbound-addr", "192.0.2.1", "--outbound-addr6", "2001:db8::1",
                  "1"]).outbound == ("192.0.2.1", "2001:db8::1")


def test_version_block(capsys: pytest.CaptureFixture[str]) -> None:
    """Scripts and podman read `SLIRP_CONFIG_VERSION_MAX: N` to gate features."""
    with pytest.raises(SystemExit) as exc:
        parse(["-v"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("slirp4netns version ")
    assert [line.split(":")[0] for line in lines[1:]] == [
        "commit", "libslirp", "SLIRP_CONFIG_VERSION_MAX", "libseccomp"]
    assert "SLIRP_CONFIG_VERSION_MAX: 4" in lines


def test_disable_dns() -> None:
    assert not layout(parse(["--disable-dns", "1"])).serve_dns


# -- the API -------------------------------------------------------------------


class FakeForwarder:
    def __init__(self) -> None:
        self.exposed: dict[tuple[str, str], str] = {}

    def expose(self, local: str, remote: str, protocol: str = "tcp") -> dict[str, str]:
        if (local, protocol) in self.exposed:
            raise ForwardError(f"Bind for {local} failed: port is already allocated", 409)
        self.exposed[(local, protocol)] = remote
        return {"local": local, "remote": remote, "protocol": protocol}

    def unexpose(self, local: str, protocol: str = "tcp") -> None:
        del self.exposed[(local, protocol)]


def call(table: api.HostFwdApi, execute: str, **arguments: Any) -> dict[str, Any]:
    return table.handle(json.dumps({"execute": execute, "arguments": arguments}).encode())


def test_api_add_list_remove() -> None:
    fwd = FakeForwarder()
    table = api.HostFwdApi(fwd, "10.0.2.100")
    reply = call(table, "add_hostfwd", proto="tcp", host_addr="127.0.0.1", host_port=8080,
                 guest_addr="", guest_port=80)  # podman: empty guest_addr = the guest
    assert reply == {"return": {"id": 1}}
    assert fwd.exposed == {("127.0.0.1:8080", "tcp"): "10.0.2.100:80"}
    assert call(table, "add_hostfwd", proto="udp", host_port=53.0, guest_port=5353) == {
        "return": {"id": 2}}
    assert fwd.exposed[("0.0.0.0:53", "udp")] == "10.0.2.100:5353"
    entries = call(table, "list_hostfwd")["return"]["entries"]
    assert entries[0] == {"id": 1, "proto": "tcp", "host_addr": "127.0.0.1", "host_port": 8080,
                          "guest_addr": "10.0.2.100", "guest_port": 80}
    assert call(table, "remove_hostfwd", id=1) == {"return": {}}
    assert [e["id"] for e in call(table, "list_hostfwd")["return"]["entries"]] == [2]
    assert ("127.0.0.1:8080", "tcp") not in fwd.exposed


@pytest.mark.parametrize("raw, desc", [
    (b"{", "bad request: cannot parse JSON"),
    (b"[1]", "bad request: json_object() failed"),
    (b'{"arguments":{}}', "bad request: no execute found"),
    (b'{"execute":"reboot"}', "bad request: unknown execute"),
    (b'{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}',
     "bad request: add_hostfwd: bad arguments.proto"),
    (b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1",'
     b'"host_port":1,"guest_port":1}}', "bad request: add_hostfwd: bad arguments.host_addr"),
    (b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":1}}',
     "bad request: add_hostfwd: bad arguments.host_port"),
    (b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":true}}',
     "bad request: add_hostfwd: bad arguments.guest_port"),
    (b'{"execute":"remove_hostfwd","arguments":{"id":7}}',
     "bad request: remove_hostfwd: bad arguments.id"),
])
def test_api_errors(raw: bytes, desc: str) -> None:
    assert api.HostFwdApi(FakeForwarder(), "10.0.2.100").handle(raw) == {"error": {"desc": desc}}


def test_api_port_taken_is_an_error_and_gets_no_id() -> None:
    table = api.HostFwdApi(FakeForwarder(), "10.0.2.100")
    assert call(table, "add_hostfwd", proto="tcp", host_port=80, guest_port=80)["return"]
    reply = call(table, "add_hostfwd", proto="tcp", host_port=80, guest_port=81)
    assert "already allocated" in reply["error"]["desc"]
    assert len(call(table, "list_hostfwd")["return"]["entries"]) == 1


def test_api_socket_answers_with_or_without_shutdown(tmp_path: Path) -> None:
    """rootlesskit shuts down writing; a client that only sends the object is answered too."""

    async def scenario() -> list[dict[str, Any]]:
        path = str(tmp_path / "api.sock")
        sock = bind_api_socket(path)
        server = await api.serve(api.HostFwdApi(FakeForwarder(), "10.0.2.100"), sock)
        replies = []
        for shutdown in (True, False):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b'{"execute": "list_hostfwd"}\n')
            if shutdown:
                writer.write_eof()
            replies.append(json.loads(await asyncio.wait_for(reader.read(), 5)))
            writer.close()
        server.close()
        await server.wait_closed()
        return replies

    assert asyncio.run(scenario()) == [{"return": {"entries": []}}] * 2


# -- the layout in the stack -------------------------------------------------------

VM_MAC = bytes.fromhex("020000000064")
GUEST, GW, DNS = ip4("10.0.2.100"), ip4("10.0.2.2"), ip4("10.0.2.3")
CFG = layout(parse(["1"]))


def frame(dst: bytes, proto: int, payload: bytes) -> bytes:
    return ethernet.build_ethernet(CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4,
                                   ipv4.build_ipv4(GUEST, dst, proto, payload))


def syn(dst: bytes, port: int) -> bytes:
    seg = tcp.build_tcp(GUEST, dst, 40000, port, 1000, 0, tcp.SYN, 64240,
                        tcp.encode_options(tcp.TcpOptions(mss=1460)))
    return frame(dst, ipv4.PROTO_TCP, seg)


def out_packets(stack: Stack) -> tuple[list[ipv4.IPv4Packet], list[object]]:
    frames, effects = stack.drain(0.0)
    return [ipv4.parse_ipv4(ethernet.parse_ethernet(f).payload) for _l, f in frames], effects


def test_dns_is_answered_on_dot_3_not_on_the_gateway() -> None:
    stack = Stack(CFG, hosts_text="203.0.113.9 name.test\n", rng=random.Random(1))
    query = dns.message.make_query("name.test", "A").to_wire()
    stack.receive(1, frame(DNS, ipv4.PROTO_UDP, udp.build_udp(GUEST, DNS, 5000, 53, query)), 0)
    (pkt,), _ = out_packets(stack)
    answer = dns.message.from_wire(bytes(udp.parse_udp(pkt.payload, pkt.src, pkt.dst).payload))
    assert pkt.src == DNS and answer.answer[0][0].address == "203.0.113.9"
    # The gateway is the host's loopback: port 53 there is the host's 127.0.0.1:53.
    stack.receive(1, frame(GW, ipv4.PROTO_UDP, udp.build_udp(GUEST, GW, 5001, 53, query)), 0)
    _, effects = out_packets(stack)
    assert [(e.dst_ip, e.dst_port) for e in effects if isinstance(e, UdpSend)] == [
        ("127.0.0.1", 53)]


def test_gateway_is_the_host_loopback_unless_disabled() -> None:
    stack = Stack(CFG, rng=random.Random(1))
    stack.receive(1, syn(GW, 8080), 0)
    _, effects = out_packets(stack)
    assert [(e.host, e.port) for e in effects if isinstance(e, TcpOpen)] == [("127.0.0.1", 8080)]
    # --disable-host-loopback: connect() fails with ENETUNREACH, as with slirp4netns
    stack = Stack(layout(parse(["--disable-host-loopback", "1"])), rng=random.Random(1))
    stack.receive(1, syn(GW, 8080), 0)
    (pkt,), effects = out_packets(stack)
    assert effects == [] and pkt.proto == ipv4.PROTO_ICMP and pkt.src == GW
    assert pkt.payload[:2] == bytes([3, 0])  # destination unreachable: network
    # UDP too; vpnkit's --no-host-loopback keeps refusing (admin prohibited, RST for TCP)
    stack.receive(1, frame(GW, ipv4.PROTO_UDP, udp.build_udp(GUEST, GW, 5001, 53, b"x")), 0)
    (pkt,), _ = out_packets(stack)
    assert pkt.proto == ipv4.PROTO_ICMP and pkt.payload[:2] == bytes([3, 0])
    stack = Stack(replace(CFG, host_loopback=False, no_host_loopback="admin_prohibited"),
                  rng=random.Random(1))
    stack.receive(1, syn(GW, 8080), 0)
    (pkt,), effects = out_packets(stack)
    assert effects == [] and tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst).flags & tcp.RST


def test_dns_over_tcp_on_dot_3_and_disable_dns() -> None:
    stack = Stack(CFG, rng=random.Random(1))
    stack.receive(1, syn(DNS, 53), 0)
    (pkt,), _ = out_packets(stack)
    assert tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst).flags == tcp.SYN | tcp.ACK
    stack = Stack(replace(CFG, serve_dns=False), rng=random.Random(1))
    stack.receive(1, syn(DNS, 53), 0)
    (pkt,), effects = out_packets(stack)
    assert effects == [] and tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst).flags & tcp.RST


def test_enable_ipv6_is_slirp4netns_layout() -> None:
    import ipaddress

    assert layout(parse(["1"])).ipv6 is None
    v6 = layout(parse(["--enable-ipv6", "1"])).ipv6
    assert v6 is not None and str(v6.subnet) == "fd00::/64" and not v6.dhcpv6
    assert [str(ipaddress.IPv6Address(a)) for a in (v6.gateway_ip, v6.host_ip, v6.dns_ip)] == [
        "fd00::2", "fd00::2", "fd00::3"]


@pytest.mark.parametrize(("argv", "expect"), [
    (["-c6", "1"], {"configure": True, "enable_ipv6": True}),
    (["-cm9000", "1"], {"configure": True, "mtu": 9000}),
    (["-m", "9000", "1", "-e3"], {"mtu": 9000, "exit_fd": 3}),
    (["--mtu", "9000", "--ready-fd=4", "1"], {"mtu": 9000, "ready_fd": 4}),
    (["--api", "/tmp/a.sock", "--disable-h", "1"],  # unique prefixes, as getopt_long
     {"api_socket": "/tmp/a.sock", "disable_host_loopback": True}),
    (["--", "1", "-c"], {"target": "1", "tapname": "-c", "configure": False}),
])
def test_getopt_long_spellings(argv: list[str], expect: dict[str, object]) -> None:
    opts = parse(argv)
    assert {k: getattr(opts, k) for k in expect} == expect


@pytest.mark.parametrize(("argv", "message"), [
    (["--nosuch", "1"], "unrecognized option '--nosuch'"),
    (["-x", "1"], "invalid option -- 'x'"),
    (["1", "-m"], "option requires an argument -- 'm'"),
    (["1", "--mtu"], "option '--mtu' requires an argument"),
    (["--configure=yes", "1"], "option '--configure' doesn't allow an argument"),
    (["--enable", "1"], "option '--enable' is ambiguous; possibilities: '--enable-ipv6' "
     "'--enable-sandbox' '--enable-seccomp'"),
    ([], "the following arguments are required: PID|PATH"),
    (["--macaddress", "02:00:00:00:00:0g", "-c", "1"], "bad MAC address"),
    (["-e", "x", "1"], "bad file descriptor 'x'"),
    (["-e", "\u00b2", "1"], "bad file descriptor"),  # a digit to str.isdigit, not to int()
    (["\u00b2"], "bad PID"),
])
def test_getopt_long_errors(argv: list[str], message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """glibc's wording after slirp4netns's usage line, exit 1."""
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 1
    usage, error = capsys.readouterr().err.splitlines()
    assert usage.startswith("usage: pyvpnkit-slirp4netns [OPTION]...")
    assert error.startswith("pyvpnkit-slirp4netns: error: ") and message in error


def test_the_tap_path_imports_no_slow_module(tmp_path: Path) -> None:
    """Parsing, the API socket and the TAP's set-up import no argparse, re, socket, enum.

    A fresh interpreter: what a launcher waits for (bench/startup.py).
    """
    import subprocess
    import sys

    code = ("import sys; from pyvpnkit.frontends.slirp4netns import cli; "
            "o = cli.parse(['-c', '--cidr=10.0.3.0/24', '1']); cli.iface_setup(o); "
            "cli.bind_api_socket(sys.argv[1]).close(); "
            "import pyvpnkit.runtime.netns; "
            "print(sorted({'argparse', 're', 'ipaddress', 'socket', 'enum', 'typing', "
            "'collections'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "api.sock")],
                         capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.strip() == "[]"
