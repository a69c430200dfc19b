"""The OpenAI-compatible chat backend (a vLLM server as in the model cards, or any hosted API).

Retries with backoff are the `openai` client's own (408/409/429/5xx, timeouts, dropped connections;
never 400). Endpoints and keys come from the environment and are never written anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from openai import AsyncOpenAI

from mira_dagster.core.scoring import Completion, Role, ScorerSpec

DEFAULT_TEACHER_MODEL = "moonshotai/Kimi-K2.6"


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str
    model: str

    def redacted_url(self) -> str:
        return redact_url(self.base_url)


def redact_url(url: str) -> str:
    """Drop user:password@ and the query string, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def endpoint_from_env(role: Role, group: str, default_model: str) -> Endpoint | None:
    """The endpoint for a role and group, or None to use the offline stand-in.

    Student: MIRA_STUDENT_BASE_URL_<GROUP> (one server per group) or MIRA_STUDENT_BASE_URL,
    key MIRA_STUDENT_API_KEY, model = the group's student_model (MIRA_STUDENT_MODEL_<GROUP> overrides).
    Teacher: MIRA_TEACHER_BASE_URL, MIRA_TEACHER_MODEL, MIRA_TEACHER_API_KEY.
    """
    prefix = f"MIRA_{role.upper()}"
    suffix = group.upper()
    base_url = os.environ.get(f"{prefix}_BASE_URL_{suffix}") or os.environ.get(f"{prefix}_BASE_URL")
    if not base_url:
        return None
    model = os.environ.get(f"{prefix}_MODEL_{suffix}") or os.environ.get(f"{prefix}_MODEL") or default_model
    return Endpoint(base_url=base_url, api_key=os.environ.get(f"{prefix}_API_KEY") or "EMPTY", model=model)


class OpenAIBackend:
    def __init__(self, endpoint: Endpoint, *, timeout_s: float = 120.0, max_retries: int = 3) -> None:
        self.endpoint = endpoint
        self._client = AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            timeout=timeout_s,
            max_retries=max_retries,
        )

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        resp = await self._client.chat.completions.create(
            model=spec.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
        )
        choice = resp.choices[0]
        usage = resp.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=getattr(details, "cached_tokens", None) if details else None,
        )

    async def aclose(self) -> None:
        await self._client.close()
