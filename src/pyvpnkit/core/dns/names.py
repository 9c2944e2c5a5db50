"""Names the gateway answers itself: zones, built-in aliases, then a hosts file.

Both tables answer *every* record type for a name they hold: a type they have
no data for gets an empty answer (NODATA), never NXDOMAIN, so a resolver that
asks AAAA after A does not conclude the name vanished (vpnkit's NXDOMAIN for
missing types broke dual-stack lookups).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.zones import NoSuchName, Zones

TTL = 0  # like vpnkit: the VM's address or the hosts file may change at any time

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
PTR = dns.rdatatype.PTR
ANY = dns.rdatatype.ANY


@dataclass(slots=True)
class _Entry:
    v4: list[bytes] = field(default_factory=list)
    v6: list[bytes] = field(default_factory=list)

    def add(self, packed: bytes) -> None:
        target = self.v4 if len(packed) == 4 else self.v6
        if packed not in target:
            target.append(packed)


@dataclass(slots=True)
class NameTable:
    """Forward (name -> addresses) and reverse (address -> name) maps."""

    forward: dict[dns.name.Name, _Entry] = field(default_factory=dict)
    reverse: dict[dns.name.Name, dns.name.Name] = field(default_factory=dict)

    def add(self, name: dns.name.Name, packed: bytes) -> None:
        self.forward.setdefault(name, _Entry()).add(packed)
        rev = dns.reversename.from_address(str(ipaddress.ip_address(packed)))
        self.reverse.setdefault(rev, name)  # the first name for an address wins

    def add_name(self, name: dns.name.Name) -> None:
        """Make `name` exist even without addresses (answers NODATA)."""
        self.forward.setdefault(name, _Entry())

    def __len__(self) -> int:
        return len(self.forward)

    def keys(self) -> set[bytes]:
        """Every name the table answers for, in lower-case wire form."""
        return {name.to_digestable() for name in (*self.forward, *self.reverse)}


def _to_name(text: str) -> dns.name.Name | None:
    try:
        return dns.name.from_text(text)
    except Exception:  # dnspython raises several kinds for bad labels
        return None


def parse_hosts(text: str) -> NameTable:
    """Parse /etc/hosts syntax: `address name [aliases...]`, `#` comments.

    Lines with an invalid address are skipped; invalid names are skipped one
    by one. Zone ids (`fe80::1%eth0`) are accepted and ignored.
    """
    table = NameTable()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split()
        if len(line) < 2:
            continue
        addr_text = line[0].split("%", 1)[0]
        try:
            packed = ipaddress.ip_address(addr_text).packed
        except ValueError:
            continue
        for name_text in line[1:]:
            name = _to_name(name_text)
            if name is not None:
                table.add(name, packed)
    return table


def builtin_table(config: NetConfig, vm_addresses: Iterable[bytes]) -> NameTable:
    """The gateway's own names from `config` plus the VMs' current addresses (both families)."""
    table = NameTable()
    host, gateway = [config.host_ip], [config.gateway_ip]
    if config.ipv6 is not None:  # AAAA too: the alias's and the gateway's IPv6 addresses
        host.append(config.ipv6.host_ip)
        gateway.append(config.ipv6.gateway_ip)
    groups: list[tuple[tuple[str, ...], list[bytes]]] = [
        (config.host_names, host),
        (config.gateway_names, gateway),
        (config.vm_names, list(vm_addresses)),
    ]
    for names, addresses in groups:
        for name_text in names:
            name = _to_name(name_text)
            if name is None:
                continue
            table.add_name(name)
            for packed in addresses:
                table.add(name, packed)
    return table


@functools.lru_cache(maxsize=4096)
def _address_rdata(packed: bytes) -> dns.rdata.Rdata:
    """Rdata objects are immutable: build each address's once (from_text is slow)."""
    text = str(ipaddress.ip_address(packed))
    return dns.rdata.from_text(IN, A if len(packed) == 4 else AAAA, text)


def _rrset(
    owner: dns.name.Name, rdtype: dns.rdatatype.RdataType, rdatas: list[dns.rdata.Rdata]
) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(owner, IN, rdtype)
    for rd in rdatas:
        rrset.add(rd, TTL)
    return rrset


def answer_from(
    table: NameTable, qname: dns.name.Name, rdtype: int
) -> list[dns.rrset.RRset] | None:
    """The answer rrsets for (qname, rdtype), [] for NODATA, None if not ours.

    The owner name is the query's own spelling so 0x20-randomising clients
    see their case echoed.
    """
    entry = table.forward.get(qname)
    if entry is not None:
        out: list[dns.rrset.RRset] = []
        if rdtype in (A, ANY) and entry.v4:
            out.append(_rrset(qname, A, [_address_rdata(p) for p in entry.v4]))
        if rdtype in (AAAA, ANY) and entry.v6:
            out.append(_rrset(qname, AAAA, [_address_rdata(p) for p in entry.v6]))
        return out
    target = table.reverse.get(qname)
    if target is not None:
        if rdtype in (PTR, ANY):
            return [_rrset(qname, PTR, [dns.rdata.from_text(IN, PTR, target.to_text())])]
        return []
    return None


class LocalNames:
    """Zones (gvproxy's, added at start or through the API), built-in names, the hosts file."""

    def __init__(self, config: NetConfig, hosts_text: str = "") -> None:
        self._config = config
        self.zones = Zones()
        self._builtin = builtin_table(config, [])
        self._vm_addresses: list[bytes] = []
        self._builtin_stale = False
        self._hosts = parse_hosts(hosts_text)
        self._keys: set[bytes] | None = None  # of both tables; None: to be rebuilt
        self.version = 0  # moves whenever an answer from the tables may change

    def set_vm_addresses(self, addrs: Iterable[bytes]) -> None:
        """Note the VMs' addresses; the table is rebuilt at the next lookup, not here:
        the switch calls this for every address it learns, queries are rarer."""
        self._vm_addresses = list(addrs)
        self._builtin_stale = True
        self.version += 1

    def load_hosts(self, text: str) -> None:
        self._hosts = parse_hosts(text)
        self._keys = None
        self.version += 1

    def may_answer(self, key: bytes) -> bool:
        """False when no zone or table holds the name `key` (lower-case wire form):
        the forwarding fast path then never builds a dnspython name."""
        self._refresh()
        if self._keys is None:
            self._keys = self._builtin.keys() | self._hosts.keys()
        return key in self._keys or (bool(self.zones.keys) and self.zones.may_hold(key))

    def _refresh(self) -> None:
        if self._builtin_stale:
            self._builtin = builtin_table(self._config, self._vm_addresses)
            self._builtin_stale = False
            self._keys = None

    @property
    def hosts_count(self) -> int:
        return len(self._hosts)

    def lookup(
        self, qname: dns.name.Name, rdtype: int, rdclass: int
    ) -> list[dns.rrset.RRset] | NoSuchName | None:
        """Answer rrsets, [] for NODATA, NXDOMAIN (a zone's), or None for the upstream."""
        if rdclass not in (IN, dns.rdataclass.ANY):
            return None
        zoned = self.zones.lookup(qname, rdtype)
        if zoned is not None:
            return zoned
        self._refresh()
        for table in (self._builtin, self._hosts):
            found = answer_from(table, qname, rdtype)
            if found is not None:
                return found
        return None
