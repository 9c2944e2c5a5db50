"""vpnkit's watched files on a Service: --gateway-forwards and --dhcp-path (and the
static gateway forwards and --dns zones, applied with them).

Both are read at start-up, where a file that exists but cannot be understood
is a UserError naming it (a missing one is fine: it may appear later, as
vpnkit allows), then checked every second. A bad file on reload is logged and
the last good contents stay; a removed gateway-forwards file empties its table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pyvpnkit.app.options import Options
from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.nat.gateway_forwards import GatewayForwards, parse_json
from pyvpnkit.core.services.dhcp import parse_dhcp_json
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.errors import SETUP_FAILED, UserError
from pyvpnkit.runtime.filewatch import PolledFile

log = logging.getLogger("pyvpnkit")
DEFAULT_DOMAIN = NetConfig().domain


def _reader(flag: str, path: str, apply: Callable[[str], None]) -> Callable[[str], None]:
    def load(text: str) -> None:
        try:
            apply(text)
        except ValueError as exc:
            log.error("%s %s: %s; keeping the previous contents", flag, path, exc)
            return
        log.info("%s %s reloaded", flag, path)
    return load


def _initial(flag: str, path: str, apply: Callable[[str], None]) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path}: {getattr(exc, 'strerror', None) or exc}",
                        SETUP_FAILED) from None
    try:
        apply(text)
    except ValueError as exc:
        raise UserError(f"{flag} {path}: {exc}") from None


def load_vpnkit_files(stack: Stack, options: Options) -> list[PolledFile]:
    """Apply the static gateway forwards and both files now; the watchers to start."""
    table = stack.gateway_forwards = GatewayForwards(options.gateway_forwards)
    if options.dns_zones:
        stack.dns.forwarder.set_zones(dict(options.dns_zones))
    config = stack.config
    watched: list[tuple[str, str, Callable[[str], None]]] = []
    if options.gateway_forwards_file:
        def forwards(text: str) -> None:
            table.update(parse_json(text) if text.strip() else ())
        watched.append(("--gateway-forwards", options.gateway_forwards_file, forwards))
    if options.dhcp_file:
        def dhcp(text: str) -> None:
            domain, search = parse_dhcp_json(text) if text.strip() else (None, ())
            # A --domain other than the default wins over the file, as on vpnkit's command line.
            keep = config.domain != DEFAULT_DOMAIN or domain is None
            stack.dhcp.set_names(config.domain if keep else domain or "",
                                 search or config.search_domains)
        watched.append(("--dhcp-path", options.dhcp_file, dhcp))
    files = []
    for flag, path, apply in watched:
        _initial(flag, path, apply)
        polled = PolledFile(os.path.abspath(path), _reader(flag, path, apply))
        files.append(polled)
    return files
