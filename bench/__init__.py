"""Benchmarks, soak and fuzz runs: scripts to run, and modules tests import (``bench.soak``)."""
