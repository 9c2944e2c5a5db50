"""Tiny HTTP server on 127.0.0.1: prints its port, answers every GET with 'hello pyvpnkit'.

Given "::", it serves IPv6 and IPv4 on one dual-stack socket.
"""

import http.server
import socket
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"hello pyvpnkit\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class DualStack(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


server = DualStack if ":" in sys.argv[1] else http.server.ThreadingHTTPServer
srv = server((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
