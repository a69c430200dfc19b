"""A scorer endpoint that is down: every request ends `request_error` quickly, with a safe, telling error text."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from pathlib import Path

import openai
import pytest

from mira_dagster.io import llm_client
from mira_dagster.io.llm_client import Endpoint, OpenAIBackend, probe, safe_error
from mira_dagster.io.store import ParquetReplyCache
from tests.core.test_scoring import _setup, run
from tests.loopback import ChatServer, Reply, serve


def closed_port_url() -> str:
    """A loopback URL nothing listens on: bind a socket to a free port, then close it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_closed_port_fails_every_record_in_seconds_with_default_retries(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    backend = OpenAIBackend(Endpoint((closed_port_url(),), "sk-closed-secret", spec.model))  # max_retries 3
    started = time.monotonic()
    outcomes, stats = run(jobs[:50], spec, backend, ParquetReplyCache(tmp_path))
    elapsed = time.monotonic() - started
    assert [o.result.status for o in outcomes] == ["request_error"] * 50
    assert stats.failed == 50 == stats.sent
    assert backend.stats.http_attempts == 50 * 4  # the client's own retries, each refused at once
    assert elapsed < 30, elapsed  # backoff 0.5 + 1 + 2 s, all records at once: seconds, not hours
    issue = outcomes[0].result.issues[0]
    assert issue.startswith("APIConnectionError: Connection error.") and "ConnectError" in issue
    assert "sk-closed-secret" not in issue


def test_breaker_stops_sending_once_every_endpoint_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one request at a time against a closed port (refused in a millisecond, no retries)
    spec, _, jobs = _setup()
    url = closed_port_url()
    backend = OpenAIBackend(Endpoint((url,), "k-secret", spec.model), max_retries=0, max_in_flight=1)
    outcomes, stats = run(jobs[:40], spec, backend, ParquetReplyCache(tmp_path / "a"), max_in_flight=1)
    assert backend.stats.not_sent == 0 and stats.sent == 40  # failing for less than DOWN_AFTER_S: all sent
    # once no endpoint has answered for DOWN_AFTER_S, the records not yet sent fail at once
    monkeypatch.setattr(llm_client, "DOWN_AFTER_S", 0.0)
    backend = OpenAIBackend(Endpoint((url,), "k-secret", spec.model), max_retries=0, max_in_flight=1)
    outcomes, stats = run(jobs[:40], spec, backend, ParquetReplyCache(tmp_path / "b"), max_in_flight=1)
    assert [o.result.status for o in outcomes] == ["request_error"] * 40
    not_sent = [o for o in outcomes if "[not sent: no endpoint answered" in o.result.issues[0]]
    assert len(not_sent) == backend.stats.not_sent == 39
    assert stats.sent == 1 == backend.stats.requests  # only requests that went out count as sent
    assert not_sent[0].result.issues[0].startswith("APIConnectionError: Connection error.")


def test_breaker_stays_closed_while_an_endpoint_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_client, "DOWN_AFTER_S", 0.0)
    spec, _, jobs = _setup()
    server = ChatServer(latency_s=0.01)
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((closed_port_url(), url), "k", spec.model), max_retries=0, max_in_flight=2)
        outcomes, _ = run(jobs[:20], spec, backend, ParquetReplyCache(tmp_path))
    assert [o.result.status for o in outcomes] == ["ok"] * 20
    assert backend.stats.not_sent == 0


def test_status_errors_keep_their_text_and_keep_the_breaker_closed(tmp_path: Path) -> None:
    spec, _, jobs = _setup()
    server = ChatServer(responder=lambda body, n: Reply(404, {"error": {"message": "model m does not exist"}}))
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url,), "k", "m"), max_retries=3)
        outcomes, _ = run(jobs[:3], spec, backend, ParquetReplyCache(tmp_path))
    assert server.chat_requests == 3  # 404 is not retried
    assert outcomes[0].result.issues[0].startswith("NotFoundError: Error code: 404")
    assert "model m does not exist" in outcomes[0].result.issues[0]
    assert backend.down_for() is None


def test_safe_error_redacts_urls_and_removes_the_key() -> None:
    try:
        try:
            raise ValueError("refused by http://user:pw@host:8000/v1?key=abc with sk-abcdef")
        except ValueError as inner:
            # the request as the client builds it (public API: whichever HTTP library this openai release uses)
            with openai.DefaultHttpxClient() as http:
                request = http.build_request("POST", "http://host:8000/v1/chat/completions")
            raise openai.APIConnectionError(message="Connection error.", request=request) from inner
    except openai.APIConnectionError as exc:
        text = safe_error(exc, ("sk-abcdef",))
    assert text == "APIConnectionError: Connection error. (ValueError: refused by http://host:8000/v1 with ***)"
    assert safe_error(ValueError("EMPTY key"), ("EMPTY",)) == "ValueError: EMPTY key"  # vLLM's placeholder


def test_probe_of_a_closed_port_says_unreachable() -> None:
    started = time.monotonic()
    info = probe(closed_port_url(), "k")
    assert not info.reachable and info.max_model_len is None
    assert time.monotonic() - started < 5


def test_connect_timeout_is_short_whatever_the_request_timeout() -> None:
    backend = OpenAIBackend(Endpoint(("http://127.0.0.1:1/v1",), "k", "m"), timeout_s=120)
    timeout = backend._targets[0].client.timeout
    # no read timeout: a reply takes as long as the server needs (the stall detector watches the endpoint)
    assert timeout.connect == llm_client.CONNECT_TIMEOUT_S and timeout.read is None
    asyncio.run(backend.aclose())


def test_a_server_answering_errors_is_not_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 500 or a 429 is an answer: the server is busy or failing, not gone, so the breaker stays closed and every
    record is still sent (slow reasoning replies and one 5xx must not fail a whole partition)."""
    monkeypatch.setattr(llm_client, "DOWN_AFTER_S", 0.0)  # the breaker would open at once on connection errors
    spec, _, jobs = _setup()
    server = ChatServer()
    server.responder = lambda body, attempt: (
        Reply(status=500, payload={"error": {"message": "boom"}})
        if attempt == 1
        else Reply(payload=server.contract(body))
    )
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url,), "k", spec.model), max_retries=0, max_in_flight=1)
        outcomes, stats = run(jobs[:20], spec, backend, ParquetReplyCache(tmp_path), max_in_flight=1)
    assert backend.stats.not_sent == 0 and stats.sent == 20
    assert all("not sent" not in " ".join(o.result.issues) for o in outcomes)


def test_slow_server_answers_every_record_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server taking 3x the request timeout per reply, 20 requests in flight: each record is sent once and
    answered once (the old client timed out and re-sent while the server still computed: paid twice)."""
    # the standard library server's listen backlog is 5: 20 connections at once would be reset by the kernel
    # before the server saw them (retried, never paid); a real server's backlog is in the thousands
    monkeypatch.setattr(http.server.ThreadingHTTPServer, "request_queue_size", 64)
    spec, _, jobs = _setup()
    patience = 0.4
    server = ChatServer(latency_s=3 * patience)
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url,), "k", spec.model), timeout_s=patience, max_in_flight=20)
        outcomes, stats = run(jobs[:20], spec, backend, ParquetReplyCache(tmp_path), max_in_flight=20)
    assert [o.result.status for o in outcomes] == ["ok"] * 20
    assert server.chat_requests == 20 == len(set(server.answered)) == len(server.answered)  # server-side count
    assert backend.stats.http_attempts == 20 and backend.stats.retries == 0
    assert backend.stats.waited_past_timeout == 20 and backend.stats.resent_after_stall == 0
    assert backend.stats.longest_reply_s >= 3 * patience


def hung_endpoint() -> tuple[str, threading.Event]:
    """A URL whose server accepts one request and never answers, then stops listening (probes are refused): a
    host that went away mid-request. Set the event to release the held connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    release = threading.Event()

    def hold() -> None:
        conn, _ = listener.accept()
        listener.close()
        release.wait(30)
        conn.close()

    threading.Thread(target=hold, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1", release


def test_stalled_endpoint_request_is_cancelled_and_sent_elsewhere(tmp_path: Path) -> None:
    """The one case a running request is sent again: its endpoint stopped answering probes (STALL_PROBES in a row).
    It is counted as resent_after_stall, and the other endpoint answers it."""
    spec, _, jobs = _setup()
    server = ChatServer()
    hung, release = hung_endpoint()
    try:
        with serve(server) as url:
            # the hung endpoint is first: with nothing in flight the client picks it
            backend = OpenAIBackend(Endpoint((hung, url), "k", spec.model), timeout_s=0.2, max_in_flight=1)
            outcomes, _ = run(jobs[:1], spec, backend, ParquetReplyCache(tmp_path), max_in_flight=1)
    finally:
        release.set()
    assert [o.result.status for o in outcomes] == ["ok"]
    assert server.chat_requests == 1
    assert backend.stats.resent_after_stall == 1 == backend.stats.failovers
    assert backend.stats.stall_probes >= llm_client.STALL_PROBES


def test_a_slow_reply_is_not_a_stall_while_the_endpoint_answers_probes(tmp_path: Path) -> None:
    """A reply taking many patience intervals on an endpoint that answers probes (here 501: any status is an
    answer) is waited for, however many probes that takes."""
    spec, _, jobs = _setup()
    server = ChatServer(latency_s=1.5)
    with serve(server) as url:
        backend = OpenAIBackend(Endpoint((url,), "k", spec.model), timeout_s=0.1, max_in_flight=1)
        outcomes, _ = run(jobs[:1], spec, backend, ParquetReplyCache(tmp_path), max_in_flight=1)
    assert [o.result.status for o in outcomes] == ["ok"]
    assert server.chat_requests == 1 and backend.stats.resent_after_stall == 0
    assert backend.stats.stall_probes > llm_client.STALL_PROBES  # more probes than a stall needs: all answered


def test_a_request_cancelled_from_outside_past_the_patience_is_cancelled_not_stalled() -> None:
    """The run stopping (its task cancelled) while a request waits past the patience, its stall watcher probing: the
    cancellation comes out as such (not EndpointStalled, not re-sent elsewhere) and no watcher is left running."""
    spec, _, jobs = _setup()
    server = ChatServer(latency_s=2.0)

    async def go(url: str) -> None:
        backend = OpenAIBackend(Endpoint((url,), "k", spec.model), timeout_s=0.1, max_in_flight=1)
        request = asyncio.ensure_future(backend.complete(spec.system_prompt, jobs[0].user, spec))
        await asyncio.sleep(0.5)  # past the patience: the watcher has probed the endpoint (alive)
        assert backend.stats.waited_past_timeout == 1 and backend.stats.stall_probes >= 1
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert backend.stats.resent_after_stall == 0 and backend.stats.failovers == 0
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        await backend.aclose()

    with serve(server) as url:
        asyncio.run(go(url))
