"""--conditions FILE: the rule list as JSON, loaded at start and reloaded when it changes.

A bad file at start is a user error; a bad edit later keeps the rules in place
and logs one line (as --http does), so a half-saved file never opens the gates.
"""

from __future__ import annotations

import json
import logging

from pyvpnkit.core.conditions import ConditionError, Conditions
from pyvpnkit.runtime.filewatch import PolledFile

log = logging.getLogger("pyvpnkit")

WATCH_INTERVAL = 1.0


def load_conditions(path: str, conditions: Conditions) -> None:
    """Replace the rules with the file's; OSError or ConditionError (naming the rule)."""
    with open(path, encoding="utf-8") as f:
        _apply(f.read(), conditions)


def _apply(text: str, conditions: Conditions) -> None:
    try:
        rules = json.loads(text)
    except ValueError as exc:
        raise ConditionError(f"not JSON: {exc}") from None
    conditions.replace(rules)


def watch_conditions(path: str, conditions: Conditions) -> PolledFile:
    """A poll that reloads the rules when the file changes (start-up loaded them)."""

    def reload(text: str) -> None:
        try:
            _apply(text, conditions)
        except ConditionError as exc:  # a removed file reads as "": not JSON
            log.error("--conditions %s: %s; keeping the previous rules", path, exc)
            return
        log.info("--conditions %s reloaded: %d rule(s)", path, len(conditions.rules))

    return PolledFile(path, reload, WATCH_INTERVAL)


__all__ = ["load_conditions", "watch_conditions"]
