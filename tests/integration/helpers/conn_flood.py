"""Thousands of concurrent TCP connections from one process (selectors, non-blocking).

serve HOST PORT
    Echo server; prints its port, holds every connection until the peer closes.
hold HOST PORT N AFTER [STACK_PID]
    In the VM: open N connections (a bounded window connecting at once); each
    sends one byte and reads it back, then all are held open together. Then
    close them all, wait until the stack (STACK_PID, else our parent) is back
    near its idle descriptor count, and open AFTER more. Prints one JSON object.
syn HOST PORT N SECONDS
    Start N connects without waiting for them (a SYN flood) and keep them
    for SECONDS.

Run as root: the process raises its own descriptor limit to what it needs.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import socket
import sys
import time

WINDOW = 512  # connects in flight at once


def raise_limit(need: int) -> None:
    """Raise the soft descriptor limit towards need (never beyond the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(need + 64, soft), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def stat_of(pid: int) -> tuple[int, int]:
    """(open descriptors, RSS in KB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss


def serve(host: str, port: int) -> None:
    raise_limit(40000)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(4096)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    print(srv.getsockname()[1], flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is srv:
                for _ in range(256):
                    try:
                        conn, _addr = srv.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                try:
                    sock.send(data)
                except OSError:
                    pass
            else:
                sel.unregister(sock)
                sock.close()


def open_many(host: str, port: int, n: int, timeout: float = 60.0) -> dict[str, object]:
    """Open n echo-checked connections; they stay open (returned in "held")."""
    sel = selectors.DefaultSelector()
    started: dict[int, float] = {}
    held: list[socket.socket] = []
    result = {"ok": 0, "refused": 0, "reset": 0, "other": 0, "max_refusal_s": 0.0}
    todo = n
    inflight = 0
    t0 = time.monotonic()
    while (todo or inflight) and time.monotonic() - t0 < timeout:
        while todo and inflight < WINDOW:
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((host, port))
            todo -= 1
            if err not in (0, errno.EINPROGRESS):
                result["other"] += 1
                s.close()
                continue
            started[s.fileno()] = time.monotonic()
            sel.register(s, selectors.EVENT_WRITE, "connect")
            inflight += 1
        for key, _ in sel.select(0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    kind = "refused" if err == errno.ECONNREFUSED else "other"
                    result[kind] += 1
                    took = time.monotonic() - started[s.fileno()]
                    result["max_refusal_s"] = max(result["max_refusal_s"], round(took, 3))
                    sel.unregister(s)
                    s.close()
                    inflight -= 1
                    continue
                s.send(b"x")
                sel.modify(s, selectors.EVENT_READ, "echo")
                continue
            try:
                got = s.recv(1)
            except BlockingIOError:
                continue
            except OSError:
                got = b""
            sel.unregister(s)
            inflight -= 1
            if got == b"x":
                result["ok"] += 1
                held.append(s)
            else:
                result["reset"] += 1
                s.close()
    result["hung"] = inflight
    result["seconds"] = round(time.monotonic() - t0, 3)
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    result["held"] = held
    return result


def hold(host: str, port: int, n: int, after: int, stack: int) -> dict[str, object]:
    raise_limit(n + after)
    idle_fds, idle_rss = stat_of(stack)
    first = open_many(host, port, n)
    held: list[socket.socket] = first.pop("held")  # type: ignore[assignment]
    peak_fds, peak_rss = stat_of(stack)
    for s in held:
        s.close()
    deadline = time.monotonic() + 30
    fds = peak_fds
    while time.monotonic() < deadline:
        fds, _rss = stat_of(stack)
        if fds <= idle_fds + 8:
            break
        time.sleep(0.2)
    out: dict[str, object] = {
        **first, "idle_fds": idle_fds, "idle_rss_kb": idle_rss, "peak_fds": peak_fds,
        "peak_rss_kb": peak_rss, "fds_after_close": fds,
    }
    if after:
        second = open_many(host, port, after)
        for s in second.pop("held"):  # type: ignore[attr-defined]
            s.close()
        out["after"] = second
    return out


def syn_flood(host: str, port: int, n: int, seconds: float) -> None:
    raise_limit(n)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    time.sleep(seconds)


def main() -> None:
    mode, host, port, *rest = sys.argv[1:]
    if mode == "serve":
        serve(host, int(port))
    elif mode == "hold":
        stack = int(rest[2]) if len(rest) > 2 else os.getppid()
        print(json.dumps(hold(host, int(port), int(rest[0]), int(rest[1]), stack)), flush=True)
    elif mode == "syn":
        syn_flood(host, int(port), int(rest[0]), float(rest[1]))


if __name__ == "__main__":
    main()
