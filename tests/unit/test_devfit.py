"""A device profile from GEMM and copy measurements (parsim.devfit): hand-derivable efficiencies."""
import pytest
import yaml

from parsim.devfit import fit_profile
from parsim.errors import ParsimError
from parsim.hardware import _profile

BASE = {"kind": "gpu", "peak_TFLOPs": {"bf16": 1000, "fp32": 60}, "vector_TFLOPs": 100, "memory_GiB": 80,
        "memory_bandwidth_GBps": 4000, "matmul_efficiency": [[0, 0.1], [1, 0.5], [100, 0.8]],
        "matmul_sustained_fraction": 0.735, "vector_efficiency": [[0, 0.1], [16, 0.95]],
        "memory_efficiency": [[0, 0.3], [100, 0.9]], "source": "datasheet"}


def _gemm(n, tflops):
    f = 2.0 * n ** 3
    return {"m": n, "n": n, "k": n, "flops": f, "time_s": f / (tflops * 1e12), "flops_per_s": tflops * 1e12}


def test_measured_points_become_the_curves_and_the_rest_stays_the_catalogs():
    meas = {"dtype": "bf16", "device_name": "X", "torch": "t",
            "gemm": [_gemm(1024, 400.0), _gemm(4096, 700.0), _gemm(4096, 650.0)],
            "hbm": [{"bytes": 2 ** 30, "moved_bytes": 2 ** 31, "time_s": 2 ** 31 / 3.2e12, "Bps": 3.2e12}]}
    prof = fit_profile(BASE, meas, "x")
    # 2·1024³ = 2.147 GFLOP at 400 of 1000 TFLOP/s -> 0.4; 2·4096³ = 137.4 GFLOP, best of 700 and 650 -> 0.7
    assert prof["matmul_efficiency"] == [[2.147484, 0.4], [137.438953, 0.7]]
    # a 1 GiB copy moves 2 GiB = 2147.48 MB at 3.2 of the datasheet's 4.0 TB/s -> 0.8
    assert prof["memory_efficiency"] == [[2147.483648, 0.8]]
    assert prof["peak_TFLOPs"] == BASE["peak_TFLOPs"] and prof["matmul_sustained_fraction"] == 0.735
    assert "70.0% of the 1000 TFLOP/s" in prof["source"] and "datasheet" in prof["source"]
    dev = _profile("x", yaml.safe_load(yaml.safe_dump(prof)))     # loads as a device profile
    assert float(dev.matmul_eff(137.438953)) == pytest.approx(0.7 * 0.735)


def test_a_dtype_the_profile_has_no_peak_for_is_an_error():
    with pytest.raises(ParsimError, match="no fp8 peak"):
        fit_profile(BASE, {"dtype": "fp8", "gemm": [_gemm(64, 1.0)], "hbm": []}, "x")
