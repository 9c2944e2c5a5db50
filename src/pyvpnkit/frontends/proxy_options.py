"""Command-line options of the HTTP proxy, and the Options fields they give.

`--http FILE` is vpnkit's http_proxy.json; `--http-proxy`, `--https-proxy`
and `--no-proxy` override its keys (or stand alone). The process
environment's *_proxy variables are read only with `--proxy-from-env`, and
then only as defaults for those three flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from pyvpnkit.core.http_proxy.config import (
    ConfigError,
    HostList,
    Upstream,
    parse_upstream,
    split_list,
)
from pyvpnkit.errors import UserError


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


def _env(*names: str) -> tuple[str, str] | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return name, value
    return None


def proxy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Options fields of the flags above; with --proxy-from-env, the environment fills
    in what the flags do not give (a bad variable is a UserError naming it)."""
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
    return {"http": getattr(args, "http", None), "http_proxy": http, "https_proxy": https,
            "no_proxy": exclude}
