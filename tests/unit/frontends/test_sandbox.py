"""The seccomp filter and the Landlock ruleset really apply: each is tried in a forked
child (confinement cannot be undone), which reports what it saw as JSON."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyvpnkit.runtime import landlock, seccomp, sysns

_libc = ctypes.CDLL(None, use_errno=True)


def _in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(body()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - report anything
            os.write(w, json.dumps({"error": repr(exc)}).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _pid, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


def _errno_of(ret: int) -> int:
    return ctypes.get_errno() if ret == -1 else 0


def _seccomp_status() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Seccomp:"))


def _sockets_work() -> bool:
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        conn, _ = server.accept()
        with conn:
            client.sendall(b"x")
            return conn.recv(1) == b"x"


def _thread_and_fork_work() -> bool:
    seen: list[int] = []
    t = threading.Thread(target=seen.append, args=(1,))  # clone3 -> ENOSYS -> clone
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os._exit(7)
    return seen == [1] and os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7


def _seccomp_child() -> dict[str, Any]:
    before = _seccomp_status()
    denied = seccomp.install()
    lib = seccomp.load_library()
    clone_nr = lib.seccomp_syscall_resolve_name(b"clone")
    # clone(CLONE_NEWUSER | SIGCHLD) unfiltered makes a child: it must leave at once
    ret = _libc.syscall(ctypes.c_long(clone_nr), ctypes.c_ulong(0x10000000 | 17), 0, 0, 0, 0)
    if ret == 0:  # pragma: no cover - the filter failed: the new child
        os._exit(0)
    clone_errno = _errno_of(ret)
    if ret > 0:
        os.waitpid(ret, 0)
    try:
        os.execv("/bin/true", ["true"])
    except OSError as exc:
        exec_errno = exc.errno
    return {
        "before": before, "after": _seccomp_status(), "denied": denied,
        "unshare": _errno_of(_libc.unshare(sysns.CLONE_NEWUSER)),
        "ptrace": _errno_of(_libc.ptrace(0, 0, None, None)),  # PTRACE_TRACEME
        "clone_newuser": clone_errno, "execve": exec_errno,
        "sockets": _sockets_work(), "thread_and_fork": _thread_and_fork_work(),
    }


def _seccomp_missing() -> bool:
    try:
        seccomp.load_library()
    except OSError:
        return True
    return False


@pytest.mark.skipif(_seccomp_missing(), reason="libseccomp.so.2 is not installed")
def test_seccomp_filter_is_loaded_and_refuses_with_eperm() -> None:
    got = _in_child(_seccomp_child)
    assert got.get("error") is None, got
    assert (got["before"], got["after"]) == ("0", "2"), got
    for call in ("unshare", "ptrace", "clone_newuser", "execve"):
        assert got[call] == 1, (call, got)  # EPERM
    assert got["sockets"] and got["thread_and_fork"], got
    assert {"mount", "setns", "bpf", "ptrace"} <= set(got["denied"])


def test_seccomp_without_library_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "LIBRARY", "libseccomp-missing.so.0")
    with pytest.raises(OSError) as exc:
        seccomp.install()
    assert exc.value.strerror == "libseccomp-missing.so.0 not found (install libseccomp2)"


LANDLOCK, LANDLOCK_WHY = landlock.abi()


@pytest.mark.skipif(not LANDLOCK, reason=f"Landlock: {LANDLOCK_WHY}")
def test_landlock_refuses_writes_keeps_reads(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    for d in (allowed, outside):
        (d / "old").write_text("old")

    def body() -> dict[str, Any]:
        early = open(outside / "early", "w")  # noqa: SIM115 - opened before: keeps working
        sysns.set_no_new_privs()
        landlock.restrict(LANDLOCK, [os.open(allowed, os.O_PATH | os.O_CLOEXEC)])
        results: dict[str, Any] = {"read": (outside / "old").read_text()}
        early.write("still")
        early.close()
        attempts: dict[str, Callable[[], object]] = {
            "create": lambda: open(outside / "new", "w"),
            "append": lambda: open(outside / "old", "a"),
            "remove": lambda: os.unlink(outside / "old"),
            "mkdir": lambda: os.mkdir(outside / "d"),
            "create_in_allowed": lambda: open(allowed / "new", "w"),
            "exec": lambda: os.execv("/bin/true", ["true"]),
        }
        for what, attempt in attempts.items():
            try:
                attempt()
                results[what] = 0
            except OSError as exc:
                results[what] = exc.errno
        os.unlink(allowed / "old")  # the API socket's directory: removing stays allowed
        return results

    got = _in_child(body)
    assert got.get("error") is None, got
    assert got["read"] == "old" and (outside / "early").read_text() == "still"
    for what in ("create", "append", "remove", "mkdir", "create_in_allowed", "exec"):
        assert got[what] == 13, (what, got)  # EACCES
    assert not (allowed / "old").exists() and (outside / "old").exists()


def test_confine_says_when_landlock_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyvpnkit.frontends.slirp4netns import sandbox

    monkeypatch.setattr(landlock, "abi", lambda: (0, "disabled in this kernel"))
    got = _in_child(lambda: {"applied": sandbox.confine(True, False)})
    assert got.get("error") is None, got
    assert "no_new_privs" in got["applied"]
    assert got["applied"][-1] == "no Landlock (disabled in this kernel)"
    assert not any(a.startswith(("Landlock", "seccomp")) for a in got["applied"])


def test_confine_refuses_once_threads_run() -> None:
    """Capabilities, no_new_privs and Landlock bind one thread: never claim them for all."""
    from pyvpnkit.frontends.slirp4netns import sandbox

    def body() -> dict[str, Any]:
        stop = threading.Event()
        threading.Thread(target=stop.wait).start()
        try:
            sandbox.confine(True, False)
            return {"refused": False}
        except OSError as exc:
            return {"refused": True, "why": exc.strerror}
        finally:
            stop.set()

    got = _in_child(body)
    assert got == {"refused": True, "why": "2 threads run: confinement must come before any"}


def test_drop_in_refuses_enable_seccomp_without_libseccomp(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One line and exit 1 before joining anything, as slirp4netns fails without a filter."""
    from pyvpnkit.frontends.slirp4netns.cli import main

    monkeypatch.setattr(seccomp, "LIBRARY", "libseccomp-missing.so.0")
    assert main(["--enable-seccomp", "4242", "tap0"]) == 1
    err = capsys.readouterr().err
    assert err == ("pyvpnkit-slirp4netns: --enable-seccomp: libseccomp-missing.so.0 not found "
                   "(install libseccomp2)\n")
