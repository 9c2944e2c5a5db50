"""Running the drop-in: serve the target's TAP, speak slirp4netns's fds and API.

The stack is pyvpnkit's ordinary Service; this module only adds what
slirp4netns's callers rely on: the ready fd (written once frames flow), the
exit fd, the API socket, ending when the target goes away, and the sandbox.
The TAP is already open (cli.main makes it before importing this module).
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from functools import partial

from pyvpnkit.app.options import Options
from pyvpnkit.app.service import Service
from pyvpnkit.core.config import NetConfig
from pyvpnkit.frontends.slirp4netns import PROG, api, sandbox
from pyvpnkit.frontends.slirp4netns.opts import Opts
from pyvpnkit.runtime.childwatch import watch_exit
from pyvpnkit.runtime.forwarder import ForwardError
from pyvpnkit.runtime.host_icmp import choose_mode
from pyvpnkit.runtime.netns import Attached

log = logging.getLogger("pyvpnkit.frontends.slirp4netns")

TARGET_POLL = 1.0  # seconds between checks that a --netns-type=path namespace still exists


def service_options(opts: Opts) -> Options:
    """pyvpnkit's own option defaults, with what slirp4netns fixes."""
    # slirp4netns forwards every name; it answers none itself
    return Options(hosts="/dev/null", ifname=opts.tapname, netns=opts.target,
                   outbound=opts.outbound, guest_ip=socket.inet_aton(opts.guest))


class Slirp4netns:
    def __init__(self, opts: Opts, service: Service, attached: Attached,
                 api_socket: _socket.socket | None) -> None:
        self.opts = opts
        self.api_socket = api_socket
        self.service = service
        self.attached = attached
        self.failed = False
        self.server: asyncio.Server | None = None
        # The target is checked through its directory: the sandbox hides its path.
        path = opts.netns_path
        self._target_dir = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_CLOEXEC)
        self._target_name = os.path.basename(path)
        self._target = os.stat(self._target_name, dir_fd=self._target_dir)
        self._api_dir: int | None = None  # the API socket's directory, to unlink it at exit
        if api_socket is not None:
            directory = os.path.dirname(opts.api_socket) or "."
            self._api_dir = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._unwatch: Callable[[], None] | None = None  # stops watching the target pid

    async def started(self) -> None:
        """Links are up: API socket, exit fd, target watch, sandbox, then the ready fd."""
        loop = asyncio.get_running_loop()
        opts, service = self.opts, self.service
        if self.api_socket is not None:
            assert service.extras is not None
            table = api.HostFwdApi(service.extras.forwarder, opts.guest)
            try:
                self.server = await api.serve(table, self.api_socket)
            except (ForwardError, OSError) as exc:
                return self._fail(f"API socket {opts.api_socket}: {exc}")
        try:
            if opts.exit_fd is not None:
                loop.add_reader(opts.exit_fd, self._gone, "the exit fd was closed")
            if opts.netns_type == "pid":
                self._unwatch = watch_exit(
                    loop, int(opts.target),
                    partial(self._gone, f"process {opts.target} exited"), child=False)
            else:
                loop.call_later(TARGET_POLL, self._check_path)
        except OSError as exc:  # a bad -e fd, the target already gone
            return self._fail(f"{exc.strerror or exc} (exit fd {opts.exit_fd}, "
                              f"target {opts.target})")
        if opts.enable_sandbox or opts.enable_seccomp:
            try:
                applied = sandbox.confine(opts.enable_sandbox, opts.enable_seccomp, self._api_dir,
                                          keep_raw=choose_mode() == "raw")
            except OSError as exc:
                return self._fail(f"sandbox: {exc.strerror or exc}")
            log.info("sandbox: %s", ", ".join(applied))
        if opts.ready_fd is not None:
            try:
                try:
                    os.write(opts.ready_fd, b"1")
                finally:
                    os.close(opts.ready_fd)
            except OSError as exc:
                return self._fail(f"{exc.strerror or exc} (ready fd {opts.ready_fd})")

    def _fail(self, message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr)
        self.failed = True
        self.service.stop()

    def _gone(self, why: str) -> None:
        log.info("exiting: %s", why)
        loop = asyncio.get_running_loop()
        if self.opts.exit_fd is not None:
            loop.remove_reader(self.opts.exit_fd)
        self._stop_watching()
        self.service.stop()

    def _stop_watching(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def _check_path(self) -> None:
        """A --netns-type=path namespace is gone once its bind mount is."""
        try:
            st = os.stat(self._target_name, dir_fd=self._target_dir)
            same = (st.st_dev, st.st_ino) == (self._target.st_dev, self._target.st_ino)
        except OSError:
            same = False
        if not same:
            self._gone(f"namespace {self.opts.target} was removed")
            return
        asyncio.get_running_loop().call_later(TARGET_POLL, self._check_path)

    async def run(self) -> int:
        code = await self.service.run_forever(self.attached, None, on_started=self.started)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self._api_dir is not None:
            try:  # through the directory: the sandbox has hidden the path
                os.unlink(os.path.basename(self.opts.api_socket), dir_fd=self._api_dir)
            except OSError:
                pass
            os.close(self._api_dir)
        self._stop_watching()
        os.close(self._target_dir)
        return 1 if self.failed else code


def run(opts: Opts, config: NetConfig, attached: Attached,
        api_socket: _socket.socket | None) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {PROG} %(levelname)s: %(message)s",
    )
    service = Service(config, service_options(opts))
    return asyncio.run(Slirp4netns(opts, service, attached, api_socket).run())
