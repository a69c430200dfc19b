"""Embeddings: the Embedder protocol and the offline hashed TF-IDF (the endpoint client is io/embedding_client.py).

Every embedder returns L2-normalised rows, so a dot product is a cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # scikit-learn and scipy load on first use: every Dagster run process imports this module
    from scipy import sparse

    Matrix = np.ndarray | sparse.csr_matrix


class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> Matrix: ...


class HashedTfidfEmbedder:
    """Offline default, no model download: word uni- and bigrams hashed into 2^18 columns, TF-IDF weighted over
    the batch being embedded (so it suits clustering within one batch, not comparing across batches)."""

    name = "hashed-tfidf"

    def __init__(self, n_features: int = 2**18) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm=None, lowercase=True
        )

    def embed(self, texts: Sequence[str]) -> sparse.csr_matrix:
        from sklearn.feature_extraction.text import TfidfTransformer
        from sklearn.preprocessing import normalize

        counts = self.vectorizer.transform(list(texts))
        tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
        return normalize(tfidf).tocsr()


def dense(matrix: Matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)  # a scipy sparse matrix
