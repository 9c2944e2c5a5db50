"""Web servers for the proxy tests: HTTP on IP:80, HTTPS (CERT, KEY) on IP:443 and IP:8443.

Usage: proxy_web.py IP CERT KEY. Prints "ready" once all three listen.
GET /bytes/N answers N bytes of pattern() (streamed), GET /slow/N N lines of
100 bytes 0.2 s apart (with their Content-Length); any other GET answers
"host=<Host> via=<Via> path=<path> tls=<0|1>", so a test sees whether a
request came through the upstream proxy (tinyproxy adds a Via header).
"""

from __future__ import annotations

import http.server
import ssl
import sys
import threading
import time

BLOCK = bytes(range(256)) * 4096  # 1 MiB


def pattern(n: int) -> bytes:
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        tls = isinstance(self.connection, ssl.SSLSocket)
        if self.path.startswith("/bytes/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size
            while left:
                chunk = BLOCK[: min(left, len(BLOCK))]
                self.wfile.write(chunk)
                left -= len(chunk)
            return
        if self.path.startswith("/slow/"):  # N pieces of 100 bytes, 0.2 s apart
            pieces = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(100 * pieces))
            self.end_headers()
            for i in range(pieces):
                if i:
                    time.sleep(0.2)
                self.wfile.write(b"%099d\n" % i)
            return
        body = (f"host={self.headers.get('Host')} via={self.headers.get('Via')} "
                f"path={self.path} tls={int(tls)}\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(ip: str, port: int, context: ssl.SSLContext | None) -> None:
    srv = http.server.ThreadingHTTPServer((ip, port), Handler)
    if context is not None:
        srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def main() -> None:
    ip, cert, key = sys.argv[1:4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    serve(ip, 80, None)
    serve(ip, 443, context)
    serve(ip, 8443, context)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
