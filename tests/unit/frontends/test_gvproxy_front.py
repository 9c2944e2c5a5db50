"""The gvproxy API front: hijacked routes get the bytes behind the head; the rest is aiohttp's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from pyvpnkit.frontends.gvproxy.front import Front, detach_socket


async def _exchange(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return got


def test_hijack_gets_query_and_early_bytes_and_http_goes_to_aiohttp(tmp_path: Path) -> None:
    async def scenario() -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello " + request.query.get("who", ""))

        app = web.Application()
        app.router.add_get("/hello", hello)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        seen: list[tuple[dict[str, str], bytes]] = []

        def echo(transport: asyncio.Transport, query: dict[str, str], early: bytes) -> None:
            seen.append((query, early))
            sock = detach_socket(transport)
            sock.setblocking(True)
            sock.sendall(b"OK" + early)
            sock.close()

        front = Front(f"unix://{tmp_path}/api.sock", runner.server, {"/tunnel": echo})
        await front.start()
        try:
            head = b"POST /tunnel?ip=192.168.127.2&port=22 HTTP/1.1\r\nHost: x\r\n\r\n"
            assert await _exchange(f"{tmp_path}/api.sock", head + b"EARLY") == b"OKEARLY"
            assert seen == [({"ip": "192.168.127.2", "port": "22"}, b"EARLY")]
            reply = await _exchange(f"{tmp_path}/api.sock",
                                    b"GET /hello?who=you HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello you")
            too_big = b"GET /" + b"x" * 20000
            assert (await _exchange(f"{tmp_path}/api.sock", too_big)).startswith(
                b"HTTP/1.1 431")
        finally:
            front.close()
            await runner.cleanup()
        assert not (tmp_path / "api.sock").exists()

    asyncio.run(scenario())
