"""Speed of the plan search (core issue), as benchmarks. Targets reported by the speed check
(`python -m tests.tracking.speed`), never asserted here:

* >= 1,000,000 candidate plans priced per second on one core (price() over a 1M-row table);
* `parsim plan --gpus 64` under one second as a whole process;
* `parsim plan --gpus 16384 --model llama3-405b` under five seconds as a whole process;
* a 3.2M-plan space of GPT-3 175B on 64 GPUs (tests/benchmarks/plan_space.py) priced in chunks, as the
  search prices, under five seconds and 500 MiB of peak RSS as a whole process (the RSS is recorded in the
  benchmark's extra_info and shown by the speed check).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from parsim.model import load_model
from parsim.predict import get_cluster, price

N = 1_000_000


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    tp = rng.choice([1, 2, 4, 8], N)
    pp = rng.choice([1, 2, 4], N)
    return dict(dp=64 // (tp * pp), tp=tp, pp=pp, vpp=np.ones(N, np.int64), mb=rng.choice([1, 2, 4], N),
                gb=np.full(N, 1024), seq=np.full(N, 4096), dtype=np.zeros(N, np.int64),
                schedule=rng.integers(0, 2, N), grad_sync=rng.integers(0, 6, N), zero=rng.integers(0, 4, N),
                recompute=rng.integers(0, 3, N), sp=(rng.random(N) < 0.5) & (tp > 1), overlap=np.ones(N, bool),
                flash=np.ones(N, bool))


def test_price_one_million_plans_per_second(bench, table):
    model, cl = load_model("llama2-13b"), get_cluster("dgx-h100", 64)
    out = bench(lambda: price(model, cl, table), rounds=7, target_s=1.0,
                target=">= 1,000,000 plans priced/s/core (1M plans < 1 s)", items=N, items_unit="plans")
    assert len(out["step_time_s"]) == N and np.isfinite(out["step_time_s"]).all()


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "parsim", *args], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return r


def test_plan_64_gpus_whole_process(bench):
    r = bench(lambda: _cli("plan", "--gpus", "64"), rounds=7, target_s=1.0,
              target="`parsim plan --gpus 64` < 1 s as a whole process")
    assert "plans" in r.stdout


def test_plan_16384_gpus_llama3_405b_whole_process(bench):
    r = bench(lambda: _cli("plan", "--gpus", "16384", "--model", "llama3-405b"), rounds=5, target_s=5.0,
              target="`parsim plan --gpus 16384 --model llama3-405b` < 5 s as a whole process")
    assert "plans" in r.stdout


def _plan_space():
    from tests.benchmarks import plan_space
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "tests.benchmarks.plan_space"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["rows"] == plan_space.COPIES * 27_285       # the valid candidates of `plan --gpus 64 --model gpt3-175b`
    return out


def test_price_3m_plan_space_streamed_whole_process(bench, benchmark):
    out = bench(_plan_space, rounds=3, target_s=5.0, items=117 * 27_285, items_unit="plans",
                target="3.2M GPT-3 175B plans on 64 GPUs priced in chunks < 5 s (and < 500 MiB) as a whole process")
    assert 0 < out["fitting"] < out["rows"]
    if not benchmark.disabled:
        benchmark.extra_info["peak_rss_MiB"] = out["peak_rss_MiB"]
