"""The command lines build the Service's Options; argparse defaults are Options' own."""

from __future__ import annotations

import argparse

from pyvpnkit import cli, vpnkit_cli
from pyvpnkit.app.options import Options
from pyvpnkit.slirp4netns import run as slirp_run
from pyvpnkit.slirp4netns.cli import parse


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
    _config, run_args = vpnkit_cli.configure(["--ethernet", "/tmp/e.sock"])
    opts = cli.service_options(run_args)
    assert opts.listeners == (("vpnkit", "unix:///tmp/e.sock"),) and opts.dns_mode == "host"
    slirp = parse(["--configure", "4242", "tap0"])
    assert isinstance(slirp, argparse.Namespace)
    assert slirp_run.service_options(slirp) == Options(hosts="/dev/null", ifname="tap0",
                                                       netns="4242")
