"""A DNS server on 127.0.0.1 that answers every A question with one address (argv[1]).

Prints its port. Two of them with different addresses show which one a query reached.
"""

import socket
import sys

import dns.message
import dns.rrset

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    wire, addr = s.recvfrom(4096)
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", sys.argv[1]))
    s.sendto(r.to_wire(), addr)
