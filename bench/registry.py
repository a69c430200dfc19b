"""Benchmark of loading a large source registry: `load_config` (parse within limits, validate, make paths absolute)
against the plain parse of the same YAML with PyYAML's libyaml loader, in the same run.

    python bench/registry.py [--sources 2500] [--repeats 3]

Two shapes of registry with `--sources` sources each: `shards` (every source lists 100 shard files and a field
mapping: many small values) and `prose` (every source carries 20 KB of comments and a long glob: few, large
values, the size of the 49 MB registry of issue 23). Each load runs in a fresh process with the same modules
imported before the clock starts, so its peak RSS is its own and the time is the load alone. Reported per shape:
file size, median seconds of ours and of the baseline, the ratio, peak RSS of each. The target (issue 23): loading
and validating 2,500 sources in under 5 s. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

GROUPS = {"2": {"family": "qa_with_think", "description": "math", "student_model": "whw06/MIRA-QA-Group3"}}
_MEASURE = """
import json, resource, sys, time
import yaml
from mira_dagster.io.registry import load_config
t = time.perf_counter()
if sys.argv[1] == "ours":
    n = len(load_config(sys.argv[2]).sources)
else:
    n = len(yaml.load(open(sys.argv[2], encoding="utf-8").read(), Loader=yaml.CSafeLoader)["sources"])
print(json.dumps({"seconds": time.perf_counter() - t, "sources": n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_registry(folder: Path, shape: str, n: int) -> Path:
    """A registry of `n` sources of one shape (see the module docstring)."""
    path = folder / f"{shape}.yaml"
    with path.open("w", encoding="utf-8") as f:
        f.write(yaml.safe_dump({"groups": GROUPS}, sort_keys=False) + "sources:\n")
        for i in range(n):
            if shape == "shards":
                files = "".join(f"\n    - data/src_{i:05d}/shard-{j:05d}-of-00100.jsonl.gz" for j in range(100))
                f.write(f"  src_{i:05d}:\n    group: '2'\n    format: qa_with_think\n    files:{files}\n")
                f.write("    fields: {question: problem, answer: solution, thinking: reasoning}\n")
            else:
                notes = "".join(f"    # note {j}: " + "provenance and licence text " * 6 + "\n" for j in range(110))
                f.write(f"  src_{i:05d}:\n{notes}    group: '2'\n    format: qa_with_think\n")
                f.write(f"    files: ['data/src_{i:05d}/**/*.parquet']\n")
    return path


def measure(which: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, which, str(path)], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("shards", "prose"):
            path = write_registry(Path(tmp), shape, args.sources)
            runs = {"ours": [], "baseline": []}
            for _ in range(args.repeats):  # interleaved: load on the machine hits both alike
                for which in runs:
                    runs[which].append(measure(which, path))
            row = {
                "megabytes": round(path.stat().st_size / 1e6, 1),
                "sources": runs["ours"][0]["sources"],
                **{f"{w}_seconds": round(statistics.median(r["seconds"] for r in runs[w]), 3) for w in runs},
                **{f"{w}_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs[w]), 1) for w in runs},
            }
            row["ratio"] = round(row["ours_seconds"] / row["baseline_seconds"], 2)
            results[shape] = row
            print(
                f"{shape:7} {row['megabytes']:6.1f} MB  {row['sources']} sources: ours {row['ours_seconds']:.2f} s "
                f"({row['ours_peak_rss_mb']:.0f} MB peak), plain libyaml parse {row['baseline_seconds']:.2f} s "
                f"({row['baseline_peak_rss_mb']:.0f} MB), ratio {row['ratio']}"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
