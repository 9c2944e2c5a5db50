"""Test upstream DNS server (dnspython) on 127.0.0.1, UDP and TCP on one port.

Prints the port (argv[1], default any free one), then answers a small zone under
example.test. Never forwards.
"""

from __future__ import annotations

import socket
import sys
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE: dict[tuple[str, str], list[str]] = {
    ("www.example.test.", "A"): ["203.0.113.2"],
    ("www.example.test.", "AAAA"): ["2001:db8::2"],
    # IPv6 beyond the test world's /64: unreachable once the host loses its IPv6 route.
    ("dual.example.test.", "A"): ["203.0.113.2"],
    ("dual.example.test.", "AAAA"): ["2001:db9::2"],
    ("example.test.", "MX"): ["10 mail.example.test."],
    ("example.test.", "TXT"): ['"hello from the test zone"'],
    ("_http._tcp.example.test.", "SRV"): ["0 5 80 www.example.test."],
    # Names for the host's loopback (issue 27: the proxy must refuse them).
    ("loopback.example.test.", "A"): ["127.0.0.1"],
    ("mapped.example.test.", "AAAA"): ["::ffff:127.0.0.1"],
    ("alias.example.test.", "AAAA"): ["::ffff:192.168.65.2"],
    ("big.example.test.", "TXT"): [f'"{i:03d} ' + "x" * 60 + '"' for i in range(20)],
}


def answer(wire: bytes, tcp: bool = False) -> bytes:
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    question = q.question[0]
    name = question.name.to_text().lower()
    rtype = dns.rdatatype.to_text(question.rdtype)
    records = ZONE.get((name, rtype))
    if records:
        r.answer.append(dns.rrset.from_text(question.name, 60, "IN", rtype, *records))
    elif not any(n == name for n, _t in ZONE):
        r.set_rcode(dns.rcode.NXDOMAIN)
    try:
        return r.to_wire(max_size=65535 if tcp else 512)
    except dns.exception.TooBig:
        r.answer.clear()
        r.flags |= dns.flags.TC
        return r.to_wire()


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, addr = sock.recvfrom(65535)
        try:
            sock.sendto(answer(data), addr)
        except Exception:  # noqa: BLE001 - a test server keeps serving
            pass


def serve_tcp_conn(conn: socket.socket) -> None:
    f = conn.makefile("rb")
    try:
        while True:
            head = f.read(2)
            if len(head) < 2:
                break
            data = f.read(int.from_bytes(head, "big"))
            out = answer(data, tcp=True)
            conn.sendall(len(out).to_bytes(2, "big") + out)
    finally:
        conn.close()


def main() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))  # [PORT]
    port = udp.getsockname()[1]
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(64)
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    print(port, flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
