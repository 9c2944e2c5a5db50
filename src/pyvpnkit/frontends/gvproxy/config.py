"""gvproxy's configuration: flags, the -config YAML and gvproxy's defaults, merged as gvproxy does.

Without -config, gvproxy adds its "default mode": the zones
containers.internal. and docker.internal. (gateway, host), the host's
resolv.conf search domains, the -ssh-port forward to the guest's port 22 and
the static lease of deviceIP for 5a:94:ef:e4:0c:ee. With -config those come
from the file only, and flags override the file's other values.

The NAT table's entry to 127.0.0.1 (at hostIP) is the host alias; its other
entries send VM flows to a virtual IP on to a host address (UDP answers come
back from the virtual IP), and gatewayVirtualIPs answer ping as the gateway.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pyvpnkit.app.options import parse_mac
from pyvpnkit.core.config import MAX_MTU, MIN_MTU
from pyvpnkit.core.dns.zones import Zone, ZoneError, zone_from_dict
from pyvpnkit.frontends.gvproxy.flags import Args

log = logging.getLogger("pyvpnkit.frontends.gvproxy")

GATEWAY_MAC = "5a:94:ef:e4:0c:dd"
DEVICE_MAC = "5a:94:ef:e4:0c:ee"
HYPERKIT_UUID = "c3d68012-0208-11ea-9fd7-f2189899ab08"

TOP_KEYS = {"listen", "log-level", "stack", "interfaces", "forwards", "pid-file", "log-file",
            "services", "ec2-metadata-access", "notification"}
STACK_KEYS = {"debug", "capture-file", "mtu", "subnet", "gatewayIP", "deviceIP", "hostIP",
              "gatewayMacAddress", "dns", "dnsSearchDomains", "forwards", "nat",
              "gatewayVirtualIPs", "dhcpStaticLeases", "vpnKitUUIDMacAddresses",
              "ec2MetadataAccess"}
INTERFACES = ("vpnkit", "qemu", "bess", "stdio", "vfkit")


class ConfigError(Exception):
    """A value or file gvproxy would refuse (or pyvpnkit cannot honour): exit status 1."""


@dataclass(frozen=True)
class SshForward:
    socket: str  # host unix socket path
    dest: str  # unix socket path in the guest
    user: str
    identity: str  # private key file


@dataclass
class Settings:
    listen: list[str] = field(default_factory=list)
    services: str = ""
    interfaces: dict[str, str] = field(default_factory=dict)
    log_level: str = ""
    log_file: str = ""
    pid_file: str = ""
    notification: str = ""
    pcap: str = ""
    mtu: int = 1500
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.127.0/24")
    gateway_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("192.168.127.1")
    device_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("192.168.127.2")
    host_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("192.168.127.254")
    gateway_mac: str = GATEWAY_MAC
    zones: list[Zone] = field(default_factory=list)
    search_domains: list[str] = field(default_factory=list)
    forwards: dict[str, str] = field(default_factory=dict)  # "[udp:]IP:PORT" -> "IP:PORT"
    static_leases: dict[str, str] = field(default_factory=dict)  # IP -> MAC
    uuid_macs: dict[str, str] = field(default_factory=dict)  # hyperkit VM UUID -> MAC
    ssh_forwards: list[SshForward] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    hosts: str = "/etc/hosts"
    ec2_metadata_access: bool = False  # False: 169.254.0.0/16 is refused, as in gvproxy
    # stack.nat beyond the host alias (virtual IP -> host address), stack.gatewayVirtualIPs
    nat: dict[ipaddress.IPv4Address, ipaddress.IPv4Address] = field(default_factory=dict)
    virtual_ips: list[ipaddress.IPv4Address] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        """The framing of /connect: gvproxy's Protocol, from the VM listener in use."""
        for kind in ("vfkit", "bess", "qemu"):
            if self.interfaces.get(kind):
                return kind
        return "hyperkit"


# -- reading the YAML ----------------------------------------------------------


def load_yaml(path: str) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped]

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"failed to read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not text ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of gvproxy keys at the top")
    return data


def _unknown(section: dict[str, Any], known: set[str], where: str) -> None:
    """gvproxy's YAML reader ignores unknown keys; say so, since it is usually a typo."""
    for key in section:
        if key not in known:
            log.warning("config: unknown key %s%s ignored", where, key)


def _typed(section: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = section.get(key)
    if value is None:
        return None
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = {str: "a string", int: "a whole number", bool: "true or false",
                list: "a list", dict: "a mapping"}[kind]
        raise ConfigError(f"config: {where}{key}: {value!r} is not {name}")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config: {what}: every entry must be a string")
    return list(value)


def _string_map(value: Any, what: str) -> dict[str, str]:
    out = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise ConfigError(f"config: {what}: {k}: {v!r} is not a string")
        out[str(k)] = v
    return out


# -- merging -------------------------------------------------------------------


def _ip(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{what}: invalid IP address: {text}") from None


def _mac(text: str, what: str) -> str:
    try:
        parse_mac(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None
    return text.lower()


def _search_domains(resolv_conf: str) -> list[str]:
    """The first `search` line of the host's resolv.conf, as gvproxy copies it."""
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("search "):
                    return line[len("search "):].split()
    except OSError:
        pass
    return []


def _usable_domain(name: str) -> bool:
    """A search domain DHCP can carry; the host's odd ones are skipped, not fatal."""
    from pyvpnkit.wire.dhcp import encode_domain_search

    try:
        encode_domain_search([name])
    except ValueError:
        log.warning("search domain %r from the host's resolv.conf skipped: not a domain", name)
        return False
    return True


def settings(args: Args, resolv_conf: str = "/etc/resolv.conf") -> Settings:
    """Merge the flags, the -config file and gvproxy's defaults; ConfigError if invalid."""
    data = load_yaml(args["config"]) if args["config"] else {}
    _unknown(data, TOP_KEYS, "")
    stack = _typed(data, "stack", dict, "") or {}
    _unknown(stack, STACK_KEYS, "stack.")
    s = Settings()
    s.log_level = _typed(data, "log-level", str, "") or ""
    if args["debug"]:
        s.log_level = "debug"
    s.log_file = args["log-file"] or _typed(data, "log-file", str, "") or ""
    s.listen = args["listen"] or _strings(_typed(data, "listen", list, "") or [], "listen")
    s.services = args["services"] or _typed(data, "services", str, "") or ""
    s.pid_file = args["pid-file"] or _typed(data, "pid-file", str, "") or ""
    s.notification = _typed(data, "notification", str, "") or ""
    if args["notification"]:
        parts = urlsplit(args["notification"])
        if parts.scheme != "unix":
            raise ConfigError("notification listen address must be unix:// address")
        s.notification = parts.path
    interfaces = _typed(data, "interfaces", dict, "") or {}
    _unknown(interfaces, set(INTERFACES), "interfaces.")
    for kind in INTERFACES:
        value = args[f"listen-{kind}"] or _typed(interfaces, kind, str, "interfaces.") or ""
        if value:
            s.interfaces[kind] = value
    _check_interfaces(s.interfaces)
    mtu = args["mtu"] or _typed(stack, "mtu", int, "stack.") or 1500
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"mtu {mtu}: must be between {MIN_MTU} and {MAX_MTU}")
    s.mtu = mtu
    _layout(s, args, stack)
    s.gateway_mac = _mac(_typed(stack, "gatewayMacAddress", str, "stack.") or GATEWAY_MAC,
                         "gatewayMacAddress")
    _host_alias(s, stack)
    s.pcap = _typed(stack, "capture-file", str, "stack.") or ""
    s.dns_servers = list(args["dns-server"])
    s.ec2_metadata_access = bool(args["ec2-metadata-access"]
                                 or _typed(data, "ec2-metadata-access", bool, "")
                                 or _typed(stack, "ec2MetadataAccess", bool, "stack."))
    s.hosts = args["hosts"]
    if args["config"]:
        _from_file(s, stack, args)
    else:
        _default_mode(s, args, resolv_conf)
    _ssh_forwards(s, args, data)
    return s


def _check_interfaces(interfaces: dict[str, str]) -> None:
    schemes = {"bess": "unixpacket", "vfkit": "unixgram"}
    for kind, scheme in schemes.items():
        url = interfaces.get(kind)
        if url and urlsplit(url).scheme != scheme:
            raise ConfigError(f"{kind} listen address must be {scheme}:// address")
    for a, b in (("vpnkit", "qemu"), ("vpnkit", "bess"), ("qemu", "bess")):
        if interfaces.get(a) and interfaces.get(b):
            raise ConfigError(f"cannot use {b} and {a} protocol at the same time")
    for kind in ("qemu", "bess", "vfkit"):
        url = interfaces.get(kind)
        if url and urlsplit(url).scheme.startswith("unix") and os.path.exists(urlsplit(url).path):
            raise ConfigError(f'"{urlsplit(url).path}" already exists')


def _layout(s: Settings, args: Args, stack: dict[str, Any]) -> None:
    text = _typed(stack, "subnet", str, "stack.") or args["subnet"]
    try:
        s.subnet = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ConfigError(f"failed to parse subnet: {text!r} is not an IPv4 CIDR") from None
    if s.subnet.prefixlen > 29:
        raise ConfigError(f"subnet {s.subnet}: too small; use a /29 or larger")
    first = s.subnet.network_address + 1
    defaults = {"gatewayIP": first, "deviceIP": first + 1,
                "hostIP": s.subnet.broadcast_address - 1}
    ips = {}
    for key, default in defaults.items():
        text = _typed(stack, key, str, "stack.") or args[key] or str(default)
        ip = _ip(text, key)
        if ip not in s.subnet:
            raise ConfigError(f"{key}: IP ({ip}) not in subnet ({s.subnet})")
        if ip in (s.subnet.network_address, s.subnet.broadcast_address):
            raise ConfigError(f"{key}: IP must not be the subnet or broadcast address: {ip}")
        ips[key] = ip
    if len(set(ips.values())) != 3:
        raise ConfigError("IP addresses need to be distinct (gatewayIP, deviceIP, hostIP)")
    s.gateway_ip, s.device_ip, s.host_ip = ips["gatewayIP"], ips["deviceIP"], ips["hostIP"]


def _host_alias(s: Settings, stack: dict[str, Any]) -> None:
    """gvproxy's NAT table and gateway virtual IPs. The entry to 127.0.0.1 is the host
    alias (hostIP's, or else the only one); the others map virtual IPs to host addresses."""
    nat = _string_map(_typed(stack, "nat", dict, "stack.") or {str(s.host_ip): "127.0.0.1"},
                      "stack.nat")
    vips = _strings(_typed(stack, "gatewayVirtualIPs", list, "stack.") or [str(s.host_ip)],
                    "stack.gatewayVirtualIPs")
    table = {_ip(vip, "stack.nat"): _ip(host, f"stack.nat {vip}") for vip, host in nat.items()}
    loopback = ipaddress.IPv4Address("127.0.0.1")
    aliases = [vip for vip, host in table.items() if host == loopback]
    if s.host_ip not in aliases and len(aliases) == 1:
        s.host_ip = aliases[0]
    for vip in table:
        if vip in s.subnet and vip in (s.gateway_ip, s.device_ip, s.subnet.network_address,
                                       s.subnet.broadcast_address):
            raise ConfigError(f"stack.nat: {vip} is the gateway's, the device's or not a host "
                              f"address of {s.subnet}")
    s.nat = {vip: host for vip, host in table.items() if vip != s.host_ip}
    s.virtual_ips = [_ip(v, "stack.gatewayVirtualIPs") for v in vips]


def _from_file(s: Settings, stack: dict[str, Any], args: Args) -> None:
    zones = _typed(stack, "dns", list, "stack.") or []
    try:
        s.zones = [zone_from_dict(z, f"stack.dns[{i}]") for i, z in enumerate(zones)]
    except ZoneError as exc:
        raise ConfigError(f"config: {exc}") from None
    s.search_domains = _strings(_typed(stack, "dnsSearchDomains", list, "stack.") or [],
                                "stack.dnsSearchDomains")
    for name in s.search_domains:
        if not _usable_domain(name):
            raise ConfigError(f"config: stack.dnsSearchDomains: {name!r} is not a domain name")
    s.forwards = _string_map(_typed(stack, "forwards", dict, "stack.") or {}, "stack.forwards")
    leases = _string_map(_typed(stack, "dhcpStaticLeases", dict, "stack.") or {},
                         "stack.dhcpStaticLeases")
    s.static_leases = {str(_ip(ip, "stack.dhcpStaticLeases")): _mac(mac, "stack.dhcpStaticLeases")
                       for ip, mac in leases.items()}
    uuids = _string_map(_typed(stack, "vpnKitUUIDMacAddresses", dict, "stack.") or {},
                        "stack.vpnKitUUIDMacAddresses")
    s.uuid_macs = {u: _mac(m, "stack.vpnKitUUIDMacAddresses") for u, m in uuids.items()}
    if "ssh-port" in args.given:
        log.warning('-ssh-port is unavailable with a config file: add "127.0.0.1:%d: %s:22" '
                    "to stack.forwards instead", args["ssh-port"], s.device_ip)


def _default_mode(s: Settings, args: Args, resolv_conf: str) -> None:
    port = args["ssh-port"]
    if port != -1 and not 1024 <= port <= 65535:
        raise ConfigError("ssh-port value must be between 1024 and 65535")
    s.pcap = args["pcap"] or s.pcap
    names = [{"Name": "gateway", "IP": str(s.gateway_ip)}, {"Name": "host", "IP": str(s.host_ip)}]
    s.zones = [zone_from_dict({"Name": z, "Records": names})
               for z in ("containers.internal.", "docker.internal.")]
    s.search_domains = [d for d in _search_domains(resolv_conf) if _usable_domain(d)]
    if port != -1:
        s.forwards = {f"127.0.0.1:{port}": f"{s.device_ip}:22"}
    s.static_leases = {str(s.device_ip): DEVICE_MAC}
    s.uuid_macs = {HYPERKIT_UUID: DEVICE_MAC}


def _ssh_forwards(s: Settings, args: Args, data: dict[str, Any]) -> None:
    entries = _typed(data, "forwards", list, "") or []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ConfigError(f"config: forwards[{i}]: expected socket, dest, user, identity")
        s.ssh_forwards.append(SshForward(*(str(e.get(k) or "")
                                           for k in ("socket", "dest", "user", "identity"))))
    lists = [args[f"forward-{k}"] for k in ("sock", "dest", "user", "identity")]
    if len({len(x) for x in lists}) != 1:
        raise ConfigError("--forward-sock, --forward-dest, --forward-user, and "
                          "--forward-identity must all be specified together, the same number "
                          "of times, or not at all")
    s.ssh_forwards += [SshForward(*row) for row in zip(*lists, strict=True)]
    for fwd in s.ssh_forwards:
        if not os.path.exists(fwd.identity):
            raise ConfigError(f"identity file {fwd.identity!r} can't be loaded: no such file")
        if "://" in fwd.socket and not fwd.socket.startswith("unix://"):
            raise ConfigError(f"forward socket {fwd.socket!r}: only unix:// is supported")
