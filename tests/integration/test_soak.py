"""A short bench/soak.py run: mixed traffic, no errors, descriptors back, RSS steady.

Forty seconds of RSS cannot tell a slow leak from warm-up, so the tables that
must follow the flow count are checked too: the TCP deadline heap once grew by
thousands of stale entries a minute (issue 14's drift of ~1.5 MB a minute).
"""

from __future__ import annotations

import pytest

from bench.soak import soak


@pytest.mark.slow
def test_short_soak() -> None:
    res = soak(40, 5, report=print)
    traffic = res["traffic"]
    assert traffic["errors"] == 0, res
    assert traffic["short_tcp"] > 100 and traffic["stream_mb"] > 0, res
    assert traffic["udp"] > 100 and traffic["dns"] > 50 and traffic["ping_ok"] == 2, res
    assert res["fds_back"], res
    assert res["tables_bounded"], res
    assert res["rss_drift_after_warmup_mb"] < 10, res
