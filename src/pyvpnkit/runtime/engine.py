"""Drives the sans-I/O stack from asyncio: links in, frames and effects out, one timer.

Frames arriving in one loop iteration are all handed to the stack before it
is drained once, so one ACK or window update covers a whole batch.

Effects go to the executors the composition root added (runtime/executor.py),
by effect type; the engine constructs none of them. Nothing raised while
handling one frame or one effect leaves the engine: a failed effect costs its
own flow (the executor's ``fail`` resets it), a failed
send costs that frame, each is counted in ``stats`` and reported by one
throttled log line, and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from time import monotonic  # asyncio's loop.time(), without its Python-level call

from pyvpnkit.core.effects import Effect
from pyvpnkit.core.switch.ippool import PoolError
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.links.base import Link, VifError
from pyvpnkit.runtime.executor import Executor
from pyvpnkit.runtime.limits import Throttle

log = logging.getLogger("pyvpnkit")

MAX_ROUNDS = 8  # drain/effect rounds in one flush before yielding to the loop


class Engine:
    """The FrameSink every link reports to; routes the stack's effects to their executors."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stack = stack
        stack.log_flows(log.isEnabledFor(logging.INFO))  # closed_log lines are logged at INFO
        self.loop = loop or asyncio.get_running_loop()
        self.links: dict[int, Link] = {}
        self._ids: dict[int, int] = {}  # id(link) -> link number
        self._next_link = 1
        self._flush_pending = False
        self._batch_pending = False  # frames from a batching link wait for batch_done()
        self._flushing = False
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self.executors: list[Executor] = []
        self._executor_of: dict[type[Effect], Executor] = {}
        # pcap and friends; a TAP hands frames over as memoryviews
        self.frame_taps: list[Callable[[int, bytes | memoryview, bool], None]] = []
        self.stats: Counter[str] = Counter()
        self.last_error = ""
        self._errors = Throttle(self.loop.time)
        self.close_taps: list[Callable[[int], None]] = []  # told each link number that closes

    def add_executor(self, executor: Executor) -> None:
        """Route ``executor.effects`` to it; close() closes it."""
        self.executors.append(executor)
        for kind in executor.effects:
            self._executor_of[kind] = executor

    def _failed(self, what: str, exc: BaseException) -> None:
        """Count an error confined to one frame or effect; log it now and then, no traceback."""
        self.stats[what] += 1
        self.last_error = f"{what}: {exc!r}"
        count = self._errors.event()
        if count:
            log.error("%d frame or effect error(s) contained; last %s", count, self.last_error)

    # -- FrameSink -----------------------------------------------------------

    def link_opened(self, link: Link) -> None:
        n = self._next_link
        self._next_link += 1
        self.links[n] = link
        self._ids[id(link)] = n
        self.stack.link_opened(n, link.offloads)
        if link.mac is not None and link.ip is not None:
            # The transport named the VM (vmnet): its frames go to this link from now
            # on, even if an older connection with the same UUID is still open, as
            # rootlesskit's parent leaves its own while the child takes over.
            self.stack.add_vm(n, link.mac, link.ip)
        log.info("link %s opened", link.name)

    def link_id(self, link: Link) -> int | None:
        return self._ids.get(id(link))

    def frame_received(
        self, link: Link, frame: bytes | memoryview, checksum_partial: bool = False
    ) -> None:
        n = self._ids.get(id(link))
        if n is None:
            return
        for tap in self.frame_taps:
            try:
                tap(n, frame, True)
            except Exception as exc:  # noqa: BLE001 - a capture error costs the capture
                self._failed("tap_errors", exc)
        self.stack.receive(n, frame, monotonic(), checksum_partial)
        if link.batches and not self._flushing:
            self._batch_pending = True  # batch_done() flushes: no loop handle per batch
        else:
            self.wake()

    def link_closed(self, link: Link) -> None:
        n = self._ids.pop(id(link), None)
        if n is None:
            return
        del self.links[n]
        self.stack.link_closed(n, monotonic())
        for tap in self.close_taps:
            tap(n)
        log.info("link %s closed", link.name)
        self.wake()

    def vif_request(self, uuid: str, preferred_ip: bytes | None) -> tuple[bytes, bytes]:
        try:
            return self.stack.vif_lease(uuid, preferred_ip)
        except PoolError as exc:
            raise VifError(str(exc)) from exc

    # -- driving the stack ---------------------------------------------------

    def wake(self) -> None:
        """Something changed in the stack: drain it soon (once per loop iteration)."""
        if self._flushing:
            self._again = True  # an effect fed the stack: flush() drains once more
        elif not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        if self._flush_pending:
            self.flush()

    def settle(self) -> None:
        """A host socket event changed the stack: drain it now (or after this flush)."""
        if self._flushing:
            self._again = True
        else:
            self.flush()

    def batch_done(self) -> None:
        """A link delivered a whole batch of frames: answer it now, not next iteration."""
        if (self._batch_pending or self._flush_pending) and not self._flushing:
            self.flush()

    def flush(self) -> None:
        """Drain the stack and perform its effects until nothing new comes out.

        Effects often feed the stack at once (a loopback connect completes
        inside connect(), a send reports bytes taken): draining again here
        saves a loop iteration per step of a short connection.
        """
        self._flush_pending = self._batch_pending = False
        self._flushing = True
        try:
            for _ in range(MAX_ROUNDS):
                self._again = False
                self._flush_once()
                if not self._again:
                    break
        finally:
            self._flushing = False
        if self._again:
            self.wake()
        self._rearm()

    def _flush_once(self) -> None:
        try:
            frames, effects = self.stack.drain(monotonic())
        except Exception as exc:  # noqa: BLE001 - a stack bug must not stop the links
            self._failed("drain_errors", exc)
            return
        # Host effects first: a write to a host socket is usually on the
        # critical path of a request, the ACK we owe the VM is not.
        executor_of = self._executor_of
        for eff in effects:
            executor = executor_of.get(type(eff))
            if executor is None:
                log.error("no executor for %r", eff)
                continue
            try:
                executor.execute(eff)
            except Exception as exc:  # noqa: BLE001 - one effect's error costs its flow only
                self._effect_failed(executor, eff, exc)
        if frames:
            links = self.links
            taps = self.frame_taps
            for n, frame in frames:
                link = links.get(n)
                if link is not None:
                    try:
                        for tap in taps:
                            tap(n, frame, False)
                        link.send_frame(frame)
                    except Exception as exc:  # noqa: BLE001 - costs this frame only
                        self._failed("send_errors", exc)
        closed = self.stack.tcp.closed_log
        if closed:
            for line in closed:
                log.info("%s", line)
            closed.clear()

    def _effect_failed(self, executor: Executor, eff: Effect, exc: Exception) -> None:
        self._failed("effect_errors", exc)
        try:
            executor.fail(eff)
        except Exception as exc2:  # noqa: BLE001
            self._failed("effect_errors", exc2)
        self._again = True  # the failure fed the stack (an RST to send)

    def _rearm(self) -> None:
        """Keep the one timer at or before the stack's earliest deadline.

        A timer that is already earlier stays: firing early costs one empty
        handle_timer, while cancelling and re-adding on every flush costs a
        timer allocation per batch of frames.
        """
        when = self.stack.next_deadline()
        if when is None or (self._timer_when is not None and self._timer_when <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        now = monotonic()
        when = self.stack.next_deadline()
        if when is not None and when > now:
            # Early: the deadline it was set for went away (a delayed ACK rode on data).
            self._rearm()
            return
        self.stack.handle_timer(now)
        self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for executor in self.executors:
            executor.close()
        for link in list(self.links.values()):
            link.close()
