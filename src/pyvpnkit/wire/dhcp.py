"""BOOTP/DHCP messages (RFC 2131, 2132) and the option encodings the server needs.

Options are kept as raw bytes keyed by code: the server only reads a few of
them and clients send many we ignore. Repeated instances of one option are
concatenated on parse and long values split on build (RFC 3396); options in
the sname/file fields are read when option 52 (overload) says so.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyvpnkit.wire.errors import ParseError

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_MIN_LEN = 300  # BOOTP (RFC 951) clients expect at least a 64-byte vendor area

# Message types (option 53).
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

# Option codes.
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN_NAME = 15
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_NTP = 42
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST = 55
OPT_MESSAGE = 56
OPT_MAX_SIZE = 57
OPT_RENEWAL_TIME = 58
OPT_REBINDING_TIME = 59
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_DOMAIN_SEARCH = 119
OPT_END = 255

ZERO_IP = b"\x00\x00\x00\x00"

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file cookie
_HDR = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
HEADER_LEN = _HDR.size  # 240, magic cookie included
_SNAME = slice(44, 108)
_FILE = slice(108, 236)


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    op: int
    xid: int
    chaddr: bytes  # the 16-byte field as sent; ``hwaddr`` is the meaningful part
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: bytes = ZERO_IP
    yiaddr: bytes = ZERO_IP
    siaddr: bytes = ZERO_IP
    giaddr: bytes = ZERO_IP
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def hwaddr(self) -> bytes:
        return self.chaddr[: min(self.hlen, 16)]

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    @property
    def message_type(self) -> int | None:
        v = self.options.get(OPT_MESSAGE_TYPE)
        return v[0] if v is not None and len(v) == 1 else None

    @property
    def requested_ip(self) -> bytes | None:
        return self._ip(OPT_REQUESTED_IP)

    @property
    def server_id(self) -> bytes | None:
        return self._ip(OPT_SERVER_ID)

    @property
    def client_id(self) -> bytes | None:
        v = self.options.get(OPT_CLIENT_ID)
        return v if v is not None and len(v) >= 2 else None  # RFC 2132 9.14: at least 2

    @property
    def param_request_list(self) -> tuple[int, ...]:
        return tuple(self.options.get(OPT_PARAM_REQUEST, b""))

    @property
    def hostname(self) -> str | None:
        v = self.options.get(OPT_HOSTNAME)
        if not v:
            return None
        return v.rstrip(b"\x00").decode("utf-8", "replace") or None

    def _ip(self, code: int) -> bytes | None:
        v = self.options.get(code)
        return v if v is not None and len(v) == 4 else None


def _parse_options(data: memoryview, out: dict[int, bytearray], where: str) -> None:
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError(f"DHCP option {code} truncated in {where}")
        length = data[i + 1]
        end = i + 2 + length
        if end > n:
            raise ParseError(f"DHCP option {code} length {length} overruns {where}")
        out.setdefault(code, bytearray()).extend(data[i + 2 : end])
        i = end


def parse_dhcp(buf: bytes | bytearray | memoryview) -> DhcpMessage:
    view = memoryview(buf)
    if len(view) < HEADER_LEN:
        raise ParseError(f"DHCP message too short ({len(view)} bytes)")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, _sname,
     _file, cookie) = _HDR.unpack_from(view)  # fmt: skip
    if cookie != MAGIC_COOKIE:
        raise ParseError("BOOTP message without the DHCP magic cookie")
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise ParseError(f"unknown BOOTP op {op}")
    opts: dict[int, bytearray] = {}
    _parse_options(view[HEADER_LEN:], opts, "options")
    overload = opts.get(OPT_OVERLOAD)
    if overload is not None and len(overload) == 1:
        # RFC 3396 order: options field, then file, then sname.
        if overload[0] & 1:
            _parse_options(view[_FILE], opts, "file")
        if overload[0] & 2:
            _parse_options(view[_SNAME], opts, "sname")
    return DhcpMessage(
        op=op,
        xid=xid,
        chaddr=chaddr,
        htype=htype,
        hlen=hlen,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=giaddr,
        options={k: bytes(v) for k, v in opts.items()},
    )


def encode_options(options: dict[int, bytes]) -> bytes:
    """Options in dict order, each split into 255-byte instances (RFC 3396), then END."""
    out = bytearray()
    for code, value in options.items():
        if not 0 < code < OPT_END:
            raise ValueError(f"option code {code} cannot carry a value")
        if not value:
            out += bytes((code, 0))
        for i in range(0, len(value), 255):
            chunk = value[i : i + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    out.append(OPT_END)
    return bytes(out)


def build_dhcp(msg: DhcpMessage) -> bytes:
    for name in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
        if len(getattr(msg, name)) != 4:
            raise ValueError(f"{name} must be 4 bytes")
    if len(msg.chaddr) > 16:
        raise ValueError("chaddr longer than 16 bytes")
    hdr = _HDR.pack(
        msg.op, msg.htype, msg.hlen, msg.hops, msg.xid, msg.secs, msg.flags,
        msg.ciaddr, msg.yiaddr, msg.siaddr, msg.giaddr, msg.chaddr, b"", b"", MAGIC_COOKIE,
    )  # fmt: skip
    body = hdr + encode_options(msg.options)
    return body.ljust(BOOTP_MIN_LEN, b"\x00")


# -- option value encoders ---------------------------------------------------


def encode_ips(addrs: Iterable[bytes]) -> bytes:
    out = b"".join(addrs)
    if len(out) % 4:
        raise ValueError("IPv4 address list must be made of 4-byte addresses")
    return out


def encode_u32(value: int) -> bytes:
    return struct.pack("!I", value)


def encode_u16(value: int) -> bytes:
    return struct.pack("!H", value)


def encode_str(text: str) -> bytes:
    return text.encode("utf-8")


def _labels(name: str) -> list[bytes]:
    """The wire labels of a domain name (IDNA for non-ASCII), validated."""
    text = name.rstrip(".")
    if not text:
        raise ValueError("empty domain name in search list")
    labels = []
    for part in text.split("."):
        label = part.encode("ascii") if part.isascii() else part.encode("idna")
        if not 0 < len(label) <= 63:
            raise ValueError(f"bad label {part!r} in domain name {name!r}")
        labels.append(label)
    if sum(len(x) + 1 for x in labels) + 1 > 255:
        raise ValueError(f"domain name {name!r} longer than 255 bytes")
    return labels


def encode_domain_search(names: Iterable[str]) -> bytes:
    """Option 119 value (RFC 3397): DNS wire names with compression.

    Pointers are offsets into the concatenated option value, as the RFC
    requires; udhcpc and dhclient both decode them.
    """
    out = bytearray()
    seen: dict[tuple[bytes, ...], int] = {}  # lower-cased suffix -> offset
    for name in names:
        labels = _labels(name)
        for i in range(len(labels)):
            suffix = tuple(x.lower() for x in labels[i:])
            ptr = seen.get(suffix)
            if ptr is not None:
                out += struct.pack("!H", 0xC000 | ptr)
                break
            if len(out) <= 0x3FFF:
                seen[suffix] = len(out)
            out.append(len(labels[i]))
            out += labels[i]
        else:
            out.append(0)
    return bytes(out)


def encode_names(names: Iterable[str]) -> bytes:
    """DNS wire names without compression (DNSSL, RFC 8106; DHCPv6 option 24, RFC 8415)."""
    return b"".join(
        b"".join(bytes((len(x),)) + x for x in _labels(name)) + b"\x00" for name in names
    )


def decode_domain_search(data: bytes | bytearray | memoryview) -> list[str]:
    """Names from an option 119 value; pointers must point backwards."""
    buf = bytes(data)
    names: list[str] = []
    pos = 0
    while pos < len(buf):
        labels: list[str] = []
        i, resume, limit = pos, -1, pos
        while True:
            if i >= len(buf):
                raise ParseError("domain search list truncated")
            length = buf[i]
            if length & 0xC0 == 0xC0:
                if i + 1 >= len(buf):
                    raise ParseError("domain search pointer truncated")
                target = ((length & 0x3F) << 8) | buf[i + 1]
                if target >= limit:
                    raise ParseError("domain search pointer does not point backwards")
                if resume < 0:
                    resume = i + 2
                i = limit = target
                continue
            if length & 0xC0:
                raise ParseError(f"bad label type 0x{length:02x} in domain search list")
            if length == 0:
                if resume < 0:
                    resume = i + 1
                break
            if i + 1 + length > len(buf):
                raise ParseError("domain search label truncated")
            labels.append(buf[i + 1 : i + 1 + length].decode("ascii", "backslashreplace"))
            i += 1 + length
        names.append(".".join(labels))
        pos = resume
    return names
