"""The records an earlier ingest of a source read, asked batch by batch (DuckDB over its Parquet) for an append."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from mira_dagster.io.store import load_sql


class EarlierRecords:
    """`self(ids)` -> {record_id: "file:line"} of the ids the earlier partition holds; no per-record state here."""

    def __init__(
        self, path: Path, threads: int = 2, memory_limit: str = "512MB", temp_directory: Path | None = None
    ) -> None:
        self.path = str(path)
        self._sql = load_sql("earlier_records")
        config: dict[str, str | int] = {"threads": threads, "memory_limit": memory_limit}
        if temp_directory is not None:  # a spill stays under MIRA_HOME, as the store's own queries do
            config["temp_directory"] = str(temp_directory)
        self._con = duckdb.connect(config=config)

    def __call__(self, ids: list[str]) -> dict[str, str]:
        self._con.register("batch_ids", pa.table({"record_id": pa.array(ids, pa.string())}))
        try:
            rows = self._con.execute(self._sql, {"path": self.path}).fetchall()
        finally:
            self._con.unregister("batch_ids")
        return dict(rows)

    def close(self) -> None:
        self._con.close()
