"""FileWatcher on real files: in-place rewrites, rename replacement behind a
symlink, a re-pointed symlink; with inotify and with the stat poll alone."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pyvpnkit.runtime.filewatch import FileWatcher, read_text, watched_paths


def test_watched_paths_follow_every_symlink_hop(tmp_path: Path) -> None:
    (tmp_path / "run" / "resolve").mkdir(parents=True)
    target = tmp_path / "run" / "resolve" / "stub-resolv.conf"
    target.write_text("nameserver 10.0.0.1\n")
    (tmp_path / "etc").mkdir()
    hop = tmp_path / "run" / "current"
    hop.symlink_to("resolve/stub-resolv.conf")
    link = tmp_path / "etc" / "resolv.conf"
    link.symlink_to("../run/current")
    assert watched_paths(str(link)) == [
        str(tmp_path / "etc"), str(tmp_path / "run"), str(tmp_path / "run" / "resolve"),
        str(target),
    ]


async def _watch(path: Path, inotify: bool, change: object) -> tuple[list[str | None], float]:
    """Start a watcher, apply `change` once it has read the file; return what it
    read and how long the change took to be seen."""
    loop = asyncio.get_running_loop()
    seen: list[str | None] = []
    got = asyncio.Event()

    def changed() -> None:
        seen.append(read_text(str(path)))
        got.set()

    watcher = FileWatcher(str(path), changed, poll_interval=0.2, safety_interval=30.0,
                          use_inotify=inotify)
    watcher.start(loop)
    try:
        assert watcher.mode == ("inotify" if inotify else "poll")
        await asyncio.wait_for(got.wait(), 1)
        got.clear()
        await asyncio.sleep(0.05)
        start = loop.time()
        change()  # type: ignore[operator]
        await asyncio.wait_for(got.wait(), 2)
        took = loop.time() - start
        await asyncio.sleep(0.3)  # no more calls for the same change
    finally:
        watcher.close()
    return seen, took


@pytest.mark.parametrize("inotify", [True, False])
def test_rewritten_in_place(tmp_path: Path, inotify: bool) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.1\n")
    ino = path.stat().st_ino

    def rewrite() -> None:
        with open(path, "r+") as f:
            f.truncate(0)
            f.write("nameserver 10.0.0.2\n")

    seen, took = asyncio.run(_watch(path, inotify, rewrite))
    assert path.stat().st_ino == ino
    assert seen == ["nameserver 10.0.0.1\n", "nameserver 10.0.0.2\n"]
    assert took < (0.15 if inotify else 0.5)


@pytest.mark.parametrize("inotify", [True, False])
def test_target_of_a_symlink_replaced_by_rename(tmp_path: Path, inotify: bool) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "stub-resolv.conf").write_text("nameserver 10.0.0.1\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(run / "stub-resolv.conf")

    def replace() -> None:  # as systemd-resolved does
        (run / ".tmp").write_text("nameserver 10.0.0.3\n")
        os.rename(run / ".tmp", run / "stub-resolv.conf")

    seen, _took = asyncio.run(_watch(link, inotify, replace))
    assert seen == ["nameserver 10.0.0.1\n", "nameserver 10.0.0.3\n"]


def test_symlink_repointed_and_file_removed(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("nameserver 10.0.0.1\n")
    (tmp_path / "b").write_text("nameserver 10.0.0.4\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to("a")

    def repoint() -> None:
        (tmp_path / "new").symlink_to("b")
        os.rename(tmp_path / "new", link)

    seen, _took = asyncio.run(_watch(link, True, repoint))
    assert seen[-1] == "nameserver 10.0.0.4\n"

    def remove() -> None:
        os.unlink(tmp_path / "b")

    seen, _took = asyncio.run(_watch(link, True, remove))
    assert seen[-1] is None
