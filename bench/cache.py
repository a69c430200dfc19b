"""Benchmark of the reply cache's lookup: the same number of ids found in a small and in a large cache.

    python bench/cache.py [--sizes 25000 1600000] [--ids 10000] [--repeats 5] [--old-repeats 3] [--no-old]

For each size a synthetic cache of that many replies (reply text 1-2 KB of random words; about 9% of the records
have a second attempt) is written as the flat Parquet batch files a writer leaves (256 replies each), then
compacted into the indexed layout by the real compaction (`ParquetReplyCache.compact`). Each lookup is one
`load_attempts` call for `--ids` ids, half present and half absent, a fresh sample per repetition, run in a
fresh process per (layout, size) so that its peak RSS is its own. Reported: the median lookup time per size,
the ratio large / small (the target: within 2x), peak RSS, runs per bucket, and the same lookup on the flat
files alone (the layout before the index, `--no-old` to skip it). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mira_dagster.io.store import ParquetReplyCache  # noqa: E402

VERSION = "bench-version"
BATCH = 256  # replies per flat file, the writers' default batch


def _hex_ids(rng: np.random.Generator, n: int) -> pl.Series:
    """n random 32-hex-digit ids, like record_id (a SHA-256 prefix)."""
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(rng.bytes(16 * n))])
    return pl.Series("record_id", raw.cast(pa.binary())).bin.encode("hex")


def synthetic(n: int, seed: int = 0) -> pl.DataFrame:
    """n replies: ids, 1-2 KB texts of random words (consecutive cuts of a 16 MB stream, repeated), ~9% second
    attempts."""
    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 10))) for _ in range(5000)])
    stream = np.frombuffer(" ".join(vocab[rng.integers(0, len(vocab), 2_500_000)].tolist()).encode(), np.uint8)
    lengths = rng.integers(1000, 2000, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.resize(stream, int(offsets[-1]))
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    n_records = int(n / 1.09)
    ids = _hex_ids(rng, n_records)
    df = pl.DataFrame(
        {
            "record_id": pl.concat([ids, ids[: n - n_records]]),
            "text": pl.Series(text),
            "attempt": np.r_[np.zeros(n_records, np.int64), np.ones(n - n_records, np.int64)],
            "completion_tokens": lengths // 4,
        }
    ).with_columns(
        finish_reason=pl.lit("stop"),
        prompt_tokens=pl.lit(900, pl.Int64),
        cached_tokens=pl.lit(None, pl.Int64),
        created_at=pl.datetime(2026, 1, 1, time_unit="us", time_zone="UTC")
        + pl.duration(microseconds=pl.int_range(pl.len())),
    )
    return df.select(list(ParquetReplyCache.SCHEMA)).cast(ParquetReplyCache.SCHEMA)  # type: ignore[arg-type]


def write_flat(df: pl.DataFrame, folder: Path) -> None:
    """The flat layout: one Parquet file per batch of 256, as writers leave them (and as caches before the index)."""
    folder.mkdir(parents=True)
    for i in range(0, df.height, BATCH):
        df.slice(i, BATCH).write_parquet(folder / f"{i // BATCH:08d}.parquet")


def query_ids(df: pl.DataFrame, n: int, seed: int) -> list[str]:
    """n ids: half sampled from the cache, half absent."""
    rng = np.random.default_rng(seed)
    present = df["record_id"].unique().sample(n // 2, seed=seed).to_list()
    return present + _hex_ids(rng, n - n // 2).to_list()


def probe(root: Path, queries: Path) -> None:
    """One process: every repetition's lookup through the real load_attempts; prints one JSON line."""
    cache = ParquetReplyCache(root)
    times, found = [], []
    for ids in json.loads(queries.read_text()):
        t0 = time.perf_counter()
        got = cache.load_attempts(VERSION, ids)
        times.append(time.perf_counter() - t0)
        found.append(len(got))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    print(json.dumps({"times_s": times, "found": found, "peak_rss_mb": round(peak_mb, 1)}))


def run_probe(root: Path, queries: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--probe", str(root), str(queries)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def runs_per_bucket(folder: Path) -> dict[str, float]:
    counts = [len(list(b.glob("*.arrow"))) for b in (folder / "runs").iterdir()]
    return {"min": min(counts), "max": max(counts), "mean": round(sum(counts) / len(counts), 1)}


def du_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 1_600_000])
    ap.add_argument("--ids", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--old-repeats", type=int, default=3)
    ap.add_argument("--no-old", action="store_true")
    ap.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(Path(args.probe[0]), Path(args.probe[1]))

    result: dict = {"ids_per_lookup": args.ids, "present_per_lookup": args.ids // 2, "cpus": os.cpu_count()}
    new, old = {}, {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("MIRA_BENCH_TMP")) as tmp:
        for size in args.sizes:
            t0 = time.perf_counter()
            df = synthetic(size)
            flat = Path(tmp) / f"old-{size}"
            write_flat(df, flat / VERSION)
            generate_s = time.perf_counter() - t0
            reps = max(args.repeats, args.old_repeats)
            queries = Path(tmp) / f"queries-{size}.json"
            queries.write_text(json.dumps([query_ids(df, args.ids, seed) for seed in range(reps)]))
            del df

            # the indexed layout: the same flat files (hard links), compacted by the real compaction
            indexed = Path(tmp) / f"new-{size}"
            (indexed / VERSION).mkdir(parents=True)
            for path in (flat / VERSION).iterdir():
                os.link(path, indexed / VERSION / path.name)
            t0 = time.perf_counter()
            ParquetReplyCache(indexed).compact(VERSION)
            compact_s = time.perf_counter() - t0

            got = run_probe(indexed, queries)
            times = got["times_s"][: args.repeats]
            new[size] = {
                "median_s": round(statistics.median(times), 4),
                "times_s": [round(t, 4) for t in times],
                "found": got["found"][0],
                "peak_rss_mb": got["peak_rss_mb"],
                "runs_per_bucket": runs_per_bucket(indexed / VERSION),
                "disk_mb": du_mb(indexed / VERSION),
                "build_s": {"generate_and_write_flat": round(generate_s, 1), "compact": round(compact_s, 1)},
            }
            print(f"indexed, {size:>9,} replies: {new[size]}", flush=True)
            shutil.rmtree(indexed)
            if not args.no_old:
                queries.write_text(json.dumps(json.loads(queries.read_text())[: args.old_repeats]))
                got = run_probe(flat, queries)
                old[size] = {
                    "median_s": round(statistics.median(got["times_s"]), 4),
                    "times_s": [round(t, 4) for t in got["times_s"]],
                    "found": got["found"][0],
                    "peak_rss_mb": got["peak_rss_mb"],
                    "disk_mb": du_mb(flat / VERSION),
                }
                print(f"flat,    {size:>9,} replies: {old[size]}", flush=True)
            shutil.rmtree(flat)

    small, large = min(args.sizes), max(args.sizes)
    result["indexed"] = {str(k): v for k, v in new.items()}
    result["ratio_large_over_small"] = round(new[large]["median_s"] / new[small]["median_s"], 2)
    if old:
        result["flat"] = {str(k): v for k, v in old.items()}
        result["flat_ratio_large_over_small"] = round(old[large]["median_s"] / old[small]["median_s"], 2)
        result["speedup_at_large"] = round(old[large]["median_s"] / new[large]["median_s"], 1)
    print(
        f"lookup of {args.ids:,} ids: {new[small]['median_s']:.3f} s at {small:,} replies, "
        f"{new[large]['median_s']:.3f} s at {large:,}: ratio {result['ratio_large_over_small']} (target <= 2)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
