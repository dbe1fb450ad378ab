"""Measured tables: validation, log-space interpolation, and the cost model reading them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.cost import Deployment, ModelCost, operator_cost, roofline_s
from simulator.errors import ConfigError
from simulator.hardware import available_profiles, load_profile, parse_quantity
from simulator.models import Operator, llama2_7b, resnet50
from simulator.tables import TABLE_COLUMNS, load_collectives, load_tables


def _gemm_rows(rate, ms=(1, 16, 256), ns=(256, 4096), ks=(256, 4096), dtype="fp32"):
    rows = []
    for m, n, k in itertools.product(ms, ns, ks):
        work = 2.0 * m * n * k
        rows.append(
            dict(
                kind="gemm",
                dtype=dtype,
                variant="",
                d0=m,
                d1=n,
                d2=k,
                d3=None,
                work=work,
                time_s=work / rate(m, n, k),
                spread=0.01,
            )
        )
    return rows


def _write(tmp_path, rows, name="t.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=TABLE_COLUMNS).to_csv(path, index=False)
    return path


def power_rate(m, n, k):
    return 1e9 * m**0.5 * n**0.25 * k**0.1  # a power law: exact under log-log interpolation


def test_grid_points_are_reproduced_and_power_laws_interpolate_exactly(tmp_path):
    table = load_tables(_write(tmp_path, _gemm_rows(power_rate)), "test")[("gemm", "fp32", "")]
    for m, n, k in [(1, 256, 256), (16, 4096, 256), (256, 4096, 4096), (4, 1024, 1000), (100, 300, 2000)]:
        work = 2.0 * m * n * k
        got = float(table.time_s(np.array([[m, n, k]]), np.array([work]))[0])
        assert got == pytest.approx(work / power_rate(m, n, k), rel=1e-9)


def test_outside_the_grid_rate_is_clamped_and_time_floored(tmp_path):
    table = load_tables(_write(tmp_path, _gemm_rows(power_rate)), "test")[("gemm", "fp32", "")]
    edge = 2.0 * 256 * 4096 * 4096 / power_rate(256, 4096, 4096)
    big = float(table.time_s(np.array([[1024, 4096, 4096]]), np.array([2.0 * 1024 * 4096 * 4096]))[0])
    assert big == pytest.approx(4 * edge, rel=1e-9)  # beyond the grid: time grows with work
    tiny = float(table.time_s(np.array([[1, 8, 8]]), np.array([2.0 * 64]))[0])
    assert tiny == pytest.approx(table.floor_s)  # below it: never faster than anything measured


def test_vectorised_queries_are_bit_identical_to_single_ones(tmp_path):
    table = load_tables(_write(tmp_path, _gemm_rows(power_rate)), "test")[("gemm", "fp32", "")]
    rng = np.random.default_rng(0)
    coords = np.exp(rng.uniform(0, 9, (50, 3)))
    work = 2 * coords.prod(axis=1)
    batch = table.time_s(coords, work)
    singles = [table.time_s(coords[i : i + 1], work[i : i + 1])[0] for i in range(50)]
    assert list(batch) == singles
    scalar = [table.time_one_s(tuple(coords[i]), float(work[i])) for i in range(50)]
    assert np.allclose(scalar, batch, rtol=1e-12, atol=0)  # the fast scalar path: same to rounding


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rows: [dict(r, kind="gemmm") for r in rows], r"unknown value 'gemmm'; did you mean 'gemm'"),
        (lambda rows: [dict(r, dtype="fp33") for r in rows], r"column 'dtype': unknown value 'fp33'"),
        (lambda rows: rows[:-1], r"not a full grid of M x N x K: 11 rows for 3 x 2 x 2 = 12"),
        (lambda rows: [*rows[:-1], rows[0]], r"repeats a grid point|not a full grid"),
        (lambda rows: [dict(r, time_s=-1.0) for r in rows], r"line 2, column 'time_s': expected a number > 0"),
        (lambda rows: [dict(r, time_s="fast") for r in rows], r"column 'time_s': expected a number > 0, got 'fast'"),
    ],
)
def test_malformed_tables_are_refused_naming_the_place(tmp_path, mutate, match):
    path = _write(tmp_path, mutate(_gemm_rows(power_rate)))
    with pytest.raises(ConfigError, match=match):
        load_tables(path, "where")


def test_a_missing_column_is_named(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame(_gemm_rows(power_rate)).drop(columns=["spread"]).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"missing column\(s\) spread"):
        load_tables(path, "where")


def test_collective_curve(tmp_path):
    path = tmp_path / "c.csv"
    sizes = [1024, 65536, 2**22]
    pd.DataFrame(
        [dict(link="intra_node", op="allreduce", devices=2, bytes=b, time_s=1e-5 + b / 1e10, spread=0.0) for b in sizes]
    ).to_csv(path, index=False)
    curve = load_collectives(path, "where")[("intra_node", "allreduce", 2)]
    assert curve.time_s(65536) == pytest.approx(1e-5 + 65536 / 1e10)
    assert curve.time_s(2**23) == pytest.approx(2 * (1e-5 + 2**22 / 1e10))
    assert curve.time_s(10) == pytest.approx(1e-5 + 1024 / 1e10)


@pytest.fixture
def calibrated_a100(tmp_path):
    """The A100 datasheet profile plus a GEMM table and an all-reduce curve."""
    data = yaml.safe_load(available_profiles()["a100-sxm-80gb"].read_text())
    data["name"] = "a100-test"
    rows = _gemm_rows(lambda m, n, k: 1e11 * m**0.5, ms=(1, 64, 4096), ns=(512, 16384), ks=(512, 16384), dtype="bf16")
    _write(tmp_path, rows, "a100-test.tables.csv")
    pd.DataFrame(
        [
            dict(link="intra_node", op="allreduce", devices=2, bytes=b, time_s=7e-6 + b / 2e11, spread=0)
            for b in (1024, 2**20, 2**26)
        ]
    ).to_csv(tmp_path / "a100-test.collectives.csv", index=False)
    data["tables"] = {"operators": "a100-test.tables.csv", "collectives": "a100-test.collectives.csv"}
    data["provenance"]["status"] = "fitted"
    data["provenance"]["measured"] = {"date": "2026-11-25", "host": "test", "device": "A100", "command": "test"}
    path = tmp_path / "a100-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


def test_cost_model_uses_tables_where_they_exist_and_says_where_it_did_not(calibrated_a100):
    profile = calibrated_a100
    assert profile.calibrated and profile.table("gemm", "bf16") is not None
    op = Operator("g", "gemm", 2.0 * 64 * 512 * 512, 1.0, 3, (64, 512, 512))
    seconds, measured = operator_cost(op, profile, "bf16")
    assert measured and seconds == pytest.approx(3 * op.flops / (1e11 * 8), rel=1e-9)
    norm = Operator("n", "norm", 1e3, 1e6, 1, (10**6,))
    seconds, measured = operator_cost(norm, profile, "bf16")
    assert not measured and seconds == roofline_s(norm, profile, "bf16")
    cost = ModelCost(Deployment(llama2_7b(), "bf16", 2), profile)
    cost.dense_s(16, 16)
    assert "gemm" in cost.calibrated_kinds and "allreduce" in cost.calibrated_kinds
    assert {"norm", "elementwise", "attention_decode"} <= cost.uncalibrated_kinds


def test_conv_without_its_geometry_falls_back_to_the_gemm_table(calibrated_a100):
    conv = next(op for op in resnet50().operators(8, "bf16") if op.kind == "conv")
    seconds, measured = operator_cost(conv, calibrated_a100, "bf16")
    m, n, k = conv.fallback[1]
    assert measured
    table = calibrated_a100.table("gemm", "bf16")
    assert seconds == pytest.approx(float(table.time_s(np.array([[m, n, k]]), np.array([conv.flops]))[0]))


def test_profile_sha_covers_the_tables(calibrated_a100, tmp_path):
    import hashlib

    assert calibrated_a100.sha256 != hashlib.sha256((tmp_path / "a100-test.yaml").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("value", "dimension", "unit", "expected"),
    [
        ("2.039 TB/s", "bandwidth", "GB/s", 2039.0),
        ("80 GiB", "memory", "GiB", 80.0),
        ("4 us", "time", "us", 4.0),
        ("0.4 kW", "power", "W", 400.0),
        ("200 Gb/s", "bandwidth", "GB/s", 25.0),
        (312, "flops", "TFLOP/s", 312),
    ],
)
def test_quantities_with_units(value, dimension, unit, expected):
    assert parse_quantity(value, dimension, unit) == pytest.approx(expected)


def test_a_unit_that_does_not_parse_names_the_field(tmp_path):
    data = yaml.safe_load(available_profiles()["a100-sxm-80gb"].read_text())
    data["device"]["memory_bandwidth_gb_per_s"] = "2 TB/sec"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError,
        match=r"device\.memory_bandwidth_gb_per_s: cannot read '2 TB/sec' as a bandwidth: "
        r"unknown unit 'TB/sec'; did you mean 'TB/s'",
    ):
        load_profile(path)
    data["device"]["memory_bandwidth_gb_per_s"] = "2 GiB"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"unknown unit 'GiB'"):
        load_profile(path)


def test_a_profile_naming_a_missing_table_file_is_refused(tmp_path):
    data = yaml.safe_load(available_profiles()["a100-sxm-80gb"].read_text())
    data["tables"] = {"operators": "nope.csv"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tables.operators: file 'nope.csv' not found beside the profile"):
        load_profile(path)
