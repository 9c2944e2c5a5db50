"""A bounded slice of bench/fuzz_stack.py: mutated frames of every protocol, every framing."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fuzz_stack.py"


def load_fuzzer():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fuzz_stack", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_stack"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [1, 2, random.randrange(1 << 32)])
def test_stack_survives_mutated_frames(seed: int) -> None:
    res = load_fuzzer().fuzz(8000, seed, report=lambda _line: None)
    assert res["escaped"] == {}, (seed, res)
    assert res["internal_errors"] == 0, (seed, res["last_error"])
    assert res["still_serves_failures"] == [], (seed, res)
    assert res["effects"].get("TcpWrite", 0) > 0  # data flowed, not only handshakes
