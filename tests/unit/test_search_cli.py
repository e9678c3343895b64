"""Plan search and the predict/plan command lines, including bad input (exit 2, one line)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parsim.errors import ParsimError
from parsim.model import ModelSpec
from parsim.plan import Plan
from parsim.predict import predict
from parsim.search import search


def test_search_ranks_and_counts():
    res = search("llama2-13b", "dgx-h100", 64, result=True)
    df = res.table
    assert len(df) > 100
    steps = df["step_time_s"].to_numpy()
    assert np.all(np.diff(steps) >= -1e-4 * steps[1:])          # best first (ties within 0.01% go to less memory)
    assert (df["dp"] * df["tp"] * df["pp"] == 64).all()
    # H100 SXM reports 81,559 MiB = 79.65 GiB; less the default headroom 1 + 1 GiB + 5% = 5.98 GiB
    assert (df["memory_GiB"] <= 81559 / 1024 - (2 + 0.05 * 81559 / 1024) + 1e-9).all()
    assert any("does not fit" in k for k in res.rejected)
    assert any("heads" in k for k in res.rejected)                         # tp=16, 32, 64 do not divide 40 heads
    assert res.candidates == res.priced + sum(v for k, v in res.rejected.items() if "does not fit" not in k)


def test_search_top_plan_matches_predict():
    df = search("llama2-7b", "dgx-a100", 16)
    from parsim.search import row_to_plan
    p = row_to_plan(df.iloc[0], global_batch=df.attrs["global_batch"])
    r = predict("llama2-7b", "dgx-a100", p, gpus=16)
    assert r.step_time_s == pytest.approx(df["step_time_s"].iloc[0], rel=1e-12)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "parsim", *args], capture_output=True, text=True, timeout=120)


def test_plan_cli_default():
    r = run_cli("plan", "--gpus", "64", "--top", "3")
    assert r.returncode == 0, r.stderr
    assert "llama2-13b" in r.stdout and "dgx-h100" in r.stdout and "default" in r.stdout


def test_plan_cli_json_and_csv(tmp_path):
    out = tmp_path / "p.json"
    r = run_cli("plan", "--gpus", "16", "--model", "llama2-7b", "--format", "json", "--top", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert len(d["plans"]) == 2 and d["plans"][0]["step_time_s"] <= d["plans"][1]["step_time_s"] * (1 + 1e-4)
    r = run_cli("plan", "--gpus", "16", "--model", "llama2-7b", "--format", "csv", "--top", "2")
    assert r.stdout.splitlines()[0].startswith("dp,tp,pp")


def test_predict_cli_table_and_json():
    r = run_cli("predict", "--model", "llama2-7b", "--cluster", "dgx-a100", "--gpus", "8", "--tp", "2",
                "--global-batch", "32", "--micro-batch", "2", "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["step_time_s"] > 0 and set(d["breakdown_s"]) >= {"compute", "bubble", "dp_comm_exposed"}
    r = run_cli("predict", "--model", "llama2-7b", "--gpus", "8", "--global-batch", "8")
    assert "step time breakdown" in r.stdout and "memory per device" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["predict", "--model", "llama2-13", "--gpus", "8"], "did you mean"),
    (["predict", "--model", "/nonexistent.yaml", "--gpus", "8"], "model file '/nonexistent.yaml' does not exist"),
    (["predict", "--cluster", "dgx-a1000", "--gpus", "8"], "did you mean dgx-a100"),
    (["predict", "--gpus", "16", "--tp", "3"], "not divisible by tp"),
    (["predict", "--gpus", "16", "--tp", "2", "--pp", "2", "--dp", "2"], "!= gpus(16)"),
    (["predict", "--gpus", "3", "--tp", "3", "--global-batch", "1"], "heads"),
    (["predict", "--gpus", "2", "--pp", "2", "--schedule", "interleaved", "--vpp", "1"], "interleaved needs vpp >= 2"),
    (["predict", "--gpus", "8", "--global-batch", "12", "--micro-batch", "1"], "global-batch (12) is not divisible"),
    (["predict", "--gpus", "0"], "0 is below 1"),
    (["plan", "--gpus", "-4"], "-4 is below 1"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_model_file_exit_2(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("layers: [oops\n")
    r = run_cli("predict", "--model", str(f), "--gpus", "1")
    assert r.returncode == 2 and "cannot read model file" in r.stderr


@st.composite
def model_and_plan(draw):
    heads = draw(st.sampled_from([1, 2, 4, 8, 12, 16]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4, 8, 16) if heads % k == 0]))
    hidden = heads * draw(st.sampled_from([8, 16, 64, 128]))
    m = ModelSpec("h", layers=draw(st.integers(1, 48)), hidden=hidden, heads=heads, kv_heads=kv,
                  ffn_hidden=draw(st.integers(1, 8)) * hidden, vocab=draw(st.integers(1, 200_000)),
                  seq_len=draw(st.sampled_from([16, 128, 2048, 8192])),
                  activation=draw(st.sampled_from(["gelu", "swiglu"])), tied_embeddings=draw(st.booleans()))
    p = Plan(dp=draw(st.integers(1, 8)), tp=draw(st.sampled_from([1, 2, 4, 8])), pp=draw(st.integers(1, 8)),
             vpp=draw(st.integers(1, 4)), micro_batch=draw(st.integers(1, 8)), global_batch=draw(st.integers(1, 512)),
             schedule=draw(st.sampled_from(["gpipe", "1f1b", "interleaved", "zbv"])),
             grad_sync=draw(st.sampled_from(["ring", "tree", "hd", "hierarchical", "ps", "native"])),
             zero=draw(st.integers(0, 3)), recompute=draw(st.sampled_from(["none", "selective", "full"])),
             sequence_parallel=draw(st.booleans()), dtype=draw(st.sampled_from(["bf16", "fp16", "fp32"])),
             flash_attention=draw(st.booleans()), overlap=draw(st.booleans()))
    return m, p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_plan(), st.sampled_from(["dgx-a100", "dgx-h100", "cpu-local"]))
def test_property_finite_positive_or_parsim_error(mp, cluster):
    m, p = mp
    try:
        r = predict(m, cluster, p, gpus=p.gpus)
    except ParsimError:
        return
    vals = [r.step_time_s, r.tokens_per_s, r.memory_GiB, r.mfu, *r.breakdown_s.values(), *r.memory_breakdown_GiB.values()]
    assert all(np.isfinite(v) for v in vals)
    assert r.step_time_s > 0 and r.memory_GiB > 0 and r.tokens_per_s > 0
    assert all(v >= 0 for v in r.breakdown_s.values())
