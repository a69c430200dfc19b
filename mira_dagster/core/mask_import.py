"""A reliability mask from elsewhere (the cards tell consumers to re-apply the project's mask), applied to the
computed one.

The file is CSV, JSON Lines or Parquet with one row per cell: `source`, `dimension` (the slot, as `4` or `A4`, or the
dimension's name in that source's group) and `masked` (true/false, 1/0, yes/no). Modes:
- `union` (default): a cell is masked when the computed mask or the file masks it ("on top of");
- `replace`: the file decides every cell it lists ("instead of"); cells it does not list keep the computed value.
Every cell records its basis: `computed`, `imported` or `both` (union, both masking), and rows of the file that match
no cell are an error (a mask meant to apply must not silently not apply).
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from mira_dagster.core.rubric import N_SLOTS, slot_number

MaskMode = Literal["union", "replace"]
_TRUE = {"true", "1", "yes", "y", "t", "masked"}
_FALSE = {"false", "0", "no", "n", "f", "kept", ""}


class MaskFileError(ValueError):
    """The mask file cannot be used; the message names the file and the rows."""


def mask_cells(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """(source, dimension, masked) of a mask file's frame, every value as text; `where` names the file."""
    missing = {"source", "dimension", "masked"} - set(df.columns)
    if missing:
        raise MaskFileError(f"{where}: missing column(s) {sorted(missing)} (need source, dimension, masked)")
    return df.select(pl.col("source", "dimension", "masked").cast(pl.String))


def apply_mask_file(computed: pl.DataFrame, imported: pl.DataFrame, mode: MaskMode, where: str) -> pl.DataFrame:
    """The computed mask (source, slot, dim_name, masked, reason, ...) with the imported cells applied, and a
    `mask_basis` column. Raises MaskFileError for rows that match no cell or hold no boolean."""
    rows = _resolve(computed, imported, where)
    out = computed.join(rows, on=["source", "slot"], how="left")
    listed = pl.col("imported_masked").is_not_null()
    if mode == "replace":
        masked = pl.when(listed).then(pl.col("imported_masked")).otherwise(pl.col("masked"))
        basis = pl.when(listed).then(pl.lit("imported")).otherwise(pl.lit("computed"))
    else:
        masked = pl.col("masked") | pl.col("imported_masked").fill_null(False)
        basis = (
            pl.when(pl.col("masked") & pl.col("imported_masked").fill_null(False))
            .then(pl.lit("both"))
            .when(pl.col("imported_masked").fill_null(False))
            .then(pl.lit("imported"))
            .otherwise(pl.lit("computed"))
        )
    note = pl.when(listed).then(
        pl.concat_str(
            pl.lit(f"imported mask ({mode}): "),
            pl.when(pl.col("imported_masked")).then(pl.lit("masked")).otherwise(pl.lit("kept")),
        )
    )
    return out.with_columns(
        masked.alias("masked"),
        basis.alias("mask_basis"),
        pl.concat_str(
            [pl.when(pl.col("reason") != "").then(pl.col("reason")), note], separator="; ", ignore_nulls=True
        ).alias("reason"),
    ).drop("imported_masked")


def _resolve(computed: pl.DataFrame, imported: pl.DataFrame, where: str) -> pl.DataFrame:
    """(source, slot, imported_masked) for every row of the file; errors list the rows that do not resolve."""
    names = {(r["source"], r["dim_name"]): r["slot"] for r in computed.iter_rows(named=True)}
    cells = {(r["source"], r["slot"]) for r in computed.iter_rows(named=True)}
    resolved, problems = [], []
    for i, row in enumerate(imported.iter_rows(named=True), 1):
        source, dim, flag = row["source"] or "", (row["dimension"] or "").strip(), (row["masked"] or "").strip().lower()
        slot = _slot(dim) or names.get((source, dim))  # "4" / "A4", else the dimension's name
        if flag not in _TRUE | _FALSE:
            problems.append(f"row {i}: masked={row['masked']!r} is not true/false")
        elif slot is None or (source, slot) not in cells:
            problems.append(f"row {i}: no cell ({source!r}, {dim!r})")
        else:
            resolved.append({"source": source, "slot": slot, "imported_masked": flag in _TRUE})
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise MaskFileError(f"{where}: {len(problems)} row(s) cannot be applied: {shown}")
    schema = {"source": pl.String, "slot": computed.schema["slot"], "imported_masked": pl.Boolean}
    # a cell listed twice: the last row wins, as a later line of a file would be read
    return pl.DataFrame(resolved, schema=schema).unique(["source", "slot"], keep="last")


def _slot(dimension: str) -> int | None:
    slot = slot_number(dimension)
    return slot if slot is not None and 1 <= slot <= N_SLOTS else None
