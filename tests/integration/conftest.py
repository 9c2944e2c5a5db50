from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.integration.netenv import NetEnv
from tests.integration.rootless import User


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _can_run()
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def netenv() -> Iterator[NetEnv]:
    env = NetEnv()
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    """An unprivileged user the module's rootless tests run as, removed after them."""
    u = User.create()
    try:
        yield u
    finally:
        u.remove()
