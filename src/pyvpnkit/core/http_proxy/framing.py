"""Responses: the bodies the proxy passes on raw (which ones, and how h11 is told), and
the short text answers it gives itself.

A large download is a body framed by Content-Length alone. Its bytes skip
h11 on both sides (machine.py counts them down): h11 copies each received
chunk three times, and the copies cost a third of the throughput.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import cast

import h11


class Placeholder:
    """Stands for a whole body in the VM side's h11: its length, not its bytes.

    Sent once as ``Data`` through ``send_with_data_passthrough`` (h11's
    documented sendfile support), it makes h11 account for the body, so its
    framing checks and states stay right while the chunks go to the VM raw.
    """

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def plain_length(method: bytes, event: h11.Response) -> int | None:
    """The body length when Content-Length alone frames it (RFC 9112 6.3), else None."""
    if method == b"HEAD" or event.status_code in (204, 304):
        return None
    lengths = {v for k, v in event.headers if k == b"content-length"}
    if len(lengths) != 1 or any(k == b"transfer-encoding" for k, _v in event.headers):
        return None
    return int(lengths.pop())  # h11 checked it is digits


IDEMPOTENT = {b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"}  # RFC 9110 9.2.2


def retryable(request: h11.Request) -> bool:
    """Safe to send again when a reused connection closed on it unanswered: idempotent,
    and no body to replay."""
    return request.method in IDEMPOTENT and not any(
        k in (b"content-length", b"transfer-encoding") for k, _v in request.headers)


def announce_body(vm: h11.Connection, length: int) -> None:
    """Tell the VM side's h11 that ``length`` body bytes follow, without sending them."""
    placeholder = Placeholder(length)
    # h11 hands the placeholder back in a list its types say holds bytes: read it as
    # objects, or compiled code checks the item is bytes and fails.
    out = cast("list[object] | None", vm.send_with_data_passthrough(
        h11.Data(data=placeholder)))  # type: ignore[arg-type]
    # The response's own Content-Length frames it, so h11 writes nothing else.
    if out is None or len(out) != 1 or out[0] is not placeholder:
        raise h11.LocalProtocolError("the response to the VM is not framed by its length")


def local_answer(status: int, text: str, close: bool) -> tuple[h11.Response, bytes]:
    """Our own answer (an error, a refusal): a short text body, with its length."""
    body = (text.rstrip("\n") + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=headers, reason=reason), body
