"""What `pyvpnkit-slirp4netns`'s command line asks for, once parsed and checked (cli.parse).

A plain class, not argparse's Namespace nor a dataclass: both cost start-up
time that launchers wait for (bench/startup.py).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing would slow start-up
if TYPE_CHECKING:
    import ipaddress

DEFAULT_CIDR = "10.0.2.0/24"
DEFAULT_MTU = 1500


class Opts:
    """The command line, parsed and checked; what the rest of the run reads."""

    def __init__(self) -> None:
        self.target = ""
        self.tapname = "tap0"
        self.configure = False
        self.exit_fd: int | None = None
        self.ready_fd: int | None = None
        self.mtu = DEFAULT_MTU
        self.enable_ipv6 = False
        self.api_socket = ""
        self.cidr = DEFAULT_CIDR  # checked: a network address, prefix 1-25
        self.disable_host_loopback = False
        self.netns_type = "pid"
        self.userns_path: str | None = None
        self.enable_sandbox = False
        self.enable_seccomp = False
        self.outbound_addr: str | None = None
        self.outbound_addr6: str | None = None
        self.disable_dns = False
        self.macaddress: str | None = None
        self.target_type = "netns"
        # derived by parse()
        self.outbound = ("", "")
        self.guest = ""  # the API's default guest address, with or without -c
        self.netns_path = ""
        self.userns: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        import ipaddress  # after the TAP: not on the path a launcher waits for

        return ipaddress.IPv4Network(self.cidr)
