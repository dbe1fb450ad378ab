"""Calibrate the A100 profile from Vidur's published kernel and collective timings.

Vidur (microsoft/vidur, commit 7d47513, MIT license) profiled on NVIDIA A100-SXM4-80GB GPUs the
kernels of one Llama-style transformer layer for several models at many token counts and
tensor-parallel degrees (``mlp.csv``), attention prefill and decode of Llama-2-70B at TP=2
(``attention.csv``), and NCCL all-reduce and send/recv against message size. This module turns
those timings into ldsim's measured tables (:mod:`simulator.tables`): for every measured point
it builds the operator ldsim itself builds for that shape (:meth:`Decoder.dense_operators`,
:meth:`Decoder.prefill_attention`, :meth:`Decoder.decode_attention_terms`), so that each timing
becomes a point (kind, grid coordinates, work, seconds) whose work is exactly the FLOPs or bytes
the cost model divides by; it then regularises the scattered points onto full grids (the log of
the achieved rate, interpolated linearly in the log of the coordinates, nearest measured value
outside their hull) and writes a calibrated profile (:func:`build_profile`).

Some measurements are kept out of the tables so that :func:`check_against_vidur` can price them
with ldsim's cost model and report the error beside the datasheet roofline's: one whole model
(:data:`HELD_OUT_MODEL`), every ``every``-th token count of the other models, every
``every``-th attention row, and every ``every``-th message size of each collective curve
(:class:`Split`).

Vidur's times are GPU kernel durations (CUDA events / Kineto), median of its repetitions; they
include no host-side launch overhead, as in a CUDA-graph-captured step. Vidur ran the models in
fp16 (its profiler casts them with ``.to(dtype=torch.float16)``); the tables are written for
fp16 and bf16 alike, the A100's tensor cores and memory system running both at the same rate.

Run as ``python -m simulator.calibrate.vidur build|check`` (see :func:`main`). Building needs
scipy (the ``dev`` extra); checking does not.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import yaml

from simulator.cost import Deployment, ModelCost, allreduce_s, operator_cost
from simulator.hardware import HardwareProfile, load_profile
from simulator.models import Decoder, Operator
from simulator.tables import COLLECTIVE_COLUMNS, DIMS, TABLE_COLUMNS

__all__ = [
    "DATASHEET_EFFICIENCY",
    "HELD_OUT_MODEL",
    "OPERATOR_MAP",
    "VIDUR_SOURCE",
    "Split",
    "build_profile",
    "check_against_vidur",
    "held_out_predictions",
    "main",
    "read_attention_points",
    "read_collective_points",
    "read_operator_points",
    "roofline_profile",
]

VIDUR_SOURCE = "Vidur (microsoft/vidur, commit 7d47513, MIT): measured A100 kernel and collective timings"

#: ldsim operator name (``Decoder.dense_operators``) -> the Vidur timer measuring the same kernel.
OPERATOR_MAP: dict[str, str] = {
    "qkv_proj": "attn_pre_proj",  # fused QKV GEMM of the TP shard: (t, (q + 2 kv) * hd / tp, h)
    "o_proj": "attn_post_proj",  # row-parallel output GEMM: (t, h, q * hd / tp)
    "mlp_up_gate": "mlp_up_proj",  # fused gate+up GEMM (gated MLP): (t, 2 f / tp, h)
    "mlp_down": "mlp_down_proj",  # row-parallel down GEMM: (t, h, f / tp)
    "mlp_act": "mlp_act",  # SiLU-and-multiply: reads 2 f / tp, writes f / tp per token
    "input_norm": "input_layernorm",  # RMSNorm over h
    "post_norm": "post_attention_layernorm",
    "rope": "attn_rope",  # rotary embedding of q and k, in place
    "residual_add": "add",  # residual + hidden (Vidur times one of the layer's two adds)
    "embedding": "emb",  # vocab-parallel embedding lookup of t rows of h
}
#: The dtype Vidur measured in, and the dtypes the tables are written for.
MEASURED_DTYPE = "fp16"
TABLE_DTYPES = ("fp16", "bf16")
#: The model kept out of the tables entirely (its shapes lie inside the other models' range).
HELD_OUT_MODEL = "internlm-20b"
HOLD_OUT_EVERY = 4
#: The network measurements of a DGX A100 (NVSwitch, all 8 GPUs on NVLink): the shipped
#: profile's node. ``a100_pairwise_nvlink`` (GPUs linked in pairs) is read but not tabulated.
NETWORK_SOURCE = "a100_dgx"
#: Efficiencies the A100 profile stated before calibration (datasheet profile, commit 2f429f9):
#: the roofline that :func:`check_against_vidur` compares against.
DATASHEET_EFFICIENCY: dict[str, Any] = {
    "source": "stated defaults of the datasheet profile (uncalibrated)",
    "compute": {"default": 0.60, "gemm": 0.70, "conv": 0.60, "attention": 0.50},
    "memory": {"default": 0.85},
}
FAMILIES = ("gemm", "attention_prefill", "attention_decode", "memory_bound", "collectives")

# Grid axes. GEMM: M at token counts measured (sparse where the GEMM is bound by reading its
# weights and its rate grows in proportion to M, about 2 per octave from 512 to 2048 where
# tile quantisation makes the rate wiggle); N and K at model dimensions that occur (about 2 per
# octave), extended down to 64 for the small GEMMs of other model families (convolutions as
# implicit GEMMs, encoders), which Vidur did not measure.
GEMM_M_AXIS = (1, 16, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384, 32768)
GEMM_N_AXIS = (64, 256, 768, 1536, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536)
GEMM_K_AXIS = (64, 256, 512, 1024, 1536, 2048, 4096, 6144, 8192, 12288, 16384, 28672)
#: Token counts at which each measured memory-bound curve is sampled before pooling by bytes
#: (the curves of different models and operators interleave, so every other octave suffices).
MEMORY_TOKEN_NODES = (1, 4, 16, 64, 256, 1024, 4096, 16384, 32768)
MEMORY_BYTES_PER_OCTAVE = 2
MEMORY_WINDOW_OCTAVES = 0.75  # samples within this distance of a node (in log2 bytes) set its rate
PREFILL_Q_AXIS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
PREFILL_PAST_AXIS = (1, 32, 64, 128, 256, 512, 1024, 2048, 4032)  # 1 stands for 0 (no past)
DECODE_BATCH_AXIS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128)
#: Decode KV lengths: Vidur's cached tokens (multiples of 32, then 64) plus the token decoded.
DECODE_KV_AXIS = (33, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4033)

_P90_P10_PER_STD = 2.563  # (p90 - p10) of a normal distribution, in standard deviations
_MEMORY_KINDS = ("elementwise", "norm", "embedding")
_RAW_COLUMNS = (
    "source",
    "model",
    "tp",
    "tokens",
    "batch",
    "q_len",
    "past_len",
    "kv_len",
    "vidur_op",
    "ldsim_op",
    "kind",
    "d0",
    "d1",
    "d2",
    "work",
    "link",
    "devices",
    "bytes",
    "time_s",
    "spread",
)


@dataclass(frozen=True)
class Split:
    """Which measurements stay out of the tables, to be predicted by :func:`check_against_vidur`.

    ``held_out_model``: a model folder name under ``profiling/compute/a100/<org>/``, held out
    whole. ``every``: of every other model's sorted token counts, of the attention rows sorted
    by shape, and of each collective's sorted message sizes, each ``every``-th is held out (the
    first and last never are, so the tables span the measured range).
    """

    held_out_model: str = HELD_OUT_MODEL
    every: int = HOLD_OUT_EVERY

    def __post_init__(self) -> None:
        if self.every < 2:
            raise ValueError(f"every ({self.every}) must be at least 2: 1 would hold out everything")

    def held_positions(self, n: int) -> np.ndarray:
        """Boolean mask over ``n`` sorted positions: the held-out ones."""
        i = np.arange(n)
        return (i % self.every == self.every // 2) & (i > 0) & (i < n - 1)


# ---- reading Vidur's measurements ------------------------------------------------------------


def _median_spread(frame: pd.DataFrame, op: str) -> tuple[pd.Series, pd.Series]:
    """Seconds (Vidur's median, in ms) and relative spread ((p90 - p10) / median, from the std)."""
    median_s = frame[f"time_stats.{op}.median"] * 1e-3
    spread = _P90_P10_PER_STD * frame[f"time_stats.{op}.std"] * 1e-3 / median_s
    return median_s, spread


def _decoder(name: str, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int) -> Decoder:
    """A one-layer ldsim decoder with a measured model's dimensions (layers do not matter)."""
    return Decoder(
        name,
        VIDUR_SOURCE,
        layers=1,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        ffn=ffn,
        vocab=vocab,
        max_context_tokens=32768,
    )


def _work(op: Operator) -> float:
    """The work a table of ``op.kind`` divides by: FLOPs or bytes, as :data:`DIMS` says."""
    return op.bytes if DIMS[op.kind][1] == "bytes" else op.flops


def _point(op: Operator, **fields: Any) -> dict[str, Any]:
    coords = [*op.shape, *([np.nan] * (3 - len(op.shape)))]
    return dict(
        ldsim_op=op.name,
        kind=op.kind,
        variant=op.variant,
        d0=coords[0],
        d1=coords[1],
        d2=coords[2],
        work=_work(op),
        op=op,
        **fields,
    )


def read_operator_points(vidur_dir: Path) -> pd.DataFrame:
    """Every per-operator timing of every ``profiling/compute/a100/*/*/mlp.csv``, as ldsim points.

    One row per (model, tensor-parallel degree, token count, operator): the ldsim operator
    (column ``op``, an :class:`Operator` of one instance), its kind, grid coordinates ``d0..d2``
    and ``work`` (FLOPs or bytes), Vidur's median ``time_s`` (seconds) and relative ``spread``.
    Rows repeated in Vidur's CSV are merged by their median. A model without a gated MLP
    (Phi-2: GELU) contributes its GEMMs and norms only: ldsim's decoder has no operator of the
    same bytes for its activation and three-way residual add.
    """
    keys = [
        "n_head",
        "n_kv_head",
        "n_embd",
        "n_expanded_embd",
        "vocab_size",
        "use_gated_mlp",
        "num_tokens",
        "num_tensor_parallel_workers",
    ]
    rows: list[dict[str, Any]] = []
    files = sorted((Path(vidur_dir) / "profiling" / "compute" / "a100").glob("*/*/mlp.csv"))
    if not files:
        raise FileNotFoundError(f"no profiling/compute/a100/*/*/mlp.csv under {vidur_dir}")
    for path in files:
        model = path.parent.name
        frame = pd.read_csv(path)
        stats = [c for c in frame.columns if c.startswith("time_stats.")]
        merged = frame.groupby(keys, sort=True)[stats].median().reset_index()
        for vidur_op in sorted(set(OPERATOR_MAP.values())):
            if f"time_stats.{vidur_op}.median" not in merged:
                continue
            merged[f"_s.{vidur_op}"], merged[f"_spread.{vidur_op}"] = _median_spread(merged, vidur_op)
        for rec in cast(list[dict[str, Any]], merged.to_dict("records")):
            h, heads, kv_heads = int(rec["n_embd"]), int(rec["n_head"]), int(rec["n_kv_head"])
            ffn, vocab, gated = int(rec["n_expanded_embd"]), int(rec["vocab_size"]), bool(rec["use_gated_mlp"])
            tokens, tp = int(rec["num_tokens"]), int(rec["num_tensor_parallel_workers"])
            arch = _decoder(model, h, heads, kv_heads, ffn, vocab)
            ops = {o.name: o for o in arch.dense_operators(tokens, tokens, MEASURED_DTYPE, tp)}
            if not gated:  # a plain MLP: up is (t, f/tp, h), down (t, h, f/tp)
                ops["mlp_up_gate"] = next(
                    o
                    for o in _decoder(model, h, heads, kv_heads, ffn // 2, vocab).dense_operators(
                        tokens, tokens, MEASURED_DTYPE, tp
                    )
                    if o.name == "mlp_up_gate"
                )
                del ops["mlp_act"], ops["residual_add"]
            for ldsim_op, vidur_op in OPERATOR_MAP.items():
                seconds = rec.get(f"_s.{vidur_op}")
                if ldsim_op not in ops or seconds is None or not math.isfinite(seconds) or seconds <= 0:
                    continue
                rows.append(
                    _point(
                        ops[ldsim_op],
                        source="mlp",
                        model=model,
                        arch=arch,
                        tp=tp,
                        tokens=tokens,
                        vidur_op=vidur_op,
                        time_s=float(seconds),
                        spread=float(rec[f"_spread.{vidur_op}"]),
                    )
                )
    return pd.DataFrame(rows)


def _attention_decoder(rec: dict[str, Any]) -> Decoder:
    """The decoder of ``attention.csv`` (only its heads and hidden size matter)."""
    h = int(rec["n_embd"])
    return _decoder("attention", h, int(rec["n_q_head"]), int(rec["n_kv_head"]), 4 * h, 32000)


def read_attention_points(vidur_dir: Path) -> pd.DataFrame:
    """Every attention timing of ``profiling/compute/a100/*/*/attention.csv``, as ldsim points.

    Prefill rows (one sequence of ``prefill_chunk_size`` new tokens over ``kv_cache_size``
    cached ones) become ``attention_prefill`` at ``(q_heads per device, q_len, past_len)`` with
    ldsim's causal FLOPs; decode rows (``batch_size`` sequences of ``kv_cache_size`` cached
    tokens each, attending to those and the new token) become ``attention_decode`` at
    ``(batch x kv_heads per device, kv_len)`` with the bytes of ldsim's
    :meth:`Decoder.decode_attention_terms` for that batch. Seconds are Vidur's median kernel time.
    """
    files = sorted((Path(vidur_dir) / "profiling" / "compute" / "a100").glob("*/*/attention.csv"))
    if not files:
        raise FileNotFoundError(f"no profiling/compute/a100/*/*/attention.csv under {vidur_dir}")
    rows: list[dict[str, Any]] = []
    for path in files:
        frame = pd.read_csv(path)
        keys = ["n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size"]
        keys += ["prefill_chunk_size", "kv_cache_size", "is_prefill"]
        stats = [c for c in frame.columns if c.startswith("time_stats.")]
        merged = frame.groupby(keys, sort=True)[stats].median().reset_index()
        merged["_p_s"], merged["_p_spread"] = _median_spread(merged, "attn_prefill")
        merged["_d_s"], merged["_d_spread"] = _median_spread(merged, "attn_decode")
        for rec in cast(list[dict[str, Any]], merged.to_dict("records")):
            dec = _attention_decoder(rec)
            tp = int(rec["num_tensor_parallel_workers"])
            batch, past = int(rec["batch_size"]), int(rec["kv_cache_size"])
            common = dict(source="attention", model=path.parent.name, arch=dec, tp=tp, batch=batch)
            if bool(rec["is_prefill"]):
                q_len = int(rec["prefill_chunk_size"])
                if batch != 1 or not rec["_p_s"] > 0:
                    continue
                op = dec.prefill_attention(q_len, past + q_len, MEASURED_DTYPE, tp)
                rows.append(
                    _point(
                        op,
                        **common,
                        q_len=q_len,
                        past_len=past,
                        vidur_op="attn_prefill",
                        time_s=float(rec["_p_s"]),
                        spread=float(rec["_p_spread"]),
                    )
                )
            else:
                if not rec["_d_s"] > 0:
                    continue
                kv_len = past + 1
                flops_kv, bytes_kv, flops_seq, bytes_seq = dec.decode_attention_terms(MEASURED_DTYPE, tp)
                kv_tokens = batch * kv_len
                op = Operator(
                    "attention_decode",
                    "attention_decode",
                    flops_kv * kv_tokens + flops_seq * batch,
                    bytes_kv * kv_tokens + bytes_seq * batch,
                    1,
                    (batch * max(1, dec.kv_heads // tp), kv_len),
                    f"hd{dec.head_dim}",
                )
                rows.append(
                    _point(
                        op,
                        **common,
                        kv_len=kv_len,
                        vidur_op="attn_decode",
                        time_s=float(rec["_d_s"]),
                        spread=float(rec["_d_spread"]),
                    )
                )
    return pd.DataFrame(rows)


def read_collective_points(vidur_dir: Path) -> pd.DataFrame:
    """Every collective timing of ``profiling/network/a100_*/{all_reduce,send_recv}.csv``.

    One row per (source folder, op, participants, devices per node, message bytes): ``link``
    is ``intra_node`` when all participants share a node, else ``inter_node``; ``time_s`` is the
    slowest rank's median (a collective ends when its last rank does; Vidur recorded rank 0
    only, so in practice it is rank 0's).
    """
    frames = []
    folders = sorted((Path(vidur_dir) / "profiling" / "network").glob("a100_*"))
    if not folders:
        raise FileNotFoundError(f"no profiling/network/a100_* folders under {vidur_dir}")
    for folder in folders:
        for name, op in (("all_reduce", "allreduce"), ("send_recv", "sendrecv")):
            path = folder / f"{name}.csv"
            if not path.is_file():
                continue
            frame = pd.read_csv(path)
            frame["time_s"], frame["spread"] = _median_spread(frame, name)
            keys = ["num_workers", "devices_per_node", "size"]
            slowest = frame.sort_values("time_s").groupby(keys, sort=True).last().reset_index()
            workers, per_node = slowest["num_workers"].astype(int), slowest["devices_per_node"].astype(int)
            frames.append(
                pd.DataFrame(
                    {
                        "source": folder.name,
                        "vidur_op": name,
                        "op": op,
                        "link": np.where(per_node >= workers, "intra_node", "inter_node"),
                        "devices": workers,
                        "devices_per_node": per_node,
                        "bytes": slowest["size"].astype(np.int64),
                        "time_s": slowest["time_s"],
                        "spread": slowest["spread"],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


_READ_CACHE: dict[tuple[str, str], pd.DataFrame] = {}


def _cached(reader: Any, vidur_dir: Path) -> pd.DataFrame:
    """``reader(vidur_dir)``, read once per process and folder (callers never modify it)."""
    key = (reader.__name__, str(Path(vidur_dir).resolve()))
    if key not in _READ_CACHE:
        _READ_CACHE[key] = reader(Path(vidur_dir))
    return _READ_CACHE[key]


def _mark_held_out(points: pd.DataFrame, split: Split) -> pd.DataFrame:
    """``points`` (of one reader) with a boolean ``held_out`` column, per :class:`Split`:
    operator points by model and token count, attention points by row in shape order,
    collective points by message size within each curve."""
    held = np.zeros(len(points), dtype=bool)
    if "tokens" in points and points["tokens"].notna().all():
        held |= (points["model"] == split.held_out_model).to_numpy()
        for _model, group in points.groupby("model"):
            tokens = np.sort(group["tokens"].unique())
            held_tokens = tokens[split.held_positions(len(tokens))]
            held[points.index.get_indexer(group.index)] |= group["tokens"].isin(held_tokens).to_numpy()
        return points.assign(held_out=held)
    curve, order_by = (["source", "op", "link", "devices"], ["bytes"]) if "link" in points else (["kind"], [])
    order_by = order_by or ["batch", "q_len", "past_len", "kv_len"]
    for _key, group in points.groupby(curve):
        order = group.sort_values(order_by).index
        held[points.index.get_indexer(order)] = split.held_positions(len(order))
    return points.assign(held_out=held)


# ---- regularising points onto full grids ----------------------------------------------------


def _fill_2d(xy: np.ndarray, values: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Piecewise-linear interpolation of scattered ``values`` (``(n, c)``) at ``query`` points
    (Delaunay triangulation of ``xy``; the nearest point outside the hull, or everywhere when
    the points are too few or collinear). Returns the values ``(m, c)``, a mask of the queries
    outside the hull, and the indices of the points that entered some query."""
    from scipy.spatial import Delaunay, QhullError, cKDTree

    out = np.empty((len(query), values.shape[1]))
    used: list[np.ndarray] = []
    inside = np.zeros(len(query), dtype=bool)
    if len(xy) >= 3:
        try:
            tri = Delaunay(xy)
        except QhullError:
            tri = None
        if tri is not None:
            transforms = tri.transform  # computed up front: find_simplex(tol=...) is very slow without
            simplex = tri.find_simplex(query, tol=1e-9)
            inside = simplex >= 0
            if inside.any():
                transform = transforms[simplex[inside]]
                bary = np.einsum("ijk,ik->ij", transform[:, :2, :], query[inside] - transform[:, 2, :])
                weights = np.column_stack([bary, 1.0 - bary.sum(axis=1)])
                vertices = tri.simplices[simplex[inside]]
                out[inside] = np.einsum("ij,ijc->ic", weights, values[vertices])
                used.append(vertices[weights > 1e-12])
    if (~inside).any():
        _, nearest = cKDTree(xy).query(query[~inside])
        out[~inside] = values[nearest]
        used.append(np.asarray(nearest))
    return out, ~inside, np.unique(np.concatenate(used)) if used else np.empty(0, dtype=np.intp)


def _sample_curves(train: pd.DataFrame, nodes: Sequence[int]) -> tuple[pd.DataFrame, set[int]]:
    """Each (model, tp, operator) curve of ``train`` read at token counts ``nodes``.

    Coordinates and log2 rate are interpolated linearly in log2 tokens between the two
    measurements around a node (exact where one sits on it); a node outside a curve's measured
    tokens is skipped. Returns the samples (``tokens``, ``d0..d2``, ``log_rate``, ``spread``)
    and the index labels of the measurements used.
    """
    samples = []
    used: set[int] = set()
    for _key, curve in train.groupby(["model", "tp", "ldsim_op"], sort=True):
        curve = curve.sort_values("tokens")
        x = np.log2(curve["tokens"].to_numpy(dtype=np.float64))
        log_rate = np.log2(curve["work"].to_numpy() / curve["time_s"].to_numpy())
        coords = {c: curve[c].to_numpy(dtype=np.float64) for c in ("d0", "d1", "d2")}
        for node in nodes:
            at = math.log2(node)
            if at < x[0] - 1e-12 or at > x[-1] + 1e-12:
                continue
            hi = int(np.clip(np.searchsorted(x, at, side="left"), 0, len(x) - 1))
            lo = hi if abs(x[hi] - at) < 1e-12 else hi - 1
            frac = 0.0 if lo == hi else (at - x[lo]) / (x[hi] - x[lo])
            used.update(curve.index[[lo, hi]].tolist())

            def between(v: np.ndarray, log: bool = False, lo: int = lo, hi: int = hi, frac: float = frac) -> float:
                a, b = (np.log2(v[lo]), np.log2(v[hi])) if log else (v[lo], v[hi])
                mid = a + frac * (b - a)
                return float(2.0**mid) if log else float(mid)

            samples.append(
                dict(
                    tokens=node,
                    d0=between(coords["d0"], log=True),
                    d1=between(coords["d1"], log=True) if np.isfinite(coords["d1"][lo]) else np.nan,
                    d2=between(coords["d2"], log=True) if np.isfinite(coords["d2"][lo]) else np.nan,
                    log_rate=between(log_rate),
                    spread=between(curve["spread"].to_numpy()),
                )
            )
    return pd.DataFrame(samples), used


@dataclass(frozen=True)
class _Peaks:
    """What the training data say the device achieves (caps for extrapolated grid nodes)."""

    gemm_flops_per_s: float
    gemm_bytes_per_s: float
    memory_bytes_per_s: float
    floor_s: dict[str, float]


def _peaks(train: pd.DataFrame) -> _Peaks:
    gemm = train[train["kind"] == "gemm"]
    rate = gemm["work"] / gemm["time_s"]
    long_enough = gemm["time_s"] >= 50e-6  # Vidur's times are whole microseconds: skip short ones
    weights_bound = (gemm["d0"] <= 16) & (gemm["time_s"] >= 20e-6)
    gemm_bw = (gemm["op"].map(lambda o: o.bytes) / gemm["time_s"])[weights_bound]
    memory = train[train["kind"].isin(_MEMORY_KINDS) & (train["work"] >= 256 * 2**20)]
    return _Peaks(
        gemm_flops_per_s=float(rate[long_enough].max()),
        gemm_bytes_per_s=float(gemm_bw.quantile(0.95)),
        memory_bytes_per_s=float((memory["work"] / memory["time_s"]).max()),
        floor_s={str(k): float(v) for k, v in train.groupby("kind")["time_s"].min().items()},
    )


def _gemm_grid(train: pd.DataFrame, peaks: _Peaks) -> tuple[pd.DataFrame, set[int]]:
    """The GEMM table on ``GEMM_M_AXIS x GEMM_N_AXIS x GEMM_K_AXIS``.

    At each M, the curves' samples are interpolated over (log N, log K); outside their hull a
    node takes the nearest sample's rate, capped by the roofline of the measured GEMM peak and
    bandwidth (so a small GEMM far from the data is not credited a large one's rate)."""
    samples, used = _sample_curves(train[train["kind"] == "gemm"], GEMM_M_AXIS)
    n_grid, k_grid = np.meshgrid(GEMM_N_AXIS, GEMM_K_AXIS, indexing="ij")
    query = np.column_stack([np.log2(n_grid.ravel()), np.log2(k_grid.ravel())])
    rows = []
    for m in GEMM_M_AXIS:
        at = samples[samples["tokens"] == m]
        at = at.groupby(["d1", "d2"], as_index=False)[["log_rate", "spread"]].median()
        xy = np.column_stack([np.log2(at["d1"].to_numpy()), np.log2(at["d2"].to_numpy())])
        values, outside, _ = _fill_2d(xy, at[["log_rate", "spread"]].to_numpy(), query)
        n, k = n_grid.ravel().astype(np.float64), k_grid.ravel().astype(np.float64)
        flops = 2.0 * m * n * k
        nbytes = 2.0 * (m * k + k * n + m * n)  # fp16/bf16 operands and result
        roof = np.minimum(peaks.gemm_flops_per_s, flops / nbytes * peaks.gemm_bytes_per_s)
        log_rate = np.where(outside, np.minimum(values[:, 0], np.log2(roof)), values[:, 0])
        for j in range(len(query)):
            rows.append((m, int(n[j]), int(k[j]), flops[j], float(log_rate[j]), float(values[j, 1])))
    grid = pd.DataFrame(rows, columns=["d0", "d1", "d2", "work", "log_rate", "spread"])
    return grid.assign(kind="gemm", variant="", d3=np.nan), used


def _bytes_axis(lo: float, hi: float) -> np.ndarray:
    """Whole byte counts from ``lo`` to ``hi``, ``MEMORY_BYTES_PER_OCTAVE`` per octave."""
    start, stop = (
        math.floor(math.log2(lo) * MEMORY_BYTES_PER_OCTAVE),
        math.ceil(math.log2(hi) * MEMORY_BYTES_PER_OCTAVE),
    )
    return np.unique(np.round(2.0 ** (np.arange(start, stop + 1) / MEMORY_BYTES_PER_OCTAVE)).astype(np.int64))


def _memory_grid(train: pd.DataFrame, kind: str, variant: str | None) -> tuple[pd.DataFrame, set[int]]:
    """A memory-bound table over bytes: the median log rate of the curves' samples within
    ``MEMORY_WINDOW_OCTAVES`` of each node (the nearest sample where none is). One table per
    (kind, variant) of ldsim's operators; ``variant=None`` pools every variant of the kind into
    the generic table (variant '') that operators without a table of their own fall back to."""
    rows_of = train["kind"] == kind
    if variant is not None:
        rows_of &= train["variant"] == variant
    samples, used = _sample_curves(train[rows_of], MEMORY_TOKEN_NODES)
    x = np.log2(samples["d0"].to_numpy())
    axis = _bytes_axis(float(samples["d0"].min()), float(samples["d0"].max()))
    rows = []
    for node in axis:
        at = math.log2(node)
        near = np.abs(x - at) <= MEMORY_WINDOW_OCTAVES
        if not near.any():
            near = np.abs(x - at) == np.abs(x - at).min()
        rows.append(
            (
                int(node),
                float(node),
                float(np.median(samples["log_rate"][near])),
                float(np.median(samples["spread"][near])),
            )
        )
    grid = pd.DataFrame(rows, columns=["d0", "work", "log_rate", "spread"])
    return grid.assign(kind=kind, variant=variant or "", d1=np.nan, d2=np.nan, d3=np.nan), used


def _lattice_grid(
    train: pd.DataFrame, axes: tuple[Sequence[float], Sequence[float]], coords: tuple[str, str], work_at: Any
) -> tuple[pd.DataFrame, set[int]]:
    """A 2-D table (attention) from scattered points: piecewise-linear in log coordinates
    (exact at a node that was measured), nearest point outside the measured region."""
    xy = np.log2(np.maximum(train[list(coords)].to_numpy(dtype=np.float64), 1.0))
    values = np.column_stack(
        [np.log2(train["work"].to_numpy() / train["time_s"].to_numpy()), train["spread"].to_numpy()]
    )
    a, b = np.meshgrid(axes[0], axes[1], indexing="ij")
    query = np.column_stack([np.log2(a.ravel()), np.log2(b.ravel())])
    filled, _, used_rows = _fill_2d(xy, values, query)
    used = {int(i) for i in train.index[used_rows]}
    rows = [
        (float(a.ravel()[j]), float(b.ravel()[j]), work_at(a.ravel()[j], b.ravel()[j]), filled[j, 0], filled[j, 1])
        for j in range(len(query))
    ]
    return pd.DataFrame(rows, columns=["c0", "c1", "work", "log_rate", "spread"]), used


def _attention_grids(train: pd.DataFrame) -> tuple[list[pd.DataFrame], set[int]]:
    """The prefill and decode attention tables of the measured model (one head count each)."""
    grids, used = [], set()
    prefill = train[train["kind"] == "attention_prefill"]
    if len(prefill):
        op0: Operator = prefill["op"].iloc[0]
        dec: Decoder = prefill["arch"].iloc[0]
        tp = int(prefill["tp"].iloc[0])

        def prefill_flops(q_len: float, past: float) -> float:
            past_len = 0 if past <= 1 else int(past)  # the node at 1 stands for no past
            return dec.prefill_attention(int(q_len), int(q_len) + past_len, MEASURED_DTYPE, tp).flops

        grid, u = _lattice_grid(prefill, (PREFILL_Q_AXIS, PREFILL_PAST_AXIS), ("q_len", "past_len"), prefill_flops)
        grids.append(
            grid.assign(kind="attention_prefill", variant=op0.variant, d0=op0.shape[0], d1=grid["c0"], d2=grid["c1"])
        )
        used |= u
    decode = train[train["kind"] == "attention_decode"]
    if len(decode):
        op0 = decode["op"].iloc[0]
        dec = decode["arch"].iloc[0]
        tp = int(decode["tp"].iloc[0])
        kv_heads = op0.shape[0] // int(decode["batch"].iloc[0])
        _, bytes_kv, _, bytes_seq = dec.decode_attention_terms(MEASURED_DTYPE, tp)
        grid, u = _lattice_grid(
            decode,
            (DECODE_BATCH_AXIS, DECODE_KV_AXIS),
            ("batch", "kv_len"),
            lambda n, kv: bytes_kv * n * kv + bytes_seq * n,
        )
        grids.append(
            grid.assign(
                kind="attention_decode", variant=op0.variant, d0=grid["c0"] * kv_heads, d1=grid["c1"], d2=np.nan
            )
        )
        used |= u
    return [g.drop(columns=["c0", "c1"]).assign(d3=np.nan) for g in grids], used


def _pava_increasing(values: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return np.concatenate([np.full(int(w), m) for m, w in blocks])


COLLECTIVE_BINS_PER_OCTAVE = 2
COLLECTIVE_SIZES_PER_BIN = 6


def _collective_rows(train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each (link, op, devices) curve of ``train``: the median time and bytes of the message
    sizes within each half-octave bin, made non-decreasing in size (time never falls as the
    message grows; the measured medians of small messages scatter by tens of percent).

    A bin uses at most ``COLLECTIVE_SIZES_PER_BIN`` sizes spread evenly across it (Vidur
    measured up to hundreds per bin at large sizes). Returns the curve rows and the
    measurements used."""
    rows = []
    used = []
    for key, curve in train.groupby(["link", "op", "devices"], sort=True):
        link, op, devices = (str(k) for k in key)
        curve = curve.sort_values("bytes")
        bins = np.floor(np.log2(curve["bytes"].to_numpy(dtype=np.float64)) * COLLECTIVE_BINS_PER_OCTAVE)
        kept = []
        for b in np.unique(bins):
            members = curve[bins == b]
            pick = np.unique(np.round(np.linspace(0, len(members) - 1, min(len(members), COLLECTIVE_SIZES_PER_BIN))))
            kept.append(members.iloc[pick.astype(int)].assign(_bin=b))
        thinned = pd.concat(kept)
        used.append(thinned.drop(columns="_bin"))
        per_bin = thinned.groupby("_bin")
        nbytes = per_bin["bytes"].median().round().astype(np.int64)
        log_time = _pava_increasing(np.log2(per_bin["time_s"].median().to_numpy()))
        spread = per_bin["spread"].median()
        for j, b in enumerate(nbytes.index):
            rows.append((link, op, int(devices), int(nbytes[b]), float(2.0 ** log_time[j]), float(spread[b])))
    return pd.DataFrame(rows, columns=list(COLLECTIVE_COLUMNS)), pd.concat(used)


def _table_rows(grids: list[pd.DataFrame], floor_s: dict[str, float]) -> pd.DataFrame:
    """Grid frames (``log_rate`` at each node) as rows of a tables CSV, for every table dtype.

    No node is faster than the fastest measurement of its kind (the kernel-duration floor)."""
    frame = pd.concat(grids, ignore_index=True)
    rate = 2.0 ** frame["log_rate"].to_numpy()
    floor = frame["kind"].map(floor_s).to_numpy(dtype=np.float64)
    time_s = np.maximum(frame["work"].to_numpy() / rate, floor)
    frame = frame.assign(time_s=time_s, spread=frame["spread"].clip(lower=0.0))
    out = pd.concat([frame.assign(dtype=dtype) for dtype in TABLE_DTYPES], ignore_index=True)
    for col in ("d0", "d1", "d2", "d3"):
        out[col] = pd.array(np.round(out[col].to_numpy(dtype=np.float64)), dtype="Int64")
    return out[list(TABLE_COLUMNS)].sort_values(["kind", "dtype", "variant", "d0", "d1", "d2"], kind="stable")


@dataclass(frozen=True)
class _Fit:
    """Everything :func:`build_profile` writes, before it is written."""

    tables: pd.DataFrame
    collectives: pd.DataFrame
    raw: pd.DataFrame
    peaks: _Peaks
    efficiency: dict[str, dict[str, float]]
    counts: dict[str, int]


def _fit(vidur_dir: Path, split: Split, datasheet: HardwareProfile) -> _Fit:
    """Read Vidur's data, keep ``split``'s held-out measurements aside, fill every grid."""
    ops = _mark_held_out(_cached(read_operator_points, vidur_dir), split)
    attention = _mark_held_out(_cached(read_attention_points, vidur_dir), split)
    network = _mark_held_out(_cached(read_collective_points, vidur_dir), split)
    points = pd.concat([ops, attention], ignore_index=True)
    train = points[~points["held_out"]]
    peaks = _peaks(train)
    grids: list[pd.DataFrame] = []
    used: set[int] = set()
    grid, u = _gemm_grid(train, peaks)
    grids.append(grid)
    used |= u
    memory = train[train["kind"].isin(_MEMORY_KINDS)]
    pairs = sorted(set(zip(memory["kind"], memory["variant"], strict=True)))
    for kind, variant in pairs:
        grid, u = _memory_grid(train, kind, variant)
        grids.append(grid)
        used |= u
    for kind in sorted({k for k, v in pairs if v} - {k for k, v in pairs if not v}):
        grid, u = _memory_grid(train, kind, None)  # the generic table of a kind measured by variant
        grids.append(grid)
        used |= u
    attention_grids, u = _attention_grids(train)
    grids += attention_grids
    used |= u
    collectives, coll_used = _collective_rows(network[~network["held_out"] & (network["source"] == NETWORK_SOURCE)])
    raw = pd.concat(
        [
            points.loc[sorted(used)].drop(columns=["op", "arch", "held_out"]),
            coll_used.assign(source="network/" + coll_used["source"], ldsim_op=coll_used["op"]),
        ],
        ignore_index=True,
    ).reindex(columns=list(_RAW_COLUMNS))
    return _Fit(
        tables=_table_rows(grids, peaks.floor_s),
        collectives=collectives,
        raw=raw,
        peaks=peaks,
        efficiency=_efficiency(train, datasheet),
        counts={
            "train_points": len(train),
            "held_out_points": int(points["held_out"].sum()),
            "raw_points": len(raw),
            "collective_points_used": len(coll_used),
        },
    )


def _efficiency(train: pd.DataFrame, datasheet: HardwareProfile) -> dict[str, dict[str, float]]:
    """Roofline efficiencies refitted from the training split (medians of achieved / peak in
    the regime each bounds): used for what no table covers (other dtypes, other kinds)."""
    peak = datasheet.peak_flops(MEASURED_DTYPE)
    bandwidth = datasheet.memory_bandwidth_bytes_per_s
    rate = train["work"] / train["time_s"]
    gemm = (train["kind"] == "gemm") & (train["d0"] >= 1024) & (train["time_s"] >= 50e-6)
    prefill = (train["kind"] == "attention_prefill") & (train["q_len"] >= 1024)
    streaming = train["kind"].isin(("elementwise", "norm")) & (train["work"] >= 64 * 2**20)
    is_gemm = train["kind"] == "gemm"
    weights_bound = is_gemm & (train["d0"] <= 16) & (train["time_s"] >= 20e-6)
    gemm_bw = train.loc[weights_bound, "op"].map(lambda o: o.bytes) / train.loc[weights_bound, "time_s"]
    decode = (train["kind"] == "attention_decode") & (train["work"] >= 32 * 2**20)

    def fraction(values: pd.Series, of: float) -> float:
        return round(min(1.0, float(np.median(values)) / of), 2)

    return {
        "compute": {
            "default": datasheet.efficiency.compute["default"],
            "gemm": fraction(rate[gemm], peak),
            "conv": datasheet.efficiency.compute.get("conv", datasheet.efficiency.compute["default"]),
            "attention": fraction(rate[prefill], peak),
        },
        "memory": {
            "default": fraction(rate[streaming], bandwidth),
            "gemm": fraction(gemm_bw, bandwidth),
            "attention": fraction(rate[decode], bandwidth),
        },
    }


# ---- predicting held-out measurements with ldsim's cost model --------------------------------


def _family(kind: str) -> str:
    return "memory_bound" if kind in _MEMORY_KINDS else kind


def _collective_s(profile: HardwareProfile, link: str, op: str, devices: int, nbytes: float) -> float:
    """Seconds ldsim gives a collective: the cost model's all-reduce inside a node; the
    measured curve or the link's roofline otherwise (the cost model prices nothing else yet)."""
    if link == "intra_node" and op == "allreduce":
        return operator_cost(Operator("allreduce", "allreduce", 0.0, float(nbytes)), profile, MEASURED_DTYPE, devices)[
            0
        ]
    curve = profile.collective(link, op, devices)
    if curve is not None:
        return curve.time_s(nbytes)
    spec = profile.node.intra_node if link == "intra_node" else profile.network.inter_node
    return allreduce_s(nbytes, devices, spec) if op == "allreduce" else spec.transfer_s(nbytes)


def _as_profile(profile: HardwareProfile | str | Path) -> HardwareProfile:
    return profile if isinstance(profile, HardwareProfile) else load_profile(profile)


def held_out_predictions(
    profile: HardwareProfile | str | Path,
    vidur_dir: Path,
    split: Split | None = None,
    *,
    include_training: bool = False,
) -> pd.DataFrame:
    """Ldsim's prediction of every held-out Vidur measurement (all of them with
    ``include_training``), one row each: ``family``, ``kind``, ``ldsim_op``, ``model``, ``tp``,
    ``measured_s``, ``predicted_s``, ``rel_err`` (predicted / measured - 1), ``held_out``.

    Operators are priced by :func:`simulator.cost.operator_cost` on ldsim's own operator of the
    measured shape (per instance, in fp16); decode attention by
    :meth:`ModelCost.decode_attention_s`, the engine's vectorised path; collectives by the
    cost model's all-reduce (inside a node) or the profile's curve or link roofline.
    """
    split = split or Split()
    prof = _as_profile(profile)
    ops = _mark_held_out(_cached(read_operator_points, vidur_dir), split)
    attention = _mark_held_out(_cached(read_attention_points, vidur_dir), split)
    network = _mark_held_out(_cached(read_collective_points, vidur_dir), split)
    network = network[network["source"] == NETWORK_SOURCE]
    points = pd.concat([ops, attention], ignore_index=True)
    if not include_training:
        points = points[points["held_out"]]
        network = network[network["held_out"]]
    predicted = np.empty(len(points))
    decode = (points["kind"] == "attention_decode").to_numpy()
    for i, (op, tp) in enumerate(zip(points["op"], points["tp"], strict=True)):
        if not decode[i]:
            predicted[i] = operator_cost(op, prof, MEASURED_DTYPE, int(tp))[0] / op.count
    decode_rows = points[decode]
    for _key, group in decode_rows.groupby(["model", "tp", "batch"]):
        arch: Decoder = group["arch"].iloc[0]
        tp, batch = int(group["tp"].iloc[0]), int(group["batch"].iloc[0])
        cost = ModelCost(Deployment(arch, MEASURED_DTYPE, tp), prof)
        kv_tokens = batch * group["kv_len"].to_numpy(dtype=np.float64)
        seconds = cost.decode_attention_s(batch, kv_tokens) / arch.layers
        predicted[points.index.get_indexer(group.index)] = seconds
    frame = pd.DataFrame(
        {
            "family": points["kind"].map(_family),
            "kind": points["kind"],
            "ldsim_op": points["ldsim_op"],
            "model": points["model"],
            "tp": points["tp"],
            "measured_s": points["time_s"],
            "predicted_s": predicted,
            "held_out": points["held_out"],
        }
    )
    coll = pd.DataFrame(
        {
            "family": "collectives",
            "kind": network["link"] + "/" + network["op"],
            "ldsim_op": network["op"],
            "model": network["source"],
            "tp": network["devices"],
            "measured_s": network["time_s"],
            "predicted_s": [
                _collective_s(prof, link, op, int(n), float(b))
                for link, op, n, b in zip(
                    network["link"], network["op"], network["devices"], network["bytes"], strict=True
                )
            ],
            "held_out": network["held_out"],
        }
    )
    out = pd.concat([frame, coll], ignore_index=True)
    return out.assign(rel_err=out["predicted_s"] / out["measured_s"] - 1.0)


def roofline_profile(profile_path: str | Path, efficiency: dict[str, Any] | None = None) -> HardwareProfile:
    """The profile at ``profile_path`` without its tables: the datasheet roofline with the
    profile's efficiencies, or with ``efficiency`` (an ``efficiency:`` section) when given.
    Pass :data:`DATASHEET_EFFICIENCY` for the A100 profile as it was before calibration."""
    data = yaml.safe_load(Path(profile_path).read_text())
    for key in ("tables", "measured_peaks"):
        data.pop(key, None)
    data["provenance"]["status"] = "datasheet"
    data["provenance"].pop("measured", None)
    if efficiency is not None:
        data["efficiency"] = efficiency
    folder = Path(tempfile.mkdtemp(prefix="ldsim-roofline-"))
    try:
        path = folder / Path(profile_path).name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return load_profile(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _summarise(predictions: pd.DataFrame, estimator: str) -> list[dict[str, Any]]:
    rows = []
    for family in FAMILIES:
        err = predictions.loc[predictions["family"] == family, "rel_err"].abs()
        if len(err):
            rows.append(
                dict(
                    family=family,
                    estimator=estimator,
                    points=len(err),
                    median_abs_rel_err=float(err.median()),
                    p90_abs_rel_err=float(err.quantile(0.9)),
                )
            )
    return rows


def check_against_vidur(profile_path: str | Path, vidur_dir: str | Path, split: Split | None = None) -> pd.DataFrame:
    """Held-out error of the profile at ``profile_path`` against Vidur's measurements.

    Returns one row per (family, estimator): ``points``, ``median_abs_rel_err`` and
    ``p90_abs_rel_err`` (|predicted / measured - 1|, dimensionless). Families: ``gemm``,
    ``attention_prefill``, ``attention_decode``, ``memory_bound`` (elementwise, norm,
    embedding), ``collectives``. Estimators: ``tables`` (the profile as it is), ``roofline``
    (the same profile without tables: datasheet peaks and its refitted efficiencies) and
    ``roofline_datasheet`` (no tables, the efficiencies the profile stated before calibration,
    :data:`DATASHEET_EFFICIENCY`). ``split`` must be the one the profile was built with.
    """
    split = split or Split()
    path, vidur = Path(profile_path), Path(vidur_dir)
    estimators = {
        "tables": load_profile(path),
        "roofline": roofline_profile(path),
        "roofline_datasheet": roofline_profile(path, DATASHEET_EFFICIENCY),
    }
    rows: list[dict[str, Any]] = []
    for name, profile in estimators.items():
        rows += _summarise(held_out_predictions(profile, vidur, split), name)
    return pd.DataFrame(rows)


def format_check(summary: pd.DataFrame) -> str:
    """A plain-text table of :func:`check_against_vidur`'s result: per family and estimator,
    the median / p90 absolute relative error in percent."""
    names = [e for e in ("tables", "roofline", "roofline_datasheet") if e in set(summary["estimator"])]
    lines = [f"{'family':<18} {'points':>7}" + "".join(f"{n + ' med/p90 %':>30}" for n in names)]
    for family, rows in summary.groupby("family", sort=False):
        med = rows.set_index("estimator")["median_abs_rel_err"].astype(float)
        p90 = rows.set_index("estimator")["p90_abs_rel_err"].astype(float)
        cells = "".join(f"{100 * float(med[n]):>21.1f} /{100 * float(p90[n]):>6.1f}" for n in names)
        lines.append(f"{family!s:<18} {int(rows['points'].iloc[0]):>7}{cells}")
    return "\n".join(lines)


# ---- writing the profile ----------------------------------------------------------------------


def _figures_line(summary: pd.DataFrame) -> str:
    """The held-out errors in one sentence per family, for the profile's notes."""
    parts = []
    for family in FAMILIES:
        rows = summary[summary["family"] == family].set_index("estimator")
        if rows.empty:
            continue

        def cell(name: str, rows: pd.DataFrame = rows) -> str:
            r = rows.loc[name]
            return f"{100 * r['median_abs_rel_err']:.1f}/{100 * r['p90_abs_rel_err']:.0f}%"

        parts.append(
            f"{family} ({int(rows['points'].iloc[0])} points) {cell('tables')} vs {cell('roofline')}"
            f" vs {cell('roofline_datasheet')}"
        )
    return "; ".join(parts)


def _notes(fit: _Fit, split: Split, summary: pd.DataFrame | None) -> str:
    kinds = sorted({str(k) for k in fit.tables["kind"]})
    keys = sorted({(str(link), str(op), int(n)) for link, op, n in fit.collectives[["link", "op", "devices"]].values})
    curves = [f"{link} {op} x{n}" for link, op, n in keys]
    figures = (
        "Held-out error, median/p90 of |predicted/measured - 1|, tables vs roofline with the refitted"
        f" efficiencies vs the datasheet roofline: {_figures_line(summary)}."
        if summary is not None
        else "Held-out error: see `python -m simulator.calibrate.vidur check`."
    )
    return " ".join(
        [
            "Datasheet values: peaks, memory, links, power and price (sources above); link latencies, idle"
            " power, storage bandwidth and the kernel-launch overhead are assumptions.",
            f"Calibrated from Vidur's A100 timings (measured in fp16; the tables are written for fp16 and"
            f" bf16, which the A100's tensor cores and memory run at the same rate). Tables: {', '.join(kinds)}"
            " -- GEMMs and memory-bound operators of one Llama-style layer of Llama-2-7B/70B, Llama-3-8B/70B,"
            " CodeLlama-34B, Qwen-72B and Phi-2 at TP 1-8 and 1-32768 tokens; attention of Llama-2-70B at TP 2"
            " (head dim 128: 32 query heads per device in prefill, 4 KV heads per device in decode; other head"
            " counts take the same rates). Collective curves (DGX A100, NVSwitch): " + ", ".join(curves) + ".",
            "Elementwise is one table for rope, SiLU-and-multiply and the residual add, whose achieved"
            " bandwidths differ (about 0.9, 1.0 and 1.8 TB/s on large tensors): ldsim's elementwise"
            " operators carry no variant to tell them apart.",
            "GEMM grid nodes outside the measured (N, K) hull (N below 768 or K below 512, as in"
            " convolutions, which price through the GEMM table as implicit GEMMs, and encoders) are"
            " extrapolated: the nearest measured rate, capped by the roofline of the measured GEMM peak and"
            " bandwidth. KV-cache append and the final norm, which Vidur did not time, price through the"
            " elementwise and norm tables.",
            "Roofline only (no A100 data in the source), with the efficiencies above: attention_encoder,"
            " embedding_bag, every dtype other than fp16/bf16 (fp32, tf32, int8), and decode attention of"
            " head dims other than 128. Efficiencies gemm, attention and memory are refitted from the training"
            " split (median achieved fraction in the regime each bounds); compute default and conv stay stated"
            " assumptions.",
            "Vidur's times are GPU kernel durations without host launch overhead (as in a CUDA-graph step).",
            f"Held out of the tables: {split.held_out_model} whole, every {split.every}th token count of the"
            f" other models, every {split.every}th attention row and every {split.every}th message size"
            f" ({fit.counts['held_out_points']} operator points). {figures}",
        ]
    )


def _profile_yaml(
    base: dict[str, Any], fit: _Fit, split: Split, summary: pd.DataFrame | None, *, stem: str, date: str, command: str
) -> dict[str, Any]:
    data = {k: v for k, v in base.items() if k not in ("measured_peaks", "tables")}
    sources = [s for s in base["provenance"]["sources"] if not str(s).startswith("Vidur")]
    data["provenance"] = {
        "status": "fitted",
        "sources": [*sources, VIDUR_SOURCE],
        "notes": _notes(fit, split, summary),
        "measured": {
            "date": date,
            "host": "published measurements",
            "device": "NVIDIA A100-SXM4-80GB (Vidur profiling)",
            "command": command,
        },
    }
    data["efficiency"] = {
        "source": "gemm, attention and memory refitted from Vidur's A100 timings (training split);"
        " compute default and conv: stated assumptions",
        **fit.efficiency,
    }
    peak_tflops = round(fit.peaks.gemm_flops_per_s / 1e12, 1)
    data["measured_peaks"] = {
        "tflops": {dtype: peak_tflops for dtype in TABLE_DTYPES},
        "memory_bandwidth_gb_per_s": round(fit.peaks.memory_bytes_per_s / 1e9),
        "kernel_launch_overhead_us": round(min(fit.peaks.floor_s.values()) * 1e6, 1),
    }
    data["tables"] = {
        "operators": f"{stem}.tables.csv",
        "collectives": f"{stem}.collectives.csv",
        "raw": f"{stem}.raw.csv",
    }
    return data


_HEADER = (
    "# NVIDIA A100-SXM4-80GB in a DGX A100-style node: datasheet values, with operator and collective\n"
    "# tables calibrated from Vidur's published A100 measurements. Generated by\n"
    "#   {command}\n"
    "# (simulator/calibrate/vidur.py); edit the converter, not this file.\n"
)


class _ProfileDumper(yaml.SafeDumper):
    """Block layout, with short mappings of scalars (peaks, links) on one line and long text folded."""


def _represent_mapping(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flat = all(not isinstance(v, dict | list) and len(str(v)) <= 40 for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flat)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=">" if len(data) > 100 else None)


_ProfileDumper.add_representer(dict, _represent_mapping)
_ProfileDumper.add_representer(str, _represent_str)

_INTEGER_COLUMNS = ("tp", "tokens", "batch", "q_len", "past_len", "kv_len", "d0", "d1", "d2", "d3", "devices", "bytes")
_FLOAT_FORMATS = {"work": "{:.6g}", "time_s": "{:.6g}", "spread": "{:.3g}"}


def _to_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV with whole numbers as integers and floats to the digits they carry."""
    out = frame.copy()
    for col in out.columns:
        if col in _INTEGER_COLUMNS:
            out[col] = pd.array(np.round(pd.to_numeric(out[col]).to_numpy(dtype=np.float64)), dtype="Int64")
        elif col in _FLOAT_FORMATS:
            fmt = _FLOAT_FORMATS[col]
            out[col] = [fmt.format(v) if pd.notna(v) else "" for v in out[col]]
    out.to_csv(path, index=False)


def _write_files(folder: Path, stem: str, fit: _Fit, data: dict[str, Any], command: str) -> Path:
    _to_csv(fit.tables, folder / f"{stem}.tables.csv")
    _to_csv(fit.collectives, folder / f"{stem}.collectives.csv")
    _to_csv(fit.raw, folder / f"{stem}.raw.csv")
    path = folder / f"{stem}.yaml"
    text = yaml.dump(data, Dumper=_ProfileDumper, sort_keys=False, width=120, allow_unicode=True)
    path.write_text(_HEADER.format(command=command) + text)
    return path


def build_profile(
    vidur_dir: str | Path,
    out_yaml: str | Path,
    *,
    split: Split | None = None,
    base_yaml: str | Path | None = None,
    date: str | None = None,
    command: str | None = None,
    with_errors: bool = True,
) -> Path:
    """Write a calibrated A100 profile from Vidur's data; return its path.

    Writes ``<stem>.tables.csv`` (operator grids), ``<stem>.collectives.csv`` (collective
    curves) and ``<stem>.raw.csv`` beside ``out_yaml``. The raw CSV holds the measurements the
    grids were filled from, one per row: ``source`` (``mlp``, ``attention``, ``network/<folder>``),
    ``model``, ``tp``, the measured shape (``tokens``; ``batch``, ``q_len``, ``past_len``,
    ``kv_len``; ``link``, ``devices``, ``bytes``), Vidur's and ldsim's operator names, ldsim's
    ``kind``, coordinates ``d0..d2`` and ``work``, and ``time_s`` and ``spread``. Then
    ``out_yaml`` itself: the datasheet values of ``base_yaml`` (default:
    ``out_yaml`` as it is) with provenance ``fitted``, refitted efficiencies, measured peaks,
    the tables and, in the notes, the held-out error of :func:`check_against_vidur`. Every file
    is validated with :func:`simulator.hardware.load_profile` in a scratch folder first and
    then moved into place (each move atomic). ``date``: ISO date of the conversion (default
    today); ``command``: the command recorded in the profile; ``with_errors=False`` leaves the
    held-out error out of the notes (and saves the time of computing it).
    """
    split = split or Split()
    vidur, out = Path(vidur_dir), Path(out_yaml)
    base_path = Path(base_yaml) if base_yaml is not None else out
    stem = out.name.removesuffix(".yaml")
    date = date or datetime.date.today().isoformat()
    command = command or f"python -m simulator.calibrate.vidur build --vidur-dir {vidur} --out {out}"
    base = yaml.safe_load(base_path.read_text())
    datasheet = roofline_profile(base_path)
    fit = _fit(vidur, split, datasheet)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=out.parent))
    try:
        first, final = scratch / "check", scratch / "final"
        first.mkdir()
        final.mkdir()
        summary = None
        if with_errors:
            draft_data = _profile_yaml(base, fit, split, None, stem=stem, date=date, command=command)
            summary = check_against_vidur(_write_files(first, stem, fit, draft_data, command), vidur, split)
        data = _profile_yaml(base, fit, split, summary, stem=stem, date=date, command=command)
        load_profile(_write_files(final, stem, fit, data, command))
        for suffix in (".raw.csv", ".collectives.csv", ".tables.csv", ".yaml"):
            os.replace(final / f"{stem}{suffix}", out.parent / f"{stem}{suffix}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulator.calibrate.vidur build|check``: write the calibrated A100 profile
    from Vidur's data, or print a profile's held-out error against it. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m simulator.calibrate.vidur", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the calibrated profile, its tables and raw points")
    build.add_argument("--vidur-dir", default="../shared/vidur_data", help="Vidur's data folder (holding profiling/)")
    build.add_argument("--out", default="hardware_profiles/a100-sxm-80gb.yaml", help="profile YAML to write")
    build.add_argument("--base", default=None, help="profile whose datasheet values to keep (default: --out)")
    build.add_argument("--date", default=None, help="ISO date recorded as the conversion date (default: today)")
    check = sub.add_parser("check", help="held-out error of a profile against Vidur's measurements")
    check.add_argument("profile", nargs="?", default="hardware_profiles/a100-sxm-80gb.yaml")
    check.add_argument("--vidur-dir", default="../shared/vidur_data", help="Vidur's data folder (holding profiling/)")
    for p in (build, check):
        p.add_argument("--held-out-model", default=HELD_OUT_MODEL, help="model kept out of the tables entirely")
        p.add_argument("--every", type=int, default=HOLD_OUT_EVERY, help="hold out every N-th token count/row/size")
    args = parser.parse_args(argv)
    split = Split(args.held_out_model, args.every)
    if args.command == "build":
        words = ["python -m simulator.calibrate.vidur build", f"--vidur-dir {args.vidur_dir}", f"--out {args.out}"]
        if args.held_out_model != HELD_OUT_MODEL or args.every != HOLD_OUT_EVERY:
            words.append(f"--held-out-model {args.held_out_model} --every {args.every}")
        path = build_profile(
            args.vidur_dir, args.out, split=split, base_yaml=args.base, date=args.date, command=" ".join(words)
        )
        profile = load_profile(path)
        print(f"wrote {path} ({len(profile.table_keys())} tables, {len(profile.collective_keys())} collective curves)")
        print(profile.provenance.notes.rsplit("Held-out error", 1)[-1])
        return 0
    print(format_check(check_against_vidur(args.profile, args.vidur_dir, split)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
