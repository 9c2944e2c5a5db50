"""A namespace as a VM: its TAP's frames relayed to a qemu-framed (u32 BE) unix socket.

    tap_vm.py SOCKET IFNAME MAC [--connect]

Creates TAP IFNAME with MAC in the current network namespace, connects to
SOCKET (with --connect: a gvproxy API socket, asking POST /connect first)
and relays frames both ways until either side closes. Prints "ready" once
the TAP is up and the connection made.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import subprocess
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def main() -> int:
    path, ifname, mac = sys.argv[1:4]
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", ifname, "address", mac, "up"], check=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    if "--connect" in sys.argv:
        sock.sendall(b"POST /connect HTTP/1.1\r\nHost: unix\r\nContent-Length: 0\r\n\r\n")
    print("ready", flush=True)
    buf = b""
    while True:
        ready, _, _ = select.select([tap, sock], [], [])
        if tap in ready:
            frame = os.read(tap, 65536)
            sock.sendall(struct.pack(">I", len(frame)) + frame)
        if sock in ready:
            data = sock.recv(1 << 20)
            if not data:
                return 0
            buf += data
            while len(buf) >= 4:
                (n,) = struct.unpack_from(">I", buf)
                if len(buf) < 4 + n:
                    break
                os.write(tap, buf[4 : 4 + n])
                buf = buf[4 + n :]


if __name__ == "__main__":
    sys.exit(main())
