"""pyvpnkit-gvproxy: Go-style flags, gvproxy's defaults, the -config YAML, errors as one line."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from pyvpnkit.app.options import Options
from pyvpnkit.core.config import ip4
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.frontends.gvproxy import cli, flags
from pyvpnkit.frontends.gvproxy.config import HYPERKIT_UUID, ConfigError, settings
from pyvpnkit.frontends.gvproxy.flags import FlagError
from pyvpnkit.frontends.gvproxy.run import Gvproxy, pool_bounds, run_options
from pyvpnkit.runtime.engine import Engine


def parse(*argv: str) -> flags.Args:
    return flags.parse(list(argv))


def test_one_or_two_dashes_equals_or_space_and_repeatable_flags() -> None:
    a = parse("-listen", "unix:///a", "--listen=tcp://127.0.0.1:1", "-mtu=9000", "--debug",
              "-ssh-port", "-1", "-ec2-metadata-access=false", "-forward-sock", "/s")
    assert a["listen"] == ["unix:///a", "tcp://127.0.0.1:1"]
    assert a["mtu"] == 9000 and a["debug"] is True and a["ssh-port"] == -1
    assert a["ec2-metadata-access"] is False and a["forward-sock"] == ["/s"]
    assert a.given == {"listen", "mtu", "debug", "ssh-port", "ec2-metadata-access",
                       "forward-sock"}
    assert parse("-mtu", "0x400")["mtu"] == 1024  # Go's int syntax
    assert parse("-debug", "--")["debug"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-nope"], "flag provided but not defined: -nope"),
        (["-mtu"], "flag needs an argument: -mtu"),
        (["-mtu", "big"], 'invalid value "big" for flag -mtu'),
        (["-debug=maybe"], 'invalid boolean value "maybe" for -debug'),
        (["---listen", "x"], "bad flag syntax: ---listen"),
        (["extra"], "unexpected argument 'extra'"),
    ],
)
def test_bad_flags(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message):
        flags.parse(argv)


def test_main_exit_codes_and_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["-nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("stack:\n  mtu: [1\n")
    assert cli.main(["-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyvpnkit-gvproxy: config file") and "not valid YAML" in err
    assert err.count("\n") == 1
    assert cli.main(["-help"]) == 0 and "-forward-identity" in capsys.readouterr().out
    assert cli.main(["-version"]) == 0 and "gvproxy version" in capsys.readouterr().out


def test_defaults_are_gvproxys(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.53\nsearch corp.example lab.example\n")
    s = settings(parse(), str(resolv))
    assert (s.subnet, s.gateway_ip, s.device_ip, s.host_ip) == (
        ipaddress.IPv4Network("192.168.127.0/24"), ipaddress.IPv4Address("192.168.127.1"),
        ipaddress.IPv4Address("192.168.127.2"), ipaddress.IPv4Address("192.168.127.254"))
    assert s.gateway_mac == "5a:94:ef:e4:0c:dd" and s.mtu == 1500
    assert s.static_leases == {"192.168.127.2": "5a:94:ef:e4:0c:ee"}
    assert s.forwards == {"127.0.0.1:2222": "192.168.127.2:22"}
    assert s.search_domains == ["corp.example", "lab.example"]
    assert [z.to_json() for z in s.zones] == [
        {"Name": name, "DefaultIP": "", "Records": [
            {"Name": "gateway", "IP": "192.168.127.1"}, {"Name": "host", "IP": "192.168.127.254"}]}
        for name in ("containers.internal.", "docker.internal.")]
    assert s.protocol == "hyperkit"
    assert pool_bounds(s) == (ipaddress.IPv4Address("192.168.127.2"),
                              ipaddress.IPv4Address("192.168.127.253"))
    config, options = run_options(s)
    assert options.listeners == () and options.dns_mode == "forward" and options.http is None
    assert config.gateway_mac == bytes.fromhex("5a94efe40cdd") and config.lease_time == 3600
    assert config.host_ip == ip4("192.168.127.254") and config.host_loopback
    assert config.search_domains == ("corp.example", "lab.example") and config.domain == ""
    assert settings(parse("-ssh-port", "-1")).forwards == {}


def test_yaml_config_keys_and_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gv.yaml"
    path.write_text("""\
log-level: debug
listen: [unix:///run/api.sock]
interfaces:
  qemu: unix:///run/qemu.sock
stack:
  mtu: 4000
  subnet: 10.8.0.0/24
  gatewayIP: 10.8.0.1
  deviceIP: 10.8.0.5
  hostIP: 10.8.0.2
  gatewayMacAddress: 02:00:00:00:00:01
  dns:
    - name: corp.internal.
      records:
        - name: db
          ip: 10.8.0.50
        - regexp: '^web-'
          ip: 10.8.0.60
      defaultIP: 10.8.0.70
  dnsSearchDomains: [corp.internal]
  forwards:
    127.0.0.1:2022: 10.8.0.5:22
    udp:127.0.0.1:5353: 10.8.0.5:53
  nat:
    10.8.0.2: 127.0.0.1
  gatewayVirtualIPs: [10.8.0.2]
  dhcpStaticLeases:
    10.8.0.5: 02:00:00:00:00:05
""")
    s = settings(parse("-config", str(path), "-mtu", "9000"))
    assert s.mtu == 9000  # the flag wins
    assert s.listen == ["unix:///run/api.sock"] and s.protocol == "qemu"
    assert (str(s.gateway_ip), str(s.device_ip), str(s.host_ip)) == (
        "10.8.0.1", "10.8.0.5", "10.8.0.2")
    assert s.gateway_mac == "02:00:00:00:00:01" and s.log_level == "debug"
    assert s.zones[0].to_json()["DefaultIP"] == "10.8.0.70"
    assert s.forwards == {"127.0.0.1:2022": "10.8.0.5:22", "udp:127.0.0.1:5353": "10.8.0.5:53"}
    assert s.static_leases == {"10.8.0.5": "02:00:00:00:00:05"}
    assert s.search_domains == ["corp.internal"]  # no default zones or ssh forward with -config
    assert pool_bounds(s) == (ipaddress.IPv4Address("10.8.0.3"),
                              ipaddress.IPv4Address("10.8.0.254"))


@pytest.mark.parametrize(
    ("yaml_text", "argv", "message"),
    [
        ("- a list\n", [], "expected a mapping"),
        ("stack:\n  mtu: big\n", [], "stack.mtu: 'big' is not a whole number"),
        ("stack:\n  subnet: 10.0.0.0/30\n", [], "too small"),
        ("stack:\n  gatewayIP: 10.1.1.1\n", [], r"IP \(10.1.1.1\) not in subnet"),
        ("stack:\n  hostIP: 192.168.127.1\n", [], "need to be distinct"),
        ("stack:\n  nat: {192.168.127.1: 10.0.0.1}\n", [], "is the gateway's"),
        ("stack:\n  nat: {192.168.127.9: nowhere}\n", [], "stack.nat 192.168.127.9"),
        ("stack:\n  dns: [{name: z., records: [{name: a, ip: x}]}]\n", [], r"stack.dns\[0\]"),
        ("stack:\n  gatewayMacAddress: nope\n", [], "is not a MAC address"),
        ("stack:\n  dhcpStaticLeases: {192.168.127.2: zz}\n", [], "is not a MAC"),
        ("stack:\n  vpnKitUUIDMacAddresses: {u: zz}\n", [], "is not a MAC"),
        ("stack:\n  dnsSearchDomains: ['a..b']\n", [], "'a..b' is not a domain name"),
        ("{}\n", ["-listen-bess", "unix:///x"], "must be unixpacket://"),
        ("{}\n", ["-listen-qemu", "unix:///q", "-listen-vpnkit", "unix:///v"],
         "cannot use qemu and vpnkit"),
        ("{}\n", ["-forward-sock", "/a"], "must all be specified together"),
        ("{}\n", ["-forward-sock", "/a", "-forward-dest", "/b", "-forward-user", "u",
                  "-forward-identity", "/nonexistent/key"], "identity file"),
        ("{}\n", ["-notification", "tcp://x:1"], "must be unix://"),
        ("{}\n", ["-mtu", "100"], "mtu 100"),
        ("interfaces: {qemu: 5}\n", [], "-listen-qemu: '5': no scheme"),
        ("{}\n", ["-dns-server", "nope"], "-dns-server 'nope': use IP or IP#PORT"),
    ],
)
def test_bad_config_is_one_clear_error(
    tmp_path: Path, yaml_text: str, argv: list[str], message: str
) -> None:
    path = tmp_path / "gv.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        s = settings(parse("-config", str(path), *argv))
        run_options(s)


def test_settings_land_in_options(tmp_path: Path) -> None:
    """gvproxy's own flags map straight onto Options, no `run` command line between."""
    qemu = f"unix://{tmp_path}/q.sock"
    s = settings(parse("-listen-qemu", qemu, "-listen-stdio", "accept", "-pcap", "/tmp/c.pcap",
                       "-dns-server", "127.0.0.1#5353", "-dns-server", "::1", "-hosts",
                       "/dev/null"))
    _config, options = run_options(s)
    assert options == Options(listeners=(("qemu", qemu), ("stdio", "stdio")), pcap="/tmp/c.pcap",
                              dns_servers=(("127.0.0.1", 5353), ("::1", 53)), hosts="/dev/null")
    with pytest.raises(
        ConfigError, match=r"^-dns-server '10.0.0.1#99999': port 99999 is not in 1\.\.65535$"
    ):
        run_options(settings(parse("-dns-server", "10.0.0.1#99999")))


def test_bad_ssh_port_without_config() -> None:
    with pytest.raises(ConfigError, match="ssh-port value must be between 1024 and 65535"):
        settings(parse("-ssh-port", "22"))


def test_hyperkit_uuid_gets_the_static_lease_mac_and_address(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search good.example bad..example\n")  # the bad one is skipped
    s = settings(parse(), str(resolv))
    assert s.search_domains == ["good.example"]
    stack = Stack(run_options(s)[0])
    stack.pool.allocate("mac:5a:94:ef:e4:0c:ee", ip4("192.168.127.2"), strict=True)
    loop = asyncio.new_event_loop()
    try:
        engine = Engine(stack, loop)
        assert engine.vif_request(HYPERKIT_UUID, None) == (
            bytes.fromhex("5a94efe40cee"), ip4("192.168.127.2"))
        other_mac, other_ip = engine.vif_request("0b6d1a2e-0000-4000-8000-000000000001", None)
        assert other_mac != bytes.fromhex("5a94efe40cee") and other_ip == ip4("192.168.127.3")
    finally:
        loop.close()


def test_static_leases_the_pool_cannot_give_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "gv.yaml"
    path.write_text("stack:\n  dhcpStaticLeases:\n    192.168.127.254: 02:00:00:00:00:01\n")
    with pytest.raises(ConfigError, match="outside the VM range"):
        Gvproxy(settings(parse("-config", str(path), "-dns-server", "127.0.0.1", "-hosts",
                               "/dev/null")))
    path.write_text("stack:\n  dhcpStaticLeases:\n    192.168.127.5: 02:00:00:00:00:01\n"
                    "    192.168.127.6: 02:00:00:00:00:01\n")
    with pytest.raises(ConfigError, match="static lease 192.168.127.6 .* already holds"):
        Gvproxy(settings(parse("-config", str(path), "-dns-server", "127.0.0.1", "-hosts",
                               "/dev/null")))


def test_link_local_refused_unless_ec2_metadata_access() -> None:
    from pyvpnkit.core.nat.routes import route

    config, _options = run_options(settings(parse("-ssh-port", "-1")))
    assert route(config, ip4("169.254.169.254")) == (None, "admin_prohibited",
                                                      ip4("169.254.169.254"))
    assert route(config, ip4("203.0.113.9")) == ("203.0.113.9", None, None)
    allowed = settings(parse("-ssh-port", "-1", "-ec2-metadata-access"))
    config, _options = run_options(allowed)
    assert route(config, ip4("169.254.169.254")) == ("169.254.169.254", None, None)


def test_nat_table_and_gateway_virtual_ips(tmp_path: Path) -> None:
    path = tmp_path / "gv.yaml"
    path.write_text("stack:\n  nat:\n    192.168.127.254: 127.0.0.1\n"
                    "    192.168.127.253: 10.0.0.5\n"
                    "  gatewayVirtualIPs: [192.168.127.254, 192.168.127.253]\n")
    s = settings(parse("-config", str(path)))
    assert str(s.host_ip) == "192.168.127.254"
    assert {str(k): str(v) for k, v in s.nat.items()} == {"192.168.127.253": "10.0.0.5"}
    config, _options = run_options(s)
    assert config.nat == ((ip4("192.168.127.253"), "10.0.0.5"),)
    assert config.virtual_ips == (ip4("192.168.127.254"), ip4("192.168.127.253"))
