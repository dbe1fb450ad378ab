"""``ldsim profile show`` and ``ldsim profile diff``: reading and comparing hardware profiles.

:func:`show_profile` prints where a profile's numbers come from (provenance), its peaks
(device figures beside the measured ones), links, default efficiencies, which tables it has --
kinds, dtypes, variants and the extent of each grid -- and its collective curves.
:func:`diff_profiles` compares two profiles: peaks and efficiencies side by side and, for every
table both have, the ratio of their predicted times over a common sweep of shapes (for
instance ``gemm bf16: B is 1.8x faster at M=1 ... 3.1x at M=4096``). Neither needs torch.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from typing import Any

import numpy as np

from simulator.hardware import HardwareProfile
from simulator.tables import DIMS

__all__ = ["diff_profiles", "show_profile"]


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _axis(values: np.ndarray, name: str) -> str:
    lo, hi = int(values[0]), int(values[-1])
    if name == "bytes":
        return f"{name} {_fmt_bytes(lo)}..{_fmt_bytes(hi)} ({len(values)})"
    return f"{name} {lo}..{hi} ({len(values)})"


def show_profile(profile: HardwareProfile) -> str:
    """A readable summary of ``profile`` (several paragraphs)."""
    p, d = profile, profile.device
    out = [f"{p.name}: {p.description}", f"  file: {p.path}  sha256 {p.sha256[:12]}"]
    prov = p.provenance
    out.append(f"provenance: {prov.status}")
    if prov.measured is not None:
        m = prov.measured
        out.append(f"  measured {m.date} on {m.device}; host {m.host}")
        out.append(f"  torch {m.torch or '-'}, driver {m.driver or '-'}; command: {m.command}")
    for source in prov.sources:
        out.append(textwrap.fill(source, 110, initial_indent="  source: ", subsequent_indent="          "))
    if prov.notes:
        out.append(textwrap.fill(prov.notes, 110, initial_indent="  notes: ", subsequent_indent="         "))
    measured = p.measured_peaks
    out.append("peaks:                     device     measured")
    dtypes = sorted(set(d.peak_tflops) | set(measured.tflops if measured else {}))
    for dtype in dtypes:
        dev = d.peak_tflops.get(dtype)
        mea = measured.tflops.get(dtype) if measured else None
        out.append(
            f"  {dtype + ' TFLOP/s':<22} {dev if dev is not None else '-':>8}   {mea if mea is not None else '-':>8}"
        )
    mea_bw = measured.memory_bandwidth_gb_per_s if measured else "-"
    mea_lat = measured.kernel_launch_overhead_us if measured else "-"
    out.append(f"  {'memory GB/s':<22} {d.memory_bandwidth_gb_per_s:>8}   {mea_bw:>8}")
    out.append(f"  {'launch overhead us':<22} {d.kernel_launch_overhead_us:>8}   {mea_lat:>8}")
    out.append(
        f"  memory {d.memory_gib:g} GiB; power {d.power_tdp_w:g} W (idle {d.power_idle_w:g} W)"
        + (f"; {d.price_per_hour_usd:g} USD/h" if d.price_per_hour_usd is not None else "")
    )
    out.append("links:")
    for label, link in (("intra-node", p.node.intra_node), ("inter-node", p.network.inter_node), ("host", p.host.link)):
        out.append(f"  {label:<11} {link.name:<40} {link.bandwidth_gb_per_s:>9g} GB/s  {link.latency_us:>8g} us")
    out.append(
        f"  {p.node.devices_per_node} device(s) per node; host memory {p.host.memory_gib:g} GiB;"
        f" storage read {p.host.storage_read_gb_per_s:g} GB/s"
    )
    eff = p.efficiency
    out.append(f"efficiency (where no table applies; {eff.source}):")
    out.append("  compute " + ", ".join(f"{k} {v:g}" for k, v in eff.compute.items()))
    out.append("  memory  " + ", ".join(f"{k} {v:g}" for k, v in eff.memory.items()))
    keys = p.table_keys()
    if not keys:
        out.append("tables: none (uncalibrated: every operator is priced by the roofline)")
    else:
        out.append(f"tables ({len(keys)} grids):")
        grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
        for kind, dtype, variant in keys:
            grouped[(kind, dtype)].append(variant)
        for (kind, dtype), variants in grouped.items():
            names = DIMS[kind][0]
            if kind == "conv":
                tables = [p.table(kind, dtype, v) for v in variants]
                extents = {_axis(t.axes[0], names[0]) for t in tables if t is not None}
                out.append(f"  {kind:<18} {dtype:<5} {len(variants)} geometries, {'; '.join(sorted(extents))}")
                continue
            for variant in variants:
                table = p.table(kind, dtype, variant)
                assert table is not None
                points = int(np.prod([len(a) for a in table.axes]))
                extent = " x ".join(_axis(a, n) for a, n in zip(table.axes, names, strict=True))
                out.append(f"  {kind:<18} {dtype:<5} {variant or '-':<11} {points:>4} points: {extent}")
    curves = p.collective_keys()
    if curves:
        out.append("collectives and transfers (time against message size):")
        for link_name, op_name, devices in curves:
            curve = p.collective(link_name, op_name, devices)
            assert curve is not None
            sizes = np.exp2(curve.log_bytes)
            times = np.exp2(curve.log_time)
            pts = ", ".join(f"{_fmt_bytes(b)} {_fmt_s(t)}" for b, t in zip(sizes, times, strict=True))
            eff_bw = sizes[-1] / times[-1] / 1e9
            out.append(
                textwrap.fill(
                    f"{link_name} {op_name} x{devices}: {pts} (largest: {eff_bw:.3g} GB/s)",
                    110,
                    initial_indent="  ",
                    subsequent_indent="      ",
                )
            )
    return "\n".join(out)


def _sweep(
    kind: str, dtype: str, variant: str, axes_a: list[np.ndarray], axes_b: list[np.ndarray]
) -> tuple[str, list[tuple[int, Any]]]:
    """``"name|what is held fixed"`` of the coordinate swept for ``kind``, and per value the
    operator to price."""
    from simulator.calibrate.operators import (
        attention_decode_case,
        attention_encoder_case,
        attention_prefill_case,
        gemm_case,
        memory_case,
    )

    lo = min(axes_a[0][0], axes_b[0][0])
    hi = max(axes_a[0][-1], axes_b[0][-1])
    values = sorted({int(v) for v in np.geomspace(max(lo, 1), max(hi, 1), 5).round()})
    hd = int(variant.removeprefix("hd")) if variant.startswith("hd") else 128
    if kind == "gemm":
        n = int(min(axes_a[1][-1], axes_b[1][-1]))
        return f"M|N=K={n}", [(m, gemm_case(m, n, n, dtype).op) for m in values]
    if kind == "attention_prefill":
        q_values = sorted(
            {
                int(v)
                for v in np.geomspace(min(axes_a[1][0], axes_b[1][0]), max(axes_a[1][-1], axes_b[1][-1]), 5).round()
            }
        )
        return "q_len|32 heads, no past", [(q, attention_prefill_case(32, q, 0, hd, dtype).op) for q in q_values]
    if kind == "attention_encoder":
        s_values = sorted(
            {
                int(v)
                for v in np.geomspace(min(axes_a[1][0], axes_b[1][0]), max(axes_a[1][-1], axes_b[1][-1]), 5).round()
            }
        )
        return "seq_len|32 heads", [(s, attention_encoder_case(32, s, hd, dtype).op) for s in s_values]
    if kind == "attention_decode":
        kv_values = sorted(
            {
                int(v)
                for v in np.geomspace(min(axes_a[1][0], axes_b[1][0]), max(axes_a[1][-1], axes_b[1][-1]), 5).round()
            }
        )
        return "kv_len|32 sequences x heads", [(kv, attention_decode_case(32, kv, hd, dtype).op) for kv in kv_values]
    if kind in ("elementwise", "norm", "embedding"):
        from simulator.calibrate.operators import MEMORY_IMPLS
        from simulator.models import dtype_bytes

        impl = next((i for i, (k, v, *_) in MEMORY_IMPLS.items() if k == kind and v == variant), None)
        if impl is None:
            return "", []
        per = MEMORY_IMPLS[impl][2] * dtype_bytes(dtype)
        ops = [memory_case(impl, max(1, b // per), dtype).op for b in values]
        return "bytes|", [(int(op.bytes), op) for op in ops]
    return "", []


def diff_profiles(a: HardwareProfile, b: HardwareProfile) -> str:
    """Compare profile ``b`` with ``a``: peaks, efficiencies, and predicted-time ratios over a
    common sweep of shapes for every table both have (``> 1x faster`` means ``b`` is faster)."""
    from simulator.cost import operator_cost

    out = [f"A = {a.name} ({a.provenance.status}), B = {b.name} ({b.provenance.status})", "peaks:"]
    for dtype in sorted(set(a.device.peak_tflops) | set(b.device.peak_tflops)):
        va, vb = a.device.peak_tflops.get(dtype), b.device.peak_tflops.get(dtype)
        ratio = f"B/A {vb / va:.3g}x" if va and vb else ""
        shown_a, shown_b = ("-" if v is None else v for v in (va, vb))
        out.append(f"  {dtype + ' TFLOP/s':<20} A {shown_a:>10}  B {shown_b:>10}  {ratio}")
    pairs = [
        ("memory GB/s", a.device.memory_bandwidth_gb_per_s, b.device.memory_bandwidth_gb_per_s),
        ("launch overhead us", a.device.kernel_launch_overhead_us, b.device.kernel_launch_overhead_us),
        ("intra-node GB/s", a.node.intra_node.bandwidth_gb_per_s, b.node.intra_node.bandwidth_gb_per_s),
        ("host link GB/s", a.host.link.bandwidth_gb_per_s, b.host.link.bandwidth_gb_per_s),
        ("storage read GB/s", a.host.storage_read_gb_per_s, b.host.storage_read_gb_per_s),
    ]
    for label, fa, fb in pairs:
        ratio = f"B/A {fb / fa:.3g}x" if fa else ""
        out.append(f"  {label:<20} A {fa:>10g}  B {fb:>10g}  {ratio}")
    out.append("efficiency (where no table applies):")
    for group, ea, eb in (
        ("compute", a.efficiency.compute, b.efficiency.compute),
        ("memory", a.efficiency.memory, b.efficiency.memory),
    ):
        kinds = sorted(set(ea) | set(eb))
        out.append(f"  {group}: " + ", ".join(f"{k} {ea.get(k, '-')} -> {eb.get(k, '-')}" for k in kinds))
    shared = sorted(set(a.table_keys()) & set(b.table_keys()))
    if not shared:
        out.append("tables: none in common (a datasheet profile has none); only the figures above compare")
    else:
        out.append("predicted time, for the tables both have (B faster when > 1x):")
        conv: dict[str, list[float]] = defaultdict(list)
        for kind, dtype, variant in shared:
            ta, tb = a.table(kind, dtype, variant), b.table(kind, dtype, variant)
            assert ta is not None and tb is not None
            if kind == "conv":
                from simulator.calibrate.grids import distinct_convs
                from simulator.calibrate.operators import conv_case

                layer = next((c for c in distinct_convs() if c.variant == variant), None)
                if layer is not None:
                    op = conv_case(layer, 8, dtype).op
                    conv[dtype].append(operator_cost(op, a, dtype)[0] / operator_cost(op, b, dtype)[0])
                continue
            axis, ops = _sweep(kind, dtype, variant, ta.axes, tb.axes)
            if not ops:
                continue
            name, fixed = axis.split("|")
            parts = []
            for value, op in ops:
                speedup = operator_cost(op, a, dtype)[0] / operator_cost(op, b, dtype)[0]
                shown = _fmt_bytes(value) if name == "bytes" else f"{name}={value}"
                parts.append(f"{speedup:.2g}x at {shown}")
            label = f"{kind}{'/' + variant if variant else ''} {dtype}"
            parts[0] = parts[0].replace("x at", "x faster at", 1)
            out.append(
                textwrap.fill(
                    f"{label}: B is {' ... '.join(parts)}" + (f" ({fixed})" if fixed else ""),
                    110,
                    initial_indent="  ",
                    subsequent_indent="      ",
                )
            )
        for dtype, ratios in conv.items():
            gm = float(np.exp(np.mean(np.log(ratios))))
            out.append(
                f"  conv {dtype}: B is {gm:.2g}x faster (geometric mean over {len(ratios)} geometries at batch 8;"
                f" {min(ratios):.2g}x .. {max(ratios):.2g}x)"
            )
    shared_curves = sorted(set(a.collective_keys()) & set(b.collective_keys()))
    for link_name, op_name, devices in shared_curves:
        ca, cb = a.collective(link_name, op_name, devices), b.collective(link_name, op_name, devices)
        assert ca is not None and cb is not None
        parts = [f"{ca.time_s(n) / cb.time_s(n):.2g}x at {_fmt_bytes(n)}" for n in (2**10, 2**20, 2**26)]
        parts[0] = parts[0].replace("x at", "x faster at", 1)
        out.append(f"  {link_name} {op_name} x{devices}: B is {' ... '.join(parts)}")
    return "\n".join(out)
