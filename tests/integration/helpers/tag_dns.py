"""A DNS server that answers every A question with one address (its tag).

    tag_dns.py BIND_IP ANSWER_IP

UDP port 53 on BIND_IP; prints "ready" once bound. Two of them on two addresses
tell which upstream a forwarded query reached.
"""

from __future__ import annotations

import socket
import sys

import dns.message
import dns.rdatatype
import dns.rrset


def main() -> None:
    bind_ip, answer_ip = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind_ip, 53))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        try:
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", answer_ip))
            sock.sendto(reply.to_wire(), peer)
        except Exception:  # noqa: BLE001 - a test server keeps serving
            pass


if __name__ == "__main__":
    main()
