"""HostResolver on a real asyncio loop: `localhost` through the real getaddrinfo
(it is in /etc/hosts, so no DNS server is asked), everything else with fake
lookup functions or a patched getaddrinfo. No test resolves a real name."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns import DnsAnswer, DnsServer, HostResolve
from pyvpnkit.core.dns.hostmode import NODATA, NXDOMAIN, SERVFAIL
from pyvpnkit.runtime.host_resolver import HostResolver, Result, lookup_addresses

VM = ("192.168.65.3", 40000)


class Harness:
    """A host-mode DnsServer whose HostResolve effects a HostResolver performs."""

    def __init__(self, **kw: object) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = DnsServer(NetConfig(), [], mode="host", host_timeout=30.0)
        self.answers: asyncio.Queue[dns.message.Message] = asyncio.Queue()
        self.resolver = HostResolver(self.loop, self.server, self.pump, **kw)  # type: ignore[arg-type]

    def pump(self) -> None:
        for effect in self.server.drain():
            if isinstance(effect, HostResolve):
                self.resolver.execute(effect)
            elif isinstance(effect, DnsAnswer):
                self.answers.put_nowait(dns.message.from_wire(effect.data))

    def ask(self, name: str, rdtype: str = "A", qid: int = 1) -> None:
        wire = dns.message.make_query(name, rdtype, id=qid).to_wire()
        self.server.handle_query(wire, VM, "udp", self.loop.time())
        self.pump()

    async def answer(self) -> dns.message.Message:
        return await asyncio.wait_for(self.answers.get(), 5)


def run(body: Callable[[], object]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), 15)  # type: ignore[arg-type]

    asyncio.run(main())


def test_localhost_from_the_real_resolver() -> None:
    async def body() -> None:
        h = Harness()
        try:
            h.ask("localhost", "A", qid=7)
            msg = await h.answer()
            assert msg.id == 7 and msg.rcode() == dns.rcode.NOERROR
            assert [rd.to_text() for rd in msg.answer[0]] == ["127.0.0.1"]
            h.ask("1.0.0.127.in-addr.arpa", "PTR", qid=8)
            msg = await h.answer()
            assert msg.id == 8 and msg.answer[0][0].to_text() == "localhost."
        finally:
            h.resolver.close()

    run(body)


def test_slow_lookup_does_not_block_others_and_times_out() -> None:
    release = threading.Event()

    def lookup(name: str, rdtype: int) -> Result:
        if name == "slow.example":
            release.wait(10)
        return ["10.0.0.1"], None

    async def body() -> None:
        h = Harness(lookup=lookup, timeout=0.5)
        try:
            h.ask("slow.example", qid=1)
            for i in range(2, 6):
                h.ask(f"fast{i}.example", qid=i)
            fast = [await h.answer() for _ in range(4)]
            assert sorted(m.id for m in fast) == [2, 3, 4, 5]
            assert all(m.rcode() == dns.rcode.NOERROR for m in fast)
            slow = await h.answer()  # after the runtime's timeout
            assert slow.id == 1 and slow.rcode() == dns.rcode.SERVFAIL
            assert h.resolver.busy == 1  # its thread is still stuck in "libc"
        finally:
            release.set()
            h.resolver.close()

    run(body)


def test_too_many_stuck_lookups_fail_at_once_and_raising_lookup_is_servfail() -> None:
    release = threading.Event()

    def lookup(name: str, rdtype: int) -> Result:
        if name == "boom.example":
            raise RuntimeError("broken nss module")
        release.wait(10)
        return ["10.0.0.1"], None

    async def body() -> None:
        h = Harness(lookup=lookup, timeout=5.0, max_threads=2, max_busy=2)
        try:
            h.ask("stuck1.example", qid=1)
            h.ask("stuck2.example", qid=2)
            h.ask("boom.example", qid=3)  # over max_busy: SERVFAIL without a thread
            msg = await h.answer()
            assert msg.id == 3 and msg.rcode() == dns.rcode.SERVFAIL
            release.set()
            done = [await h.answer() for _ in range(2)]
            assert sorted(m.id for m in done) == [1, 2]
            h.ask("boom.example", qid=4)
            msg = await h.answer()
            assert msg.id == 4 and msg.rcode() == dns.rcode.SERVFAIL
        finally:
            release.set()
            h.resolver.close()

    run(body)


@pytest.mark.parametrize(
    ("v6_error", "v4_error", "expected"),
    [
        (socket.EAI_NONAME, None, (None, NODATA)),  # glibc files backend: name has only IPv4
        (socket.EAI_NONAME, socket.EAI_NONAME, (None, NXDOMAIN)),
        (socket.EAI_NODATA, None, (None, NODATA)),
        (socket.EAI_ADDRFAMILY, None, (None, NODATA)),
        (socket.EAI_AGAIN, None, (None, SERVFAIL)),
        (socket.EAI_FAIL, None, (None, SERVFAIL)),
        (socket.EAI_NONAME, socket.EAI_AGAIN, (None, SERVFAIL)),  # existence unknown
        (None, None, (["fd00::1"], None)),
    ],
)
def test_getaddrinfo_errors_classified(
    monkeypatch: pytest.MonkeyPatch,
    v6_error: int | None,
    v4_error: int | None,
    expected: Result,
) -> None:
    calls: list[tuple[object, int]] = []

    def fake(host: object, port: object, family: int, kind: int) -> list[object]:
        calls.append((host, family))
        error = v6_error if family == socket.AF_INET6 else v4_error
        if error is not None:
            raise socket.gaierror(error, "fake")
        if family == socket.AF_INET6:
            sockaddr: tuple[object, ...] = ("fd00::1", 0, 0, 0)
            return [(family, kind, 6, "", sockaddr)] * 2  # duplicates collapse
        return [(family, kind, 6, "", ("10.0.0.1", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert lookup_addresses("name.example", socket.AF_INET6) == expected
    assert calls[0] == (b"name.example", socket.AF_INET6)
