"""The teacher sample of a large source: every record_id into Python and core/sampling.teacher_sample's hashes there
(`python_rule`, what teacher_labels did before) against DuckDB drawing it (`duckdb`, io/sending.teacher_split,
sql/teacher_sample.sql), on the same raw_records partition, each in its own process (peak RSS, CPU s), same run.
The two must return the same sample; the partition holds record_id only.

    .venv/bin/python bench/teacher_sample.py [--sizes 200000 2000000]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import two_ways  # noqa: E402

BUILD = """
import sys, hashlib, polars as pl
from mira_dagster.io.store import Store
ids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(int(sys.argv[2]))]
Store(sys.argv[1]).write("raw_records", pl.DataFrame({"source": "s", "record_id": ids}), "s")
"""
SETUP = """
import sys, hashlib, polars as pl
from mira_dagster.core.config import PipelineSettings
from mira_dagster.io.store import Store
store, p = Store(sys.argv[1]), PipelineSettings(teacher_sample_max=2000)
"""
PYTHON_RULE = (
    SETUP
    + """
from mira_dagster.core.sampling import teacher_sample
ids = store.query_sql("SELECT record_id FROM raw_records WHERE source = 's'")["record_id"].to_list()
sample = teacher_sample(ids, fraction=p.teacher_sample_fraction, minimum=p.teacher_sample_min,
                        heldout_fraction=p.heldout_fraction, seed=p.seed, maximum=p.teacher_sample_max)
print(hashlib.sha256(repr(sorted(sample.items())).encode()).hexdigest())
"""
)
DUCKDB = (
    SETUP
    + """
from types import SimpleNamespace
from mira_dagster.io.sending import teacher_split
sample = teacher_split(SimpleNamespace(pipeline=p), store, "s")
print(hashlib.sha256(repr(sorted(sample.items())).encode()).hexdigest())
"""
)


def same_sample(log: str, n: int) -> None:
    """Both sides printed the digest of their sample: they must agree."""
    digests = [line for line in log.splitlines() if len(line) == 64]
    if len(set(digests[-2:])) != 1:
        raise SystemExit(f"the two samples differ at {n:,}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    args = parser.parse_args()
    sides = {"python_rule": PYTHON_RULE, "duckdb": DUCKDB}
    print(json.dumps(two_ways(args.sizes, BUILD, sides, "h{n}", check=same_sample)))


if __name__ == "__main__":
    main()
