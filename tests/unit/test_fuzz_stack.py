"""A bounded slice of bench/fuzz_stack.py: mutated frames of every protocol, every framing."""

from __future__ import annotations

import random

import pytest

from bench.fuzz_stack import fuzz


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, random.randrange(1 << 32)])
def test_stack_survives_mutated_frames(seed: int) -> None:
    res = fuzz(8000, seed, report=lambda _line: None)
    assert res["escaped"] == {}, (seed, res)
    assert res["internal_errors"] == 0, (seed, res["last_error"])
    assert res["still_serves_failures"] == [], (seed, res)
    assert res["effects"].get("TcpWrite", 0) > 0  # data flowed, not only handshakes
