"""One proxied VM connection, as a machine fed bytes that returns effects.

Three modes share it. ``http``: a VM connection to a transparent HTTP port;
requests are parsed with h11 (keep-alive, pipelining), rewritten to
absolute-form for the upstream proxy or sent as they are to the original
destination, and bodies stream through in both directions. ``explicit``: the
gateway's proxy port; absolute-form requests and CONNECT, to the upstream or
(with none, or excluded) straight to the named host. ``https``: a VM
connection to a transparent TLS port; the ClientHello is read without being
consumed, the upstream is asked for ``CONNECT <SNI name>:<port>``, and on a
2xx the hello is replayed and bytes are relayed.

States and the only edges between them (``_go`` refuses any other):

    hello ──ClientHello (or 3 s of silence)──▶ connecting
    connecting ──connected: direct──▶ tunnel
    connecting ──connected: proxy──▶ connect-wait ──2xx──▶ tunnel
    http ──101, 2xx to CONNECT, our own CONNECT──▶ tunnel
    any ──finished or reset──▶ closed

Where each request goes is routing.py's decision. A request waits until its
upstream connection is up; one upstream at a time, reused while requests go
the same way. A 101, a 2xx to CONNECT, or a TLS CONNECT turn the flow into a
byte tunnel. VM bytes are credited (``credit``) only once passed on, and not
taken while the upstream is blocked, so the VM's TCP window carries the
backpressure; the other way, the runtime pauses reading the upstream when
the NAT says the VM is behind.
"""

from __future__ import annotations

import h11

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.http_proxy import framing
from pyvpnkit.core.http_proxy.config import ProxyConfig
from pyvpnkit.core.http_proxy.effects import (
    CloseUpstream,
    Connect,
    Effect,
    EndVm,
    ResetVm,
    Send,
    ShutdownUpstream,
    ToVm,
)
from pyvpnkit.core.http_proxy.routing import (
    HOP_BY_HOP,
    ConnectDirect,
    Forward,
    Refuse,
    Route,
    authority,
    plan_request,
    proxy_auth,
    unreachable,
    upstream_request,
)
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.tls import ClientHello, parse_client_hello

MAX_HEADERS = 64 * 1024
HELLO_WAIT = 3.0  # a client silent this long on a TLS port goes by address (server-first)
TRANSITIONS = {
    "hello": {"connecting", "closed"},
    "connecting": {"tunnel", "connect-wait", "closed"},
    "connect-wait": {"tunnel", "closed"},
    "http": {"tunnel", "closed"},
    "tunnel": {"closed"},
    "closed": {"closed"},
}


class ProxyFlow:
    """A VM connection handed to the proxy; the runtime feeds it and performs its effects."""

    def __init__(
        self, config: ProxyConfig, net: NetConfig, mode: str, dst_ip: str, dst_port: int,
        now: float = 0.0,
    ) -> None:
        self.config = config
        self.net = net  # whose routing policy judges what an upstream is asked for
        self.mode = mode
        self.dst_ip = dst_ip
        self.dst_port = dst_port
        self.effects: list[Effect] = []
        self.routes: list[str] = []  # where requests went ("proxy HOST:PORT", "direct ...")
        self.outcomes: list[str] = []  # "proxy", "direct", "local_502"...: the runtime counts them
        self.notes: list[str] = []  # lines worth logging (refused CONNECTs, bad requests)
        self.credit = 0  # VM bytes passed on since the runtime last took them
        self.closed = False
        # Until then a TLS port waits for the ClientHello (then handle_timer goes on).
        self.deadline: float | None = now + HELLO_WAIT if mode == "https" else None
        self._in = bytearray()  # VM bytes not passed on yet (not credited)
        self._vm_eof = False
        self._vm_eof_fed = False
        self._state = "hello" if mode == "https" else "http"
        self._vm = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self._hello = bytearray()
        self._sni: str | None = None
        # The current upstream connection.
        self._conn = 0
        self._next_conn = 1
        self._route: Route | None = None
        self._up: h11.Connection | None = None
        self._connected = False
        self._blocked = False
        self._up_eof = False
        self._waiting: h11.Request | None = None  # held until its upstream connects
        self._direct_connect = False  # a CONNECT we serve ourselves: 200 once connected
        self._discard = False  # the rest of the request body: answered locally
        self._sent_shutdown = False
        self._sent_end = False
        self._method = b""  # of the request in flight upstream
        self.body_left = 0  # Content-Length body bytes the upstream still owes (raw path)
        self._plain_keep = False  # the upstream connection serves another request after it
        self._retry: h11.Request | None = None  # may go again: see _upstream_broken
        self._resend_end = False  # the retried request was complete: send its end too

    # -- from the VM ---------------------------------------------------------

    def vm_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self._state == "tunnel" and not self._in and not self._blocked:
            self.effects.append(Send(self._conn, data))  # an upload: no buffer, no copies
            self.credit += len(data)
            return
        self._in += data
        self._pump()

    def vm_eof(self) -> None:
        self._vm_eof = True
        self._pump()

    # -- from the upstream ---------------------------------------------------

    def upstream_connected(self, conn: int) -> None:
        if conn != self._conn or self.closed:
            return
        self._connected = True
        if self._state == "connecting":  # TLS: ask the proxy, or go straight to relaying
            if self._route is not None and self._route[2]:
                self._start_tunnel(bytes(self._hello))
            else:
                self._send_tls_connect()
            return
        request, self._waiting = self._waiting, None
        if request is not None and not self._direct_connect:
            self._up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
            self._send_up(self._up.send(request))
            if self._resend_end:
                self._resend_end = False
                self._send_up(self._up.send(h11.EndOfMessage()))
        self._pump()

    def upstream_failed(self, conn: int, reason: str) -> None:
        if conn != self._conn or self.closed:
            return
        where = self._describe_route()
        self._conn = 0
        self.notes.append(f"cannot reach {where}: {reason}")
        if self._state == "connecting":
            self._reset()
        else:
            self._local_response(502, f"pyvpnkit: cannot reach {where}: {reason}", close=True)

    def upstream_data(self, conn: int, data: bytes) -> None:
        if conn != self._conn or self.closed:
            return
        if self._state == "tunnel":
            self.effects.append(ToVm(data))
        elif self.body_left:
            self._plain_body(data)
            if not self.body_left:  # the response is complete: the next request may go
                self._pump()
        elif self._up is not None:
            self._retry = None  # the answer has begun: it is the upstream's
            self._up.receive_data(data)
            self._upstream_events()
            self._pump()

    def upstream_eof(self, conn: int) -> None:
        if conn != self._conn or self.closed:
            return
        self._up_eof = True
        if self._state == "tunnel":
            self._end_vm()
        elif self.body_left:
            self._upstream_broken("closed the connection")
        elif self._up is not None:
            self._up.receive_data(b"")
            self._upstream_events()
            self._pump()

    def upstream_reset(self, conn: int) -> None:
        """The upstream connection was aborted: a tunnel's VM side is aborted too."""
        if conn != self._conn or self.closed:
            return
        if self._state == "http":
            self._up_eof = True
            self._upstream_broken("reset the connection")
            self._pump()
        else:
            self.notes.append(f"{self._describe_route()} reset the connection")
            self._reset()

    def upstream_blocked(self, conn: int, blocked: bool) -> None:
        if conn == self._conn:
            self._blocked = blocked
            if not blocked:
                self._pump()

    def handle_timer(self, now: float) -> None:
        """No ClientHello in time: the client may wait for the server; go by address."""
        if self.deadline is not None and now >= self.deadline and self._state == "hello":
            self.notes.append(f"no ClientHello after {HELLO_WAIT:.0f} s: going by address")
            self._route_tls(None)

    def take(self) -> tuple[list[Effect], int]:
        """Effects to perform and VM bytes to credit, since the last call."""
        effects, credit = self.effects, self.credit
        self.effects, self.credit = [], 0
        return effects, credit

    # -- driving -------------------------------------------------------------

    def _pump(self) -> None:
        if self._state == "hello":
            self._read_hello()
        elif self._state == "http":
            self._requests()
        elif self._state == "tunnel":
            self._relay()

    def _relay(self) -> None:
        if self._in and not self._blocked:
            self.effects.append(Send(self._conn, bytes(self._in)))
            self.credit += len(self._in)
            self._in.clear()
        if self._vm_eof and not self._in and not self._sent_shutdown:
            self._sent_shutdown = True
            self.effects.append(ShutdownUpstream(self._conn))

    def _start_tunnel(self, first: bytes, to_vm: bytes = b"") -> None:
        self._go("tunnel")
        self._up = None
        if first:
            self.effects.append(Send(self._conn, first))
        if to_vm:
            self.effects.append(ToVm(to_vm))
        if self._up_eof:
            self._end_vm()
        self._relay()

    # -- transparent TLS -----------------------------------------------------

    def _read_hello(self) -> None:
        self._hello += self._in
        self.credit += len(self._in)
        self._in.clear()
        hello: ClientHello | None
        try:
            hello = parse_client_hello(self._hello)
        except ParseError as exc:
            self.notes.append(f"no TLS ClientHello ({exc}): going by address")
            hello = ClientHello(None)
        if hello is None:
            if not self._vm_eof:
                return
            if not self._hello:
                self._end_vm()
                return
            hello = ClientHello(None)
        self._route_tls(hello.server_name)

    def _route_tls(self, name: str | None) -> None:
        self.deadline = None
        self._sni = name
        cfg = self.config
        if not cfg.allowed(name, self.dst_ip):
            self.notes.append(f"{name or self.dst_ip} is not on the allow list: reset")
            self._reset()
            return
        self._go("connecting")
        if cfg.https is None or cfg.excluded(name, self.dst_ip):
            self._open((self.dst_ip, self.dst_port, True))
            return
        reason = unreachable(self.net, name)
        if reason is not None:
            self.notes.append(f"{reason}: reset")
            self._reset()
            return
        self._open((cfg.https.host, cfg.https.port, False))

    def _send_tls_connect(self) -> None:
        target = authority(self._sni or self.dst_ip, self.dst_port)
        self._up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        headers = [(b"Host", target.encode()), *proxy_auth(self.config.https)]
        request = h11.Request(method="CONNECT", target=target, headers=headers)
        self._send_up(self._up.send(request) + (self._up.send(h11.EndOfMessage()) or b""))
        self._go("connect-wait")

    def _tls_connect_answer(self, up: h11.Connection) -> None:
        try:
            event = up.next_event()
        except h11.RemoteProtocolError as exc:
            self.notes.append(f"{self._describe_route()}: bad answer to CONNECT: {exc}")
            self._reset()
            return
        if isinstance(event, h11.Response):
            if 200 <= event.status_code < 300:
                self._start_tunnel(bytes(self._hello), bytes(up.trailing_data[0]))
                return
            line = f"HTTP/{event.http_version.decode()} {event.status_code} "
            line += event.reason.decode("latin-1")
            self.notes.append(f"{self._describe_route()} refused CONNECT "
                              f"{authority(self._sni or self.dst_ip, self.dst_port)}: {line}")
            self._reset()
        elif event is h11.NEED_DATA and self._up_eof or isinstance(event, h11.ConnectionClosed):
            self.notes.append(f"{self._describe_route()} closed before answering CONNECT")
            self._reset()

    # -- HTTP requests -------------------------------------------------------

    def _requests(self) -> None:
        vm = self._vm
        while self._state == "http" and self._waiting is None:
            if self._in and vm.their_state in (h11.IDLE, h11.SEND_BODY) and not (
                self._blocked and vm.their_state is h11.SEND_BODY and not self._discard
            ):
                vm.receive_data(bytes(self._in))
                self.credit += len(self._in)
                self._in.clear()
            if self._vm_eof and not self._in and not self._vm_eof_fed \
                    and vm.their_state in (h11.IDLE, h11.SEND_BODY):
                self._vm_eof_fed = True
                vm.receive_data(b"")
            try:
                event = vm.next_event()
            except h11.RemoteProtocolError as exc:
                self.notes.append(f"bad request from the VM: {exc}")
                status = exc.error_status_hint
                self._local_response(status, f"pyvpnkit: bad request: {exc}", close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request(event)
            elif isinstance(event, h11.Data):
                if not self._discard:
                    self._send_up(self._upstream().send(event))
            elif isinstance(event, h11.EndOfMessage):
                if self._discard:
                    self._discard = False
                    self._cycle_done()
                elif self._direct_connect:
                    self._direct_connect = False
                    self._answer_connect()
                else:
                    self._send_up(self._upstream().send(event))
                    self._upstream_events()
            elif isinstance(event, h11.ConnectionClosed):
                if vm.our_state not in (h11.SEND_RESPONSE, h11.SEND_BODY):
                    self._finish()
                return  # else the response still owed ends the connection (_cycle_done)

    def _upstream(self) -> h11.Connection:
        assert self._up is not None
        return self._up

    def _request(self, req: h11.Request) -> None:
        plan = plan_request(self.config, self.net, self.mode, self.dst_ip, self.dst_port, req)
        if isinstance(plan, Refuse):
            if plan.status == 502:  # a destination our policy refuses: worth a log line
                self.notes.append(plan.text)
            self._refuse(plan.status, plan.text)
        elif isinstance(plan, ConnectDirect):
            self._direct_connect = True
            self._open(plan.route)
            self._waiting = req
        else:
            self._forward(plan)

    def _forward(self, plan: Forward) -> None:
        """Send the request on its route: now if that connection is up and idle, else later."""
        try:
            out = upstream_request(plan)
        except h11.LocalProtocolError as exc:
            self._refuse(400, f"cannot pass this request on: {exc}")
            return
        self._method = out.method
        up = self._up
        if plan.route == self._route and self._connected and up is not None \
                and up.our_state is h11.IDLE and up.their_state is h11.IDLE:
            self._send_up(up.send(out))
            self._retry = out if framing.retryable(out) else None
            return
        self._open(plan.route)
        self._waiting = out

    def _open(self, route: Route) -> None:
        if self._conn:
            self.effects.append(CloseUpstream(self._conn))
        self._conn = self._next_conn
        self._next_conn += 1
        self._route = route
        self._up = None
        self._connected = self._blocked = self._up_eof = False
        kind = "direct" if route[2] else "proxy"
        self.outcomes.append(kind)
        via = f"{kind} {authority(route[0], route[1])}"
        if via not in self.routes:
            self.routes.append(via)
        self.effects.append(Connect(self._conn, *route))

    def _answer_connect(self) -> None:
        """Our own CONNECT: the host is connected, the VM gets 200 and a tunnel."""
        response = h11.Response(status_code=200, reason=b"Connection established", headers=[])
        self.effects.append(ToVm(self._vm.send(response) or b""))
        self._start_tunnel(bytes(self._vm.trailing_data[0]))

    def _upstream_events(self) -> None:
        up = self._up
        if up is None:
            return
        if self._state == "connect-wait":
            self._tls_connect_answer(up)
            return
        vm = self._vm
        while self._state == "http" and self._up is up:
            try:
                event = up.next_event()
            except h11.RemoteProtocolError as exc:
                self._upstream_broken(f"bad response: {exc}")
                return
            if event is h11.NEED_DATA:
                if self._up_eof:
                    self._upstream_broken("closed the connection")
                return
            if event is h11.PAUSED:
                return
            try:
                if isinstance(event, h11.InformationalResponse):
                    self.effects.append(ToVm(vm.send(event) or b""))
                    if event.status_code == 101:
                        self._start_tunnel(bytes(vm.trailing_data[0]), bytes(up.trailing_data[0]))
                elif isinstance(event, h11.Response):
                    headers = event.headers.raw_items()
                    headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
                    response = h11.Response(status_code=event.status_code, reason=event.reason,
                                            headers=headers)
                    self.effects.append(ToVm(vm.send(response) or b""))
                    if up.their_state is h11.SWITCHED_PROTOCOL:  # a 2xx to CONNECT
                        self._start_tunnel(bytes(vm.trailing_data[0]), bytes(up.trailing_data[0]))
                    elif self._start_plain_body(up, event):
                        return
                elif isinstance(event, h11.Data):
                    self.effects.append(ToVm(vm.send(event) or b""))
                elif isinstance(event, h11.EndOfMessage):
                    self.effects.append(ToVm(vm.send(h11.EndOfMessage()) or b""))
                    self._cycle_done()
                elif isinstance(event, h11.ConnectionClosed):
                    self._upstream_broken("closed the connection")
                    return
            except h11.LocalProtocolError as exc:
                self.notes.append(f"cannot pass on the response: {exc}")
                self._reset()
                return

    def _start_plain_body(self, up: h11.Connection, event: h11.Response) -> bool:
        """A body framed by Content-Length alone passes on raw, counted down (framing.py)."""
        length = framing.plain_length(self._method, event)
        if not length or up.our_state not in (h11.DONE, h11.MUST_CLOSE):
            return False
        framing.announce_body(self._vm, length)
        close = any(k == b"connection" and b"close" in v.lower() for k, v in event.headers)
        self._plain_keep = up.our_state is h11.DONE and event.http_version == b"1.1" \
            and not close
        self.body_left = length
        buffered = bytes(up.trailing_data[0])
        if buffered:
            self._plain_body(buffered)
        return True

    def _plain_body(self, data: bytes) -> None:
        left = self.body_left
        if len(data) < left:  # the hot path: a chunk in the middle of a large body
            self.body_left = left - len(data)
            self.effects.append(ToVm(data))
            return
        take = data if len(data) == left else data[:left]
        self.body_left = 0
        self.effects.append(ToVm(take))
        try:
            self._vm.send(h11.EndOfMessage())  # no bytes: the length framed the body
        except h11.LocalProtocolError as exc:
            self.notes.append(f"cannot pass on the response: {exc}")
            self._reset()
            return
        if self._plain_keep:  # a fresh parser for the connection's next response
            self._up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        else:
            self._drop_upstream()
        self._cycle_done()
        rest = data[len(take) :]
        if rest and self._up is not None:  # bytes after the body: h11 judges them
            self._up.receive_data(rest)
            self._upstream_events()

    def _upstream_broken(self, reason: str) -> None:
        """The upstream ended or misbehaved: say so if we can, else drop it quietly. A reused
        connection closing as an idempotent body-less request went out on it (tinyproxy closes
        after each response) is not an answer: the request goes once more, on a new one."""
        vm = self._vm
        request, self._retry = self._retry, None
        up = self._up
        if request is not None and self._route is not None and up is not None \
                and up.our_state is not h11.SEND_BODY and vm.our_state is h11.SEND_RESPONSE:
            self._open(self._route)
            self._waiting = request
            self._resend_end = True
            return
        if vm.our_state is h11.SEND_RESPONSE:
            self.notes.append(f"{self._describe_route()}: {reason}")
            self._local_response(502, f"pyvpnkit: {self._describe_route()}: {reason}", close=True)
        elif vm.our_state is h11.SEND_BODY:
            self.notes.append(f"{self._describe_route()}: {reason} in the middle of a response")
            self._reset()
        else:
            self._drop_upstream()

    def _cycle_done(self) -> None:
        """A response is complete: keep both connections for the next request if we can."""
        self._retry = None
        up = self._up
        if up is not None and up.our_state is h11.DONE and up.their_state is h11.DONE:
            up.start_next_cycle()
        elif up is not None and up.states != {h11.CLIENT: h11.IDLE, h11.SERVER: h11.IDLE}:
            self._drop_upstream()
        vm = self._vm
        if vm.our_state is h11.DONE and vm.their_state is h11.DONE:
            vm.start_next_cycle()  # the caller's loop (or _pump) reads the next request
        elif vm.our_state is h11.MUST_CLOSE or vm.their_state in (h11.MUST_CLOSE, h11.CLOSED):
            self._finish()
        elif vm.their_state is h11.SEND_BODY:
            self._discard = True  # answered before the body ended: read and drop the rest

    def _drop_upstream(self) -> None:
        if self._conn:
            self.effects.append(CloseUpstream(self._conn))
        self._conn = 0
        self._up = None
        self._route = None
        self._connected = False
        self.body_left = 0

    # -- local answers and endings -------------------------------------------

    def _refuse(self, status: int, text: str) -> None:
        """Answer this request ourselves and drop its body; the connection stays."""
        self._discard = True
        self._local_response(status, text, close=False)

    def _local_response(self, status: int, text: str, close: bool) -> None:
        self.outcomes.append(f"local_{status}")
        response, body = framing.local_answer(status, text, close)
        vm = self._vm
        try:
            out = vm.send(response) or b""
            out += (vm.send(h11.Data(data=body)) or b"") + (vm.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            self._reset()  # a response had already begun
            return
        self.effects.append(ToVm(out))
        if close:
            self._finish()
        elif vm.their_state is h11.DONE:
            self._discard = False
            self._cycle_done()

    def _finish(self) -> None:
        """Done with the VM connection: FIN after what was sent, drop the upstream."""
        self._drop_upstream()
        self._end_vm()
        self._go("closed")
        self.closed = True

    def _end_vm(self) -> None:
        if not self._sent_end:
            self._sent_end = True
            self.effects.append(EndVm())

    def _reset(self) -> None:
        self._drop_upstream()
        self.effects.append(ResetVm())
        self._go("closed")
        self.closed = True

    # -- helpers -------------------------------------------------------------

    def _go(self, state: str) -> None:
        assert state in TRANSITIONS[self._state], f"{self._state} -> {state}"
        self._state = state

    def _send_up(self, data: bytes | None) -> None:
        if data:
            self.effects.append(Send(self._conn, data))

    def _describe_route(self) -> str:
        if self._route is None:
            return "the upstream"
        host, port, direct = self._route
        return f"{'' if direct else 'proxy '}{authority(host, port)}"

