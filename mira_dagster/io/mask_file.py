"""An imported reliability mask file (CSV, JSON Lines or Parquet; see core/mask_import.py) and its digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from mira_dagster.core.mask_import import MaskFileError, mask_cells


def read_mask_file(path: Path) -> pl.DataFrame:
    """(source, dimension, masked) from a CSV, JSONL or Parquet file, every value as text."""
    if not path.is_file():
        raise MaskFileError(f"reliability_mask_file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pl.read_ndjson(path)
        else:
            df = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # a file polars cannot read: one line, naming it
        raise MaskFileError(f"{path}: cannot read as a mask file: {type(exc).__name__}: {exc}") from exc
    return mask_cells(df, str(path))


def mask_file_digest(path: Path) -> str:
    """The first 12 hex digits of the file's sha256; raises OSError when it cannot be read."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
