"""Reading workload files: locate them, and read numeric columns with clear errors.

A file named in an experiment resolves, in order, as an absolute path, relative to the
experiment file's folder, relative to the current directory, or as one of the traces
bundled with ldsim (``workloads/data/``, e.g. ``azure_llm_2023/AzureLLMInferenceTrace_conv.csv``).
CSV (any line endings) and parquet are read. A missing file, an empty one, a missing column,
a non-numeric or negative value: each is an error naming the file, the column and the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.errors import ConfigError, did_you_mean

__all__ = ["DATA_DIR", "read_numeric_columns", "resolve_data_file"]

#: Traces bundled with ldsim.
DATA_DIR = Path(__file__).resolve().parent / "data"


def resolve_data_file(name: str, base_dir: Path | None, where: str) -> Path:
    """Find the file ``name`` (see the module docstring for the search order)."""
    raw = Path(name).expanduser()
    candidates = (
        [raw]
        if raw.is_absolute()
        else [
            *([base_dir / raw] if base_dir is not None else []),
            Path.cwd() / raw,
            DATA_DIR / raw,
        ]
    )
    for cand in candidates:
        if cand.is_file():
            return cand
    looked = ", ".join(dict.fromkeys(str(c.resolve()) for c in candidates))
    raise ConfigError(f"{where}: file '{name}' not found (looked in: {looked})")


_CACHE: dict[tuple[Path, tuple[str, ...]], dict[str, np.ndarray]] = {}


def read_numeric_columns(path: Path, columns: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """Read ``columns`` of a CSV or parquet file as non-negative integer arrays.

    Results are cached per (file, columns) for the life of the process. Raises
    :class:`ConfigError` naming ``where``, the file, the column and the 1-based line.
    """
    key = (path.resolve(), tuple(columns))
    if key in _CACHE:
        return _CACHE[key]
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{where}: {path}: the file is empty") from None
    except Exception as exc:
        raise ConfigError(f"{where}: {path}: cannot read: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise ConfigError(f"{where}: {path}: the file has a header but no rows")
    out: dict[str, np.ndarray] = {}
    for col in columns:
        if col not in frame.columns:
            known = list(frame.columns)
            raise ConfigError(f"{where}: {path}: no column '{col}'{did_you_mean(col, known, 'columns')}")
        column = frame[col]
        if pd.api.types.is_numeric_dtype(column):
            values = column.astype(float)
        else:  # read as text (pandas may use object or string dtype): parse, marking bad cells NaN
            values = pd.to_numeric(column.astype(str).str.strip(), errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if bad.size:
            line = int(bad[0]) + 2  # 1-based, after the header
            raise ConfigError(
                f"{where}: {path}, line {line}, column '{col}': expected a number,"
                f" got {frame[col].iloc[bad[0]]!r} ({bad.size} such rows)"
            )
        arr = values.to_numpy(dtype=float)
        neg = np.flatnonzero(arr < 0)
        if neg.size:
            raise ConfigError(
                f"{where}: {path}, line {int(neg[0]) + 2}, column '{col}': expected a value >= 0, got {arr[neg[0]]:g}"
            )
        out[col] = np.rint(arr).astype(np.int64)
    _CACHE[key] = out
    return out
