"""Raw measurements as rows, and the measured tables built from them.

Every timing the harness takes becomes one row of the raw CSV (:data:`RAW_COLUMNS`): what was
run (family, kind, dtype, variant, implementation, grid coordinates), its work, FLOPs and
bytes, how it was timed (samples, inner calls) and the result (median, p10, p90, min, max, in
seconds), with the share of the sampling time other tasks waited for a CPU (``contention``) and how much
slower than its best a reference operator ran around it (``level``); ``single_thread`` marks a
point taken with one thread because every multi-threaded attempt was disturbed.
Rows marked ``held_out`` were not used to build any table (layer blocks, and the
re-measurements of ``ldsim profile check``). :func:`operator_table` and
:func:`collective_table` select and reshape rows into the two formats of
:mod:`simulator.tables`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from simulator.calibrate.operators import Case
from simulator.calibrate.timing import Measurement
from simulator.tables import COLLECTIVE_COLUMNS, DIMS, TABLE_COLUMNS

__all__ = ["RAW_COLUMNS", "case_row", "collective_table", "operator_table", "row"]

RAW_COLUMNS = (
    "family",
    "kind",
    "dtype",
    "variant",
    "impl",
    "d0",
    "d1",
    "d2",
    "d3",
    "coords",
    "work",
    "flops",
    "bytes",
    "reps",
    "inner",
    "median_s",
    "p10_s",
    "p90_s",
    "min_s",
    "max_s",
    "spread",
    "contention",
    "level",
    "single_thread",
    "held_out",
)

#: Families whose rows become operator tables.
TABLE_FAMILIES = ("gemm", "attention", "memory", "embedding", "conv")


def row(
    family: str,
    kind: str,
    dtype: str,
    variant: str,
    impl: str,
    coords: tuple[float, ...],
    coord_names: tuple[str, ...],
    work: float,
    flops: float,
    nbytes: float,
    m: Measurement,
    held_out: bool = False,
) -> dict[str, Any]:
    """One raw row (a dict with :data:`RAW_COLUMNS`)."""
    padded = [*coords, None, None, None, None][:4]
    return {
        "family": family,
        "kind": kind,
        "dtype": dtype,
        "variant": variant,
        "impl": impl,
        "d0": padded[0],
        "d1": padded[1],
        "d2": padded[2],
        "d3": padded[3],
        "coords": " ".join(f"{n}={c:g}" for n, c in zip(coord_names, coords, strict=True)),
        "work": work,
        "flops": flops,
        "bytes": nbytes,
        "reps": m.reps,
        "inner": m.inner,
        "median_s": m.median_s,
        "p10_s": m.p10_s,
        "p90_s": m.p90_s,
        "min_s": m.min_s,
        "max_s": m.max_s,
        "spread": m.spread,
        "contention": m.contention,
        "level": m.level,
        "single_thread": m.single_thread,
        "held_out": held_out,
    }


def case_row(case: Case, m: Measurement, held_out: bool = False) -> dict[str, Any]:
    """The raw row of an operator case."""
    names = DIMS[case.kind][0]
    extra = case.params.get("past_len")
    if case.kind == "attention_prefill" and extra == 0:
        names = (*names[:2], "past_len(0)")  # the no-past row sits at coordinate 1
    return row(
        case.family,
        case.kind,
        case.dtype,
        case.variant,
        case.impl,
        case.coords,
        names,
        case.work,
        case.op.flops,
        case.op.bytes,
        m,
        held_out,
    )


def operator_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The tables CSV (:data:`simulator.tables.TABLE_COLUMNS`) of the fitted operator rows."""
    rows = raw[raw["family"].isin(TABLE_FAMILIES) & ~raw["held_out"].astype(bool)]
    out = pd.DataFrame(
        {
            "kind": rows["kind"],
            "dtype": rows["dtype"],
            "variant": rows["variant"],
            "d0": rows["d0"],
            "d1": rows["d1"],
            "d2": rows["d2"],
            "d3": rows["d3"],
            "work": rows["work"],
            "time_s": rows["median_s"],
            "spread": rows["spread"],
        },
        columns=list(TABLE_COLUMNS),
    )
    for col in ("d0", "d1", "d2", "d3"):
        out[col] = pd.to_numeric(out[col]).round().astype("Int64")
    return out.reset_index(drop=True)


def collective_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The collectives CSV (:data:`simulator.tables.COLLECTIVE_COLUMNS`) of the link rows.

    Link rows keep the link in ``kind``, the operation in ``variant``, the participants in
    ``d0`` and the message bytes in ``d1``.
    """
    rows = raw[(raw["family"] == "link") & ~raw["held_out"].astype(bool)]
    return pd.DataFrame(
        {
            "link": rows["kind"],
            "op": rows["variant"],
            "devices": pd.to_numeric(rows["d0"]).astype(int),
            "bytes": pd.to_numeric(rows["d1"]).astype("int64"),
            "time_s": rows["median_s"],
            "spread": rows["spread"],
        },
        columns=list(COLLECTIVE_COLUMNS),
    ).reset_index(drop=True)
