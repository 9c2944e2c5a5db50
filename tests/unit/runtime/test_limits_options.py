"""The limits options: one clear line for a bad value, --runas resolution."""

from __future__ import annotations

import pytest

from pyvpnkit.frontends.cli import main, make_parser
from pyvpnkit.runtime.limits import DescriptorBudget, Throttle
from pyvpnkit.runtime.privileges import RunAsError, resolve


def test_defaults() -> None:
    args = make_parser().parse_args(["run", "--tap", "t0"])
    assert (args.connect_timeout, args.max_pending_connects, args.dns_timeout) == (30.0, 1024, 5.0)
    assert args.runas is None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--tap", "t", "--connect-timeout", "0"],
         "--connect-timeout '0': must be a number of seconds above 0 (see --help)"),
        (["run", "--tap", "t", "--max-pending-connects", "0"],
         "--max-pending-connects '0': must be a whole number from 1"),
        (["run", "--tap", "t", "--runas", "no-such-user-pvk"], "no such user 'no-such-user-pvk'"),
        (["exec", "--runas", "nobody", "--", "true"], "--runas is for `pyvpnkit run`"),
    ],
)
def test_bad_values_are_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_runas_resolves_names_and_numbers() -> None:
    assert resolve("0") == (0, 0)
    assert resolve("root:root") == (0, 0)
    assert resolve("12345:54321") == (12345, 54321)
    with pytest.raises(RunAsError):
        resolve("root:no-such-group-pvk")


def test_budget_and_throttle() -> None:
    now = [0.0]
    budget = DescriptorBudget(1, lambda: now[0])
    assert budget.take("tcp") and not budget.take("udp")
    budget.give()
    assert budget.take("tcp")
    assert budget.describe()["udp_refused"] == 1 and budget.peak == 1
    throttle = Throttle(lambda: now[0], interval=10)
    assert throttle.event() == 1 and throttle.event() == 0 and throttle.event() == 0
    now[0] = 10.0
    assert throttle.event() == 3


def test_soft_limit_is_raised_to_the_hard_one() -> None:
    import resource

    from pyvpnkit.runtime.limits import raise_nofile_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        expected = hard if hard != resource.RLIM_INFINITY else raise_nofile_limit()
        assert raise_nofile_limit() == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
