"""TCP headers and options (RFC 9293, 7323, 2018)."""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyvpnkit.wire.checksum import internet_checksum, pseudo_header_sum, verify
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ipv4 import PROTO_TCP

TCP_HEADER_LEN = 20

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

_HDR = struct.Struct("!HHIIBBHHH")


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None  # (TSval, TSecr)
    sack_blocks: tuple[tuple[int, int], ...] = field(default=())


NO_OPTIONS = TcpOptions()


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int  # as on the wire, before scaling
    urgent: int
    options: TcpOptions
    payload: memoryview

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies (SYN and FIN count one each)."""
        return len(self.payload) + (self.flags & SYN) // SYN + (self.flags & FIN)


_TS_ONLY = struct.Struct("!HBBII")  # NOP NOP TS 10 val ecr: what Linux sends on data


def parse_options(buf: memoryview) -> TcpOptions:
    if len(buf) == 12:
        nops, kind, length, tsval, tsecr = _TS_ONLY.unpack_from(buf)
        if nops == 0x0101 and kind == OPT_TIMESTAMPS and length == 10:
            return TcpOptions(timestamps=(tsval, tsecr))
    mss = wscale = None
    sack_ok = False
    ts: tuple[int, int] | None = None
    blocks: list[tuple[int, int]] = []
    i, n = 0, len(buf)
    while i < n:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError("TCP option truncated")
        length = buf[i + 1]
        if length < 2 or i + length > n:
            raise ParseError(f"TCP option {kind} has bad length {length}")
        body = buf[i + 2 : i + length]
        if kind == OPT_MSS and length == 4:
            mss = int.from_bytes(body, "big")
        elif kind == OPT_WSCALE and length == 3:
            wscale = min(body[0], 14)
        elif kind == OPT_SACK_PERMITTED and length == 2:
            sack_ok = True
        elif kind == OPT_TIMESTAMPS and length == 10:
            ts = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big"))
        elif kind == OPT_SACK and (length - 2) % 8 == 0:
            for j in range(0, length - 2, 8):
                blocks.append(
                    (
                        int.from_bytes(body[j : j + 4], "big"),
                        int.from_bytes(body[j + 4 : j + 8], "big"),
                    )
                )
        i += length
    if mss is None and wscale is None and not sack_ok and ts is None and not blocks:
        return NO_OPTIONS
    return TcpOptions(mss, wscale, sack_ok, ts, tuple(blocks))


_TS_PREFIX = bytes((OPT_NOP, OPT_NOP, OPT_TIMESTAMPS, 10))
_SACK_PREFIX = bytes((OPT_NOP, OPT_NOP, OPT_SACK))
_II = struct.Struct("!II")


def encode_timestamps(tsval: int, tsecr: int) -> bytes:
    """NOP NOP TS: the option on every segment once timestamps are agreed (hot path)."""
    return _TS_PREFIX + _II.pack(tsval, tsecr)


def encode_sack(blocks: Sequence[tuple[int, int]]) -> bytes:
    """NOP NOP SACK with ``blocks`` (at most 4, or 3 beside timestamps) as wire numbers."""
    pack = _II.pack
    body = b"".join(pack(left, right) for left, right in blocks)
    return _SACK_PREFIX + bytes((2 + len(body),)) + body


def encode_options(opts: TcpOptions) -> bytes:
    out = bytearray()
    if opts.mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, opts.mss)
    if opts.sack_permitted:
        out += b"\x01\x01\x04\x02"
    if opts.timestamps is not None:
        out += encode_timestamps(*opts.timestamps)
    if opts.wscale is not None:
        out += struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, opts.wscale)
    if opts.sack_blocks:
        out += encode_sack(opts.sack_blocks[: (40 - len(out) - 4) // 8])
    if len(out) > 40:
        raise ValueError("TCP options exceed 40 bytes")
    return bytes(out)


def parse_tcp(
    buf: bytes | bytearray | memoryview, src: bytes, dst: bytes, check: bool = True
) -> TcpSegment:
    if len(buf) < TCP_HEADER_LEN:
        raise ParseError(f"TCP segment too short ({len(buf)} bytes)")
    sport, dport, seq, ack, off, flags, window, _csum, urgent = _HDR.unpack_from(buf)
    hlen = (off >> 4) * 4
    if hlen < TCP_HEADER_LEN or hlen > len(buf):
        raise ParseError(f"TCP data offset {hlen} does not fit {len(buf)} bytes")
    view = memoryview(buf)
    if check and not verify(view, pseudo_header_sum(src, dst, PROTO_TCP, len(buf))):
        raise ParseError("TCP checksum mismatch")
    opts = parse_options(view[TCP_HEADER_LEN:hlen]) if hlen > TCP_HEADER_LEN else NO_OPTIONS
    return TcpSegment(sport, dport, seq, ack, flags, window, urgent, opts, view[hlen:])


def build_tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: bytes | memoryview = b"",
    checksum: bool = True,
) -> bytes:
    """TCP header + options + payload; ``options`` must be a multiple of 4 bytes."""
    hlen = TCP_HEADER_LEN + len(options)
    hdr = _HDR.pack(sport, dport, seq, ack, (hlen // 4) << 4, flags, window, 0, 0) + options
    seg = hdr + payload
    if not checksum:
        return seg
    csum = internet_checksum(seg, pseudo_header_sum(src, dst, PROTO_TCP, len(seg)))
    return seg[:16] + csum.to_bytes(2, "big") + seg[18:]
