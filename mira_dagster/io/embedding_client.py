"""An OpenAI-compatible `/v1/embeddings` endpoint as an Embedder (core/embeddings.py), or the offline stand-in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from openai import APIError, BadRequestError, OpenAI
from sklearn.preprocessing import normalize

from mira_dagster.core.embeddings import Embedder, HashedTfidfEmbedder


class EmbeddingError(RuntimeError):
    """The embeddings endpoint failed; the message names the endpoint and the model."""


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (vLLM serves embedding models the same way).

    `model=None` takes the one model the endpoint lists at /v1/models. An input longer than the model's context
    (vLLM answers 400 "maximum context length") makes the embedder resend that batch, and every later one, with
    vLLM's `truncate_prompt_tokens: -1`: each input cut at the model's maximum length, as sentence-transformers
    does. Rows come back L2-normalised in input order, whatever order the server answers in.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str = "EMPTY", batch_size: int = 64) -> None:
        self.base_url = base_url
        self.batch_size = batch_size
        self.truncate = False
        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=3)
        self._model = model

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._only_model()
        return self._model

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0))
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            rows.extend(self._batch(list(texts[start : start + self.batch_size])))
        return normalize(self._matrix(rows, len(texts)))

    def _batch(self, texts: list[str]) -> list[list[float]]:
        try:
            resp = self.client.embeddings.create(model=self.model, input=texts, **self._extra())
        except BadRequestError as exc:
            if self.truncate or "maximum context length" not in str(exc):
                raise self._error(exc) from exc
            self.truncate = True  # from now on every batch is cut at the model's maximum length
            return self._batch(texts)
        except APIError as exc:
            raise self._error(exc) from exc
        if len(resp.data) != len(texts):
            raise EmbeddingError(f"{self._where()}: {len(resp.data)} embeddings for {len(texts)} inputs")
        return [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]

    def _extra(self) -> dict[str, Any]:
        return {"extra_body": {"truncate_prompt_tokens": -1}} if self.truncate else {}

    def _matrix(self, rows: list[list[float]], n: int) -> np.ndarray:
        dims = {len(r) for r in rows}
        if len(dims) != 1 or 0 in dims:
            raise EmbeddingError(f"{self._where()}: embeddings of differing or zero dimension {sorted(dims)}")
        return np.asarray(rows, dtype=np.float64).reshape(n, dims.pop())

    def _only_model(self) -> str:
        try:
            ids = [m.id for m in self.client.models.list()]
        except APIError as exc:
            raise EmbeddingError(f"embeddings endpoint {self.base_url}: cannot list its models: {exc}") from exc
        if len(ids) != 1:
            raise EmbeddingError(
                f"embeddings endpoint {self.base_url} serves {len(ids)} models ({', '.join(ids) or 'none'}): "
                "set MIRA_EMBED_MODEL"
            )
        return ids[0]

    def _where(self) -> str:
        return f"embeddings endpoint {self.base_url} (model {self.model})"

    def _error(self, exc: APIError) -> EmbeddingError:
        return EmbeddingError(f"{self._where()}: {exc}")


def make_embedder(base_url: str | None, model: str | None = None, api_key: str | None = None) -> Embedder:
    """An OpenAI-compatible `/v1/embeddings` endpoint (model None: the endpoint's only model; key None: "EMPTY"), or
    the offline hashed TF-IDF when there is no URL. The values come from mira_dagster/settings.py (MIRA_EMBED_*)."""
    if not base_url:
        return HashedTfidfEmbedder()
    return OpenAIEmbedder(base_url, model or None, api_key or "EMPTY")
