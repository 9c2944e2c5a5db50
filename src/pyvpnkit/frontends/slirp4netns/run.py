"""Running the drop-in: join the target, serve its TAP, speak slirp4netns's fds and API.

The stack is pyvpnkit's ordinary Service; this module only adds what
slirp4netns's callers rely on: the ready fd (written once frames flow), the
exit fd, the API socket, ending when the target goes away, and the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from pyvpnkit.app.options import Options
from pyvpnkit.app.service import Service
from pyvpnkit.core.config import NetConfig
from pyvpnkit.frontends.slirp4netns import PROG, api, sandbox
from pyvpnkit.runtime import seccomp
from pyvpnkit.runtime.forwarder import ForwardError
from pyvpnkit.runtime.netns import Attached, IfaceSetup, attach
from pyvpnkit.runtime.nsdiag import SetupError

log = logging.getLogger("pyvpnkit.frontends.slirp4netns")

TARGET_POLL = 1.0  # seconds between checks that a --netns-type=path namespace still exists


def service_options(opts: argparse.Namespace) -> Options:
    """pyvpnkit's own option defaults, with what slirp4netns fixes."""
    # slirp4netns forwards every name; it answers none itself
    return Options(hosts="/dev/null", ifname=opts.tapname, netns=opts.target)


def iface_setup(opts: argparse.Namespace, config: NetConfig) -> IfaceSetup:
    return IfaceSetup(
        ifname=opts.tapname,
        bring_up=opts.configure,
        address=socket.inet_ntoa(config.lowest_ip),  # the guest, .100
        prefixlen=config.prefixlen,
        gateway=socket.inet_ntoa(config.gateway_ip),
        mtu=opts.mtu,
        mac=opts.macaddress,
        ipv6=config.ipv6 is not None,  # by SLAAC from our RAs, as slirp4netns's guests
    )


def _namespaces(opts: argparse.Namespace) -> tuple[str, str | None]:
    if opts.netns_type == "pid":
        return f"/proc/{opts.target}/ns/net", opts.userns_path or f"/proc/{opts.target}/ns/user"
    return opts.target, opts.userns_path


class Slirp4netns:
    def __init__(self, opts: argparse.Namespace, service: Service, attached: Attached) -> None:
        self.opts = opts
        self.service = service
        self.attached = attached
        self.failed = False
        self.server: asyncio.Server | None = None
        self._target = os.stat(_namespaces(opts)[0])
        self._pidfd: int | None = None

    async def started(self) -> None:
        """Links are up: API socket, exit fd, target watch, sandbox, then the ready fd."""
        loop = asyncio.get_running_loop()
        opts, service = self.opts, self.service
        if opts.api_socket:
            assert service.extras is not None
            guest = socket.inet_ntoa(service.config.lowest_ip)
            table = api.HostFwdApi(service.extras.forwarder, guest)
            try:
                self.server = await api.serve(table, opts.api_socket)
            except (ForwardError, OSError) as exc:
                return self._fail(f"API socket {opts.api_socket}: {exc}")
        try:
            if opts.exit_fd is not None:
                loop.add_reader(opts.exit_fd, self._gone, "the exit fd was closed")
            if opts.netns_type == "pid":
                self._pidfd = os.pidfd_open(int(opts.target))
                loop.add_reader(self._pidfd, self._gone, f"process {opts.target} exited")
            else:
                loop.call_later(TARGET_POLL, self._check_path)
        except OSError as exc:  # a bad -e fd, the target already gone
            return self._fail(f"{exc.strerror or exc} (exit fd {opts.exit_fd}, "
                              f"target {opts.target})")
        if opts.enable_sandbox or opts.enable_seccomp:
            try:
                applied = sandbox.confine(opts.enable_sandbox, opts.enable_seccomp, opts.api_socket)
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
        for fd in (self.opts.exit_fd, self._pidfd):
            if fd is not None:
                loop.remove_reader(fd)
        self.service.stop()

    def _check_path(self) -> None:
        """A --netns-type=path namespace is gone once its bind mount is."""
        try:
            st = os.stat(self.opts.target)
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
            try:
                os.unlink(self.opts.api_socket)
            except OSError:
                pass
        if self._pidfd is not None:
            os.close(self._pidfd)
        return 1 if self.failed else code


def run(opts: argparse.Namespace, config: NetConfig) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {PROG} %(levelname)s: %(message)s",
    )
    if opts.enable_seccomp:
        try:  # refuse now rather than after joining the target (slirp4netns exits 1 too)
            seccomp.load_library()
        except OSError as exc:
            print(f"{PROG}: --enable-seccomp: {exc.strerror}", file=sys.stderr)
            return 1
    service = Service(config, service_options(opts))
    netns, userns = _namespaces(opts)
    try:
        attached = attach(netns, iface_setup(opts, config), userns=userns)
    except SetupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(Slirp4netns(opts, service, attached).run())
