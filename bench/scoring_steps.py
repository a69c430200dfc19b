"""The scoring stage alone, cold, on httpx and on aiohttp (io/aiohttp_client.py), alternating, on the homes that
`bench/pipeline.py --keep DIR` left (issue 25; docs/benchmarks.md "Scoring CPU per record").

    .venv/bin/python bench/scoring_steps.py DIR [--runs 2]

For each size folder under DIR (`n<records>`), each run and each transport: a copy of the folder without the
scoring tables and the reply cache (so every request goes out), fresh loopback servers (bench/pipeline.py's), then
the scoring stage's steps, one per source (`teacher_labels` + `student_scores`), each its own process as
bench/pipeline.py runs them. The step process puts openai's default httpx client in place of `AioHttpClient` for
the httpx runs. Prints one JSON object last: CPU seconds of the steps per size, transport and run, and the
marginal CPU a record between the smallest and the largest size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline  # noqa: E402

# the transport of the step's scorer clients: BENCH_TRANSPORT=httpx swaps openai's default httpx client in
STEP = (
    """
import os
if os.environ.get("BENCH_TRANSPORT") == "httpx":
    import openai
    from mira_dagster.io import llm_client
    llm_client.AioHttpClient = openai.DefaultAsyncHttpxClient
"""
    + pipeline.STEP
)
TRANSPORTS = ("httpx", "aiohttp")
SCORING = "teacher_labels,student_scores"


def scoring_stage(kept: Path, transport: str, work: Path) -> dict[str, Any]:
    """The scoring steps of every source, cold, on a copy of `kept`: summed wall and CPU seconds."""
    root = work / f"{kept.name}-{transport}"
    pipeline.cold_copy(kept, root)
    servers = pipeline.Servers(root)
    log = root / "steps.log"
    try:
        env = pipeline.bench_env(root, servers, root / "groups.yaml") | {"BENCH_TRANSPORT": transport}
        rows = []
        for source in pipeline.BASES:
            row = pipeline.child([sys.executable, "-c", STEP, SCORING, source], env, log)
            if row["rc"] != 0:
                raise SystemExit(f"scoring {source} on {transport} failed (exit {row['rc']}); its log: {log}")
            rows.append(row)
    finally:
        servers.stop()
    shutil.rmtree(root)
    return {"wall_s": round(sum(r["wall_s"] for r in rows), 2), "cpu_s": round(sum(r["cpu_s"] for r in rows), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("keep", type=Path, help="the folder bench/pipeline.py --keep left (its n<records> folders)")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    sizes = pipeline.kept_sizes(args.keep)
    if len(sizes) < 2:
        raise SystemExit(f"{args.keep}: needs two sizes from bench/pipeline.py --keep (n<records> folders)")
    out: dict[str, Any] = {"records": [n for n, _ in sizes], "runs": {}}
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        for run in range(1, args.runs + 1):
            for transport in TRANSPORTS:
                for n, kept in sizes:
                    row = scoring_stage(kept, transport, Path(tmp))
                    out["runs"].setdefault(transport, {}).setdefault(str(n), []).append(row)
                    print(f"run {run} {transport} {n}: {row}", flush=True)
    marginal = pipeline.marginal_ms(out["runs"], sizes, TRANSPORTS)
    out["marginal_cpu_ms_per_record"] = marginal
    ratio = statistics.mean(marginal["aiohttp"]) / statistics.mean(marginal["httpx"])
    out["ratio_aiohttp_over_httpx"] = round(ratio, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
