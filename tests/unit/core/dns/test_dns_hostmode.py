"""DnsServer in host-resolver mode, driven with fake host answers and a fake clock."""

from __future__ import annotations

import logging

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.dns import DnsAnswer, DnsServer, HostResolve, UpstreamQuery
from pyvpnkit.core.dns.hostmode import (
    HOST_TTL,
    NODATA,
    NXDOMAIN,
    SERVFAIL,
    UNSUPPORTED_TEXT,
    host_question,
    reverse_address,
)

CFG = NetConfig()
UP = ("10.0.0.53", 53)
VM = ("192.168.65.3", 40000)


def make_server(upstreams: list[tuple[str, int]] | None = None, **kw: object) -> DnsServer:
    server = DnsServer(CFG, [] if upstreams is None else upstreams, mode="host", **kw)  # type: ignore[arg-type]
    server.set_vm_addresses([ip4("192.168.65.3")])
    return server


def query(name: str, rdtype: str = "A", qid: int = 1234, **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, id=qid, **kw).to_wire()  # type: ignore[arg-type]


def split(server: DnsServer) -> tuple[list[DnsAnswer], list[UpstreamQuery], list[HostResolve]]:
    out = server.drain()
    answers = [e for e in out if isinstance(e, DnsAnswer)]
    ups = [e for e in out if isinstance(e, UpstreamQuery)]
    hosts = [e for e in out if isinstance(e, HostResolve)]
    assert len(answers) + len(ups) + len(hosts) == len(out)
    return answers, ups, hosts


def one_host(server: DnsServer) -> HostResolve:
    answers, ups, hosts = split(server)
    assert answers == [] and ups == [] and len(hosts) == 1
    return hosts[0]


def one_answer(server: DnsServer) -> dns.message.Message:
    answers, ups, hosts = split(server)
    assert ups == [] and hosts == [] and len(answers) == 1
    return dns.message.from_wire(answers[0].data)


def texts(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


# -- addresses --------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_from_host_resolver_keeps_id_question_and_flags(transport: str) -> None:
    server = make_server()
    server.handle_query(query("Db.Corp.Example", qid=0xBEEF), VM, transport, 1.0)
    hr = one_host(server)
    assert (hr.name, hr.rdtype) == ("Db.Corp.Example", dns.rdatatype.A)
    server.handle_host_answer(hr.token, ["10.1.2.3", "10.1.2.4", "10.1.2.3"], None, 1.1)
    msg = one_answer(server)
    assert msg.id == 0xBEEF and msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RD and msg.flags & dns.flags.RA
    assert not msg.flags & dns.flags.AA  # the host's resolver is not authoritative
    assert msg.question[0].name.to_text() == "Db.Corp.Example."  # case echoed
    [rrset] = msg.answer
    assert rrset.name.to_text() == "Db.Corp.Example." and rrset.ttl == HOST_TTL
    assert sorted(texts(msg)) == ["10.1.2.3", "10.1.2.4"]  # deduplicated (dnspython shuffles)
    assert server.next_deadline() is None


def test_aaaa_keeps_only_ipv6_and_drops_zone_ids() -> None:
    server = make_server()
    server.handle_query(query("v6.example", "AAAA"), VM, "udp", 0.0)
    hr = one_host(server)
    assert hr.rdtype == dns.rdatatype.AAAA
    server.handle_host_answer(hr.token, ["fd00::1", "10.0.0.1", "fe80::2%eth0", "junk"], None, 0.1)
    msg = one_answer(server)
    assert msg.answer[0].rdtype == dns.rdatatype.AAAA
    assert sorted(texts(msg)) == ["fd00::1", "fe80::2"]


@pytest.mark.parametrize("how", ["empty list", "nodata error", "other family only"])
def test_name_without_addresses_of_the_family_is_nodata(how: str) -> None:
    server = make_server()
    server.handle_query(query("v4only.example", "AAAA"), VM, "udp", 0.0)
    hr = one_host(server)
    if how == "empty list":
        server.handle_host_answer(hr.token, [], None, 0.1)
    elif how == "nodata error":
        server.handle_host_answer(hr.token, None, NODATA, 0.1)
    else:
        server.handle_host_answer(hr.token, ["10.0.0.1"], None, 0.1)
    msg = one_answer(server)
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []


def test_missing_name_is_nxdomain() -> None:
    server = make_server()
    server.handle_query(query("nosuch.example"), VM, "udp", 0.0)
    hr = one_host(server)
    server.handle_host_answer(hr.token, None, NXDOMAIN, 0.1)
    msg = one_answer(server)
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.answer == [] and msg.id == 1234


def test_resolver_failure_is_servfail() -> None:
    server = make_server()
    server.handle_query(query("flaky.example"), VM, "udp", 0.0)
    hr = one_host(server)
    server.handle_host_answer(hr.token, None, SERVFAIL, 0.1)  # e.g. EAI_AGAIN
    assert one_answer(server).rcode() == dns.rcode.SERVFAIL
    server.handle_query(query("odd.example"), VM, "udp", 0.0)
    hr = one_host(server)
    server.handle_host_answer(hr.token, None, None, 0.1)  # nonsense report
    assert one_answer(server).rcode() == dns.rcode.SERVFAIL


def test_timeout_is_servfail_and_late_answer_ignored() -> None:
    server = make_server(host_timeout=5.0)
    server.handle_query(query("slow.example", qid=77), VM, "udp", 10.0)
    hr = one_host(server)
    assert server.next_deadline() == 15.0
    server.handle_timer(14.9)
    assert server.drain() == []
    server.handle_timer(15.0)
    msg = one_answer(server)
    assert msg.id == 77 and msg.rcode() == dns.rcode.SERVFAIL
    server.handle_host_answer(hr.token, ["10.0.0.1"], None, 16.0)
    assert server.drain() == []
    assert server.next_deadline() is None and server.host.timeouts == 1


def test_many_lookups_in_flight_capped_rest_wait() -> None:
    server = make_server(host_max_inflight=3)
    for i in range(5):
        server.handle_query(query(f"n{i}.example", qid=i), VM, "udp", 0.0)
    _, _, first = split(server)
    assert [h.name for h in first] == ["n0.example", "n1.example", "n2.example"]
    # Answers in any order; a slow n0 does not hold up the others.
    server.handle_host_answer(first[2].token, ["10.0.0.2"], None, 0.1)
    answers, _, started = split(server)
    assert [dns.message.from_wire(a.data).id for a in answers] == [2]
    assert [h.name for h in started] == ["n3.example"]
    server.handle_host_answer(first[1].token, ["10.0.0.1"], None, 0.2)
    answers, _, started = split(server)
    assert [h.name for h in started] == ["n4.example"]
    # n0 never answers: SERVFAIL at its deadline, the rest are unaffected.
    server.handle_timer(5.0)
    answers, _, _ = split(server)
    assert [dns.message.from_wire(a.data).rcode() for a in answers] == [dns.rcode.SERVFAIL] * 3


def test_waiting_queue_full_is_servfail() -> None:
    server = make_server(host_max_inflight=1, max_pending=1)
    server.handle_query(query("a.example", qid=1), VM, "udp", 0.0)
    server.handle_query(query("b.example", qid=2), VM, "udp", 0.0)  # waits
    server.handle_query(query("c.example", qid=3), VM, "udp", 0.0)  # no room
    answers, _, hosts = split(server)
    assert [h.name for h in hosts] == ["a.example"]
    [refused] = answers
    msg = dns.message.from_wire(refused.data)
    assert msg.id == 3 and msg.rcode() == dns.rcode.SERVFAIL


def test_udp_retransmission_is_looked_up_once() -> None:
    server = make_server()
    server.handle_query(query("dup.example", qid=9), VM, "udp", 0.0)
    hr = one_host(server)
    server.handle_query(query("dup.example", qid=9), VM, "udp", 0.5)
    assert server.drain() == [] and server.stats["duplicates"] == 1
    server.handle_host_answer(hr.token, ["10.0.0.9"], None, 0.6)
    assert texts(one_answer(server)) == ["10.0.0.9"]
    server.handle_query(query("dup.example", qid=9), VM, "udp", 1.0)
    one_host(server)  # answered: a new query is a new lookup


def test_long_address_list_truncated_over_udp_complete_over_tcp() -> None:
    addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(100)]
    server = make_server()
    server.handle_query(query("many.example", qid=5), VM, "udp", 0.0)
    server.handle_host_answer(one_host(server).token, addresses, None, 0.1)
    answers, _, _ = split(server)
    assert len(answers[0].data) <= 512
    msg = dns.message.from_wire(answers[0].data)
    assert msg.id == 5 and msg.flags & dns.flags.TC and msg.answer == []
    assert msg.question[0].name.to_text() == "many.example."
    server.handle_query(query("many.example", use_edns=0, payload=1232), VM, "udp", 0.0)
    server.handle_host_answer(one_host(server).token, addresses, None, 0.1)
    answers, _, _ = split(server)
    assert len(answers[0].data) <= 1232
    msg = dns.message.from_wire(answers[0].data)
    assert msg.flags & dns.flags.TC and msg.edns == 0
    server.handle_query(query("many.example"), "flow", "tcp", 0.0)
    server.handle_host_answer(one_host(server).token, addresses, None, 0.1)
    msg = one_answer(server)
    assert not msg.flags & dns.flags.TC and len(texts(msg)) == 100


def test_builtin_names_and_hosts_file_come_first() -> None:
    server = make_server(hosts_text="10.9.9.9 pinned.example\n")
    for name, expect in [("host.docker.internal", "192.168.65.2"), ("pinned.example", "10.9.9.9")]:
        server.handle_query(query(name), VM, "udp", 0.0)
        assert texts(one_answer(server)) == [expect]
    server.handle_query(query("pinned.example", "MX"), VM, "udp", 0.0)
    msg = one_answer(server)  # a hosts-file name has no MX: NODATA, not a lookup
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []


# -- PTR --------------------------------------------------------------------------


def test_ptr_from_getnameinfo() -> None:
    server = make_server()
    server.handle_query(query("4.3.2.10.in-addr.arpa", "PTR"), VM, "udp", 0.0)
    hr = one_host(server)
    assert (hr.name, hr.rdtype) == ("10.2.3.4", dns.rdatatype.PTR)
    server.handle_host_answer(hr.token, ["db.corp.example"], None, 0.1)
    msg = one_answer(server)
    assert texts(msg) == ["db.corp.example."] and msg.answer[0].ttl == HOST_TTL
    v6 = dns.reversename.from_address("fd00::1")
    server.handle_query(query(v6.to_text(), "PTR"), VM, "udp", 0.0)
    hr = one_host(server)
    assert hr.name == "fd00::1"
    server.handle_host_answer(hr.token, None, NXDOMAIN, 0.1)
    assert one_answer(server).rcode() == dns.rcode.NXDOMAIN


def test_ptr_nodata_and_bad_name_from_host() -> None:
    server = make_server()
    server.handle_query(query("4.3.2.10.in-addr.arpa", "PTR"), VM, "udp", 0.0)
    server.handle_host_answer(one_host(server).token, None, NODATA, 0.1)
    assert one_answer(server).rcode() == dns.rcode.NXDOMAIN
    server.handle_query(query("4.3.2.10.in-addr.arpa", "PTR"), VM, "udp", 0.0)
    server.handle_host_answer(one_host(server).token, ["a..b"], None, 0.1)
    assert one_answer(server).rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("1.0.0.127.in-addr.arpa.", "127.0.0.1"),
        ("4.3.2.10.IN-ADDR.ARPA.", "10.2.3.4"),
        ("65.168.192.in-addr.arpa.", None),  # a zone, not an address
        ("300.0.0.10.in-addr.arpa.", None),
        ("x.0.0.10.in-addr.arpa.", None),
        ("5.4.3.2.1.in-addr.arpa.", None),
        (dns.reversename.from_address("2001:db8::1").to_text(), "2001:db8::1"),
        ("1.0.ip6.arpa.", None),
        ("example.com.", None),
    ],
)
def test_reverse_address(name: str, address: str | None) -> None:
    assert reverse_address(dns.name.from_text(name)) == address


@pytest.mark.parametrize(
    ("name", "rdtype", "asked"),
    [
        ("www.example.", "A", "www.example"),
        ("_x.example.", "AAAA", "_x.example"),
        ("10.", "A", None),  # getaddrinfo would parse it as an address
        ("127.0.0.1.", "A", None),
        ("0x7f.1.", "A", None),
        (".", "A", None),
        ("we\\032ird.example.", "A", None),
        ("www.example.", "MX", None),
        ("www.example.", "ANY", None),
    ],
)
def test_host_question(name: str, rdtype: str, asked: str | None) -> None:
    qname = dns.name.from_text(name)
    assert host_question(qname, dns.rdatatype.from_text(rdtype)) == asked


# -- types getaddrinfo cannot answer ----------------------------------------------


@pytest.mark.parametrize("rdtype", ["MX", "TXT", "SRV", "SOA", "NS", "CAA", "ANY"])
def test_other_types_are_forwarded_when_upstreams_exist(rdtype: str) -> None:
    server = make_server(upstreams=[UP])
    vm_query = query("example.test", rdtype, qid=0x4242)
    server.handle_query(vm_query, VM, "udp", 0.0)
    answers, ups, hosts = split(server)
    assert answers == [] and hosts == [] and len(ups) == 1
    assert ups[0].server == UP and ups[0].data[2:] == vm_query[2:]
    reply = dns.message.make_response(dns.message.from_wire(ups[0].data))
    server.handle_upstream_reply(ups[0].token, reply.to_wire(), 0.1)
    assert one_answer(server).id == 0x4242


def test_partial_reverse_name_is_forwarded_not_guessed() -> None:
    server = make_server(upstreams=[UP])
    server.handle_query(query("65.168.192.in-addr.arpa", "PTR"), VM, "udp", 0.0)
    _, ups, hosts = split(server)
    assert hosts == [] and len(ups) == 1


def test_other_types_without_upstreams_servfail_with_ede(caplog: pytest.LogCaptureFixture) -> None:
    server = make_server()
    with caplog.at_level(logging.WARNING, logger="pyvpnkit.dns"):
        server.handle_query(query("example.test", "MX", qid=1, use_edns=0), VM, "udp", 0.0)
        msg = one_answer(server)
        assert msg.id == 1 and msg.rcode() == dns.rcode.SERVFAIL
        [ede] = [o for o in msg.options if isinstance(o, dns.edns.EDEOption)]
        assert ede.code == dns.edns.EDECode.NOT_SUPPORTED and ede.text == UNSUPPORTED_TEXT
        server.handle_query(query("example.test", "MX", qid=2), VM, "udp", 0.0)
        msg = one_answer(server)  # no EDNS in the query: plain SERVFAIL
        assert msg.rcode() == dns.rcode.SERVFAIL and msg.edns < 0
        server.handle_query(query("example.test", "TXT", qid=3), VM, "tcp", 0.0)
        assert one_answer(server).rcode() == dns.rcode.SERVFAIL
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per type
    assert "MX" in warnings[0] and "TXT" in warnings[1]
    assert server.stats["unsupported"] == 3


def test_forward_mode_is_unchanged() -> None:
    server = DnsServer(CFG, [UP])
    server.handle_query(query("www.example"), VM, "udp", 0.0)
    answers, ups, hosts = split(server)
    assert hosts == [] and len(ups) == 1
    with pytest.raises(ValueError):
        DnsServer(CFG, [UP], mode="stub")


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["A", "AAAA", "PTR", "MX"]),
    st.lists(st.text(max_size=20), max_size=5) | st.none(),
    st.sampled_from([None, NXDOMAIN, NODATA, SERVFAIL, "garbage"]),
)
def test_arbitrary_host_answers_never_raise(
    rdtype: str, addresses: list[str] | None, error: str | None
) -> None:
    server = make_server()
    name = "4.3.2.10.in-addr.arpa" if rdtype == "PTR" else "x.example"
    server.handle_query(query(name, rdtype, qid=99), VM, "udp", 0.0)
    hosts = split(server)[2]
    for hr in hosts:
        server.handle_host_answer(hr.token, addresses, error, 0.1)
    server.handle_timer(10.0)
    for effect in server.drain():
        assert isinstance(effect, DnsAnswer)
        assert dns.message.from_wire(effect.data).id == 99
