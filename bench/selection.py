"""Benchmark of stages 3 and 4 at corpus scale: reliability + mask + aggregation + budget selection.

    python bench/selection.py [--records 1000000] [--heldout 20000] [--sources 10]

Builds a synthetic score table (records × 15 dimensions over `sources` sources in 3 groups, a held-out teacher
split), then runs, measured in the same run:
- our path: what the assets run, DuckDB over the Parquet tables with the SQL in sql/ (heldout pairs,
  reliability, mask, aggregates at three scopes, the group variant's budget selection), plus the bootstrap
  intervals of core/reliability.py (one weight-matrix product per source for all 15 slots and the group);
- a straightforward Python implementation of the same computation: row loops over dicts for the statistics,
  aggregates and selection, and a bootstrap done cell by cell (per source × slot, vectorised over the
  resamples by fancy indexing) with the same seeded draws, so that its intervals and mask decisions can be
  compared exactly. Its bootstrap time is reported on its own too.
Our path is timed OUR_RUNS times and the median is reported with every run; the baseline (about a minute) once.
It checks that both give the same n, MAE and rho per cell, the same intervals, the same mask, the same
aggregates at all three scopes and the same kept records, and prints the times, their ratio and the peak
memory. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
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
N_BOOT = 1000
OUR_RUNS = 3
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


def dims(store: Store) -> pl.DataFrame:
    """Every source's 15 slots, pooled over its group (the default scorer_scope: one scorer per group)."""
    pools = store.query_sql("SELECT DISTINCT source, group_id AS pool FROM student_scores ORDER BY source")
    slots = pl.DataFrame(
        {"slot": list(range(1, 16)), "dim_name": [f"d{i}" for i in range(1, 16)]},
        schema={"slot": pl.Int32, "dim_name": pl.String},
    )
    return pools.join(slots, how="cross")


# -- our path ------------------------------------------------------------------------------------------
def ours(store: Store) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    steps, t0 = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        steps[name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()

    rel = reliability_table(store, dims(store), n_boot=N_BOOT, seed=0)
    store.write("dim_reliability", rel)
    lap("reliability")
    mask = store.query(
        "reliability_mask", max_mae=MAX_MAE, min_rho=MIN_RHO, min_n=MIN_N, rule="bench", mask_version="b"
    )
    store.write("reliability_mask", mask)
    lap("mask")
    agg = store.query("aggregated_scores", normalise="group")
    store.write("aggregated_scores", agg)
    lap("aggregates")
    kept = store.query(
        "select_variant", variant="scores", label="bench", share=SHARE, min_share=0.0, max_share=1.0, seed=0
    )
    lap("selection")
    return {"rel": rel, "mask": mask, "agg": agg, "kept": kept}, steps


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


def baseline_intervals(pairs: dict[tuple[str, str], dict[int, tuple[float, float]]], group_of: dict[str, str]) -> tuple:
    """Bootstrap intervals per (source, slot) and per (group, slot), cell by cell: for each cell, the B
    resamples' statistics by fancy indexing (vectorised over resamples, one cell at a time). The draws are
    the same as ours (one seeded generator, groups then sources in sorted order, records in id order), and a
    group's resample is the union of its sources' resamples, so both must agree to rounding."""
    rng = np.random.default_rng(0)
    records: dict[str, list[str]] = defaultdict(list)
    for source, rid in sorted(pairs):
        records[source].append(rid)
    src_ci, grp_ci = {}, {}
    for group in sorted(set(group_of.values())):
        sources = sorted(s for s in records if group_of[s] == group)
        group_ranks = {}
        for slot in range(1, 16):  # ranks within the group, over the pairs the slot has
            keys = [(s, r) for s in sources for r in records[s] if slot in pairs[(s, r)]]
            rt = avg_ranks([pairs[k][slot][0] for k in keys])
            rs = avg_ranks([pairs[k][slot][1] for k in keys])
            group_ranks[slot] = {k: (a, b) for k, a, b in zip(keys, rt, rs, strict=True)}
        acc = {slot: np.zeros((7, N_BOOT)) for slot in range(1, 16)}
        drawn = False
        for source in sources:
            rids = records[source]
            n = len(rids)
            draws = rng.integers(0, n, size=(N_BOOT, n)) if n >= 2 else np.zeros((N_BOOT, n), dtype=int)
            for slot in range(1, 16):
                have = [slot in pairs[(source, r)] for r in rids]
                t = [pairs[(source, r)][slot][0] for r, h in zip(rids, have, strict=True) if h]
                s = [pairs[(source, r)][slot][1] for r, h in zip(rids, have, strict=True) if h]
                valid = np.array(have, dtype=float)
                err, rt, rs, grt, grs = (np.zeros(n) for _ in range(5))
                at = np.flatnonzero(valid)
                err[at] = [abs(a - b) for a, b in zip(t, s, strict=True)]
                rt[at], rs[at] = avg_ranks(t), avg_ranks(s)
                g = [group_ranks[slot][(source, r)] for r, h in zip(rids, have, strict=True) if h]
                grt[at], grs[at] = [x[0] for x in g], [x[1] for x in g]
                if n >= 2:
                    src_ci[(source, slot)] = cell_interval(*(x[draws].sum(axis=1) for x in _terms(valid, err, rt, rs)))
                    acc[slot] += np.stack([x[draws].sum(axis=1) for x in _terms(valid, err, grt, grs)])
                    drawn = True
                else:
                    acc[slot] += np.stack([x.sum() for x in _terms(valid, err, grt, grs)])[:, None]
        if drawn:
            for slot in range(1, 16):
                grp_ci[(group, slot)] = cell_interval(*acc[slot])
    return src_ci, grp_ci


def _terms(valid: np.ndarray, err: np.ndarray, rt: np.ndarray, rs: np.ndarray) -> list[np.ndarray]:
    return [valid, err, rt, rs, rt * rt, rs * rs, rt * rs]


def cell_interval(sv, se, st, ss, stt, sss, sts) -> tuple:  # noqa: ANN001
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = se / sv
        mt, ms = st / sv, ss / sv
        cov = sts / sv - mt * ms
        var_t, var_s = stt / sv - mt * mt, sss / sv - ms * ms
        rho = np.where((var_t > 1e-12) & (var_s > 1e-12), cov / np.sqrt(var_t * var_s), np.nan)

    def pct(x: np.ndarray, q: float) -> float | None:
        x = x[~np.isnan(x)]
        return float(np.percentile(x, q)) if x.size >= max(10, N_BOOT // 2) else None

    return pct(mae, 2.5), pct(mae, 97.5), pct(rho, 2.5), pct(rho, 97.5)


def baseline(students: pl.DataFrame, teachers: pl.DataFrame) -> dict:
    srows = students.to_dicts()
    by_key = {(r["source"], r["record_id"]): r for r in srows}
    cells: dict[tuple[str, int], list] = defaultdict(list)
    groups: dict[tuple[str, int], list] = defaultdict(list)
    pairs: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
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
                pairs.setdefault((t["source"], t["record_id"]), {})[slot] = (a, b)
    for r in srows:
        group_of[r["source"]] = r["group_id"]
    t0 = time.perf_counter()
    src_ci, grp_ci = baseline_intervals(pairs, group_of)
    bootstrap_s = time.perf_counter() - t0
    rel, mask = {}, {}
    for source, group in group_of.items():
        for slot in range(1, 16):
            n, mae, rho = cell_stats(cells[(source, slot)])
            gn, gmae, grho = cell_stats(groups[(group, slot)])
            rel[(source, slot)] = (n, mae, rho)
            mae_lo, mae_hi, rho_lo, rho_hi = src_ci.get((source, slot), (None,) * 4)
            decided = (
                mae_lo is not None
                and rho_lo is not None
                and (mae_lo > MAX_MAE or rho_hi < MIN_RHO or (mae_hi <= MAX_MAE and rho_lo >= MIN_RHO))
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
    # z-normalise each slot over unmasked scores at three scopes (all sources, the group, the source), then
    # average per record
    scopes = {"global": lambda r: "*", "group": lambda r: r["group_id"], "source": lambda r: r["source"]}
    acc: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in srows:
        for slot in range(1, 16):
            v = r[f"a{slot}"]
            if v is not None and not mask[(r["source"], slot)]:
                for scope, unit_of in scopes.items():
                    a = acc[(scope, unit_of(r), slot)]
                    a[0] += 1
                    a[1] += v
                    a[2] += v * v
    stats = {}
    for key, (n, s1, s2) in acc.items():
        mu = s1 / n
        var = max(s2 / n - mu * mu, 0.0)
        stats[key] = (mu, math.sqrt(var))
    agg: dict[str, dict] = {scope: {} for scope in scopes}
    for r in srows:
        for scope, unit_of in scopes.items():
            zs = []
            for slot in range(1, 16):
                v = r[f"a{slot}"]
                if v is not None and not mask[(r["source"], slot)]:
                    mu, sd = stats[(scope, unit_of(r), slot)]
                    zs.append((v - mu) / sd if sd > 0 else 0.0)
            agg[scope][(r["source"], r["record_id"])] = sum(zs) / len(zs) if zs else None
    # per source (per-source retention), by the group-normalised aggregate: best first, cut closest to SHARE of
    # the source's tokens
    kept = set()
    by_source: dict[str, list] = defaultdict(list)
    for r in srows:
        by_source[r["source"]].append(r)
    group_agg = agg["group"]
    for rows in by_source.values():
        budget = SHARE * sum(r["n_tokens"] for r in rows)
        scored = [r for r in rows if group_agg[(r["source"], r["record_id"])] is not None]
        scored.sort(key=lambda r: (-group_agg[(r["source"], r["record_id"])], r["record_id"]))
        cum = 0
        for r in scored:
            if cum + r["n_tokens"] <= budget or (cum < budget and cum + r["n_tokens"] - budget < budget - cum):
                cum += r["n_tokens"]
                kept.add(r["record_id"])
            else:
                break
    return {
        "rel": rel,
        "ci": src_ci,
        "group_ci": grp_ci,
        "mask": mask,
        "agg": agg,
        "kept": kept,
        "bootstrap_s": bootstrap_s,
    }


def same(ours_out: dict, base: dict) -> dict[str, bool]:
    rel = {(r["source"], r["slot"]): r for r in ours_out["rel"].to_dicts()}
    rel_ok = all(
        rel[k]["n"] == n and _close(rel[k]["mae"], mae) and _close(rel[k]["rho"], rho)
        for k, (n, mae, rho) in base["rel"].items()
    )
    cols = ("mae_lo", "mae_hi", "rho_lo", "rho_hi")
    group_rows = {(r["group_id"], r["slot"]): r for r in rel.values()}
    ci_ok = all(
        all(_close(rel[k][c], v) for c, v in zip(cols, iv, strict=True)) for k, iv in base["ci"].items()
    ) and all(
        all(_close(group_rows[k][f"group_{c}"], v) for c, v in zip(cols, iv, strict=True))
        for k, iv in base["group_ci"].items()
    )
    mask_ok = {(r["source"], r["slot"]): r["masked"] for r in ours_out["mask"].to_dicts()} == base["mask"]
    rows = ours_out["agg"].to_dicts()
    agg_ok = all(
        {(r["source"], r["record_id"]) for r in rows} == base["agg"][scope].keys()
        and all(_close(r[f"aggregate_{scope}"], base["agg"][scope][(r["source"], r["record_id"])], 1e-6) for r in rows)
        for scope in ("global", "group", "source")
    )
    kept_ok = set(ours_out["kept"]["record_id"].to_list()) == base["kept"]
    return {"reliability": rel_ok, "intervals": ci_ok, "mask": mask_ok, "aggregates": agg_ok, "selection": kept_ok}


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
        runs = []
        for _ in range(OUR_RUNS):  # ours takes seconds, so it is timed a few times and the median reported
            t0 = time.perf_counter()
            out, steps = ours(store)
            runs.append(time.perf_counter() - t0)
        ours_s = statistics.median(runs)
        peak_ours_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        base = baseline(students, teachers)
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
        "ours_runs_s": [round(r, 2) for r in runs],
        "ours_steps_s_last_run": steps,
        "baseline_bootstrap_s": round(base["bootstrap_s"], 2),
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
