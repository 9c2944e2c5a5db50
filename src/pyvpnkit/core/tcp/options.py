"""TCP options of one connection: what we offer, what the handshake agreed, what segments carry.

MSS (RFC 9293 3.7.1), window scaling and timestamps (RFC 7323) and SACK
(RFC 2018) are settled by the two SYNs and never change afterwards; after
that every segment carries at most timestamps and SACK blocks, built here by
the codec in ``wire.tcp``.
"""

from __future__ import annotations

from pyvpnkit.core.tcp.reassembly import Reassembly
from pyvpnkit.core.tcp.seq import MASK
from pyvpnkit.wire.tcp import TcpOptions, encode_options, encode_sack, encode_timestamps

MIN_MSS = 64  # below this the options would not leave room for data
DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1


def wscale_for(buffer: int) -> int:
    """The smallest shift that lets the 16-bit window field cover ``buffer``."""
    shift = 0
    while shift < 14 and (buffer >> shift) > 0xFFFF:
        shift += 1
    return shift


class Options:
    """Our offer (``use_*``, ``mss``) and the agreed result (``*_ok``, scales, peer MSS)."""

    __slots__ = (
        "mss", "rcv_buffer", "use_sack", "use_ts", "use_ws",
        "ws_ok", "sack_ok", "ts_ok", "snd_mss", "snd_wscale", "rcv_wscale",
    )  # fmt: skip

    def __init__(
        self, mss: int, rcv_buffer: int, sack: bool, timestamps: bool, window_scaling: bool
    ) -> None:
        self.mss = max(int(mss), MIN_MSS)
        self.rcv_buffer = rcv_buffer
        self.use_sack = sack
        self.use_ts = timestamps
        self.use_ws = window_scaling
        self.ws_ok = self.sack_ok = self.ts_ok = False
        self.snd_mss = self.mss
        self.snd_wscale = self.rcv_wscale = 0

    def negotiate(self, peer: TcpOptions) -> None:
        """Adopt the options of the peer's SYN: what both sides offered."""
        peer_mss = peer.mss if peer.mss else DEFAULT_PEER_MSS
        self.snd_mss = max(min(peer_mss, self.mss), MIN_MSS)
        self.ws_ok = self.use_ws and peer.wscale is not None
        if self.ws_ok and peer.wscale is not None:
            self.snd_wscale = peer.wscale
            self.rcv_wscale = wscale_for(self.rcv_buffer)
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = self.use_sack and peer.sack_permitted
        self.ts_ok = self.use_ts and peer.timestamps is not None

    def syn(self, now: float, active: bool, ts_recent: int) -> bytes:
        """Options of our SYN (``active``: an offer) or SYN-ACK (the agreed subset)."""
        tsval = int(now * 1000) & MASK
        if active:
            opts = TcpOptions(
                mss=self.mss,
                wscale=wscale_for(self.rcv_buffer) if self.use_ws else None,
                sack_permitted=self.use_sack,
                timestamps=(tsval, 0) if self.use_ts else None,
            )
        else:
            opts = TcpOptions(
                mss=self.mss,
                wscale=self.rcv_wscale if self.ws_ok else None,
                sack_permitted=self.sack_ok,
                timestamps=(tsval, ts_recent) if self.ts_ok else None,
            )
        return encode_options(opts)

    def segment(self, now: float, ts_recent: int, reasm: Reassembly) -> bytes:
        """Options of a non-SYN segment: timestamps, then SACK blocks if there are holes."""
        opts = encode_timestamps(int(now * 1000) & MASK, ts_recent) if self.ts_ok else b""
        if self.sack_ok and reasm:
            blocks = reasm.sack_blocks(3 if self.ts_ok else 4)
            opts += encode_sack([(s & MASK, e & MASK) for s, e in blocks])
        return opts
