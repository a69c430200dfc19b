"""Peak RSS and CPU of single pipeline steps on homes bench/pipeline.py left behind (--keep), each step its own
process as `mira run` runs it, this code against a baseline checkout of the code, interleaved (issue 25 item 2).

    git worktree add --detach /tmp/base <commit>          # the code to compare against
    .venv/bin/python bench/step_memory.py --homes /tmp/pb/n8000 /tmp/pb/n24000 --baseline /tmp/base \\
        --steps source_groups teacher_judgments,anchor_rubric:2 distillation_dataset:2

A step is its assets joined by "," and, after ":", its partition. Each home is a bench/pipeline.py folder
(groups.yaml, home/); the steps rewrite its outputs (the same ones, from the same inputs). The teacher, student and
embedding endpoints are bench/loopback_server.py processes started here. The baseline runs with its folder first on
PYTHONPATH (this checkout's editable install is not used then; the runs start outside it). Per step and home: wall
s, CPU s, peak RSS (ru_maxrss) of the step's process, for this code and the baseline, `--repeat` times alternating;
then per step the growth from the first home to the last (largest peak over smallest) for both. Prints one JSON
object last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import STEP, Servers  # noqa: E402


def run_step(home: Path, step: str, servers: Servers, code: Path | None) -> dict[str, Any]:
    """One step in its own process (cwd outside any checkout, so PYTHONPATH decides which code runs)."""
    assets, _, partition = step.partition(":")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_", "PYTHONPATH"))}
    env |= servers.env() | {
        "MIRA_CONFIG": str(home / "groups.yaml"),
        "MIRA_HOME": str(home / "home"),
        "DAGSTER_HOME": str(home / "home" / "dagster"),
    }
    if code is not None:
        env["PYTHONPATH"] = str(code)
    t = time.perf_counter()
    with (home / "step_memory.log").open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", STEP, assets, partition], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if (rc := os.waitstatus_to_exitcode(status)) != 0:
        raise SystemExit(
            f"step {step} on {home} ({'baseline' if code else 'this code'}) failed, exit {rc}; log {log.name}"
        )
    return {
        "wall_s": round(time.perf_counter() - t, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--homes", nargs="+", type=Path, required=True, help="smallest first")
    parser.add_argument("--steps", nargs="+", required=True)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare against")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    codes: dict[str, Path | None] = {"this": None} | ({"baseline": args.baseline} if args.baseline else {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(Path(tmp))
        try:
            for step in args.steps:
                for home in args.homes:
                    for i in range(args.repeat):
                        for name, code in codes.items() if i % 2 == 0 else reversed(list(codes.items())):
                            row = {"step": step, "home": home.name, "code": name} | run_step(home, step, servers, code)
                            print(json.dumps(row), flush=True)
                            rows.append(row)
        finally:
            servers.stop()
    growth: dict[str, Any] = {}
    for step in args.steps:
        peaks = {
            (name, home.name): [
                r["peak_rss_mb"] for r in rows if (r["step"], r["code"], r["home"]) == (step, name, home.name)
            ]
            for name in codes
            for home in args.homes
        }
        first, last = args.homes[0].name, args.homes[-1].name
        growth[step] = {
            f"{name}_peak_rss_growth": round(max(peaks[name, last]) / min(peaks[name, first]), 3) for name in codes
        }
        if args.baseline:
            growth[step]["largest_home_peak_this_over_baseline"] = round(
                min(peaks["this", last]) / min(peaks["baseline", last]), 3
            )
    print(json.dumps({"homes": [str(h) for h in args.homes], "runs": rows, "growth": growth}))


if __name__ == "__main__":
    main()
