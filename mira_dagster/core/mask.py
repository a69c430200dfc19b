"""The computed reliability mask: its rule as text, the version naming the rule and the evidence it was applied to,
and the mask itself (sql/reliability_mask.sql, then an imported mask file on top of it or instead of it)."""

from __future__ import annotations

import hashlib

import polars as pl

from mira_dagster.core.config import PipelineSettings
from mira_dagster.core.mask_import import apply_mask_file, mask_file_digest, read_mask_file
from mira_dagster.core.store import Store


def mask_rule(s: PipelineSettings) -> str:
    """The rule in one line, stored with every mask row. Names the imported mask file and its digest, so an edited
    file is a new rule; raises OSError when that file cannot be read."""
    rule = (
        f"mask if MAE > {s.mask_max_mae} or rho < {s.mask_min_rho}; min_heldout {s.min_heldout}; "
        f"group estimate when the source's {s.ci_level:.0%} interval straddles a threshold"
    )
    if s.reliability_mask_file is not None:
        rule += f"; imported mask {s.reliability_mask_file.name} ({s.reliability_mask_mode})"
        rule += f" sha256 {mask_file_digest(s.reliability_mask_file)}"
    return rule


def mask_version(rule: str, reliability: pl.DataFrame) -> str:
    """Names the rule and the reliability estimates it was applied to. The estimates are rounded first: a float's
    last bits (a summation order, a library version) must not make a new version of the same evidence."""
    rounded = reliability.sort("source", "slot").with_columns(pl.col(pl.Float64).round(9))
    evidence = hashlib.sha256(rounded.write_csv().encode()).hexdigest()
    return hashlib.sha256(f"{rule}\n{evidence}".encode()).hexdigest()[:12]


def compute_mask(store: Store, s: PipelineSettings, rule: str, version: str) -> pl.DataFrame:
    """reliability_mask over the stored dim_reliability, with each cell's mask_basis (computed, imported, both).
    Raises MaskFileError when the imported file cannot be used."""
    df = store.query(
        "reliability_mask",
        max_mae=s.mask_max_mae,
        min_rho=s.mask_min_rho,
        min_n=s.min_heldout,
        rule=rule,
        mask_version=version,
    ).with_columns(pl.lit("computed").alias("mask_basis"))
    if s.reliability_mask_file is None:
        return df
    imported = read_mask_file(s.reliability_mask_file)
    return apply_mask_file(df, imported, s.reliability_mask_mode, str(s.reliability_mask_file))
