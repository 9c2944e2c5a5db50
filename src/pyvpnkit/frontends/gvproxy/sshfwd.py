"""-forward-sock: a host unix socket relayed over SSH to a unix socket in the guest.

podman machine forwards its API socket this way. The SSH connection is made
with asyncssh over a TCP connection from the gateway into the VM (the port
forwarder's path into VMs, through a socketpair), to the guest's port 22 as
-forward-user with -forward-identity. The host socket listens at once; the
SSH connection is made when the first client comes (retried while sshd is
not up yet, with gvproxy's back-off: 100 ms doubling to 1 s, 60 tries) and
made again if it dropped. Each client gets its own direct-streamlocal channel
with half-close passed both ways.

As gvproxy does by default, the guest's host key is not checked: the
connection never leaves this machine's virtual network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from pyvpnkit.frontends.gvproxy.config import SshForward

log = logging.getLogger("pyvpnkit.frontends.gvproxy")

RETRIES = 60
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 1.0
CHUNK = 256 * 1024


class SshSocketForward:
    def __init__(self, spec: SshForward, forwarder: Any, guest: str) -> None:
        self.spec = spec
        self.forwarder = forwarder
        self.guest = guest  # "IP:22"
        self.path = spec.socket.removeprefix("unix://")
        self._server: asyncio.AbstractServer | None = None
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old = os.umask(0o177)  # owner only, as gvproxy
        try:
            self._server = await asyncio.start_unix_server(self._client, self.path)
        finally:
            os.umask(old)
        log.info("forwarding %s to %s over ssh://%s@%s", self.path, self.spec.dest,
                 self.spec.user, self.guest)

    async def _ssh(self) -> Any:
        import asyncssh

        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            key = asyncssh.read_private_key(self.spec.identity)
            delay = FIRST_BACKOFF
            for attempt in range(RETRIES):
                ours, theirs = socket.socketpair()
                self.forwarder.connect(ours, self.guest)
                try:
                    self._conn = await asyncssh.connect(
                        sock=theirs, host=self.guest.rpartition(":")[0],
                        username=self.spec.user, client_keys=[key], known_hosts=None,
                        config=None, agent_path=None, preferred_auth="publickey",
                        login_timeout=10,
                    )
                    return self._conn
                except (OSError, asyncssh.Error) as exc:
                    theirs.close()
                    if attempt == RETRIES - 1 or isinstance(exc, asyncssh.PermissionDenied):
                        raise
                    log.debug("waiting for sshd on %s: %s", self.guest, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
            raise AssertionError("unreachable")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            conn = await self._ssh()
            remote_reader, remote_writer = await conn.open_unix_connection(self.spec.dest)
            await asyncio.gather(_copy(reader, remote_writer), _copy(remote_reader, writer))
        except Exception as exc:
            log.error("forward %s -> %s: %s", self.path, self.spec.dest, exc)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for task in list(self._tasks):
            task.cancel()
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()


async def _copy(reader: Any, writer: Any) -> None:
    """Copy to EOF, then half-close the other side."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
