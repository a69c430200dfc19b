"""Teacher–student agreement per cell (source or pool × slot): n, MAE and Spearman's ρ, with bootstrap intervals.

The one home of these statistics. Every estimate, the point estimate and each bootstrap resample alike, is
`_statistics` of column sums of the same per-record terms (`_Unit.terms`): the point estimate sums every record
once, a resample sums the records it drew. So the interval is always around exactly the statistic reported.

Spearman's ρ is the Pearson correlation of average ranks (ties averaged), which is exactly scipy.stats.spearmanr.
The records are ranked once on the full held-out sample and the resamples draw (teacher rank, student rank) pairs:
ranks are not recomputed inside each resample, which keeps this a few matrix products instead of B sorts per cell,
at the cost of a slightly narrower interval for small n.

Vectorised: per source, one matrix of resampling weights (B × n records: how often each record is drawn in each
resample) multiplies one matrix of per-record terms (n × 7 terms × 15 slots), so every slot of the source is
resampled together. Pool intervals are a stratified bootstrap over the same draws: a pool's resample is the union of
its sources' resamples (each source keeps its size), with the records ranked within the pool. So the pooled estimate
costs one more set of columns in the same matrix product, not a second round of draws.

The held-out pairs are the teacher's sample (a few thousand per source at most), so this runs in memory; the corpus
only enters through sql/dim_reliability.sql, which lays the estimates out over every (source, slot) cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mira_dagster.core.rubric import N_SLOTS

_CHUNK = 125  # resamples per weight matrix (125 × 10,000 records = 10 MB)
_N_TERMS = 7
STAT_COLUMNS = ("n", "mae", "rho", "mae_lo", "mae_hi", "rho_lo", "rho_hi")


@dataclass
class _Unit:
    """Held-out pairs of one source or group as (records × 15) arrays, NaN where a pair is missing."""

    teacher: np.ndarray
    student: np.ndarray

    def terms(self) -> np.ndarray:
        """Per record: [valid, |t − s|, rank t, rank s, rank t², rank s², rank t · rank s] per slot (n × 7·15)."""
        t, s = self.teacher, self.student
        valid = ~(np.isnan(t) | np.isnan(s))
        rt = np.where(valid, _ranks(np.where(valid, t, np.nan)), 0.0)
        rs = np.where(valid, _ranks(np.where(valid, s, np.nan)), 0.0)
        err = np.where(valid, np.abs(np.nan_to_num(t) - np.nan_to_num(s)), 0.0)
        return np.concatenate([valid.astype(float), err, rt, rs, rt * rt, rs * rs, rt * rs], axis=1)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks per column, NaNs left out (ties averaged, as in Spearman's ρ)."""
    from scipy.stats import rankdata  # loaded on first use (core/embeddings.py says why)

    return rankdata(x, axis=0, nan_policy="omit")


def resample_sums(
    terms: np.ndarray, n_boot: int, rng: np.random.Generator, blocks: np.ndarray | None = None
) -> np.ndarray:
    """(B × columns): each column of `terms` summed over each of B resamples (with replacement) of its rows.

    `blocks` labels the columns (default: one block). Within a block a row's values are one of few distinct
    rows (a slot's terms depend only on the record's (teacher, student) scores: at most 11 × 11 pairs), so a
    resample's sums are its count of each distinct row times that row: counts come from one sparse product
    (draws × one-hot rows, B × 15 n per source instead of B × n × 210 for the dense product), then a small
    dense one per block. Counts and terms are integers and half-integers, so the sums are exact either way."""
    from scipy import sparse  # loaded on first use (core/embeddings.py says why)

    n = terms.shape[0]
    labels = np.zeros(terms.shape[1], dtype=int) if blocks is None else np.asarray(blocks)
    parts, codes, offset = [], [], 0
    for label in np.unique(labels):
        cols = np.flatnonzero(labels == label)
        first, code = _distinct_rows(terms[:, cols])
        distinct = terms[first][:, cols]
        parts.append((cols, distinct, offset))
        codes.append(code + offset)
        offset += distinct.shape[0]
    # (distinct rows × records): entry 1 where the record has that distinct row in that block
    onehot = sparse.csr_matrix(
        (np.ones(n * len(codes)), (np.concatenate(codes), np.tile(np.arange(n), len(codes)))), shape=(offset, n)
    )
    sums = np.empty((n_boot, terms.shape[1]))
    for start in range(0, n_boot, _CHUNK):
        # weights of this chunk's resamples, built a chunk at a time so they stay small;
        # the draws are the same as drawing all B × n at once
        b = min(_CHUNK, n_boot - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        w = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)
        counts = (onehot @ w.T).T  # (b × distinct rows): how often each resample drew each distinct row
        for cols, distinct, at in parts:
            sums[start : start + b, cols] = counts[:, at : at + distinct.shape[0]] @ distinct
    return sums


def _distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first row of each distinct row of x, and each row's distinct-row number: one lexicographic sort and a
    comparison of neighbours (np.unique(axis=0) sorts whole rows as opaque bytes, many times slower)."""
    order = np.lexsort(x.T[::-1])
    new_row = np.ones(x.shape[0], dtype=bool)
    new_row[1:] = np.any(x[order[1:]] != x[order[:-1]], axis=1)
    code = np.empty(x.shape[0], dtype=np.int64)
    code[order] = np.cumsum(new_row) - 1
    return order[new_row], code


def _statistics(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, MAE, ρ) per row and slot from rows of column sums of `_Unit.terms` (R × 7·15 -> three R × 15): the one
    formula of every estimate, the point estimate (one row: every record once) and each resample alike. ρ is NaN
    where either side is constant (it ranks nothing), MAE where there is no pair. The sums are of integers and
    half-integers, exact in float64, so a constant side has a variance of exactly 0."""
    sv, se, st, ss, stt, sss, sts = np.split(sums, _N_TERMS, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = se / sv
        mt, ms = st / sv, ss / sv
        cov = sts / sv - mt * ms
        var_t, var_s = stt / sv - mt * mt, sss / sv - ms * ms
        rho = np.where((var_t > 1e-12) & (var_s > 1e-12), cov / np.sqrt(var_t * var_s), np.nan)
    return sv, mae, rho


def point_estimates(terms: np.ndarray) -> dict[str, np.ndarray]:
    """n, MAE and ρ per slot over every record of `terms` (n × 7·15)."""
    n, mae, rho = _statistics(terms.sum(axis=0, keepdims=True))
    return {"n": n[0], "mae": mae[0], "rho": rho[0]}


def intervals_from_sums(sums: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """Percentile intervals of MAE and ρ per slot from (B × 7·15) resampled sums of `_Unit.terms`."""
    _, mae, rho = _statistics(sums)
    alpha = 1 - level
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {
        "mae_lo": _nanpercentile(mae, lo),
        "mae_hi": _nanpercentile(mae, hi),
        "rho_lo": _nanpercentile(rho, lo),
        "rho_hi": _nanpercentile(rho, hi),
    }


def _nanpercentile(x: np.ndarray, q: float) -> np.ndarray:
    out = np.full(x.shape[1], np.nan)
    for j in range(x.shape[1]):
        col = x[:, j][~np.isnan(x[:, j])]
        if col.size >= max(10, x.shape[0] // 2):  # a statistic undefined in most resamples has no interval
            out[j] = np.percentile(col, q)
    return out


def _unit(part: pl.DataFrame) -> tuple[_Unit, np.ndarray]:
    """The unit's arrays, and each record's source (rows in record_id order within source)."""
    keys = part.select("source", "record_id").unique(maintain_order=True)
    index = keys.with_row_index("i")
    rows = part.join(index, on=["source", "record_id"], how="left")["i"].to_numpy()
    t = np.full((keys.height, N_SLOTS), np.nan)
    s = np.full((keys.height, N_SLOTS), np.nan)
    slots = part["slot"].to_numpy() - 1
    t[rows, slots] = part["teacher"].to_numpy()
    s[rows, slots] = part["student"].to_numpy()
    return _Unit(t, s), keys["source"].to_numpy()


def agreement(
    pairs: pl.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """n, MAE, ρ and their bootstrap intervals per (source, slot) and per (pool, slot) from held-out pairs [source,
    pool, record_id, slot, teacher, student], `pool` being the sources that share a scorer (the group by default).
    Pools and their sources are visited in sorted order and each source's draws come from one seeded generator, so
    the result depends only on the seed. A source with a single record has no interval of its own (it resamples to
    itself) and a pool none unless one of its sources has."""
    rng = np.random.default_rng(seed)
    src_rows, pool_rows = [], []
    ordered = pairs.sort("pool", "source", "record_id", "slot")
    for (pool,), part in ordered.group_by("pool", maintain_order=True):
        unit, record_source = _unit(part)
        pool_terms = unit.terms()
        pool_sums = np.zeros((n_boot, pool_terms.shape[1]))
        drawn = False
        for source in dict.fromkeys(record_source):
            at = record_source == source
            source_terms = _Unit(unit.teacher[at], unit.student[at]).terms()
            ci: dict[str, np.ndarray] = {}
            if at.sum() < 2:  # a constant in the pool's resamples
                pool_sums += pool_terms[at].sum(axis=0)
            else:
                both = np.concatenate([source_terms, pool_terms[at]], axis=1)
                # column t·15 + j of either half is term t of slot j: one block per slot
                sums = resample_sums(both, n_boot, rng, np.arange(both.shape[1]) % N_SLOTS)
                ci = intervals_from_sums(sums[:, : source_terms.shape[1]], level)
                pool_sums += sums[:, source_terms.shape[1] :]
                drawn = True
            src_rows += _rows("source", source, {**point_estimates(source_terms), **ci})
        pool_ci = intervals_from_sums(pool_sums, level) if drawn else {}
        pool_rows += _rows("pool", pool, {**point_estimates(pool_terms), **pool_ci})
    return _frame("source", src_rows), _frame("pool", pool_rows)


def _rows(unit: str, name: str, stats: dict[str, np.ndarray]) -> list[dict]:
    """One row per slot; a statistic missing from `stats` (no interval) is None."""
    return [
        {unit: name, "slot": j + 1, **{k: _f(stats[k][j]) if k in stats else None for k in STAT_COLUMNS}}
        for j in range(N_SLOTS)
    ]


def _frame(unit: str, rows: list[dict]) -> pl.DataFrame:
    schema = {unit: pl.String, "slot": pl.Int32, **{c: pl.Float64 for c in STAT_COLUMNS}}
    df = pl.DataFrame(rows, schema=schema)
    # a slot without any pair is no estimate (n = 0 is what the cell layout gives it)
    return df.filter(pl.col("n") > 0).with_columns(pl.col("n").cast(pl.Int64))


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
