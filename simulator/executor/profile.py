"""A hardware profile of this machine for given small models: the calibration the validator uses.

``ldsim calibrate`` times operators alone on generic grids. :func:`profile_models` measures
instead exactly the operator tables an experiment's models need, at the shapes its runs can
reach, **inside the models' own forward passes**: an executor worker (the same cores, threads,
allocator and environment as the execution) runs the real model
(:mod:`simulator.executor.torch_models`) over a grid of step shapes, and the runner marks the
end of each ldsim operator (:attr:`~simulator.executor.torch_models.CNNRunner.mark`), so each
operator's time is what it costs in its place in the model -- with the caches as the previous
operator leaves them, its Python dispatch, and whatever small kernels the torch code runs
around it. Timing an operator alone, over and over, finds it faster than that (weights and
inputs stay in cache; the first calls of a pass pay for cold code), by 5-15% on a small CNN
on a 2-core CPU, which is the error this avoids. The shapes:

* batch models (CNN, DLRM): every batch size 1, 2, 3, 4, 6, 8, ... up to the largest batch;
* encoders: batch sizes in powers of two times sequence lengths in powers of two (a batch of
  several has one shorter sequence, so attention runs masked, as for a mixed batch);
* decoders: the prefill of one prompt of each length (powers of two), iterations of several
  whole prompts up to the largest iteration, and decode iterations of ``n`` sequences each
  attending ``L`` cached tokens over ``n`` and ``L`` (powers of two); after a past, for
  chunked prefill.

Each operator instance becomes a sample of its table point (:mod:`simulator.tables`: GEMMs at
(M, N, K), convolutions at their batch, memory-bound kinds at their bytes, attention at its
coordinates), every point the median of its samples. GEMM shapes that a full grid needs but no
pass ran are timed alone (harness :func:`~simulator.calibrate.operators.gemm_case`). The
harness's building blocks do the rest: :class:`~simulator.calibrate.harness.Session`, raw rows,
:func:`~simulator.calibrate.writer.write_profile`. Then the wake-up cost after idling is
measured through the worker (:func:`wake_curve`) into the profile's ``runtime`` section.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.models import CNN, Architecture, Decoder, Encoder, Operator, Recommendation

__all__ = [
    "STEP_PAUSE_S",
    "WAKE_GAPS_S",
    "ModelShapes",
    "measure_here",
    "model_shapes",
    "profile_models",
    "set_runtime",
    "wake_curve",
]


@dataclass(frozen=True)
class ModelShapes:
    """The shapes a model reaches in an experiment: ``max_samples`` in a batch (running
    sequences for a decoder); ``max_seq`` tokens of an encoder sequence; for a decoder the
    longest prompt ``max_prompt``, the longest context ``max_context``, the most tokens in one
    iteration ``max_step_tokens`` and whether prompts are ``chunked`` (prefill after a past)."""

    arch: Architecture
    dtype: str
    max_samples: int
    max_seq: int = 0
    max_prompt: int = 0
    max_context: int = 0
    max_step_tokens: int = 0
    chunked: bool = False
    median_seq: int = 0

    def describe(self) -> str:
        """One phrase for the profile's notes."""
        if isinstance(self.arch, Decoder):
            return (
                f"{self.arch.name} {self.dtype} (up to {self.max_samples} sequences, prompts up to"
                f" {self.max_prompt}, contexts up to {self.max_context}, {self.max_step_tokens} tokens a step)"
            )
        if isinstance(self.arch, Encoder):
            return f"{self.arch.name} {self.dtype} (batches up to {self.max_samples} x {self.max_seq} tokens)"
        return f"{self.arch.name} {self.dtype} (batches up to {self.max_samples})"


def model_shapes(resolved_runs: Iterable[Any]) -> list[ModelShapes]:
    """The shapes each deployed model reaches over some resolved runs (their union)."""
    import numpy as np

    from simulator.executor.run import max_batch_items

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for resolved in resolved_runs:
        table = resolved.generate_workload(np.random.SeedSequence(resolved.run.seed).spawn(3)[0])
        for code, plan in enumerate(resolved.models.values()):
            rows = table.model == code
            arch = plan.arch
            key = (arch.name, plan.dtype)
            entry = found.setdefault(key, {"arch": arch, "dtype": plan.dtype})
            if not rows.any():
                continue
            samples = max_batch_items(plan, table, code)
            entry["max_samples"] = max(entry.get("max_samples", 1), samples)
            inputs = table.input_tokens[rows]
            entry["median_seq"] = max(1, int(np.median(inputs)))
            if isinstance(arch, Encoder):
                entry["max_seq"] = max(entry.get("max_seq", 1), min(int(inputs.max()), arch.max_positions))
            if isinstance(arch, Decoder):
                outputs = table.output_tokens[rows]
                prompt = min(int(inputs.max()), arch.max_context_tokens)
                context = min(int((inputs + outputs).max()), arch.max_context_tokens)
                params = plan.batching.params
                budget = next(
                    (
                        int(getattr(params, k))
                        for k in ("max_batch_tokens", "max_num_batched_tokens", "chunk_tokens")
                        if getattr(params, k, None) is not None
                    ),
                    None,
                )
                step = samples * prompt if budget is None else min(budget, samples * prompt)
                entry["max_prompt"] = max(entry.get("max_prompt", 1), prompt)
                entry["max_context"] = max(entry.get("max_context", 1), context)
                entry["max_step_tokens"] = max(entry.get("max_step_tokens", 1), step, samples)
                entry["chunked"] = entry.get("chunked", False) or getattr(params, "chunk_tokens", None) is not None
    return [ModelShapes(**entry) for entry in found.values() if "max_samples" in entry]


# ---- grids -----------------------------------------------------------------------------------


def _pow2_upto(lo: int, hi: int) -> list[int]:
    """Powers of two from the one at or below ``lo`` to the one at or above ``hi``."""
    lo = max(1, lo)
    start = 1 << (lo.bit_length() - 1)
    out = [start]
    while out[-1] < hi:
        out.append(out[-1] * 2)
    return out


def _batches(max_samples: int) -> list[int]:
    """Batch sizes 1, 2, 3, 4, 6, 8, 12, 16, ... up to (and including) ``max_samples``."""
    out = {1}
    p = 1
    while p < max_samples:
        out.update(v for v in (2 * p, 3 * p) if v <= max_samples)
        p *= 2
    out.add(max_samples)
    return sorted(out)


# ---- the measuring side (runs in an executor worker) ----------------------------------------


class _Timer:
    """Splits a forward pass into its operators: called with an operator's name right after it
    ran (the runner's ``mark``), it records the time since the previous mark. On a GPU each mark
    records a CUDA event and the times are read after the step (no synchronisation inside it)."""

    def __init__(self, target: Any) -> None:
        self.cuda = bool(target.is_cuda)
        self.names: list[str] = []
        self.stamps: list[Any] = []

    def start(self) -> None:
        self.names = []
        self.stamps = [self._now()]

    def _now(self) -> Any:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def __call__(self, name: str) -> None:
        self.names.append(name)
        self.stamps.append(self._now())

    def segments(self) -> list[tuple[str, float]]:
        """``(operator name, seconds)`` of the last pass, in order."""
        if self.cuda:
            self.stamps[-1].synchronize()
            gaps = [a.elapsed_time(b) * 1e-3 for a, b in itertools.pairwise(self.stamps)]
        else:
            gaps = [b - a for a, b in itertools.pairwise(self.stamps)]
        return list(zip(self.names, gaps, strict=True))


class _Points:
    """Samples per table point, ``(kind, dtype, variant, coords) -> (operator, [seconds])``."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str, str, tuple[int, ...]], tuple[Operator, list[float]]] = {}

    def add(self, op: Operator, dtype: str, seconds: float, coords: tuple[int, ...] | None = None) -> None:
        key = (op.kind, dtype, op.variant, tuple(int(c) for c in (coords if coords is not None else op.shape)))
        self.points.setdefault(key, (op, []))[1].append(seconds)

    def rows(self, session: Any, impl: str) -> None:
        """Record every point as a raw row (its median and spread over the samples)."""
        from simulator.calibrate.records import row
        from simulator.calibrate.timing import Measurement
        from simulator.tables import DIMS

        for (kind, dtype, variant, coords), (op, samples) in self.points.items():
            names, unit = DIMS[kind]
            work = op.bytes if unit == "bytes" else op.flops
            family = _FAMILY.get(kind, "memory")
            m = Measurement.from_samples(samples, 1)
            session.rows.append(row(family, kind, dtype, variant, impl, coords, names, work, op.flops, op.bytes, m))


_FAMILY = {
    "gemm": "gemm",
    "conv": "conv",
    "attention_prefill": "attention",
    "attention_encoder": "attention",
    "attention_decode": "attention",
    "embedding_bag": "embedding",
}


@dataclass
class _Case:
    """One step shape of the in-situ grid: ``setup`` (untimed) and ``run`` (timed) it, and turn
    the operators' times into table samples with ``record``."""

    run: Callable[[], Any]
    record: Callable[[dict[str, list[float]]], None]
    setup: Callable[[], Any] | None = None


#: Pause between two timed steps of the in-situ grid, seconds (about the coordinator's
#: turnaround between two steps of a busy replica).
STEP_PAUSE_S = 0.0002


def _interleaved(runner: Any, timer: _Timer, cases: list[_Case], reps: int, seed: int = 0) -> None:
    """Time every case ``reps`` times with the runner marking its operators, the cases in a
    fresh random order each round with a short pause between steps -- as a serving replica's
    steps come, with shapes changing from one to the next -- after two untimed rounds."""
    import random
    import select

    order = random.Random(seed)
    found: list[dict[str, list[float]]] = [{} for _ in cases]
    for rnd in range(reps + 2):
        picks = list(range(len(cases)))
        order.shuffle(picks)
        for i in picks:
            case = cases[i]
            if case.setup is not None:
                case.setup()
            select.select([], [], [], STEP_PAUSE_S)
            if rnd < 2:
                case.run()
                continue
            runner.mark = timer
            try:
                timer.start()
                case.run()
            finally:
                runner.mark = None
            for name, seconds in timer.segments():
                found[i].setdefault(name, []).append(seconds)
    for case, times in zip(cases, found, strict=True):
        case.record(times)


def _by_name(ops: Iterable[Operator]) -> dict[str, Operator]:
    return {op.name: op for op in ops}


def _recorder(points: _Points, ops: dict[str, Operator], dtype: str) -> Callable[[dict[str, list[float]]], None]:
    def record(found: dict[str, list[float]]) -> None:
        for name, times in found.items():
            for t in times:
                points.add(ops[name], dtype, t)

    return record


def _batch_model(points: _Points, s: ModelShapes, target: Any, reps: int) -> None:
    """A CNN's or a DLRM's operators inside its forward pass, over the batch sizes."""
    from simulator.executor import torch_models as tm

    arch = s.arch
    assert isinstance(arch, CNN | Recommendation)
    runner = tm.build_runner(arch, s.dtype, target.torch_device, 0, s.max_samples)
    cases = []
    for b in _batches(s.max_samples):

        def run(b: int = b) -> Any:
            return runner.run(b)

        cases.append(_Case(run, _recorder(points, _by_name(arch.operators(b, s.dtype)), s.dtype)))
    _interleaved(runner, _Timer(target), cases, reps)


def _encoder(points: _Points, s: ModelShapes, target: Any, reps: int) -> None:
    """An encoder's operators inside its forward pass, over batch sizes and sequence lengths
    (a batch of more than one has one shorter sequence, so its attention is masked as a mixed
    batch's is)."""
    from simulator.executor import torch_models as tm

    arch = s.arch
    assert isinstance(arch, Encoder)
    runner = tm.build_runner(arch, s.dtype, target.torch_device, 0, s.max_samples)
    cases = []
    for b in sorted({*_pow2_upto(1, s.max_samples), s.max_samples}):
        for seq in sorted({*_pow2_upto(8, s.max_seq), s.max_seq}):
            if b > s.max_samples or seq > s.max_seq:
                continue
            lengths = [seq] * b
            if b > 1:
                lengths[-1] = max(1, seq - 1)
            ops = _by_name(arch.operators(b, seq, s.dtype))

            def run(lengths: list[int] = lengths) -> Any:
                return runner.run(lengths)

            cases.append(_Case(run, _recorder(points, ops, s.dtype)))
    _interleaved(runner, _Timer(target), cases, reps)


def _decoder(points: _Points, s: ModelShapes, target: Any, reps: int) -> None:
    """A decoder's operators inside real iterations: prefills of one prompt of each length
    (and several prompts, for iterations of up to ``max_step_tokens``), and decode steps of
    ``n`` sequences that each attend ``L`` cached tokens, over ``n`` and ``L``."""
    from simulator.executor import torch_models as tm

    arch = s.arch
    assert isinstance(arch, Decoder)
    dt = s.dtype
    runner = tm.build_runner(arch, dt, target.torch_device, 0, s.max_samples)
    a, b_kv, c, d = arch.decode_attention_terms(dt)
    kvh = arch.kv_heads

    def recorder(
        tokens: int, emitting: int, attention: dict[str, Operator]
    ) -> Callable[[dict[str, list[float]]], None]:
        ops = _by_name(arch.dense_operators(tokens, 0, dt)) | _by_name(arch.sequence_operators(emitting, dt))
        ops |= attention

        def record(found: dict[str, list[float]]) -> None:
            for name, times in found.items():
                op = ops[name]
                coords = (op.shape[0], op.shape[1], max(1, op.shape[2])) if name == "attention_prefill" else None
                for t in times:
                    points.add(op, dt, t, coords)

        return record

    cases: list[_Case] = []
    rid = -1000
    prompts = sorted({*_pow2_upto(1, s.max_prompt), s.max_prompt})
    pasts = [0, *_pow2_upto(16, max(16, s.max_context // 2))] if s.chunked else [0]
    for past in pasts:
        for q in prompts:
            if past + q > arch.max_context_tokens or q > s.max_prompt:
                continue
            rid -= 1

            def setup(rid: int = rid, past: int = past, q: int = q) -> None:
                runner.release(rid, True)
                if past:
                    runner.step([tm.StepItem(rid, past + q, 0, past, False)], 0)

            def prefill(rid: int = rid, past: int = past, q: int = q) -> Any:
                return runner.step([tm.StepItem(rid, past + q, past, q, True)], 0)

            attention = {"attention_prefill": arch.prefill_attention(q, past + q, dt)}
            cases.append(_Case(prefill, recorder(q, 1, attention), setup))
    tokens = s.max_prompt * 2
    while tokens <= s.max_step_tokens:  # several whole prompts in one iteration
        k = tokens // s.max_prompt
        ids = list(range(rid - 1, rid - 1 - k, -1))
        rid -= k + 1

        def release(ids: list[int] = ids) -> None:
            for i in ids:
                runner.release(i, True)

        def multi(ids: list[int] = ids) -> Any:
            return runner.step([tm.StepItem(i, s.max_prompt, 0, s.max_prompt, True) for i in ids], 0)

        attention = {"attention_prefill": arch.prefill_attention(s.max_prompt, s.max_prompt, dt)}
        cases.append(_Case(multi, recorder(k * s.max_prompt, k, attention), release))
        tokens *= 2
    lengths = sorted({*_pow2_upto(16, s.max_context), s.max_context})
    longest = min(max(lengths), arch.max_context_tokens)
    for n in sorted({*_pow2_upto(1, s.max_samples), s.max_samples}):
        if n > s.max_samples:
            continue
        ids = list(range(rid - 1, rid - 1 - n, -1))
        rid -= n + 1
        runner.step([tm.StepItem(i, longest - 1, 0, longest - 1, True) for i in ids], 0)  # cache them, untimed
        for keys in lengths:
            keys = min(keys, longest)

            def decode(ids: list[int] = ids, keys: int = keys) -> Any:
                return runner.step([tm.StepItem(i, longest - 1, keys - 1, 1, True) for i in ids], len(ids))

            kv_total = n * keys
            attn = Operator("decode_attention", "attention_decode", a * kv_total + c * n, b_kv * kv_total + d * n, 1)
            dense = recorder(n, n, {})

            def record(
                found: dict[str, list[float]],
                attn: Operator = attn,
                point: tuple[int, int] = (n * kvh, keys),
                dense: Any = dense,
            ) -> None:
                for t in found.pop("decode_attention", []):
                    points.add(attn, dt, t, point)
                dense(found)

            cases.append(_Case(decode, record))
    _interleaved(runner, _Timer(target), cases, reps)


def _fill_gemm(session: Any, points: _Points, reps: int) -> None:
    """Time, alone, the GEMM shapes a full grid needs that no forward pass ran (the table's
    (M, N, K) axes are the union of the shapes seen)."""
    import itertools as it

    from simulator.calibrate.operators import gemm_case

    by_dtype: dict[str, set[tuple[int, ...]]] = {}
    for kind, dtype, _variant, coords in points.points:
        if kind == "gemm":
            by_dtype.setdefault(dtype, set()).add(coords)
    for dtype, seen in by_dtype.items():
        axes = [sorted({c[i] for c in seen}) for i in range(3)]
        for m, n, k in it.product(*axes):
            if (m, n, k) in seen:
                continue
            case = gemm_case(m, n, k, dtype)
            measured = session.time_case(case)
            points.add(case.op, dtype, measured.median_s)


def measure_here(
    target: Any, shapes: list[ModelShapes], out: str, name: str, command: str, quick: bool = True
) -> dict[str, Any]:
    """Measure the tables ``shapes`` need on ``target`` and write the profile ``out``; return
    ``{"profile_path", "rows", "seconds", "notes"}``. Runs where the models execute (see the
    module docstring)."""
    from simulator.calibrate.grids import grid_for
    from simulator.calibrate.harness import Session
    from simulator.calibrate.timing import FULL, QUICK
    from simulator.calibrate.writer import write_profile

    start = time.perf_counter()
    session = Session(target, grid_for(target.kind, True), QUICK if quick else FULL, None, quick)
    target.dtypes = sorted({s.dtype for s in shapes})
    reps = 15 if quick else 31
    session.notes.append(
        "measured by ldsim validate for the executor's models, each operator timed inside the models' own"
        f" forward passes ({reps} passes per shape; GEMM shapes no pass ran timed alone to complete the grid): "
        + "; ".join(s.describe() for s in shapes)
    )
    points = _Points()
    for s in shapes:
        with session.section(s.arch.name):
            if isinstance(s.arch, Decoder):
                _decoder(points, s, target, reps)
            elif isinstance(s.arch, Encoder):
                _encoder(points, s, target, reps)
            else:
                _batch_model(points, s, target, reps)
    with session.section("gemm fill"):
        _fill_gemm(session, points, reps)
    points.rows(session, "in-situ")
    figures = {"stream_gb_per_s": _stream_gb_per_s(session)}
    path = write_profile(session, Path(out), name, command, quick, figures, time.perf_counter() - start)
    return {
        "profile_path": str(path),
        "rows": len(session.rows),
        "seconds": time.perf_counter() - start,
        "notes": session.notes,
    }


#: Idle gaps after which the wake-up cost of a step is measured, seconds.
WAKE_GAPS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def wake_curve(pool: Any, shapes: ModelShapes, profile: Path, reps: int = 21, seed: int = 0) -> list[list[float]]:
    """The extra seconds of a model's first step after the worker idled each of
    :data:`WAKE_GAPS_S`, measured as the executor runs it.

    This (coordinating) process sleeps in ``select`` until the gap is over, sends a step to
    worker 0 of ``pool``, and takes the time from the end of the gap to the step's end on the
    worker, less what ``profile``'s tables price that step at (their steps came
    :data:`STEP_PAUSE_S` apart). The steps are those a replica runs after idling: one or two
    samples, or sequences of the model's median length, or the prefill of one prompt (short,
    median or longest), drawn at random. The extra at each gap is the median over ``reps``
    steps less the same at the pause of the tables (so it is 0 for a busy replica), made
    non-decreasing in the gap (a longer idle period never leaves the machine warmer); the
    trials of all gaps run in one shuffled order. It includes waking both processes, not only
    the colder step."""
    import random
    import select
    import statistics

    from simulator.cost import Deployment, ModelCost
    from simulator.hardware import load_profile

    arch = shapes.arch
    cost = ModelCost(Deployment(arch, shapes.dtype), load_profile(profile))
    replica = -7  # a build slot of its own on the worker
    rng = random.Random(seed)
    steps: list[tuple[tuple[Any, ...], float]] = []
    if isinstance(arch, Decoder):
        for q in sorted({max(1, shapes.median_seq // 2), shapes.median_seq, shapes.max_prompt}):
            q = max(1, min(q, arch.max_context_tokens - 1))
            message: tuple[Any, ...] = ("step", replica, [(-1, q, 0, q, True)], 0, [(-1, True)])
            steps.append((message, cost.iteration([(q, q)], 0, 0)[0]))
        warmup: list[Any] = [("step", *m[2:]) for m, _ in steps]
    else:
        for b in sorted({1, min(2, shapes.max_samples)}):
            if isinstance(arch, Encoder):
                seq = max(1, min(shapes.median_seq, arch.max_positions))
                payload: Any = [seq] * b
                predicted = cost.batch(b, seq)[0]
            else:
                payload, predicted = b, cost.batch(b)[0]
            steps.append((("batch", replica, payload), predicted))
        warmup = [m[2] for m, _ in steps]
    build = ("build", replica, arch, shapes.dtype, 0, max(1, shapes.max_samples), warmup * 2)
    pool.request(0, build, 600.0, f"build {arch.name} to measure its wake-up cost")

    def extra(gap: float) -> float:
        message, predicted = rng.choice(steps)
        due = time.perf_counter() + gap
        select.select([], [], [], gap)
        _, _, _, end = pool.request(0, message, 60.0, f"run a step of {arch.name}")
        return float(end - due) - predicted

    for _ in range(2 * len(steps)):
        extra(STEP_PAUSE_S)
    trials = [gap for gap in (STEP_PAUSE_S, *WAKE_GAPS_S) for _ in range(reps)]
    rng.shuffle(trials)  # gaps interleaved: a drift of the machine over time hits them all alike
    found: dict[float, list[float]] = {}
    for gap in trials:
        found.setdefault(gap, []).append(extra(gap))
    busy = statistics.median(found[STEP_PAUSE_S])
    curve = []
    worst = 0.0
    for gap in WAKE_GAPS_S:
        worst = max(worst, statistics.median(found[gap]) - busy)
        curve.append([gap, round(worst, 7)])
    pool.request(0, ("drop", replica), 60.0, "free the model")
    return curve


def set_runtime(path: Path | str, architectures: dict[str, dict[str, Any]], source: str | None = None) -> None:
    """Write (or update) the ``runtime`` section of a profile YAML in place (atomically),
    keeping the rest of the file as it is: ``architectures`` maps architecture names to fields
    of :class:`~simulator.hardware.ArchitectureRuntime` (``step_overhead_us``,
    ``step_overhead_per_item_us``, ``wake_after_idle``, ``step_time_quantiles``), merged into what the profile has. The
    result is validated by loading it."""
    import os

    import yaml

    from simulator.errors import LdsimError
    from simulator.hardware import load_profile

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    runtime = dict(data.get("runtime") or {})
    per = {k: dict(v) for k, v in (runtime.get("per_architecture") or {}).items()}
    for name, fields in architectures.items():
        entry = per.setdefault(name, {})
        for key, value in fields.items():
            if key == "wake_after_idle":
                entry[key] = [[float(g), float(e)] for g, e in value]
            elif key == "step_time_quantiles":
                entry[key] = [round(float(q), 4) for q in value]
            else:
                entry[key] = round(float(value), 2)
    runtime["per_architecture"] = per
    if source is not None:
        runtime["source"] = source
    lines = text.splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if line.startswith("runtime:")), len(lines))
    block = yaml.safe_dump({"runtime": runtime}, sort_keys=False, width=110, default_flow_style=None)
    if any(line[:1] not in ("", " ", "#", "\n", "-") for line in lines[cut + 1 :]):
        data["runtime"] = runtime  # runtime was not the last key: write the whole file anew
        body = "".join(line for line in lines if line.startswith("#")) + yaml.safe_dump(
            data, sort_keys=False, width=110
        )
    else:
        body = "".join(lines[:cut]) + block
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    try:
        load_profile(tmp)
    except LdsimError as exc:
        tmp.unlink()
        raise LdsimError(f"{path}: the runtime section written does not load: {exc}") from None
    os.replace(tmp, path)
    load_profile(path)


def _stream_gb_per_s(session: Any) -> float:
    """Streaming copy bandwidth of a buffer several times the last-level cache (GB/s)."""
    import torch

    n = max(4 * session.target.cache_bytes, 64 * 2**20) // 4
    src = torch.ones(n, device=session.target.torch_device)
    dst = torch.empty_like(src)
    m = session.time(lambda: dst.copy_(src))
    return 2.0 * n * 4 / m.median_s / 1e9


# ---- the coordinating side -------------------------------------------------------------------


def profile_models(
    shapes: list[ModelShapes],
    out: Path,
    device: str = "cpu",
    cores_per_device: int | None = None,
    quick: bool = True,
    command: str = "ldsim validate",
    progress: Callable[[str], None] | None = None,
    tables: bool = True,
) -> dict[str, Any]:
    """Measure a profile of this machine for ``shapes`` in an executor worker (placed as the
    first worker of an execution is) and write it to ``out`` (a ``.yaml``, with its CSVs
    beside it); return what :func:`measure_here` returns. With ``tables=False`` the profile
    at ``out`` exists and only the wake-up curves are measured into it."""
    from simulator.executor.engine import WorkerPool, plan_workers
    from simulator.executor.run import require_torch

    require_torch("measuring a profile")
    config = plan_workers(1, device, cores_per_device)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with WorkerPool(config) as pool:
        if progress is not None:
            progress(
                f"measuring a profile of {pool.workers[0].description} for: " + "; ".join(s.describe() for s in shapes)
            )
        result: dict[str, Any] = {"profile_path": str(out), "rows": 0, "seconds": 0.0, "notes": []}
        if tables:
            kwargs = {"shapes": shapes, "out": str(out), "name": out.stem, "command": command, "quick": quick}
            result = pool.request(0, ("profile", kwargs), 3600.0, "measure the profile")[1]
        start = time.perf_counter()
        wake = {s.arch.name: {"wake_after_idle": wake_curve(pool, s, out)} for s in shapes}
        result["seconds"] += time.perf_counter() - start
        set_runtime(
            out,
            wake,
            source=f"measured by `{command}` through an executor worker ({pool.workers[0].description}):"
            " wake_after_idle by sleeping before steps; step_overhead_us and step_overhead_per_item_us fitted"
            " to the steps of a calibration execution (another seed than the validated runs)",
        )
    if progress is not None:
        progress(f"wrote {result['profile_path']} ({result['rows']} measurements in {result['seconds']:.0f} s)")
    return result
