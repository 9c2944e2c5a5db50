"""pyvpnkit-vpnkit's command line: vpnkit's flags become the right NetConfig and Options, the
rest fail."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from pyvpnkit.frontends import vpnkit as vpnkit_cli
from pyvpnkit.links.url import parse_listen_url


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


def test_rootlesskit_command_line() -> None:
    """What rootlesskit's --net=vpnkit runs: vpnkit's layout, the vmnet socket, host DNS."""
    argv = ["--ethernet", "/run/x/vpnkit-ethernet.sock", "--mtu", "1500"]
    config, options, level = vpnkit_cli.configure(argv)
    assert options.port_max_idle_time == 300 and options.gateway_forwards == ()
    assert options.listeners == (("vpnkit", "unix:///run/x/vpnkit-ethernet.sock"),)
    assert (config.mtu, config.subnet) == (1500, ipaddress.IPv4Network("192.168.65.0/24"))
    assert (config.gateway_ip, config.host_ip) == (ip("192.168.65.1"), ip("192.168.65.2"))
    assert (config.lowest_ip, config.highest_ip) == (ip("192.168.65.3"), ip("192.168.65.254"))
    assert config.host_loopback and config.gateway_mac == bytes.fromhex("f61636bcf9c6")
    assert options.dns_mode == "host" and options.dns_servers == ()  # vpnkit's: the host resolver
    assert options.hosts == "/etc/hosts" and options.pcap_listen == () and level == "warning"
    assert config.ipv6 is None and config.domain == "localdomain" and options.pcap_snaplen == 128


def test_host_ip_zero_disables_the_host_alias() -> None:
    argv = ["--ethernet", "e.sock", "--mtu", "65520", "--host-ip", "0.0.0.0"]
    config, _, _ = vpnkit_cli.configure(argv)
    assert not config.host_loopback and config.mtu == 65520
    assert config.host_ip == ip("192.168.65.2")  # still reserved, never handed to a VM


def test_every_supported_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dns = tmp_path / "dns"
    dns.write_text(
        "# upstreams\nnameserver 127.0.0.1#5353\nnameserver 10.0.0.53\ntimeout 2000\n"
        "nameserver ::1\norder 1\nsearch corp.example lab.example\n"
        "nameserver 10.0.0.54\nzone corp.example\nzone lab.example\n"
    )
    gateway = tmp_path / "gateway.json"
    dhcp = tmp_path / "dhcp.json"
    forwards = tmp_path / "forwards.json"
    forwards.write_text('[{"protocol":"tcp","dst_prefix":"10.9.0.0/16","dst_port":80,"path":"/s"}]')
    path = str(tmp_path / "odd name%.sock")
    monkeypatch.setenv("VPNKIT_DEBUG", "1")
    config, options, level = vpnkit_cli.configure([
        "--ethernet", path, "--mtu", "9000",
        "--gateway-ip", "10.1.0.1", "--host-ip", "10.1.0.2",
        "--lowest-ip", "10.1.0.10", "--highest-ip", "10.1.3.200",
        "--server-macaddr", "02:11:22:33:44:55", "--domain", "vm.example",
        "--dns", str(dns), "--hosts", "/dev/null",
        "--host-names", "h.one,h.two", "--gateway-names", "gw.one", "--vm-names", "me.one",
        "--forwards", str(forwards), "--pcap", "/tmp/a.pcap.sock", "--pcap", "/tmp/b.pcap.sock",
        "--pcap-snaplen", "256",
        "--gateway-forwards", str(gateway), "--dhcp-path", str(dhcp),
        "--tcpv4-forwards", "80:127.0.0.1:8080,81:10.0.0.9:81", "--udpv4-forwards", "53:1.1.1.1:53",
        "--listen-backlog", "7", "--port-max-idle-time", "0",
        "--allowed-bind-addresses", "127.0.0.1,10.0.0.1",
    ])  # fmt: skip
    assert [(f.protocol, f.external_port, f.internal_ip, f.internal_port)
            for f in options.gateway_forwards] == [
        ("tcp", 80, "127.0.0.1", 8080), ("tcp", 81, "10.0.0.9", 81), ("udp", 53, "1.1.1.1", 53)]
    assert (options.gateway_forwards_file, options.dhcp_file) == (str(gateway), str(dhcp))
    assert (options.listen_backlog, options.port_max_idle_time) == (7, 0)
    assert options.allowed_bind_addresses == ("127.0.0.1", "10.0.0.1")
    assert options.dns_zones == ((("10.0.0.54", 53), ("corp.example", "lab.example")),)
    assert options.dns_servers == (("127.0.0.1", 5353), ("10.0.0.53", 53), ("::1", 53),
                                   ("10.0.0.54", 53))
    assert parse_listen_url(options.listeners[0][1], "vpnkit").path == path
    assert config.subnet == ipaddress.IPv4Network("10.1.0.0/22")  # smallest holding all, as vpnkit
    assert (config.gateway_ip, config.host_ip) == (ip("10.1.0.1"), ip("10.1.0.2"))
    assert (config.lowest_ip, config.highest_ip) == (ip("10.1.0.10"), ip("10.1.3.200"))
    assert config.gateway_mac == bytes.fromhex("021122334455") and config.mtu == 9000
    assert config.domain == "vm.example"
    assert config.search_domains == ("corp.example", "lab.example")
    assert options.dns_mode == "forward"
    assert options.hosts == "/dev/null"
    assert [(str(r.dst_prefix), r.dst_port, r.path) for r in options.redirects] == [
        ("10.9.0.0/16", 80, "/s")]
    assert config.host_names == ("h.one", "h.two") and config.gateway_names == ("gw.one",)
    assert config.vm_names == ("me.one",)
    assert options.pcap_listen == ("/tmp/a.pcap.sock", "/tmp/b.pcap.sock")
    assert options.pcap_snaplen == 256 and level == "debug"


def test_debug_flag_and_odd_paths() -> None:
    _, options, level = vpnkit_cli.configure(["--ethernet", "@e.sock", "--debug", "--hosts=-h"])
    assert parse_listen_url(options.listeners[0][1]).path == "./@e.sock"  # a file, not abstract
    assert level == "debug" and options.hosts == "-h"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --ethernet"),
        (["--ethernet", "e", "--frobnicate", "1"], "unknown option --frobnicate (see --help)"),
        (["--ethernet", "e", "--frob=1"], "unknown option --frob (see --help)"),
        (["--ethernet", "e", "stray"], "unexpected argument 'stray'"),
        (["--ethernet", "e", "--http", "/nonexistent/p.json"], "--http /nonexistent/p.json: No "),
        (["--ethernet", "e", "--http-api-path", "/x.sock"], "--http-api-path: not supported"),
        (["--ethernet", "e", "--port=/x.sock"], "--port: vpnkit's 9P port-forwarding"),
        (["--ethernet", "e", "--tcpv4-forwards", "80:1.2.3:80"], "'80:1.2.3:80': remote"),
        (["--ethernet", "e", "--udpv4-forwards", "80:1.2.3.4"], "expected <local port>:<remote"),
        (["--ethernet", "e", "--listen-backlog", "0"], "'0' is not a number of 1 or more"),
        (["--ethernet", "e", "--allowed-bind-addresses", "lo"], "--allowed-bind-addresses"),
        (["--ethernet", "hyperv-listen://vm"], "only a unix socket path is supported"),
        (["--ethernet", "fd:3"], "only a unix socket path is supported"),
        (["--ethernet", "e", "--mtu", "abc"], "--mtu: 'abc' is not an integer (see --help)"),
        (["--ethernet", "e", "--mtu", "70000"], "--mtu 70000: must be between 576 and 65520"),
        (["--ethernet", "e", "--gateway-ip", "1.2.3"], "'1.2.3' is not an IPv4 address"),
        (["--ethernet", "e", "--server-macaddr", "01:00:5e:00:00:01"], "not a unicast MAC"),
        (["--ethernet", "e", "--lowest-ip", "192.168.65.1"], "--gateway-ip 192.168.65.1 lies in"),
        (["--ethernet", "e", "--host-ip", "192.168.65.1"], "--host-ip 192.168.65.1 is also the"),
        (
            ["--ethernet", "e", "--lowest-ip", "192.168.65.9", "--highest-ip", "192.168.65.4"],
            "the range is empty",
        ),
        (["--ethernet", "e", "--pcap-snaplen", "0"], "--pcap-snaplen 0: must be at least 1"),
        (["--ethernet", "e", "--pcap-snaplen", "262145"], "and at most 262144"),
        (["--ethernet", "e", "--dns", "/nonexistent/dns"], "--dns /nonexistent/dns: No such file"),
        (["--ethernet", "e", "--forwards", "/nonexistent/f.json"], "--forwards /nonexistent"),
    ],
)
def test_errors_are_one_line_and_exit_124(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vpnkit_cli.main(argv) == vpnkit_cli.EXIT_USAGE == 124
    err = capsys.readouterr().err
    assert err.startswith("pyvpnkit-vpnkit: ") and message in err, err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nameserver 8.8.8.8#99999\n", "line 1: bad nameserver '8.8.8.8#99999'"),
        ("search x\nnameserver banana\n", "line 2: bad nameserver 'banana'"),
        ("zone corp.example\nnameserver 8.8.8.8\n", "line 1: a zone line names domains"),
    ],
)
def test_bad_dns_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "dns"
    path.write_text(text)
    with pytest.raises(vpnkit_cli.UsageError, match=message):
        vpnkit_cli.parse_dns_file(str(path))


def test_help_lists_vpnkit_flags_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        vpnkit_cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--ethernet", "--mtu", "--gateway-ip", "--host-ip", "--lowest-ip",
                 "--highest-ip", "--host-names", "--gateway-names", "--vm-names", "--dns",
                 "--hosts", "--pcap", "--pcap-snaplen", "--debug", "--domain", "--forwards",
                 "--server-macaddr", "0.0.0.0"):  # fmt: skip
        assert flag in out, flag
    assert "--http FILE" in out and "124" in out
    for flag in vpnkit_cli.UNSUPPORTED:
        assert flag in out, flag
