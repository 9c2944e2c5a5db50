"""gvproxy-style DNS zones: name and regexp records, default IP, merging, NXDOMAIN."""

from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.server import DnsAnswer, DnsServer
from pyvpnkit.core.dns.zones import NXDOMAIN, ZoneError, Zones, zone_from_dict

N = dns.name.from_text
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA


def addr(answer: object) -> list[str]:
    assert isinstance(answer, list)
    return [rd.to_text() for rrset in answer for rd in rrset]


def zones(*objs: dict[str, object]) -> Zones:
    return Zones([zone_from_dict(o) for o in objs])


def test_name_regexp_default_and_nxdomain() -> None:
    z = zones(
        {"Name": "apps.test.", "Records": [{"Name": "web", "IP": "10.0.0.1"},
                                           {"Regexp": "^api-[0-9]+$", "IP": "10.0.0.2"},
                                           {"Name": "six", "IP": "fd00::1"}]},
        {"name": "wild.test.", "defaultIP": "10.0.0.9"},
    )
    assert addr(z.lookup(N("web.apps.test"), A)) == ["10.0.0.1"]
    assert addr(z.lookup(N("WEB.Apps.Test."), A)) == ["10.0.0.1"]  # case-insensitive
    assert addr(z.lookup(N("api-42.apps.test"), A)) == ["10.0.0.2"]
    assert z.lookup(N("api-x.apps.test"), A) is NXDOMAIN
    assert z.lookup(N("web.apps.test"), AAAA) == []  # NODATA, not upstream
    assert addr(z.lookup(N("six.apps.test"), AAAA)) == ["fd00::1"]
    assert addr(z.lookup(N("a.b.wild.test"), A)) == ["10.0.0.9"]
    assert z.lookup(N("apps.test"), A) is None  # the apex is not "below" the zone
    assert z.lookup(N("example.com"), A) is None


def test_first_zone_wins_and_merge_puts_new_records_first() -> None:
    z = zones({"Name": "test.", "Records": [{"Name": "x.sub", "IP": "10.0.0.1"}]},
              {"Name": "sub.test.", "Records": [{"Name": "x", "IP": "10.0.0.2"}]})
    assert addr(z.lookup(N("x.sub.test"), A)) == ["10.0.0.1"]
    z.add(zone_from_dict({"Name": "test.", "Records": [{"Name": "x.sub", "IP": "10.0.0.3"}],
                          "DefaultIP": "10.0.0.4"}))
    assert addr(z.lookup(N("x.sub.test"), A)) == ["10.0.0.3"]
    assert addr(z.lookup(N("other.test"), A)) == ["10.0.0.4"]
    z.add(zone_from_dict({"Name": "test.", "Records": [{"Name": "y", "IP": "10.0.0.5"}]}))
    assert addr(z.lookup(N("other.test"), A)) == ["10.0.0.4"]  # default kept when none given
    assert z.to_json()[0] == {
        "Name": "test.",
        "Records": [{"Name": "y", "IP": "10.0.0.5"}, {"Name": "x.sub", "IP": "10.0.0.3"},
                    {"Name": "x.sub", "IP": "10.0.0.1"}],
        "DefaultIP": "10.0.0.4",
    }
    assert len(z) == 2


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "expected an object"),
        ({"Name": ""}, "Name must be a domain"),
        ({"Name": "a..b."}, "is not a domain name"),
        ({"Name": "z.", "Records": {"x": 1}}, "Records must be a list"),
        ({"Name": "z.", "Records": [{"Name": "a"}]}, "IP is required"),
        ({"Name": "z.", "Records": [{"IP": "1.2.3.4"}]}, "give a Name or a Regexp"),
        ({"Name": "z.", "Records": [{"Regexp": "(", "IP": "1.2.3.4"}]}, "Regexp '('"),
        ({"Name": "z.", "Records": [{"Name": "a", "IP": "nope"}]}, "'nope' is not an IP"),
        ({"Name": "z.", "DefaultIP": "300.1.1.1"}, "DefaultIP"),
    ],
)
def test_bad_zones_are_one_clear_error(obj: object, message: str) -> None:
    with pytest.raises(ZoneError, match=message.replace("(", r"\(")):
        zone_from_dict(obj)


def test_server_answers_nxdomain_and_zone_records_before_hosts() -> None:
    server = DnsServer(NetConfig(), [], "10.9.9.9 web.apps.test\n")
    server.names.zones.add(zone_from_dict(
        {"Name": "apps.test.", "Records": [{"Name": "web", "IP": "10.0.0.1"}]}))

    def ask(name: str) -> dns.message.Message:
        server.handle_query(dns.message.make_query(name, A).to_wire(), "c", "udp", 0.0)
        (answer,) = server.drain()
        assert isinstance(answer, DnsAnswer)
        return dns.message.from_wire(answer.data)

    reply = ask("web.apps.test.")
    assert [rd.to_text() for rd in reply.answer[0]] == ["10.0.0.1"]
    assert ask("missing.apps.test.").rcode() == dns.rcode.NXDOMAIN


def test_may_hold_agrees_with_lookup_on_wire_names() -> None:
    z = zones({"Name": "apps.test.", "DefaultIP": "10.0.0.9"},
              {"Name": "a.b.example.", "Records": [{"Name": "x", "IP": "10.0.0.1"}]})
    for text in ("web.apps.test", "WEB.APPS.TEST", "x.y.apps.test", "apps.test", "test",
                 "apps.test.evil", "xapps.test", "x.a.b.example", "b.example", "example.com"):
        name = N(text)
        assert z.may_hold(name.to_digestable()) == (z.lookup(name, A) is not None), text
    z.add(zone_from_dict({"Name": "example.", "DefaultIP": "10.0.0.2"}))
    assert z.may_hold(N("b.example").to_digestable())
