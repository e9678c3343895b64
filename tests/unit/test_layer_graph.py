"""The layer as data (parsim.layer): its derived FLOPs, activation memory and TP traffic against the
papers' closed forms, and the physical invariants of every prediction built on it."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsim import layer as Ly
from parsim.costs.memory import activation_bytes_per_layer
from parsim.errors import ParsimError
from parsim.model import ModelSpec, load_model
from parsim.plan import Plan
from parsim.predict import predict


def gpt(h=1024, a=16, s=2048, V=51200, L=4):
    return ModelSpec("g", layers=L, hidden=h, heads=a, kv_heads=a, ffn_hidden=4 * h, vocab=V, seq_len=s)


def test_gpt_layer_flops_are_the_megatron_formula():
    # Narayanan et al. 2021 Appendix: forward of a GPT layer 24·s·h² + 4·s²·h with the full score square
    # (materialised scores); causal flash attention executes half the core: 24·s·h² + 2·s²·h.
    m, s, h = gpt(), 2048, 1024
    assert m.layer_fwd_flops(s, flash=False) == pytest.approx(24 * s * h * h + 4 * s * s * h, rel=1e-12)
    assert m.layer_fwd_flops(s, flash=True) == pytest.approx(24 * s * h * h + 2 * s * s * h, rel=1e-12)
    assert m.model_layer_fwd_flops(s) == pytest.approx(24 * s * h * h + 2 * s * s * h, rel=1e-12)


@pytest.mark.parametrize("t, sp, rc, coeff", [
    # Korthikanti et al. 2022, per layer, 16-bit: s·b·h·(34 + 5as/h) at t = 1 (eq. 1);
    # (10 + 24/t + 5as/(ht)) with TP (eq. 2); (34/t + 5as/(ht)) with TP+SP (eq. 4); 34/t with
    # selective recompute and SP (eq. 5); full recompute keeps the input 2/t (SP).
    (1, False, 0, lambda a, s, h, t: 34 + 5 * a * s / h),
    (4, False, 0, lambda a, s, h, t: 10 + 24 / t + 5 * a * s / (h * t)),
    (4, True, 0, lambda a, s, h, t: 34 / t + 5 * a * s / (h * t)),
    (4, True, 1, lambda a, s, h, t: 34 / t),
    (4, True, 2, lambda a, s, h, t: 2 / t),
    (4, False, 2, lambda a, s, h, t: 2),
])
def test_gpt_activation_bytes_are_korthikanti(t, sp, rc, coeff):
    m, b, s = gpt(), 2, 2048
    got = activation_bytes_per_layer(m, b, s, t, sp, rc, False, 0)
    assert got == pytest.approx(s * b * m.hidden * coeff(m.heads, s, m.hidden, t), rel=1e-12)


def test_flash_keeps_no_scores_and_tp_traffic_is_two_blocks():
    m, b, s, h = gpt(), 1, 2048, 1024
    assert activation_bytes_per_layer(m, b, s, 1, False, 0, True, 0) == pytest.approx(s * b * h * 34)
    # Two row-parallel outputs per layer (attention projection, fc2), each an all-reduce of b·s·h·2 bytes.
    c = Ly.comms(Ly.layer_ops(m, b, s, 8, False, True, 0))
    assert [(g, k) for g, k, _ in c] == [("tp", Ly.TP_BLOCK)] * 2
    assert all(float(n) == b * s * h * 2 for _, _, n in c)


@pytest.mark.parametrize("name", ["llama3-8b", "qwen3-8b", "gemma-7b", "mixtral-8x7b", "megatron-1.7b"])
def test_tp_shards_split_the_matmul_flops(name):
    # Sharded GEMMs: per-rank FLOPs × t = unsharded FLOPs; the MoE router is replicated on every rank.
    m, s, t = load_model(name), 1024, 4
    one = Ly.flops([op for op in Ly.layer_ops(m, 1, s, 1, False, True, 0) if op.name != "router"])
    shard = Ly.flops([op for op in Ly.layer_ops(m, 1, s, t, False, True, 0) if op.name != "router"])
    assert shard * t == pytest.approx(one, rel=1e-12)


def test_issue_example_mfu_never_above_one():
    # Issue 11 kind 8: a 96-layer, hidden-128 model at seq 131,072 on the cpu profile was predicted at
    # MFU 132%: causal flash attention was timed at half its FLOPs while MFU counted all of them.
    m = ModelSpec("x", layers=96, hidden=128, heads=1, kv_heads=1, ffn_hidden=512, vocab=1000, seq_len=131072)
    for flash in (True, False):
        r = predict(m, "cpu-local", Plan(flash_attention=flash))
        assert 0 < r.mfu <= r.hfu <= 1.0


@st.composite
def model_and_plan(draw):
    heads = draw(st.sampled_from([1, 2, 4, 8, 16]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4, 8, 16) if heads % k == 0]))
    hidden = draw(st.sampled_from([64, 128, 256, 1024, 4096]))
    head_dim = draw(st.sampled_from([None, 32, 128, 256])) if hidden % heads == 0 else draw(st.sampled_from([32, 128]))
    experts = draw(st.sampled_from([0, 0, 4, 8, 64]))
    moe = dict(experts=experts, top_k=draw(st.integers(1, min(experts, 8))), expert_ffn_hidden=draw(st.sampled_from([64, 512])),
               shared_experts=draw(st.integers(0, 2)), moe_every=draw(st.sampled_from([1, 2])),
               capacity_factor=draw(st.sampled_from([None, 1.0, 1.25]))) if experts else {}
    m = dict(name="h", layers=draw(st.sampled_from([1, 2, 4, 96])), hidden=hidden, heads=heads, kv_heads=kv,
                  head_dim=head_dim, ffn_hidden=draw(st.integers(1, 8)) * hidden, vocab=draw(st.integers(8, 200_000)),
                  seq_len=draw(st.sampled_from([16, 2048, 8192, 131072])),
                  activation=draw(st.sampled_from(["gelu", "swiglu", "geglu"])), tied_embeddings=draw(st.booleans()),
                  **moe)
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    p = Plan(dp=draw(st.integers(1, 4)), tp=tp, pp=draw(st.sampled_from([1, 2])), micro_batch=draw(st.integers(1, 4)),
             global_batch=draw(st.sampled_from([8, 32, 64])), zero=draw(st.integers(0, 3)),
             recompute=draw(st.sampled_from(["none", "selective", "full"])),
             sequence_parallel=tp > 1 and draw(st.booleans()), dtype=draw(st.sampled_from(["bf16", "fp32"])),
             flash_attention=draw(st.booleans()))
    return m, p


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_plan(), st.sampled_from(["dgx-a100", "dgx-h100", "cpu-local"]))
def test_physical_invariants(mp, cluster):
    """MFU <= HFU <= 1 under parsim.layer's counting convention; the step is at least each of its parts
    (and their sum); time and memory finite and positive."""
    kw, p = mp
    try:
        r = predict(ModelSpec(**kw), cluster, p, gpus=p.gpus)
    except ParsimError:
        return
    assert np.isfinite(r.step_time_s) and r.step_time_s > 0
    assert np.isfinite(r.memory_GiB) and r.memory_GiB > 0
    assert 0 < r.mfu <= r.hfu * (1 + 1e-12) and r.hfu <= 1.0 + 1e-9
    parts = r.breakdown_s.values()
    assert all(np.isfinite(v) and v >= 0 for v in parts)
    assert all(r.step_time_s >= v * (1 - 1e-12) for v in parts)
    assert sum(parts) == pytest.approx(r.step_time_s, rel=1e-9)
    assert all(np.isfinite(v) and v >= 0 for v in r.memory_breakdown_GiB.values())
