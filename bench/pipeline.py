"""The whole pipeline at corpus scale: `mira run` cold, a no-op re-run, and a re-run after appending 1% to one source.

A synthetic corpus of N records (default 200,000) in four qa_with_think sources is built from the bundled sample: each
record is a sample record whose text fields get a variant marker, so every record has its own record_id and a
realistic length. The scorers are the offline stand-ins. Each `mira run` is its own process, timed, with its peak RSS
(the largest child's ru_maxrss, measured by a wrapper process per run). Targets (issue 12): the no-op re-run at most
5% of the cold run; the append re-run requests exactly the appended records from the student.

    .venv/bin/python bench/pipeline.py [--records 200000] [--keep DIR]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
BIN = Path(sys.executable).parent
BASES = {
    "marco": ["math_think_marco_o1_cot_demo.part1.jsonl", "math_think_marco_o1_cot_demo.part2.jsonl"],
    "anchors": ["math_think_thoughtanchors_r1distill.jsonl"],
    "kimina": ["lean_kimina_prover_minif2f_test_solved.jsonl"],
    "deepseek": ["lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"],
}
APPEND_TO = "marco"


def _mark(obj: Any, marker: str) -> None:
    """Put the marker into every longer string inside obj (in place): after its first line break (inside a
    `<Thought>` block, say, where a suffix after `</Output>` would be dropped by the layout), else at its end."""
    stack = [obj]
    while stack:
        node = stack.pop()
        items = (
            list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        )
        for key, value in items:
            if isinstance(value, str) and len(value) > 40:
                cut = value.find("\n") + 1 or len(value)
                node[key] = f"{value[:cut]}(variant {marker}) {value[cut:]}"
            elif isinstance(value, dict | list):
                stack.append(value)


def write_source(path: Path, bases: list[str], start: int, count: int, mode: str = "w") -> None:
    lines = [json.loads(line) for name in bases for line in (SAMPLE / name).read_text().splitlines() if line.strip()]
    with path.open(mode, encoding="utf-8") as fh:
        for i in range(start, start + count):
            obj = json.loads(json.dumps(lines[i % len(lines)]))
            _mark(obj, f"{i}")
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def build(root: Path, n: int) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    per = n // len(BASES)
    for name, bases in BASES.items():
        write_source(data / f"{name}.jsonl", bases, 0, per)
    shutil.copy(
        ROOT / "mira_dagster" / "resources" / "anchors" / "group_2_dim_anchors.jsonl",
        root / "group_2_dim_anchors.jsonl",
    )
    sources = "\n".join(
        f'  {name}: {{group: "2", format: qa_with_think, files: [data/{name}.jsonl]}}' for name in BASES
    )
    registry = root / "groups.yaml"
    registry.write_text(
        'groups:\n  "2": {family: qa_with_think, student_model: whw06/MIRA-QA-Group3, '
        "anchors: group_2_dim_anchors.jsonl}\n"
        f"sources:\n{sources}\n",
        encoding="utf-8",
    )
    return registry


WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(r.returncode, round(time.perf_counter() - t, 2), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])\n"
)


def mira_run(root: Path, registry: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_"))}
    env |= {"MIRA_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "home" / "dagster")}
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(BIN / "mira"), "run", "--config", str(registry)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    rc, wall, rss_kb = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"mira run failed (exit {rc}):\n{out.stderr}")
    return {"wall_s": float(wall), "peak_rss_mb": round(int(rss_kb) / 1024), "log": out.stderr}


def student_requests(root: Path, source: str) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(root / "home" / "dagster")) as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("student_scores"), asset_partitions=[source]), limit=1
        ).records
        return int(records[0].asset_materialization.metadata["requests_sent"].value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keep", help="build and run in this folder and keep it")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mira-bench-"))
    try:
        t0 = time.perf_counter()
        registry = build(root, args.records)
        corpus_mb = sum(p.stat().st_size for p in (root / "data").iterdir()) / 2**20
        print(f"corpus: {args.records:,} records, {corpus_mb:.0f} MB, built in {time.perf_counter() - t0:.0f} s")
        cold = mira_run(root, registry)
        print(f"cold: {cold['wall_s']} s, peak RSS {cold['peak_rss_mb']} MB", flush=True)
        noop = mira_run(root, registry)
        print(f"no-op: {noop['wall_s']} s, peak RSS {noop['peak_rss_mb']} MB", flush=True)
        appended = args.records // 100
        per = args.records // len(BASES)
        write_source(root / "data" / f"{APPEND_TO}.jsonl", BASES[APPEND_TO], per, appended, mode="a")
        append = mira_run(root, registry)
        asked = student_requests(root, APPEND_TO)
        print(f"append {appended}: {append['wall_s']} s, peak RSS {append['peak_rss_mb']} MB, student asked {asked}")
        result = {
            "records": args.records,
            "corpus_mb": round(corpus_mb),
            "cold_s": cold["wall_s"],
            "cold_peak_rss_mb": cold["peak_rss_mb"],
            "noop_s": noop["wall_s"],
            "noop_share_of_cold": round(noop["wall_s"] / cold["wall_s"], 4),
            "append_records": appended,
            "append_s": append["wall_s"],
            "append_peak_rss_mb": append["peak_rss_mb"],
            "append_student_requests": asked,
            "append_requests_exactly_new": asked == appended,
            "targets_met": {
                "noop_at_most_5pct_of_cold": noop["wall_s"] <= 0.05 * cold["wall_s"],
                "append_requests_exactly_new": asked == appended,
            },
        }
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
