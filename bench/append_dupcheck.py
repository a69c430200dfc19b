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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import SEEN_DICT, SEMI_JOIN, two_ways  # noqa: E402

# built in a process of its own (pipeline.two_ways; the figures before 2026-12-07 had some of the parent's memory)
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
    sides = {"seen_dict": SEEN_DICT, "semi_join": SEMI_JOIN}
    print(json.dumps(two_ways(args.sizes, PARTITION, sides, "{n}.parquet")))


if __name__ == "__main__":
    main()
