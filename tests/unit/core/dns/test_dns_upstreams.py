"""HostUpstreams: what a new resolv.conf text does to the upstream list."""

from __future__ import annotations

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.upstreams import HostUpstreams

GW = NetConfig().gateway_ip


def test_first_load_then_a_change_then_the_same_text() -> None:
    up = HostUpstreams(exclude=[GW])
    assert up.update("nameserver 10.0.0.1\nnameserver 192.168.65.1\n", 1.0) == "changed"
    assert (up.servers, up.search, up.loaded_at, up.reloads) == ([("10.0.0.1", 53)], [], 1.0, 0)
    text = "nameserver 10.8.0.1\nsearch corp.example\n"
    assert up.update(text, 5.0) == "changed"
    assert (up.servers, up.search, up.loaded_at, up.reloads) == (
        [("10.8.0.1", 53)], ["corp.example"], 5.0, 1)
    assert up.update(text + "# a comment\n", 9.0) == "unchanged"
    assert up.loaded_at == 5.0


def test_search_domains_alone_are_a_change() -> None:
    up = HostUpstreams()
    up.update("nameserver 10.0.0.1\n", 0.0)
    assert up.update("nameserver 10.0.0.1\nsearch vpn.example\n", 1.0) == "changed"
    assert up.search == ["vpn.example"]


def test_empty_or_unreadable_keeps_the_last_good_list_reported_once() -> None:
    up = HostUpstreams(exclude=[GW])
    up.update("nameserver 10.0.0.1\n", 0.0)
    assert up.update("", 1.0) == "kept"
    assert up.update("# still empty\n", 2.0) == "unchanged"  # the same problem: no new warning
    assert up.update(None, 3.0) == "kept"
    assert up.update("nameserver 192.168.65.1\n", 4.0) == "kept"  # only ourselves
    assert (up.servers, up.kept, up.loaded_at) == ([("10.0.0.1", 53)], 3, 0.0)
    assert up.update("nameserver 10.0.0.1\n", 5.0) == "unchanged"
    assert up.problem == ""
    assert up.update("", 6.0) == "kept"  # a new episode is reported again
