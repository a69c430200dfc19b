"""Stages 3 and 4 in DuckDB on small hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from scipy.stats import spearmanr

from mira_dagster.core.reliability import agreement
from mira_dagster.core.tables import SLOT_COLUMNS
from mira_dagster.defs.reliability import reliability_table
from mira_dagster.io.store import Store


def dims(sources: list[str], pool: str = "g") -> pl.DataFrame:
    """The slots of every source's scorer rubric, all sources sharing one scorer (pool)."""
    return pl.DataFrame(
        {
            "source": [src for src in sources for _ in range(15)],
            "pool": pool,
            "slot": list(range(1, 16)) * len(sources),
            "dim_name": [f"d{i}" for i in range(1, 16)] * len(sources),
        },
        schema={"source": pl.String, "pool": pl.String, "slot": pl.Int32, "dim_name": pl.String},
    )


DIMS = dims(["s1", "a", "b"])


def scores(
    source: str, ids: list[str], slots: dict[int, list[float | None]], tokens: list[int] | None = None, **extra: list
) -> pl.DataFrame:
    n = len(ids)
    cols = {c: [None] * n for c in SLOT_COLUMNS}
    for slot, values in slots.items():
        cols[f"a{slot}"] = values
    return pl.DataFrame(
        {
            "source": [source] * n,
            "group_id": ["g"] * n,
            "record_id": ids,
            "n_tokens": tokens or [10] * n,
            "status": ["ok"] * n,
            **cols,
            **extra,
        },
        schema_overrides={c: pl.Float64 for c in SLOT_COLUMNS},
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    ids = ["r1", "r2", "r3", "r4"]
    teacher = {1: [1.0, 2, 3, 4], 2: [1.0, 2, 3, 4], 3: [1.0, 2, 3, 4]}
    student = {1: [2.0, 2, 4, 3], 2: [4.0, 3, 2, 1], 3: [5.0, 5, 5, 5]}
    s.write("teacher_labels", scores("s1", ids, teacher, split=["heldout"] * 4))
    s.write("student_scores", scores("s1", ids, student), "s1")
    return s


def test_mae_and_spearman_hand_computed(store: Store) -> None:
    rel = reliability_table(store, DIMS, n_boot=200)
    row = rel.filter(pl.col("slot") == 1).row(0, named=True)
    assert row["n"] == 4
    assert row["mae"] == pytest.approx(0.75)
    assert row["rho"] == pytest.approx(3.5 / (5 * 4.5) ** 0.5)  # ranks [1,2,3,4] vs [1.5,1.5,4,3]
    assert row["rho"] == pytest.approx(spearmanr([1, 2, 3, 4], [2, 2, 4, 3]).statistic)
    assert rel.filter(pl.col("slot") == 2)["rho"].item() == pytest.approx(-1.0)
    assert rel.filter(pl.col("slot") == 3)["rho"].item() is None  # constant student
    assert rel.filter(pl.col("slot") == 4)["n"].item() == 0


def test_mask_decisions(store: Store) -> None:
    store.write("dim_reliability", reliability_table(store, DIMS, n_boot=200))
    mask = store.query("reliability_mask", max_mae=1.5, min_rho=0.3, min_n=4, rule="r", mask_version="v1")
    by_slot = {r["slot"]: r for r in mask.iter_rows(named=True)}
    # four pairs: slot 1's rho interval straddles 0.3, so the (here identical) group estimate decides
    assert not by_slot[1]["masked"] and by_slot[1]["basis"] == "group" and "straddles" in by_slot[1]["reason"]
    assert by_slot[2]["masked"] and by_slot[2]["reason"] == "MAE 2.00 > 1.50; rho -1.00 < 0.30"
    assert by_slot[3]["masked"] and "rho undefined" in by_slot[3]["reason"]
    assert not by_slot[4]["masked"] and "kept unverified" in by_slot[4]["reason"]
    # with a higher min_n the cell falls back to the group estimate (the same data here)
    mask5 = store.query("reliability_mask", max_mae=1.5, min_rho=0.3, min_n=5, rule="r", mask_version="v1")
    assert set(mask5["basis"]) == {"none"}


def test_group_fallback_pools_sources(tmp_path: Path) -> None:
    s = Store(tmp_path)
    t = {1: [1.0, 2, 3, 4, 5, 6]}
    s.write("teacher_labels", scores("a", ["1", "2", "3"], {1: t[1][:3]}, split=["heldout"] * 3), "a")
    s.write("teacher_labels", scores("b", ["4", "5", "6"], {1: t[1][3:]}, split=["heldout"] * 3), "b")
    s.write("student_scores", scores("a", ["1", "2", "3"], {1: [1.0, 2, 3]}), "a")
    s.write("student_scores", scores("b", ["4", "5", "6"], {1: [4.0, 5, 9]}), "b")
    s.write("dim_reliability", reliability_table(s, DIMS, n_boot=200))
    mask = s.query("reliability_mask", max_mae=1.5, min_rho=0.3, min_n=6, rule="r", mask_version="v").filter(
        pl.col("slot") == 1
    )
    assert mask["basis"].to_list() == ["group", "group"]
    assert mask["used_n"].to_list() == [6, 6]
    assert mask["used_mae"].to_list() == pytest.approx([0.5, 0.5])
    assert "insufficient data (n=3 < 6)" in mask["reason"][0]


AGG_COLUMNS = ["aggregate", "aggregate_global", "aggregate_group", "aggregate_source"]


def select(s: Store, variant: str, share: float, lo: float = 0.0, hi: float = 1.0, seed: int = 0) -> pl.DataFrame:
    """The kept rows, each source's best first (the SQL leaves them unsorted)."""
    kept = s.query("select_variant", variant=variant, label=variant, share=share, min_share=lo, max_share=hi, seed=seed)
    return kept.sort(["source", "score", "record_id"], descending=[False, True, False])


def _select(tmp_path: Path, tokens: list[int], share: float) -> list[str]:
    s = Store(tmp_path)
    ids = [f"r{i}" for i in range(len(tokens))]
    agg = pl.DataFrame(
        {
            "source": "s",
            "group_id": "g",
            "record_id": ids,
            "n_tokens": tokens,
            "status": "ok",
            **{c: [float(len(tokens) - i) for i in range(len(tokens))] for c in AGG_COLUMNS},
            "n_dims_used": 12,
            "mask_version": "v",
        }
    )
    s.write("aggregated_scores", agg)
    return select(s, "scores", share)["record_id"].to_list()


def test_budget_exact(tmp_path: Path) -> None:
    assert _select(tmp_path, [10, 40, 20, 30], 0.5) == ["r0", "r1"]  # 50 of 100 exactly


def test_crossing_record_kept_when_closer(tmp_path: Path) -> None:
    assert _select(tmp_path, [10, 60, 30], 0.5) == ["r0", "r1"]  # 70 is 20 over, 10 is 40 under


def test_crossing_record_dropped_when_not_closer(tmp_path: Path) -> None:
    assert _select(tmp_path, [30, 45, 25], 0.5) == ["r0"]  # 75 is 25 over, 30 is 20 under


def test_unscored_records_count_in_budget_but_are_never_kept(tmp_path: Path) -> None:
    s = Store(tmp_path)
    agg = pl.DataFrame(
        {
            "source": "s",
            "group_id": "g",
            "record_id": ["a", "b", "c"],
            "n_tokens": [50, 25, 25],
            "status": ["too_long", "ok", "ok"],
            **{c: [None, 1.0, 0.0] for c in AGG_COLUMNS},
            "n_dims_used": [0, 3, 3],
            "mask_version": "v",
        }
    )
    s.write("aggregated_scores", agg)
    out = select(s, "scores", 0.5)
    assert out["record_id"].to_list() == ["b", "c"] and out["budget_tokens"][0] == 50


def test_aggregate_normalises_and_ignores_masked(tmp_path: Path) -> None:
    s = Store(tmp_path)
    # slot 1 lenient (9, 10), slot 2 harsh (1, 2): after z-normalising, each record has z = +-1 on both.
    s.write("student_scores", scores("s", ["x", "y"], {1: [10.0, 9], 2: [1.0, 2], 3: [0.0, 10]}), "s")
    mask = pl.DataFrame(
        {"source": "s", "slot": [1, 2, 3], "masked": [False, False, True], "mask_version": "v"},
        schema={"source": pl.String, "slot": pl.Int32, "masked": pl.Boolean, "mask_version": pl.String},
    )
    s.write("reliability_mask", mask)
    agg = s.query("aggregated_scores", normalise="group", sources=["s"])
    by_id = {r["record_id"]: r for r in agg.iter_rows(named=True)}
    assert by_id["x"]["aggregate"] == pytest.approx(0.0) and by_id["y"]["aggregate"] == pytest.approx(0.0)
    assert by_id["x"]["n_dims_used"] == 2


def _pairs(t: list[float], s: list[float]) -> pl.DataFrame:
    n = len(t)
    return pl.DataFrame(
        {
            "source": ["s"] * n,
            "pool": ["g"] * n,
            "record_id": [f"r{i}" for i in range(n)],
            "slot": [1] * n,
            "teacher": t,
            "student": s,
        },
        schema_overrides={"slot": pl.Int32},
    )


def test_bootstrap_interval_perfect_agreement() -> None:
    x = [float(i % 11) for i in range(40)]
    ci = agreement(_pairs(x, x), n_boot=300)[0].row(0, named=True)
    assert (ci["mae_lo"], ci["mae_hi"]) == (0.0, 0.0)
    assert ci["rho_lo"] == pytest.approx(1.0) and ci["rho_hi"] == pytest.approx(1.0)


def test_bootstrap_interval_covers_estimate_narrows_with_n_and_is_seeded() -> None:
    import numpy as np

    rng = np.random.default_rng(0)

    def ci(n: int, seed: int = 0) -> dict:
        t = rng.integers(0, 11, n).astype(float)
        s = np.clip(t + rng.normal(0, 1.5, n), 0, 10).round()
        row = agreement(_pairs(t.tolist(), s.tolist()), n_boot=500, seed=seed)[0].row(0, named=True)
        return {**row, "mae": float(np.abs(t - s).mean()), "rho": spearmanr(t, s).statistic}

    small, large = ci(20), ci(2000)
    for c in (small, large):
        assert c["mae_lo"] < c["mae"] < c["mae_hi"] and c["rho_lo"] < c["rho"] < c["rho_hi"]
    assert (large["mae_hi"] - large["mae_lo"]) < (small["mae_hi"] - small["mae_lo"]) / 4
    t = [float(i % 7) for i in range(30)]
    s = [float((i * 3) % 7) for i in range(30)]
    a, ga = agreement(_pairs(t, s), n_boot=200, seed=3)
    b, gb = agreement(_pairs(t, s), n_boot=200, seed=3)
    assert a.equals(b) and ga.equals(gb)
    # one source in the group: the stratified group interval is the source's own
    assert a.drop("source").equals(ga.drop("pool"))


def test_point_estimates_are_spearman_and_mae_per_source_and_pool() -> None:
    """agreement's n / MAE / rho are scipy's on each source and on the pool of both, with ties and a missing pair."""
    import numpy as np

    rng = np.random.default_rng(5)
    frames, both_t, both_s = [], [], []
    for src, n in (("a", 30), ("b", 17)):
        t = rng.integers(0, 11, n).astype(float)
        s = np.clip(t + rng.normal(0, 2, n), 0, 10).round()
        frames.append(_pairs(t.tolist(), s.tolist()).with_columns(pl.lit(src).alias("source")))
        both_t += t.tolist()
        both_s += s.tolist()
        st, pt = agreement(pl.concat(frames[-1:]), n_boot=50)
        row = st.row(0, named=True)
        assert row["n"] == n and row["mae"] == pytest.approx(float(np.abs(t - s).mean()))
        assert row["rho"] == pytest.approx(spearmanr(t, s).statistic, abs=1e-12)
    src, pool = agreement(pl.concat(frames).with_columns(pl.col("record_id") + pl.col("source")), n_boot=50)
    assert src["source"].to_list() == ["a", "b"]
    row = pool.row(0, named=True)
    assert row["n"] == 47 and row["rho"] == pytest.approx(spearmanr(both_t, both_s).statistic, abs=1e-12)


def test_point_estimate_and_resamples_share_one_formula() -> None:
    """A resample that draws every record once gives the point estimate exactly (the same function of the sums)."""
    import numpy as np

    from mira_dagster.core.reliability import _statistics, _Unit, point_estimates

    rng = np.random.default_rng(1)
    t = rng.integers(0, 11, (25, 15)).astype(float)
    s = np.clip(t + rng.normal(0, 2, (25, 15)), 0, 10).round()
    s[3, 4] = np.nan
    terms = _Unit(t, s).terms()
    point = point_estimates(terms)
    n, mae, rho = _statistics(np.ones((1, 25)) @ terms)
    assert np.array_equal(point["mae"], mae[0]) and np.array_equal(point["rho"], rho[0], equal_nan=True)
    assert point["n"][4] == 24


def test_straddling_interval_falls_back_to_group(tmp_path: Path) -> None:
    s = Store(tmp_path)
    rel = pl.DataFrame(
        {
            "source": ["a", "b"],
            "group_id": "g",
            "slot": [1, 1],
            "dim_name": "d1",
            "n": [30, 30],
            "mae": [1.4, 0.5],
            "rho": [0.8, 0.8],
            "group_n": 60,
            "group_mae": 0.95,
            "group_rho": 0.8,
            "mae_lo": [1.0, 0.3],
            "mae_hi": [1.9, 0.7],
            "rho_lo": [0.6, 0.6],
            "rho_hi": [0.9, 0.9],
        },
        schema_overrides={"slot": pl.Int32},
    )
    s.write("dim_reliability", rel)
    mask = s.query("reliability_mask", max_mae=1.5, min_rho=0.3, min_n=8, rule="r", mask_version="v")
    by = {r["source"]: r for r in mask.iter_rows(named=True)}
    assert by["a"]["basis"] == "group" and "straddles" in by["a"]["reason"] and not by["a"]["masked"]
    assert by["b"]["basis"] == "source" and by["b"]["reason"] == ""


def _corpus(tmp_path: Path, n: int = 400, seed: int = 0) -> Store:
    """Three sources in two groups, tokens 1-300, random aggregates."""
    import numpy as np

    rng = np.random.default_rng(seed)
    src = rng.choice(["a", "b", "c"], n)
    s = Store(tmp_path)
    s.write(
        "aggregated_scores",
        pl.DataFrame(
            {
                "source": src,
                "group_id": np.where(src == "c", "h", "g"),
                "record_id": [f"r{i}" for i in range(n)],
                "n_tokens": rng.integers(1, 300, n),
                "status": "ok",
                **{c: rng.normal(size=n) for c in AGG_COLUMNS},
                "n_dims_used": 15,
                "mask_version": "v",
            }
        ),
    )
    return s


@pytest.mark.parametrize("variant", ["scores", "random"])
def test_each_source_keeps_its_share_within_one_record(tmp_path: Path, variant: str) -> None:
    s = _corpus(tmp_path)
    agg = s.read("aggregated_scores")
    out = select(s, variant, 0.4)
    for unit in ["a", "b", "c"]:
        part, kept = agg.filter(pl.col("source") == unit), out.filter(pl.col("source") == unit)
        budget = 0.4 * part["n_tokens"].sum()
        assert abs(kept["n_tokens"].sum() - budget) <= part["n_tokens"].max() / 2 + 1e-9  # the closest cut
    assert out.equals(select(s, variant, 0.4))  # deterministic (random is seeded)


def test_random_variant_depends_on_seed(tmp_path: Path) -> None:
    s = _corpus(tmp_path)
    assert set(select(s, "random", 0.4, seed=1)["record_id"]) != set(select(s, "random", 0.4, seed=2)["record_id"])


def test_per_source_floor_and_cap(tmp_path: Path) -> None:
    s = _corpus(tmp_path)
    agg = s.read("aggregated_scores")
    tokens = dict(agg.group_by("source").agg(pl.col("n_tokens").sum()).iter_rows())
    out = select(s, "scores", 0.4, lo=0.2, hi=0.5)
    kept = dict(out.group_by("source").agg(pl.col("n_tokens").sum()).iter_rows())
    for src, total in tokens.items():
        assert kept[src] <= 0.5 * total
        assert kept[src] >= 0.2 * total - agg.filter(pl.col("source") == src)["n_tokens"].max()
    assert abs(out["n_tokens"].sum() - 0.4 * agg["n_tokens"].sum()) <= len(tokens) * agg["n_tokens"].max()


def _reference_selection(agg: pl.DataFrame, share: float, lo: float, hi: float) -> set[str]:
    """The documented rule as running sums over fully sorted rows: what budget_cut must reproduce."""

    def unit_of(r: dict) -> str:
        return r["source"]

    score_of = "aggregate"
    rows = agg.to_dicts()
    source_tokens: dict[str, int] = {}
    unit_tokens: dict[str, int] = {}
    for r in rows:
        source_tokens[r["source"]] = source_tokens.get(r["source"], 0) + r["n_tokens"]
        unit_tokens[unit_of(r)] = unit_tokens.get(unit_of(r), 0) + r["n_tokens"]
    scored = sorted((r for r in rows if r[score_of] is not None), key=lambda r: (-r[score_of], r["record_id"]))

    def closest(cum: float, n: int, budget: float) -> bool:
        return cum <= budget or (cum - n < budget and cum - budget < budget - (cum - n))

    reserved, allowed, source_cum = set(), set(), dict.fromkeys(source_tokens, 0)
    for r in scored:
        source_cum[r["source"]] += r["n_tokens"]
        cum, total = source_cum[r["source"]], source_tokens[r["source"]]
        if lo > 0 and closest(cum, r["n_tokens"], lo * total):
            reserved.add(r["record_id"])
        if hi >= 1 or cum <= hi * total:
            allowed.add(r["record_id"])
    unit_cum = {u: 0 for u in unit_tokens}
    for r in scored:
        if r["record_id"] in reserved:
            unit_cum[unit_of(r)] += r["n_tokens"]
    kept = set(reserved)
    for r in scored:
        if r["record_id"] in reserved or r["record_id"] not in allowed:
            continue
        unit_cum[unit_of(r)] += r["n_tokens"]
        if closest(unit_cum[unit_of(r)], r["n_tokens"], share * unit_tokens[unit_of(r)]):
            kept.add(r["record_id"])
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_budget_cut_equals_running_sums_over_sorted_rows(tmp_path: Path, seed: int) -> None:
    # coarse scores (many ties), zero-token and unscored records, floors and caps: the bucketed cut of
    # sql/macro_budget_cut.sql must keep exactly what a running sum over fully sorted rows keeps
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 3000
    src = rng.choice(["a", "b", "c", "d"], n)
    aggs = {c: np.round(rng.normal(size=n), 1) for c in AGG_COLUMNS}
    unscored = rng.random(n) < 0.05
    agg = pl.DataFrame(
        {
            "source": src,
            "group_id": np.where(np.isin(src, ["a", "b"]), "g", "h"),
            "record_id": [f"r{i:05d}" for i in rng.permutation(n)],
            "n_tokens": np.where(rng.random(n) < 0.05, 0, rng.integers(1, 500, n)),
            "status": "ok",
            **{c: np.where(unscored, np.nan, v) for c, v in aggs.items()},
            "n_dims_used": 15,
            "mask_version": "v",
        }
    ).with_columns(pl.col(AGG_COLUMNS).fill_nan(None))
    s = Store(tmp_path)
    s.write("aggregated_scores", agg)
    for share, lo, hi in [(0.3, 0.0, 1.0), (0.5, 0.1, 0.6), (0.05, 0.02, 1.0), (0.9, 0.0, 0.4)]:
        got = set(select(s, "scores", share, lo, hi)["record_id"].to_list())
        assert got == _reference_selection(agg, share, lo, hi), (share, lo, hi)
