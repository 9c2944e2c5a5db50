"""Our own answers (built-in names, hosts file) are kept as wire bytes: a later
asker gets exactly what dnspython would have built for its query."""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import ip4
from pyvpnkit.core.dns import DnsServer

from .test_dns_server import VM, make_server, one_answer


def ask(server: DnsServer, wire: bytes, transport: str = "udp") -> bytes:
    server.handle_query(wire, VM, transport, 0.0)
    (answer,) = server.drain()
    return answer.data  # type: ignore[union-attr]


def spelled(name: str, flips: list[bool]) -> str:
    flips = flips + [False] * (len(name) - len(flips))
    return "".join(c.upper() if f else c for c, f in zip(name, flips[: len(name)], strict=True))


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["host.docker.internal", "gateway.docker.internal", "host.internal",
                          "3.65.168.192.in-addr.arpa", "local.test"]),
    rdtype=st.sampled_from(["A", "AAAA", "PTR", "MX", "ANY"]),
    flips=st.lists(st.booleans(), max_size=30),
    first_id=st.integers(0, 0xFFFF),
    second_id=st.integers(0, 0xFFFF),
    edns=st.sampled_from([-1, 0]),
    payload=st.sampled_from([512, 1232, 4096]),
    rd=st.booleans(),
    transport=st.sampled_from(["udp", "tcp"]),
)
def test_a_kept_answer_is_what_a_fresh_server_builds(
    name: str, rdtype: str, flips: list[bool], first_id: int, second_id: int, edns: int,
    payload: int, rd: bool, transport: str,
) -> None:  # fmt: skip
    def q(qid: int, qname: str) -> bytes:
        m = dns.message.make_query(qname, rdtype, id=qid, use_edns=edns, payload=payload)
        if not rd:
            m.flags &= ~dns.flags.RD
        return m.to_wire()

    hosts = "192.0.2.7 local.test\n"
    warm, fresh = make_server(hosts_text=hosts), make_server(hosts_text=hosts)
    ask(warm, q(first_id, name), transport)
    second = q(second_id, spelled(name, flips))
    assert ask(warm, second, transport) == ask(fresh, second, transport)


def test_the_second_asker_gets_the_kept_answer() -> None:
    server = make_server()
    first = dns.message.make_query("host.docker.internal", "A", id=1).to_wire()
    assert dns.message.from_wire(ask(server, first)).answer[0][0].address == "192.168.65.2"
    # Mark the kept answer (the address's last byte): later askers get the mark.
    ((key, wire),) = server._local_wire.items()
    server._local_wire[key] = wire.replace(bytes([192, 168, 65, 2]), bytes([192, 168, 65, 99]))
    for qid in (2, 3):
        wire = dns.message.make_query("host.docker.internal", "A", id=qid).to_wire()
        reply = dns.message.from_wire(ask(server, wire))
        assert reply.id == qid and reply.answer[0][0].address == "192.168.65.99"


def test_kept_answers_follow_the_hosts_file_and_vm_addresses() -> None:
    server = make_server(hosts_text="192.0.2.7 db.test\n")
    server.handle_query(dns.message.make_query("db.test", "A").to_wire(), VM, "udp", 0.0)
    assert one_answer(server).answer[0][0].address == "192.0.2.7"
    server.load_hosts("192.0.2.8 db.test\n")
    server.handle_query(dns.message.make_query("db.test", "A").to_wire(), VM, "udp", 0.0)
    assert one_answer(server).answer[0][0].address == "192.0.2.8"

    vm = dns.message.make_query("vm.internal", "A").to_wire()
    server.handle_query(vm, VM, "udp", 0.0)
    assert one_answer(server).answer[0][0].to_text() == "192.168.65.3"
    server.set_vm_addresses([ip4("192.168.65.9")])
    server.handle_query(vm, VM, "udp", 0.0)
    assert one_answer(server).answer[0][0].to_text() == "192.168.65.9"


@pytest.mark.parametrize("edns", [-1, 0])
def test_a_kept_answer_still_obeys_the_askers_udp_limit(edns: int) -> None:
    many = "".join(f"192.0.2.{i} big.test\n" for i in range(1, 120))
    server = make_server(hosts_text=many)
    for _ in range(2):
        wire = dns.message.make_query("big.test", "A", use_edns=edns, payload=1232).to_wire()
        reply = ask(server, wire)
        assert len(reply) <= (512 if edns < 0 else 1232)
        assert dns.message.from_wire(reply).flags & dns.flags.TC
    full = ask(server, dns.message.make_query("big.test", "A").to_wire(), "tcp")
    assert len(dns.message.from_wire(full).answer[0]) == 119
