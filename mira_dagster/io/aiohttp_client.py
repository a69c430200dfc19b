"""openai's aiohttp backend with httpx's behaviour: the scorer client's HTTP client (io/llm_client.py).

openai's `DefaultAioHttpClient` (its `aiohttp` extra) costs about 60% of the client CPU a request of its default
httpx transport (docs/benchmarks.md, issue 25), but its transport differs from httpx in two ways this module puts
right, so that retries, errors and auth stay exactly as they were:

- errors: its map picks by the order of a dict, so a refused connection (aiohttp's `ClientConnectorError`, a
  `ClientConnectionError`) becomes `ConnectTimeout` and openai reports "Request timed out"; a server that closes
  mid-reply becomes a timeout too, and an error it does not map leaves openai unwrapped. Here the most specific
  aiohttp error decides, as the httpx error httpx raises in that case (refused: `ConnectError`, naming host:port).
- credentials in the base URL (`http://user:pw@host/v1`): httpx's client already turns them into the request's
  `Authorization: Basic` header (over the key's Bearer header, as httpx always did); aiohttp refuses a URL with
  credentials beside that header, so the transport sends the URL without them: the same bytes httpx sends.

A URL the environment routes through a proxy (`HTTPS_PROXY`, `ALL_PROXY`, ... and `NO_PROXY`, read once when the
client is built) keeps httpx's own proxy transport: aiohttp has no SOCKS proxies and differs in proxy details.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import aiohttp
import httpx2
import openai

# (aiohttp error, the httpx error httpx raises in that case); the first match wins, so subclasses come first
_ERRORS: tuple[tuple[type[BaseException], type[httpx2.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx2.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx2.ReadTimeout),  # SocketTimeoutError: no byte within the read timeout
    (aiohttp.ClientProxyConnectionError, httpx2.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx2.ProxyError),
    (aiohttp.ClientConnectorError, httpx2.ConnectError),  # refused, no such host, TLS handshake
    (aiohttp.ServerDisconnectedError, httpx2.RemoteProtocolError),  # closed before or during the reply's head
    (aiohttp.ClientPayloadError, httpx2.RemoteProtocolError),  # closed during the body
    (aiohttp.ClientResponseError, httpx2.RemoteProtocolError),  # a reply aiohttp's parser refused
    (aiohttp.ClientOSError, httpx2.ReadError),  # reset, broken pipe
    (aiohttp.InvalidURL, httpx2.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx2.UnsupportedProtocol),
    (aiohttp.ClientError, httpx2.TransportError),
)


def raise_as_httpx(exc: BaseException, request: httpx2.Request | None = None) -> NoReturn:
    """Raise the httpx error for an aiohttp one (given as itself or as the cause of the vendored transport's
    mapping), caused by the aiohttp error; any other exception as it is."""
    cause = exc.__cause__ if isinstance(exc, httpx2.TransportError) else exc
    for aiohttp_error, httpx_error in _ERRORS:
        if isinstance(cause, aiohttp_error):
            raise httpx_error(str(cause) or type(cause).__name__, request=request) from cause
    raise exc


class _Body(httpx2.AsyncByteStream):
    """The reply's body as the vendored transport reads it, its errors as httpx's."""

    def __init__(self, inner: httpx2.AsyncByteStream, request: httpx2.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx2.TransportError, aiohttp.ClientError) as exc:
            raise_as_httpx(exc, self._request)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except (httpx2.TransportError, aiohttp.ClientError) as exc:
            raise_as_httpx(exc, self._request)


class _Transport(httpx2.AsyncBaseTransport):
    """openai's aiohttp transport without credentials in the URL and with httpx's errors."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.userinfo:  # httpx's client made them the Authorization header (basic auth), as httpx sends it
            request.url = request.url.copy_with(username=None, password=None)
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.TransportError, aiohttp.ClientError) as exc:
            raise_as_httpx(exc, request)
        response.stream = _Body(response.stream, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class AioHttpClient(openai.DefaultAioHttpClient):
    """openai's aiohttp client (its defaults: limits, redirects, timeout) on `_Transport`; proxied URLs on httpx."""

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return _Transport(super()._init_transport(*args, **kwargs))

    def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return httpx2.AsyncClient._init_proxy_transport(self, *args, **kwargs)
