"""vpnkit's http_proxy.json: parsing, strict errors, exclusion and allow matching."""

from __future__ import annotations

import base64
import json

import pytest

from pyvpnkit.core.http_proxy.config import (
    DEFAULT_ALLOW_ERROR,
    ConfigError,
    HostList,
    ProxyConfig,
    Upstream,
    parse_config,
    parse_upstream,
    split_list,
    with_overrides,
)


def hosts(text: str) -> HostList:
    return HostList.parse(split_list(text), "exclude")


def test_defaults_intercept_nothing() -> None:
    cfg = parse_config("{}")
    assert cfg == ProxyConfig()
    assert cfg.transparent_mode(80) is None and cfg.transparent_mode(443) is None
    assert cfg.allowed("anything")


def test_vpnkit_file() -> None:
    cfg = parse_config(json.dumps({
        "http": "proxy.corp:3128",
        "https": "http://alice:s%40cret@10.0.0.1:8080/",
        "exclude": "*.local,  internal.corp 10.0.0.0/8 ::1",
        "transparent_http_ports": [80, 8080],
        "transparent_https_ports": [443, 8443],
    }))
    assert cfg.http == Upstream("proxy.corp", 3128, None, "proxy.corp:3128")
    assert cfg.https is not None and (cfg.https.host, cfg.https.port) == ("10.0.0.1", 8080)
    assert cfg.https.authorization == "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert cfg.transparent_mode(8080) == "http" and cfg.transparent_mode(8443) == "https"
    assert cfg.transparent_mode(22) is None
    assert cfg.to_json()["exclude"] == "*.local internal.corp 10.0.0.0/8 ::1"
    assert parse_config(json.dumps(cfg.to_json())) == cfg


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("example.com", "example.com", True),
        ("example.com", "a.example.com", True),  # label-wise from the right
        ("example.com", "a.b.example.com", True),
        ("example.com", "badexample.com", False),
        ("example.com", "example.com.evil", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        (".example.com", "a.example.com", True),  # an empty label is any label
        ("a.*.com", "a.b.com", True),
        ("a.*.com", "x.a.b.com", True),
        ("a.*.com", "b.b.com", False),
        ("Example.COM", "www.example.com.", True),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("192.168.1.5", "192.168.1.5", True),
        ("192.168.1.5", "192.168.1.6", False),
        ("fd00::/8", "[fd00::1]", True),
        ("::1", "::1", True),
        ("10.0.0.0/8", "10.example.com", False),
        ("example.com", "10.0.0.1", False),
    ],
)
def test_exclude_matching(pattern: str, host: str, matches: bool) -> None:
    assert hosts(pattern).matches(host) is matches


def test_excluded_by_name_or_address() -> None:
    cfg = ProxyConfig(exclude=hosts("corp.example, 10.0.0.0/8"))
    assert cfg.excluded("git.corp.example", "1.2.3.4")
    assert cfg.excluded(None, "10.2.3.4")
    assert not cfg.excluded("example.org", "1.2.3.4")


def test_allow_list() -> None:
    cfg = parse_config(json.dumps({"allow_enabled": True, "allow": ["*.good.test"]}))
    assert cfg.transparent_mode(80) == "http"  # an allow list alone intercepts
    assert cfg.allowed("a.good.test") and not cfg.allowed("evil.test")
    assert cfg.forbidden_message("evil.test") == DEFAULT_ALLOW_ERROR.replace("%s", "evil.test")
    custom = parse_config('{"allow_enabled": true, "allow_error_msg": "no %s here"}')
    assert custom.forbidden_message("x.test") == "no x.test here"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "expected a JSON object"),
        ("{", "not JSON"),
        ('{"htpp": "a:1"}', "unknown key 'htpp'"),
        ('{"http": "proxy"}', "http: 'proxy' is not host:port"),
        ('{"http": "proxy:99999"}', "is not host:port"),
        ('{"https": "https://proxy:443"}', "only http:// proxies are supported"),
        ('{"http": "http://proxy:80/path"}', "is not host:port"),
        ('{"http": 3128}', "http: 3128 is not a string"),
        ('{"exclude": "ok.test bad_host!"}', "exclude: 'bad_host!' is not a domain"),
        ('{"transparent_http_ports": [80, 0]}', "transparent_http_ports: [80, 0] is not"),
        ('{"transparent_https_ports": "443"}', "transparent_https_ports: \"443\" is not"),
        ('{"allow_enabled": "yes"}', "allow_enabled: \"yes\" is not true or false"),
        ('{"allow": "a.test"}', "allow: \"a.test\" is not a list of strings"),
    ],
)
def test_errors_name_the_key_and_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def test_upstream_forms() -> None:
    assert parse_upstream("127.0.0.1:8888") == Upstream("127.0.0.1", 8888, None, "127.0.0.1:8888")
    assert str(parse_upstream("http://[::1]:3128/")) == "[::1]:3128"
    auth = parse_upstream("http://user:@p:1").authorization
    assert auth == "Basic " + base64.b64encode(b"user:").decode()


def test_flags_override_the_file() -> None:
    cfg = parse_config('{"http": "a:1", "exclude": "x.test"}')
    out = with_overrides(cfg, http=parse_upstream("b:2"), exclude=hosts("y.test"))
    assert out.http is not None and out.http.host == "b"
    assert out.excluded("y.test") and not out.excluded("x.test")
    assert with_overrides(cfg) == cfg
