"""io/http11.py, the scorer clients' plain-HTTP transport, against a raw asyncio server on loopback: bodies by length,
chunked and up to the close, keep-alive and its limits, and httpx's errors for what goes wrong."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import Awaitable, Callable

import httpx2 as httpx
import openai
import pytest

from mira_dagster.io import http11
from mira_dagster.io.http11 import Http11Transport

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def _reply(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} OK", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _serve(handler: Handler) -> tuple[asyncio.Server, list[int], list[bytes]]:
    """A server answering every request on a connection with `handler(path, ...)` (False: close the connection);
    the connections it accepted (one list entry each) and every request body it read."""
    connections: list[int] = []
    bodies: list[bytes] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                lines = head.decode().lower().split("\r\n")
                length = next((int(h.split(":")[1]) for h in lines if h.startswith("content-length")), 0)
                bodies.append(await reader.readexactly(length))
                if not await handler(path, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(client, "127.0.0.1", 0), connections, bodies


async def _answers(path: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    if path == b"/json":
        writer.write(_reply(200, json.dumps({"ok": True}).encode(), "Content-Type: application/json"))
    elif path == b"/chunked":
        writer.write(
            _reply(200, b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n", "Transfer-Encoding: chunked")
        )
    elif path == b"/close":
        writer.write(_reply(200, b"bye", "Connection: close"))
        await writer.drain()
        return False
    elif path == b"/eof":  # no length: the body ends with the connection
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        return False
    elif path == b"/gzip":
        writer.write(_reply(200, gzip.compress(b"packed"), "Content-Encoding: gzip"))
    elif path == b"/continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + _reply(201, b"made"))
    elif path == b"/idle-close":  # kept alive by its headers, then closed by the server (an idle timeout)
        writer.write(_reply(200, b"kept?"))
        await writer.drain()
        await asyncio.sleep(0.05)
        return False
    elif path == b"/drop":
        return False
    elif path == b"/garbage":
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
    elif path == b"/slow":
        await asyncio.sleep(2)
        writer.write(_reply(200, b"late"))
    await writer.drain()
    return True


def _client(**kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http11Transport(httpx.AsyncHTTPTransport()), **kwargs)  # type: ignore[arg-type]


def test_bodies_by_length_chunked_and_close_and_the_connections_kept() -> None:
    async def main() -> None:
        server, connections, bodies = await _serve(_answers)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server, _client() as client:
            for _ in range(5):  # one after another: one connection
                r = await client.post(f"{base}/json", json={"q": "é" * 3})
                assert r.status_code == 200 and r.json() == {"ok": True}
            assert bodies[-1] == json.dumps({"q": "é" * 3}, ensure_ascii=False, separators=(",", ":")).encode()
            assert len(connections) == 1
            assert (await client.get(f"{base}/chunked")).text == "hello world"
            assert (await client.get(f"{base}/gzip")).text == "packed"  # httpx decodes it, as from its own transport
            r = await client.get(f"{base}/continue")
            assert (r.status_code, r.text) == (201, "made")
            assert len(connections) == 1
            assert (await client.get(f"{base}/close")).text == "bye"  # the server closes: a new connection next
            assert (await client.get(f"{base}/eof")).text == "until the end"
            assert (await client.get(f"{base}/json")).json() == {"ok": True}
            assert len(connections) == 3
            # ten at once: ten connections, kept for the next ten
            await asyncio.gather(*(client.get(f"{base}/json") for _ in range(10)))
            n = len(connections)
            await asyncio.gather(*(client.get(f"{base}/json") for _ in range(10)))
            assert len(connections) == n <= 13

    asyncio.run(main())


def test_an_idle_connection_the_server_closed_or_that_expired_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        server, connections, _ = await _serve(_answers)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server, _client() as client:
            assert (await client.get(f"{base}/idle-close")).text == "kept?"  # the server closes it a moment later
            await asyncio.sleep(0.2)
            assert (await client.get(f"{base}/json")).status_code == 200
            assert len(connections) == 2
            monkeypatch.setattr(http11, "KEEPALIVE_EXPIRY_S", 0.0)
            assert (await client.get(f"{base}/json")).status_code == 200
            assert len(connections) == 3  # the idle one had expired

    asyncio.run(main())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("path", "error", "text"),
    [
        ("/drop", httpx.RemoteProtocolError, "Server disconnected without sending a response."),
        ("/garbage", httpx.RemoteProtocolError, "not an HTTP/1.x status line"),
        ("/slow", httpx.ReadTimeout, "timed out after 0.2 s"),
    ],
)
def test_failures_raise_httpx_errors(path: str, error: type[Exception], text: str) -> None:
    async def main() -> None:
        server, _, _ = await _serve(_answers)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server, _client(timeout=httpx.Timeout(None, read=0.2)) as client:
            with pytest.raises(error, match=text):
                await client.get(f"{base}{path}")
            assert (await client.get(f"{base}/json")).status_code == 200  # the failed connection was not kept

    asyncio.run(main())


def test_a_closed_port_is_a_connect_error_and_openai_says_connection_error() -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{_closed_port()}/v1"
        async with _client() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
            oa = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0, http_client=client)
            with pytest.raises(openai.APIConnectionError) as info:
                await oa.models.list()
            assert isinstance(info.value.__cause__, httpx.ConnectError)

    asyncio.run(main())


def test_other_schemes_go_to_the_fallback() -> None:
    seen: list[str] = []

    class Fallback(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return httpx.Response(204)

    async def main() -> None:
        async with httpx.AsyncClient(transport=Http11Transport(Fallback())) as client:
            assert (await client.get("https://example.invalid/v1/models")).status_code == 204

    asyncio.run(main())
    assert seen == ["https://example.invalid/v1/models"]
