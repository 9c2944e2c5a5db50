"""A VM-side TCP client the test drives line by line (run inside the VM namespace).

    conn_probe.py HOST PORT [ECHO_TIMEOUT]

Opens one connection to tcp_server.py's ECHO mode and keeps it. Each stdin
line is a command; each gets one stdout line:

    echo TEXT    -> "got TEXT" (sent on the kept connection, echoed back within
                    ECHO_TIMEOUT seconds, default 30), or "error NAME"
    connect      -> "ok SECONDS" or "error NAME SECONDS": a new connection, closed again
    wait-reset   -> "reset NAME SECONDS": blocks until the kept connection fails
    udp          -> "error NAME SECONDS" or "timeout": a datagram to HOST:PORT, then
                    what a connected UDP socket hears back within 3 s
"""

from __future__ import annotations

import errno
import socket
import sys
import time


def name_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def open_echo(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(b"ECHO\n")
    return sock


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    echo_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    kept = open_echo(host, port, 10)
    print("connected", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        start = time.monotonic()
        if cmd == "echo":
            try:
                kept.settimeout(echo_timeout)
                kept.sendall(arg.encode() + b"\n")
                got = b""
                while not got.endswith(b"\n"):
                    chunk = kept.recv(4096)
                    if not chunk:
                        raise ConnectionResetError(errno.ECONNRESET, "closed")
                    got += chunk
                print("got", got.decode().strip(), flush=True)
            except OSError as exc:
                print("error", name_of(exc), flush=True)
        elif cmd == "connect":
            try:
                open_echo(host, port, 10).close()
                print("ok", round(time.monotonic() - start, 3), flush=True)
            except OSError as exc:
                print("error", name_of(exc), round(time.monotonic() - start, 3), flush=True)
        elif cmd == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(3)
                # Without IP_RECVERR Linux reports only "hard" ICMP errors (port
                # unreachable) to UDP sockets, not net or host unreachable.
                udp.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
                try:
                    udp.connect((host, port))
                    udp.send(b"hello")
                    udp.recv(100)
                    print("answered", flush=True)
                except TimeoutError:
                    print("timeout", flush=True)
                except OSError as exc:
                    print("error", name_of(exc), round(time.monotonic() - start, 3), flush=True)
        elif cmd == "wait-reset":
            kept.settimeout(60)
            try:
                data = kept.recv(4096)
                what = "EOF" if not data else "DATA"
            except OSError as exc:
                what = name_of(exc)
            print("reset", what, round(time.monotonic() - start, 3), flush=True)


if __name__ == "__main__":
    main()
