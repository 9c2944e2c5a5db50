"""gvproxy's command line, parsed the way Go's flag package parses it.

Go accepts `-name` and `--name` alike, values as `-name=V` or `-name V`
(booleans only as `-name` or `-name=true|false`), and stops at the first
argument that is not a flag or at `--`. Flag names, defaults and help are
gvproxy's (cmd/gvproxy/config.go); a few pyvpnkit additions are marked so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyvpnkit import __version__

PROG = "pyvpnkit-gvproxy"
EXIT_FLAGS = 2  # as Go's flag package
EXIT_CONFIG = 1  # as gvproxy's log.Fatal


class FlagError(Exception):
    """A bad command line: one line, exit status 2."""


class HelpRequested(Exception):
    """-h / -help: print the usage and exit 0."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # "string", "int", "bool" or "list" (repeatable string)
    default: Any
    help: str


FLAGS = [
    Flag("config", "string", "", "Use configuration file with command line override"),
    Flag("listen", "list", [], "control endpoint (unix://PATH, tcp://HOST:PORT, vsock://PORT; "
         "repeatable)"),
    Flag("debug", "bool", False, "Print debug info"),
    Flag("pcap", "string", "", "Capture network traffic to a pcap file"),
    Flag("mtu", "int", 0, "Set the MTU (default: 1500)"),
    Flag("ssh-port", "int", 2222, "Port to access the guest virtual machine. Must be between "
         "1024 and 65535 (-1: none)"),
    Flag("subnet", "string", "192.168.127.0/24", "Subnet address in CIDR format"),
    Flag("gatewayIP", "string", "", "Gateway IP address, default is first usable address of "
         "subnet"),
    Flag("deviceIP", "string", "", "Device IP address, default is second usable address of "
         "subnet"),
    Flag("hostIP", "string", "", "Host IP address, default is last usable address of subnet"),
    Flag("listen-vpnkit", "string", "", "VPNKit socket to be used by Hyperkit"),
    Flag("listen-qemu", "string", "", "Socket to be used by Qemu"),
    Flag("listen-bess", "string", "", "unixpacket socket to be used by Bess-compatible "
         "applications"),
    Flag("listen-stdio", "string", "", "accept stdio pipe"),
    Flag("listen-vfkit", "string", "", "unixgram socket to be used by vfkit-compatible "
         "applications"),
    Flag("forward-sock", "list", [], "Forwards a unix socket to the guest virtual machine over "
         "SSH"),
    Flag("forward-dest", "list", [], "Forwards a unix socket to the guest virtual machine over "
         "SSH"),
    Flag("forward-user", "list", [], "SSH user to use for unix socket forward"),
    Flag("forward-identity", "list", [], "Path to SSH identity key for forwarding"),
    Flag("pid-file", "string", "", "Generate a file with the PID in it"),
    Flag("log-file", "string", "", "Output log messages to a given file path"),
    Flag("services", "string", "", "Exposes the same HTTP API as the --listen flag, without "
         "the /connect endpoint"),
    Flag("ec2-metadata-access", "bool", False, "Permits access to EC2 Metadata Service and "
         "Amazon Time Sync Service (169.254.0.0/16, refused otherwise)"),
    Flag("notification", "string", "", "Socket to be used to send network-ready notifications"),
    Flag("version", "bool", False, "Print version information and exit"),
    # pyvpnkit additions: gvproxy asks the host's resolver and reads /etc/hosts.
    Flag("dns-server", "list", [], "pyvpnkit: upstream DNS server IP[#PORT] (repeatable; "
         "default: the nameservers of /etc/resolv.conf)"),
    Flag("hosts", "string", "/etc/hosts", "pyvpnkit: hosts file the DNS server answers from "
         "(/dev/null for none)"),
]
BY_NAME = {f.name: f for f in FLAGS}
TRUE = ("1", "t", "T", "TRUE", "true", "True")
FALSE = ("0", "f", "F", "FALSE", "false", "False")


@dataclass
class Args:
    values: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)  # flags that were on the command line

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def parse(argv: list[str]) -> Args:
    """Flags as Go's flag.Parse reads them; FlagError names the culprit."""
    args = Args({f.name: list(f.default) if f.kind == "list" else f.default for f in FLAGS})
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if len(arg) < 2 or not arg.startswith("-"):
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name.startswith("-") or name.startswith("="):
            raise FlagError(f"bad flag syntax: {arg}")
        name, has_value, value = name.partition("=")
        if name in ("h", "help"):
            raise HelpRequested
        flag = BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        i += 1
        if flag.kind == "bool":
            if has_value and value not in TRUE + FALSE:
                raise FlagError(f'invalid boolean value "{value}" for -{name}')
            args.values[name] = not has_value or value in TRUE
        else:
            if not has_value:
                if i >= len(argv):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
            if flag.kind == "int":
                try:
                    args.values[name] = int(value, 0)
                except ValueError:
                    raise FlagError(f'invalid value "{value}" for flag -{name}: '
                                    "parse error") from None
            elif flag.kind == "list":
                args.values[name].append(value)
            else:
                args.values[name] = value
        args.given.add(name)
    if i < len(argv):
        raise FlagError(f"unexpected argument {argv[i]!r}: gvproxy takes flags only")
    return args


def usage() -> str:
    lines = [f"Usage of {PROG} (gvproxy's command line on pyvpnkit {__version__}):"]
    for f in FLAGS:
        kind = {"bool": "", "list": " value", "int": " int", "string": " string"}[f.kind]
        default = f" (default {f.default})" if f.default not in ("", 0, False, []) else ""
        lines.append(f"  -{f.name}{kind}\n    \t{f.help}{default}")
    lines.append(
        f"\nexit status: 0 after SIGINT/SIGTERM, {EXIT_FLAGS} for a bad flag, {EXIT_CONFIG} for "
        "a bad configuration (values, -config YAML) or when a socket cannot be served."
    )
    return "\n".join(lines)
