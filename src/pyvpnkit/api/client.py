"""A small blocking client for the control API (unix:///PATH or tcp://HOST:PORT).

http.client over an AF_UNIX socket keeps the CLI free of an event loop.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


class ApiError(Exception):
    """The API answered with an error (``status``) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._connect: Callable[[], http.client.HTTPConnection]
        if url.startswith("unix://"):
            path = url.removeprefix("unix://")
            if not path:
                raise ValueError(f"bad API address {url!r}: expected unix:///PATH")
            self._connect = lambda: _UnixHTTPConnection(path, timeout)
        elif url.startswith("tcp://"):
            parts = urlsplit(url)
            if not parts.hostname or parts.port is None:
                raise ValueError(f"bad API address {url!r}: expected tcp://HOST:PORT")
            host, port = parts.hostname, parts.port
            self._connect = lambda: http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            raise ValueError(f"bad API address {url!r}: use unix:///PATH or tcp://HOST:PORT")
        self.url = url

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        """One request on a fresh connection: (status, body). Raises ApiError(0) if unreachable."""
        conn = self._connect()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, f"cannot reach the API at {self.url}: {exc}") from None
        finally:
            conn.close()

    def _call(self, method: str, path: str, body: object = None) -> Any:
        status, data = self.request(method, path, body)
        if status != 200:
            text = data.decode(errors="replace").strip() or http.client.responses.get(status, "")
            raise ApiError(status, text)
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise ApiError(status, f"API answered non-JSON: {data[:200]!r}") from None

    def expose(self, local: str, remote: str, protocol: str = "tcp") -> dict[str, str]:
        result = self._call(
            "POST",
            "/services/forwarder/expose",
            {"local": local, "remote": remote, "protocol": protocol},
        )
        return result or {"local": local, "remote": remote, "protocol": protocol}

    def unexpose(self, local: str, protocol: str = "tcp") -> None:
        self._call("POST", "/services/forwarder/unexpose", {"local": local, "protocol": protocol})

    def forwards(self) -> list[dict[str, str]]:
        result: list[dict[str, str]] = self._call("GET", "/services/forwarder/all")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def leases(self) -> dict[str, str]:
        result: dict[str, str] = self._call("GET", "/leases")
        return result

    def conditions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/conditions")
        return result

    def add_condition(self, rule: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/conditions", rule)
        return result

    def remove_condition(self, rule_id: int) -> None:
        self._call("DELETE", f"/conditions/{rule_id}")

    def clear_conditions(self) -> None:
        self._call("DELETE", "/conditions")


__all__ = ["ApiClient", "ApiError"]
