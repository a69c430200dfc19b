"""The reliability mask's rule as text, the version naming the rule and the evidence it was applied to, and an
imported mask file applied on top of the computed mask (sql/reliability_mask.sql) or instead of it."""

from __future__ import annotations

import hashlib

import polars as pl

from mira_dagster.core.config import PipelineSettings
from mira_dagster.core.mask_import import apply_mask_file


def mask_rule(s: PipelineSettings, mask_file_digest: str | None = None) -> str:
    """The rule in one line, stored with every mask row. Names the imported mask file and its digest (of its bytes),
    so an edited file is a new rule."""
    rule = (
        f"mask if MAE > {s.mask_max_mae} or rho < {s.mask_min_rho}; min_heldout {s.min_heldout}; "
        f"group estimate when the source's {s.ci_level:.0%} interval straddles a threshold"
    )
    if s.reliability_mask_file is not None:
        if mask_file_digest is None:  # without it an edited file would not make a new mask version
            raise ValueError(f"mask_rule: the digest of {s.reliability_mask_file} is needed (io/mask_file)")
        rule += f"; imported mask {s.reliability_mask_file.name} ({s.reliability_mask_mode})"
        rule += f" sha256 {mask_file_digest}"
    return rule


def mask_version(rule: str, reliability: pl.DataFrame) -> str:
    """Names the rule and the reliability estimates it was applied to. The estimates are rounded first: a float's
    last bits (a summation order, a library version) must not make a new version of the same evidence."""
    rounded = reliability.sort("source", "slot").with_columns(pl.col(pl.Float64).round(9))
    evidence = hashlib.sha256(rounded.write_csv().encode()).hexdigest()
    return hashlib.sha256(f"{rule}\n{evidence}".encode()).hexdigest()[:12]


def apply_imported_mask(computed: pl.DataFrame, s: PipelineSettings, imported: pl.DataFrame | None) -> pl.DataFrame:
    """The computed mask (sql/reliability_mask.sql) with each cell's mask_basis (computed, imported, both), the
    imported mask file's cells (io/mask_file.read_mask_file) applied. Raises MaskFileError when they cannot be."""
    df = computed.with_columns(pl.lit("computed").alias("mask_basis"))
    if imported is None:
        return df
    return apply_mask_file(df, imported, s.reliability_mask_mode, str(s.reliability_mask_file))
