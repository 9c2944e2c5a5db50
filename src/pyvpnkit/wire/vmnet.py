"""The vpnkit/hyperkit "vmnet" handshake that precedes u16-LE framed Ethernet.

Wire layout (protocol version 22, as spoken by hyperkit's virtio-vpnkit and
vpnkit's ``Vmnet`` module; all integers little-endian):

* init, both directions, 49 bytes: ``VMN3T`` + u32 version + 40-byte commit id.
  A server that does not speak the client's version still answers with its own
  init (so the client can log the mismatch) and then hangs up.
* command, client to server, 41 bytes: u8 kind + 40 bytes of body.
  ``1`` Ethernet: 36-byte ASCII UUID. ``8`` preferred IPv4: UUID + u32 address.
  ``6`` bind IPv4 (u32 address, u16 port, u8 0=TCP/1=UDP) is a vpnkit
  port-binding request that a network server refuses.
  The address is written as the little-endian encoding of the dotted address's
  32-bit value, i.e. the four octets *reversed* on the wire (hyperkit byte-swaps
  ``s_addr`` before sending). An all-zero UUID asks the server to pick one.
* response, server to client, 258 bytes: ``1`` VIF + u16 MTU + u16 max packet
  size + 6-byte MAC, or ``2`` disconnect + u8 length + reason; zero-padded.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

MAGIC = b"VMN3T"
VERSION = 22
INIT_LEN = 5 + 4 + 40
COMMAND_LEN = 1 + 36 + 4
RESPONSE_LEN = 1 + 1 + 256

CMD_ETHERNET = 1
CMD_BIND_IPV4 = 6
CMD_PREFERRED_IPV4 = 8
RESP_VIF = 1
RESP_DISCONNECT = 2

# vpnkit advertises a max packet size of MTU + 50 (Ethernet + VLAN + slack).
MAX_PACKET_SLACK = 50
MAX_REASON_LEN = 255

_INIT = struct.Struct("<5sI40s")
_VIF = struct.Struct("<BHH6s")
_BIND = struct.Struct("<BIHB")
_UUID_RE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_ZERO_UUID = bytes(36)


@dataclass(frozen=True, slots=True)
class Init:
    magic: bytes
    version: int
    commit: bytes  # 40 bytes, normally an ASCII git commit id


@dataclass(frozen=True, slots=True)
class EthernetCommand:
    uuid: str | None  # canonical lower-case UUID, or None: the server picks one


@dataclass(frozen=True, slots=True)
class PreferredIPv4Command:
    uuid: str | None
    ip: bytes  # 4 bytes in network order (already un-reversed)


@dataclass(frozen=True, slots=True)
class BindIPv4Command:
    ip: bytes
    port: int
    tcp: bool


Command = EthernetCommand | PreferredIPv4Command | BindIPv4Command


@dataclass(frozen=True, slots=True)
class VifResponse:
    mtu: int
    max_packet_size: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class DisconnectResponse:
    reason: str


Response = VifResponse | DisconnectResponse


# -- init -----------------------------------------------------------------------


def encode_init(commit: bytes | str = b"0" * 40, version: int = VERSION) -> bytes:
    raw = commit.encode("ascii", "replace") if isinstance(commit, str) else commit
    return _INIT.pack(MAGIC, version, raw[:40].ljust(40, b"\0"))


def decode_init(buf: bytes | bytearray | memoryview) -> Init:
    if len(buf) != INIT_LEN:
        raise ParseError(f"vmnet init must be {INIT_LEN} bytes, got {len(buf)}")
    magic, version, commit = _INIT.unpack_from(buf)
    if magic != MAGIC:
        raise ParseError(f"not a vmnet client: magic {magic!r} instead of {MAGIC!r}")
    return Init(magic, version, commit)


# -- command --------------------------------------------------------------------


def _ip_to_wire(ip: bytes) -> bytes:
    if len(ip) != 4:
        raise ValueError(f"IPv4 address must be 4 bytes, got {len(ip)}")
    return ip[::-1]


def _uuid_to_wire(uuid: str | None) -> bytes:
    if uuid is None:
        return _ZERO_UUID
    raw = uuid.encode("ascii")
    if not _UUID_RE.fullmatch(raw):
        raise ValueError(f"not a 36-character UUID: {uuid!r}")
    return raw


def _uuid_from_wire(raw: bytes) -> str | None:
    if raw == _ZERO_UUID:
        return None
    if not _UUID_RE.fullmatch(raw):
        raise ParseError(f"invalid UUID {raw!r}")
    return raw.decode("ascii").lower()


def encode_command(cmd: Command) -> bytes:
    if isinstance(cmd, EthernetCommand):
        body = bytes([CMD_ETHERNET]) + _uuid_to_wire(cmd.uuid)
    elif isinstance(cmd, PreferredIPv4Command):
        body = bytes([CMD_PREFERRED_IPV4]) + _uuid_to_wire(cmd.uuid) + _ip_to_wire(cmd.ip)
    else:
        body = _BIND.pack(
            CMD_BIND_IPV4, int.from_bytes(cmd.ip, "big"), cmd.port, 0 if cmd.tcp else 1
        )
    return body.ljust(COMMAND_LEN, b"\0")


def decode_command(buf: bytes | bytearray | memoryview) -> Command:
    if len(buf) != COMMAND_LEN:
        raise ParseError(f"vmnet command must be {COMMAND_LEN} bytes, got {len(buf)}")
    raw = bytes(buf)
    kind = raw[0]
    if kind == CMD_ETHERNET:
        return EthernetCommand(_uuid_from_wire(raw[1:37]))
    if kind == CMD_PREFERRED_IPV4:
        return PreferredIPv4Command(_uuid_from_wire(raw[1:37]), raw[37:41][::-1])
    if kind == CMD_BIND_IPV4:
        _, ip, port, proto = _BIND.unpack_from(raw)
        return BindIPv4Command(ip.to_bytes(4, "big"), port, proto == 0)
    raise ParseError(f"unknown vmnet command {kind}")


# -- response -------------------------------------------------------------------


def vif_for_mtu(mtu: int, mac: bytes) -> VifResponse:
    """The VIF answer vpnkit gives: max packet size is MTU + 50 (capped to u16)."""
    return VifResponse(mtu, min(mtu + MAX_PACKET_SLACK, 0xFFFF), mac)


def encode_response(resp: Response) -> bytes:
    if isinstance(resp, VifResponse):
        if len(resp.mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(resp.mac)}")
        if not (0 <= resp.mtu <= 0xFFFF and 0 <= resp.max_packet_size <= 0xFFFF):
            raise ValueError(f"MTU {resp.mtu}/{resp.max_packet_size} does not fit in 16 bits")
        body = _VIF.pack(RESP_VIF, resp.mtu, resp.max_packet_size, resp.mac)
    else:
        reason = resp.reason.encode("utf-8", "replace")[:MAX_REASON_LEN]
        body = bytes([RESP_DISCONNECT, len(reason)]) + reason
    return body.ljust(RESPONSE_LEN, b"\0")


def decode_response(buf: bytes | bytearray | memoryview) -> Response:
    if len(buf) != RESPONSE_LEN:
        raise ParseError(f"vmnet response must be {RESPONSE_LEN} bytes, got {len(buf)}")
    raw = bytes(buf)
    if raw[0] == RESP_VIF:
        _, mtu, max_packet, mac = _VIF.unpack_from(raw)
        return VifResponse(mtu, max_packet, mac)
    if raw[0] == RESP_DISCONNECT:
        n = raw[1]
        return DisconnectResponse(raw[2 : 2 + n].decode("utf-8", "replace"))
    raise ParseError(f"unknown vmnet response {raw[0]}")
