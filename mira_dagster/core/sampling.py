"""Which records the teacher labels, and which of those are held out for reliability.

Both choices hash the record_id with a seed, so they are stable across runs and sources: the same
content is sampled (and split) the same way wherever it appears, and adding records to a source does not
reshuffle the ones already chosen more than the sample size requires.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

import polars as pl

Split = Literal["distill", "heldout"]


def _key(seed: int, purpose: str, record_id: str) -> str:
    return hashlib.sha256(f"{seed}:{purpose}:{record_id}".encode()).hexdigest()


def sample_size(n: int, fraction: float, minimum: int, maximum: int | None = None) -> int:
    """max(minimum, fraction * n), capped at n and at `maximum`: the cap is a cost limit, so it wins over the
    minimum (a 50M-record source at fraction 0.5 would otherwise buy 25M teacher requests)."""
    k = min(n, max(minimum, math.ceil(fraction * n)))
    return k if maximum is None else min(k, maximum)


def teacher_sample(
    record_ids: Sequence[str],
    *,
    fraction: float,
    minimum: int,
    heldout_fraction: float,
    seed: int,
    maximum: int | None = None,
) -> dict[str, Split]:
    """Map each sampled record_id to its split; unsampled records are absent. At most `maximum` records
    (pipeline.teacher_sample_max): the smallest hashes, so raising the cap later keeps the ones already labelled."""
    unique = sorted(set(record_ids))
    k = sample_size(len(unique), fraction, minimum, maximum)
    chosen = sorted(unique, key=lambda r: _key(seed, "sample", r))[:k]
    n_heldout = math.ceil(heldout_fraction * k)
    by_split = sorted(chosen, key=lambda r: _key(seed, "split", r))
    return {r: ("heldout" if i < n_heldout else "distill") for i, r in enumerate(by_split)}


def hash_sample(df: pl.DataFrame, n: int, seed: int, purpose: str) -> pl.DataFrame:
    """A stable sample of n rows of a record table: the smallest hashes of (seed, purpose, record_id)."""
    keys = [_key(seed, purpose, r) for r in df["record_id"]]
    return df.with_columns(pl.Series("_k", keys)).sort("_k").head(n).drop("_k")
