"""Benchmark of stages 3 and 4 at corpus scale: reliability + mask + aggregation + budget selection.

    python bench/selection.py [--records 1000000] [--heldout 20000] [--sources 10]

Builds a synthetic score table (records × 15 dimensions over `sources` sources in 3 groups, a held-out teacher
split), then runs, measured in the same run:
- our path: DuckDB over the Parquet tables with the SQL in sql/ (heldout pairs, reliability, mask, aggregates,
  the group variant's budget selection), plus the vectorised bootstrap intervals;
- a straightforward Python implementation of the same computation (row loops, per-group Python), given the
  same bootstrap intervals, so that its mask decisions can be compared exactly.
It checks that both give the same MAE and rho per cell, the same mask, the same aggregates and the same kept
records, and prints the times, their ratio and the peak memory. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mira_dagster.core.reliability import reliability_table  # noqa: E402
from mira_dagster.core.store import Store  # noqa: E402
from mira_dagster.core.tables import SLOT_COLUMNS  # noqa: E402

MAX_MAE, MIN_RHO, MIN_N, SHARE = 1.5, 0.3, 8, 0.5
NOISY = {4, 9, 14}


def make_tables(n: int, n_heldout: int, n_sources: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    source_idx = rng.integers(0, n_sources, n)
    sources = np.array([f"src{i:02d}" for i in range(n_sources)])[source_idx]
    groups = np.array(["g0", "g1", "g2"])[source_idx % 3]
    latent = rng.normal(5.5, 1.5, n)
    teacher = np.clip(np.round(latent[:, None] + rng.normal(0, 1.0, (n, 15))), 0, 10)
    noise = np.where(np.isin(np.arange(1, 16), list(NOISY)), 3.0, 0.6)
    student = np.clip(np.round(teacher + rng.normal(0, 1, (n, 15)) * noise), 0, 10)
    student[rng.random((n, 15)) < 0.002] = np.nan  # a few unparsed slots
    base = {
        "record_id": [f"r{i:07d}" for i in range(n)],
        "source": sources,
        "group_id": groups,
        "n_tokens": rng.integers(50, 4000, n),
        "status": "ok",
    }
    students = pl.DataFrame({**base, **{c: student[:, i] for i, c in enumerate(SLOT_COLUMNS)}}).with_columns(
        [pl.col(c).fill_nan(None) for c in SLOT_COLUMNS]
    )
    held = rng.choice(n, n_heldout, replace=False)
    teachers = pl.DataFrame(
        {
            "record_id": [base["record_id"][i] for i in held],
            "source": sources[held],
            "group_id": groups[held],
            "split": "heldout",
            **{c: teacher[held, i] for i, c in enumerate(SLOT_COLUMNS)},
        }
    )
    return students, teachers


def dims() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "group_id": [g for g in ("g0", "g1", "g2") for _ in range(15)],
            "slot": list(range(1, 16)) * 3,
            "dim_name": [f"d{i}" for i in range(1, 16)] * 3,
        },
        schema={"group_id": pl.String, "slot": pl.Int32, "dim_name": pl.String},
    )


# -- our path ------------------------------------------------------------------------------------------
def ours(store: Store) -> dict[str, pl.DataFrame]:
    rel = reliability_table(store, dims(), n_boot=1000, seed=0)
    store.write("dim_reliability", rel)
    mask = store.query(
        "reliability_mask", max_mae=MAX_MAE, min_rho=MIN_RHO, min_n=MIN_N, rule="bench", mask_version="b"
    )
    store.write("reliability_mask", mask)
    agg = store.query("aggregated_scores")
    store.write("aggregated_scores", agg)
    kept = store.query("select_variant", variant="group", share=SHARE, min_share=0.0, max_share=1.0, seed=0)
    return {"rel": rel, "mask": mask, "agg": agg, "kept": kept}


# -- the straightforward baseline ----------------------------------------------------------------------
def avg_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def cell_stats(pairs: list[tuple[float, float]]) -> tuple[int, float | None, float | None]:
    if not pairs:
        return 0, None, None
    t, s = [p[0] for p in pairs], [p[1] for p in pairs]
    mae = sum(abs(a - b) for a, b in pairs) / len(pairs)
    return len(pairs), mae, pearson(avg_ranks(t), avg_ranks(s))


def baseline(students: pl.DataFrame, teachers: pl.DataFrame, ci: pl.DataFrame) -> dict:
    srows = students.to_dicts()
    by_key = {(r["source"], r["record_id"]): r for r in srows}
    cells: dict[tuple[str, int], list] = defaultdict(list)
    groups: dict[tuple[str, int], list] = defaultdict(list)
    group_of: dict[str, str] = {}
    for t in teachers.to_dicts():
        s = by_key.get((t["source"], t["record_id"]))
        if s is None:
            continue
        for slot in range(1, 16):
            a, b = t[f"a{slot}"], s[f"a{slot}"]
            if a is not None and b is not None:
                cells[(t["source"], slot)].append((a, b))
                groups[(t["group_id"], slot)].append((a, b))
    for r in srows:
        group_of[r["source"]] = r["group_id"]
    intervals = {(r["source"], r["slot"]): r for r in ci.to_dicts()}
    rel, mask = {}, {}
    for source, group in group_of.items():
        for slot in range(1, 16):
            n, mae, rho = cell_stats(cells[(source, slot)])
            gn, gmae, grho = cell_stats(groups[(group, slot)])
            rel[(source, slot)] = (n, mae, rho)
            iv = intervals[(source, slot)]
            decided = (
                iv["mae_lo"] is not None
                and iv["rho_lo"] is not None
                and (
                    iv["mae_lo"] > MAX_MAE
                    or iv["rho_hi"] < MIN_RHO
                    or (iv["mae_hi"] <= MAX_MAE and iv["rho_lo"] >= MIN_RHO)
                )
            )
            enough = n >= MIN_N
            if enough and decided:
                used = (mae, rho)
            elif gn >= MIN_N:
                used = (gmae, grho)
            elif enough:
                used = (mae, rho)
            else:
                mask[(source, slot)] = False
                continue
            mask[(source, slot)] = used[0] > MAX_MAE or used[1] is None or used[1] < MIN_RHO
    # z-normalise each slot within its group over unmasked scores, then average per record
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in srows:
        for slot in range(1, 16):
            v = r[f"a{slot}"]
            if v is not None and not mask[(r["source"], slot)]:
                a = acc[(r["group_id"], slot)]
                a[0] += 1
                a[1] += v
                a[2] += v * v
    stats = {}
    for key, (n, s1, s2) in acc.items():
        mu = s1 / n
        var = max(s2 / n - mu * mu, 0.0)
        stats[key] = (mu, math.sqrt(var))
    agg = {}
    for r in srows:
        zs = []
        for slot in range(1, 16):
            v = r[f"a{slot}"]
            if v is not None and not mask[(r["source"], slot)]:
                mu, sd = stats[(r["group_id"], slot)]
                zs.append((v - mu) / sd if sd > 0 else 0.0)
        agg[(r["source"], r["record_id"])] = sum(zs) / len(zs) if zs else None
    # per group: best first, cut closest to SHARE of the group's tokens
    kept = set()
    by_group: dict[str, list] = defaultdict(list)
    for r in srows:
        by_group[r["group_id"]].append(r)
    for rows in by_group.values():
        budget = SHARE * sum(r["n_tokens"] for r in rows)
        scored = [r for r in rows if agg[(r["source"], r["record_id"])] is not None]
        scored.sort(key=lambda r: (-agg[(r["source"], r["record_id"])], r["record_id"]))
        cum = 0
        for r in scored:
            if cum + r["n_tokens"] <= budget or (cum < budget and cum + r["n_tokens"] - budget < budget - cum):
                cum += r["n_tokens"]
                kept.add(r["record_id"])
            else:
                break
    return {"rel": rel, "mask": mask, "agg": agg, "kept": kept}


def same(ours_out: dict, base: dict) -> dict[str, bool]:
    rel = {(r["source"], r["slot"]): r for r in ours_out["rel"].to_dicts()}
    rel_ok = all(
        rel[k]["n"] == n and _close(rel[k]["mae"], mae) and _close(rel[k]["rho"], rho)
        for k, (n, mae, rho) in base["rel"].items()
    )
    mask_ok = {(r["source"], r["slot"]): r["masked"] for r in ours_out["mask"].to_dicts()} == base["mask"]
    agg = {(r["source"], r["record_id"]): r["aggregate"] for r in ours_out["agg"].to_dicts()}
    agg_ok = agg.keys() == base["agg"].keys() and all(_close(agg[k], v, 1e-6) for k, v in base["agg"].items())
    kept_ok = set(ours_out["kept"]["record_id"].to_list()) == base["kept"]
    return {"reliability": rel_ok, "mask": mask_ok, "aggregates": agg_ok, "selection": kept_ok}


def _close(a: float | None, b: float | None, tol: float = 1e-9) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol * max(1, abs(b)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--heldout", type=int, default=20_000)
    ap.add_argument("--sources", type=int, default=10)
    args = ap.parse_args()
    students, teachers = make_tables(args.records, args.heldout, args.sources)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        for (source,), part in students.group_by("source"):
            store.write("student_scores", part, source)
        store.write("teacher_labels", teachers)
        t0 = time.perf_counter()
        out = ours(store)
        ours_s = time.perf_counter() - t0
        peak_ours_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ci = out["rel"].select("source", "slot", "mae_lo", "mae_hi", "rho_lo", "rho_hi")
        t0 = time.perf_counter()
        base = baseline(students, teachers, ci)
        base_s = time.perf_counter() - t0
        checks = same(out, base)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "records": args.records,
        "heldout": args.heldout,
        "sources": args.sources,
        "ours_s": round(ours_s, 2),
        "baseline_s": round(base_s, 2),
        "speedup": round(base_s / ours_s, 1),
        "identical": checks,
        "masked_cells": int(out["mask"]["masked"].sum()),
        "kept_records": out["kept"].height,
        "peak_rss_mb_after_ours": round(peak_ours_mb),
        "peak_rss_mb_total": round(peak_mb),
    }
    print(f"our path: {ours_s:.2f} s; straightforward Python: {base_s:.2f} s; {base_s / ours_s:.1f}x; same: {checks}")
    print(json.dumps(result))
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
