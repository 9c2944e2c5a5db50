"""Built-in names and hosts-file parsing (pure tables, no server)."""

from __future__ import annotations

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.reversename

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.dns.names import LocalNames, parse_hosts

IN = dns.rdataclass.IN
N = dns.name.from_text

HOSTS = """\
# comment line
127.0.0.1   localhost
10.1.2.3    db.example  db   # trailing comment
10.1.2.4    db.example
fd00::7     db.example six.example
not-an-ip   broken.example
fe80::1%eth0 linklocal.example
10.9.9.9    good.example bad..name
10.1.2.3    second-name-for-same-ip
"""


def addrs(rrsets: list) -> list[str]:
    return [rd.to_text() for rrset in rrsets for rd in rrset]


def test_parse_hosts_addresses_aliases_and_comments() -> None:
    table = parse_hosts(HOSTS)
    db = table.forward[N("DB.Example")]
    assert db.v4 == [ip4("10.1.2.3"), ip4("10.1.2.4")]
    assert len(db.v6) == 1
    assert N("db") in table.forward
    assert N("six.example") in table.forward
    assert N("linklocal.example") in table.forward
    assert N("good.example") in table.forward
    assert N("broken.example") not in table.forward
    # The first name given for an address is its PTR target.
    assert table.reverse[dns.reversename.from_address("10.1.2.3")] == N("db.example")


def test_lookup_builtin_hosts_and_forward() -> None:
    names = LocalNames(NetConfig(), HOSTS)
    names.set_vm_addresses([ip4("192.168.65.3")])
    assert addrs(names.lookup(N("host.docker.internal"), dns.rdatatype.A, IN)) == ["192.168.65.2"]
    assert addrs(names.lookup(N("gateway.internal"), dns.rdatatype.A, IN)) == ["192.168.65.1"]
    assert addrs(names.lookup(N("vm.internal"), dns.rdatatype.A, IN)) == ["192.168.65.3"]
    assert names.lookup(N("vm.internal"), dns.rdatatype.AAAA, IN) == []
    assert addrs(names.lookup(N("db.example"), dns.rdatatype.AAAA, IN)) == ["fd00::7"]
    assert names.lookup(N("db.example"), dns.rdatatype.MX, IN) == []
    assert names.lookup(N("example.com"), dns.rdatatype.A, IN) is None
    # Other classes (CHAOS version queries) are not ours.
    assert names.lookup(N("host.internal"), dns.rdatatype.TXT, dns.rdataclass.CH) is None


def test_builtin_names_win_over_hosts() -> None:
    names = LocalNames(NetConfig(), "1.2.3.4 host.docker.internal\n")
    assert addrs(names.lookup(N("host.docker.internal"), dns.rdatatype.A, IN)) == ["192.168.65.2"]


def test_vm_name_without_addresses_is_nodata_and_updates() -> None:
    names = LocalNames(NetConfig())
    assert names.lookup(N("vm.internal"), dns.rdatatype.A, IN) == []
    names.set_vm_addresses([ip4("192.168.65.3"), ip4("192.168.65.4")])
    got = addrs(names.lookup(N("vm.internal"), dns.rdatatype.A, IN))
    assert got == ["192.168.65.3", "192.168.65.4"]


def test_ptr_for_builtin_and_hosts_addresses() -> None:
    names = LocalNames(NetConfig(), HOSTS)
    rev = dns.reversename.from_address("192.168.65.1")
    assert addrs(names.lookup(rev, dns.rdatatype.PTR, IN)) == ["gateway.docker.internal."]
    rev = dns.reversename.from_address("10.1.2.4")
    assert addrs(names.lookup(rev, dns.rdatatype.PTR, IN)) == ["db.example."]
    assert names.lookup(rev, dns.rdatatype.A, IN) == []


def test_load_hosts_replaces_table() -> None:
    names = LocalNames(NetConfig(), HOSTS)
    names.load_hosts("10.0.0.1 other.example\n")
    assert names.lookup(N("db.example"), dns.rdatatype.A, IN) is None
    assert addrs(names.lookup(N("other.example"), dns.rdatatype.A, IN)) == ["10.0.0.1"]
    assert names.hosts_count == 1


def test_may_answer_is_exactly_the_names_lookup_knows() -> None:
    """The forwarding fast path skips lookup (and dnspython names) when this says no."""
    names = LocalNames(NetConfig(), HOSTS)
    texts = ["host.docker.internal", "HOST.Docker.Internal", "vm.internal", "db.example",
             "example.com", "docker.internal", "3.2.1.10.in-addr.arpa", "9.9.9.10.in-addr.arpa",
             "1.65.168.192.in-addr.arpa", "3.65.168.192.in-addr.arpa", "other.example"]

    def agree() -> None:
        for text in texts:
            name = N(text)
            known = names.lookup(name, dns.rdatatype.A, IN) is not None
            assert names.may_answer(name.to_digestable()) == known, text

    agree()
    names.set_vm_addresses([ip4("192.168.65.3")])  # adds a PTR name
    agree()
    assert names.may_answer(N("3.65.168.192.in-addr.arpa").to_digestable())
    names.load_hosts("10.0.0.1 other.example\n")
    agree()
    assert not names.may_answer(N("db.example").to_digestable())
