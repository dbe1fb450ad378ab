"""``ldsim validate``: simulate and execute the same experiment over a sweep of loads; report the error.

The steps, each resumable (a finished step is not redone when the command is repeated):

1. **Profile.** The given ``--profile`` (measured for the experiment's models by
   :func:`~simulator.executor.profile.profile_models` if the file does not exist yet), or by
   default ``OUT/profile/<experiment>.yaml``, measured on first use: operator tables at the
   shapes the models reach and the wake-up cost after idling, through an executor worker.
2. **Saturation and runtime.** A burst of the experiment's requests (all arriving at once) is
   executed; its throughput is the measured saturation throughput. Then, when the profile has
   no step overhead for a model, a calibration execution at half that load with another seed
   (none of its requests is validated) gives it: the host time from a step's nominal start to
   the worker's start, fitted as a fixed part plus a part per request or sample
   (:func:`fit_step_overhead`), and the scatter of step times around their price
   (:func:`step_time_quantiles`), written into the profile's ``runtime`` section.
3. **Loads.** For each load ``l`` (default 0.2, 0.4, 0.6, 0.8) the experiment runs at
   ``workload.rate_rps = l x saturation`` (run ids ``load-<l>_<run id>``): simulated with the
   profile into ``OUT/simulated/`` and executed into ``OUT/executed/``, both in the ordinary
   results layout (``ldsim report`` works on either).
4. **Fidelity.** :mod:`simulator.executor.fidelity` compares them per request and in
   aggregate and writes ``OUT/fidelity.html`` (figures in ``OUT/figures/``),
   ``OUT/fidelity.json`` and ``OUT/fidelity.csv``.

With ``loads=None`` the experiment's own runs (its sweep, its rates) are compared and no
saturation run is made (the calibration execution then runs at the first run's rate).
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.config import RunSpec, load_experiment
from simulator.errors import ConfigError, LdsimError
from simulator.results import atomic_write_text

__all__ = [
    "CALIBRATION_LOAD",
    "DEFAULT_LOADS",
    "DEFAULT_SIM_STREAMS",
    "MATCHED_DIR",
    "STREAMS_DIR",
    "Saturation",
    "fit_step_overhead",
    "load_runs",
    "measure_runtime",
    "measure_saturation",
    "measured_speed",
    "simulate_at_measured_speed",
    "step_time_correlation",
    "step_time_quantiles",
    "validate",
    "with_streams",
]

#: Loads (fractions of the measured saturation throughput) validated by default.
DEFAULT_LOADS = (0.2, 0.4, 0.6, 0.8)
#: Requests in the saturation burst when the experiment does not give ``num_requests``.
BURST_REQUESTS = 500


@dataclass(frozen=True)
class Saturation:
    """The measured saturation throughput (completed requests/s of a burst of ``requests``);
    ``key`` identifies the burst's configuration."""

    throughput_rps: float
    requests: int
    key: str


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    if progress is not None:
        progress(line)


def _profile_path(out: Path, name: str, profile: str | None) -> Path:
    if profile is None:
        return (out / "profile" / f"{name}.yaml").resolve()
    found = Path(profile)
    if found.suffix not in (".yaml", ".yml"):
        from simulator.hardware import available_profiles

        shipped = available_profiles().get(profile)
        if shipped is None:
            raise ConfigError(f"--profile {profile}: give a profile YAML path (it is measured there if missing)")
        return shipped
    return found.resolve()


#: A profile reused after this many seconds gets a note: the machine may have drifted since.
STALE_PROFILE_S = 1800.0


def _age_s(date: str | None) -> float | None:
    """Seconds since the ISO ``date`` (None when it does not parse)."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(date))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - when).total_seconds()


def _ensure_profile(
    path: Path,
    runs: list[RunSpec],
    device: str,
    cores_per_device: int | None,
    progress: Callable[[str], None] | None,
    wait_quiet_s: float = 0.0,
) -> None:
    """Measure the profile at ``path`` for the models of ``runs`` (resolved with their own
    profile, for the shapes they reach) unless it exists; measure only the wake-up curves of
    an existing profile that lacks some (an interrupted measurement)."""
    from simulator.executor.profile import model_shapes, profile_models
    from simulator.experiment import resolve
    from simulator.hardware import load_profile

    shapes = model_shapes([resolve(r) for r in runs])
    if not shapes:
        raise LdsimError("the experiment's workload sends no request to any model: nothing to profile")
    tables = True
    if path.is_file():
        prof = load_profile(path)
        measured = prof.provenance.measured
        host = socket.gethostname()
        if measured is not None and host not in measured.host:
            _say(progress, f"note: {path} was measured on {measured.host}, not on this host ({host})")
        age_s = _age_s(measured.date if measured is not None else None)
        if age_s is not None and age_s > STALE_PROFILE_S:
            _say(
                progress,
                f"note: reusing {path}, measured {age_s / 3600:.1f} h ago; a shared machine's speed drifts (10-15%"
                " over hours on the 2-core VM ldsim was validated on) and the errors will include that drift;"
                " give a new --out folder to measure everything anew",
            )
        per = prof.runtime.per_architecture if prof.runtime is not None else {}
        shapes = [s for s in shapes if s.arch.name not in per or not per[s.arch.name].wake_after_idle]
        if not shapes:
            return
        tables = False
    if wait_quiet_s > 0:
        from simulator.executor.run import wait_quiet

        wait_quiet(wait_quiet_s, progress=progress)
    profile_models(shapes, path, device, cores_per_device, command="ldsim validate", progress=progress, tables=tables)


def _burst(runs: list[RunSpec], path: Path, source: Path, overrides: Sequence[str]) -> RunSpec:
    """The saturation run: the first run's requests, all arriving at once."""
    wl = runs[0].spec.workload
    n = wl.num_requests or BURST_REQUESTS
    extra = [f"cluster.profile={path}", "workload.rate_rps=1000000", f"workload.num_requests={n}"]
    burst = load_experiment(source, [*overrides, *extra])[0]
    return replace(burst, run_id="saturation", point=(("load", "saturation"),))


def measure_saturation(
    burst: RunSpec,
    out: Path,
    device: str,
    cores_per_device: int | None,
    progress: Callable[[str], None] | None,
    wait_quiet_s: float = 0.0,
) -> Saturation:
    """Execute the burst (unless ``OUT/saturation.json`` already holds it); return the
    saturation throughput."""
    from simulator.executor.run import execute_runs

    record = out / "saturation.json"
    key = burst.spec_hash
    if record.is_file():
        data = json.loads(record.read_text())
        if data.get("key") == key:
            sat = Saturation(data["throughput_rps"], data["requests"], key)
            _say(progress, f"saturation: {sat.throughput_rps:.1f} requests/s (measured before: {record})")
            return sat
    _say(progress, "measuring saturation: a burst of requests, all arriving at once")
    folder = out / "saturation"
    outcome = execute_runs([burst], folder, device, cores_per_device, progress, wait_quiet_s)[0]
    if outcome.status == "stopped":
        raise LdsimError(f"the saturation run stopped: {outcome.message}")
    summary = json.loads((folder / burst.run_id / "summary.json").read_text())
    sat = Saturation(float(summary["throughput_rps"]), int(summary["completed"]), key)
    atomic_write_text(record, json.dumps(sat.__dict__, indent=1) + "\n")
    _say(progress, f"saturation: {sat.throughput_rps:.1f} requests/s over a burst of {sat.requests}")
    return sat


#: Load of the calibration execution that measures the runtime's step overhead.
CALIBRATION_LOAD = 0.5
#: Seed offset of the calibration execution (its requests are not the validated runs').
CALIBRATION_SEED_OFFSET = 1000


def fit_step_overhead(steps: pd.DataFrame, items: str, min_steps: int = 3) -> tuple[float, float]:
    """Fit ``overhead = base + per_item x items`` (seconds) to the back-to-back steps of a step
    log (a step that started when the previous one ended): the host time from the nominal
    start to the worker's start, against the step's ``items`` column (``samples`` or
    ``requests``). A least-squares line through the medians per item count (counts with at
    least ``min_steps`` steps, weighted by the square root of their steps), its slope kept
    >= 0; the plain median when fewer than two counts qualify."""
    ends = steps["end_s"].to_numpy()
    starts = steps["nominal_start_s"].to_numpy()
    back = np.r_[False, starts[1:] == ends[:-1]]
    frame = steps[back] if back.any() else steps
    overhead = frame["worker_start_s"] - frame["nominal_start_s"]
    groups = overhead.groupby(frame[items].to_numpy())
    med = groups.median()
    cnt = groups.size()
    ok = (cnt >= min_steps).to_numpy()
    if ok.sum() < 2:
        return float(overhead.median()), 0.0
    x = med.index.to_numpy(dtype=float)[ok]
    y = med.to_numpy()[ok]
    w = cnt.to_numpy(dtype=float)[ok]
    slope, base = np.polyfit(x, y, 1, w=np.sqrt(w))
    if slope < 0:
        return float(np.average(y, weights=w)), 0.0
    return float(base), float(slope)


#: Quantiles of the step-time ratio written into a profile.
STEP_TIME_QUANTILES = 200


def step_time_quantiles(
    steps: pd.DataFrame, items: str, base_s: float, per_item_s: float, n: int = STEP_TIME_QUANTILES
) -> list[float]:
    """The variability of a runtime's steps: quantiles, at probabilities ``(i + 1/2) / n``, of
    each step's measured time over its price (the cost model's price at the time, plus the
    fitted host overhead ``base_s + per_item_s x items``), divided by their mean and rounded to
    4 digits.

    Only the shape is kept: the price stays the model's mean. The level of one calibration run
    is the machine's speed during those seconds, which on a shared virtual machine moves by
    several percent from run to run (measured here: mean ratios of 0.94-1.00 in calibration
    runs, 0.95-1.11 in the executions that followed them, at the same shapes), so carrying it
    over would bias every later simulation by that run's luck."""
    price = steps["predicted_s"].to_numpy() + base_s + per_item_s * steps[items].to_numpy()
    ratio = steps["measured_s"].to_numpy() / price
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if len(ratio) < 2:
        raise LdsimError(f"the calibration run has {len(ratio)} usable steps; cannot measure step-time variability")
    q = np.quantile(ratio, (np.arange(n) + 0.5) / n)
    q = np.maximum.accumulate(q) / float(np.mean(q))
    return [round(float(x), 4) for x in q]


def step_time_correlation(steps: pd.DataFrame, items: str, base_s: float, per_item_s: float) -> float:
    """How much consecutive steps' times (over their price, as in :func:`step_time_quantiles`)
    go together: the lag-1 correlation of their normal scores (each ratio's rank mapped
    through the inverse normal CDF), in step order, clipped to [0, 0.95]. What
    :class:`simulator.jitter.StepJitter` reproduces with its Gaussian copula."""
    from statistics import NormalDist

    price = steps["predicted_s"].to_numpy() + base_s + per_item_s * steps[items].to_numpy()
    ratio = steps["measured_s"].to_numpy() / price
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if len(ratio) < 10:
        return 0.0
    ranks = np.argsort(np.argsort(ratio, kind="stable"), kind="stable")
    inv = NormalDist().inv_cdf
    scores = np.array([inv((r + 0.5) / len(ratio)) for r in ranks.tolist()])
    rho = float(np.corrcoef(scores[1:], scores[:-1])[0, 1])
    return min(max(rho, 0.0), 0.95) if math.isfinite(rho) else 0.0


def _quantile(quantiles: list[float], p: float) -> float:
    n = len(quantiles)
    return float(np.interp(p, (np.arange(n) + 0.5) / n, quantiles))


def measure_runtime(
    runs: list[RunSpec],
    source: Path,
    overrides: Sequence[str],
    profile: Path,
    rate_rps: float,
    out: Path,
    device: str,
    cores_per_device: int | None,
    progress: Callable[[str], None] | None,
    wait_quiet_s: float = 0.0,
) -> None:
    """Fit the step overhead of each model the profile has none for, to a calibration
    execution: the experiment at :data:`CALIBRATION_LOAD` of ``rate_rps`` with its seed offset
    by :data:`CALIBRATION_SEED_OFFSET` (so none of its requests is a validated one)."""
    from simulator.executor.profile import set_runtime
    from simulator.executor.run import STEPS_FILE, execute_runs
    from simulator.experiment import resolve
    from simulator.hardware import load_profile

    runtime = load_profile(profile).runtime
    models = list(resolve(runs[0]).models.values())

    def has(arch: str) -> bool:
        own = runtime.per_architecture.get(arch) if runtime is not None else None
        return own is not None and own.step_overhead_us > 0 and bool(own.step_time_quantiles)

    missing = sorted({p.arch.name for p in models if not has(p.arch.name)})
    if not missing:
        return
    seed = runs[0].seed + CALIBRATION_SEED_OFFSET
    extra = [f"cluster.profile={profile}", f"workload.rate_rps={CALIBRATION_LOAD * rate_rps!r}", f"seed={seed}"]
    calib = load_experiment(source, [*overrides, *extra])[0]
    calib = replace(calib, run_id="calibration", point=(("load", "calibration"),))
    _say(progress, f"measuring the step overhead: an execution at load {CALIBRATION_LOAD}, seed {seed}")
    folder = out / "calibration"
    outcome = execute_runs([calib], folder, device, cores_per_device, progress, wait_quiet_s)[0]
    if outcome.status == "stopped":
        raise LdsimError(f"the calibration run stopped: {outcome.message}")
    steps = pd.read_parquet(folder / calib.run_id / STEPS_FILE)
    fields = {}
    for plan in models:
        if plan.arch.name not in missing:
            continue
        own = steps[steps["model"] == plan.name]
        items = "requests" if plan.arch.autoregressive else "samples"
        base, per_item = fit_step_overhead(own, items)
        quantiles = step_time_quantiles(own, items, base, per_item)
        correlation = step_time_correlation(own, items, base, per_item)
        fields[plan.arch.name] = {
            "step_overhead_us": base * 1e6,
            "step_overhead_per_item_us": per_item * 1e6,
            "step_time_quantiles": quantiles,
            "step_time_correlation": correlation,
        }
        _say(
            progress,
            f"step overhead of {plan.arch.name}: {base * 1e6:.0f} us + {per_item * 1e6:.1f} us per item;"
            f" step time / price: median {_quantile(quantiles, 0.5):.3f}, p99 {_quantile(quantiles, 0.99):.3f},"
            f" lag-1 correlation {correlation:.2f}",
        )
    set_runtime(profile, fields)


#: Folder (under a validation's output) of the simulations at each execution's step speed.
MATCHED_DIR = "simulated-matched"

#: Folder of the further simulations of each run, with other streams of step-time noise.
STREAMS_DIR = "simulated-streams"

#: Simulations per run by default (streams of step-time noise), whose mean is compared.
DEFAULT_SIM_STREAMS = 5


def with_streams(runs: Sequence[RunSpec], streams: int, first: int = 0) -> list[RunSpec]:
    """Each run once per step-time stream ``first .. streams - 1``
    (``engine.step_time_stream``), stream ``k > 0`` with the run id suffix ``_stream-k``."""
    out = []
    for run in runs:
        for k in range(first, streams):
            engine = run.spec.engine.model_copy(update={"step_time_stream": k})
            spec = run.spec.model_copy(update={"engine": engine})
            out.append(replace(run, spec=spec, run_id=run.run_id + (f"_stream-{k}" if k else "")))
    return out


def measured_speed(steps: pd.DataFrame) -> float:
    """How much slower (> 1) or faster (< 1) an execution's steps ran than the cost model priced
    them: the total measured step time over the total price (``steps.parquet``), so that a long
    step weighs as much as the time it kept the device busy."""
    priced = float(steps["predicted_s"].sum())
    return float(steps["measured_s"].sum()) / priced if priced > 0 else 1.0


def simulate_at_measured_speed(runs: Sequence[RunSpec], profile: Path, out: Path, streams: int = 1) -> None:
    """A diagnostic second simulation of each executed run, with every step's price scaled by
    :func:`measured_speed` of that execution (the runtime's step-time quantiles multiplied by
    it, in a copy of the profile beside it): what remains of the error is the modelling of
    queues, batching and the step-time scatter, not the machine running faster or slower than
    it did while it was profiled. ``streams`` simulations each (:func:`with_streams`), written
    to ``OUT/simulated-matched/`` (redone every time)."""
    import shutil

    import yaml

    from simulator.executor.profile import set_runtime
    from simulator.executor.run import STEPS_FILE
    from simulator.sweep import run_sweep

    folder = out / MATCHED_DIR
    shutil.rmtree(folder, ignore_errors=True)
    runtime = (yaml.safe_load(profile.read_text(encoding="utf-8")).get("runtime") or {}).get("per_architecture") or {}
    matched = []
    for run in runs:
        steps_path = out / "executed" / run.run_id / STEPS_FILE
        if not steps_path.is_file():
            continue
        speed = measured_speed(pd.read_parquet(steps_path))
        copy = profile.with_name(f"{profile.stem}.speed-{run.run_id}{profile.suffix}")
        copy.write_text(profile.read_text(encoding="utf-8"), encoding="utf-8")
        set_runtime(
            copy,
            {
                arch: {"step_time_quantiles": [q * speed for q in (fields.get("step_time_quantiles") or [1.0])]}
                for arch, fields in runtime.items()
            },
            source=f"{profile.name} with step times scaled by {speed:.4f}, the speed measured in {run.run_id}",
        )
        cluster = run.spec.cluster.model_copy(update={"profile": str(copy)})
        matched.append(replace(run, spec=run.spec.model_copy(update={"cluster": cluster})))
    if matched:
        run_sweep(with_streams(matched, streams), folder, jobs=1, progress=False)


def load_runs(
    source: Path, overrides: Sequence[str], profile: Path, loads: Sequence[float], rate_rps: float
) -> list[RunSpec]:
    """The experiment's runs at each load (``workload.rate_rps = load x rate_rps``), with run ids
    ``load-<load>_<run id>`` and the load first in their sweep point."""
    out = []
    for load in loads:
        if not load > 0:
            raise ConfigError(f"--loads: each load must be > 0, got {load}")
        extra = [f"cluster.profile={profile}", f"workload.rate_rps={load * rate_rps!r}"]
        for run in load_experiment(source, [*overrides, *extra]):
            out.append(replace(run, run_id=f"load-{load:g}_{run.run_id}", point=(("load", load), *run.point)))
    return out


def validate(
    path: str | Path,
    overrides: Sequence[str] = (),
    out: Path | None = None,
    profile: str | None = None,
    loads: Sequence[float] | None = DEFAULT_LOADS,
    saturation_rps: float | None = None,
    device: str = "cpu",
    cores_per_device: int | None = None,
    progress: Callable[[str], None] | None = None,
    wait_quiet_s: float = 0.0,
    sim_streams: int = DEFAULT_SIM_STREAMS,
) -> Path:
    """Validate the experiment at ``path`` (see the module docstring); return the report's path.

    ``sim_streams``: simulations of each run, each with its own stream of step-time noise
    (``engine.step_time_stream``; the first in ``OUT/simulated/``, the others in
    ``OUT/simulated-streams/``); the report compares their mean with the execution.

    ``wait_quiet_s``: before measuring the profile and before each execution, wait up to this
    long for other processes to leave the machine quiet (timings are only as good as that)."""
    from simulator.executor.fidelity import write_fidelity
    from simulator.executor.run import execute_runs, require_torch
    from simulator.experiment import resolve
    from simulator.resources import find_file
    from simulator.sweep import run_sweep

    require_torch("ldsim validate")
    base = load_experiment(path, overrides)
    found = find_file(path, "experiments")
    assert found is not None  # load_experiment found it
    source = found.resolve()
    name = base[0].spec.name
    out = (out or Path("results") / f"{name}-validate").resolve()
    out.mkdir(parents=True, exist_ok=True)
    prof = _profile_path(out, name, profile)
    started = time.time()
    _ensure_profile(prof, base, device, cores_per_device, progress, wait_quiet_s)
    with_profile = load_experiment(source, [*overrides, f"cluster.profile={prof}"])
    for run in with_profile:
        from simulator.executor.engine import check_executable

        check_executable(resolve(run))
    saturation = None
    if loads is None:
        runs = with_profile
        rate = with_profile[0].spec.workload.rate_rps
        if rate is not None:  # the calibration execution runs at the first run's own rate
            measure_runtime(
                with_profile,
                source,
                overrides,
                prof,
                rate / CALIBRATION_LOAD,
                out,
                device,
                cores_per_device,
                progress,
                wait_quiet_s,
            )
    else:
        if saturation_rps is None:
            burst = _burst(with_profile, prof, source, overrides)
            saturation = measure_saturation(burst, out, device, cores_per_device, progress, wait_quiet_s)
            rate = saturation.throughput_rps
        else:
            if not saturation_rps > 0:
                raise ConfigError(f"--saturation-rps must be > 0, got {saturation_rps}")
            rate = saturation_rps
        measure_runtime(
            with_profile, source, overrides, prof, rate, out, device, cores_per_device, progress, wait_quiet_s
        )
        runs = load_runs(source, overrides, prof, loads, rate)
    for run in runs:  # every point checks before anything runs
        resolve(run)
    _say(progress, f"simulating {len(runs)} run(s) -> {out / 'simulated'}")
    sims = run_sweep(runs, out / "simulated", jobs=1, progress=False)
    sims += run_sweep(with_streams(runs, sim_streams, first=1), out / STREAMS_DIR, jobs=1, progress=False)
    failed = [o for o in sims if o.status == "failed"]
    if failed:
        raise LdsimError(f"simulating {failed[0].run_id} failed: {failed[0].message}")
    _say(progress, f"executing {len(runs)} run(s) -> {out / 'executed'}")
    execute_runs(runs, out / "executed", device, cores_per_device, progress, wait_quiet_s)
    _say(progress, f"simulating again at each execution's own step speed -> {out / MATCHED_DIR}")
    simulate_at_measured_speed(runs, prof, out, sim_streams)
    from simulator.hardware import load_profile

    runtime = load_profile(prof).runtime
    meta = {
        "experiment": str(source),
        "runtime": {k: v.model_dump() for k, v in runtime.per_architecture.items()} if runtime is not None else {},
        "overrides": list(overrides),
        "profile": str(prof),
        "loads": list(loads) if loads is not None else None,
        "saturation": saturation.__dict__ if saturation is not None else None,
        "saturation_rps_given": saturation_rps,
        "device": device,
        "wait_quiet_s": wait_quiet_s,
        "sim_streams": sim_streams,
        "host": socket.gethostname(),
        "seconds": time.time() - started,
    }
    report = write_fidelity(out, [r.run_id for r in runs], meta)
    _say(progress, f"fidelity report: {report}")
    return report
