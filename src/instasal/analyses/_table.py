"""Reading and checking cohort lesion tables (the columns of SPEC §2's lesion table).

A cohort lesion table is the concatenation of per-subject ``<subject>_lesions.tsv`` files with a
``subject`` column added. Every analysis names the columns it needs; a missing one is an error that
names the column and the table's source file (kept in ``table.attrs["source"]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from instasal.errors import InstasalError
from instasal.typing import FloatArray

__all__ = [
    "DOMAIN_TYPES",
    "LesionTableError",
    "channel_names",
    "finite_values",
    "read_lesion_table",
    "require_columns",
    "select_types",
]

DOMAIN_TYPES: tuple[str, ...] = ("TP", "FP", "FN", "TN")


class LesionTableError(InstasalError, ValueError):
    """A lesion table is missing, unreadable, or lacks a column an analysis needs."""


def _source(table: pd.DataFrame) -> str:
    return str(table.attrs.get("source", "the lesion table (in memory)"))


def require_columns(table: pd.DataFrame, columns: Iterable[str]) -> None:
    """Raise :class:`LesionTableError` naming the first missing column and the table's file."""
    for column in columns:
        if column not in table.columns:
            raise LesionTableError(
                f"{_source(table)}: no column {column!r} "
                f"(columns are {', '.join(map(str, table.columns))})"
            )


def read_lesion_table(path: Path) -> pd.DataFrame:
    """Read a cohort lesion table (TSV, ``n/a`` for missing values) and remember its path.

    Parameters
    ----------
    path
        A tab-separated lesion table as the explain pipeline and the cohort runner write it.

    Returns
    -------
    pandas.DataFrame
        The table, with ``attrs["source"]`` set to ``path`` so later errors can name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise LesionTableError(f"{path}: lesion table not found")
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise LesionTableError(f"{path}: cannot read as a TSV lesion table ({error})") from None
    table.attrs["source"] = str(path)
    require_columns(table, ("type", "volume_mm3"))
    return table


def channel_names(table: pd.DataFrame) -> tuple[str, ...]:
    """Channel names in table order, from the ``peak_<channel>`` columns (SPEC §2)."""
    names = [
        str(column).removeprefix("peak_")
        for column in table.columns
        if str(column).startswith("peak_") and not str(column).endswith("_voxel")
    ]
    if not names:
        raise LesionTableError(f"{_source(table)}: no peak_<channel> saliency column")
    return tuple(names)


def select_types(table: pd.DataFrame, types: Sequence[str]) -> pd.DataFrame:
    """The rows whose ``type`` is one of ``types`` (a filtered copy; ``table`` is not changed)."""
    require_columns(table, ("type",))
    return table.loc[table["type"].astype(str).isin(list(types))]


def finite_values(table: pd.DataFrame, column: str) -> tuple[FloatArray, int]:
    """The finite values of ``column`` as float64 and how many were missing or not finite."""
    require_columns(table, (column,))
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    return values[finite], int((~finite).sum())
