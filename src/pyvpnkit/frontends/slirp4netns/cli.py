"""Command line of `pyvpnkit-slirp4netns`: slirp4netns 1.x's options, pyvpnkit's stack.

The help text lists every slirp4netns spelling: rootlesskit and podman
decide which flags to pass by searching `--help` for them. Layout as
slirp4netns: in 10.0.2.0/24 (or --cidr) .2 is the gateway and the host's
loopback, .3 answers DNS (forwarded to the host's resolv.conf servers) and
.100 is the guest.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Sequence

from pyvpnkit import __version__
from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout
from pyvpnkit.frontends.slirp4netns import PROG

DEFAULT_CIDR = "10.0.2.0/24"
DEFAULT_MTU = 1500
MAX_MTU = 65520
GUEST, GATEWAY, DNS = 100, 2, 3  # host numbers in the network, as slirp4netns


def _v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


# slirp4netns's IPv6 (--enable-ipv6): the guest takes an address by SLAAC, no DHCPv6.
SLIRP_IPV6 = Ipv6Layout(
    subnet=ipaddress.IPv6Network("fd00::/64"),
    gateway_ip=_v6("fd00::2"),
    host_ip=_v6("fd00::2"),
    lowest_ip=_v6("fd00::100"),
    highest_ip=_v6("fd00::ffff"),
    dns_ip=_v6("fd00::3"),
    dhcpv6=False,
)
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _mtu(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad MTU {text!r}") from None
    if not 576 <= value <= MAX_MTU:
        raise argparse.ArgumentTypeError(f"MTU must be between 576 and {MAX_MTU}, got {value}")
    return value


def _cidr(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad CIDR {text!r}") from None
    if net.num_addresses <= GUEST + 1:
        raise argparse.ArgumentTypeError(f"CIDR {text} is too small: the guest is host .{GUEST}")
    return net


def _fd(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"bad file descriptor {text!r}")
    return int(text)


def _mac(text: str) -> str:
    if not _MAC.match(text):
        raise argparse.ArgumentTypeError(f"bad MAC address {text!r}")
    return text.lower()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """slirp4netns exits 1 on a bad command line (argparse would exit 2)."""
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        usage=f"{PROG} [OPTION]... PID|PATH [TAPNAME]",
        description="User-mode networking for unprivileged network namespaces: a slirp4netns "
        "1.x drop-in built on pyvpnkit. Joins the user and network namespaces of PID "
        "(or PATH with --netns-type=path), opens TAPNAME (default tap0) there and serves it: "
        "10.0.2.2 is the gateway and the host's 127.0.0.1, 10.0.2.3 answers DNS through the "
        "host's resolv.conf servers, 10.0.2.100 is the guest. Exit status 1 on errors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    a = p.add_argument
    a("target", metavar="PID|PATH", help="process whose namespaces to join, or a netns path")
    a("tapname", metavar="TAPNAME", nargs="?", default="tap0", help="TAP device (default tap0)")
    a("-c", "--configure", action="store_true",
      help="bring up the interface: address .100, default route via .2, MTU (and lo)")
    a("-e", "--exit-fd", type=_fd, metavar="FD",
      help="exit when FD becomes readable or is closed")
    a("-r", "--ready-fd", type=_fd, metavar="FD",
      help='write "1" to FD and close it once frames flow')
    a("-m", "--mtu", type=_mtu, default=DEFAULT_MTU,
      help=f"MTU (default={DEFAULT_MTU}, max={MAX_MTU})")
    a("-6", "--enable-ipv6", action="store_true",
      help="IPv6: fd00::/64, gateway and host loopback fd00::2, DNS fd00::3; the guest "
      "configures itself from router advertisements (SLAAC)")
    a("-a", "--api-socket", metavar="PATH",
      help="API socket path (add_hostfwd, list_hostfwd, remove_hostfwd)")
    a("--cidr", type=_cidr, default=ipaddress.IPv4Network(DEFAULT_CIDR),
      help=f"network address CIDR (default={DEFAULT_CIDR})")
    a("--disable-host-loopback", action="store_true",
      help="prohibit connecting to 127.0.0.1:* on the host namespace through .2")
    a("--netns-type", choices=["pid", "path"], default="pid", metavar="TYPE",
      help="network namespace type ([path|pid], default=pid)")
    a("--userns-path", metavar="PATH", help="user namespace path (joined before the netns)")
    a("--enable-sandbox", action="store_true",
      help="after set-up: set no_new_privs; as root, drop all capabilities but "
      "CAP_NET_BIND_SERVICE and CAP_NET_RAW; with Landlock (if the kernel has it, else a "
      "warning says so) refuse filesystem writes and exec, reads stay allowed (unlike "
      "slirp4netns, no pivot_root)")
    a("--enable-seccomp", action="store_true",
      help="after set-up: set no_new_privs and load a seccomp filter (libseccomp; exit 1 "
      "if missing) making ptrace, mount, namespaces, exec, modules, reboot, keyrings, "
      "clocks, bpf and io_uring fail with EPERM")
    a("--outbound-addr", metavar="IPv4",
      help="not supported yet: refused with an error")
    a("--outbound-addr6", metavar="IPv6",
      help="not supported yet: refused with an error")
    a("--disable-dns", action="store_true",
      help="disable the DNS server on .3 (nothing answers there)")
    a("--macaddress", type=_mac, metavar="MAC",
      help="MAC address of the TAP (only valid with -c)")
    a("--target-type", choices=["netns"], default="netns", metavar="TYPE",
      help="target type ([netns], default=netns; bess is not supported)")
    a("-h", "--help", action="help", help="show this help and exit")
    a("-v", "--version", action="version",
      version=f"{PROG} version {__version__} (pyvpnkit; slirp4netns 1.x command line)")
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    opts = parser.parse_args(argv)
    if opts.outbound_addr or opts.outbound_addr6:
        parser.error("--outbound-addr and --outbound-addr6 are not supported yet")
    if opts.macaddress and not opts.configure:
        parser.error("--macaddress is only valid with -c/--configure")
    if opts.netns_type == "pid" and not (opts.target.isdigit() and int(opts.target) > 0):
        parser.error(f"bad PID {opts.target!r} (use --netns-type=path for a path)")
    return opts


def host(net: ipaddress.IPv4Network, number: int) -> ipaddress.IPv4Address:
    return net.network_address + number


def layout(opts: argparse.Namespace) -> NetConfig:
    """slirp4netns's network: .2 gateway and host loopback, .3 DNS, .100 the guest."""
    net: ipaddress.IPv4Network = opts.cidr
    gateway = host(net, GATEWAY).packed
    return NetConfig(
        subnet=net,
        gateway_ip=gateway,
        host_ip=gateway,
        dns_ip=host(net, DNS).packed,
        serve_dns=not opts.disable_dns,
        lowest_ip=host(net, GUEST).packed,
        highest_ip=host(net, GUEST).packed,
        mtu=opts.mtu,
        host_loopback=not opts.disable_host_loopback,
        host_names=(),  # a pure forwarder, as slirp4netns: no built-in names
        gateway_names=(),
        vm_names=(),
        ipv6=SLIRP_IPV6 if opts.enable_ipv6 and opts.mtu >= 1280 else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(argv)
    from pyvpnkit.frontends.slirp4netns.run import run

    return run(opts, layout(opts))
