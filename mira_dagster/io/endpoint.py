"""Where a scorer is served, without the HTTP client: the registry, the settings and the cost plan name endpoints in
every process, the client (io/llm_client.py, openai and aiohttp) loads only where requests are sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

DEFAULT_TEACHER_MODEL = "moonshotai/Kimi-K2.6"


@dataclass(frozen=True)
class Endpoint:
    """Where a scorer is served: one or several base URLs of the same model, its key ("EMPTY" for vLLM without one;
    left out of the repr) and the model name sent with every request."""

    base_urls: tuple[str, ...]
    api_key: str = field(repr=False)
    model: str

    def redacted(self) -> str:
        return ", ".join(redact_url(u) for u in self.base_urls)


def redact_url(url: str) -> str:
    """Drop user:password@ and the query string, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
