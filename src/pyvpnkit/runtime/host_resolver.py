"""asyncio side of `--dns-mode host`: performs HostResolve effects with the
host's own getaddrinfo/getnameinfo (nsswitch, /etc/hosts, systemd-resolved,
VPN split DNS, mDNS) in worker threads and reports back to the DnsServer.

The calls block, so they run in a private thread pool: a stalled lookup
(an mDNS `.local` name, a dead VPN resolver) holds one worker, never the
event loop, and never the pool other code shares via loop.run_in_executor.
A lookup that has not finished after `timeout` is reported SERVFAIL; its
thread runs on until libc gives up, and when `max_busy` threads are stuck
that way new lookups fail at once instead of piling up.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from pyvpnkit.core.dns.hostmode import NODATA, NXDOMAIN, PTR, SERVFAIL, A
from pyvpnkit.core.effects import Effect, HostResolve

Result = tuple[list[str] | None, str | None]  # (addresses or names, error)
Lookup = Callable[[str, int], Result]  # (name, rdtype) -> Result, runs in a thread

_NODATA_ERRORS = frozenset({socket.EAI_NODATA, socket.EAI_ADDRFAMILY})


def _classify(exc: socket.gaierror) -> str:
    if exc.errno in _NODATA_ERRORS:
        return NODATA
    if exc.errno == socket.EAI_NONAME:
        return NXDOMAIN
    return SERVFAIL  # EAI_AGAIN, EAI_FAIL, EAI_SYSTEM, ...


def _addresses(name: bytes, family: int) -> list[str]:
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos if info[0] == family))


def lookup_addresses(name: str, family: int) -> Result:
    """getaddrinfo for one family. A name that fails for this family but
    resolves in the other exists: NODATA, not NXDOMAIN (glibc's files backend
    says EAI_NONAME for "no IPv6 address" as for "no such name")."""
    host = name.encode("ascii", "replace")  # bytes: no IDNA re-encoding of DNS labels
    try:
        return _addresses(host, family), None
    except socket.gaierror as exc:
        kind = _classify(exc)
    except (OSError, UnicodeError, ValueError):
        return None, SERVFAIL
    if kind != NXDOMAIN:
        return None, kind
    other = socket.AF_INET if family == socket.AF_INET6 else socket.AF_INET6
    try:
        _addresses(host, other)
    except socket.gaierror as exc:
        return None, _classify(exc)  # NXDOMAIN only when neither family knows it
    except (OSError, UnicodeError, ValueError):
        return None, SERVFAIL
    return None, NODATA


def lookup_name(address: str) -> Result:
    """getnameinfo(NI_NAMEREQD) for a PTR question; `address` is its text."""
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    sockaddr = (address, 0, 0, 0) if ":" in address else (address, 0)
    try:
        host, _ = socket.getnameinfo(sockaddr, socket.NI_NAMEREQD)
    except socket.gaierror as exc:
        return None, NXDOMAIN if _classify(exc) != SERVFAIL else SERVFAIL
    except (OSError, UnicodeError, ValueError):
        return None, SERVFAIL
    return [host], None


def host_lookup(name: str, rdtype: int) -> Result:
    """The real lookup for a HostResolve effect."""
    if rdtype == PTR:
        return lookup_name(name)
    family = socket.AF_INET if rdtype == A else socket.AF_INET6
    return lookup_addresses(name, family)


class HostAnswerTarget(Protocol):
    def handle_host_answer(
        self, token: int, addresses: list[str] | None, error: str | None, now: float
    ) -> None: ...


class HostResolver:
    """Performs HostResolve effects and reports to `target`, then `wake()`s
    the owner so it drains the answers those reports caused."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: HostAnswerTarget,
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] | None = None,
        timeout: float = 5.0,
        max_threads: int = 64,
        max_busy: int = 256,
        lookup: Lookup = host_lookup,
    ) -> None:
        self._loop = loop
        self._target = target
        self._wake = wake
        self._clock = clock or loop.time
        self.timeout = timeout
        self.max_busy = max_busy
        self._lookup = lookup
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="pyvpnkit-dns")
        self._lock = threading.Lock()
        self._busy = 0  # submitted jobs not yet finished, timed out ones included
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    effects = (HostResolve,)

    def execute(self, effect: Effect) -> None:
        if self._closed or not isinstance(effect, HostResolve):
            return
        if self.busy >= self.max_busy:
            # Reported on the next turn: we are inside the owner's drain loop.
            self._loop.call_soon(self._report, effect.token, (None, SERVFAIL))
            return
        with self._lock:
            self._busy += 1
        job = self._pool.submit(self._lookup, effect.name, effect.rdtype)
        job.add_done_callback(self._job_done)
        task = self._loop.create_task(self._await(effect.token, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def fail(self, effect: Effect) -> None:
        """Starting the lookup raised: the VM gets SERVFAIL rather than silence."""
        if isinstance(effect, HostResolve):
            self._loop.call_soon(self._report, effect.token, (None, SERVFAIL))

    def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        # Stuck lookups cannot be interrupted; do not wait for them.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _job_done(self, _job: Future[Result]) -> None:
        with self._lock:  # runs in a worker thread (or here, when cancelled)
            self._busy -= 1

    async def _await(self, token: int, job: Future[Result]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                result = await asyncio.wrap_future(job)
        except TimeoutError:
            result = (None, SERVFAIL)
        except Exception:  # a lookup function that raised: still an answer
            result = (None, SERVFAIL)
        self._report(token, result)

    def _report(self, token: int, result: Result) -> None:
        if self._closed:
            return
        addresses, error = result
        self._target.handle_host_answer(token, addresses, error, self._clock())
        self._wake()


__all__ = ["HostResolver", "host_lookup", "lookup_addresses", "lookup_name"]
