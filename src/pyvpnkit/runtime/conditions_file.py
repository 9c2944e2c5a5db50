"""--conditions FILE: the rule list as JSON, loaded at start and reloaded when it changes.

A bad file at start is a user error; a bad edit later keeps the rules in place
and logs one line (as --http does), so a half-saved file never opens the gates.
"""

from __future__ import annotations

import asyncio
import json
import logging

from pyvpnkit.core.conditions import ConditionError, Conditions
from pyvpnkit.runtime.dns_upstream import HostsFileWatcher

log = logging.getLogger("pyvpnkit")

WATCH_INTERVAL = 1.0


def load_conditions(path: str, conditions: Conditions) -> None:
    """Replace the rules with the file's; OSError or ConditionError (naming the rule)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        rules = json.loads(text)
    except ValueError as exc:
        raise ConditionError(f"not JSON: {exc}") from None
    conditions.replace(rules)


class ConditionsWatcher:
    def __init__(self, path: str, conditions: Conditions) -> None:
        self.path = path
        self._conditions = conditions
        self._first = True
        self._watcher = HostsFileWatcher(path, self._reload, min_interval=WATCH_INTERVAL)
        self._timer: asyncio.TimerHandle | None = None

    def _reload(self, _text: str) -> None:
        if self._first:  # start-up already loaded it
            self._first = False
            return
        try:
            load_conditions(self.path, self._conditions)
        except (OSError, ConditionError) as exc:
            log.error("--conditions %s: %s; keeping the previous rules", self.path, exc)
            return
        log.info("--conditions %s reloaded: %d rule(s)", self.path, len(self._conditions.rules))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher.check(loop.time())
        self._timer = loop.call_later(WATCH_INTERVAL, self.start, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["ConditionsWatcher", "load_conditions"]
