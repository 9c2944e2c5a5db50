"""Issue 27 end to end: the HTTP proxy never takes a VM to the host's loopback.

A web server on the test host namespace's 127.0.0.1 and [::1] (port 8001)
holds the secret "hello pyvpnkit". The VM asks the explicit proxy (direct,
and with tinyproxy upstream, which would fetch the host's loopback itself)
and the transparent one for it in every spelling; only the host alias, with
host loopback on, may reach it, as the NAT allows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netenv import WORLD_IP
from tests.integration.proxyenv import PROXY, ProxyEnv, proxy_env

pytestmark = pytest.mark.skipif(
    shutil.which("tinyproxy") is None or shutil.which("openssl") is None,
    reason="needs tinyproxy and openssl",
)

GATEWAY_PROXY = "http://192.168.65.1:3128"
# Literal spellings of the host's loopback, as they appear in a URL.
LITERALS = [
    "127.0.0.1", "127.1.2.3", "2130706433", "0x7f.1", "0.0.0.0", "[::1]",
    "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::FFFF:7F00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::ffff:0:127.0.0.1]", "[::127.0.0.1]", "[::ffff:127.0.0.1%25eth0]", "[64:ff9b::7f00:1]",
]
# Names resolving to it: the host's resolver, /etc/hosts, --hosts, RFC 6761.
NAMES = ["localhost", "loopback.example.test", "mapped.example.test", "etchosts-mapped.test",
         "hostsfile.test"]
ALIASES = ["192.168.65.2", "[::ffff:192.168.65.2]", "[fd42:7076:6b69::2]", "alias.example.test",
           "host.docker.internal"]
PROBE = """probe() {
  body=$(mktemp); code=$(curl -gsS --max-time 10 -o "$body" -w '%{http_code}' "$@" 2>/dev/null)
  if grep -q 'hello pyvpnkit' "$body"; then echo "$code secret"; else echo "$code"; fi
  rm -f "$body"
}"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyEnv]:
    with proxy_env(tmp_path_factory.mktemp("proxy-loopback")) as world:
        Path(f"/etc/netns/{world.net.host}/hosts").write_text(
            "127.0.0.1 localhost\n::ffff:127.0.0.1 etchosts-mapped.test\n")
        (world.tmp / "hosts").write_text("127.0.0.1 hostsfile.test\n")
        world.net.start_helper("host", "http_server.py", "::", "8001")
        yield world


def probe(env: ProxyEnv, hosts: list[str], curl_args: str, *options: str,
          url: str = "http://{host}:8001/") -> dict[str, str]:
    """Each host's answer: the status code, plus "secret" when the loopback server answered."""
    lines = [PROBE] + [f"probe {curl_args} '{url.format(host=h)}'" for h in hosts]
    out = env.vm("\n".join(lines), "--hosts", str(env.tmp / "hosts"), *options, timeout=180)
    answers = out.stdout.splitlines()
    assert len(answers) == len(hosts), out.stdout + out.stderr
    return dict(zip(hosts, answers, strict=True))


@pytest.mark.parametrize("loopback", [True, False], ids=["loopback", "no-host-loopback"])
def test_the_explicit_proxy_refuses_the_loopback(env: ProxyEnv, loopback: bool) -> None:
    options = () if loopback else ("--no-host-loopback",)
    hosts = LITERALS + NAMES + ALIASES
    answers = probe(env, hosts, f"-x {GATEWAY_PROXY}", *options)
    tunnelled = probe(env, hosts, f"-p -x {GATEWAY_PROXY}", *options)  # CONNECT
    for host in LITERALS + NAMES:
        assert answers[host] == "502", (host, answers)
        assert tunnelled[host] == "000", (host, tunnelled)  # the CONNECT got a 502
    for host in ALIASES:  # as the NAT maps the alias
        assert answers[host] == ("200 secret" if loopback else "502"), (host, answers)
        assert tunnelled[host] == ("200 secret" if loopback else "000"), (host, tunnelled)


@pytest.mark.parametrize("loopback", [True, False], ids=["loopback", "no-host-loopback"])
def test_an_upstream_is_never_asked_for_a_loopback_address(env: ProxyEnv, loopback: bool) -> None:
    """tinyproxy runs on the host: asked for [::ffff:127.0.0.1] it would fetch the secret."""
    options = ("--http-proxy", PROXY, "--https-proxy", PROXY) + (
        () if loopback else ("--no-host-loopback",))
    hosts = [*LITERALS, "localhost", "www.example.test"]
    answers = probe(env, hosts, f"-x {GATEWAY_PROXY}", *options)
    for host in hosts[:-1]:
        assert answers[host] == "502", (host, answers)
    # A name goes to the upstream (its resolver decides): nothing listens on the world's 8001.
    assert answers["www.example.test"] not in ("502", "200 secret"), answers
    asked = [line for line in env.log.read_text(errors="replace").splitlines()
             if "Request (file descriptor" in line and ":8001" in line]
    assert all("www.example.test" in line for line in asked), asked


@pytest.mark.parametrize("loopback", [True, False], ids=["loopback", "no-host-loopback"])
@pytest.mark.parametrize("excluded", [True, False], ids=["direct", "upstream"])
def test_the_transparent_proxy_goes_nowhere_near_the_loopback(
    env: ProxyEnv, loopback: bool, excluded: bool
) -> None:
    """The VM dials the world's port 80 and names the loopback in its Host header."""
    config = {"http": PROXY, "exclude": WORLD_IP if excluded else ""}
    path = env.tmp / f"transparent-{excluded}.json"
    path.write_text(json.dumps(config))
    options = ("--http", str(path)) + (() if loopback else ("--no-host-loopback",))
    hosts = [*LITERALS, "localhost"]
    lines = [PROBE, "ask() { probe -H \"Host: $1:8001\" " + f"http://{WORLD_IP}/transparent; }}"]
    lines += [f"ask '{h}'" for h in hosts]
    out = env.vm("\n".join(lines), "--hosts", str(env.tmp / "hosts"), *options, timeout=180)
    answers = dict(zip(hosts, out.stdout.splitlines(), strict=True))
    for host in hosts:
        # Direct: to the address the VM dialled, the world's web server. Through the
        # upstream: refused, since the upstream would go where the Host header says.
        assert answers[host] == ("200" if excluded else "502"), (host, answers, out.stderr)
