"""DnsServer driven with dnspython-built bytes and a fake clock."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.dns import DnsAnswer, DnsServer, UpstreamQuery

CFG = NetConfig()
UP1 = ("10.0.0.53", 53)
UP2 = ("10.0.1.53", 53)
VM = ("192.168.65.3", 40000)
VM2 = ("192.168.65.4", 40000)


def make_server(upstreams: list[tuple[str, int]] | None = None, **kw: object) -> DnsServer:
    server = DnsServer(CFG, [UP1, UP2] if upstreams is None else upstreams, **kw)  # type: ignore[arg-type]
    server.set_vm_addresses([ip4("192.168.65.3")])
    return server


def query(name: str, rdtype: str = "A", qid: int = 1234, **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, id=qid, **kw).to_wire()  # type: ignore[arg-type]


def effects(server: DnsServer) -> tuple[list[DnsAnswer], list[UpstreamQuery]]:
    out = server.drain()
    answers = [e for e in out if isinstance(e, DnsAnswer)]
    ups = [e for e in out if isinstance(e, UpstreamQuery)]
    assert len(answers) + len(ups) == len(out)
    return answers, ups


def one_answer(server: DnsServer) -> dns.message.Message:
    answers, ups = effects(server)
    assert ups == [] and len(answers) == 1
    return dns.message.from_wire(answers[0].data)


def one_upstream(server: DnsServer) -> UpstreamQuery:
    answers, ups = effects(server)
    assert answers == [] and len(ups) == 1
    return ups[0]


def fake_reply(uq: UpstreamQuery, *records: str, section: str = "answer", rcode: int = 0) -> bytes:
    """An upstream answer to uq: records are 'name ttl class type rdata' lines."""
    q = dns.message.from_wire(uq.data)
    r = dns.message.make_response(q, recursion_available=True)
    r.set_rcode(rcode)
    for text in records:
        getattr(r, section).append(dns.rrset.from_text(*text.split(None, 4)))
    return r.to_wire(max_size=65535)


# -- built-in names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        ("host.docker.internal", "192.168.65.2"),
        ("HOST.Docker.INTERNAL.", "192.168.65.2"),
        ("host.internal", "192.168.65.2"),
        ("gateway.docker.internal", "192.168.65.1"),
        ("gateway.internal", "192.168.65.1"),
        ("vm.internal", "192.168.65.3"),
    ],
)
def test_builtin_a(name: str, addr: str) -> None:
    server = make_server()
    server.handle_query(query(name, qid=4321), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.id == 4321
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.AA and msg.flags & dns.flags.RD
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.question[0].name.to_text() == dns.name.from_text(name).to_text()  # case echoed
    [rrset] = msg.answer
    assert rrset.ttl == 0
    assert [rd.to_text() for rd in rrset] == [addr]


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "SRV"])
def test_builtin_missing_type_is_nodata(rdtype: str) -> None:
    server = DnsServer(NetConfig(ipv6=None), [UP1])  # no IPv6: no AAAA either
    server.handle_query(query("host.docker.internal", rdtype), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []


def test_builtin_names_answer_aaaa_with_ipv6() -> None:
    server = DnsServer(NetConfig(), [UP1])
    server.handle_query(query("host.docker.internal", "AAAA"), VM, "udp", 0.0)
    assert [rd.to_text() for rd in one_answer(server).answer[0]] == ["fd42:7076:6b69::2"]
    server.handle_query(query("gateway.docker.internal", "ANY"), VM, "udp", 0.0)
    got = sorted(rd.to_text() for rrset in one_answer(server).answer for rd in rrset)
    assert got == ["192.168.65.1", "fd42:7076:6b69::1"]


def test_config_names_with_trailing_dot_and_case() -> None:
    cfg = NetConfig(host_names=("My.Host.Test.",), gateway_names=(), vm_names=())
    server = DnsServer(cfg, [UP1])
    server.handle_query(query("my.host.test"), VM, "udp", 0.0)
    assert [rd.to_text() for rd in one_answer(server).answer[0]] == ["192.168.65.2"]
    server.handle_query(query("gateway.internal"), VM, "udp", 0.0)
    one_upstream(server)  # not configured: forwarded


def test_builtin_ptr_and_vm_address_change() -> None:
    server = make_server()
    server.handle_query(query("2.65.168.192.in-addr.arpa", "PTR"), VM, "udp", 0.0)
    assert one_answer(server).answer[0][0].to_text() == "host.docker.internal."
    server.set_vm_addresses([ip4("192.168.65.9")])
    server.handle_query(query("vm.internal"), VM, "udp", 0.0)
    assert one_answer(server).answer[0][0].to_text() == "192.168.65.9"


def test_builtin_over_tcp_answers_on_tcp() -> None:
    server = make_server()
    server.handle_query(query("gateway.internal"), "flow-7", "tcp", 0.0)
    [answer] = server.drain()
    assert isinstance(answer, DnsAnswer)
    assert (answer.client, answer.transport) == ("flow-7", "tcp")


def test_edns_query_gets_opt_in_local_answer() -> None:
    server = make_server()
    server.handle_query(query("host.internal", use_edns=0, payload=1232), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.edns == 0


# -- hosts file -------------------------------------------------------------------


def test_hosts_file_and_reload() -> None:
    server = make_server(hosts_text="10.1.2.3 db.example db\nfd00::7 db.example\n")
    server.handle_query(query("DB.example", "A"), VM, "udp", 0.0)
    assert [rd.to_text() for rd in one_answer(server).answer[0]] == ["10.1.2.3"]
    server.handle_query(query("db.example", "AAAA"), VM, "udp", 0.0)
    assert [rd.to_text() for rd in one_answer(server).answer[0]] == ["fd00::7"]
    server.handle_query(query("db.example", "MX"), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    server.load_hosts("10.9.9.9 other.example\n")
    server.handle_query(query("db.example"), VM, "udp", 0.0)
    one_upstream(server)  # no longer local


# -- forwarding -------------------------------------------------------------------

FORWARD_CASES = [
    ("example.com", "A", ["example.com. 300 IN A 93.184.216.34"], "answer"),
    ("example.com", "AAAA", ["example.com. 300 IN AAAA 2606:2800:220:1::1"], "answer"),
    ("example.com", "MX", ["example.com. 300 IN MX 10 mail.example.com."], "answer"),
    ("example.com", "TXT", ['example.com. 300 IN TXT "v=spf1 -all" "second string"'], "answer"),
    (
        "_sip._udp.example.com",
        "SRV",
        ["_sip._udp.example.com. 60 IN SRV 0 5 5060 sip.example.com."],
        "answer",
    ),
    (
        "34.216.184.93.in-addr.arpa",
        "PTR",
        ["34.216.184.93.in-addr.arpa. 60 IN PTR host.example.com."],
        "answer",
    ),
    (
        "example.com",
        "SOA",
        ["example.com. 60 IN SOA ns.example.com. admin.example.com. 1 7200 3600 1209600 300"],
        "answer",
    ),
    ("www.example.com", "CNAME", ["www.example.com. 60 IN CNAME example.com."], "answer"),
    (
        "www.example.com",
        "A",
        ["www.example.com. 60 IN CNAME example.com.", "example.com. 60 IN A 93.184.216.34"],
        "answer",
    ),
    (
        "nothing.example.com",
        "A",
        ["example.com. 60 IN SOA ns.example.com. admin.example.com. 1 7200 3600 1209600 300"],
        "authority",
    ),
]


@pytest.mark.parametrize(("name", "rdtype", "records", "section"), FORWARD_CASES)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_forward_unchanged_with_id_restored(
    name: str, rdtype: str, records: list[str], section: str, transport: str
) -> None:
    server = make_server()
    vm_query = query(name, rdtype, qid=0xBEEF)
    server.handle_query(vm_query, VM, transport, 10.0)
    uq = one_upstream(server)
    assert uq.server == UP1 and uq.transport == transport
    assert uq.data[2:] == vm_query[2:]  # forwarded unchanged apart from the id
    up_id = struct.unpack("!H", uq.data[:2])[0]
    reply = fake_reply(uq, *records, section=section)
    assert struct.unpack("!H", reply[:2])[0] == up_id
    server.handle_upstream_reply(uq.token, reply, 10.05)
    [answer] = server.drain()
    assert isinstance(answer, DnsAnswer)
    assert (answer.client, answer.transport) == (VM, transport)
    assert answer.data == b"\xbe\xef" + reply[2:]
    assert server.next_deadline() is None


def test_nxdomain_is_forwarded() -> None:
    server = make_server()
    server.handle_query(query("nope.example"), VM, "udp", 0.0)
    uq = one_upstream(server)
    server.handle_upstream_reply(uq.token, fake_reply(uq, rcode=dns.rcode.NXDOMAIN), 0.1)
    assert one_answer(server).rcode() == dns.rcode.NXDOMAIN


def test_equal_ids_from_two_clients_do_not_collide() -> None:
    server = make_server()
    server.handle_query(query("a.example", qid=7), VM, "udp", 0.0)
    server.handle_query(query("b.example", qid=7), VM2, "udp", 0.0)
    _, ups = effects(server)
    assert len(ups) == 2 and ups[0].data[:2] != ups[1].data[:2]
    # Answer out of order.
    server.handle_upstream_reply(ups[1].token, fake_reply(ups[1], "b.example. 1 IN A 2.2.2.2"), 0.1)
    server.handle_upstream_reply(ups[0].token, fake_reply(ups[0], "a.example. 1 IN A 1.1.1.1"), 0.2)
    got = {}
    for a in server.drain():
        assert isinstance(a, DnsAnswer)
        msg = dns.message.from_wire(a.data)
        assert msg.id == 7
        got[a.client] = (msg.question[0].name.to_text(), msg.answer[0][0].to_text())
    assert got == {VM: ("a.example.", "1.1.1.1"), VM2: ("b.example.", "2.2.2.2")}


def test_upstream_ids_unique_even_when_source_repeats() -> None:
    ids = iter([5, 5, 5, 6])
    server = make_server(new_id=lambda: next(ids))
    server.handle_query(query("a.example", qid=1), VM, "udp", 0.0)
    server.handle_query(query("b.example", qid=1), VM, "udp", 0.0)
    _, ups = effects(server)
    assert [u.data[:2] for u in ups] == [b"\x00\x05", b"\x00\x06"]


def test_udp_retransmission_is_not_forwarded_twice() -> None:
    server = make_server()
    server.handle_query(query("a.example", qid=9), VM, "udp", 0.0)
    uq = one_upstream(server)
    server.handle_query(query("a.example", qid=9), VM, "udp", 0.5)
    assert server.drain() == []
    server.handle_upstream_reply(uq.token, fake_reply(uq, "a.example. 1 IN A 1.1.1.1"), 0.6)
    one_answer(server)
    server.handle_query(query("a.example", qid=9), VM, "udp", 0.7)
    one_upstream(server)  # done: a new query is forwarded again


def test_mismatched_replies_are_ignored() -> None:
    server = make_server()
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    uq = one_upstream(server)
    good = fake_reply(uq, "a.example. 1 IN A 1.1.1.1")
    wrong_id = bytes([good[0] ^ 0xFF]) + good[1:]
    server.handle_upstream_reply(uq.token, wrong_id, 0.1)
    other = dns.message.make_response(dns.message.make_query("b.example", "A"))
    other.id = struct.unpack("!H", uq.data[:2])[0]
    server.handle_upstream_reply(uq.token, other.to_wire(), 0.1)
    server.handle_upstream_reply(uq.token, uq.data, 0.1)  # a query, not a response
    server.handle_upstream_reply(uq.token, b"\x00" * 5, 0.1)
    server.handle_upstream_reply(9999, good, 0.1)  # unknown token
    assert server.drain() == []
    server.handle_upstream_reply(uq.token, good, 0.2)
    assert one_answer(server).answer[0][0].to_text() == "1.1.1.1"


def test_resend_to_second_server_after_one_second() -> None:
    server = make_server()
    server.handle_query(query("a.example"), VM, "udp", 100.0)
    first = one_upstream(server)
    assert first.server == UP1
    assert server.next_deadline() == pytest.approx(101.0)
    server.handle_timer(100.9)
    assert server.drain() == []
    server.handle_timer(101.0)
    second = one_upstream(server)
    assert second.server == UP2 and second.data == first.data
    server.handle_upstream_reply(
        second.token, fake_reply(second, "a.example. 1 IN A 1.1.1.1"), 101.2
    )
    one_answer(server)
    # The late answer of the first server changes nothing.
    server.handle_upstream_reply(first.token, fake_reply(first, "a.example. 1 IN A 9.9.9.9"), 101.3)
    assert server.drain() == []


def test_late_answer_of_first_server_still_wins() -> None:
    server = make_server()
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    first = one_upstream(server)
    server.handle_timer(1.0)
    one_upstream(server)
    server.handle_upstream_reply(first.token, fake_reply(first, "a.example. 1 IN A 1.1.1.1"), 1.5)
    assert one_answer(server).answer[0][0].to_text() == "1.1.1.1"


def test_servfail_after_overall_timeout() -> None:
    server = make_server()
    server.handle_query(query("slow.example", qid=77, use_edns=0), VM, "udp", 0.0)
    servers = [one_upstream(server).server]
    now = 0.0
    while (deadline := server.next_deadline()) is not None and deadline < 5.0:
        now = deadline
        server.handle_timer(now)
        servers.append(one_upstream(server).server)
    assert servers == [UP1, UP2, UP1, UP2, UP1]
    assert server.next_deadline() == pytest.approx(5.0)
    server.handle_timer(5.0)
    msg = one_answer(server)
    assert msg.id == 77 and msg.rcode() == dns.rcode.SERVFAIL and msg.edns == 0
    assert server.next_deadline() is None


def test_dead_server_is_demoted_until_it_answers() -> None:
    server = make_server(down_after=3)
    now = 0.0
    for i in range(3):
        server.handle_query(query(f"q{i}.example"), VM, "udp", now)
        assert one_upstream(server).server == UP1  # UP1 stays silent
        now += 1.0
        server.handle_timer(now)
        second = one_upstream(server)
        assert second.server == UP2
        server.handle_upstream_reply(second.token, fake_reply(second), now + 0.01)
        one_answer(server)
    assert server.forwarder.is_down(UP1)
    # Now the working server is asked first: no 1 s stall.
    server.handle_query(query("fast.example"), VM, "udp", now)
    uq = one_upstream(server)
    assert uq.server == UP2
    server.handle_upstream_reply(uq.token, fake_reply(uq), now + 0.01)
    one_answer(server)
    # When UP2 is silent, UP1 is still tried, and answering brings it back.
    server.handle_query(query("again.example"), VM, "udp", now)
    assert one_upstream(server).server == UP2
    server.handle_timer(now + 1.0)
    uq = one_upstream(server)
    assert uq.server == UP1
    server.handle_upstream_reply(uq.token, fake_reply(uq), now + 1.1)
    one_answer(server)
    assert not server.forwarder.is_down(UP1)
    server.handle_query(query("back.example"), VM, "udp", now + 2)
    assert one_upstream(server).server == UP1


def test_upstream_error_fails_over_at_once_and_servfails_when_all_fail() -> None:
    server = make_server()
    server.handle_query(query("a.example"), "flow", "tcp", 0.0)
    first = one_upstream(server)
    server.handle_upstream_error(first.token, 0.01)
    second = one_upstream(server)
    assert second.server == UP2 and second.transport == "tcp"
    server.handle_upstream_error(second.token, 0.02)
    msg = one_answer(server)
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert server.next_deadline() is None


def test_refused_tries_next_server_then_returns_fallback() -> None:
    server = make_server()
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    first = one_upstream(server)
    server.handle_upstream_reply(first.token, fake_reply(first, rcode=dns.rcode.REFUSED), 0.01)
    second = one_upstream(server)
    assert second.server == UP2
    server.handle_upstream_reply(second.token, fake_reply(second, rcode=dns.rcode.SERVFAIL), 0.02)
    assert one_answer(server).rcode() == dns.rcode.SERVFAIL
    # ...and a good second answer beats the first server's REFUSED.
    server.handle_query(query("b.example"), VM, "udp", 1.0)
    first = one_upstream(server)
    server.handle_upstream_reply(first.token, fake_reply(first, rcode=dns.rcode.REFUSED), 1.01)
    second = one_upstream(server)
    server.handle_upstream_reply(
        second.token, fake_reply(second, "b.example. 1 IN A 2.2.2.2"), 1.02
    )
    assert one_answer(server).answer[0][0].to_text() == "2.2.2.2"


def test_no_upstreams_and_full_table_servfail() -> None:
    server = make_server(upstreams=[])
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    assert one_answer(server).rcode() == dns.rcode.SERVFAIL
    server = make_server(max_pending=1)
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    one_upstream(server)
    server.handle_query(query("b.example"), VM, "udp", 0.0)
    assert one_answer(server).rcode() == dns.rcode.SERVFAIL


def test_set_upstreams_replaces_servers() -> None:
    server = make_server()
    server.set_upstreams([("10.5.5.5", 5353)])
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    assert one_upstream(server).server == ("10.5.5.5", 5353)


def test_query_in_flight_finishes_on_its_server_after_the_upstreams_change() -> None:
    """resolv.conf changed mid-query: the resend and the answer stay with the old server."""
    server = make_server([UP1], cache_size=10)
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    first = one_upstream(server)
    server.handle_upstream_reply(first.token, fake_reply(first, "a.example. 60 IN A 10.9.9.1"), 0.1)
    effects(server)  # cached
    server.handle_query(query("b.example"), VM, "udp", 0.2)
    old = one_upstream(server)
    server.set_upstreams([UP2])
    server.handle_timer(1.5)  # the resend interval passed
    resend = one_upstream(server)
    assert (old.server, resend.server) == (UP1, UP1)
    reply = fake_reply(resend, "b.example. 60 IN A 10.9.9.2")
    server.handle_upstream_reply(resend.token, reply, 1.6)
    assert one_answer(server).answer[0][0].address == "10.9.9.2"
    server.handle_query(query("a.example"), VM, "udp", 2.0)  # not from the old cache
    assert one_upstream(server).server == UP2


# -- size limits ------------------------------------------------------------------


def big_txt_reply(uq: UpstreamQuery, name: str, size: int) -> bytes:
    """An upstream reply of at least `size` bytes made of TXT records."""
    records = []
    wire = b""
    i = 0
    while len(wire) < size:
        records.append(f'{name}. 60 IN TXT "{i:03d}{"x" * 90}"')
        wire = fake_reply(uq, *records)
        i += 1
    return wire


@pytest.mark.parametrize(
    ("edns_payload", "size", "truncated"),
    [
        (None, 400, False),
        (None, 600, True),
        (1232, 1000, False),
        (1232, 1300, True),
        (4096, 1400, False),  # within MTU - 28
        (4096, 1600, True),  # bigger than one frame: capped
    ],
)
def test_udp_size_limit(edns_payload: int | None, size: int, truncated: bool) -> None:
    server = make_server()
    kw: dict[str, object] = {} if edns_payload is None else {"use_edns": 0, "payload": edns_payload}
    server.handle_query(query("big.example", "TXT", qid=55, **kw), VM, "udp", 0.0)
    uq = one_upstream(server)
    reply = big_txt_reply(uq, "big.example", size)
    server.handle_upstream_reply(uq.token, reply, 0.1)
    [answer] = server.drain()
    assert isinstance(answer, DnsAnswer)
    msg = dns.message.from_wire(answer.data)
    assert msg.id == 55 and msg.question[0].name.to_text() == "big.example."
    limit = 512 if edns_payload is None else min(edns_payload, CFG.mtu - 28)
    assert len(answer.data) <= limit
    assert bool(msg.flags & dns.flags.TC) == truncated
    if truncated:
        assert msg.answer == [] and msg.authority == []
        assert (msg.edns == 0) == (edns_payload is not None)
    else:
        assert answer.data[2:] == reply[2:]


def test_big_answer_in_full_over_tcp() -> None:
    server = make_server()
    server.handle_query(query("big.example", "TXT"), "flow", "tcp", 0.0)
    uq = one_upstream(server)
    reply = big_txt_reply(uq, "big.example", 3000)
    server.handle_upstream_reply(uq.token, reply, 0.1)
    [answer] = server.drain()
    assert isinstance(answer, DnsAnswer)
    assert answer.data[2:] == reply[2:]
    assert not dns.message.from_wire(answer.data).flags & dns.flags.TC


def test_upstream_tc_is_kept_over_udp() -> None:
    server = make_server()
    server.handle_query(query("big.example", "TXT"), VM, "udp", 0.0)
    uq = one_upstream(server)
    r = dns.message.from_wire(fake_reply(uq))
    r.flags |= dns.flags.TC
    server.handle_upstream_reply(uq.token, r.to_wire(), 0.1)
    assert one_answer(server).flags & dns.flags.TC


def test_local_answer_obeys_udp_limit() -> None:
    hosts = "".join(f"10.0.{i // 256}.{i % 256} many.example\n" for i in range(60))
    server = make_server(hosts_text=hosts)
    server.handle_query(query("many.example"), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.flags & dns.flags.TC and msg.answer == []
    server.handle_query(query("many.example"), "flow", "tcp", 0.0)
    msg = one_answer(server)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 60
    server.handle_query(query("many.example", use_edns=0, payload=600), VM, "udp", 0.0)
    answers, _ = effects(server)
    assert len(answers[0].data) <= 600
    msg = dns.message.from_wire(answers[0].data)
    assert msg.flags & dns.flags.TC and msg.edns == 0
    server.handle_query(query("many.example", use_edns=0, payload=1400), VM, "udp", 0.0)
    msg = one_answer(server)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 60


# -- bad queries ------------------------------------------------------------------


def test_garbage_and_responses_are_dropped() -> None:
    server = make_server()
    server.handle_query(b"", VM, "udp", 0.0)
    server.handle_query(b"\x01\x02\x03", VM, "udp", 0.0)
    response = dns.message.make_response(dns.message.make_query("a.example", "A"))
    server.handle_query(response.to_wire(), VM, "udp", 0.0)
    assert server.drain() == []
    assert server.stats["dropped"] == 3


def test_unparsable_body_gets_formerr() -> None:
    server = make_server()
    bad = struct.pack("!6H", 0x1111, 0x0100, 1, 0, 0, 0) + b"\x3fabc"  # label runs off the end
    server.handle_query(bad, VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.id == 0x1111 and msg.rcode() == dns.rcode.FORMERR


def test_multiple_questions_formerr() -> None:
    server = make_server()
    q = dns.message.make_query("a.example", "A", id=3)
    q.question.append(dns.rrset.RRset(dns.name.from_text("b.example"), 1, 1))
    server.handle_query(q.to_wire(), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.id == 3 and msg.rcode() == dns.rcode.FORMERR


def test_zero_questions_formerr() -> None:
    server = make_server()
    server.handle_query(struct.pack("!6H", 8, 0x0100, 0, 0, 0, 0), VM, "udp", 0.0)
    assert one_answer(server).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS])
def test_other_opcodes_notimp(opcode: int) -> None:
    server = make_server()
    q = dns.message.make_query("a.example", "SOA", id=12)
    q.set_opcode(opcode)
    server.handle_query(q.to_wire(), VM, "udp", 0.0)
    msg = one_answer(server)
    assert msg.id == 12 and msg.rcode() == dns.rcode.NOTIMP and msg.opcode() == opcode


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["udp", "tcp"]))
def test_arbitrary_bytes_never_raise(data: bytes, transport: str) -> None:
    server = make_server()
    server.handle_query(data, VM, transport, 0.0)
    for effect in server.drain():
        assert isinstance(effect, DnsAnswer | UpstreamQuery)
        if isinstance(effect, DnsAnswer):
            assert len(effect.data) >= 12


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_upstream_replies_never_raise(data: bytes) -> None:
    server = make_server()
    server.handle_query(query("a.example"), VM, "udp", 0.0)
    uq = one_upstream(server)
    server.handle_upstream_reply(uq.token, data, 0.1)
    server.handle_upstream_reply(uq.token, uq.data[:2] + data, 0.1)
    for effect in server.drain():
        if isinstance(effect, DnsAnswer):
            assert effect.data[:2] == b"\x04\xd2"


SEEDS = [
    query("host.docker.internal"),
    query("example.com", "MX", use_edns=0, payload=1232),
    dns.message.make_query(
        "example.com", "A", use_edns=0, options=[dns.edns.ECSOption("10.0.0.0", 24)]
    ).to_wire(),
    query("2.65.168.192.in-addr.arpa", "PTR"),
]


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_mutated_queries_never_raise(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = data[: len(data) - cut] if cut < len(data) else data
    server = make_server()
    for transport in ("udp", "tcp"):
        server.handle_query(bytes(data), VM, transport, 0.0)
    server.handle_timer(10.0)
    for effect in server.drain():
        assert isinstance(effect, DnsAnswer | UpstreamQuery)
        if isinstance(effect, DnsAnswer) and effect.transport == "udp":
            assert len(effect.data) <= CFG.mtu - 28


def test_unusual_query_shape_is_still_forwarded_unchanged() -> None:
    """A query with a record beside OPT (here a second additional) leaves the fast path;
    dnspython reads it and it is forwarded byte for byte all the same."""
    msg = dns.message.make_query("example.com", "A", id=0x1111, use_edns=True)
    msg.additional.append(dns.rrset.from_text("extra.example.", 0, "IN", "A", "1.2.3.4"))
    vm_query = msg.to_wire()
    server = make_server()
    server.handle_query(vm_query, VM, "udp", 10.0)
    uq = one_upstream(server)
    assert uq.data[2:] == vm_query[2:]
    server.handle_upstream_reply(uq.token, fake_reply(uq, "example.com. 60 IN A 1.2.3.4"), 10.1)
    [answer] = server.drain()
    assert isinstance(answer, DnsAnswer) and answer.data[:2] == b"\x11\x11"


def test_reply_question_matched_without_regard_to_case() -> None:
    """0x20-randomised spelling: the upstream may echo another case; it is the same name."""
    server = make_server()
    server.handle_query(query("ExAmPlE.CoM", qid=7), VM, "udp", 10.0)
    uq = one_upstream(server)
    reply = bytearray(fake_reply(uq, "example.com. 60 IN A 1.2.3.4"))
    reply[12:24] = b"\x07example\x03com"
    server.handle_upstream_reply(uq.token, bytes(reply), 10.1)
    [answer] = server.drain()
    assert isinstance(answer, DnsAnswer) and answer.data == b"\x00\x07" + bytes(reply[2:])
