"""The forwarded-answer cache (--dns-cache): what is kept, for how long, and what
a hit looks like, driven through DnsServer with a fake clock; and the reply
walker it relies on."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.core.dns import DnsAnswer, DnsServer, UpstreamQuery
from pyvpnkit.core.dns.cache import AnswerCache
from pyvpnkit.wire.dnsquestion import reply_ttls
from pyvpnkit.wire.errors import ParseError

from .test_dns_server import CFG, UP1, VM, VM2, effects, fake_reply, one_answer, one_upstream

_upstream: list[UpstreamQuery] = []  # what cached() drained when it was not a hit
SOA = "example. 3600 IN SOA ns.example. admin.example. 1 7200 900 1209600 60"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    _upstream.clear()


def server(size: int = 16) -> DnsServer:
    return DnsServer(CFG, [UP1], cache_size=size)


def ask(srv: DnsServer, name: str, now: float, qid: int = 1, client: object = VM,
        rdtype: str = "A", **kw: object) -> None:
    wire = dns.message.make_query(name, rdtype, id=qid, **kw).to_wire()  # type: ignore[arg-type]
    srv.handle_query(wire, client, "udp", now)  # type: ignore[arg-type]


def forward(srv: DnsServer, now: float, *records: str, section: str = "answer",
            rcode: int = 0) -> None:
    """Answer the one query upstream now, and drain the answer the VM gets."""
    uq = _upstream.pop() if _upstream else one_upstream(srv)
    srv.handle_upstream_reply(uq.token, fake_reply(uq, *records, section=section, rcode=rcode), now)
    one_answer(srv)


def cached(srv: DnsServer) -> dns.message.Message | None:
    """The answer if the last query was served from the cache, None if it went upstream."""
    answers, ups = effects(srv)
    _upstream[:] = ups
    if ups:
        return None
    (answer,) = answers
    return dns.message.from_wire(answer.data)


def test_positive_answer_served_with_asker_id_spelling_and_aged_ttl() -> None:
    srv = server()
    ask(srv, "www.example", 0.0, qid=1)
    forward(srv, 0.0, "www.example. 300 IN A 10.0.0.1")
    ask(srv, "WWW.Example", 100.4, qid=2, client=VM2)
    msg = cached(srv)
    assert msg is not None and msg.id == 2
    assert msg.question[0].name.to_text() == "WWW.Example."  # 0x20 case echoed
    assert [(rr.ttl, rd.to_text()) for rr in msg.answer for rd in rr] == [(200, "10.0.0.1")]
    assert srv.stats["cached"] == 1 and srv.stats["forwarded"] == 1
    ask(srv, "www.example", 300.0, qid=3)  # expired: upstream again
    assert cached(srv) is None


def test_negative_answers_live_for_the_soa_minimum_and_not_without_soa() -> None:
    srv = server()
    ask(srv, "gone.example", 0.0)
    forward(srv, 0.0, SOA, section="authority", rcode=dns.rcode.NXDOMAIN)
    ask(srv, "gone.example", 59.0, qid=2)
    msg = cached(srv)
    assert msg is not None and msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.authority[0].ttl == 3600 - 59  # aged like every record
    ask(srv, "gone.example", 60.0, qid=3)  # min(SOA TTL, MINIMUM) = 60 s
    assert cached(srv) is None
    forward(srv, 60.0, rcode=dns.rcode.NXDOMAIN)  # no SOA: not kept
    ask(srv, "gone.example", 61.0, qid=4)
    assert cached(srv) is None
    forward(srv, 61.0, SOA, section="authority")  # NODATA with SOA: kept
    ask(srv, "gone.example", 62.0, qid=5)
    msg = cached(srv)
    assert msg is not None and msg.rcode() == dns.rcode.NOERROR and msg.answer == []


@pytest.mark.parametrize(
    ("records", "rcode"),
    [(("www.example. 0 IN A 10.0.0.1",), 0), ((), dns.rcode.SERVFAIL), ((), dns.rcode.REFUSED)],
)
def test_zero_ttl_and_failures_are_not_kept(records: tuple[str, ...], rcode: int) -> None:
    srv = server()
    ask(srv, "www.example", 0.0)
    uq = one_upstream(srv)
    srv.handle_upstream_reply(uq.token, fake_reply(uq, *records, rcode=rcode), 0.0)
    srv.drain()
    assert len(srv.cache or ()) == 0


def test_truncated_reply_not_kept() -> None:
    cache = AnswerCache(4)
    msg = dns.message.make_response(dns.message.make_query("www.example", "A"))
    msg.flags |= dns.flags.TC
    cache.put((b"\x03www\x07example\x00", 1, 1, 0x100, False, False), msg.to_wire(), 0.0)
    assert len(cache) == 0


def test_query_bits_that_change_the_answer_are_separate_entries() -> None:
    srv = server()
    ask(srv, "www.example", 0.0)
    forward(srv, 0.0, "www.example. 300 IN A 10.0.0.1")
    now = 1.0
    for n, kw in enumerate([{"use_edns": 0}, {"want_dnssec": True}, {"flags": 0}], start=2):
        ask(srv, "www.example", now, qid=n, **kw)
        assert cached(srv) is None, kw
        _upstream.clear()
        srv.handle_timer(now + 10)  # no upstream answers it: SERVFAIL, not kept
        srv.drain()
        now += 11
    ask(srv, "www.example", now, qid=9, rdtype="AAAA")
    assert cached(srv) is None
    ask(srv, "www.example", now, qid=10)
    assert cached(srv) is not None


def test_least_recently_used_goes_first() -> None:
    srv = server(size=2)
    for i, name in enumerate(("a.example", "b.example")):
        ask(srv, name, 0.0, qid=i)
        forward(srv, 0.0, f"{name}. 300 IN A 10.0.0.{i}")
    ask(srv, "a.example", 1.0, qid=5)  # a is now the most recent
    assert cached(srv) is not None
    ask(srv, "c.example", 1.0, qid=6)
    forward(srv, 1.0, "c.example. 300 IN A 10.0.0.9")
    ask(srv, "a.example", 2.0, qid=7)
    assert cached(srv) is not None
    ask(srv, "b.example", 2.0, qid=8)
    assert cached(srv) is None


def test_off_by_default() -> None:
    srv = DnsServer(CFG, [UP1])
    assert srv.cache is None
    ask(srv, "www.example", 0.0)
    forward(srv, 0.0, "www.example. 300 IN A 10.0.0.1")
    ask(srv, "www.example", 1.0, qid=2)
    assert cached(srv) is None


def test_reply_ttls_skips_opt_and_follows_compression() -> None:
    q = dns.message.make_query("www.example", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.", 30, "IN", "CNAME", "web.example."))
    r.answer.append(dns.rrset.from_text("web.example.", 20, "IN", "A", "10.0.0.1"))
    r.authority.append(dns.rrset.from_text(*SOA.split(None, 4)))
    wire = r.to_wire()
    got = reply_ttls(wire)
    assert [int.from_bytes(wire[at : at + 4], "big") for at in got.offsets] == [30, 20, 3600]
    assert (got.ttl, got.negative_ttl) == (20, 60)
    with pytest.raises(ParseError):
        reply_ttls(wire[:-3])


@given(st.binary(max_size=120))
def test_reply_ttls_raises_only_parse_error(data: bytes) -> None:
    try:
        reply_ttls(data)
    except ParseError:
        pass


def test_cache_answers_every_transport_with_its_own_size_limit() -> None:
    """A stored answer larger than a later asker's UDP limit goes out truncated (TC)."""
    srv = server()
    ask(srv, "big.example", 0.0, rdtype="TXT", use_edns=0, payload=4096)
    uq = one_upstream(srv)
    records = [f'big.example. 300 IN TXT "{"x" * 200}{i}"' for i in range(4)]
    srv.handle_upstream_reply(uq.token, fake_reply(uq, *records), 0.0)
    answers, _ = effects(srv)
    assert isinstance(answers[0], DnsAnswer) and len(answers[0].data) > 512
    ask(srv, "big.example", 1.0, qid=2, rdtype="TXT", use_edns=0, payload=512)
    msg = cached(srv)  # same key (EDNS on, DO off); the smaller limit truncates it
    assert msg is not None and msg.flags & dns.flags.TC and msg.answer == []
