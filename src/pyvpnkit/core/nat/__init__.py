"""The NATs: VM flows to host sockets (TCP, UDP, ICMP), port forwards into VMs, routes, expiry."""
