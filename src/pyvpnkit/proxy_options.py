"""Command-line options of the HTTP proxy, and the configuration they add up to.

`--http FILE` is vpnkit's http_proxy.json; `--http-proxy`, `--https-proxy`
and `--no-proxy` override its keys (or stand alone). The process
environment's *_proxy variables are read only with `--proxy-from-env`, and
then only as defaults for those three flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

from pyvpnkit.core.http_proxy.config import (
    ConfigError,
    HostList,
    ProxyConfig,
    Upstream,
    parse_config,
    parse_upstream,
    split_list,
    with_overrides,
)
from pyvpnkit.errors import SETUP_FAILED, UserError


def _upstream(flag: str) -> Callable[[str], Upstream]:
    def parse(text: str) -> Upstream:
        try:
            return parse_upstream(text, flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None

    return parse


def _no_proxy(text: str) -> HostList:
    try:
        return HostList.parse(split_list(text), "--no-proxy")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--no-proxy: ")) from None


def add_proxy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HTTP proxy (the gateway's port 3128 is always an HTTP proxy)")
    g.add_argument("--http", metavar="FILE",
                   help="vpnkit's http_proxy.json: upstream proxies, exclude, transparent "
                   "ports, allow list; reloaded when it changes")
    g.add_argument("--http-proxy", type=_upstream("--http-proxy"), metavar="URL",
                   help="upstream proxy for HTTP: host:port or http://[user:pass@]host:port")
    g.add_argument("--https-proxy", type=_upstream("--https-proxy"), metavar="URL",
                   help="upstream proxy for HTTPS (CONNECT), same forms")
    g.add_argument("--no-proxy", type=_no_proxy, metavar="LIST",
                   help="hosts that go direct: domains, addresses, CIDRs, comma-separated")
    g.add_argument("--proxy-from-env", action="store_true",
                   help="take http_proxy, https_proxy and no_proxy from the environment "
                   "when the flags above do not give them")


@dataclass(frozen=True)
class ProxySettings:
    """What the command line asks for; builds a ProxyConfig from the file's text."""

    path: str | None
    http: Upstream | None
    https: Upstream | None
    exclude: HostList | None

    def build(self, text: str | None) -> ProxyConfig:
        """ConfigError if the file's text is not a valid http_proxy.json."""
        base = parse_config(text) if text is not None else ProxyConfig()
        return with_overrides(base, self.http, self.https, self.exclude)

    def initial(self) -> ProxyConfig:
        """The configuration at start-up; a bad file is a UserError naming it."""
        if self.path is None:
            return self.build(None)
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UserError(f"--http {self.path}: {exc.strerror}", SETUP_FAILED) from None
        except UnicodeDecodeError as exc:
            raise UserError(f"--http {self.path}: not text ({exc})") from None
        try:
            return self.build(text)
        except ConfigError as exc:
            raise UserError(f"--http {self.path}: {exc}") from None


def _env(*names: str) -> tuple[str, str] | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return name, value
    return None


def proxy_settings(args: argparse.Namespace) -> ProxySettings:
    http = getattr(args, "http_proxy", None)
    https = getattr(args, "https_proxy", None)
    exclude = getattr(args, "no_proxy", None)
    if getattr(args, "proxy_from_env", False):
        try:
            found = _env("http_proxy", "HTTP_PROXY")
            if http is None and found:
                http = parse_upstream(found[1], found[0])
            found = _env("https_proxy", "HTTPS_PROXY")
            if https is None and found:
                https = parse_upstream(found[1], found[0])
            found = _env("no_proxy", "NO_PROXY")
            if exclude is None and found:
                exclude = HostList.parse(split_list(found[1]), found[0])
        except ConfigError as exc:
            raise UserError(f"--proxy-from-env: {exc}") from None
    return ProxySettings(getattr(args, "http", None), http, https, exclude)
