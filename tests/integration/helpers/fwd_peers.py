"""Both ends of the published-port tests: who does each side see?

    vm CONTROL              in the VM: TCP on 8080 (IPv4 and IPv6) and UDP on 8081 answer
                            "peer=IP:PORT"; a unix socket CONTROL takes commands (below)
    echo HOST PORT          a TCP line echo on HOST:PORT (SO_REUSEPORT, so a client may
                            bind the same address and port)
    clients DST PORT LPORT ADDR...
                            one TCP connection from each ADDR:LPORT to DST:PORT, all
                            open together; prints each one's first line, then checks an echo
    udp-collide DST PORT    one UDP socket on the world's address: echoes the VM's first
                            datagram, then asks DST:PORT and prints the answer and its source

Control commands (one line each, one reply line): "tcp-out IP PORT" connects from the VM's
port 8080 to IP:PORT and returns the first line; "tcp-out-again" sends one more line on
it and returns the echo; "udp-out IP PORT" sends from the VM's port 8081 to IP:PORT and
returns the answer's source and text; "tcp-ask IP PORT" and "udp-ask IP PORT" send "ping"
there and return the answer (or the error's name).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

REUSE = (socket.SO_REUSEADDR, socket.SO_REUSEPORT)


def _peer(addr: tuple) -> str:
    host = addr[0].removeprefix("::ffff:")
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _reusable(family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind)
    for opt in REUSE:
        sock.setsockopt(socket.SOL_SOCKET, opt, 1)
    return sock


def _serve_tcp(conn: socket.socket, addr: tuple) -> None:
    with conn:
        conn.sendall(f"peer={_peer(addr)}\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)


def vm(control: str) -> None:
    lst = _reusable(socket.AF_INET6, socket.SOCK_STREAM)
    lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lst.bind(("::", 8080))
    lst.listen(64)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", 8081))
    answers: list[tuple[str, str]] = []
    got_answer = threading.Event()

    def accept() -> None:
        while True:
            conn, addr = lst.accept()
            threading.Thread(target=_serve_tcp, args=(conn, addr), daemon=True).start()

    def datagrams() -> None:
        while True:
            data, addr = udp.recvfrom(65536)
            if data.startswith(b"answer:"):
                answers.append((_peer(addr), data.decode()))
                got_answer.set()
            else:
                udp.sendto(f"peer={_peer(addr)}".encode(), addr)

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=datagrams, daemon=True).start()
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.bind(control)
    ctl.listen(4)
    print("ready", flush=True)
    out: socket.socket | None = None
    while True:
        conn, _ = ctl.accept()
        with conn, conn.makefile("rw") as f:
            cmd, *args = f.readline().split()
            if cmd == "tcp-out":
                out = _reusable(socket.AF_INET, socket.SOCK_STREAM)
                out.bind(("0.0.0.0", 8080))
                out.settimeout(10)
                out.connect((args[0], int(args[1])))
                out.sendall(b"hello-out\n")
                reply = out.makefile().readline().strip()
            elif cmd == "tcp-out-again" and out is not None:
                out.sendall(b"again\n")
                reply = out.recv(100).decode().strip()
            elif cmd == "udp-out":
                got_answer.clear()
                udp.sendto(b"out", ("::ffff:" + args[0], int(args[1])))
                got_answer.wait(10)
                reply = " ".join(answers[-1]) if answers else "none"
            elif cmd in ("tcp-ask", "udp-ask"):
                reply = _ask(cmd == "tcp-ask", args[0], int(args[1]))
            else:
                reply = f"bad command {cmd}"
            f.write(reply + "\n")


def _ask(tcp: bool, host: str, port: int) -> str:
    try:
        if tcp:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"ping\n")
                return s.makefile().readline().strip()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"ping", (host, port))
            return s.recv(100).decode().strip()
    except OSError as exc:
        return type(exc).__name__


def echo(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lst = _reusable(family, socket.SOCK_STREAM)
    lst.bind((host, port))
    lst.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = lst.accept()

        def serve(c: socket.socket) -> None:
            with c:
                while data := c.recv(65536):
                    c.sendall(data)

        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def clients(dst: str, port: int, lport: int, addrs: list[str]) -> None:
    socks = []
    for addr in addrs:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = _reusable(family, socket.SOCK_STREAM)
        s.settimeout(10)
        s.bind((addr, lport))
        s.connect((dst, port))
        socks.append(s)
    result = []
    for i, s in enumerate(socks):
        f = s.makefile("rb")
        first = f.readline().decode().strip()
        s.sendall(f"msg{i}\n".encode())
        result.append({"local": _peer(s.getsockname()), "first": first,
                       "echo": f.readline().decode().strip() == f"msg{i}"})
    print(json.dumps(result), flush=True)


def udp_collide(dst: str, port: int) -> None:
    """Bound to the world's address: the VM dials it through the NAT, then it asks the
    published port from the same address and port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.bind(("0.0.0.0", int(os.environ.get("LPORT", "0"))))
    print(s.getsockname()[1], flush=True)
    data, nat = s.recvfrom(100)  # the VM's own datagram, through the NAT
    s.sendto(b"answer:from-world", nat)
    s.sendto(b"hello", (dst, port))
    reply, src = s.recvfrom(100)
    print(json.dumps({"nat": _peer(nat), "reply": reply.decode(), "reply_from": _peer(src)}),
          flush=True)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "vm":
        vm(rest[0])
    elif mode == "echo":
        echo(rest[0], int(rest[1]))
    elif mode == "clients":
        clients(rest[0], int(rest[1]), int(rest[2]), rest[3:])
    elif mode == "udp-collide":
        udp_collide(rest[0], int(rest[1]))
