"""Peak RSS of one `student_scores` step (offline stand-in) at two source sizes: the streamed scoring's target
(issue 12) is a step at 200k records within 1.3x of the same step at 20k.

A synthetic qa_with_think source of N records is made from the bundled sample: each record is a sample record with
a variant marker in its text, so every record has its own record_id and a realistic length. Ingest runs in one
process; the scoring step in another, whose own peak RSS (ru_maxrss) and wall time are reported.

    .venv/bin/python bench/scoring_rss.py [--records 20000 200000] [--chunk 20000] [--keep DIR]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
BASES = ["math_think_marco_o1_cot_demo.part1.jsonl", "math_think_marco_o1_cot_demo.part2.jsonl"]

STEP = """
import resource, sys, time
import dagster as dg
from mira_dagster import definitions as d
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.io.registry import load_config
from pathlib import Path
config, home, selection = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
started = time.monotonic()
instance = in_process_instance(load_config(Path(config)))
result = dg.materialize(d.ALL_ASSETS, selection=selection, partition_key="synthetic", instance=instance,
                        resources={"mira": MiraResource(config_path=config, home=home)})
assert result.success
print("RESULT", time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _mark(text: str, marker: str) -> str:
    cut = text.find("\n") + 1 or len(text)
    return f"{text[:cut]}(variant {marker}) {text[cut:]}"


def write_source(path: Path, n: int) -> None:
    lines = [json.loads(line) for name in BASES for line in (SAMPLE / name).read_text().splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            obj = {
                k: _mark(v, str(i)) if isinstance(v, str) and len(v) > 40 else v
                for k, v in lines[i % len(lines)].items()
            }
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def step(config: Path, home: Path, selection: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", STEP, str(config), str(home), selection], capture_output=True, text=True, cwd=ROOT
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(out.stderr[-3000:])
    _, seconds, rss_kib = line.split()
    return float(seconds), int(rss_kib)


def measure(n: int, chunk: int, work: Path) -> dict[str, Any]:
    folder = work / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    write_source(folder / "synthetic.jsonl", n)
    shutil.copy(
        ROOT / "mira_dagster" / "resources" / "anchors" / "group_2_dim_anchors.jsonl",
        folder / "group_2_dim_anchors.jsonl",
    )
    config = folder / "groups.yaml"
    config.write_text(
        'groups:\n  "2": {family: qa_with_think, student_model: whw06/MIRA-QA-Group3,\n'
        "        anchors: group_2_dim_anchors.jsonl}\n"
        'sources:\n  synthetic: {group: "2", format: qa_with_think, files: [synthetic.jsonl]}\n'
        f"pipeline: {{scoring_chunk_records: {chunk}}}\n",
        encoding="utf-8",
    )
    home = folder / "home"
    ingest_s, _ = step(config, home, "raw_records")
    score_s, rss_kib = step(config, home, "student_scores")
    rescore_s, rescore_kib = step(config, home, "student_scores")  # everything cached
    return {
        "records": n,
        "source_bytes": (folder / "synthetic.jsonl").stat().st_size,
        "ingest_s": round(ingest_s, 1),
        "student_scores_s": round(score_s, 1),
        "student_scores_peak_rss_mb": round(rss_kib / 1024, 1),
        "cached_rerun_s": round(rescore_s, 1),
        "cached_rerun_peak_rss_mb": round(rescore_kib / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mira-rss-"))
    try:
        results = []
        for n in args.records:
            results.append(measure(n, args.chunk, work))
            print(json.dumps(results[-1]), flush=True)
        peaks = [r["student_scores_peak_rss_mb"] for r in results]
        print(json.dumps({"runs": results, "peak_ratio_last_vs_first": round(peaks[-1] / peaks[0], 3)}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
