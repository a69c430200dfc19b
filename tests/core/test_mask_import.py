"""A reliability mask from elsewhere, applied on top of or instead of the computed one."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.mask_import import MaskFileError, apply_mask_file
from mira_dagster.io.mask_file import read_mask_file

COMPUTED = pl.DataFrame(
    {
        "source": ["a", "a", "a", "b", "b", "b"],
        "group_id": ["2"] * 6,
        "slot": [1, 2, 3, 1, 2, 3],
        "dim_name": ["Correctness", "Clarity", "Rigor"] * 2,
        "masked": [False, True, False, False, False, True],
        "reason": ["", "MAE 2.10 > 1.50", "", "", "", "rho 0.10 < 0.30"],
    },
    schema_overrides={"slot": pl.Int32},
)


def _mask(tmp_path: Path, name: str, text: str) -> pl.DataFrame:
    path = tmp_path / name
    path.write_text(text)
    return read_mask_file(path)


def test_union_masks_what_either_masks_and_records_the_basis(tmp_path: Path) -> None:
    imported = _mask(tmp_path, "m.csv", "source,dimension,masked\na,A1,true\na,Clarity,false\nb,3,yes\n")
    out = apply_mask_file(COMPUTED, imported, "union", "m.csv").sort("source", "slot")
    assert out["masked"].to_list() == [True, True, False, False, False, True]
    assert out["mask_basis"].to_list() == ["imported", "computed", "computed", "computed", "computed", "both"]
    assert out["reason"][0] == "imported mask (union): masked"
    assert out["reason"][1] == "MAE 2.10 > 1.50; imported mask (union): kept"  # union cannot unmask


def test_replace_decides_the_cells_it_lists(tmp_path: Path) -> None:
    imported = _mask(
        tmp_path,
        "m.jsonl",
        '{"source": "a", "dimension": "Clarity", "masked": false}\n'
        '{"source": "b", "dimension": "A1", "masked": true}\n',
    )
    out = apply_mask_file(COMPUTED, imported, "replace", "m.jsonl").sort("source", "slot")
    assert out["masked"].to_list() == [False, False, False, True, False, True]
    assert out["mask_basis"].to_list() == ["computed", "imported", "computed", "imported", "computed", "computed"]


def test_parquet_files_are_read_too(tmp_path: Path) -> None:
    pl.DataFrame({"source": ["a"], "dimension": ["A3"], "masked": [True]}).write_parquet(tmp_path / "m.parquet")
    out = apply_mask_file(COMPUTED, read_mask_file(tmp_path / "m.parquet"), "union", "m").sort("source", "slot")
    assert out["masked"][2] is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source,dimension,masked\nc,A1,true\n", "row 1: no cell ('c', 'A1')"),
        ("source,dimension,masked\na,Elegance,true\n", "row 1: no cell ('a', 'Elegance')"),
        ("source,dimension,masked\na,A1,maybe\n", "row 1: masked='maybe' is not true/false"),
        ("source,dim,masked\na,A1,true\n", "missing column(s) ['dimension']"),
    ],
)
def test_rows_that_cannot_apply_are_an_error_naming_them(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MaskFileError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        apply_mask_file(COMPUTED, _mask(tmp_path, "m.csv", text), "union", "m.csv")
