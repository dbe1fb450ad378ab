"""``ldsim profile check``: how well a profile predicts this machine on shapes it was not fitted to.

The check derives **held-out shapes** from the profile's own tables -- geometric midpoints
between adjacent grid coordinates in every dimension (:func:`simulator.calibrate.grids.held_out`),
other batch sizes for convolutions and embedding bags, other message sizes for collectives --
re-measures them on the current machine with the harness's timing, and predicts each with the
cost model: :func:`simulator.cost.operator_cost` on the ``Operator`` that
:mod:`simulator.models` would build at that shape. It also times the end-to-end layer blocks
(:mod:`.blocks`) and compares them with the sum of their operators' predictions.

Beside the held-out shapes it re-measures a few **anchors** -- points on the grid -- per
family. Their ratio to the profile (``drift``) separates a change of the machine since the
calibration (another load, another clock) from the tables' error between grid points; both the
raw and the drift-corrected errors are reported.

Memory-bound operators are predicted from the table of their implementation (``elementwise``
variants such as ``act``, ``norm``'s ``layer_norm``); the family ``memory-bound (as tagged)``
shows the error when the decoder operators they implement are priced as
:mod:`simulator.models` tags them today (an untagged operator is priced from its kind's
default table).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.calibrate.grids import held_out, midpoints

__all__ = [
    "FAMILIES",
    "CheckResult",
    "CheckRow",
    "FamilyStats",
    "check_here",
    "check_profile",
    "model_coverage",
    "plot_check",
]

#: Families in report order.
FAMILIES = (
    "GEMM",
    "attention",
    "memory-bound",
    "memory-bound (as tagged)",
    "conv",
    "embedding",
    "collectives",
    "blocks",
)


@dataclass(frozen=True)
class CheckRow:
    """One re-measured shape: what it is, the prediction and the measurement (seconds).

    ``anchor``: a point on the calibration grid (measures drift) rather than a held-out one;
    ``spread``: relative spread (p90 - p10) / median of the measurement; ``calibrated``:
    whether a measured table priced the prediction; ``note``: for blocks, what the torch code
    runs that ldsim's operators omit; ``contention``: share of the measurement during which
    other tasks waited for a CPU, ``level``: how much slower than its best the reference
    operator ran around it (NaN where unknown; see :mod:`.timing`); ``anchor_predicted_s`` and
    ``anchor_measured_s``: the profile's and today's time of the paired anchor, the nearest grid
    point measured right before this shape (for a block: the sums over its operators).
    """

    family: str
    label: str
    predicted_s: float
    measured_s: float
    spread: float
    anchor: bool = False
    calibrated: bool = True
    note: str = ""
    contention: float = float("nan")
    level: float = float("nan")
    anchor_predicted_s: float = float("nan")
    anchor_measured_s: float = float("nan")

    @property
    def error(self) -> float:
        """Relative error of the prediction: predicted / measured - 1."""
        return self.predicted_s / self.measured_s - 1.0

    @property
    def paired(self) -> bool:
        """True when a paired anchor was measured right before this row."""
        return self.anchor_measured_s == self.anchor_measured_s  # not NaN

    @property
    def paired_error(self) -> float:
        """The error with the machine's level factored out: the predicted ratio of this shape to
        its paired anchor over the measured ratio, minus 1 (for a block: the sum of its
        operators measured one by one now, over the block, minus 1). NaN without a pair."""
        if not self.paired:
            return float("nan")
        return (self.predicted_s / self.anchor_predicted_s) / (self.measured_s / self.anchor_measured_s) - 1.0


@dataclass(frozen=True)
class FamilyStats:
    """Summary of one family's held-out rows.

    ``median_abs_error`` and ``p90_abs_error``: of ``|predicted / measured - 1|``;
    ``median_spread``: median relative spread of the measurements; ``drift``: median ratio
    measured-now / profile over the family's anchors (1.0 when it has none);
    ``median_abs_error_drift``: the median of :attr:`CheckRow.paired_error` (the error with the
    machine's drift factored out point by point; for blocks, the operators measured one by one
    today against the block).
    """

    family: str
    count: int
    median_abs_error: float
    p90_abs_error: float
    median_spread: float
    drift: float
    median_abs_error_drift: float
    uncalibrated: int = 0

    @property
    def tolerance(self) -> float:
        """The error a check of this family may show from measurement noise alone:
        ``max(0.10, 2 x median spread)``."""
        return max(0.10, 2.0 * self.median_spread)


@dataclass
class CheckResult:
    """Everything ``ldsim profile check`` measured and predicted.

    ``rows``: every re-measured shape (held-out and anchors); ``families``: a
    :class:`FamilyStats` per family present; ``plot_path``/``csv_path``: where the plot and the
    rows were written (or ``None``); ``seconds``: wall time of the measurements; ``notes``:
    shapes that could not be measured, and the CPU load of other processes meanwhile;
    ``coverage``: :func:`model_coverage` of the profile.
    """

    profile: str
    device: str
    rows: list[CheckRow]
    families: dict[str, FamilyStats] = field(default_factory=dict)
    plot_path: Path | None = None
    csv_path: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    coverage: list[str] = field(default_factory=list)

    def family(self, name: str) -> FamilyStats:
        """The summary of family ``name`` (``KeyError`` if nothing of it was measured)."""
        return self.families[name]

    def disturbed_share(self, max_contention: float = 0.05, max_level: float = 1.5) -> float:
        """Share of the measurements that other work visibly slowed: other tasks waited for a
        CPU more than ``max_contention`` of the time, or the reference operator ran more than
        ``max_level`` times slower than its best (see :mod:`.timing`)."""
        if not self.rows:
            return 0.0
        bad = sum(r.contention > max_contention or r.level > max_level for r in self.rows)
        return bad / len(self.rows)

    def blocks(self) -> list[CheckRow]:
        """The layer-block rows."""
        return [r for r in self.rows if r.family == "blocks"]

    def table(self) -> str:
        """The predicted-vs-measured table, as printed by the command."""
        lines = [
            f"profile check of {self.profile} on {self.device} ({self.seconds:.0f} s of measurements;"
            f" {self.disturbed_share():.0%} of them disturbed by other work)",
            f"{'family':<25} {'n':>4} {'median|err|':>11} {'p90|err|':>9} {'spread':>7} {'drift':>6}"
            f" {'paired median|err|':>19}",
        ]
        for name in FAMILIES:
            s = self.families.get(name)
            if s is None:
                continue
            extra = f"  ({s.uncalibrated} priced by roofline)" if s.uncalibrated else ""
            lines.append(
                f"{name:<25} {s.count:>4} {s.median_abs_error:>11.1%} {s.p90_abs_error:>9.1%} {s.median_spread:>7.1%}"
                f" {s.drift:>6.3f} {s.median_abs_error_drift:>19.1%}{extra}"
            )
        lines.append(
            "  median|err|: the profile's prediction vs today's measurement; drift: today's time over the"
            " profile's at the grid anchors; paired: the error with that drift factored out point by point"
            " (each held-out shape against its nearest grid point, measured just before it)"
        )
        blocks = self.blocks()
        if blocks:
            lines.append(
                "layer blocks: ldsim's operators summed (predicted from the profile; measured one by one today)"
            )
            lines.append("              vs the whole block measured today:")
            for r in blocks:
                note = f"  [not in ldsim's operators: {r.note}]" if r.note else ""
                lines.append(
                    f"  {r.label:<34} predicted {r.predicted_s * 1e3:8.3f} ms ({r.error:+6.1%})"
                    f"  operators today {r.anchor_measured_s * 1e3:8.3f} ms ({r.paired_error:+6.1%})"
                    f"  block {r.measured_s * 1e3:8.3f} ms (spread {r.spread:4.1%}){note}"
                )
        if self.coverage:
            lines.append("operator kinds of each model family, as this profile prices them:")
            lines += [f"  {line}" for line in self.coverage]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _stats(rows: list[CheckRow]) -> dict[str, FamilyStats]:
    out: dict[str, FamilyStats] = {}
    for name in FAMILIES:
        fam = [r for r in rows if r.family == name]
        held = [r for r in fam if not r.anchor]
        if not held:
            continue
        anchors = [r for r in fam if r.anchor]
        drift = float(np.median([r.measured_s / r.predicted_s for r in anchors])) if anchors else 1.0
        if name == "blocks":
            drift = float(np.median([r.anchor_measured_s / r.anchor_predicted_s for r in held if r.paired] or [1.0]))
        errors = np.abs([r.error for r in held])
        corrected = np.abs([r.paired_error if r.paired else r.predicted_s / drift / r.measured_s - 1.0 for r in held])
        out[name] = FamilyStats(
            name,
            len(held),
            float(np.median(errors)),
            float(np.percentile(errors, 90)),
            float(np.median([r.spread for r in held])),
            drift,
            float(np.median(corrected)),
            sum(not r.calibrated for r in held),
        )
    return out


def model_coverage(profile: Any) -> list[str]:
    """Which operator kinds of each shipped model family ``profile`` prices from its tables.

    One line per (model, dtype) for every dtype the profile has GEMM tables for: the kinds
    priced from a measured table, those priced through another kind's table (a convolution
    of an unmeasured geometry as its implicit GEMM), and those left to the roofline with the
    profile's default efficiencies. Pure: needs no torch.
    """
    from simulator.cost import Deployment, ModelCost
    from simulator.models import bert_base, dlrm_criteo_kaggle, llama3_8b, mixtral_8x7b, resnet50

    dtypes = sorted({dtype for kind, dtype, _ in profile.table_keys() if kind == "gemm"})
    lines = []
    for make in (resnet50, bert_base, llama3_8b, mixtral_8x7b, dlrm_criteo_kaggle):
        arch = make()
        for dtype in dtypes:
            cost = ModelCost(Deployment(arch, dtype), profile)
            if arch.autoregressive:
                cost.iteration([(256, 256)], 8, 8 * 512)
                cost.iteration([], 8, 8 * 1024)
            elif arch.family == "encoder":
                cost.batch(8, 128)
            else:
                cost.batch(8)
            parts = [f"tables: {', '.join(sorted(cost.calibrated_kinds)) or '-'}"]
            if cost.fallback_kinds:
                parts.append("via another table: " + ", ".join(f"{k} as {v}" for k, v in cost.fallback_kinds.items()))
            if cost.uncalibrated_kinds:
                parts.append(f"roofline: {', '.join(sorted(cost.uncalibrated_kinds))}")
            lines.append(f"{arch.name} {dtype}: {'; '.join(parts)}")
    return lines


# ---- in the measuring process -------------------------------------------------------------


def _threads_of(profile: Any) -> int | None:
    match = re.search(r"(\d+) thread", profile.provenance.measured.device if profile.provenance.measured else "")
    return int(match.group(1)) if match else None


def check_here(
    profile: str,
    quick: bool,
    device: str | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The measurements of :func:`check_profile`, run inside the measuring process; returns
    ``{"rows": [...], "device": ..., "seconds": ...}`` (JSON-able)."""
    from simulator.calibrate.device import probe_dtypes, require_torch, resolve_target, steady_allocator
    from simulator.calibrate.grids import grid_for
    from simulator.calibrate.harness import Session
    from simulator.calibrate.timing import FULL, QUICK
    from simulator.hardware import load_profile

    start = time.perf_counter()
    require_torch("ldsim profile check")
    prof = load_profile(profile)
    if not prof.calibrated:
        from simulator.errors import LdsimError

        raise LdsimError(f"{prof.path}: has no measured tables to check (provenance.status: {prof.provenance.status})")
    measured_on = prof.provenance.measured.device if prof.provenance.measured else ""
    device = device or ("cuda" if "cuda" in measured_on else "cpu")
    target = resolve_target(device, threads or (None if "cuda" in device else _threads_of(prof)))
    probe_dtypes(target)
    session = Session(target, grid_for(target.kind, quick), QUICK if quick else FULL, progress, quick)
    rows: list[dict[str, Any]] = []
    seed = 12345
    with steady_allocator(target):
        session.start_gate()
        with session.section("GEMM"):
            rows += _check_gemm(session, prof, 6 if quick else 16, seed)
        with session.section("attention"):
            rows += _check_attention(session, prof, 2 if quick else 5, seed)
        with session.section("memory"):
            rows += _check_memory(session, prof, 3 if quick else 6, seed)
        with session.section("embedding"):
            rows += _check_embedding(session, prof, 3 if quick else 6, seed)
        with session.section("conv"):
            rows += _check_conv(session, prof, 6 if quick else 100, seed)
        with session.section("collectives"):
            rows += _check_collectives(session, prof)
        with session.section("blocks"):
            rows += _check_blocks(session, prof)
    notes = [*session.notes, session.load_note()]
    return {
        "rows": rows,
        "device": target.describe(),
        "seconds": time.perf_counter() - start,
        "notes": [n for n in notes if n],
    }


def _row(
    family: str,
    label: str,
    predicted: tuple[float, bool],
    m: Any,
    anchor: bool = False,
    note: str = "",
    pair: tuple[float, float] = (float("nan"), float("nan")),
) -> dict[str, Any]:
    return {
        "family": family,
        "label": label,
        "predicted_s": predicted[0],
        "measured_s": m.median_s,
        "spread": m.spread,
        "anchor": anchor,
        "calibrated": predicted[1],
        "note": note,
        "contention": getattr(m, "contention", float("nan")),
        "level": getattr(m, "level", float("nan")),
        "anchor_predicted_s": pair[0],
        "anchor_measured_s": pair[1],
    }


def _nearest(value: float, axis: Any) -> int:
    """The value of ``axis`` nearest to ``value`` in log space, the larger one on a tie (a
    midpoint's two neighbours are equally near; the larger operator is the steadier anchor)."""
    values = np.sort(np.asarray(axis, dtype=np.float64))[::-1]
    distance = np.round(np.abs(np.log2(values) - np.log2(max(value, 1.0))), 6)
    return int(values[np.argmin(distance)])


def _measure_cases(
    session: Any, prof: Any, family: str, cases: list[Any], anchors: list[Any] | None = None
) -> list[dict[str, Any]]:
    """Time each held-out case right after its paired anchor (``anchors[i]``, a grid point);
    record both (the anchor as an anchor row) with the profile's predictions."""
    from simulator.cost import operator_cost

    rows = []
    for i, case in enumerate(cases):
        anchor = anchors[i] if anchors is not None else None
        try:
            m_anchor = session.time_case(anchor) if anchor is not None else None
            m = session.time_case(case)
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
            session.notes.append(f"{case.label()}: {exc}")
            continue
        pair = (float("nan"), float("nan"))
        if anchor is not None and m_anchor is not None:
            anchor_predicted = operator_cost(anchor.op, prof, anchor.dtype)
            rows.append(_row(family, anchor.label(), anchor_predicted, m_anchor, anchor=True))
            pair = (anchor_predicted[0], m_anchor.median_s)
        rows.append(_row(family, case.label(), operator_cost(case.op, prof, case.dtype), m, pair=pair))
        tagged = case.as_tagged() if family == "memory-bound" else None
        if tagged is not None:
            predicted = operator_cost(tagged, prof, case.dtype)
            tagged_pair = pair
            if anchor is not None and m_anchor is not None:
                anchor_tagged = anchor.as_tagged()
                if anchor_tagged is not None:
                    tagged_pair = (operator_cost(anchor_tagged, prof, anchor.dtype)[0], m_anchor.median_s)
            rows.append(_row("memory-bound (as tagged)", case.label(), predicted, m, pair=tagged_pair))
    return rows


def _check_gemm(session: Any, prof: Any, limit: int, seed: int) -> list[dict[str, Any]]:
    from simulator.calibrate.operators import gemm_case

    rows = []
    for kind, dtype, variant in prof.table_keys():
        if kind != "gemm" or dtype not in session.target.dtypes:
            continue
        table = prof.table(kind, dtype, variant)
        ms, ns, ks = (list(a.astype(int)) for a in table.axes)
        points = held_out([midpoints(ms), midpoints(ns, 16), midpoints(ks, 16)], limit, seed)
        cases = [gemm_case(m, n, k, dtype) for m, n, k in points]
        anchors = [gemm_case(_nearest(m, ms), _nearest(n, ns), _nearest(k, ks), dtype) for m, n, k in points]
        rows += _measure_cases(session, prof, "GEMM", cases, anchors)
    return rows


def _check_attention(session: Any, prof: Any, limit: int, seed: int) -> list[dict[str, Any]]:
    from simulator.calibrate.operators import attention_decode_case, attention_encoder_case, attention_prefill_case

    rows = []
    for kind, dtype, variant in prof.table_keys():
        if not kind.startswith("attention") or dtype not in session.target.dtypes:
            continue
        table = prof.table(kind, dtype, variant)
        hd = int(variant.removeprefix("hd"))
        axes = [list(a.astype(int)) for a in table.axes]
        if kind == "attention_prefill":
            pasts = [0, *midpoints(axes[2][1:], 8)]  # the first past cell joins "no past" to a past
            points = held_out([midpoints(axes[0]), midpoints(axes[1], 8), pasts], limit, seed)
            cases = [attention_prefill_case(bh, q, past, hd, dtype) for bh, q, past in points]
            anchors = []
            for bh, q, past in points:
                near = 0 if past == 0 else _nearest(past, axes[2][1:])  # coordinate 1 is "no past"
                anchors.append(attention_prefill_case(_nearest(bh, axes[0]), _nearest(q, axes[1]), near, hd, dtype))
        elif kind == "attention_encoder":
            points = held_out([midpoints(axes[0]), midpoints(axes[1], 8)], limit, seed)
            cases = [attention_encoder_case(bh, s, hd, dtype) for bh, s in points]
            anchors = [
                attention_encoder_case(_nearest(bh, axes[0]), _nearest(s, axes[1]), hd, dtype) for bh, s in points
            ]
        else:
            points = held_out([midpoints(axes[0]), midpoints(axes[1], 8)], limit, seed)
            cases = [attention_decode_case(bkv, kv, hd, dtype) for bkv, kv in points]
            anchors = [
                attention_decode_case(_nearest(b, axes[0]), _nearest(kv, axes[1]), hd, dtype) for b, kv in points
            ]
        rows += _measure_cases(session, prof, "attention", cases, anchors)
    return rows


def _spread_picks(values: list[int], limit: int) -> list[int]:
    """Up to ``limit`` of ``values``, evenly spread (first and last included)."""
    if not values:
        return []
    index = np.linspace(0, len(values) - 1, min(limit, len(values))).round().astype(int)
    return sorted({values[i] for i in index})


def _check_memory(session: Any, prof: Any, limit: int, seed: int) -> list[dict[str, Any]]:
    from simulator.calibrate.operators import MEMORY_IMPLS, memory_case
    from simulator.models import dtype_bytes

    rows = []
    for impl, (kind, variant, tensors, _, _) in MEMORY_IMPLS.items():
        family = "embedding" if kind == "embedding" else "memory-bound"
        for dtype in session.target.dtypes:
            table = prof.table(kind, dtype, variant)
            if table is None:
                continue
            per = tensors * dtype_bytes(dtype)
            elements = [int(b) // per for b in table.axes[0]]
            picks = _spread_picks(midpoints(elements), limit)
            cases = [memory_case(impl, e, dtype) for e in picks]
            anchors = [memory_case(impl, _nearest(e, elements), dtype) for e in picks]
            rows += _measure_cases(session, prof, family, cases, anchors)
    return rows


def _check_embedding(session: Any, prof: Any, limit: int, seed: int) -> list[dict[str, Any]]:
    from simulator.calibrate.operators import dlrm_by_dim, embedding_bag_case

    rows = []
    spec = dlrm_by_dim(16)
    for dtype in session.target.dtypes:
        table = prof.table("embedding_bag", dtype, "")
        if table is None:
            continue
        per_query = embedding_bag_case(spec, 1, dtype).op.bytes
        batches = [max(1, round(float(b) / per_query)) for b in table.axes[0]]
        picks = _spread_picks(midpoints(batches), limit)
        cases = [embedding_bag_case(spec, b, dtype) for b in picks]
        anchors = [embedding_bag_case(spec, _nearest(b, batches), dtype) for b in picks]
        rows += _measure_cases(session, prof, "embedding", cases, anchors)
    return rows


def _check_conv(session: Any, prof: Any, limit: int, seed: int) -> list[dict[str, Any]]:
    from simulator.calibrate.grids import distinct_convs
    from simulator.calibrate.operators import conv_case

    rows = []
    layers = distinct_convs()
    rng = np.random.default_rng(seed)
    chosen = [layers[i] for i in sorted(rng.choice(len(layers), size=min(limit, len(layers)), replace=False))]
    for dtype in session.target.dtypes:
        tables = {v: prof.table(k, d, v) for k, d, v in prof.table_keys() if k == "conv" and d == dtype}
        for layer in chosen:
            table = tables.get(layer.variant)
            if table is None:
                continue
            batches = list(table.axes[0].astype(int))
            mids = midpoints(batches)
            cases = [conv_case(layer, b, dtype) for b in mids]
            anchors = [conv_case(layer, _nearest(b, batches), dtype) for b in mids]
            rows += _measure_cases(session, prof, "conv", cases, anchors)
    return rows


def _check_collectives(session: Any, prof: Any) -> list[dict[str, Any]]:
    from simulator.calibrate.collectives import run_collectives
    from simulator.calibrate.timing import Measurement
    from simulator.errors import LdsimError

    keys = [k for k in prof.collective_keys() if k[0] == "intra_node"]
    if not keys or (session.target.is_cuda and session.target.device_count() < 2):
        return []
    curve = prof.collective(*keys[0])
    sizes_grid = sorted({round(2**b) for b in curve.log_bytes})
    mids = midpoints(sizes_grid, 4)
    if session.quick:
        mids = mids[:: max(1, len(mids) // 2)][:2]
    world = max(k[2] for k in keys)
    backend = "nccl" if session.target.is_cuda else "gloo"
    try:
        found = run_collectives(backend, world, sorted({*mids, sizes_grid[len(sizes_grid) // 2]}), session.plan)
    except LdsimError as exc:
        session.notes.append(f"collectives not re-measured: {exc}")
        return []
    session.timings += len(found["results"])
    rows = []
    for r in found["results"]:
        devices = 2 if r["op"] == "sendrecv" else world
        table = prof.collective("intra_node", r["op"], devices)
        if table is None:
            continue
        m = Measurement(r["median_s"], r["p10_s"], r["p90_s"], r["min_s"], r["max_s"], r["reps"], r["inner"])
        anchor = r["bytes"] not in mids
        label = f"{r['op']} {devices} devices {r['bytes']} B"
        rows.append(_row("collectives", label, (table.time_s(r["bytes"]), True), m, anchor))
    return rows


def block_cases(block: Any) -> list[tuple[Any, int]]:
    """The operators of ``block`` (ldsim's decomposition) as harness cases, with their counts,
    so that each can be timed on its own at the block's shapes."""
    from simulator.calibrate.blocks import decoder_spec, dlrm_spec, resnet_stage
    from simulator.calibrate.operators import (
        MEMORY_IMPLS,
        attention_decode_case,
        attention_prefill_case,
        conv_case,
        dlrm_by_dim,
        embedding_bag_case,
        gemm_case,
        memory_case,
    )
    from simulator.models import CNN, dtype_bytes

    p, dtype = block.params, block.dtype
    by_op = {op_name: impl for impl, (*_, op_name) in MEMORY_IMPLS.items() if op_name}
    if block.family == "decoder":
        spec = decoder_spec(p["hidden"])
        if "q" in p:
            ops = [*spec.dense_operators(p["q"], 1, dtype), spec.prefill_attention(p["q"], p["past"] + p["q"], dtype)]
        else:
            ops = spec.dense_operators(p["n"], p["n"], dtype)
        layers: dict[str, Any] = {}
    elif block.family == "resnet":
        convs = resnet_stage("layer2.0" if p["stage"] == 2 else "layer1")
        adds = [(c.out_hw[0], c.out_hw[1], c.cout) for c in convs if c.name.endswith("conv3")]
        ops = [op for op in CNN("block", "", convs, adds, 1, 1).operators(p["batch"], dtype) if op.name != "fc"]
        layers = {c.variant: c for c in convs}
    else:
        ops = dlrm_spec().operators(p["batch"], dtype)
        layers = {}
    out: list[tuple[Any, int]] = []
    for op in ops:
        if op.kind == "gemm":
            m, n, k = op.shape
            out.append((gemm_case(m, n, k, dtype), op.count))
        elif op.kind == "conv":
            out.append((conv_case(layers[op.variant], op.shape[0], dtype), op.count))
        elif op.kind == "attention_prefill":
            hd = int(op.variant.removeprefix("hd"))
            out.append((attention_prefill_case(op.shape[0], op.shape[1], op.shape[2], hd, dtype), op.count))
        elif op.kind == "embedding_bag":
            out.append((embedding_bag_case(dlrm_by_dim(16), p["batch"], dtype), op.count))
        else:
            impl = by_op.get(op.name, "add")
            elements = round(op.bytes / (MEMORY_IMPLS[impl][2] * dtype_bytes(dtype)))
            out.append((memory_case(impl, elements, dtype), op.count))
    if block.family == "decoder" and "n" in p:
        spec = decoder_spec(p["hidden"])
        out.append((attention_decode_case(p["n"] * spec.kv_heads, p["kv"] + 1, spec.head_dim, dtype), 1))
    return out


def _check_blocks(session: Any, prof: Any) -> list[dict[str, Any]]:
    """Time each block, then each of its operators on its own; the row's pair is (the sum of
    the operators' predictions, the sum of their times now)."""
    from simulator.calibrate.blocks import block_specs, build_block, predict_block
    from simulator.cost import operator_cost

    rows = []
    for block in block_specs(session.target.kind, session.quick):
        if block.dtype not in session.target.dtypes:
            continue
        try:
            m = session.time(build_block(block, session.target))
            parts = [(case, count, session.time_case(case)) for case, count in block_cases(block)]
        except (RuntimeError, NotImplementedError) as exc:
            session.notes.append(f"block {block.name}: {exc}")
            continue
        predicted, _ = predict_block(block, prof)
        ops_predicted = sum(count * operator_cost(case.op, prof, case.dtype)[0] for case, count, _ in parts)
        ops_measured = sum(count * pm.median_s for _, count, pm in parts)
        rows.append(
            _row("blocks", block.name, (predicted, True), m, note=block.omitted, pair=(ops_predicted, ops_measured))
        )
    return rows


# ---- in the calling process -------------------------------------------------------------------


def check_profile(
    profile: str | Path,
    quick: bool = False,
    out_png: Path | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckResult:
    """Re-measure held-out shapes and blocks of ``profile`` on this machine and compare.

    Measurements run in a measuring process (:mod:`.process`); the plot (log-log predicted vs
    measured per family, with y = x and a +-10% band) goes to ``out_png`` and the rows to a CSV
    beside it, when ``out_png`` is given.
    """
    from simulator.calibrate.device import parse_device, require_torch_installed
    from simulator.calibrate.process import run_task
    from simulator.errors import LdsimError
    from simulator.hardware import load_profile

    prof = load_profile(profile)
    if device is not None:
        parse_device(device)
    if threads is not None and threads < 1:
        raise LdsimError(f"--threads must be >= 1, got {threads}")
    if not prof.calibrated:
        raise LdsimError(f"{prof.path}: has no measured tables to check (provenance.status: {prof.provenance.status})")
    require_torch_installed("ldsim profile check")
    args = {"profile": str(prof.path), "quick": quick, "device": device, "threads": threads}
    found = run_task("check", args, progress)
    rows = [CheckRow(**r) for r in found["rows"]]
    result = CheckResult(
        prof.name,
        str(found["device"]),
        rows,
        _stats(rows),
        seconds=float(found["seconds"]),
        notes=list(found.get("notes", [])),
        coverage=model_coverage(prof),
    )
    if out_png is not None:
        result.plot_path = plot_check(result, Path(out_png))
        result.csv_path = _write_rows(result, Path(out_png).with_suffix(".csv"))
    return result


def _write_rows(result: CheckResult, path: Path) -> Path:
    import pandas as pd

    from simulator.calibrate.writer import atomic_write

    frame = pd.DataFrame([{**r.__dict__, "error": r.error} for r in result.rows])
    atomic_write(path, frame.to_csv(index=False, float_format="%.6g").encode())
    return path


def plot_check(result: CheckResult, path: Path) -> Path:
    """Draw predicted vs measured (log-log) per family, with y = x and a +-10% band; write ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in FAMILIES if any(r.family == f for r in result.rows)]
    cols = 4
    nrows = max(1, math.ceil(len(families) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.8 * nrows), squeeze=False)
    for ax, fam in zip(axes.flat, families, strict=False):
        rows = [r for r in result.rows if r.family == fam]
        held = [r for r in rows if not r.anchor]
        anchors = [r for r in rows if r.anchor]
        values = [v for r in rows for v in (r.predicted_s, r.measured_s)]
        lo, hi = min(values) / 1.5, max(values) * 1.5
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(line, line / 1.1, line * 1.1, color="0.85", label="±10%")
        ax.plot(line, line, color="0.4", lw=1, label="y = x")
        ax.scatter([r.measured_s for r in held], [r.predicted_s for r in held], s=14, label="held out")
        if anchors:
            ax.scatter(
                [r.measured_s for r in anchors],
                [r.predicted_s for r in anchors],
                s=18,
                facecolors="none",
                edgecolors="C3",
                label="grid anchors",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        stats = result.families.get(fam)
        title = fam if stats is None else f"{fam}: median |err| {stats.median_abs_error:.1%}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("measured (s)", fontsize=8)
        ax.set_ylabel("predicted (s)", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    fig.suptitle(f"ldsim profile check: {result.profile} on {result.device}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
