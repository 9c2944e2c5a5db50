"""Property test of the forwarding machine: whatever the upstreams do, every
VM query gets exactly one answer with its own id and question by the timeout."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns import DnsAnswer, DnsServer, UpstreamQuery

SERVERS = [("10.0.0.1", 53), ("10.0.0.2", 53), ("10.0.0.3", 53)]

action = st.one_of(
    st.tuples(st.just("query"), st.integers(0, 3), st.sampled_from(["udp", "tcp"])),
    st.tuples(st.just("reply"), st.integers(0, 50), st.sampled_from(["good", "refused", "junk"])),
    st.tuples(st.just("error"), st.integers(0, 50), st.just("")),
    st.tuples(st.just("advance"), st.floats(0.0, 2.5), st.just("")),
)


def reply_for(uq: UpstreamQuery, kind: str) -> bytes:
    if kind == "junk":
        return uq.data[:2] + b"\x80\x00garbage"
    q = dns.message.from_wire(uq.data)
    r = dns.message.make_response(q)
    if kind == "refused":
        r.set_rcode(dns.rcode.REFUSED)
    else:
        r.answer.append(dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "1.2.3.4"))
    return r.to_wire()


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=40), st.integers(1, 4))
def test_every_query_answered_once(actions: list[tuple[str, object, object]], down: int) -> None:
    server = DnsServer(NetConfig(), SERVERS, down_after=down)
    now = 0.0
    sent: list[UpstreamQuery] = []
    asked: dict[tuple[object, int], str] = {}  # (client, id) -> qname
    answered: list[DnsAnswer] = []
    qid = 0

    def collect() -> None:
        for effect in server.drain():
            if isinstance(effect, UpstreamQuery):
                assert effect.server in SERVERS
                sent.append(effect)
            else:
                assert isinstance(effect, DnsAnswer)
                answered.append(effect)

    for kind, a, b in actions:
        if kind == "query":
            qid += 1
            client = (f"10.0.2.{a}", 1000 + qid)
            name = f"q{qid}.example"
            asked[(client, qid)] = name
            wire = dns.message.make_query(name, "A", id=qid).to_wire()
            # Servers that are down go last; the order is cached between queries.
            first = sorted(SERVERS, key=server.forwarder.is_down)[0]
            server.handle_query(wire, client, str(b), now)
            before = len(sent)
            collect()
            assert [e.server for e in sent[before:]] == [first]
        elif kind == "reply" and sent:
            uq = sent[int(str(a)) % len(sent)]
            server.handle_upstream_reply(uq.token, reply_for(uq, str(b)), now)
        elif kind == "error" and sent:
            server.handle_upstream_error(sent[int(str(a)) % len(sent)].token, now)
        elif kind == "advance":
            now += float(str(a))
            deadline = server.next_deadline()
            if deadline is not None and deadline <= now:
                server.handle_timer(now)
        collect()
    end = now + 6.0
    while (deadline := server.next_deadline()) is not None:
        assert deadline <= end
        server.handle_timer(deadline)
        collect()
    assert server.forwarder.pending_count == 0
    seen = set()
    for answer in answered:
        msg = dns.message.from_wire(answer.data)
        key = (answer.client, msg.id)
        assert key in asked and key not in seen
        seen.add(key)
        assert msg.question[0].name.to_text() == asked[key] + "."
    assert seen == set(asked)
