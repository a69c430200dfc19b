"""KMeans (scikit-learn: k-means++, several seeded restarts) and the source grouping built on it."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from mira_dagster.core.embeddings import dense

if TYPE_CHECKING:
    from mira_dagster.core.embeddings import Matrix


def kmeans(x: Matrix, k: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centroids; k is capped at the number of rows."""
    from sklearn.cluster import KMeans  # loaded on first use (core/embeddings.py says why)

    k = min(k, x.shape[0])
    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit(x)
    return model.labels_, np.asarray(model.cluster_centers_)


class SourceGroup(BaseModel):
    source: str
    configured_group: str
    cluster: int
    cluster_group: str  # the configured group most of the cluster's sources belong to
    agrees: bool
    intra_cluster_cosine: float  # mean pairwise cosine between the cluster's source vectors
    cluster_sources: list[str]


def group_sources(
    vectors: dict[str, np.ndarray], configured: dict[str, str], k: int, seed: int = 0
) -> list[SourceGroup]:
    """Cluster per-source mean embeddings and compare with the configured groups."""
    names = sorted(vectors)
    from sklearn.preprocessing import normalize

    x = normalize(np.vstack([dense(vectors[n]).reshape(1, -1) for n in names]))
    labels, _ = kmeans(x, k, seed)
    out = []
    for cluster in sorted(set(labels.tolist())):
        members = [n for n, lab in zip(names, labels, strict=True) if lab == cluster]
        idx = [names.index(m) for m in members]
        sims = x[idx] @ x[idx].T
        pairs = len(idx) * (len(idx) - 1)
        intra = float((sims.sum() - np.trace(sims)) / pairs) if pairs else 1.0
        majority = Counter(configured[m] for m in members).most_common(1)[0][0]
        for m in members:
            out.append(
                SourceGroup(
                    source=m,
                    configured_group=configured[m],
                    cluster=int(cluster),
                    cluster_group=majority,
                    agrees=configured[m] == majority,
                    intra_cluster_cosine=round(intra, 4),
                    cluster_sources=members,
                )
            )
    return sorted(out, key=lambda g: g.source)


def source_vector(embeddings: Matrix) -> np.ndarray:
    """The mean of a source's record embeddings, normalised."""
    mean = np.asarray(embeddings.mean(axis=0)).reshape(1, -1)
    from sklearn.preprocessing import normalize

    return normalize(mean)[0]
