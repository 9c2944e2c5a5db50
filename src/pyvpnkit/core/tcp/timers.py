"""The timers that watch the peer rather than our data: is it still there, may we forget it.

Keepalive (RFC 9293 3.8.4, RFC 1122 4.2.3.6) probes an idle connection and
gives up after ``keepalive_probes`` silent intervals; zero-window probes give
up after ``max_probes`` unanswered ones; FIN_WAIT_2 is abandoned after a
silent ``fin_wait_2_timeout`` (as Linux's tcp_fin_timeout); TIME_WAIT lasts
2 MSL. Any segment from the peer resets the silent counts. The timers of our
own data (retransmission, persist) live with the :class:`Sender`.
"""

from __future__ import annotations

from typing import Literal

Keepalive = Literal["wait", "probe", "give up"]


class Timers:
    __slots__ = (
        "keepalive_idle", "keepalive_interval", "keepalive_probes", "msl",
        "fin_wait_2_timeout", "max_probes", "last_recv", "heard", "_ka_sent", "_ka_last",
        "_probes_unanswered", "tw_at",
    )  # fmt: skip

    def __init__(
        self,
        *,
        keepalive_idle: float | None,
        keepalive_interval: float,
        keepalive_probes: int,
        msl: float,
        fin_wait_2_timeout: float | None,
        max_probes: int,
    ) -> None:
        self.keepalive_idle = keepalive_idle
        self.keepalive_interval = keepalive_interval
        self.keepalive_probes = keepalive_probes
        self.msl = msl
        self.fin_wait_2_timeout = fin_wait_2_timeout
        self.max_probes = max_probes
        self.last_recv = 0.0
        self.heard = False  # a segment arrived since the last timer run
        self._ka_sent = 0
        self._ka_last = 0.0
        self._probes_unanswered = 0
        self.tw_at: float | None = None

    def opened(self, now: float) -> None:
        """The connection starts: idle time counts from now."""
        self.last_recv = now

    def heard_from(self, now: float) -> None:
        """A segment arrived: the peer is alive."""
        self.last_recv = now
        self.heard = True
        self._ka_sent = 0
        self._probes_unanswered = 0

    def ran(self) -> None:
        """A timer run is over: only segments after it count as ``heard``."""
        self.heard = False

    def keepalive_deadline(self) -> float | None:
        """When the next keepalive probe is due (for a connection that may be probed)."""
        if self.keepalive_idle is None:
            return None
        if self._ka_sent == 0:
            return self.last_recv + self.keepalive_idle
        return self._ka_last + self.keepalive_interval

    def keepalive(self, now: float) -> Keepalive:
        """What an idle connection should do at ``now`` (mirage's keepalive ``next``)."""
        due = self.keepalive_deadline()
        if due is None or now < due:
            return "wait"
        if self._ka_sent >= self.keepalive_probes:
            return "give up"
        self._ka_sent += 1
        self._ka_last = now
        return "probe"

    def zero_window_probe(self) -> bool:
        """A persist probe is due; False once too many went unanswered."""
        self._probes_unanswered += 1
        return self._probes_unanswered <= self.max_probes

    def fin_wait_2_deadline(self) -> float | None:
        if self.fin_wait_2_timeout is None:
            return None
        return self.last_recv + self.fin_wait_2_timeout

    def enter_time_wait(self, now: float) -> None:
        """TIME_WAIT (re)starts: 2 MSL from now."""
        self.tw_at = now + 2 * self.msl

    def stop(self) -> None:
        self.tw_at = None


def earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None or a < b:
        return a
    return b
