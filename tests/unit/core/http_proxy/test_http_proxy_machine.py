"""The proxy machine driven with bytes: what the VM and the upstreams see, effect by effect."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.http_proxy.config import HostList, ProxyConfig, parse_upstream
from pyvpnkit.core.http_proxy.effects import (
    CloseUpstream,
    Connect,
    EndVm,
    ResetVm,
    Send,
    ShutdownUpstream,
    ToVm,
)
from pyvpnkit.core.http_proxy.machine import HELLO_WAIT, ProxyFlow
from tests.unit.wire.test_tls_client_hello import real_hello

UP = parse_upstream("http://user:pw@10.9.9.9:3128")
AUTH = b"Proxy-Authorization: Basic dXNlcjpwdw=="
WORLD = "203.0.113.2"


class Peer:
    """Performs the machine's effects on plain buffers."""

    def __init__(self, mode: str, config: ProxyConfig, port: int = 80) -> None:
        self.m = ProxyFlow(config, NetConfig(), mode, WORLD, port)
        self.vm = bytearray()
        self.sent: dict[int, bytearray] = defaultdict(bytearray)
        self.connects: list[Connect] = []
        self.closed: list[int] = []
        self.shutdown: list[int] = []
        self.ended = self.reset = False
        self.credit = 0

    def run(self) -> None:
        effects, credit = self.m.take()
        self.credit += credit
        for eff in effects:
            if isinstance(eff, ToVm):
                self.vm += eff.data
            elif isinstance(eff, Send):
                self.sent[eff.conn] += eff.data
            elif isinstance(eff, Connect):
                self.connects.append(eff)
            elif isinstance(eff, CloseUpstream):
                self.closed.append(eff.conn)
            elif isinstance(eff, ShutdownUpstream):
                self.shutdown.append(eff.conn)
            elif isinstance(eff, EndVm):
                self.ended = True
            elif isinstance(eff, ResetVm):
                self.reset = True

    def from_vm(self, data: bytes) -> None:
        self.m.vm_data(data)
        self.run()

    def connected(self, conn: int | None = None) -> None:
        self.m.upstream_connected(conn or self.connects[-1].conn)
        self.run()

    def from_up(self, data: bytes, conn: int | None = None) -> None:
        self.m.upstream_data(conn or self.connects[-1].conn, data)
        self.run()

    def take_vm(self) -> bytes:
        out = bytes(self.vm)
        self.vm.clear()
        return out

    def take_sent(self, conn: int | None = None) -> bytes:
        buf = self.sent[conn or self.connects[-1].conn]
        out = bytes(buf)
        buf.clear()
        return out


def response(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_transparent_request_goes_absolute_to_the_upstream_with_credentials() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    request = b"GET /a?b=1 HTTP/1.1\r\nHost: www.example.test\r\nUser-Agent: t\r\n\r\n"
    p.from_vm(request)
    assert p.connects == [Connect(1, "10.9.9.9", 3128, False)]
    assert p.credit == len(request)
    p.connected()
    sent = p.take_sent()
    assert sent.startswith(b"GET http://www.example.test/a?b=1 HTTP/1.1\r\n")
    assert b"\r\nHost: www.example.test\r\n" in sent and AUTH in sent
    p.from_up(response(b"hello"))
    assert p.take_vm() == response(b"hello")
    assert p.m.routes == ["proxy 10.9.9.9:3128"]
    # Keep-alive: the next request reuses the upstream connection.
    p.from_vm(b"GET /c HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
    assert len(p.connects) == 1 and p.take_sent().startswith(b"GET http://www.example.test/c ")
    assert not p.ended and not p.reset


def test_pipelined_requests_answered_in_order() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    assert p.take_sent().count(b"GET ") == 1  # the second waits for the first answer
    p.from_up(response(b"one"))
    assert p.take_sent().startswith(b"GET http://h/2 ")
    p.from_up(response(b"two"))
    assert p.take_vm() == response(b"one") + response(b"two")


def test_bodies_stream_both_ways() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    p.connected()
    assert p.take_sent().endswith(b"5\r\nhello\r\n")  # before the request ends
    p.from_vm(b"0\r\n\r\n")
    assert p.take_sent() == b"0\r\n\r\n"
    size = 10_000_000
    p.from_up(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * 1000)
    first = p.take_vm()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n" + b"x" * 1000)
    for _ in range(10):
        p.from_up(b"y" * 100_000)
        assert p.take_vm() == b"y" * 100_000  # passed on as it comes, never buffered


def test_backpressure_holds_vm_bytes_uncredited() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    head = b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\n"
    p.from_vm(head)
    p.connected()
    p.take_sent()
    p.m.upstream_blocked(1, True)
    p.from_vm(b"abc")
    assert p.credit == len(head) and p.take_sent() == b""
    p.m.upstream_blocked(1, False)
    p.run()
    assert p.credit == len(head) + 3 and p.take_sent() == b"abc"


def test_excluded_host_goes_direct_in_origin_form() -> None:
    cfg = ProxyConfig(http=UP, exclude=HostList.parse(["corp.test"], "exclude"))
    p = Peer("http", cfg)
    p.from_vm(b"GET /x HTTP/1.1\r\nHost: git.corp.test\r\nProxy-Connection: keep-alive\r\n\r\n")
    assert p.connects == [Connect(1, WORLD, 80, True)]
    p.connected()
    assert p.take_sent() == b"GET /x HTTP/1.1\r\nHost: git.corp.test\r\n\r\n"
    # A request on the same VM connection for another host switches upstreams.
    p.from_up(response())
    p.from_vm(b"GET /y HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
    assert p.connects[-1] == Connect(2, "10.9.9.9", 3128, False) and p.closed == [1]
    assert p.m.routes == [f"direct {WORLD}:80", "proxy 10.9.9.9:3128"]


def test_excluded_by_destination_address() -> None:
    cfg = ProxyConfig(http=UP, exclude=HostList.parse(["203.0.113.0/24"], "exclude"))
    p = Peer("http", cfg)
    p.from_vm(b"GET / HTTP/1.1\r\nHost: anything.test\r\n\r\n")
    assert p.connects == [Connect(1, WORLD, 80, True)]


def test_allow_list_answers_403_and_keeps_the_connection() -> None:
    cfg = ProxyConfig(http=UP, allow_enabled=True, allow=HostList.parse(["ok.test"], "allow"),
                      allow_error_msg="%s is blocked")
    p = Peer("http", cfg)
    p.from_vm(b"POST / HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 3\r\n\r\nabc")
    out = p.take_vm()
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and out.endswith(b"evil.test is blocked\n")
    assert p.connects == [] and not p.ended
    p.from_vm(b"GET / HTTP/1.1\r\nHost: www.ok.test\r\n\r\n")
    assert p.connects == [Connect(1, "10.9.9.9", 3128, False)]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 70_000, b"431"),  # over 64 KB of headers
    ],
)
def test_malformed_requests_get_an_error_and_a_close(data: bytes, status: bytes) -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(data)
    assert p.take_vm().startswith(b"HTTP/1.1 " + status) and p.ended
    assert p.connects == []


def test_headers_up_to_the_limit_pass() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 60_000 + b"\r\n\r\n")
    assert p.connects and not p.vm


def test_unreachable_upstream_is_a_502() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    p.m.upstream_failed(1, "Connection refused")
    p.run()
    out = p.take_vm()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert out.endswith(b"cannot reach proxy 10.9.9.9:3128: Connection refused\n") and p.ended


def test_upstream_407_is_passed_back() -> None:
    p = Peer("http", ProxyConfig(http=parse_upstream("10.9.9.9:3128")))
    p.from_vm(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    answer = (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
              b"Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n")
    p.from_up(answer)
    assert p.take_vm() == answer and not p.ended
    # The VM may answer the challenge itself: its credentials reach the upstream.
    p.from_vm(b"GET / HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic eDp5\r\n\r\n")
    assert b"Proxy-Authorization: Basic eDp5\r\n" in p.take_sent()


def test_upstream_closing_mid_response_resets_the_vm() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    p.from_up(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    p.m.upstream_eof(1)
    p.run()
    assert p.reset


def test_websocket_upgrade_becomes_a_tunnel() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    p.connected()
    sent = p.take_sent()
    assert b"Connection: Upgrade\r\n" in sent and b"Upgrade: websocket\r\n" in sent
    p.from_up(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n\r\n\x81\x02hi")
    assert p.take_vm().endswith(b"\r\n\r\n\x81\x02hi")
    p.from_vm(b"\x81\x05hello, not HTTP")
    assert p.take_sent() == b"\x81\x05hello, not HTTP"
    p.from_up(b"\x88\x00")
    assert p.take_vm() == b"\x88\x00"
    p.m.vm_eof()
    p.run()
    assert p.shutdown == [1]


def test_transparent_tls_connects_by_sni_and_replays_the_hello() -> None:
    p = Peer("https", ProxyConfig(https=UP), port=8443)
    hello = real_hello("www.example.test")
    p.from_vm(hello[:10])
    assert p.connects == []  # still reading the hello
    p.from_vm(hello[10:])
    assert p.connects == [Connect(1, "10.9.9.9", 3128, False)]
    p.connected()
    sent = p.take_sent()
    assert sent.startswith(b"CONNECT www.example.test:8443 HTTP/1.1\r\n") and AUTH in sent
    p.from_up(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03")
    assert p.take_sent() == hello  # replayed as it came
    assert p.take_vm() == b"\x16\x03\x03"  # what the proxy relayed after its answer
    p.from_vm(b"more")
    assert p.take_sent() == b"more"


def test_transparent_tls_refused_connect_resets_with_the_status_line() -> None:
    p = Peer("https", ProxyConfig(https=UP), port=443)
    p.from_vm(real_hello("blocked.test"))
    p.connected()
    p.from_up(b"HTTP/1.1 403 Filtered\r\nContent-Length: 0\r\n\r\n")
    assert p.reset and p.vm == b""
    assert p.m.notes == [
        "proxy 10.9.9.9:3128 refused CONNECT blocked.test:443: HTTP/1.1 403 Filtered"
    ]


def test_transparent_tls_without_sni_uses_the_address() -> None:
    p = Peer("https", ProxyConfig(https=UP), port=443)
    p.from_vm(real_hello(None))
    p.connected()
    assert p.take_sent().startswith(f"CONNECT {WORLD}:443 HTTP/1.1\r\n".encode())


def test_transparent_tls_excluded_sni_goes_direct() -> None:
    cfg = ProxyConfig(https=UP, exclude=HostList.parse(["example.test"], "exclude"))
    p = Peer("https", cfg, port=443)
    hello = real_hello("www.example.test")
    p.from_vm(hello)
    assert p.connects == [Connect(1, WORLD, 443, True)]
    p.connected()
    assert p.take_sent() == hello


def test_transparent_tls_unreachable_upstream_resets() -> None:
    p = Peer("https", ProxyConfig(https=UP), port=443)
    p.from_vm(real_hello("a.test"))
    p.m.upstream_failed(1, "Connection refused")
    p.run()
    assert p.reset


def test_explicit_absolute_form_without_upstream_goes_direct() -> None:
    p = Peer("explicit", ProxyConfig(), port=3128)
    p.from_vm(b"GET http://www.example.test:8080/p?q HTTP/1.1\r\nHost: www.example.test:8080\r\n"
              b"Proxy-Connection: Keep-Alive\r\n\r\n")
    assert p.connects == [Connect(1, "www.example.test", 8080, True)]
    p.connected()
    assert p.take_sent() == b"GET /p?q HTTP/1.1\r\nHost: www.example.test:8080\r\n\r\n"


def test_explicit_with_upstream_keeps_absolute_form() -> None:
    p = Peer("explicit", ProxyConfig(http=UP), port=3128)
    p.from_vm(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
    p.connected()
    assert p.take_sent().startswith(b"GET http://a.test/ HTTP/1.1\r\n")


def test_explicit_connect_direct_answers_200_then_tunnels() -> None:
    p = Peer("explicit", ProxyConfig(), port=3128)
    p.from_vm(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01")
    assert p.connects == [Connect(1, "a.test", 443, True)]
    p.connected()
    assert p.take_vm() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert p.take_sent() == b"\x16\x03\x01"
    p.from_up(b"server bytes")
    assert p.take_vm() == b"server bytes"


def test_explicit_connect_through_the_upstream() -> None:
    p = Peer("explicit", ProxyConfig(https=UP), port=3128)
    p.from_vm(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
    p.connected()
    sent = p.take_sent()
    assert sent.startswith(b"CONNECT a.test:443 HTTP/1.1\r\n") and AUTH in sent
    p.from_up(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert p.take_vm().startswith(b"HTTP/1.1 200 Connection established\r\n")
    p.from_vm(b"tls")
    assert p.take_sent() == b"tls"


def test_explicit_refuses_origin_form() -> None:
    p = Peer("explicit", ProxyConfig(), port=3128)
    p.from_vm(b"GET / HTTP/1.1\r\nHost: 192.168.65.1:3128\r\n\r\n")
    assert p.take_vm().startswith(b"HTTP/1.1 400 Bad Request\r\n") and p.connects == []


def test_vm_closing_after_its_request_still_gets_the_answer() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    p.m.vm_eof()
    p.connected()
    p.from_up(response(b"late"))
    assert p.take_vm().endswith(b"late") and p.ended


def test_many_pipelined_requests() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 300)
    p.connected()
    for _ in range(300):
        p.from_up(response())
    assert p.take_vm() == response() * 300


@pytest.mark.parametrize("host", [b"a b", b"a\x7fb", b"\xff", b"a/b", b"[::1", b"a:99999"])
def test_bad_host_names_get_400(host: bytes) -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert p.take_vm().startswith(b"HTTP/1.1 400 ") and p.connects == []
    p = Peer("explicit", ProxyConfig(), port=3128)
    p.from_vm(b"GET http://" + host.replace(b" ", b"%20") + b"/ HTTP/1.1\r\nHost: x\r\n\r\n")
    out = p.take_vm()
    assert out.startswith(b"HTTP/1.1 400 ") or p.connects, out


headers = st.binary(min_size=1, max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b)


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["http", "explicit"]), headers, headers, st.booleans())
def test_any_host_or_target_gives_effects_never_exceptions(
    mode: str, host: bytes, target: bytes, connect: bool
) -> None:
    p = Peer(mode, ProxyConfig(http=UP, https=UP))
    method = b"CONNECT" if connect else b"GET"
    p.from_vm(method + b" " + target.replace(b" ", b"") + b" HTTP/1.1\r\nHost: " + host
              + b"\r\n\r\n")
    if p.connects:
        p.connected()
        p.from_up(response())


SEEDS = {
    "http": b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "https": real_hello("a.test"),
    "explicit": b"CONNECT a.test:443 HTTP/1.1\r\n\r\n",
}


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["http", "https", "explicit"]),
    st.lists(st.binary(max_size=200), max_size=4),
    st.lists(st.binary(max_size=200), max_size=4),
    st.booleans(),
)
def test_any_bytes_give_effects_never_exceptions(
    mode: str, from_vm: list[bytes], from_up: list[bytes], eof: bool
) -> None:
    p = Peer(mode, ProxyConfig(http=UP, https=UP))
    for chunk in [SEEDS[mode], *from_vm]:
        p.from_vm(chunk)
        if not p.connects:
            continue
        if not p.m.closed:
            p.connected()
        for data in from_up:
            p.from_up(data)
    if eof:
        p.m.vm_eof()
        if p.connects:
            p.m.upstream_eof(p.connects[-1].conn)
        p.run()


def test_silent_client_on_a_tls_port_goes_by_address() -> None:
    p = Peer("https", ProxyConfig(https=UP), port=443)
    p.m.handle_timer(1.0)
    assert p.connects == []  # not yet
    p.m.handle_timer(HELLO_WAIT)
    p.run()
    p.connected()
    assert p.take_sent().startswith(f"CONNECT {WORLD}:443 HTTP/1.1\r\n".encode())
    p.from_up(b"HTTP/1.1 200 OK\r\n\r\n220 server speaks first\r\n")
    assert p.take_vm() == b"220 server speaks first\r\n"


def test_head_and_chunked_responses_go_through_h11() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    p.take_sent()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # a length, but no body
    p.from_up(head)
    assert p.take_vm() == head
    p.from_vm(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(p.connects) == 1 and p.take_sent().startswith(b"GET http://h/c ")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    p.from_up(chunked)
    p.from_up(b"0\r\n\r\n")
    assert p.take_vm() == chunked + b"0\r\n\r\n"
    p.from_vm(b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(p.connects) == 1 and p.take_sent().startswith(b"GET http://h/d ")


def test_a_length_body_in_pieces_then_the_connection_again() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    p.take_sent()
    p.from_up(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123")
    p.from_up(b"456")
    p.from_up(b"789")
    assert p.take_vm() == response(b"0123456789")
    p.from_vm(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(p.connects) == 1 and p.take_sent().startswith(b"GET http://h/2 ")
    p.from_up(response(b"again"))
    assert p.take_vm() == response(b"again")


def test_a_length_body_to_an_http_10_client_then_close() -> None:
    """The raw body path keeps h11's framing for a 1.0 client: the length, then a close."""
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET /1 HTTP/1.0\r\nHost: h\r\n\r\n")
    p.connected()
    p.take_sent()
    p.from_up(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    p.from_up(b"cdef")
    out = p.take_vm()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nabcdef")
    assert b"Content-Length: 6\r\n" in out and not p.reset and p.ended


def test_tunnel_upload_keeps_order_across_backpressure() -> None:
    """VM bytes go upstream as they come, or after what the blocked upstream still holds."""
    p = Peer("explicit", ProxyConfig(), port=3128)
    p.from_vm(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
    p.connected()
    p.take_vm()
    start = p.credit  # the CONNECT request's bytes
    p.from_vm(b"one ")
    assert p.take_sent() == b"one " and p.credit - start == len(b"one ")
    p.m.upstream_blocked(1, True)
    p.from_vm(b"two ")
    p.from_vm(b"three ")
    assert p.take_sent() == b"" and p.credit - start == len(b"one ")  # held, not credited
    p.m.upstream_blocked(1, False)
    p.run()
    p.from_vm(b"four")
    assert p.take_sent() == b"two three four"
    assert p.credit - start == len(b"one two three four")


def kept_alive(p: Peer, request: bytes) -> None:
    """One answered request, then ``request`` on the same upstream connection."""
    p.from_vm(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    p.take_sent()
    p.from_up(response(b"one"))
    p.take_vm()
    p.from_vm(request)
    assert len(p.connects) == 1 and p.take_sent().startswith(request.split(b" ")[0])


def test_a_reused_connection_closing_unanswered_sends_the_request_again() -> None:
    """tinyproxy closes after each response: the next request may meet that close."""
    p = Peer("http", ProxyConfig(http=UP))
    kept_alive(p, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    p.m.upstream_eof(1)
    p.run()
    assert [c.conn for c in p.connects] == [1, 2] and p.closed == [1] and p.take_vm() == b""
    p.connected(2)
    assert p.take_sent(2) == b"GET http://h/2 HTTP/1.1\r\nHost: h\r\n" + AUTH + b"\r\n\r\n"
    p.from_up(response(b"two"), 2)
    assert p.take_vm() == response(b"two") and not p.m.notes


def test_the_second_try_is_the_last() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    kept_alive(p, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    p.m.upstream_eof(1)
    p.run()
    p.connected(2)
    p.m.upstream_eof(2)
    p.run()
    assert len(p.connects) == 2 and p.take_vm().startswith(b"HTTP/1.1 502 ")


@pytest.mark.parametrize("request_, answer", [
    (b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi", b""),  # a body
    (b"POST /2 HTTP/1.1\r\nHost: h\r\n\r\n", b""),  # not idempotent
    (b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 2"),  # an answer began
])
def test_no_second_try_for_a_body_a_post_or_an_answer_begun(request_: bytes, answer: bytes) -> None:
    p = Peer("http", ProxyConfig(http=UP))
    kept_alive(p, request_)
    if answer:
        p.from_up(answer)
    p.m.upstream_eof(1)
    p.run()
    assert len(p.connects) == 1 and p.take_vm().startswith(b"HTTP/1.1 502 ")


def test_upstream_closing_after_its_response() -> None:
    p = Peer("http", ProxyConfig(http=UP))
    p.from_vm(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    p.connected()
    p.from_up(response(b"bye", b"Connection: close\r\n"))
    assert p.take_vm() == response(b"bye") and p.closed == [1]  # Connection: hop-by-hop
    p.from_vm(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert p.connects[-1].conn == 2  # a new upstream connection


CHUNKS = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
    b"abc", b"CONNECT a.test:443 HTTP/1.1\r\n\r\n",
    b"GET http://a.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", b"HTTP/1.1 101 Switching\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 407 No\r\nContent-Length: 0\r\n\r\n", b"\x16\x03\x01", b"junk\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n",
]
ops = st.lists(
    st.tuples(
        st.sampled_from(["vm", "up", "vm_eof", "up_eof", "reset", "block", "unblock",
                         "connect", "fail", "timer"]),
        st.one_of(st.sampled_from(CHUNKS), st.binary(max_size=40)),
    ),
    max_size=12,
)


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["http", "https", "explicit"]), ops)
def test_any_sequence_of_events_gives_effects_never_exceptions(
    mode: str, steps: list[tuple[str, bytes]]
) -> None:
    p = Peer(mode, ProxyConfig(http=UP, https=UP))
    m = p.m
    for kind, data in steps:
        conn = p.connects[-1].conn if p.connects else 1
        if kind == "vm":
            m.vm_data(data)
        elif kind == "up":
            m.upstream_data(conn, data)
        elif kind == "vm_eof":
            m.vm_eof()
        elif kind == "up_eof":
            m.upstream_eof(conn)
        elif kind == "reset":
            m.upstream_reset(conn)
        elif kind in ("block", "unblock"):
            m.upstream_blocked(conn, kind == "block")
        elif kind == "connect":
            m.upstream_connected(conn)
        elif kind == "fail":
            m.upstream_failed(conn, "refused")
        else:
            m.handle_timer(HELLO_WAIT)
        p.run()
