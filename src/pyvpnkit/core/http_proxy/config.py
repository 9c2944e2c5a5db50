"""vpnkit's http_proxy.json: upstream proxies, exclusions, transparent ports, an allow list.

Parsing is strict where vpnkit is lenient: an upstream it cannot parse makes
vpnkit silently go direct, which bypasses a company proxy; here every bad
value is a ConfigError naming the key and the value, and the caller keeps the
last good configuration.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_ALLOW_ERROR = (
    "Connections to %s are forbidden by policy. Please contact your IT administrator."
)
KEYS = (
    "http", "https", "exclude", "transparent_http_ports", "transparent_https_ports",
    "allow_enabled", "allow", "allow_error_msg",
)


class ConfigError(ValueError):
    """One line naming the bad key and value."""


@dataclass(frozen=True)
class Upstream:
    """An upstream proxy; credentials in its URL become Proxy-Authorization: Basic."""

    host: str
    port: int
    authorization: str | None = None
    url: str = ""  # as configured, for GET /http_proxy.json

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_upstream(text: str, key: str = "http") -> Upstream:
    """`host:port` or `http://[user:pass@]host:port[/]`."""
    raw = text.strip()
    if not raw:
        raise ConfigError(f"{key}: empty proxy address")
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    if parts.scheme != "http":
        raise ConfigError(f"{key}: {text!r}: only http:// proxies are supported")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port is None or port < 1 or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ConfigError(f"{key}: {text!r} is not host:port or http://[user:pass@]host:port/")
    auth = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
    return Upstream(parts.hostname, port, auth, raw)


_LABEL = re.compile(r"[a-z0-9_*]([a-z0-9_-]*[a-z0-9_])?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostList:
    """Exclusion or allow entries: domains (label-wise from the right), addresses, CIDRs.

    A domain pattern matches a name whose rightmost labels match all of its
    labels, where `*` or an empty label matches any one label: `example.com`
    covers `a.example.com`, `*.example.com` covers `a.example.com` only.
    """

    domains: tuple[tuple[str, ...], ...] = ()  # labels, rightmost first; "" = any
    networks: tuple[Network, ...] = ()
    text: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: list[str], key: str) -> HostList:
        domains: list[tuple[str, ...]] = []
        networks: list[Network] = []
        for entry in entries:
            item = entry.strip().lower()
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            labels = tuple("" if lab == "*" else lab for lab in reversed(item.split(".")))
            if len(item) > 253 or not all(lab == "" or _LABEL.fullmatch(lab) for lab in labels):
                raise ConfigError(f"{key}: {entry!r} is not a domain, address or CIDR")
            domains.append(labels)
        return cls(tuple(domains), tuple(networks), tuple(entries))

    def matches(self, host: str) -> bool:
        """Whether a host name or an IP address (text) is on the list."""
        host = host.lower().strip("[]").rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            labels = host.split(".")[::-1]
            return any(
                len(labels) >= len(pattern)
                and all(p == "" or p == lab for p, lab in zip(pattern, labels, strict=False))
                for pattern in self.domains
            )
        return any(address.version == net.version and address in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.domains or self.networks)


def split_list(text: str) -> list[str]:
    """vpnkit's exclude string: entries separated by commas or whitespace."""
    return [e for e in re.split(r"[\s,]+", text) if e]


@dataclass(frozen=True)
class ProxyConfig:
    http: Upstream | None = None
    https: Upstream | None = None
    exclude: HostList = field(default_factory=HostList)
    http_ports: frozenset[int] = frozenset({80})
    https_ports: frozenset[int] = frozenset({443})
    allow_enabled: bool = False
    allow: HostList = field(default_factory=HostList)
    allow_error_msg: str = DEFAULT_ALLOW_ERROR

    def transparent_mode(self, port: int) -> str | None:
        """"http" or "https" when VM connections to this port go through the proxy."""
        if port in self.http_ports and (self.http is not None or self.allow_enabled):
            return "http"
        if port in self.https_ports and (self.https is not None or self.allow_enabled):
            return "https"
        return None

    def excluded(self, *hosts: str | None) -> bool:
        return any(h is not None and self.exclude.matches(h) for h in hosts)

    def allowed(self, *hosts: str | None) -> bool:
        return not self.allow_enabled or any(h is not None and self.allow.matches(h) for h in hosts)

    def forbidden_message(self, host: str) -> str:
        return self.allow_error_msg.replace("%s", host)

    def to_json(self) -> dict[str, Any]:
        """The file's keys, as vpnkit writes them back."""
        out: dict[str, Any] = {}
        if self.http is not None:
            out["http"] = self.http.url
        if self.https is not None:
            out["https"] = self.https.url
        out["exclude"] = " ".join(self.exclude.text)
        out["transparent_http_ports"] = sorted(self.http_ports)
        out["transparent_https_ports"] = sorted(self.https_ports)
        out["allow_enabled"] = self.allow_enabled
        out["allow"] = list(self.allow.text)
        out["allow_error_msg"] = self.allow_error_msg
        return out


def _ports(value: object, key: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
    ):
        raise ConfigError(f"{key}: {json.dumps(value)} is not a list of ports 1..65535")
    return frozenset(value)


def config_from_json(obj: object) -> ProxyConfig:
    """Validate a decoded http_proxy.json."""
    if not isinstance(obj, dict):
        raise ConfigError("expected a JSON object")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    strings = {}
    for key in ("http", "https", "exclude", "allow_error_msg"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}: {json.dumps(value)} is not a string")
        strings[key] = value
    allow = obj.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigError(f"allow: {json.dumps(allow)} is not a list of strings")
    allow_enabled = obj.get("allow_enabled", False)
    if not isinstance(allow_enabled, bool):
        raise ConfigError(f"allow_enabled: {json.dumps(allow_enabled)} is not true or false")
    return ProxyConfig(
        http=parse_upstream(strings["http"], "http") if strings["http"] else None,
        https=parse_upstream(strings["https"], "https") if strings["https"] else None,
        exclude=HostList.parse(split_list(strings["exclude"] or ""), "exclude"),
        http_ports=_ports(obj.get("transparent_http_ports", [80]), "transparent_http_ports"),
        https_ports=_ports(obj.get("transparent_https_ports", [443]), "transparent_https_ports"),
        allow_enabled=allow_enabled,
        allow=HostList.parse(allow, "allow"),
        allow_error_msg=strings["allow_error_msg"] or DEFAULT_ALLOW_ERROR,
    )


def parse_config(text: str) -> ProxyConfig:
    """Parse http_proxy.json text; ConfigError says what is wrong in one line."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not JSON ({exc})") from None
    return config_from_json(obj)


def with_overrides(
    config: ProxyConfig,
    http: Upstream | None = None,
    https: Upstream | None = None,
    exclude: HostList | None = None,
) -> ProxyConfig:
    """The short flags (--http-proxy, --https-proxy, --no-proxy) win over the file."""
    changes: dict[str, Any] = {}
    if http is not None:
        changes["http"] = http
    if https is not None:
        changes["https"] = https
    if exclude is not None:
        changes["exclude"] = exclude
    return dataclasses.replace(config, **changes)
