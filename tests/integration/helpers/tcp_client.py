"""Test TCP client run inside the VM namespace (the kernel is the VM's TCP).

Prints one JSON object with what it measured.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from tcp_server import pattern  # noqa: E402


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=60)


def get(host: str, port: int, n: int) -> dict[str, object]:
    s = connect(host, port)
    s.sendall(f"GET {n}\n".encode())
    h = hashlib.sha256()
    got = 0
    while chunk := s.recv(1 << 20):
        h.update(chunk)
        got += len(chunk)
    s.close()
    return {"bytes": got, "ok": h.hexdigest() == hashlib.sha256(pattern(n)).hexdigest()}


def put(host: str, port: int, n: int) -> dict[str, object]:
    return put_cmd(host, port, n, "PUT")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slowput(host: str, port: int, n: int) -> dict[str, object]:
    """Upload to a server that does not read for 3 s; watch the stack's memory meanwhile."""
    stack_pid = os.getppid()
    before = rss_kb(stack_pid)
    peak = before
    result: dict[str, object] = {}

    def upload() -> None:
        result.update(put_cmd(host, port, n, "SLOWPUT"))

    th = threading.Thread(target=upload)
    th.start()
    while th.is_alive():
        peak = max(peak, rss_kb(stack_pid))
        time.sleep(0.05)
    return {**result, "rss_growth_kb": peak - before}


def put_cmd(host: str, port: int, n: int, cmd: str) -> dict[str, object]:
    s = connect(host, port)
    data = pattern(n)
    s.sendall(f"{cmd} {n}\n".encode() + data)
    reply = s.makefile().readline().strip()
    s.close()
    return {"ok": reply == hashlib.sha256(data).hexdigest()}


def refused(host: str, port: int) -> dict[str, object]:
    t = time.monotonic()
    try:
        connect(host, port).close()
        return {"refused": False}
    except OSError as exc:
        return {"refused": exc.errno == errno.ECONNREFUSED, "seconds": time.monotonic() - t,
                "error": str(exc)}


def half(host: str, port: int) -> dict[str, object]:
    s = connect(host, port)
    data = b"half-close " * 5000
    s.sendall(b"HALF\n" + data)
    s.shutdown(socket.SHUT_WR)
    reply = s.makefile().readline().strip()
    s.close()
    return {"ok": reply == hashlib.sha256(data).hexdigest()}


def echo_once(host: str, port: int) -> bool:
    s = connect(host, port)
    s.sendall(b"ECHO\nx")
    ok = s.recv(1) == b"x"
    s.shutdown(socket.SHUT_WR)
    ok = ok and s.recv(1) == b""
    s.close()
    return ok


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def many(host: str, port: int, sequential: int, concurrent: int) -> dict[str, object]:
    stack_pid = os.getppid()
    echo_once(host, port)  # warm up: lazily opened sockets of the stack exist now
    time.sleep(0.5)
    before = fds(stack_pid)
    t = time.monotonic()
    seq_ok = sum(echo_once(host, port) for _ in range(sequential))
    seq_rate = sequential / (time.monotonic() - t)
    results: list[bool] = []

    def worker() -> None:
        try:
            results.append(echo_once(host, port))
        except OSError:
            results.append(False)

    threads = [threading.Thread(target=worker) for _ in range(concurrent)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    after = before
    for _ in range(50):  # host sockets close once both FINs are acknowledged
        after = fds(stack_pid)
        if after <= before:
            break
        time.sleep(0.1)
    return {"sequential_ok": seq_ok, "concurrent_ok": sum(results), "fds_before": before,
            "fds_after": after, "conn_per_s": seq_rate}


def main() -> None:
    mode, host, port, *rest = sys.argv[1:]
    funcs = {"get": get, "put": put, "refused": refused, "half": half, "many": many,
             "slowput": slowput}
    args = [int(x) for x in rest]
    print(json.dumps(funcs[mode](host, int(port), *args)), flush=True)


if __name__ == "__main__":
    main()
