"""The torch calibration harness, on this machine.

``ldsim calibrate --device cpu --quick`` must finish in under a minute and write a profile
that loads; ``ldsim profile check`` then re-measures shapes between the profile's grid points
and the layer blocks, and the profile must predict them: the median absolute error of GEMM,
attention and memory-bound operators within 10%, and the sum of a block's operator
predictions within 15% of the block -- or within twice the measurements' own spread, when the
machine is noisier than that (the tolerance comes from the measurement, not from the result).
Also: the command without torch, ``profile show``/``diff`` on the shipped profiles, and
collective workers that never outlive their call.
"""

from __future__ import annotations

import os
import sys

import pytest

from simulator.hardware import available_profiles, load_profile
from tests.conftest import cli

CPU_PROFILE = "cpu-epyc-2t"


def _children() -> list[int]:
    """Processes whose parent is this one (Linux /proc), except Python's multiprocessing
    resource tracker: a helper that every spawn-context start launches once and that exits with
    the interpreter (it is not a worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and "resource_tracker" not in cmdline:
            found.append(int(entry))
    return found


def _judge(result) -> list[str]:
    """The acceptance criteria of a ``profile check`` result; the messages of those it misses."""
    misses = []
    for family in ("GEMM", "attention", "memory-bound"):
        stats = result.family(family)
        tolerance, drift = stats.tolerance, abs(stats.drift - 1.0)
        raw, paired = stats.median_abs_error, stats.median_abs_error_drift
        if stats.count < 10:
            misses.append(f"{family}: only {stats.count} held-out shapes")
        if min(raw, paired) > tolerance:
            misses.append(
                f"{family}: median |error| {raw:.1%} raw and {paired:.1%} paired, both above the tolerance"
                f" {tolerance:.1%} (max of 10% and twice the median spread {stats.median_spread:.1%})"
            )
        if raw > tolerance + drift:
            misses.append(f"{family}: raw {raw:.1%} > tolerance {tolerance:.1%} + drift {drift:.1%}")
    blocks = result.blocks()
    if {b.label.split()[0] for b in blocks} != {"decoder", "resnet", "dlrm"}:
        misses.append(f"blocks checked: {sorted(b.label for b in blocks)}")
    for block in blocks:
        tolerance = max(0.15, 2 * block.spread)
        drift = abs(block.anchor_measured_s / block.anchor_predicted_s - 1.0)
        if min(abs(block.error), abs(block.paired_error)) > tolerance:
            misses.append(
                f"{block.label}: the sum of its operators is {block.error:+.1%} off the block as predicted from"
                f" the profile and {block.paired_error:+.1%} as measured one by one today (tolerance {tolerance:.1%})"
            )
        if abs(block.error) > tolerance + drift:
            misses.append(
                f"{block.label}: predicted {block.error:+.1%} off the block; tolerance {tolerance:.1%}"
                f" + the drift of its operators since calibration {drift:.1%}"
            )
    return misses


def test_quick_calibration_predicts_held_out_shapes_and_blocks(quick_cpu, quick_check, tmp_path):
    """The acceptance test of the harness (see the module docstring).

    This 2-vCPU VM changes speed by up to ~20% over minutes with nothing running in the guest
    (other tenants of the host), so a profile measured a minute ago can be off by that much on
    any family whatever the tables' quality. ``profile check`` therefore measures, right before
    each held-out shape, its nearest grid point, and reports the error both raw and *paired*
    (with that drift factored out point by point); for a block it times the block's operators
    one by one right after the block. Tolerances come from the measurements' own spread. Noise
    can spoil either the raw or the paired estimate while a real modelling or interpolation
    error shows in both, so one of them must meet the target, and the raw one may exceed it
    only by the drift the check measured. A run that other processes visibly disturbed is
    skipped, not judged. A check that misses is measured once more (a timing taken during a
    burst of the host's other tenants, about one check in five here, is not the profile's
    error); a real modelling error misses both times and fails.
    """
    from simulator.calibrate import check_profile

    path, seconds = quick_cpu
    profile = load_profile(path)
    assert profile.provenance.status == "measured" and profile.calibrated
    assert profile.measured_peaks is not None and {"fp32"} <= set(profile.measured_peaks.tflops)
    kinds = {k for k, _, _ in profile.table_keys()}
    assert {"gemm", "attention_prefill", "attention_encoder", "attention_decode", "elementwise", "norm"} <= kinds
    assert {"conv", "embedding", "embedding_bag"} <= kinds
    assert profile.collective("intra_node", "allreduce", 2) is not None

    result = quick_check
    disturbed = result.disturbed_share()
    print(f"ldsim calibrate --quick took {seconds:.1f} s; {disturbed:.0%} of the check's measurements disturbed")
    assert result.plot_path is not None and result.plot_path.stat().st_size > 10_000
    if disturbed > 0.2:
        pytest.skip(f"other work slowed {disturbed:.0%} of the measurements: a busy machine cannot be judged")
    assert seconds < 60, f"ldsim calibrate --quick took {seconds:.1f} s"
    misses = _judge(result)
    if misses:
        print("first check missed:\n  " + "\n  ".join(misses) + "\nmeasuring again")
        again = check_profile(path, quick=True, out_png=tmp_path / "again.png")
        print(again.table())
        second = _judge(again)
        assert not second, "missed twice:\n" + "\n".join(misses) + "\nthen:\n" + "\n".join(second)


def test_calibrate_without_torch_exits_2_with_the_install_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    out = tmp_path / "x.yaml"
    status, stdout, stderr = cli(["calibrate", "--device", "cpu", "--quick", "--out", str(out)], capsys)
    assert status == 2
    assert "pip install 'ldsim[torch]'" in stderr and "pip install torch==2.13.0" in stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists()
    status, _, stderr = cli(["profile", "check", CPU_PROFILE, "--quick"], capsys)
    assert status == 2 and "pip install 'ldsim[torch]'" in stderr


def test_profile_show_on_the_shipped_profiles(capsys):
    for name in available_profiles():
        status, out, _ = cli(["profile", "show", name], capsys)
        assert status == 0
        assert out.startswith(f"{name}: ") and "provenance:" in out and "peaks:" in out and "links:" in out
    status, out, _ = cli(["profile", "show", CPU_PROFILE], capsys)
    assert "provenance: measured" in out and "ldsim calibrate --device cpu" in out
    assert "gemm               fp32" in out and "M 1..1024" in out
    assert "attention_prefill" in out and "embedding_bag" in out and "geometries" in out
    assert "intra_node allreduce x2" in out
    status, out, _ = cli(["profile", "show", "h100-sxm-80gb"], capsys)
    assert "tables: none (uncalibrated" in out


def test_profile_diff(capsys):
    status, out, _ = cli(["profile", "diff", "h100-sxm-80gb", CPU_PROFILE], capsys)
    assert status == 0
    assert "peaks:" in out and "fp32 TFLOP/s" in out and "B/A" in out
    assert "tables: none in common" in out
    status, out, _ = cli(["profile", "diff", CPU_PROFILE, CPU_PROFILE], capsys)
    assert status == 0
    assert "gemm fp32: B is 1x faster at M=1 " in out and "conv fp32: B is 1x faster" in out


def test_collective_workers_never_outlive_their_call():
    pytest.importorskip("torch")
    from simulator.calibrate.collectives import COLLECTIVE_OPS, run_collectives
    from simulator.calibrate.timing import QUICK
    from simulator.errors import LdsimError

    assert _children() == []
    found = run_collectives("gloo", 2, [1024, 65536], QUICK)
    assert {r["op"] for r in found["results"]} | set(found["skipped"]) == set(COLLECTIVE_OPS)
    assert all(r["median_s"] > 0 for r in found["results"])
    assert _children() == []
    with pytest.raises(LdsimError, match="did not finish"):
        run_collectives("gloo", 2, [1024], QUICK, timeout_s=0.05)
    assert _children() == []
