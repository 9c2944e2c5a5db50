"""Measures, from inside a VM namespace, what network conditions do. Prints one JSON line.

    conditions_probe.py connect HOST PORT COUNT [TIMEOUT]  -> median connect ms, or the error
    conditions_probe.py udp HOST PORT COUNT                 -> echoes received for COUNT sent
    conditions_probe.py get HOST PORT BYTES                 -> seconds to download BYTES
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time


def connect(host: str, port: int, count: int, timeout: float) -> dict[str, object]:
    times = []
    for _ in range(count):
        start = time.monotonic()
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except ConnectionRefusedError:
            return {"error": "refused", "ms": (time.monotonic() - start) * 1000}
        except TimeoutError:
            return {"error": "timeout", "ms": (time.monotonic() - start) * 1000}
        times.append((time.monotonic() - start) * 1000)
    return {"error": None, "ms": statistics.median(times)}


def udp(host: str, port: int, count: int) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.setblocking(False)
    got: set[int] = set()

    def collect() -> None:
        while True:
            try:
                got.add(int(s.recv(100)))
            except BlockingIOError:
                return

    for i in range(count):
        s.send(str(i).encode())
        time.sleep(0.002)  # paced: no socket buffer is the cause of a loss
        collect()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        time.sleep(0.05)
        collect()
    return {"sent": count, "received": len(got)}


def get(host: str, port: int, size: int) -> dict[str, object]:
    start = time.monotonic()
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(f"GET {size}\n".encode())
    got = 0
    while chunk := s.recv(1 << 20):
        got += len(chunk)
    s.close()
    return {"bytes": got, "seconds": time.monotonic() - start}


def main() -> None:
    what, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if what == "connect":
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
        result = connect(host, port, n, timeout)
    elif what == "udp":
        result = udp(host, port, n)
    else:
        result = get(host, port, n)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
