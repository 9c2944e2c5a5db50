"""Command line of `pyvpnkit-slirp4netns`: slirp4netns 1.x's options, pyvpnkit's stack.

The help text lists every slirp4netns spelling: rootlesskit and podman
decide which flags to pass by searching `--help` for them, and scripts gate
features on `-v`'s SLIRP_CONFIG_VERSION_MAX. Options may come after and
between the positionals, as getopt_long permutes them, and the errors that
scripts grep for keep slirp4netns's wording. Layout as slirp4netns: in
10.0.2.0/24 (or --cidr) .2 is the gateway and the host's loopback, .3
answers DNS (forwarded to the host's resolv.conf servers), .100 is the
guest and DHCP leases from .15.

Start-up is what a launcher waits for: main() opens the TAP in the target
namespace with the few modules that takes (argparse, ipaddress, socket,
ctypes) and only then imports the stack (see bench/startup.py).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import re
import sys
from collections.abc import Sequence

from pyvpnkit import __version__
from pyvpnkit.frontends.slirp4netns import PROG

TYPE_CHECKING = False  # not typing's: importing typing would slow start-up (bench/startup.py)
if TYPE_CHECKING:
    import socket

    from pyvpnkit.core.config import NetConfig
    from pyvpnkit.runtime.netns import IfaceSetup

DEFAULT_CIDR = "10.0.2.0/24"
DEFAULT_NETWORK = ipaddress.IPv4Network(DEFAULT_CIDR)
DEFAULT_MTU = 1500
MAX_MTU = 65520
GUEST, GATEWAY, DNS = 100, 2, 3  # host numbers in the network, as slirp4netns
DHCP_FIRST, DHCP_COUNT = 15, 16  # libslirp's DHCP pool (NB_BOOTP_CLIENTS)
PREFIX_MIN, PREFIX_MAX = 1, 25  # slirp4netns's; .100 must fit in the network
SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), the terminating NUL included
# What `-v` reports, in slirp4netns's machine-readable form: scripts and podman
# gate --outbound-addr (2) and --disable-dns (3) on this number.
SLIRP_CONFIG_VERSION_MAX = 4
# Patterns are compiled when used: compiling costs start-up time (bench/startup.py).
_MAC = r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"
_CIDR = r"^(([0-9]{1,3}\.){3}[0-9]{1,3})/([0-9]{1,2})$"


def _mtu(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad MTU {text!r}") from None
    if not 576 <= value <= MAX_MTU:
        raise argparse.ArgumentTypeError(f"MTU must be between 576 and {MAX_MTU}, got {value}")
    return value


class _Refused(Exception):
    """A value slirp4netns refuses after parsing: its own line, no usage, exit 1."""


def _cidr(text: str) -> ipaddress.IPv4Network:
    """slirp4netns's parse_cidr, with its messages (test scripts grep them)."""
    match = re.match(_CIDR, text)
    if match is None:
        raise _Refused(f"invalid CIDR: {text}")
    try:
        address = ipaddress.IPv4Address(match.group(1))
    except ValueError:
        raise _Refused(f"invalid network address: {match.group(1)}") from None
    prefix = int(match.group(3))
    if not PREFIX_MIN <= prefix <= PREFIX_MAX:
        raise _Refused(f"prefix length needs to be {PREFIX_MIN}-{PREFIX_MAX}")
    net = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    if net.network_address != address:
        raise _Refused("CIDR needs to be a network address like 10.0.2.0/24, "
                       "not like 10.0.2.100/24")
    return net


def _fd(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"bad file descriptor {text!r}")
    return int(text)


def _mac(text: str) -> str:
    if not re.match(_MAC, text):
        raise argparse.ArgumentTypeError(f"bad MAC address {text!r}")
    return text.lower()


def _version() -> str:
    """slirp4netns's `-v` block (runc-style, one `key: value` a line)."""
    from pyvpnkit.runtime import seccomp

    try:
        libseccomp = seccomp.version()
    except OSError:
        libseccomp = "none"
    return (f"slirp4netns version 1.2.0+pyvpnkit-{__version__}\n"
            f"commit: none (pyvpnkit {__version__})\n"
            f"libslirp: none (pyvpnkit {__version__})\n"
            f"SLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}\n"
            f"libseccomp: {libseccomp}")


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(_version())
        parser.exit()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """A fixed width, as slirp4netns's help: argparse would import shutil to ask the terminal."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


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
        formatter_class=_Formatter,
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
    a("--cidr", default=DEFAULT_CIDR,
      help=f"network address CIDR (default={DEFAULT_CIDR})")
    a("--disable-host-loopback", action="store_true",
      help="prohibit connecting to 127.0.0.1:* on the host namespace through .2")
    a("--netns-type", choices=["pid", "path"], default="pid", metavar="TYPE",
      help="network namespace type ([path|pid], default=pid)")
    a("--userns-path", metavar="PATH", help="user namespace path (joined before the netns)")
    a("--enable-sandbox", action="store_true",
      help="after set-up: a new mount namespace (and user namespace when unprivileged) "
      "whose root is an empty read-only tmpfs with only /etc and /run, all capabilities "
      "dropped but CAP_NET_BIND_SERVICE, no_new_privs, and where the kernel has Landlock "
      "no filesystem writes or exec")
    a("--enable-seccomp", action="store_true",
      help="after set-up: set no_new_privs and load a seccomp filter (libseccomp; exit 1 "
      "if missing) making ptrace, mount, namespaces, exec, modules, reboot, keyrings, "
      "clocks, bpf and io_uring fail with EPERM")
    a("--outbound-addr", metavar="IPv4",
      help="bind outbound connections to this IPv4 address, or to the first IPv4 "
      "address of this interface")
    a("--outbound-addr6", metavar="IPv6",
      help="bind outbound connections to this IPv6 address, or to the first IPv6 "
      "address of this interface")
    a("--disable-dns", action="store_true",
      help="disable the DNS server on .3 (nothing answers there)")
    a("--macaddress", type=_mac, metavar="MAC",
      help="MAC address of the TAP (only valid with -c)")
    a("--target-type", choices=["netns"], default="netns", metavar="TYPE",
      help="target type ([netns], default=netns; bess is not supported)")
    a("-h", "--help", action="help", help="show this help and exit")
    a("-v", "--version", action=_Version, nargs=0, help="show version and exit")
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options anywhere among the positionals (getopt_long permutes); exits 1 on errors."""
    parser = make_parser()
    opts = parser.parse_intermixed_args(argv)
    if opts.macaddress and not opts.configure:
        parser.error("--macaddress is only valid with -c/--configure")
    if opts.netns_type == "pid" and not (opts.target.isdigit() and int(opts.target) > 0):
        parser.error(f"bad PID {opts.target!r} (use --netns-type=path for a path)")
    try:
        opts.cidr = _cidr(opts.cidr) if opts.cidr != DEFAULT_CIDR else DEFAULT_NETWORK
        if opts.api_socket and len(os.fsencode(opts.api_socket)) >= SUN_PATH_MAX:
            raise _Refused(f"the specified API socket path is too long (>= {SUN_PATH_MAX})")
        opts.outbound = outbound_addresses(opts.outbound_addr, opts.outbound_addr6)
    except _Refused as exc:
        parser.exit(1, f"{exc}\n")
    opts.guest = str(host(opts.cidr, GUEST))  # the API's default, with or without -c
    opts.netns_path, opts.userns = namespaces(opts)
    return opts


def outbound_addresses(addr4: str | None, addr6: str | None) -> tuple[str, str]:
    """--outbound-addr/-addr6 as addresses: an address as is, an interface's first one."""
    if not addr4 and not addr6:
        return "", ""
    from pyvpnkit.runtime.outbound import interface_address

    result = []
    for value, family in ((addr4, 4), (addr6, 6)):
        if not value:
            result.append("")
            continue
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            found = interface_address(value, family)
            if found is None:
                flag = "outbound-addr" if family == 4 else "outbound-addr6"
                raise _Refused(f"{flag} has to be valid ipv{family} address or interface "
                               "name.") from None
            result.append(found)
            continue
        if ip.version != family:
            raise _Refused(f"outbound-addr{'' if family == 4 else '6'} has to be valid "
                           f"ipv{family} address or interface name.")
        result.append(str(ip))
    return result[0], result[1]


def host(net: ipaddress.IPv4Network, number: int) -> ipaddress.IPv4Address:
    return net.network_address + number


def iface_setup(opts: argparse.Namespace) -> IfaceSetup:
    """The TAP as slirp4netns leaves it: with -c the guest's .100, route via .2, MTU."""
    from pyvpnkit.runtime.netns import IfaceSetup

    net: ipaddress.IPv4Network = opts.cidr
    return IfaceSetup(
        ifname=opts.tapname,
        bring_up=opts.configure,
        address=str(host(net, GUEST)),
        prefixlen=net.prefixlen,
        gateway=str(host(net, GATEWAY)),
        mtu=opts.mtu,
        mac=opts.macaddress,
        ipv6=opts.enable_ipv6 and opts.mtu >= 1280,  # by SLAAC from our RAs
    )


def layout(opts: argparse.Namespace) -> NetConfig:
    """slirp4netns's network: .2 gateway and host loopback, .3 DNS, .100 the guest.

    DHCP leases from .15 as libslirp's does, so a guest left unconfigured
    (no -c) gets what it gets from slirp4netns; with -c the pool is the
    configured .100 alone, the address the guest already has.
    """
    from pyvpnkit.core.config import NetConfig
    from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout

    net: ipaddress.IPv4Network = opts.cidr
    gateway = host(net, GATEWAY).packed
    first, last = (GUEST, GUEST) if opts.configure else (DHCP_FIRST, DHCP_FIRST + DHCP_COUNT - 1)
    # slirp4netns's IPv6 (--enable-ipv6): the guest takes an address by SLAAC, no DHCPv6.
    v6 = ipaddress.IPv6Network("fd00::/64")
    return NetConfig(
        subnet=net,
        gateway_ip=gateway,
        host_ip=gateway,
        dns_ip=host(net, DNS).packed,
        serve_dns=not opts.disable_dns,
        lowest_ip=host(net, first).packed,
        highest_ip=host(net, last).packed,
        mtu=opts.mtu,
        host_loopback=not opts.disable_host_loopback,
        no_host_loopback="net_unreachable",  # connect() fails with ENETUNREACH, as libslirp's
        host_names=(),  # a pure forwarder, as slirp4netns: no built-in names
        gateway_names=(),
        vm_names=(),
        ipv6=Ipv6Layout(
            subnet=v6,
            gateway_ip=(v6[2]).packed,
            host_ip=(v6[2]).packed,
            lowest_ip=(v6[0x100]).packed,
            highest_ip=(v6[0xFFFF]).packed,
            dns_ip=(v6[3]).packed,
            dhcpv6=False,
        ) if opts.enable_ipv6 and opts.mtu >= 1280 else None,
    )


def bind_api_socket(path: str) -> socket.socket:
    """The API socket, listening; OSError otherwise.

    Made before the TAP, so a launcher may ask as soon as it sees the device:
    its request waits in the backlog until the stack answers. A file already
    there goes through links.sockets' stale-socket rule (imported only then:
    start-up is what launchers wait for).
    """
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            from pyvpnkit.links.sockets import remove_stale_unix

            remove_stale_unix(path)
            sock.bind(path)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def namespaces(opts: argparse.Namespace) -> tuple[str, str | None]:
    """The target's network namespace and the user namespace to join first."""
    if opts.netns_type == "pid":
        return f"/proc/{opts.target}/ns/net", opts.userns_path or f"/proc/{opts.target}/ns/user"
    return opts.target, opts.userns_path


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(argv)
    from pyvpnkit.runtime.netns import attach
    from pyvpnkit.runtime.nsdiag import SetupError

    if opts.enable_seccomp:
        from pyvpnkit.runtime import seccomp

        try:  # refuse before joining the target (slirp4netns exits 1 too)
            seccomp.load_library()
        except OSError as exc:
            print(f"{PROG}: --enable-seccomp: {exc.strerror}", file=sys.stderr)
            return 1
    try:
        api_socket = bind_api_socket(opts.api_socket) if opts.api_socket else None
    except OSError as exc:
        print(f"{PROG}: API socket {opts.api_socket}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # The TAP first, the stack's imports after: launchers (and slirp4netns's own
    # tests) use the device as soon as they have started us.
    try:
        attached = attach(opts.netns_path, iface_setup(opts), userns=opts.userns)
    except SetupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        if api_socket is not None:
            api_socket.close()
            os.unlink(opts.api_socket)
        return 1
    from pyvpnkit.frontends.slirp4netns.run import run

    return run(opts, layout(opts), attached, api_socket)
