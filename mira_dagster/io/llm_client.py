"""The OpenAI-compatible chat backend: a vLLM server as in the model cards, several of them, or any hosted API.

- Concurrency: at most `max_in_flight` requests at once per endpoint; each request goes to the endpoint
  with the fewest in flight. An endpoint that fails (connection refused, timeout, 5xx or 429 after the
  client's retries) is rested for a while and the request moves to another one, so one server going down
  does not stop a partition.
- Retries with exponential backoff and jitter are the `openai` client's own (408/409/429/5xx, connect timeouts,
  dropped connections; never 400). Every HTTP attempt is counted, so retries show in the metadata.
- Never paid twice: a request the server is still computing is never sent again because we got impatient. There
  is no read timeout: past `timeout_s` (the patience) a request keeps waiting as long as its endpoint is alive,
  which an answer from it in the last `timeout_s` or a probe of `/v1/models` (any HTTP status) shows. Only an
  endpoint that misses STALL_PROBES probes in a row is stalled: its request is cancelled (closing the connection
  makes vLLM abort it) and sent again elsewhere, counted as `resent_after_stall`; the requests that waited past the
  patience and the probes sent show in the metadata too.
- A dead service fails fast: connecting is given at most CONNECT_TIMEOUT_S (a server that accepts no
  connection in that time is down, however long its replies may take), and once no endpoint has answered
  anything for DOWN_AFTER_S while every endpoint keeps failing, the requests not yet sent fail at once
  (`request_error`, "not sent") instead of each spending its retries on the same dead servers. Once an
  endpoint's rest (REST_AFTER_FAILURE_S) is over, requests go out to it again, and any reply (even an error
  status) closes the breaker: an endpoint that comes back is used again. A closed port fails a partition in
  seconds (the client's backoff, about 3.5 s with 3 retries, per endpoint).
- Errors: a request that fails for good raises `RequestFailed` with "<error type>: <message> (<cause>)", URLs
  redacted and the API key removed, so the record's `issues` say why without leaking a secret.
- Length: vLLM's `/v1/models` tells the context length, `/tokenize` counts a prompt exactly.
- Constrained decoding: vLLM's `structured_outputs` regex, when the spec carries one.

Endpoints arrive as `Endpoint` values: this module reads no environment (mira_dagster/settings.py resolves the
MIRA_<ROLE>_* variables). Keys are never written anywhere: they are kept out of reprs, URLs are redacted.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI
from pydantic import BaseModel

from mira_dagster.core.scoring import Completion, RequestFailed, ScorerSpec
from mira_dagster.io.aiohttp_client import AioHttpClient
from mira_dagster.io.endpoint import Endpoint, redact_url

REST_AFTER_FAILURE_S = 15.0
# Connecting takes milliseconds on a live server, however busy: longer means the host is gone (a dropped SYN
# would otherwise cost the full request timeout on every attempt).
CONNECT_TIMEOUT_S = 10.0
# No reply from any endpoint for this long, and every endpoint failing: the endpoints are down, stop sending.
DOWN_AFTER_S = 30.0
# A request running past the patience is cancelled and re-sent only once its endpoint missed this many probes in a
# row (one probe per patience interval, shared by every request waiting on that endpoint).
STALL_PROBES = 3
# Failures that say "this endpoint, now" rather than "this request": worth another endpoint.
_ENDPOINT_FAILURES = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def safe_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The error as "<type>: <message> (<cause>)", every URL redacted and the given secrets removed: fit for logs,
    metadata and the tables. The cause says what the client's generic "Connection error." hides (refused,
    name not known, ...)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    cause = exc.__cause__ or exc.__context__
    # a status error says it all (its cause repeats it); a connection error's cause says what really happened
    if isinstance(exc, openai.APIConnectionError) and cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for secret in secrets:
        if len(secret) >= 4 and secret != "EMPTY":  # vLLM's placeholder key is no secret
            text = text.replace(secret, "***")
    return " ".join(text.split())[:300]


def _completion(raw: bytes, where: str) -> Completion:
    """A chat completion's reply as the cards' client reads it: the first choice's text and finish reason, and the
    token counts when the server gives them; a body that is not one fails the request, naming the endpoint."""
    try:
        reply = json.loads(raw)
        choice = reply["choices"][0]
        usage = reply.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        message = choice["message"]
        content = message.get("content")
        if isinstance(content, list):  # content parts (Mistral's API): the text parts; reasoning parts stay out, as
            # a server's reasoning_content does
            content = "".join(_reply_part(part) for part in content)
        if not content and choice.get("finish_reason") == "stop" and (thought := _reasoning(message)):
            raise RequestFailed(
                f"reply from {where} has no content: the {len(thought):,} characters the model wrote came as the "
                "message's reasoning (a reasoning parser on the server took the whole reply); serve the scorer "
                "without --reasoning-parser and run again"
            )
        return Completion(
            text=content or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=details.get("cached_tokens"),
        )
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        raise RequestFailed(f"not a chat completion from {where}: {type(exc).__name__}: {exc}"[:300]) from None


def _reasoning(message: dict[str, Any]) -> str:
    """What a server's reasoning parser split off the reply (vLLM: `reasoning_content`, later `reasoning`)."""
    thought = message.get("reasoning_content") or message.get("reasoning")
    return thought if isinstance(thought, str) and thought.strip() else ""


def _reply_part(part: Any) -> str:
    """The text of a reply's content part; a part that is not text (reasoning, an image) adds nothing; a part of a
    shape we do not know fails the request rather than be read as empty."""
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        kind = part.get("type", "text")
        if kind == "text" and isinstance(part.get("text"), str):
            return part["text"]
        if kind != "text":
            return ""
    raise TypeError(f"a content part that is not text: {json.dumps(part)[:80]}")


class ServerInfo(BaseModel):
    reachable: bool = False
    is_vllm: bool = False
    max_model_len: int | None = None


def probe(base_url: str, api_key: str, timeout_s: float = 10.0) -> ServerInfo:
    """What `/v1/models` says: whether it is vLLM (owned_by) and its context length."""
    try:
        with openai.DefaultHttpxClient(timeout=timeout_s) as http:
            resp = http.get(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
            resp.raise_for_status()
            models = resp.json().get("data") or []
    except Exception:
        return ServerInfo()
    first: dict[str, Any] = models[0] if models else {}
    return ServerInfo(
        reachable=True,
        is_vllm=first.get("owned_by") == "vllm",
        max_model_len=first.get("max_model_len"),
    )


def _server_root(base_url: str) -> str:
    # vLLM serves /tokenize beside /v1, not under it.
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


@dataclass
class _Target:
    base_url: str
    client: AsyncOpenAI
    http: Any  # the client's HTTP connection pool, shared with /tokenize
    semaphore: asyncio.Semaphore
    info: ServerInfo
    # the chat URL as the client would join it (base_url ends in "/"): given whole, openai parses it once instead of
    # joining the path to base_url on every request; `where`, the endpoint redacted, for the per-endpoint counts
    chat_url: str = ""
    where: str = ""
    in_flight: int = 0
    rest_until: float = 0.0
    can_tokenize: bool = True
    # the stall detector: when the endpoint last gave any answer, and the probes it has missed in a row since
    answered_at: float = 0.0
    probed_at: float = 0.0
    missed_probes: int = 0
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Watch:
    """A request's stall watcher, started once the request runs past the patience."""

    task: asyncio.Task[None] | None = None
    stalled: bool = False


class EndpointStalled(openai.APIConnectionError):
    """A request running past the patience on an endpoint that stopped answering probes: cancelled, sent elsewhere."""


@dataclass
class ClientStats:
    requests: int = 0  # logical chat requests
    http_attempts: int = 0  # including the client's retries
    failovers: int = 0
    not_sent: int = 0  # failed at once: every endpoint was down
    tokenize_calls: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)
    waited_past_timeout: int = 0  # requests still running at the patience, kept waiting (not re-sent)
    stall_probes: int = 0  # /v1/models probes sent while requests waited
    resent_after_stall: int = 0  # requests cancelled on a stalled endpoint and sent again: possibly paid twice
    longest_reply_s: float = 0.0

    @property
    def retries(self) -> int:
        return max(0, self.http_attempts - self.requests)


class OpenAIBackend:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        max_in_flight: int = 64,
        infos: dict[str, ServerInfo] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.patience_s = timeout_s
        self.stats = ClientStats()
        self.capacity = max_in_flight * len(endpoint.base_urls)
        infos = infos or {}
        self._targets = [self._target(url, timeout_s, max_retries, max_in_flight, infos) for url in endpoint.base_urls]
        # the breaker: when some endpoint last answered (or the first request went out), endpoint failures since
        self._answered_at: float | None = None
        self._failures_since = 0
        self._last_error = ""

    def _target(
        self, url: str, timeout_s: float, max_retries: int, max_in_flight: int, infos: dict[str, ServerInfo]
    ) -> _Target:
        async def count(request: Any) -> None:
            if request.url.path.endswith("/chat/completions"):
                self.stats.http_attempts += 1

        # no read timeout: a reply takes as long as the server needs (the stall detector watches the endpoint)
        timeout = openai.Timeout(None, connect=CONNECT_TIMEOUT_S, write=max(timeout_s, CONNECT_TIMEOUT_S))
        # openai's aiohttp backend with httpx's errors and URL credentials (io/aiohttp_client.py): the same retries,
        # errors and auth at about 60% of the client CPU a request of its default httpx transport (docs/benchmarks.md)
        http = AioHttpClient(event_hooks={"request": [count]}, timeout=timeout)
        client = AsyncOpenAI(
            base_url=url, api_key=self.endpoint.api_key, timeout=timeout, max_retries=max_retries, http_client=http
        )
        chat_url = f"{client.base_url}chat/completions"
        semaphore, info = asyncio.Semaphore(max_in_flight), infos.get(url, ServerInfo())
        return _Target(url, client, http, semaphore, info, chat_url=chat_url, where=redact_url(url))

    @property
    def max_model_len(self) -> int | None:
        """The smallest context any endpoint reports (they serve the same model)."""
        lens = [t.info.max_model_len for t in self._targets if t.info.max_model_len]
        return min(lens) if lens else None

    def _pick(self, tried: set[str]) -> _Target | None:
        now = time.monotonic()
        fresh = [t for t in self._targets if t.base_url not in tried]
        rested = [t for t in fresh if t.rest_until <= now] or fresh
        return min(rested, key=lambda t: t.in_flight) if rested else None

    def down_for(self) -> float | None:
        """Seconds since any endpoint last answered, when every endpoint is failing (resting after a failure) and
        that has lasted DOWN_AFTER_S; else None. Requests not yet sent then fail at once."""
        now = time.monotonic()
        if self._answered_at is None or self._failures_since < len(self._targets):
            return None
        if any(t.rest_until <= now for t in self._targets):
            return None
        silent = now - self._answered_at
        return silent if silent >= DOWN_AFTER_S else None

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        if self._answered_at is None:
            self._answered_at = time.monotonic()  # the breaker's clock starts with the first request
        if self.down_for() is not None:
            self.stats.not_sent += 1
            # the same text for every record not sent, so that the check can count them as one error
            raise RequestFailed(
                f"{self._last_error} [not sent: no endpoint answered for {DOWN_AFTER_S:.0f} s]", sent=False
            )
        self.stats.requests += 1
        tried: set[str] = set()
        last: Exception | None = None
        while (target := self._pick(tried)) is not None:
            tried.add(target.base_url)
            if isinstance(last, EndpointStalled):
                self.stats.resent_after_stall += 1
            try:
                comp = await self._complete_on(target, system, user, spec)
            except _ENDPOINT_FAILURES as exc:
                last = exc
                target.rest_until = time.monotonic() + REST_AFTER_FAILURE_S
                self._last_error = self._safe(exc)
                if isinstance(exc, openai.APIStatusError):
                    self._alive()  # a 5xx or 429 is an answer: busy or failing, not down (no breaker)
                else:
                    self._failures_since += 1  # refused or timed out: what the breaker counts
                if len(tried) < len(self._targets):
                    self.stats.failovers += 1
            except openai.APIStatusError as exc:  # the server answered (400, 401, 404, ...): alive, not retried
                self._alive()
                raise RequestFailed(self._safe(exc)) from exc
            except openai.OpenAIError as exc:
                raise RequestFailed(self._safe(exc)) from exc
            else:
                self._alive()
                return comp
        assert last is not None
        raise RequestFailed(self._safe(last)) from last

    def _alive(self) -> None:
        self._answered_at = time.monotonic()
        self._failures_since = 0

    def _safe(self, exc: BaseException) -> str:
        return safe_error(exc, (self.endpoint.api_key,))

    async def _complete_on(self, target: _Target, system: str, user: str, spec: ScorerSpec) -> Completion:
        body: dict[str, Any] = {
            "model": spec.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": spec.max_tokens,
        }
        if spec.structured_regex:
            body["structured_outputs"] = {"regex": spec.structured_regex}
        async with target.semaphore:
            target.in_flight += 1
            started = time.monotonic()
            try:
                # The client's generic POST: same retries, errors and auth as chat.completions.create, without
                # its per-request walk over the typed request body (most of its CPU cost at 300 requests/s), and
                # the reply's bytes rather than a ChatCompletion built field by field: the JSON is read here.
                call = target.client.post(target.chat_url, body=body, cast_to=bytes)
                raw = await self._wait(target, call)
            finally:
                target.in_flight -= 1
        target.answered_at = time.monotonic()
        self.stats.longest_reply_s = max(self.stats.longest_reply_s, target.answered_at - started)
        where = target.where
        self.stats.per_endpoint[where] = self.stats.per_endpoint.get(where, 0) + 1
        return _completion(raw, where)

    async def _wait(self, target: _Target, call: Any) -> bytes:
        """Await the request as long as its endpoint is alive; cancel it only when the endpoint is stalled. The request
        runs in the caller's task, not a task of its own awaited through asyncio.wait (that was about 7 us of CPU a
        request, docs/benchmarks.md): a timer at the patience starts a watcher, which probes the endpoint every
        patience interval and cancels the caller's task once it is stalled; the cancellation comes out as
        EndpointStalled."""
        loop = asyncio.get_running_loop()
        caller = asyncio.current_task()
        assert caller is not None  # called from a coroutine the event loop runs
        watch = _Watch()

        def patience_over() -> None:
            self.stats.waited_past_timeout += 1
            watch.task = loop.create_task(self._watch(target, caller, watch))

        timer = loop.call_later(self.patience_s, patience_over)
        try:
            return await call  # cancelled here (closing the connection makes vLLM abort the request) when stalled
        except asyncio.CancelledError:
            if watch.stalled and caller.uncancel() == 0:  # our cancellation alone: a stall, not the run stopping
                raise EndpointStalled(
                    message=f"Endpoint stalled: no answer to {STALL_PROBES} probes in a row while the request ran "
                    f"past {self.patience_s:g} s",
                    request=target.http.build_request("POST", f"{target.base_url}/chat/completions"),
                ) from None
            raise
        finally:
            timer.cancel()
            if watch.task is not None and not watch.task.done():
                watch.task.cancel()
                await asyncio.gather(watch.task, return_exceptions=True)

    async def _watch(self, target: _Target, caller: asyncio.Task[Any], watch: _Watch) -> None:
        """Past the patience: while the request runs, check its endpoint every patience interval; cancel the request
        (its caller's task) once the endpoint is stalled."""
        while await self._endpoint_alive(target):
            await asyncio.sleep(self.patience_s)
        watch.stalled = True
        caller.cancel()

    async def _endpoint_alive(self, target: _Target) -> bool:
        """Whether the endpoint still answers: it answered in the last patience interval, or it answers a probe of
        /v1/models (any HTTP status). One probe per interval per endpoint, whatever the number of requests waiting;
        False only after STALL_PROBES missed probes in a row."""
        async with target.probe_lock:
            now = time.monotonic()
            if now - target.answered_at < self.patience_s:
                target.missed_probes = 0
                return True
            if now - target.probed_at >= self.patience_s:
                target.probed_at = now
                self.stats.stall_probes += 1
                try:
                    await target.http.get(
                        f"{target.base_url}/models",
                        headers={"Authorization": f"Bearer {self.endpoint.api_key}"},
                        timeout=min(self.patience_s, CONNECT_TIMEOUT_S),
                    )
                except Exception:
                    target.missed_probes += 1
                else:
                    target.answered_at = time.monotonic()
                    target.missed_probes = 0
            return target.missed_probes < STALL_PROBES

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        """vLLM's /tokenize with the chat messages: the same count the server checks the context with."""
        for target in self._targets:
            if not target.can_tokenize:
                continue
            self.stats.tokenize_calls += 1
            try:
                resp = await target.http.post(
                    f"{_server_root(target.base_url)}/tokenize",
                    json={
                        "model": spec.model,
                        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                    },
                    headers={"Authorization": f"Bearer {self.endpoint.api_key}"},
                )
            except Exception:
                continue
            if resp.status_code == 404:
                target.can_tokenize = False
                continue
            if resp.status_code == 200 and isinstance(resp.json().get("count"), int):
                return int(resp.json()["count"])
        return None

    async def aclose(self) -> None:
        for target in self._targets:
            await target.client.close()
