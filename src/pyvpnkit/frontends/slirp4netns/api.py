"""slirp4netns's API socket: one JSON request per connection, QMP-style replies.

`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0",
"host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}` answers
`{"return":{"id":N}}`; `list_hostfwd` answers `{"return":{"entries":[...]}}`;
`remove_hostfwd` takes `{"id":N}`; every error is `{"error":{"desc":"..."}}`
with slirp4netns's wording. The forwards are the stack's own host listeners
(runtime/forwarder.py), so published ports behave as with `pyvpnkit -p`.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from typing import Any, Protocol

from pyvpnkit.runtime.forwarder import ForwardError

log = logging.getLogger("pyvpnkit.frontends.slirp4netns")

MAX_REQUEST = 65536
READ_TIMEOUT = 10.0

Reply = dict[str, Any]


class Exposer(Protocol):
    """The part of runtime.forwarder.Forwarder this API uses."""

    def expose(self, local: str, remote: str, protocol: str = "tcp") -> dict[str, str | bool]: ...

    def unexpose(self, local: str, protocol: str = "tcp") -> None: ...


class BadRequest(Exception):
    pass


def error(desc: str) -> Reply:
    return {"error": {"desc": desc}}


def _ipv4(args: dict[str, Any], key: str, default: str) -> str:
    value = args.get(key)
    if value is None or value == "":
        return default
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise BadRequest(f"bad arguments.{key}") from None


def _port(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 0xFFFF:
        raise BadRequest(f"bad arguments.{key}")
    return value


class HostFwdApi:
    """The request handler, free of I/O: bytes of one request in, a reply object out."""

    def __init__(self, forwarder: Exposer, guest_ip: str) -> None:
        self.forwarder = forwarder
        self.guest_ip = guest_ip  # an empty guest_addr means the guest (.100)
        self.entries: dict[int, dict[str, Any]] = {}
        self._next_id = 1

    def handle(self, raw: bytes) -> Reply:
        try:
            request = json.loads(raw)
        except ValueError:
            return error("bad request: cannot parse JSON")
        if not isinstance(request, dict):
            return error("bad request: json_object() failed")
        execute = request.get("execute")
        if not isinstance(execute, str):
            return error("bad request: no execute found")
        args = request.get("arguments")
        args = args if isinstance(args, dict) else {}
        handler = {
            "add_hostfwd": self._add,
            "list_hostfwd": self._list,
            "remove_hostfwd": self._remove,
        }.get(execute)
        if handler is None:
            return error("bad request: unknown execute")
        try:
            return handler(args)
        except BadRequest as exc:
            return error(f"bad request: {execute}: {exc}")

    def _add(self, args: dict[str, Any]) -> Reply:
        proto = args.get("proto")
        if proto not in ("tcp", "udp"):
            raise BadRequest("bad arguments.proto")
        entry = {
            "proto": proto,
            "host_addr": _ipv4(args, "host_addr", "0.0.0.0"),
            "host_port": _port(args, "host_port"),
            "guest_addr": _ipv4(args, "guest_addr", self.guest_ip),
            "guest_port": _port(args, "guest_port"),
        }
        try:
            self.forwarder.expose(*_forward(entry), proto)
        except ForwardError as exc:
            raise BadRequest(str(exc)) from None
        fid, self._next_id = self._next_id, self._next_id + 1
        self.entries[fid] = {"id": fid, **entry}
        return {"return": {"id": fid}}

    def _list(self, _args: dict[str, Any]) -> Reply:
        return {"return": {"entries": list(self.entries.values())}}

    def _remove(self, args: dict[str, Any]) -> Reply:
        fid = args.get("id")
        entry = self.entries.get(fid) if isinstance(fid, int) else None
        if entry is None:
            raise BadRequest("bad arguments.id")
        local, _remote = _forward(entry)
        with contextlib.suppress(Exception):  # already gone is gone
            self.forwarder.unexpose(local, entry["proto"])
        del self.entries[entry["id"]]
        return {"return": {}}


def _forward(entry: dict[str, Any]) -> tuple[str, str]:
    return (f"{entry['host_addr']}:{entry['host_port']}",
            f"{entry['guest_addr']}:{entry['guest_port']}")


def _complete(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


async def _serve_one(api: HostFwdApi, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    """Read until the client shuts down writing, or sends a whole JSON object."""
    data = b""
    try:
        while len(data) <= MAX_REQUEST and not _complete(data):
            chunk = await asyncio.wait_for(reader.read(4096), READ_TIMEOUT)
            if not chunk:
                break
            data += chunk
        reply = api.handle(data) if len(data) <= MAX_REQUEST else error("bad request: too large")
        writer.write(json.dumps(reply, separators=(",", ":")).encode())
        await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def serve(api: HostFwdApi, sock: _socket.socket) -> asyncio.Server:
    """Answer requests on the listening socket SOCK (cli.bind_api_socket).

    SOCK may be a bare _socket.socket, as cli makes it (start-up): asyncio
    wants the socket module's class.
    """
    if not isinstance(sock, socket.socket):
        sock = socket.socket(fileno=sock.detach())
    server = await asyncio.start_unix_server(lambda r, w: _serve_one(api, r, w), sock=sock)
    log.info("API socket %s", sock.getsockname())
    return server
