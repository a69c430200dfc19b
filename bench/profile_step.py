"""One scoring step process under cProfile, cold, on the real client path (issue 25 item 2).

    .venv/bin/python bench/profile_step.py KEPT/n20000 [--source marco] [--assets student_scores] [--top 40]

On a copy of a home bench/pipeline.py --keep left (scoring tables and reply cache removed, so every request goes
out), with fresh loopback servers (bench/pipeline.py's), the step runs as bench/pipeline.py runs it (its own
process, a fresh `dg.materialize`), with cProfile (on CPU time, not wall) on only while `run_scorer` runs (the
requests, replies, cache and score rows; not the start-up, the cost gate or the checks after it). Prints the
step's CPU seconds, the profiled CPU seconds, and the functions with the most own time; the profile is left in
the copy as step.prof.
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline  # noqa: E402

# bench/pipeline.py's step, with cProfile around each run_scorer call of defs/scoring.py
PROFILED = (
    """
import cProfile, os, time
from mira_dagster.defs import scoring
_run_scorer = scoring.run_scorer
def _profiled(*args, **kwargs):
    prof, cpu = cProfile.Profile(time.process_time), time.process_time()  # CPU time, not wall
    prof.enable()
    try:
        return _run_scorer(*args, **kwargs)
    finally:
        prof.disable()
        prof.dump_stats(os.environ["BENCH_PROFILE"])
        print(f"run_scorer CPU s {time.process_time() - cpu:.2f}", flush=True)
scoring.run_scorer = _profiled
"""
    + pipeline.STEP
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kept", type=Path, help="an n<records> folder bench/pipeline.py --keep left")
    ap.add_argument("--source", default="marco")
    ap.add_argument("--assets", default="student_scores", help="comma-separated, as bench/pipeline.py's STEP takes")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", type=Path, help="keep the copy here (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(dir=args.kept.parent))
    root = work / "home-copy"
    shutil.copytree(args.kept, root, ignore=shutil.ignore_patterns("*.url", "*.log"))
    for gone in ("tables/teacher_labels", "tables/student_scores", "cache/replies"):
        shutil.rmtree(root / "home" / gone, ignore_errors=True)
    prof = root / "step.prof"
    servers = pipeline.Servers(root)
    try:
        env = pipeline.bench_env(root, servers, root / "groups.yaml") | {"BENCH_PROFILE": str(prof)}
        row = pipeline.child([sys.executable, "-c", PROFILED, args.assets, args.source], env, root / "step.log")
    finally:
        servers.stop()
    print(row)
    print("".join(line for line in (root / "step.log").open() if line.startswith("run_scorer CPU")))
    if row["rc"] != 0:
        raise SystemExit(f"the step failed (exit {row['rc']}); its log: {root / 'step.log'}")
    stats = pstats.Stats(str(prof))
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    if args.out is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
