"""Collectives among the devices present, with ``torch.distributed``.

On a CPU, ``workers`` processes (default: one per core, at least two) form a gloo group over
the loopback interface; with several GPUs, one process per GPU forms an NCCL group. Each
measures all-reduce, all-gather, all-to-all and a send/recv ping-pong over message sizes: after
a warm-up, the ranks agree (by an all-reduce of their estimates) on how many calls to time, and
then time single calls back to back after one barrier, with (on GPUs) a device synchronisation
inside each timed call; rank 0's median and spread are reported. Single calls rather than
averages of several: gloo's threads are now and then woken a scheduler tick late (milliseconds,
on a busy virtual machine), and a median of single calls is not moved by such outliers while a
mean over a sample is. An operation the backend lacks is skipped and noted.

Worker processes never outlive the call: they are joined with a deadline and terminated (then
killed) if they overrun it or if any of them fails; the rendezvous file is removed.

Message size ("bytes") is what each device passes to the call: the tensor reduced by an
all-reduce, each device's contribution to an all-gather, each device's whole send buffer of
an all-to-all, the message of a send/recv (whose time is half a round trip).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.calibrate.timing import Measurement, TimingPlan
from simulator.errors import LdsimError

if TYPE_CHECKING:
    from simulator.calibrate.harness import Session

__all__ = ["COLLECTIVE_OPS", "measure_collectives", "run_collectives"]

#: The operations measured, by their name in the collectives table.
COLLECTIVE_OPS = ("allreduce", "allgather", "alltoall", "sendrecv")


def _op_callable(op: str, rank: int, world: int, nbytes: int, device: Any) -> Any:
    import torch
    import torch.distributed as dist

    n = max(world, nbytes // 4)
    n -= n % world  # all-to-all splits the buffer evenly among the ranks
    x = torch.ones(n, device=device)
    if op == "allreduce":
        return lambda: dist.all_reduce(x)
    if op == "allgather":
        out = torch.empty(n * world, device=device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return lambda: gather(out, x)
    if op == "alltoall":
        out = torch.empty_like(x)
        return lambda: dist.all_to_all_single(out, x)
    if op == "sendrecv":
        if rank == 0:

            def ping() -> None:
                dist.send(x, 1)
                dist.recv(x, 1)

            return ping
        if rank == 1:

            def pong() -> None:
                dist.recv(x, 0)
                dist.send(x, 0)

            return pong
        return lambda: None
    raise KeyError(op)


def _worker(
    rank: int, world: int, backend: str, init_file: str, sizes: list[int], plan: dict[str, Any], out: str
) -> None:
    """One rank: join the group, time every op at every size, rank 0 writes the results."""
    import torch
    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}

    def sync() -> None:
        if backend == "nccl":
            torch.cuda.synchronize(device)

    try:
        for op in COLLECTIVE_OPS:
            for nbytes in sizes:
                try:
                    fn = _op_callable(op, rank, world, nbytes, device)
                    for _ in range(2):
                        fn()
                    sync()
                    probes = []
                    for _ in range(3):
                        dist.barrier()
                        start = time.perf_counter()
                        fn()
                        sync()
                        probes.append(time.perf_counter() - start)
                    # every rank must run the same number of calls: agree on the slowest estimate
                    estimate = torch.tensor([sorted(probes)[1]], dtype=torch.float64)
                    dist.all_reduce(estimate, op=dist.ReduceOp.MAX)
                    call_s = max(float(estimate[0]), 1e-7)
                    count = int(min(plan["samples"], max(plan["min_samples"], plan["budget_s"] / call_s)))
                    # one call per sample, back to back: the collective itself keeps the ranks in
                    # step, and the median of single calls ignores the scheduler's occasional
                    # millisecond-long wake-ups of gloo's threads (a mean over calls would not)
                    samples = []
                    dist.barrier()
                    for _ in range(count):
                        start = time.perf_counter()
                        fn()
                        sync()
                        elapsed = time.perf_counter() - start
                        samples.append(elapsed / 2 if op == "sendrecv" else elapsed)
                    inner = 1
                except RuntimeError as exc:  # the backend lacks the op: every rank fails alike
                    skipped[op] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                    break
                m = Measurement.from_samples(samples, inner)
                results.append({"op": op, "bytes": nbytes, **m.__dict__})
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"results": results, "skipped": skipped}, fh)
        os.replace(tmp, out)


def run_collectives(
    backend: str, world: int, sizes: list[int], plan: TimingPlan, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Run :func:`_worker` in ``world`` spawned processes; return rank 0's results.

    Raises :class:`LdsimError` if a worker fails or the deadline passes; in every case all
    workers have exited (or been killed) when this returns.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="ldsim-collectives-")
    init_file = str(Path(folder) / "rendezvous")
    out = str(Path(folder) / "results.json")
    params = {"samples": 20 * plan.samples, "min_samples": 2 * plan.samples, "budget_s": plan.budget_s}
    procs = [
        ctx.Process(target=_worker, args=(r, world, backend, init_file, sizes, params, out), daemon=True)
        for r in range(world)
    ]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        while any(p.is_alive() for p in procs):
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed:
                raise LdsimError(f"collectives: a {backend} worker exited with status {failed[0].exitcode}")
            if time.monotonic() > deadline:
                raise LdsimError(f"collectives: {backend} workers did not finish within {timeout_s:.0f} s")
            for p in procs:
                p.join(timeout=0.05)
        failed = [p for p in procs if p.exitcode != 0]
        if failed:
            raise LdsimError(f"collectives: a {backend} worker exited with status {failed[0].exitcode}")
        with open(out, encoding="utf-8") as fh:
            return dict(json.load(fh))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is None:  # never started (an earlier start failed)
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def measure_collectives(session: Session) -> dict[str, Any]:
    """Time collectives among the devices present; record link rows and return link figures.

    A CPU uses gloo between ``threads`` processes (at least 2); a machine with several GPUs
    uses NCCL across all of them; a single GPU has nothing to measure (noted).
    """
    from simulator.calibrate.records import row

    target = session.target
    if target.is_cuda:
        world = target.device_count()
        if world < 2:
            session.notes.append("collectives: one GPU on this machine, so no collective was measured")
            return {}
        backend = "nccl"
    else:
        world = max(2, min(target.threads, 8))
        backend = "gloo"
    sizes = list(session.grid.collective_bytes)
    try:
        found = run_collectives(backend, world, sizes, session.plan)
    except LdsimError as exc:
        session.notes.append(f"collectives not measured: {exc}")
        return {}
    session.timings += len(found["results"])
    for op, reason in found["skipped"].items():
        session.notes.append(f"collectives: {backend} {op} skipped ({reason})")
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for r in found["results"]:
        m = Measurement(r["median_s"], r["p10_s"], r["p90_s"], r["min_s"], r["max_s"], r["reps"], r["inner"])
        devices = 2 if r["op"] == "sendrecv" else world
        nbytes = int(r["bytes"])
        session.rows.append(
            row(
                "link",
                "intra_node",
                "fp32",
                r["op"],
                backend,
                (devices, nbytes),
                ("devices", "bytes"),
                nbytes,
                0,
                nbytes,
                m,
            )
        )
        curves.setdefault(r["op"], ([], []))
        curves[r["op"]][0].append(nbytes)
        curves[r["op"]][1].append(m.median_s)
    figures: dict[str, Any] = {"collective_backend": backend, "collective_world": world}
    if "sendrecv" in curves:
        sizes_b, times = curves["sendrecv"]
        figures["link_latency_us"] = min(times) * 1e6
        figures["link_gb_per_s"] = sizes_b[-1] / times[-1] / 1e9
    return figures
