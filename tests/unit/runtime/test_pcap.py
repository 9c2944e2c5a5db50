"""Live capture on a unix socket (vpnkit's --pcap): a header, every frame, slow readers drop."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from pyvpnkit.runtime import pcap
from pyvpnkit.runtime.pcap import PcapListener


def test_clients_get_a_header_then_live_records(tmp_path: Path) -> None:
    path = str(tmp_path / "pcap.sock")

    async def body() -> None:
        listener = PcapListener(path, snaplen=100)
        reader, writer = await asyncio.open_unix_connection(path)
        magic, major, minor, _tz, _sig, snaplen, linktype = struct.unpack(
            "<IHHiIII", await reader.readexactly(24)
        )
        assert (magic, major, minor, snaplen, linktype) == (0xA1B2C3D4, 2, 4, 100, 1)
        listener.tap(1, b"\xab" * 60, True)
        listener.tap(1, b"\xcd" * 300, False)
        for size, byte in ((60, 0xAB), (300, 0xCD)):
            _s, _us, caplen, length = struct.unpack("<IIII", await reader.readexactly(16))
            assert (caplen, length) == (min(size, 100), size)
            assert await reader.readexactly(caplen) == bytes([byte]) * caplen
        writer.close()
        listener.close()
        assert not Path(path).exists()

    asyncio.run(body())


def test_a_reader_that_stalls_loses_records_not_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "pcap.sock")

    async def body() -> None:
        listener = PcapListener(path)
        _reader, writer = await asyncio.open_unix_connection(path)  # never reads
        for _ in range(200):
            await asyncio.sleep(0)
            if listener.clients:
                break
        frame = bytes(9000)
        for _ in range(2 * pcap.MAX_CLIENT_BACKLOG // len(frame) + 200):
            listener.tap(1, frame, True)
        (transport,) = listener.clients
        assert listener.dropped > 0
        assert transport.get_write_buffer_size() <= pcap.MAX_CLIENT_BACKLOG + len(frame) + 16
        writer.close()
        listener.close()

    asyncio.run(body())
