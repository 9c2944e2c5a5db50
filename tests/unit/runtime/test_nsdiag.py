"""One line per namespace set-up failure, naming the cause and the fix."""

from __future__ import annotations

import errno

import pytest

from pyvpnkit.runtime.nsdiag import (
    SYSCTL_APPARMOR,
    SYSCTL_MAX_USERNS,
    SYSCTL_UNPRIV_CLONE,
    explain,
)


def sysctls(**values: str):  # type: ignore[no-untyped-def]
    table = {SYSCTL_MAX_USERNS: values.get("max", "15000"),
             SYSCTL_UNPRIV_CLONE: values.get("clone"), SYSCTL_APPARMOR: values.get("aa")}
    return table.get


@pytest.mark.parametrize("err, values, words", [
    (errno.ENOSPC, {"max": "0"}, "sysctl -w user.max_user_namespaces="),
    (errno.EPERM, {"clone": "0"}, "sysctl -w kernel.unprivileged_userns_clone=1"),
    (errno.EPERM, {"aa": "1"}, "apparmor_restrict_unprivileged_userns=1"),
    (errno.EPERM, {}, "unshare -rn true"),
])
def test_user_namespace_refusals(err: int, values: dict[str, str], words: str) -> None:
    line = explain("userns", OSError(err, "x"), sysctls(**values))
    assert words in line and "\n" not in line and "run as root" in line


def test_tun_and_ip() -> None:
    assert "modprobe tun" in explain("tun", OSError(errno.ENOENT, "x"))
    assert "chmod 666 /dev/net/tun" in explain("tun", OSError(errno.EACCES, "x"))
    assert "install iproute2" in explain("ip", OSError(errno.ENOENT, "x"))


def test_ip_batch_failure_names_the_command(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """exec configures the interface in one `ip -batch -`; a failure names its line."""
    from pyvpnkit.runtime import netns

    fake = tmp_path / "ip"  # as iproute2 answers a batch whose second line fails
    fake.write_text("#!/bin/sh\n/bin/cat > " + str(tmp_path / "batch") + "\n"
                    "echo 'Cannot find device \"eth9\"' >&2\necho 'Command failed -:2' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Exception, match='ip link set eth9 up: Cannot find device "eth9"'):
        netns._ip(["link set lo up", "link set eth9 up", "link set lo down"])
    assert (tmp_path / "batch").read_text() == "link set lo up\nlink set eth9 up\nlink set lo down"
