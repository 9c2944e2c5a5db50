"""resolv.conf parsing for the upstream list."""

from __future__ import annotations

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.resolvconf import parse_resolv_conf

TEXT = """\
# generated
nameserver 127.0.0.53
nameserver 192.168.65.1   ; ourselves
nameserver 2001:4860:4860::8888
nameserver fe80::1%eth0
nameserver 127.0.0.53
nameserver bogus
nameserver 0.0.0.0
domain old.example
search corp.example. lab.example corp.example
options edns0 trust-ad
"""


def test_servers_and_search() -> None:
    servers, search = parse_resolv_conf(TEXT, exclude=[NetConfig().gateway_ip])
    assert servers == [
        ("127.0.0.53", 53),  # host loopback stubs work: we run in the host's namespace
        ("2001:4860:4860::8888", 53),
        ("fe80::1%eth0", 53),
    ]
    assert search == ["corp.example", "lab.example"]


def test_last_of_domain_and_search_wins() -> None:
    assert parse_resolv_conf("search a.example\ndomain b.example\n")[1] == ["b.example"]
    assert parse_resolv_conf("")[0] == []


def test_gateway_kept_without_exclude_and_text_exclude() -> None:
    assert parse_resolv_conf("nameserver 192.168.65.1\n")[0] == [("192.168.65.1", 53)]
    assert parse_resolv_conf("nameserver 10.0.0.1\n", exclude=["10.0.0.1"])[0] == []

