"""Peak RSS of one scoring step (`teacher_labels` + `student_scores` of one source, one process, cold, on the real
client path) at each size a `bench/pipeline.py --keep DIR` run left, on two versions of the code, interleaved, with
the RSS sampled every 5 ms and the main thread's stack kept at each new peak (issue 25 item 2; docs/benchmarks.md
"Scoring memory, the chunk's text").

    git archive <commit> | tar -x -C /tmp/before      # the code to compare against, as a plain tree
    .venv/bin/python bench/scoring_step_rss.py DIR --before /tmp/before [--source anchors] [--runs 1]

For each run, size folder (`n<records>`) and side: a copy of the folder without the scoring tables and the reply
cache (bench/pipeline.cold_copy), fresh loopback servers, the step in its own process (bench/pipeline.py's), its
peak RSS (ru_maxrss), CPU seconds and the last stacks that raised the peak. The last run's stores of the two sides
are compared (bench/scoring_ab.stored: the score tables and every cached reply, sorted by record). Prints one JSON
object last: per side and size the peaks, and each side's growth from the smallest size to the largest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline  # noqa: E402
import scoring_ab  # noqa: E402

# the step, as bench/pipeline.py runs it, with a thread sampling its RSS (argv: assets, partition, output file)
STEP = """
import json, os, sys, threading, time, traceback
import dagster as dg
from mira_dagster import definitions as d
from mira_dagster.defs.resources import mira_resource
page, main, peaks, done = os.sysconf("SC_PAGE_SIZE"), threading.get_ident(), [], threading.Event()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
def sample():
    best, t0 = 0, time.monotonic()
    while not done.wait(0.005):
        if (now := rss()) > best + 4 * 2**20:
            best, frame = now, sys._current_frames().get(main)
            where = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in traceback.extract_stack(frame)]
            peaks.append({"s": round(time.monotonic() - t0, 2), "mb": now >> 20, "stack": where[-6:][::-1]})
threading.Thread(target=sample, daemon=True).start()
names = sys.argv[1].split(",")
selection = [a for a in d.ALL_ASSETS if any(k.to_user_string() in names for k in a.keys)]
with dg.DagsterInstance.get() as instance:
    result = dg.materialize(d.ALL_ASSETS, selection=selection, partition_key=sys.argv[2], instance=instance,
                            resources={"mira": mira_resource()}, raise_on_error=False)
done.set()
with open(sys.argv[3], "w") as out:
    json.dump(peaks[-5:], out)
sys.exit(0 if result.success else 1)
"""


def step(kept: Path, code: Path | None, root: Path, source: str) -> dict[str, Any]:
    """The scoring step of `source`, cold, in `root` (a copy of `kept`), on the code in `code` (None: this checkout)."""
    pipeline.cold_copy(kept, root)
    servers = pipeline.Servers(root)
    try:
        env = pipeline.bench_env(root, servers, root / "groups.yaml")
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
        argv = [sys.executable, "-c", STEP, scoring_ab.SCORING, source, str(root / "peaks.json")]
        row = pipeline.child(argv, env, root / "steps.log")
    finally:
        servers.stop()
    if row["rc"] != 0:
        raise SystemExit(f"scoring {source} in {root} failed (exit {row['rc']}); its log: {root / 'steps.log'}")
    return row | {"last_peaks": json.loads((root / "peaks.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("keep", type=Path, help="the folder bench/pipeline.py --keep left (its n<records> folders)")
    ap.add_argument("--before", type=Path, required=True, help="a plain tree of the code to compare against")
    ap.add_argument(
        "--source", default="anchors", help="the source partition (bench/pipeline.py: anchors has the longest records)"
    )
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    sizes = pipeline.kept_sizes(args.keep)
    code = {"before": args.before.resolve(), "after": None}
    out: dict[str, Any] = {"source": args.source, "records": [n for n, _ in sizes], "runs": {}}
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        for run in range(1, args.runs + 1):
            for n, kept in sizes:
                for side in scoring_ab.SIDES:
                    root = Path(tmp) / f"{kept.name}-{side}"
                    shutil.rmtree(root, ignore_errors=True)
                    row = step(kept, code[side], root, args.source)
                    out["runs"].setdefault(side, {}).setdefault(str(n), []).append(row)
                    print(
                        f"run {run} {side} {n}: { ({k: v for k, v in row.items() if k != 'last_peaks'}) }", flush=True
                    )
        for _, kept in sizes:  # the last run's stores: the same rows on both sides
            a, b = (scoring_ab.stored(Path(tmp) / f"{kept.name}-{side}") for side in scoring_ab.SIDES)
            for name in a:
                if not a[name].equals(b[name]):
                    raise SystemExit(f"{kept.name}: {name} differs between before and after")
            out.setdefault("same_rows", {})[kept.name] = {k: v.height for k, v in a.items()}
    (small, _), (large, _) = sizes[0], sizes[-1]
    out["peak_rss_growth_largest_over_smallest"] = {
        side: [
            round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
            for a, b in zip(out["runs"][side][str(small)], out["runs"][side][str(large)], strict=True)
        ]
        for side in scoring_ab.SIDES
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
