"""`parsim calibrate --quick` end to end on gloo/CPU: measured by the backend through the one launcher,
fitted by the core, written atomically to --out, then loaded by the catalog from there (and named)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_calibration_writes_a_profile_parsim_then_loads(tmp_path):
    out = tmp_path / "cal"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PARSIM_PROGRESS", None)
    r = subprocess.run([sys.executable, "-m", "parsim", "calibrate", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    # progress on stderr (not a terminal here: one line per stage, naming what is measured), nothing on stdout
    assert "parsim calibrate: [0/8, " in r.stderr and "2 ranks: 4 KiB all-reduces" in r.stderr, r.stderr
    assert r.stdout == ""
    prof = yaml.safe_load((out / "devices.yaml").read_text())["cpu"]
    link = yaml.safe_load((out / "cpu-local.yaml").read_text())
    assert "QUICK MODE" in prof["source"] and "QUICK MODE" in link["source"]
    assert prof["peak_TFLOPs"]["fp32"] > 0 and 0 < prof["matmul_sustained_fraction"] <= 1
    assert prof["executor_step_overhead_us"] >= 0 and link["nvlink_GBps"] > 0
    assert not list(out.glob(".*"))            # no temp file left by the atomic writes
    # loaded from there, and said so
    p = subprocess.run([sys.executable, "-m", "parsim", "predict", "--model", "gpt-tiny", "--cluster", "cpu-local",
                        "--gpus", "2", "--dp", "2"], cwd=ROOT, env=dict(env, PARSIM_HOME=str(out)),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"device profile cpu: {out / 'devices.yaml'}" in p.stdout
