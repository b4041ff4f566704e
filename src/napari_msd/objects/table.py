"""The per-object table: columns of equal length, rows as dicts, CSV without pandas (pandas optional)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NapariMsdError, one_line


class TableWriteError(NapariMsdError):
    """A table cannot be written (the file exists, or the folder is not writable); one line saying what to do."""


@dataclass
class ObjectTable:
    """One row per object: ``columns`` maps a column name to an array (all of one length), ``units`` a column
    name to its unit (``"px"``, ``"nm3"``, ...; absent for ids, names and intensities)."""

    columns: dict[str, np.ndarray]
    units: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"table columns have different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Each object as ``{column: value}`` with plain Python values (``None`` for missing numbers)."""
        names = self.names
        for values in zip(*(self.columns[n].tolist() for n in names)):
            yield {n: (None if isinstance(v, float) and math.isnan(v) else v) for n, v in zip(names, values)}

    def to_pandas(self) -> Any:
        """A pandas DataFrame of the table (needs pandas)."""
        import pandas as pd

        return pd.DataFrame({n: np.asarray(v) for n, v in self.columns.items()})

    def select(self, keep: np.ndarray) -> ObjectTable:
        """The rows where ``keep`` (a boolean array or indices) selects them."""
        return ObjectTable({n: v[keep] for n, v in self.columns.items()}, dict(self.units))


def write_csv(table: ObjectTable, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``table`` as CSV (a header row, then one row per object; empty cells for missing numbers).

    An existing file is replaced only with ``overwrite``; the file appears whole or not at all (written to a
    temporary file beside it, then renamed).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if path.is_dir():
        raise TableWriteError(f"{path} is a folder; give a file name for the table, e.g. {path / 'objects.csv'}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise TableWriteError(f"{path} already exists; pass --overwrite to replace it or choose another file name")
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(table.names)
            for row in table.rows():
                writer.writerow(_cell(v) for v in row.values())
        if not overwrite and path.exists():
            raise TableWriteError(f"{path} appeared while the table was written; choose another file name")
        os.replace(partial, path)
    except OSError as err:
        raise TableWriteError(f"cannot write {path} ({one_line(err)}); choose a writable folder") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value
