"""The ``ldsim`` command line.

``ldsim run FILE [key=value ...]`` runs an experiment (every sweep point) and writes results
and a report; ``ldsim check FILE`` validates it without running; ``ldsim report DIR`` redraws
a report; ``ldsim list policies|models|profiles|experiments`` shows what names resolve to.
A user's mistake prints one paragraph naming the place and exits with status 2; a run that
fails inside a sweep is reported and the command exits with status 1 after the others finish.
"""

from __future__ import annotations

import argparse
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

    p = sub.add_parser("list", help="list policies, models, profiles or shipped experiments")
    p.add_argument("what", choices=["policies", "models", "profiles", "experiments"])
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
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
