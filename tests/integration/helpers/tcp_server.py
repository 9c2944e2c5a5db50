"""Test TCP server: prints its port, then serves GET/PUT/HALF/ECHO per connection.

GET n  -> sends n bytes of pattern(n), closes.
PUT n  -> reads n bytes, replies sha256 hex, closes.
SLOWPUT n -> the same after not reading for 3 s.
HALF   -> reads until EOF, then replies sha256 hex of what it read (half-close).
ECHO   -> echoes until EOF.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time


def pattern(n: int) -> bytes:
    block = hashlib.sha256(str(n).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def recv_line(conn: socket.socket) -> tuple[str, bytes]:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line.decode(), rest


def serve(conn: socket.socket) -> None:
    try:
        line, rest = recv_line(conn)
        cmd, _, arg = line.partition(" ")
        if cmd == "GET":
            data = pattern(int(arg))
            view = memoryview(data)
            while view:
                sent = conn.send(view[: 1 << 20])
                view = view[sent:]
        elif cmd in ("PUT", "SLOWPUT"):
            n = int(arg)
            if cmd == "SLOWPUT":
                time.sleep(3)  # a host reader that falls behind
            h = hashlib.sha256(rest)
            got = len(rest)
            while got < n:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                got += len(chunk)
            conn.sendall(h.hexdigest().encode() + b"\n")
        elif cmd == "HALF":
            h = hashlib.sha256(rest)
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
            conn.sendall(h.hexdigest().encode() + b"\n")
        elif cmd == "ECHO":
            if rest:
                conn.sendall(rest)
            while chunk := conn.recv(1 << 16):
                conn.sendall(chunk)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(512)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
