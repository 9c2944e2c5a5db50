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
namespace with the few modules that takes (getopt_long, not argparse; no
re, ipaddress or socket) and only then imports the stack (bench/startup.py).
"""

from __future__ import annotations

import errno
import os
import sys

from pyvpnkit import __version__
from pyvpnkit.frontends.slirp4netns import PROG
from pyvpnkit.frontends.slirp4netns.getopt_long import GetoptError, Option, getopt_long
from pyvpnkit.frontends.slirp4netns.opts import DEFAULT_CIDR, DEFAULT_MTU, Opts

TYPE_CHECKING = False  # not typing's: importing typing would slow start-up (bench/startup.py)
if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from typing import NoReturn

    from pyvpnkit.core.config import NetConfig
    from pyvpnkit.runtime.netns import IfaceSetup

MAX_MTU = 65520
GUEST, GATEWAY, DNS = 100, 2, 3  # host numbers in the network, as slirp4netns
DHCP_FIRST, DHCP_COUNT = 15, 16  # libslirp's DHCP pool (NB_BOOTP_CLIENTS)
PREFIX_MIN, PREFIX_MAX = 1, 25  # slirp4netns's; .100 must fit in the network
SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), the terminating NUL included
# What `-v` reports, in slirp4netns's machine-readable form: scripts and podman
# gate --outbound-addr (2) and --disable-dns (3) on this number.
SLIRP_CONFIG_VERSION_MAX = 4
USAGE = f"usage: {PROG} [OPTION]... PID|PATH [TAPNAME]"
DESCRIPTION = (
    "User-mode networking for unprivileged network namespaces: a slirp4netns 1.x drop-in "
    "built on pyvpnkit. Joins the user and network namespaces of PID (or PATH with "
    "--netns-type=path), opens TAPNAME (default tap0) there and serves it: 10.0.2.2 is the "
    "gateway and the host's 127.0.0.1, 10.0.2.3 answers DNS through the host's resolv.conf "
    "servers, 10.0.2.100 is the guest. Exit status 1 on errors.")
# (short, long, value's name or "" for a flag, help): slirp4netns's options, in its order.
OPTIONS = [
    ("c", "configure", "", "bring up the interface: address .100, default route via .2, MTU "
     "(and lo)"),
    ("e", "exit-fd", "FD", "exit when FD becomes readable or is closed"),
    ("r", "ready-fd", "FD", 'write "1" to FD and close it once frames flow'),
    ("m", "mtu", "MTU", f"MTU (default={DEFAULT_MTU}, max={MAX_MTU})"),
    ("6", "enable-ipv6", "", "IPv6: fd00::/64, gateway and host loopback fd00::2, DNS fd00::3; "
     "the guest configures itself from router advertisements (SLAAC)"),
    ("a", "api-socket", "PATH", "API socket path (add_hostfwd, list_hostfwd, remove_hostfwd)"),
    ("", "cidr", "CIDR", f"network address CIDR (default={DEFAULT_CIDR})"),
    ("", "disable-host-loopback", "", "prohibit connecting to 127.0.0.1:* on the host "
     "namespace through .2"),
    ("", "netns-type", "TYPE", "network namespace type ([path|pid], default=pid)"),
    ("", "userns-path", "PATH", "user namespace path (joined before the netns)"),
    ("", "enable-sandbox", "", "after set-up: a new mount namespace (and user namespace when "
     "unprivileged) whose root is an empty read-only tmpfs with only /etc and /run, all "
     "capabilities dropped but CAP_NET_BIND_SERVICE, no_new_privs, and where the kernel has "
     "Landlock no filesystem writes or exec"),
    ("", "enable-seccomp", "", "after set-up: set no_new_privs and load a seccomp filter "
     "(libseccomp; exit 1 if missing) making ptrace, mount, namespaces, exec, modules, "
     "reboot, keyrings, clocks, bpf and io_uring fail with EPERM"),
    ("", "outbound-addr", "IPv4", "bind outbound connections to this IPv4 address, or to the "
     "first IPv4 address of this interface"),
    ("", "outbound-addr6", "IPv6", "bind outbound connections to this IPv6 address, or to the "
     "first IPv6 address of this interface"),
    ("", "disable-dns", "", "disable the DNS server on .3 (nothing answers there)"),
    ("", "macaddress", "MAC", "MAC address of the TAP (only valid with -c)"),
    ("", "target-type", "TYPE", "target type ([netns], default=netns; bess is not supported)"),
    ("h", "help", "", "show this help and exit"),
    ("v", "version", "", "show version and exit"),
]
_GETOPT = [Option(short, long, bool(meta)) for short, long, meta, _help in OPTIONS]


class _Refused(Exception):
    """A value slirp4netns refuses after parsing: its own line, no usage, exit 1."""


class _BadUsage(Exception):
    """A command line error: the usage line, then `PROG: error: why`, exit 1."""


def _mtu(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _BadUsage(f"argument -m/--mtu: bad MTU {text!r}") from None
    if not 576 <= value <= MAX_MTU:
        raise _BadUsage(f"argument -m/--mtu: MTU must be between 576 and {MAX_MTU}, "
                        f"got {value}")
    return value


def _fd(flag: str, text: str) -> int:
    if not _digits(text):
        raise _BadUsage(f"argument {flag}: bad file descriptor {text!r}")
    return int(text)


def _mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and _is_hex(p) for p in parts):
        raise _BadUsage(f"argument --macaddress: bad MAC address {text!r}")
    return text.lower()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _digits(text: str) -> bool:
    """[0-9]+, as C's parsers take it (str.isdigit also takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def _choice(flag: str, text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise _BadUsage(f"argument {flag}: invalid choice: {text!r} (choose from {shown})")
    return text


def _cidr(text: str) -> str:
    """slirp4netns's parse_cidr, with its messages (test scripts grep them).

    By hand, not with ipaddress and re: both are slow to import (bench/startup.py).
    """
    address, slash, prefix_text = text.partition("/")
    octets = address.split(".")
    if (not slash or not 1 <= len(prefix_text) <= 2 or not _digits(prefix_text)
            or len(octets) != 4 or not all(1 <= len(o) <= 3 and _digits(o) for o in octets)):
        raise _Refused(f"invalid CIDR: {text}")
    if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
        raise _Refused(f"invalid network address: {address}")
    prefix = int(prefix_text)
    if not PREFIX_MIN <= prefix <= PREFIX_MAX:
        raise _Refused(f"prefix length needs to be {PREFIX_MIN}-{PREFIX_MAX}")
    if _to_int(address) & ((1 << (32 - prefix)) - 1):
        raise _Refused("CIDR needs to be a network address like 10.0.2.0/24, "
                       "not like 10.0.2.100/24")
    return text


def _to_int(address: str) -> int:
    value = 0
    for octet in address.split("."):
        value = value << 8 | int(octet)
    return value


def host(cidr: str, number: int) -> str:
    """Host NUMBER of the network CIDR, dotted."""
    value = _to_int(cidr.partition("/")[0]) + number
    return ".".join(str(value >> shift & 0xFF) for shift in (24, 16, 8, 0))


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


def help_text() -> str:
    """Every slirp4netns spelling: rootlesskit and podman grep `--help` for flags."""
    import textwrap

    lines = [USAGE, "", textwrap.fill(DESCRIPTION, 100), "", "positional arguments:",
             f"  {'PID|PATH':26s}  process whose namespaces to join, or a netns path",
             f"  {'TAPNAME':26s}  TAP device (default tap0)", "", "options:"]
    for short, long, meta, text in OPTIONS:
        flags = f"-{short}, --{long}" if short else f"--{long}"
        flags += f" {meta}" if meta else ""
        wrapped = textwrap.wrap(text, 100 - 30)
        lines.append(f"  {flags:26s}  {wrapped[0]}" if len(flags) <= 26 else f"  {flags}")
        rest = wrapped[1:] if len(flags) <= 26 else wrapped
        lines.extend(" " * 30 + line for line in rest)
    return "\n".join(lines) + "\n"


def _apply(opts: Opts, long: str, value: str | None) -> None:
    """One option from getopt_long onto OPTS, its value checked."""
    if long == "help":
        sys.stdout.write(help_text())
        sys.exit(0)
    if long == "version":
        print(_version())
        sys.exit(0)
    if value is None:  # a flag
        setattr(opts, long.replace("-", "_"), True)
    elif long == "mtu":
        opts.mtu = _mtu(value)
    elif long in ("exit-fd", "ready-fd"):
        setattr(opts, long.replace("-", "_"), _fd(f"-{long[0]}/--{long}", value))
    elif long == "netns-type":
        opts.netns_type = _choice("--netns-type", value, ("pid", "path"))
    elif long == "target-type":
        opts.target_type = _choice("--target-type", value, ("netns",))
    elif long == "macaddress":
        opts.macaddress = _mac(value)
    else:  # a string: api-socket, cidr (checked below), userns-path, outbound-addr(6)
        setattr(opts, long.replace("-", "_"), value)


def _usage_error(message: str) -> NoReturn:
    sys.stderr.write(f"{USAGE}\n{PROG}: error: {message}\n")
    sys.exit(1)


def parse(argv: Sequence[str] | None = None) -> Opts:
    """Options anywhere among the positionals (getopt_long permutes); exits 1 on errors."""
    opts = Opts()
    try:
        found, operands = getopt_long(list(sys.argv[1:] if argv is None else argv), _GETOPT)
        for option, value in found:
            _apply(opts, option.long, value)
        if not operands:
            raise _BadUsage("the following arguments are required: PID|PATH")
        if len(operands) > 2:
            raise _BadUsage(f"unrecognized arguments: {' '.join(operands[2:])}")
        opts.target = operands[0]
        opts.tapname = operands[1] if len(operands) == 2 else "tap0"
        if opts.macaddress and not opts.configure:
            raise _BadUsage("--macaddress is only valid with -c/--configure")
        if opts.netns_type == "pid" and not (_digits(opts.target) and int(opts.target) > 0):
            raise _BadUsage(f"bad PID {opts.target!r} (use --netns-type=path for a path)")
    except (GetoptError, _BadUsage) as exc:
        _usage_error(str(exc))
    try:
        _cidr(opts.cidr)
        if opts.api_socket and len(os.fsencode(opts.api_socket)) >= SUN_PATH_MAX:
            raise _Refused(f"the specified API socket path is too long (>= {SUN_PATH_MAX})")
        opts.outbound = outbound_addresses(opts.outbound_addr, opts.outbound_addr6)
    except _Refused as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)
    opts.guest = host(opts.cidr, GUEST)
    opts.netns_path, opts.userns = namespaces(opts)
    return opts


def outbound_addresses(addr4: str | None, addr6: str | None) -> tuple[str, str]:
    """--outbound-addr/-addr6 as addresses: an address as is, an interface's first one."""
    if not addr4 and not addr6:
        return "", ""
    import ipaddress

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


def iface_setup(opts: Opts) -> IfaceSetup:
    """The TAP as slirp4netns leaves it: with -c the guest's .100, route via .2, MTU."""
    from pyvpnkit.runtime.netns import IfaceSetup

    return IfaceSetup(
        ifname=opts.tapname,
        bring_up=opts.configure,
        address=host(opts.cidr, GUEST),
        prefixlen=int(opts.cidr.partition("/")[2]),
        gateway=host(opts.cidr, GATEWAY),
        mtu=opts.mtu,
        mac=opts.macaddress,
        ipv6=opts.enable_ipv6 and opts.mtu >= 1280,  # by SLAAC from our RAs
    )


def layout(opts: Opts) -> NetConfig:
    """slirp4netns's network: .2 gateway and host loopback, .3 DNS, .100 the guest.

    DHCP leases from .15 as libslirp's does, so a guest left unconfigured
    (no -c) gets what it gets from slirp4netns; with -c the pool is the
    configured .100 alone, the address the guest already has.
    """
    import ipaddress

    from pyvpnkit.core.config import NetConfig
    from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout

    net = opts.network

    def packed(number: int) -> bytes:
        return (net.network_address + number).packed

    gateway = packed(GATEWAY)
    first, last = (GUEST, GUEST) if opts.configure else (DHCP_FIRST, DHCP_FIRST + DHCP_COUNT - 1)
    # slirp4netns's IPv6 (--enable-ipv6): the guest takes an address by SLAAC, no DHCPv6.
    v6 = ipaddress.IPv6Network("fd00::/64")
    return NetConfig(
        subnet=net,
        gateway_ip=gateway,
        host_ip=gateway,
        dns_ip=packed(DNS),
        serve_dns=not opts.disable_dns,
        lowest_ip=packed(first),
        highest_ip=packed(last),
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


def bind_api_socket(path: str) -> _socket.socket:
    """The API socket, listening; OSError otherwise.

    Made before the TAP, so a launcher may ask as soon as it sees the device:
    its request waits in the backlog until the stack answers. A file already
    there goes through links.sockets' stale-socket rule (imported only then:
    start-up is what launchers wait for). A bare _socket.socket: the socket
    module imports enum, slow to import (api.serve takes either).
    """
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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


def namespaces(opts: Opts) -> tuple[str, str | None]:
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
