"""A device profile from measurements (GEMMs by shape, memory copies): the core's side of calibration.

``fit_profile(base, measured, base_name)`` keeps the catalog entry's peaks, capacity and
datasheet bandwidth and replaces its measured parts:

* ``matmul_efficiency``: points (GFLOP per GEMM, achieved FLOP/s / peak of the dtype), the best
  of the shapes with the same GFLOP — the curve's axis (parsim.hardware.Curve);
* ``memory_efficiency``: points (MB per kernel, achieved copy bytes/s / datasheet bandwidth),
  MB = bytes moved / 1e6.

``matmul_sustained_fraction`` (end-to-end / best-shape GEMM rate) is kept from the catalog: a
GEMM benchmark cannot measure it (it is fitted on published training runs).
"""
from __future__ import annotations

from parsim.errors import ParsimError


def fit_profile(base: dict, measured: dict, base_name: str, when: str = "") -> dict:
    """The measured profile as a devices.yaml entry (units in the keys)."""
    dtype = measured.get("dtype", "bf16")
    peaks = base.get("peak_TFLOPs") or {}
    if dtype not in peaks:
        raise ParsimError(f"profile {base_name} has no {dtype} peak to measure against: expected one of {sorted(peaks)}")
    peak = float(peaks[dtype]) * 1e12
    gemm = {}
    for g in measured["gemm"]:
        gf = round(g["flops"] / 1e9, 6)
        gemm[gf] = max(gemm.get(gf, 0.0), g["flops_per_s"] / peak)
    bw = float(base["memory_bandwidth_GBps"]) * 1e9
    mem = {}
    for h in measured["hbm"]:
        mb = round(h["moved_bytes"] / 1e6, 6)
        mem[mb] = max(mem.get(mb, 0.0), h["Bps"] / bw)
    out = dict(base)
    out["matmul_efficiency"] = [[k, round(min(v, 1.0), 4)] for k, v in sorted(gemm.items())]
    out["memory_efficiency"] = [[k, round(min(v, 1.0), 4)] for k, v in sorted(mem.items())]
    best = max(g["flops_per_s"] for g in measured["gemm"])
    best_bw = max(h["Bps"] for h in measured["hbm"])
    out["source"] = (f"measured {when} on {measured.get('device_name')} (torch {measured.get('torch')}): "
                     f"{len(measured['gemm'])} {dtype} GEMM shapes (best {best / 1e12:.1f} TFLOP/s = "
                     f"{best / peak:.1%} of the {peaks[dtype]} TFLOP/s datasheet peak), {len(measured['hbm'])} copy sizes "
                     f"(best {best_bw / 1e9:.0f} GB/s = {best_bw / bw:.1%} of {base['memory_bandwidth_GBps']} GB/s); "
                     f"{measured.get('method', '')}; peaks, capacity and matmul_sustained_fraction from the catalog "
                     f"entry {base_name} ({base.get('source', '')})")
    return out
