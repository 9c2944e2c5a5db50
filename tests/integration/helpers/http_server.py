"""Tiny HTTP server on 127.0.0.1: prints its port, answers every GET with 'hello pyvpnkit'."""

import http.server
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


srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0),
                                      Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
