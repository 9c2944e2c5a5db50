"""The command lines build the Service's Options; argparse defaults are Options' own."""

from __future__ import annotations

from pyvpnkit.app.options import Options
from pyvpnkit.core.config import NetConfig
from pyvpnkit.frontends import cli
from pyvpnkit.frontends import vpnkit as vpnkit_cli
from pyvpnkit.frontends.slirp4netns import run as slirp_run
from pyvpnkit.frontends.slirp4netns.cli import parse


def test_run_defaults_are_the_options_defaults() -> None:
    args = cli.make_parser().parse_args(["run", "--tap", "tap0"])
    assert cli.service_options(args) == Options(tap="tap0")


def test_flags_land_in_options() -> None:
    args = cli.make_parser().parse_args([
        "run", "--listen-qemu", "unix:///tmp/q.sock", "--dns-server", "127.0.0.1#5353",
        "--hosts", "/dev/null", "-p", "8080:80", "--no-config-net", "--udp-max-flows", "7",
    ])
    opts = cli.service_options(args)
    assert opts.listeners == (("qemu", "unix:///tmp/q.sock"),)
    assert opts.dns_servers == (("127.0.0.1", 5353),) and opts.hosts == "/dev/null"
    assert opts.publish == (("127.0.0.1:8080", ":80", "tcp"),)
    assert not opts.config_net and opts.udp_max_flows == 7


def test_drop_ins_build_options_too() -> None:
    _config, opts, _level = vpnkit_cli.configure(["--ethernet", "/tmp/e.sock"])
    assert opts == Options(listeners=(("vpnkit", "unix:///tmp/e.sock"),), dns_mode="host",
                           pcap_snaplen=128, port_max_idle_time=300.0)
    slirp = parse(["--configure", "4242", "tap0"])
    assert slirp_run.service_options(slirp) == Options(
        hosts="/dev/null", ifname="tap0", netns="4242", guest_ip=bytes([10, 0, 2, 100]))


def test_ipv6_flags_land_in_the_config() -> None:
    import ipaddress

    import pytest

    from pyvpnkit.errors import UserError

    def config(*flags: str) -> NetConfig:
        return cli.build_config(cli.make_parser().parse_args(["run", "--tap", "t", *flags]))

    v6 = config().ipv6
    assert v6 is not None and str(v6.subnet) == "fd42:7076:6b69::/64"
    v6 = config("--ipv6-subnet", "fd00:1:2:3::/64").ipv6
    assert v6 is not None and str(ipaddress.IPv6Address(v6.gateway_ip)) == "fd00:1:2:3::1"
    assert config("--no-ipv6").ipv6 is None
    assert config("--mtu", "1000").ipv6 is None
    for flags, words in ((("--ipv6-subnet", "fd00::/48"), "must be a /64"),
                         (("--ipv6-subnet", "10.0.0.0/24"), "an IPv4 network"),
                         (("--mtu", "1000", "--ipv6-subnet", "fd00::/64"), "needs 1280")):
        with pytest.raises(UserError, match=words):
            config(*flags)
    vpnkit = vpnkit_cli.configure(["--ethernet", "/tmp/x.sock"])[0]
    assert vpnkit.ipv6 is None


def test_shared_value_checks() -> None:
    """The checks every front end's DNS-server and name-list flags go through."""
    import pytest

    from pyvpnkit.app.options import parse_dns_server, parse_mac, split_names

    assert parse_dns_server("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_dns_server("::1#5353") == ("::1", 5353)
    for text, words in (("banana", "use IP or IP#PORT"), ("10.0.0.1#x", "use IP or IP#PORT"),
                        ("10.0.0.1#0", r"port 0 is not in 1\.\.65535")):
        with pytest.raises(ValueError, match=words):
            parse_dns_server(text)
    assert split_names(" a.test, ,b.test,") == ("a.test", "b.test") and split_names("") == ()
    assert parse_mac("5A:94:ef:e4:0c:dd") == bytes.fromhex("5a94efe40cdd")
    for text in ("5a:94:ef:e4:0c", "5a:94:ef:e4:0c:dd:00", "5a:94:ef:e4:0c: d", "5a-94-ef-e4-0c-dd",
                 "5a:94:ef:e4:0c:dg", "0x:94:ef:e4:0c:dd"):
        with pytest.raises(ValueError, match="is not a MAC address"):
            parse_mac(text)
