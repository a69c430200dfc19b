"""The scoring stage on two versions of the code, interleaved, on the homes bench/pipeline.py --keep left (issue 25
item 2; docs/benchmarks.md "Scoring CPU per record, the parser's fast path").

    git archive <commit> | tar -x -C /tmp/before      # the code to compare against, as a plain tree
    .venv/bin/python bench/scoring_ab.py DIR --before /tmp/before [--runs 2]

For each run, each side (before: the tree given, put first on the step's PYTHONPATH; after: this checkout) and each
size folder under DIR (`n<records>`): a copy of the folder without the scoring tables and the reply cache (so
every request goes out), fresh loopback servers (bench/pipeline.py's), then the scoring stage's steps, one per
source (`teacher_labels` + `student_scores`), each its own process as bench/pipeline.py runs them. CPU seconds are
the steps' own (the servers' are not in them). The last run's stores of the two sides are compared: the score
tables and the reply cache (every attempt of every scored record, read back through it) must hold the same rows,
sorted by record (the order replies arrive in and their created_at differ from run to run).
Prints one JSON object last: CPU seconds per side, size and run, and the marginal CPU a record between the
smallest and the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline  # noqa: E402

SCORING = "teacher_labels,student_scores"
SIDES = ("before", "after")


def scoring_stage(kept: Path, code: Path | None, root: Path) -> dict[str, Any]:
    """The scoring steps of every source, cold, in `root` (a copy of `kept`), on the code in `code` (None: this
    checkout): summed wall and CPU seconds."""
    pipeline.cold_copy(kept, root)
    servers = pipeline.Servers(root)
    log = root / "steps.log"
    try:
        env = pipeline.bench_env(root, servers, root / "groups.yaml")
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
        rows = []
        for source in pipeline.BASES:
            row = pipeline.child([sys.executable, "-c", pipeline.STEP, SCORING, source], env, log)
            if row["rc"] != 0:
                raise SystemExit(f"scoring {source} in {root} failed (exit {row['rc']}); its log: {log}")
            rows.append(row)
    finally:
        servers.stop()
    return {"wall_s": round(sum(r["wall_s"] for r in rows), 2), "cpu_s": round(sum(r["cpu_s"] for r in rows), 2)}


def stored(root: Path) -> dict[str, pl.DataFrame]:
    """What the scoring stage stored in a home: each score table's rows, and every cached attempt of their records
    read back through the reply cache (its runs, level-0 files and logs), sorted."""
    from mira_dagster.io.reply_cache import ParquetReplyCache

    home = root / "home"
    out = {}
    for table in ("teacher_labels", "student_scores"):
        out[table] = pl.read_parquet(sorted((home / "tables" / table).glob("*.parquet"))).sort("record_id")
    ids = sorted({i for t in out.values() for i in t["record_id"].to_list()})
    cache = ParquetReplyCache(home / "cache" / "replies")
    rows = [
        {"version": d.name, "record_id": rid, "attempt": n, **comp.model_dump()}
        for d in sorted((home / "cache" / "replies").iterdir())
        for rid, comps in cache.load_attempts(d.name, ids).items()
        for n, comp in enumerate(comps)
    ]
    out["replies"] = pl.DataFrame(rows).sort(["version", "record_id", "attempt"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("keep", type=Path, help="the folder bench/pipeline.py --keep left (its n<records> folders)")
    ap.add_argument("--before", type=Path, required=True, help="a plain tree of the code to compare against")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--work", type=Path, help="run in this folder and keep the last run's homes (default: removed)")
    args = ap.parse_args()
    if not (args.before / "mira_dagster" / "__init__.py").is_file():
        raise SystemExit(f"{args.before}: not a tree of this project (no mira_dagster/__init__.py)")
    sizes = pipeline.kept_sizes(args.keep)
    if len(sizes) < 2:
        raise SystemExit(f"{args.keep}: needs two sizes from bench/pipeline.py --keep (n<records> folders)")
    code = {"before": args.before.resolve(), "after": None}
    out: dict[str, Any] = {"records": [n for n, _ in sizes], "runs": {}}
    with tempfile.TemporaryDirectory(dir=args.keep) as scratch:
        tmp = args.work or Path(scratch)
        for run in range(1, args.runs + 1):
            for side in SIDES:
                for n, kept in sizes:
                    root = Path(tmp) / f"{kept.name}-{side}"
                    shutil.rmtree(root, ignore_errors=True)
                    row = scoring_stage(kept, code[side], root)
                    out["runs"].setdefault(side, {}).setdefault(str(n), []).append(row)
                    print(f"run {run} {side} {n}: {row}", flush=True)
        for _, kept in sizes:  # the last run's stores: the same rows on both sides
            a, b = (stored(Path(tmp) / f"{kept.name}-{side}") for side in SIDES)
            for name in a:
                if not a[name].equals(b[name]):
                    raise SystemExit(f"{kept.name}: {name} differs between before and after")
            out.setdefault("same_rows", {})[kept.name] = {k: v.height for k, v in a.items()}
    marginal = pipeline.marginal_ms(out["runs"], sizes, SIDES)
    out["marginal_cpu_ms_per_record"] = marginal
    out["ratio_after_over_before"] = round(statistics.mean(marginal["after"]) / statistics.mean(marginal["before"]), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
