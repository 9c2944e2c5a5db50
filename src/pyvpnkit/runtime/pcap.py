"""Classic libpcap capture of every frame crossing the VM links.

Each record is flushed at once so `tcpdump -r FILE` (or a `tail -f` pipe into
Wireshark) sees a live session.
"""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


class PcapWriter:
    def __init__(self, path: str, snaplen: int = 65535) -> None:
        self.snaplen = snaplen
        self._f: BinaryIO = open(path, "wb", buffering=0)  # noqa: SIM115 - lives with the service
        self._f.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, frame: bytes, ts: float | None = None) -> None:
        if ts is None:
            ts = time.time()
        sec = int(ts)
        usec = int((ts - sec) * 1_000_000)
        data = frame[: self.snaplen]
        self._f.write(struct.pack("<IIII", sec, usec, len(data), len(frame)) + bytes(data))

    def tap(self, link: int, frame: bytes, incoming: bool) -> None:
        """Engine frame tap: every frame, both directions."""
        self.write(frame)

    def close(self) -> None:
        self._f.close()
