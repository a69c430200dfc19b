"""A lean HTTP/1.1 transport for the scorer clients' plain-HTTP endpoints (a vLLM server on this machine or the
cluster's network), under the `openai` client and its httpx client, which keep their retries, errors and hooks.

httpx's default transport (httpcore, anyio, h11) cost about half of a scoring request's CPU on loopback (0.5 of
1.1 ms: a cancel scope per socket operation, a scan of the whole pool per request, a state machine per event;
docs/benchmarks.md, issue 25). This one writes a request with one send, reads the reply with asyncio's stream reader
and keeps idle connections per host. It reads whole replies (Content-Length, chunked, or up to the close), so a
response's connection is back in the pool or closed before the response is handed on; streamed replies are not for
it. HTTPS goes to httpx's own transport, as do proxied URLs (httpx mounts the environment's proxies above this).

Failures raise httpx's exceptions, as httpcore's would: ConnectError / ConnectTimeout, WriteError / WriteTimeout,
ReadError / ReadTimeout, RemoteProtocolError (the server closed the connection or wrote no HTTP). A request that
is cancelled (the stall detector) closes its connection, which makes vLLM abort it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2 as httpx

# A reply's status line and headers may take this many bytes (vLLM's take a few hundred).
MAX_HEAD_BYTES = 1 << 20
# An idle connection is not used again after this long (httpx's default): servers close theirs after a few seconds
# (uvicorn, under vLLM, after 5), and a request written as the server closes would fail.
KEEPALIVE_EXPIRY_S = 5.0
_NO_BODY = frozenset({204, 304})


class _Bytes(httpx.AsyncByteStream):
    """A reply's body, already read whole (httpx decodes its Content-Encoding from here, as from its own)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


@asynccontextmanager
async def _within(
    seconds: float | None, error: type[httpx.TransportError], request: httpx.Request
) -> AsyncIterator[None]:
    """Raise `error` when the block takes longer than `seconds` (None: no limit)."""
    if seconds is None:
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise error(f"timed out after {seconds:g} s", request=request) from None


class Http11Transport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 with keep-alive; any other scheme goes to `fallback` (httpx's own transport)."""

    def __init__(self, fallback: httpx.AsyncBaseTransport) -> None:
        self._fallback = fallback
        # per host, its idle connections and when each became idle
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        key = (url.host, url.port or 80)
        reader, writer = await self._connection(key, timeouts.get("connect"), request)
        reusable = False
        try:
            await self._send(writer, request, timeouts.get("write"))
            status, head, body, reusable = await self._receive(reader, request, timeouts.get("read"))
        except BaseException:  # a failure or a cancellation: the connection is in an unknown state
            writer.close()
            raise
        if reusable:
            self._idle.setdefault(key, []).append((reader, writer, time.monotonic()))
        else:
            writer.close()
        version, reason, headers = head
        return httpx.Response(
            status,
            headers=headers,
            stream=_Bytes(body),
            extensions={"http_version": version, "reason_phrase": reason},
            request=request,
        )

    async def _connection(
        self, key: tuple[str, int], timeout: float | None, request: httpx.Request
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection to the host that the server has not closed meanwhile, else a new one."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            reader, writer, since = idle.pop()
            if now - since < KEEPALIVE_EXPIRY_S and not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        try:
            async with _within(timeout, httpx.ConnectTimeout, request):
                return await asyncio.open_connection(key[0], key[1], limit=MAX_HEAD_BYTES)
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc

    async def _send(self, writer: asyncio.StreamWriter, request: httpx.Request, timeout: float | None) -> None:
        body = await request.aread()
        url = request.url
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), url.raw_path)]
        sized = False
        for name, value in request.headers.raw:
            low = name.lower()
            if low == b"transfer-encoding":  # the body is read whole: it goes with its length
                continue
            sized = sized or low == b"content-length"
            lines.append(b"%s: %s\r\n" % (name, value))
        if body and not sized:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        try:
            writer.write(b"".join(lines) + body)  # one send for the head and the body
            async with _within(timeout, httpx.WriteTimeout, request):
                await writer.drain()
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc

    async def _receive(
        self, reader: asyncio.StreamReader, request: httpx.Request, timeout: float | None
    ) -> tuple[int, tuple[bytes, bytes, list[tuple[bytes, bytes]]], bytes, bool]:
        """(status, (HTTP version, reason, headers), body, whether the connection can take another request)."""
        try:
            async with _within(timeout, httpx.ReadTimeout, request):
                while True:  # 1xx replies (100 Continue) come before the real one
                    status, version, reason, headers = _head(await reader.readuntil(b"\r\n\r\n"), request)
                    if status >= 200:
                        break
                fields = {name.lower(): value for name, value in headers}
                tokens = {t.strip().lower() for t in fields.get(b"connection", b"").split(b",")}
                reusable = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
                if request.method == "HEAD" or status in _NO_BODY:
                    body = b""
                elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                    body = await _chunked(reader)
                elif (length := fields.get(b"content-length")) is not None:
                    body = await reader.readexactly(_length(length, request))
                else:  # delimited by the close
                    body, reusable = await reader.read(), False
        except asyncio.IncompleteReadError as exc:
            what = "a response" if not exc.partial else "the complete response"
            raise httpx.RemoteProtocolError(f"Server disconnected without sending {what}.", request=request) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError(f"response head over {MAX_HEAD_BYTES} bytes", request=request) from None
        except (OSError, ValueError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        return status, (version, reason, headers), body, reusable

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for _, writer, _ in idle:
                writer.close()
        self._idle.clear()
        await self._fallback.aclose()


def _head(head: bytes, request: httpx.Request) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """(status, HTTP version, reason phrase, headers) of a reply's head."""
    status_line, *lines = head[:-4].split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}", request=request)
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"malformed response header: {line[:80]!r}", request=request)
        headers.append((name, value.strip()))
    return int(parts[1]), parts[0], parts[2] if len(parts) > 2 else b"", headers


def _length(value: bytes, request: httpx.Request) -> int:
    if not value.strip().isdigit():
        raise httpx.RemoteProtocolError(f"bad Content-Length {value[:40]!r}", request=request)
    return int(value)


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, its trailers read past."""
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass
    return b"".join(parts)
