"""io/aiohttp_client.py: openai's aiohttp backend behaves as its default httpx client did, against real loopback
servers: the same openai error and the same httpx error under it for a refused port, a close before or during the
reply, a reply that is no HTTP, a server that never answers; URL credentials sent as the same basic-auth header;
proxied URLs through the proxy. Each case runs on httpx (the reference) and on ours."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from mira_dagster.io.aiohttp_client import AioHttpClient, _Transport
from mira_dagster.io.llm_client import Endpoint, OpenAIBackend, safe_error
from mira_dagster.io.store import ParquetReplyCache
from tests.core.test_scoring import _setup, run
from tests.io.test_endpoint_down import closed_port_url
from tests.loopback import ChatServer, Reply, completion, serve

CLIENTS = {"httpx": openai.DefaultAsyncHttpxClient, "aiohttp": AioHttpClient}
BODY = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


@contextmanager
def raw_server(answer: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    """A loopback TCP server that reads each request's head and body, then lets `answer` write what it likes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    done = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            sizes = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            length = sizes[0] if sizes else 0
            while len(body) < length:
                body += conn.recv(65536)
            answer(conn, head)
            done.wait(30)  # `answer` closed the connection, or the client gives up first

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        done.set()
        listener.close()


def _post(client_class: Any, url: str, read_timeout: float | None = None, retries: int = 0) -> tuple[str, str]:
    """One chat request through the openai client on `client_class`: ("ok", "") or the kind of error
    ("<openai error> / <httpx error under it>") and its text as the tables show it."""

    async def go() -> tuple[str, str]:
        timeout = openai.Timeout(read_timeout, connect=5.0)
        http = client_class(timeout=timeout)
        client = openai.AsyncOpenAI(
            base_url=url, api_key="sk-k", max_retries=retries, timeout=timeout, http_client=http
        )
        try:
            await client.post("/chat/completions", body=BODY, cast_to=bytes)
            return "ok", ""
        except Exception as exc:  # the test compares whatever it is
            return f"{type(exc).__name__} / {type(exc.__cause__).__name__}", safe_error(exc)
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("name", CLIENTS)
def test_refused_port_is_a_connection_error_naming_the_endpoint(name: str) -> None:
    url = closed_port_url()
    kind, error = _post(CLIENTS[name], url)
    assert kind == "APIConnectionError / ConnectError", error  # not "APITimeoutError: Request timed out."
    assert error.startswith("APIConnectionError: Connection error. (ConnectError: ")
    if name == "aiohttp":  # httpx says "All connection attempts failed"
        assert f"Cannot connect to host 127.0.0.1:{url.split(':')[2].split('/')[0]} " in error


def _close_mid_body(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"choices"')
    conn.close()


def _close_mid_head(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: appl")
    conn.close()


def _not_http(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    conn.close()


def _reset(conn: socket.socket, head: bytes) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    conn.close()


@pytest.mark.parametrize("name", CLIENTS)
@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (_close_mid_body, "APIConnectionError / RemoteProtocolError"),
        (_close_mid_head, "APIConnectionError / RemoteProtocolError"),
        (_not_http, "APIConnectionError / RemoteProtocolError"),
    ],
)
def test_a_server_that_breaks_the_reply_gives_httpx_errors(name: str, answer: Any, kind: str) -> None:
    with raw_server(answer) as url:
        got, error = _post(CLIENTS[name], url)
    assert got == kind, error


@pytest.mark.parametrize("name", CLIENTS)
def test_a_reset_connection_is_a_connection_error(name: str) -> None:
    with raw_server(_reset) as url:
        kind, error = _post(CLIENTS[name], url)
    # httpx says ReadError or RemoteProtocolError depending on when the reset is seen; both are connection errors
    assert kind in ("APIConnectionError / ReadError", "APIConnectionError / RemoteProtocolError"), error


@pytest.mark.parametrize("name", CLIENTS)
def test_a_close_before_the_reply_is_retried_and_counted(name: str) -> None:
    server = ChatServer(responder=lambda body, attempt: Reply(drop=attempt == 1, payload=completion(body, "fine")))
    with serve(server) as url:
        assert _post(CLIENTS[name], url, retries=2) == ("ok", "")
        assert server.chat_requests == 2
        assert _post(CLIENTS[name], url.replace("/v1", "/v1/x"))[0] == "NotFoundError / NoneType"  # not retried
        assert server.chat_requests == 2


@pytest.mark.parametrize("name", CLIENTS)
def test_a_server_that_accepts_and_never_answers_times_out(name: str) -> None:
    with raw_server(lambda conn, head: None) as url:
        kind, error = _post(CLIENTS[name], url, read_timeout=0.3)
    assert kind == "APITimeoutError / ReadTimeout", error
    assert error.startswith("APITimeoutError: Request timed out.")


def test_a_never_answering_endpoint_is_stalled_and_fails_the_request(tmp_path: Path) -> None:
    """The backend's own path (no read timeout): the stall detector's probes time out and the request fails."""
    spec, _, jobs = _setup()
    with raw_server(lambda conn, head: None) as url:
        backend = OpenAIBackend(Endpoint((url,), "k", spec.model), timeout_s=0.2, max_retries=0)
        outcomes, _ = run(jobs[:2], spec, backend, ParquetReplyCache(tmp_path))
        asyncio.run(backend.aclose())  # as run_scorer does
    assert [o.result.status for o in outcomes] == ["request_error"] * 2
    assert outcomes[0].result.issues[0].startswith("EndpointStalled: Endpoint stalled: no answer to 3 probes")
    assert backend.stats.stall_probes >= 3 and backend.stats.waited_past_timeout == 2


@pytest.mark.parametrize("name", CLIENTS)
def test_url_credentials_are_the_basic_auth_header_httpx_sends(name: str) -> None:
    server = ChatServer()
    with serve(server) as url:
        assert _post(CLIENTS[name], url.replace("http://", "http://alice:p%40ss@")) == ("ok", "")
        assert _post(CLIENTS[name], url) == ("ok", "")
    assert server.auth_headers == [f"Basic {base64.b64encode(b'alice:p@ss').decode()}", "Bearer sk-k"]


def test_the_backend_sends_url_credentials_as_httpx_did(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    server = ChatServer()
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url.replace("http://", "http://u:pw@"),), "sk-x", spec.model))
        outcomes, _ = run(jobs[:3], spec, backend, ParquetReplyCache(tmp_path))
        asyncio.run(backend.aclose())  # as run_scorer does
    assert [o.result.status for o in outcomes] == ["ok"] * 3
    assert set(server.auth_headers) == {"Basic dTpwdw=="}  # base64 of u:pw, as httpx sends it


@pytest.mark.parametrize("name", CLIENTS)
def test_a_proxied_url_goes_through_the_proxy(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    def proxy(conn: socket.socket, head: bytes) -> None:
        seen.append(head.split(b"\r\n")[0])
        data = b'{"choices": []}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))

    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    with raw_server(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
        assert _post(CLIENTS[name], "http://model-host.invalid:8000/v1") == ("ok", "")
    assert seen == [b"POST http://model-host.invalid:8000/v1/chat/completions HTTP/1.1"]


def test_only_the_direct_transport_is_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided once when the client is built: proxied URLs keep httpx's transport, the rest go through aiohttp."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "localhost")
    http = AioHttpClient()
    transports = [t for t in http._mounts.values() if t is not None]
    assert isinstance(http._transport, _Transport) and transports
    assert not any(isinstance(t, _Transport) for t in transports)
    asyncio.run(http.aclose())
