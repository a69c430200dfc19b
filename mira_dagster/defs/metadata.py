"""Small helpers for the metadata every materialisation reports."""

import base64
from typing import Any

import dagster as dg
import polars as pl
from tabulate import tabulate


def _cell(value: Any, width: int) -> Any:
    if isinstance(value, str):
        flat = " ".join(value.split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return _cell(str(value), width)
    return value


def md_table(df: pl.DataFrame, n: int = 10, width: int = 48) -> dg.MetadataValue:
    """A Markdown table of the first n rows, long text cut to `width` characters."""
    rows = [[_cell(v, width) for v in row] for row in df.head(n).iter_rows()]
    return dg.MetadataValue.md(tabulate(rows, headers=df.columns, tablefmt="github"))


def table_metadata(df: pl.DataFrame, preview_columns: list[str] | None = None, n: int = 10) -> dict[str, Any]:
    preview = df.select(preview_columns) if preview_columns else df
    return {"dagster/row_count": df.height, "preview": md_table(preview, n)}


def md_image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG inlined in Markdown metadata (a data URI), so the UI shows it without any file server."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
