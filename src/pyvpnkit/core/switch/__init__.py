"""The one door into the core: the stack (IPv4, IPv6), ARP, the address pool, leases, outbox."""
