"""DHCPv6 messages and options (RFC 8415, RFC 3646 for DNS).

A message is a type, a 24-bit transaction id and options; options repeat (one
IA_NA per identity association), so they are kept as a list of (code, value)
with accessors for the ones the server reads. IA_NA and status-code values are
nested options and decoded on demand. Relay messages are not parsed: the
virtual link has no relays.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS = bytes.fromhex("ff020000000000000000000000010002")  # ff02::1:2

SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
RECONFIGURE = 10
INFORMATION_REQUEST = 11
RELAY_FORW = 12
RELAY_REPL = 13

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_IAADDR = 5
OPT_ORO = 6
OPT_PREFERENCE = 7
OPT_ELAPSED_TIME = 8
OPT_STATUS_CODE = 13
OPT_RAPID_COMMIT = 14
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_IA_PD = 25

STATUS_SUCCESS = 0
STATUS_UNSPEC_FAIL = 1
STATUS_NO_ADDRS_AVAIL = 2
STATUS_NO_BINDING = 3
STATUS_NOT_ON_LINK = 4
STATUS_USE_MULTICAST = 5

DUID_LLT = 1
DUID_EN = 2
DUID_LL = 3
DUID_UUID = 4
HWTYPE_ETHERNET = 1

_OPT = struct.Struct("!HH")
_IA = struct.Struct("!III")
_IAADDR = struct.Struct("!16sII")

Options = list[tuple[int, bytes]]


@dataclass(slots=True)
class Dhcpv6Message:
    msg_type: int
    transaction_id: int
    options: Options

    def first(self, code: int) -> bytes | None:
        return next((v for c, v in self.options if c == code), None)

    @property
    def client_id(self) -> bytes | None:
        return self.first(OPT_CLIENTID)

    @property
    def server_id(self) -> bytes | None:
        return self.first(OPT_SERVERID)

    @property
    def rapid_commit(self) -> bool:
        return self.first(OPT_RAPID_COMMIT) is not None

    @property
    def requested_options(self) -> tuple[int, ...]:
        oro = self.first(OPT_ORO) or b""
        return struct.unpack(f"!{len(oro) // 2}H", oro[: len(oro) // 2 * 2])

    @property
    def elapsed_time(self) -> int | None:
        v = self.first(OPT_ELAPSED_TIME)
        return None if v is None or len(v) != 2 else int.from_bytes(v, "big")

    @property
    def ia_nas(self) -> list[IaNa]:
        """Every IA_NA; raises ParseError when one is malformed."""
        return [parse_ia_na(v) for c, v in self.options if c == OPT_IA_NA]


@dataclass(frozen=True, slots=True)
class IaAddress:
    address: bytes
    preferred_lifetime: int
    valid_lifetime: int


@dataclass(slots=True)
class IaNa:
    iaid: int
    t1: int
    t2: int
    addresses: list[IaAddress]
    status: tuple[int, str] | None  # the IA's own status code option


@dataclass(frozen=True, slots=True)
class Duid:
    type: int
    mac: bytes | None  # from DUID-LL/LLT with an Ethernet hardware type
    enterprise: int | None = None  # DUID-EN
    uuid: bytes | None = None  # DUID-UUID


def parse_options(data: bytes | memoryview) -> Options:
    out: Options = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 4 > end:
            raise ParseError("DHCPv6 option header truncated")
        code, length = _OPT.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise ParseError(f"DHCPv6 option {code} ({length} bytes) truncated")
        out.append((code, bytes(data[pos : pos + length])))
        pos += length
    return out


def parse_dhcpv6(buf: bytes | bytearray | memoryview) -> Dhcpv6Message:
    if len(buf) < 4:
        raise ParseError(f"DHCPv6 message too short ({len(buf)} bytes)")
    view = memoryview(buf)
    mtype = view[0]
    if mtype in (RELAY_FORW, RELAY_REPL):
        raise ParseError("DHCPv6 relay messages are not supported")
    return Dhcpv6Message(mtype, int.from_bytes(view[1:4], "big"), parse_options(view[4:]))


def build_dhcpv6(msg_type: int, transaction_id: int, options: Iterable[tuple[int, bytes]]) -> bytes:
    return bytes((msg_type,)) + transaction_id.to_bytes(3, "big") + encode_options(options)


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(_OPT.pack(code, len(value)) + value for code, value in options)


def parse_status(value: bytes) -> tuple[int, str]:
    if len(value) < 2:
        raise ParseError("DHCPv6 status code truncated")
    return int.from_bytes(value[:2], "big"), value[2:].decode("utf-8", "replace")


def encode_status(code: int, message: str = "") -> bytes:
    return code.to_bytes(2, "big") + message.encode("utf-8")


def parse_ia_na(value: bytes) -> IaNa:
    if len(value) < 12:
        raise ParseError("IA_NA truncated")
    iaid, t1, t2 = _IA.unpack_from(value)
    addrs: list[IaAddress] = []
    status = None
    for code, v in parse_options(value[12:]):
        if code == OPT_IAADDR:
            if len(v) < 24:
                raise ParseError("IA address option truncated")
            addrs.append(IaAddress(*_IAADDR.unpack_from(v)))
        elif code == OPT_STATUS_CODE:
            status = parse_status(v)
    return IaNa(iaid, t1, t2, addrs, status)


def encode_ia_na(
    iaid: int,
    t1: int,
    t2: int,
    addresses: Sequence[IaAddress] = (),
    status: tuple[int, str] | None = None,
) -> bytes:
    inner: Options = [
        (OPT_IAADDR, _IAADDR.pack(a.address, a.preferred_lifetime, a.valid_lifetime))
        for a in addresses
    ]
    if status is not None:
        inner.append((OPT_STATUS_CODE, encode_status(*status)))
    return _IA.pack(iaid, t1, t2) + encode_options(inner)


def parse_duid(value: bytes) -> Duid:
    if len(value) < 2:
        raise ParseError("DUID truncated")
    kind = int.from_bytes(value[:2], "big")
    if kind in (DUID_LL, DUID_LLT):
        head = 4 if kind == DUID_LL else 8
        if len(value) < head:
            raise ParseError(f"DUID type {kind} truncated")
        hw, lladdr = int.from_bytes(value[2:4], "big"), value[head:]
        mac = lladdr if hw == HWTYPE_ETHERNET and len(lladdr) == 6 else None
        return Duid(kind, mac)
    if kind == DUID_EN:
        if len(value) < 6:
            raise ParseError("DUID-EN truncated")
        return Duid(kind, None, enterprise=int.from_bytes(value[2:6], "big"))
    if kind == DUID_UUID:
        if len(value) != 18:
            raise ParseError("DUID-UUID is not 16 bytes")
        return Duid(kind, None, uuid=value[2:])
    return Duid(kind, None)


def duid_ll(mac: bytes) -> bytes:
    return struct.pack("!HH", DUID_LL, HWTYPE_ETHERNET) + mac


def decode_dns_servers(value: bytes) -> list[bytes]:
    if len(value) % 16:
        raise ParseError(f"DNS servers option of {len(value)} bytes")
    return [value[i : i + 16] for i in range(0, len(value), 16)]
