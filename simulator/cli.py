"""The ``ldsim`` command line.

``ldsim run FILE [key=value ...]`` runs an experiment (every sweep point) and writes results
and a report; ``ldsim check FILE`` validates it without running; ``ldsim report DIR`` redraws
a report; ``ldsim list policies|models|profiles|experiments`` shows what names resolve to.
``ldsim calibrate`` measures this machine into a hardware profile (torch needed) and
``ldsim profile check|show|diff`` checks, reads and compares profiles. ``ldsim execute``
runs an experiment on real small models (torch) into the same results layout, and ``ldsim
validate`` simulates and executes it over a sweep of loads and reports the simulator's error.
A user's mistake prints one paragraph naming the place and exits with status 2; a run that
fails inside a sweep is reported and the command exits with status 1 after the others finish.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from simulator.errors import LdsimError

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from simulator.config import load_experiment
    from simulator.experiment import resolve
    from simulator.sweep import run_sweep

    runs = load_experiment(args.file, args.overrides)
    for run in runs:  # check every point before running any: a bad sweep writes nothing
        resolve(run)
    out = Path(args.out) if args.out else Path("results") / runs[0].spec.name
    quiet = args.quiet
    if not quiet:
        print(f"ldsim: {len(runs)} run(s) of '{runs[0].spec.name}' -> {out}", file=sys.stderr)
    outcomes = run_sweep(runs, out, jobs=args.jobs, progress=not quiet)
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = sum(o.status == "skipped" for o in outcomes)
    if not quiet:
        _print_table(out, [r.run_id for r in runs])
        if skipped:
            print(f"ldsim: {skipped} run(s) already finished in {out} were not run again", file=sys.stderr)
    for o in failed:
        print(
            f"ldsim: run {o.run_id} failed: {o.message} (details: {out / (o.run_id + '.error.txt')})", file=sys.stderr
        )
    if not args.no_report and len(failed) < len(outcomes):
        from simulator.report import write_report

        report = write_report(out)
        if not quiet:
            print(f"ldsim: report: {report}", file=sys.stderr)
    return 1 if failed else 0


def _print_table(out: Path, run_ids: list[str]) -> None:
    from simulator.results import read_summaries

    rows = {s["run_id"]: s for s in read_summaries(out)}
    header = f"{'run':<40} {'done':>8} {'thr rps':>9} {'e2e p50 ms':>11} {'e2e p99 ms':>11} {'util':>6}"
    print(header)
    for rid in run_ids:
        s = rows.get(rid)
        if s is None:
            print(f"{rid:<40} {'failed':>8}")
            continue

        def ms(v: float | None) -> str:
            return f"{v * 1e3:11.2f}" if v is not None else f"{'-':>11}"

        thr = s.get("throughput_rps")
        util = s.get("utilization")
        print(
            f"{rid[:40]:<40} {s['completed']:>8} {thr if thr is not None else float('nan'):9.2f}"
            f" {ms(s.get('e2e_p50_s'))} {ms(s.get('e2e_p99_s'))}"
            f" {util if util is not None else float('nan'):6.2f}"
        )


def _cmd_check(args: argparse.Namespace) -> int:
    from simulator.config import load_experiment
    from simulator.experiment import resolve

    runs = load_experiment(args.file, args.overrides)
    devices = 0
    for run in runs:
        resolved = resolve(run)
        devices = max(devices, sum(len(p.devices) for p in resolved.cluster.placements))
    spec = runs[0].spec
    print(
        f"{args.file}: OK: {len(runs)} run(s) of '{spec.name}', up to {devices} device(s);"
        f" models: {', '.join(spec.models)}"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from simulator.report import write_report

    folder = Path(args.dir)
    if not folder.is_dir():
        raise LdsimError(f"{folder}: no such results folder")
    print(write_report(folder))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from simulator.registry import MODELS, REGISTRIES

    what = args.what
    if what == "policies":
        for family, registry in REGISTRIES.items():
            print(f"{family}:")
            for e in registry.entries():
                print(f"  {e.name:<16} {e.target:<45} ({e.origin})")
    elif what == "models":
        for e in MODELS.entries():
            try:
                arch = MODELS.resolve(e.name)()
                print(f"  {e.name:<22} {arch.describe():<55} source: {arch.source}")
            except Exception as exc:  # show a broken plug-in in the list rather than die
                print(f"  {e.name:<22} (failed to load: {exc})")
    elif what == "profiles":
        from simulator.hardware import available_profiles, load_profile

        for name in available_profiles():
            p = load_profile(name)
            print(f"  {name:<22} {p.provenance.status:<10} {p.device.model:<28} {p.path}")
    elif what == "experiments":
        from simulator.resources import data_dir

        for path in sorted(data_dir("experiments").glob("*.yaml")):
            first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
            print(f"  {path.stem:<34} {first}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from simulator.calibrate import calibrate

    out = Path(args.out)

    def progress(line: str) -> None:
        print(f"ldsim calibrate: {line}", file=sys.stderr, flush=True)

    result = calibrate(
        args.device,
        out,
        quick=args.quick,
        threads=args.threads,
        name=args.name,
        command=args.command_line,
        progress=progress,
        dtypes=args.dtypes.split(",") if args.dtypes else None,
    )
    print(f"wrote {result.profile_path} ({result.rows} measurements)")
    print(f"calibration took {result.breakdown()}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _cmd_profile_check(args: argparse.Namespace) -> int:
    from simulator.calibrate import check_profile
    from simulator.hardware import load_profile

    profile = load_profile(args.profile)
    png = Path(args.out) if args.out else Path(f"{profile.name}.check.png")

    def progress(line: str) -> None:
        print(f"ldsim profile check: {line}", file=sys.stderr, flush=True)

    result = check_profile(
        args.profile, quick=args.quick, out_png=png, device=args.device, threads=args.threads, progress=progress
    )
    print(result.table())
    print(f"plot: {result.plot_path}; rows: {result.csv_path}")
    return 0


def _cmd_profile_show(args: argparse.Namespace) -> int:
    from simulator.calibrate.describe import show_profile
    from simulator.hardware import load_profile

    print(show_profile(load_profile(args.profile)))
    return 0


def _cmd_profile_diff(args: argparse.Namespace) -> int:
    from simulator.calibrate.describe import diff_profiles
    from simulator.hardware import load_profile

    print(diff_profiles(load_profile(args.a), load_profile(args.b)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ldsim``."""
    parser = argparse.ArgumentParser(
        prog="ldsim", description="Simulate deep-learning serving systems from experiment YAML files."
    )
    from simulator import __version__

    parser.add_argument("--version", action="version", version=f"ldsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an experiment (every sweep point) and write results and a report")
    p.add_argument("file", help="experiment YAML (a path, or the name of a shipped experiment)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override keys of the YAML")
    p.add_argument("--out", help="results folder (default: results/<experiment name>)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="runs in parallel (process pool)")
    p.add_argument("--no-report", action="store_true", help="do not draw the report")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate an experiment without running it")
    p.add_argument("file")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("report", help="draw report.html and figures/*.png for a results folder")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("workload", help="describe a workload: an experiment's or a trace file's")
    workload_sub = p.add_subparsers(dest="workload_command", required=True)
    d = workload_sub.add_parser(
        "describe", help="print rates, burstiness and size percentiles; draw arrival-rate and size plots"
    )
    from workloads.describe import add_arguments, run_from_args

    add_arguments(d)
    d.set_defaults(func=run_from_args)

    p = sub.add_parser("list", help="list policies, models, profiles or shipped experiments")
    p.add_argument("what", choices=["policies", "models", "profiles", "experiments"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "calibrate",
        help="measure this machine with torch microbenchmarks and write a hardware profile (needs torch)",
        description="Time GEMMs, attention, memory-bound operators, embedding bags, convolutions, transfers,"
        " collectives and small layer blocks on one device, and write a measured hardware profile with its"
        " tables and raw measurements beside it.",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--out", required=True, help="profile to write, e.g. hardware_profiles/mine.yaml")
    p.add_argument("--quick", action="store_true", help="smaller grids: under a minute on a small CPU")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    p.add_argument("--name", help="profile name (default: the file name without .yaml)")
    p.add_argument(
        "--dtypes", help="comma-separated dtypes to measure, e.g. fp32,bf16 (default: every one the device runs)"
    )
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("profile", help="check, show or compare hardware profiles")
    psub = p.add_subparsers(dest="profile_command", required=True)
    q = psub.add_parser(
        "check",
        help="re-measure held-out shapes and layer blocks here and compare with the profile's predictions",
    )
    q.add_argument("profile", help="a profile YAML path or a shipped profile's name")
    q.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    q.add_argument("--out", help="plot to write (default: <profile name>.check.png); the rows go to a CSV beside it")
    q.add_argument("--device", help="cpu, cuda or cuda:N (default: what the profile was measured on)")
    q.add_argument("--threads", type=int, help="CPU threads (default: as in the profile)")
    q.set_defaults(func=_cmd_profile_check)
    q = psub.add_parser("show", help="provenance, peaks, links, tables and collective curves of a profile")
    q.add_argument("profile")
    q.set_defaults(func=_cmd_profile_show)
    q = psub.add_parser("diff", help="compare two profiles (B against A)")
    q.add_argument("a")
    q.add_argument("b")
    q.set_defaults(func=_cmd_profile_diff)

    p = sub.add_parser(
        "execute",
        help="run an experiment on real small models (torch) and write the same results as a simulation",
        description="Run the experiment's runs for real: the same workload and policy objects, the models built at"
        " small scale with random weights, one worker process per device; results in the simulator's layout.",
    )
    p.add_argument("file", help="experiment YAML (a path, or the name of a shipped experiment)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override keys of the YAML")
    p.add_argument("--out", help="results folder (default: results/<experiment name>-execute)")
    _executor_options(p)
    p.add_argument("--no-report", action="store_true", help="do not draw the report")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_execute)

    p = sub.add_parser(
        "validate",
        help="simulate and execute an experiment over a sweep of loads; write a fidelity report",
        description="Measure (or reuse) a profile of this machine for the experiment's models, measure the saturation"
        " throughput, then simulate and execute the experiment at each load and report the simulator's error.",
    )
    p.add_argument("file", help="experiment YAML (a path, or the name of a shipped experiment)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override keys of the YAML")
    p.add_argument("--out", help="output folder (default: results/<experiment name>-validate)")
    p.add_argument(
        "--profile",
        help="profile YAML to use; measured there for the experiment's models if it does not exist"
        " (default: OUT/profile/<experiment name>.yaml)",
    )
    p.add_argument(
        "--loads",
        default="0.2,0.4,0.6,0.8",
        help="comma-separated fractions of the measured saturation throughput (default 0.2,0.4,0.6,0.8);"
        " 'spec' keeps the experiment's own rates",
    )
    p.add_argument("--saturation-rps", type=float, help="skip measuring saturation: use this throughput (req/s)")
    p.add_argument(
        "--sim-streams",
        type=int,
        default=5,
        help="simulate each load this many times, with as many streams of step-time noise, and compare their"
        " mean (default 5)",
    )
    _executor_options(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and the report's path")
    p.set_defaults(func=_cmd_validate)
    return parser


def _executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each execution, wait up to this long for other processes to leave the machine quiet",
    )
    p.add_argument(
        "--cores-per-device",
        type=int,
        help="CPU cores (and torch threads) of each worker (default: the cores left after one for the coordinator)",
    )


def _check_executor_options(args: argparse.Namespace) -> None:
    if args.wait_quiet < 0:
        raise LdsimError(f"--wait-quiet must be >= 0 seconds, got {args.wait_quiet}")
    if args.cores_per_device is not None and args.cores_per_device < 1:
        raise LdsimError(f"--cores-per-device must be >= 1, got {args.cores_per_device}")
    device = args.device.strip().lower()
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise LdsimError(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    args.device = device


def _cmd_execute(args: argparse.Namespace) -> int:
    from simulator.config import load_experiment
    from simulator.executor.engine import check_executable
    from simulator.executor.run import execute_runs, require_torch
    from simulator.experiment import resolve

    _check_executor_options(args)
    require_torch("ldsim execute")
    runs = load_experiment(args.file, args.overrides)
    for run in runs:  # check every point before running any
        check_executable(resolve(run))
    out = Path(args.out) if args.out else Path("results") / f"{runs[0].spec.name}-execute"

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"ldsim execute: {line}", file=sys.stderr, flush=True)

    outcomes = execute_runs(runs, out, args.device, args.cores_per_device, progress, args.wait_quiet)
    stopped = [o for o in outcomes if o.status == "stopped"]
    if not args.quiet:
        _print_table(out, [r.run_id for r in runs])
    if not args.no_report and outcomes:
        from simulator.report import write_report

        report = write_report(out)
        progress(f"report: {report}")
    for o in stopped:
        print(f"ldsim: run {o.run_id} stopped early: {o.message} (its finished requests are kept)", file=sys.stderr)
    return 1 if stopped else 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from simulator.executor.validate import validate

    _check_executor_options(args)
    if args.loads.strip() == "spec":
        loads = None
    else:
        try:
            loads = [float(x) for x in args.loads.split(",") if x.strip()]
        except ValueError:
            raise LdsimError(f"--loads {args.loads!r}: expected comma-separated numbers, e.g. 0.2,0.5,0.8") from None
        if not loads or any(not x > 0 for x in loads):
            raise LdsimError(f"--loads {args.loads!r}: give loads > 0, e.g. 0.2,0.4,0.6,0.8")
    if args.sim_streams < 1:
        raise LdsimError(f"--sim-streams {args.sim_streams}: give 1 or more")

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"ldsim validate: {line}", file=sys.stderr, flush=True)

    report = validate(
        args.file,
        args.overrides,
        out=Path(args.out) if args.out else None,
        profile=args.profile,
        loads=loads,
        saturation_rps=args.saturation_rps,
        device=args.device,
        cores_per_device=args.cores_per_device,
        progress=progress,
        wait_quiet_s=args.wait_quiet,
        sim_streams=args.sim_streams,
    )
    print(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(words)
    args.command_line = shlex.join(["ldsim", *words])
    # overrides may come after options (`ldsim run x.yaml --out d key=value`)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except LdsimError as exc:
        print(f"ldsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ldsim: interrupted; finished runs are kept and will not be run again", file=sys.stderr)
        return 130
