"""Authoritative zones with name and regexp records, as gvisor-tap-vsock's DNS serves them.

A zone ("docker.internal.") answers every name *below* it: the first record
whose name equals the part before the zone, or whose regexp matches it, gives
the address; otherwise the zone's default IP; otherwise the name does not
exist (NXDOMAIN). The first zone that contains a query name owns it, so zones
are kept in the order they were added. Adding a zone that exists puts the new
records in front of the old ones (they win) and keeps the old default IP
unless a new one is given.

gvproxy answers only A queries from a zone and sends every other type of a
zone name upstream; here a name the zone holds gets NODATA for types it has
no address of, so resolvers asking AAAA after A do not leak internal names.
Matching ignores case, as DNS does. Regexps use Python's syntax, which agrees
with Go's RE2 for the patterns people write (no backreferences in either).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 0  # as gvproxy: records can change through the API at any time


class ZoneError(ValueError):
    """A zone or record that cannot be used; the message names the field and value."""


@dataclass(frozen=True, slots=True)
class Record:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    name: str = ""  # relative to the zone, lower case, no trailing dot
    regexp: re.Pattern[str] | None = None

    def matches(self, relative: str) -> bool:
        if self.name and self.name == relative:
            return True
        return self.regexp is not None and self.regexp.search(relative) is not None

    def to_json(self) -> dict[str, Any]:
        """gvproxy's JSON (Go field names); Regexp only when there is one."""
        out: dict[str, Any] = {"Name": self.name, "IP": str(self.ip)}
        if self.regexp is not None:
            out["Regexp"] = self.regexp.pattern
        return out


@dataclass(slots=True)
class Zone:
    name: dns.name.Name
    records: list[Record] = field(default_factory=list)
    default_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "Name": self.name.to_text(),
            "Records": [r.to_json() for r in self.records],
            "DefaultIP": "" if self.default_ip is None else str(self.default_ip),
        }


def _get(obj: dict[str, Any], key: str) -> Any:
    """A field by name, any case (Go's encoding/json matches keys that way)."""
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == key.lower():
            return v
    return None


def _ip(value: Any, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ZoneError(f"{where}: {value!r} is not an IP address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ZoneError(f"{where}: {value!r} is not an IP address") from None


def zone_from_dict(obj: Any, where: str = "zone") -> Zone:
    """A zone from gvproxy's JSON or YAML shape: Name, Records [{Name|Regexp, IP}], DefaultIP."""
    if not isinstance(obj, dict):
        raise ZoneError(f"{where}: expected an object with Name, Records and DefaultIP")
    text = _get(obj, "name")
    if not isinstance(text, str) or not text.strip("."):
        raise ZoneError(f"{where}: Name must be a domain such as \"docker.internal.\"")
    try:
        name = dns.name.from_text(text.lower())
    except Exception as exc:  # dnspython raises several kinds for bad labels
        raise ZoneError(f"{where}: Name {text!r} is not a domain name ({exc})") from None
    raw_records = _get(obj, "records") or []
    if not isinstance(raw_records, list):
        raise ZoneError(f"{where}: Records must be a list")
    records = [_record(r, f"{where} record {i}") for i, r in enumerate(raw_records)]
    return Zone(name, records, _ip(_get(obj, "defaultip"), f"{where}: DefaultIP"))


def _record(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise ZoneError(f"{where}: expected an object with Name or Regexp, and IP")
    ip = _ip(_get(obj, "ip"), f"{where}: IP")
    if ip is None:
        raise ZoneError(f"{where}: IP is required")
    name = _get(obj, "name") or ""
    pattern = _get(obj, "regexp") or ""
    if not isinstance(name, str) or not isinstance(pattern, str):
        raise ZoneError(f"{where}: Name and Regexp must be strings")
    if not name and not pattern:
        raise ZoneError(f"{where}: give a Name or a Regexp")
    try:
        regexp = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise ZoneError(f"{where}: Regexp {pattern!r}: {exc}") from None
    return Record(ip, name.lower().rstrip("."), regexp)


class NoSuchName:
    """The answer "this name does not exist" (NXDOMAIN) from a zone."""


NXDOMAIN = NoSuchName()


class Zones:
    """The zones in the order they were added; the first containing a name owns it."""

    def __init__(self, zones: list[Zone] | None = None) -> None:
        self._zones: list[Zone] = []
        self.keys: set[bytes] = set()  # the zones' names, lower-case wire form
        for zone in zones or []:
            self.add(zone)

    def add(self, zone: Zone) -> None:
        for old in self._zones:
            if old.name == zone.name:
                old.records[:0] = zone.records
                if zone.default_ip is not None:
                    old.default_ip = zone.default_ip
                return
        self._zones.append(Zone(zone.name, list(zone.records), zone.default_ip))
        self.keys.add(zone.name.to_digestable())

    def to_json(self) -> list[dict[str, Any]]:
        return [z.to_json() for z in self._zones]

    def __len__(self) -> int:
        return len(self._zones)

    def may_hold(self, key: bytes) -> bool:
        """Whether a zone contains the name `key` (lower-case wire form) below its apex:
        a check on bytes, so names no zone holds need no dnspython name."""
        keys = self.keys
        at = key[0] + 1  # the apex itself is not the zone's to answer
        while at < len(key):
            if key[at:] in keys:
                return True
            at += key[at] + 1
        return False

    def lookup(
        self, qname: dns.name.Name, rdtype: int
    ) -> list[dns.rrset.RRset] | NoSuchName | None:
        """Answer rrsets, [] for NODATA, NXDOMAIN, or None when no zone holds the name."""
        for zone in self._zones:
            if qname == zone.name or not qname.is_subdomain(zone.name):
                continue
            relative = qname.relativize(zone.name).to_text().lower()
            ip = next((r.ip for r in zone.records if r.matches(relative)), zone.default_ip)
            if ip is None:
                return NXDOMAIN
            want = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
            if rdtype not in (want, dns.rdatatype.ANY):
                return []
            rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, want)
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, want, str(ip)), TTL)
            return [rrset]
        return None
