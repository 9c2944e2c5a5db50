"""Issue 12 end to end: curl in the VM, pyvpnkit's proxy, Debian's tinyproxy as the upstream.

tinyproxy runs on the test host namespace's loopback and resolves names
itself, through /etc/netns/<host>/resolv.conf naming the test DNS server
(www.example.test -> 203.0.113.2): no lookup reaches the machine's
resolvers. Its log proves which requests went through it; the web server in
the world namespace echoes the Via header tinyproxy adds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.integration.helpers.proxy_web import pattern
from tests.integration.netenv import WORLD_IP
from tests.integration.proxyenv import AUTH_PROXY, NAME, PROXY, ProxyEnv, proxy_env

pytestmark = pytest.mark.skipif(
    shutil.which("tinyproxy") is None or shutil.which("openssl") is None,
    reason="needs tinyproxy and openssl",
)

BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyEnv]:
    with proxy_env(tmp_path_factory.mktemp("proxy")) as world:
        yield world


def write_config(env: ProxyEnv, name: str, config: dict[str, object]) -> str:
    path = env.tmp / name
    path.write_text(json.dumps(config))
    return str(path)


def curl(*args: str) -> str:
    return "curl -sS --max-time 20 " + " ".join(args)


def test_transparent_http_through_the_upstream(env: ProxyEnv) -> None:
    out = env.vm(curl(f"http://{NAME}/plain"), "--http-proxy", PROXY)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"host={NAME} via=1.1 tinyproxy"), out.stdout
    assert env.proxied(f"GET http://{NAME}/plain HTTP/1.1")
    assert f"-> {WORLD_IP}:80 " in out.stderr and f"via proxy {PROXY}" in out.stderr, out.stderr


def test_keep_alive(env: ProxyEnv) -> None:
    script = curl(f"http://{NAME}/one", f"http://{NAME}/two", f"http://{NAME}/three")
    out = env.vm(script, "--http-proxy", PROXY)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[-2] for line in lines] == ["path=/one", "path=/two", "path=/three"]
    assert all("via=1.1 tinyproxy" in line for line in lines), out.stdout
    assert out.stderr.count(f"-> {WORLD_IP}:80 ") == 1, out.stderr  # one VM connection


def test_transparent_https_connects_by_name(env: ProxyEnv) -> None:
    cert = env.tmp / "cert.pem"
    out = env.vm(curl("--cacert", str(cert), f"https://{NAME}/secure"),
                 "--https-proxy", PROXY)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"host={NAME} via=None path=/secure tls=1"), out.stdout
    assert env.proxied(f"CONNECT {NAME}:443 HTTP/1.1")


def test_https_on_a_listed_port_and_excluded_names(env: ProxyEnv) -> None:
    config = write_config(env, "ports.json", {
        "http": PROXY, "https": PROXY, "exclude": "direct.example.test, 10.0.0.0/8",
        "transparent_https_ports": [443, 8443],
    })
    cert = env.tmp / "cert.pem"
    script = "; ".join([
        curl("--cacert", str(cert), f"https://{NAME}:8443/port8443"),
        curl("--resolve", f"direct.example.test:80:{WORLD_IP}", "http://direct.example.test/x"),
    ])
    out = env.vm(script, "--http", config)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith(f"host={NAME}:8443 via=None path=/port8443 tls=1"), out.stdout
    assert env.proxied(f"CONNECT {NAME}:8443 HTTP/1.1")
    assert second == "host=direct.example.test via=None path=/x tls=0", out.stdout
    assert not env.proxied("direct.example.test")
    assert f"via direct {WORLD_IP}:80" in out.stderr, out.stderr


def test_explicit_proxy_on_the_gateway(env: ProxyEnv) -> None:
    cert = env.tmp / "cert.pem"
    script = "; ".join([
        curl("-x", "http://192.168.65.1:3128", f"http://{NAME}/explicit-direct"),
        curl("-x", "http://192.168.65.1:3128", "--cacert", str(cert),
             f"https://{NAME}/explicit-direct-tls"),
    ])
    out = env.vm(script)  # no upstream: pyvpnkit connects itself
    assert out.returncode == 0, out.stderr
    plain, tls = out.stdout.splitlines()
    assert plain == f"host={NAME} via=None path=/explicit-direct tls=0", out.stdout
    assert tls == f"host={NAME} via=None path=/explicit-direct-tls tls=1", out.stdout
    assert not env.proxied("explicit-direct")

    script = "; ".join([
        curl("-x", "http://192.168.65.1:3128", f"http://{NAME}/explicit-up"),
        curl("-x", "http://192.168.65.1:3128", "--cacert", str(cert),
             f"https://{NAME}/explicit-up-tls"),
    ])
    out = env.vm(script, "--http-proxy", PROXY, "--https-proxy", PROXY)
    assert out.returncode == 0, out.stderr
    plain, tls = out.stdout.splitlines()
    assert plain.startswith(f"host={NAME} via=1.1 tinyproxy"), out.stdout
    assert tls.startswith(f"host={NAME} via=None path=/explicit-up-tls tls=1"), out.stdout
    assert env.proxied(f"GET http://{NAME}/explicit-up HTTP/1.1")


def test_upstream_credentials_and_407(env: ProxyEnv) -> None:
    script = "; ".join([
        curl("-o /dev/null -w '%{http_code}\\n'", f"http://{NAME}/auth"),
    ])
    out = env.vm(script, "--http-proxy", f"http://user:secret@{AUTH_PROXY}/")
    assert (out.returncode, out.stdout) == (0, "200\n"), out.stderr
    assert env.proxied(f"GET http://{NAME}/auth HTTP/1.1", env.auth_log)
    out = env.vm(script, "--http-proxy", AUTH_PROXY)
    assert (out.returncode, out.stdout) == (0, "407\n"), out.stderr  # passed back as it is


def test_dead_upstream_is_a_fast_502(env: ProxyEnv) -> None:
    script = curl("-o /dev/null -w '%{http_code} %{time_total}\\n'", f"http://{NAME}/dead")
    script += "; " + curl("--cacert", str(env.tmp / "cert.pem"), f"https://{NAME}/dead")
    script += "; echo tls=$?"
    out = env.vm(script, "--http-proxy", "127.0.0.1:1", "--https-proxy", "127.0.0.1:1")
    code, seconds, tls = out.stdout.split()
    assert code == "502" and float(seconds) < 2, out.stdout
    assert tls == "tls=35" or tls == "tls=56", out.stdout  # reset during the handshake
    assert "cannot reach proxy 127.0.0.1:1" in out.stderr, out.stderr


def test_reload_keeps_the_last_good_file(env: ProxyEnv) -> None:
    path = env.tmp / "reload.json"
    path.write_text(json.dumps({"http": PROXY}))
    excluded = json.dumps({"http": PROXY, "exclude": NAME})
    script = "; ".join([
        curl(f"http://{NAME}/before"),
        f"echo '{excluded}' > {path}.new && mv {path}.new {path}",
        "sleep 2.5",
        curl(f"http://{NAME}/after"),
        f"echo '{{\"http\": \"no port here\"}}' > {path}.new && mv {path}.new {path}",
        "sleep 2.5",
        curl(f"http://{NAME}/after-bad"),
    ])
    out = env.vm(script, "--http", str(path))
    assert out.returncode == 0, out.stderr
    before, after, after_bad = out.stdout.splitlines()
    assert "via=1.1 tinyproxy" in before, out.stdout
    assert after == f"host={NAME} via=None path=/after tls=0", out.stdout
    assert after_bad == f"host={NAME} via=None path=/after-bad tls=0", out.stdout
    assert "keeping the previous configuration" in out.stderr, out.stderr


def test_bad_file_at_start_is_one_line(env: ProxyEnv) -> None:
    path = write_config(env, "bad.json", {"http": PROXY, "exclude": "a b!"})
    out = env.vm("true", "--http", path)
    assert out.returncode == 2
    assert out.stderr == f"pyvpnkit: --http {path}: exclude: 'b!' is not a domain, " \
        "address or CIDR\n"


def test_large_download_through_the_proxy(env: ProxyEnv) -> None:
    want = hashlib.sha256(pattern(BIG)).hexdigest()
    start = time.monotonic()
    out = env.vm(curl(f"http://{NAME}/bytes/{BIG}", "| sha256sum"), "--http-proxy", PROXY,
                 "--mtu", "65520", timeout=120)
    took = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == want
    assert env.proxied(f"GET http://{NAME}/bytes/{BIG} HTTP/1.1")
    print(f"{BIG >> 20} MB through pyvpnkit and tinyproxy in {took:.1f} s")


def test_api_get_and_post(env: ProxyEnv) -> None:
    sock = env.tmp / "api.sock"
    api = f"curl -sS --unix-socket {sock}"
    script = "; ".join([
        curl(f"http://{NAME}/api-before"),
        f"{api} http://x/http_proxy.json; echo",
        f"{api} -d '{{\"http\": \"{PROXY}\"}}' http://x/http_proxy.json; echo",
        curl(f"http://{NAME}/api-after"),
        f"curl -sS -o /dev/null -w '%{{http_code}}\\n' --unix-socket {sock} -d '[1]' "
        "http://x/http_proxy.json",
    ])
    out = env.vm(script, "--api", f"unix://{sock}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"host={NAME} via=None path=/api-before tls=0"
    assert json.loads(lines[1])["transparent_http_ports"] == [80]
    assert json.loads(lines[2])["http"] == PROXY
    assert "via=1.1 tinyproxy" in lines[3]
    assert lines[4] == "400"



SLOW_CLIENT = """
import socket, time
s = socket.create_connection(("203.0.113.2", 80))
s.sendall(b"GET /slow/10 HTTP/1.1\\r\\nHost: www.example.test\\r\\n\\r\\n")
start, data, half = time.monotonic(), b"", None
while True:
    data += s.recv(65536)
    body = data.partition(b"\\r\\n\\r\\n")[2]
    if half is None and len(body) >= 500:
        half = time.monotonic() - start
    if len(body) >= 1000:
        break
print(half, time.monotonic() - start)
"""


def test_a_slow_body_goes_on_as_it_comes(env: ProxyEnv) -> None:
    """The proxy gathers a body's small reads (SO_RCVLOWAT), but never holds them long."""
    out = env.vm(f"python3 -c '{SLOW_CLIENT}'", "--http-proxy", PROXY)
    assert out.returncode == 0, out.stderr
    half, total = (float(x) for x in out.stdout.split())
    assert total > 1.5 and half < total - 0.5, out.stdout  # the half came mid-way, not at the end
