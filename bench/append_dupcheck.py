"""The append path's duplicate check at source scale: peak RSS and seconds of the dict of every earlier record_id
the append path held before issue 25 (`seen_dict`), against the DuckDB semi-join per 2048-id batch that replaced
it (io/earlier.py), on the same earlier partition, each in its own process (os.wait4), same run.

The partition holds the three columns the check reads (record_id: 32 hex digits as ingest writes them,
origin_file, origin_line); 1% of its ids are asked, as for a 1% append of repeats (the worst case for the join).

    .venv/bin/python bench/append_dupcheck.py [--sizes 200000 2000000]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import SEEN_DICT, SEMI_JOIN, child  # noqa: E402

# the partition is built in a process of its own: a child forked from a parent that held the ids would count them
# in its peak RSS (the figures before 2026-12-07 have some of the parent's memory in them)
PARTITION = """
import sys, hashlib, polars as pl
n = int(sys.argv[2])
ids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(n)]
frame = pl.DataFrame({"record_id": ids, "origin_file": "marco.jsonl", "origin_line": range(1, n + 1)})
frame.write_parquet(sys.argv[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    args = parser.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("MIRA_BENCH_TMP")) as tmp:
        log = Path(tmp) / "log"
        for n in sorted(args.sizes):
            path = Path(tmp) / f"{n}.parquet"
            env = dict(os.environ)
            if child([sys.executable, "-c", PARTITION, str(path), str(n)], env, log)["rc"] != 0:
                raise SystemExit(f"building the partition failed; log:\n{log.read_text()[-3000:]}")
            out[n] = {
                "seen_dict": child([sys.executable, "-c", SEEN_DICT, str(path)], env, log),
                "semi_join": child([sys.executable, "-c", SEMI_JOIN, str(path)], env, log),
            }
            print(n, out[n], flush=True)
            for row in out[n].values():
                if row["rc"] != 0:
                    raise SystemExit(f"a check failed at {n:,}; log:\n{log.read_text()[-3000:]}")
    small, large = (out[min(out)], out[max(out)])
    growth = {k: round(large[k]["peak_rss_mb"] / small[k]["peak_rss_mb"], 3) for k in ("seen_dict", "semi_join")}
    print(json.dumps({"sizes": sorted(out), "runs": out, "peak_rss_growth_largest_over_smallest": growth}))


if __name__ == "__main__":
    main()
