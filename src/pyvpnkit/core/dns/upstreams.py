"""The host's resolv.conf as the forwarder's upstream list, followed as it changes.

A VPN that connects, a Wi-Fi switch or systemd-resolved rewrites resolv.conf
under a running stack; the guest keeps asking the gateway, so the stack must
follow. The runtime reads the file when it changes (runtime/filewatch.py) and
hands the text here; this decides what the text means:

- new nameservers or search domains replace the old ones; queries in flight
  keep the order of servers they started with (forwarder.py), so they finish
  against the server they were sent to, and only new queries use the new list;
- a file that is unreadable or names no usable server keeps the last good list
  (a resolv.conf is often truncated and rewritten, and an empty list would
  fail every query);
- the stack's own addresses are never upstreams: forwarding there would send
  the query back into ourselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pyvpnkit.core.dns.resolvconf import parse_resolv_conf

Server = tuple[str, int]
Outcome = Literal["changed", "unchanged", "kept"]


class HostUpstreams:
    """The current upstream servers and search domains, and when they were loaded."""

    def __init__(self, exclude: Iterable[bytes | str] = ()) -> None:
        self._exclude = tuple(exclude)
        self.servers: list[Server] = []
        self.search: list[str] = []
        self.loaded_at: float | None = None  # `now` of the last load that changed something
        self.reloads = 0  # changes after the first load
        self.kept = 0  # texts refused, the last good list kept
        self.problem = ""  # why the last text was refused; "" when it was fine

    def update(self, text: str | None, now: float) -> Outcome:
        """Take a new resolv.conf text (None: the file could not be read)."""
        if text is None:
            return self._keep("cannot be read")
        servers, search = parse_resolv_conf(text, exclude=self._exclude)
        if not servers:
            return self._keep("names no usable nameserver")
        self.problem = ""
        if servers == self.servers and search == self.search:
            return "unchanged"
        if self.loaded_at is not None:
            self.reloads += 1
        self.servers, self.search, self.loaded_at = servers, search, now
        return "changed"

    def _keep(self, problem: str) -> Outcome:
        if problem == self.problem:
            return "unchanged"  # already reported
        self.problem = problem
        self.kept += 1
        return "kept"


__all__ = ["HostUpstreams", "Outcome", "Server"]
