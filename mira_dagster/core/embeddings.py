"""Embedding backends: an OpenAI-compatible `/v1/embeddings` endpoint, or the offline hashed TF-IDF.

Both return L2-normalised rows, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from openai import OpenAI
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.preprocessing import normalize

Matrix = np.ndarray | sparse.csr_matrix


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> Matrix: ...


class HashedTfidfEmbedder:
    """Offline default, no model download: word uni- and bigrams hashed into 2^18 columns, TF-IDF weighted over
    the batch being embedded (so it suits clustering within one batch, not comparing across batches)."""

    name = "hashed-tfidf"

    def __init__(self, n_features: int = 2**18) -> None:
        self.vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm=None, lowercase=True
        )

    def embed(self, texts: Sequence[str]) -> sparse.csr_matrix:
        counts = self.vectorizer.transform(list(texts))
        tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
        return normalize(tfidf).tocsr()


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (vLLM serves embedding models the same way)."""

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", batch_size: int = 64) -> None:
        self.name = f"openai:{model}"
        self.model = model
        self.batch_size = batch_size
        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=3)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            resp = self.client.embeddings.create(model=self.model, input=list(texts[start : start + self.batch_size]))
            rows.extend(d.embedding for d in sorted(resp.data, key=lambda d: d.index))
        return normalize(np.asarray(rows, dtype=np.float64))


def embedder_from_env() -> Embedder:
    """MIRA_EMBED_BASE_URL, MIRA_EMBED_MODEL, MIRA_EMBED_API_KEY; the offline TF-IDF when no URL is set."""
    url = os.environ.get("MIRA_EMBED_BASE_URL")
    if not url:
        return HashedTfidfEmbedder()
    return OpenAIEmbedder(
        url, os.environ.get("MIRA_EMBED_MODEL", "embedding"), os.environ.get("MIRA_EMBED_API_KEY") or "EMPTY"
    )


def dense(matrix: Matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
