"""vpnkit/hyperkit links: the vmnet handshake, then u16-LE framed Ethernet.

The handshake gives the VM a stable identity: it names itself by UUID (and may
ask for an address), the switch answers with the MAC and IP it keeps for that
UUID, and the link reports that MAC. A client that stalls in the handshake is
dropped after :data:`HANDSHAKE_TIMEOUT` seconds so it cannot pin a socket.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from collections.abc import Callable

from pyvpnkit.links.base import FrameSink, VifError
from pyvpnkit.links.stream import StreamLink, StreamListener
from pyvpnkit.links.url import ListenAddress
from pyvpnkit.wire import vmnet
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.framing import U16LE

log = logging.getLogger("pyvpnkit.links")

HANDSHAKE_TIMEOUT = 30.0
# The commit id we announce: fixed so clients' logs stay comparable across runs.
COMMIT = b"pyvpnkit".ljust(40, b"0")

_WAIT_INIT, _WAIT_COMMAND, _DATA, _DONE = range(4)


class VpnkitLink(StreamLink):
    """A server-side vmnet connection."""

    def __init__(
        self,
        sink: FrameSink,
        mtu: int,
        name: str,
        on_close: Callable[[StreamLink], None] | None = None,
        new_uuid: Callable[[], str] = lambda: str(uuidlib.uuid4()),
    ) -> None:
        super().__init__(sink, mtu, name, U16LE, on_close)
        self.uuid: str | None = None
        self.ip: bytes | None = None
        self._new_uuid = new_uuid
        self._state = _WAIT_INIT
        self._hs = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def stream_started(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._state < _DATA:
            log.warning(
                "%s: no vmnet handshake within %.0f s; closing", self.name, HANDSHAKE_TIMEOUT
            )
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self._state == _DATA:
            self.frames_from(data)
            return
        if self._state == _DONE:
            return
        self._hs += data
        if self._state == _WAIT_INIT:
            if len(self._hs) < vmnet.INIT_LEN:
                return
            if not self._on_init(bytes(self._hs[: vmnet.INIT_LEN])):
                return
            del self._hs[: vmnet.INIT_LEN]
            self._state = _WAIT_COMMAND
        if self._state == _WAIT_COMMAND:
            if len(self._hs) < vmnet.COMMAND_LEN:
                return
            if not self._on_command(bytes(self._hs[: vmnet.COMMAND_LEN])):
                return
            rest = bytes(self._hs[vmnet.COMMAND_LEN :])
            self._hs = bytearray()
            self._state = _DATA
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._open()
            if rest:
                self.frames_from(rest)

    def _send_raw(self, data: bytes) -> None:
        if self._writer is not None and not self.closed:
            self._writer.write(data)

    def _refuse(self) -> None:
        """Stop reading handshake bytes and hang up once our reply is flushed."""
        self._state = _DONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.close()

    def _on_init(self, raw: bytes) -> bool:
        try:
            init = vmnet.decode_init(raw)
        except ParseError as exc:
            log.warning(
                "%s: %s (is the VM using qemu framing on a vpnkit socket?); closing", self.name, exc
            )
            self._state = _DONE
            self.abort()
            return False
        self._send_raw(vmnet.encode_init(COMMIT))
        if init.version != vmnet.VERSION:
            log.warning(
                "%s: client speaks vmnet version %d, we speak %d; closing",
                self.name,
                init.version,
                vmnet.VERSION,
            )
            self._refuse()
            return False
        log.debug("%s: vmnet client commit %r", self.name, init.commit)
        return True

    def _disconnect(self, reason: str) -> None:
        log.warning("%s: refusing vmnet client: %s", self.name, reason)
        self._send_raw(vmnet.encode_response(vmnet.DisconnectResponse(reason)))
        self._refuse()

    def _on_command(self, raw: bytes) -> bool:
        try:
            cmd = vmnet.decode_command(raw)
        except ParseError as exc:
            self._disconnect(str(exc))
            return False
        if isinstance(cmd, vmnet.BindIPv4Command):
            self._disconnect("Unsupported command Bind_ipv4")
            return False
        uuid = cmd.uuid
        if uuid is None:
            uuid = self._new_uuid()
            log.info("%s: client sent no UUID; using %s", self.name, uuid)
        preferred = cmd.ip if isinstance(cmd, vmnet.PreferredIPv4Command) else None
        try:
            mac, ip = self.sink.vif_request(uuid, preferred)
        except VifError as exc:
            self._disconnect(exc.reason)
            return False
        except Exception:
            log.exception("%s: vif_request failed", self.name)
            self._disconnect("internal error")
            return False
        self.uuid, self.mac, self.ip = uuid, mac, ip
        self._send_raw(vmnet.encode_response(vmnet.vif_for_mtu(self.mtu, mac)))
        log.info(
            "%s: vmnet client %s gets MAC %s IP %s",
            self.name,
            uuid,
            mac.hex(":"),
            ".".join(map(str, ip)),
        )
        return True

    def _shut(self, abort: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super()._shut(abort)


async def start_vpnkit_listener(
    url: str, addr: ListenAddress, sink: FrameSink, mtu: int
) -> StreamListener:
    if mtu + vmnet.MAX_PACKET_SLACK > 0xFFFF:
        log.info("vpnkit: max packet size capped at 65535 for MTU %d", mtu)

    def factory(name: str, on_close: Callable[[StreamLink], None]) -> StreamLink:
        return VpnkitLink(sink, mtu, name, on_close)

    listener = StreamListener("vpnkit", url, addr, factory)
    await listener.start()
    return listener
