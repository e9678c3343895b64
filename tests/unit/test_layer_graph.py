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
    tp = [(g, k, n) for g, k, n in c if g == "tp"]
    assert [(g, k) for g, k, _ in tp] == [("tp", Ly.TP_BLOCK)] * 2
    assert all(float(n) == b * s * h * 2 for _, _, n in tp)
    # the flash core's ring K/V block (priced (cp-1) times, so nothing at cp = 1): K and V of s tokens on 1/t heads
    assert [(g, k, float(n)) for g, k, n in c if g == "cp"] == [("cp", "ring_kv", 2 * b * s * 2 * h / 8)]


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
             sequence_parallel=tp > 1 and draw(st.booleans()), dtype=draw(st.sampled_from(["bf16", "fp32", "fp8"])),
             flash_attention=draw(st.booleans()), ep=draw(st.sampled_from([1, 2, 4])) if experts else 1,
             cp=draw(st.sampled_from([1, 1, 2])))
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


@pytest.mark.parametrize("tp,ep,cp", [(1, 2, 2), (1, 2, 1), (1, 1, 2), (2, 2, 2)])
def test_tp_comm_is_never_a_negative_residue(tp, ep, cp):
    """tp_comm was once the stage's TP+EP+CP collectives less the EP and CP parts: with tp = 1 (no TP
    collective at all) that difference came out -3.4e-21 s (found by test_physical_invariants on this tiny MoE
    with dp 2, ep 2, cp 2 on dgx-h100). It is now summed from the TP terms alone: exactly 0 without tp."""
    kw = dict(name="h", layers=1, hidden=64, heads=2, kv_heads=2, head_dim=32, ffn_hidden=64, vocab=8, seq_len=16,
              activation="gelu", tied_embeddings=False, experts=4, top_k=1, expert_ffn_hidden=64, moe_every=1)
    p = Plan(dp=2, tp=tp, pp=1, micro_batch=1, global_batch=8, ep=ep, cp=cp, sequence_parallel=False)
    r = predict(ModelSpec(**kw), "dgx-h100", p, gpus=p.gpus)
    assert all(v >= 0 for v in r.breakdown_s.values()), r.breakdown_s
    assert (r.breakdown_s["tp_comm"] == 0.0) == (tp == 1)
    assert (r.breakdown_s["ep_comm"] > 0) == (ep > 1) and (r.breakdown_s["cp_comm"] >= 0)


# ---- expert parallelism ------------------------------------------------------------------------

def test_mixtral_ep8_prices_the_all_to_all_and_shards_the_experts():
    from parsim.costs.network import collective_coeffs
    from parsim.predict import get_cluster
    m = load_model("mixtral-8x7b")
    p = Plan(dp=8, ep=8, micro_batch=1, global_batch=64)
    r = predict(m, "dgx-h100", p)
    # Per MoE layer and direction: dispatch and combine, each an all-to-all of the top-2 copies of the
    # micro-batch's tokens, 2 bytes · 4096 tokens · 2 · 4096 hidden per rank (the pricing takes the (ep-1)/ep
    # of it that leaves the rank).
    nbytes = 2 * 4096 * 2 * 4096
    a, b = collective_coeffs(get_cluster("dgx-h100", 8), "all_to_all", "pairwise", tuple(range(8)))
    m_micro = 64 // 8
    expect = m_micro * 32 * 2 * 2 * (a + b * nbytes)       # micro-batches · layers · directions · (dispatch, combine)
    assert r.breakdown_s["ep_comm"] == pytest.approx(expect, rel=1e-9)
    assert r.breakdown_s["tp_comm"] == 0.0
    # Weights per GPU: routed experts 32·8·3·4096·14336 = 45,097,156,608 split over 8 ranks, the rest
    # (46,702,792,704 - 45,097,156,608 = 1,605,636,096) replicated; 2 bytes each.
    X = 32 * 8 * 3 * 4096 * 14336
    assert r.memory_breakdown_GiB["weights"] == pytest.approx((m.params - X + X / 8) * 2 / 2 ** 30, rel=1e-12)
    # MFU counts the active parameters only, whatever ep is.
    r1 = predict(m, "dgx-h100", p.with_(ep=1))
    assert r.mfu * r.step_time_s == pytest.approx(r1.mfu * r1.step_time_s, rel=1e-12)
    assert r1.breakdown_s["ep_comm"] == 0.0 and r1.memory_GiB > r.memory_GiB


@pytest.mark.parametrize("model, plan, needle", [
    ("mixtral-8x7b", Plan(dp=6, ep=3, global_batch=6), "ep (3) does not divide the experts (8)"),
    ("mixtral-8x7b", Plan(dp=2, ep=4, global_batch=2), "ep (4) does not divide dp (2)"),
    ("llama3-8b", Plan(dp=2, ep=2, global_batch=2), "has no experts"),
])
def test_bad_ep(model, plan, needle):
    with pytest.raises(ParsimError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        predict(model, "dgx-h100", plan)


def test_cli_ep_not_dividing_experts_one_line_exit_2():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "parsim", "predict", "--model", "mixtral-8x7b", "--gpus", "6", "--ep", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not divide the experts" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_search_explores_ep_for_moe_only():
    from parsim.search import search
    res = search("qwen3-30b-a3b", "dgx-h100", 8, global_batch=64, result=True, resimulate=0)
    ep = res.columns["ep"]
    assert set(np.unique(ep)) >= {1, 8} and all(128 % int(x) == 0 for x in ep)
    assert (res.columns["dp"] % ep == 0).all()
    dense = search("llama3-8b", "dgx-h100", 8, global_batch=64, result=True, resimulate=0)
    assert set(np.unique(dense.columns["ep"])) == {1}


# ---- context parallelism -----------------------------------------------------------------------

def test_cp2_at_32k_halves_activations_and_prices_the_kv_ring():
    from parsim.costs.network import collective_coeffs
    from parsim.predict import get_cluster
    base = Plan(dp=1, tp=4, micro_batch=1, global_batch=4, seq_len=32768)
    r1 = predict("llama3-8b", "dgx-h100", base)
    r2 = predict("llama3-8b", "dgx-h100", base.with_(cp=2))
    ratio = r2.memory_breakdown_GiB["activations"] / r1.memory_breakdown_GiB["activations"]
    assert 0.45 <= ratio <= 0.55                                   # halved, +-10%
    # The ring: per layer (cp-1) = 1 step forward (K, V) and 2 backward (K, V and dK, dV) of a block of
    # s/cp = 16384 tokens · 2 (K and V) · kv_dim 1024 / tp 4 · 2 bytes, between ranks 0 and 4 (tp apart).
    a, b = collective_coeffs(get_cluster("dgx-h100", 8), "sendrecv", "direct", (0, 4))
    block = 16384 * 2 * 1024 / 4 * 2
    kv_s = 4 * 32 * 3 * (a + b * block)                           # micro-batches · layers · (1 + 2)
    note = next(n for n in r2.notes if n.startswith("context parallel"))
    assert f"ring K/V exchange {kv_s:.6g} s" in note
    assert "cp_comm" in r2.breakdown_s and r2.breakdown_s["cp_comm"] >= 0.0


@pytest.mark.parametrize("plan, needle", [
    (Plan(dp=1, cp=2, global_batch=1, seq_len=4097), "cp (2) does not divide seq-len (4097)"),
    (Plan(dp=1, cp=2, global_batch=1, flash_attention=False), "flash"),
])
def test_bad_cp(plan, needle):
    with pytest.raises(ParsimError) as e:
        predict("llama3-8b", "dgx-h100", plan)
    assert needle in str(e.value)


def test_cli_cp_not_dividing_seq_and_run_cp_one_line_exit_2():
    import subprocess
    import sys
    for argv, needle in ((["predict", "--model", "llama3-8b", "--gpus", "2", "--cp", "2", "--seq-len", "4097"],
                          "does not divide seq-len"),
                         (["run", "--cp", "2"], "context parallelism is not run by this backend")):
        r = subprocess.run([sys.executable, "-m", "parsim", *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_search_explores_cp_for_long_sequences_only():
    from parsim.search import search
    long = search("llama3-8b", "dgx-h100", 8, global_batch=8, seq_len=32768, result=True, resimulate=0)
    assert {1, 2} <= set(np.unique(long.columns["cp"]))
    short = search("llama3-8b", "dgx-h100", 8, global_batch=8, seq_len=4096, result=True, resimulate=0)
    assert set(np.unique(short.columns["cp"])) == {1}


# ---- FP8 -----------------------------------------------------------------------------------------

def test_fp8_vs_bf16_llama3_70b_on_64_h100():
    from parsim.costs.compute import gemm_s
    from parsim.hardware import get_device
    plan = Plan(dp=2, tp=8, pp=4, micro_batch=1, global_batch=128, sequence_parallel=True)
    bf = predict("llama3-70b", "dgx-h100", plan, gpus=64)
    f8 = predict("llama3-70b", "dgx-h100", plan.with_(dtype="fp8"), gpus=64)
    # Arithmetic: a large GEMM (fc1 on a TP rank, [8192, 8192] x [8192, 2·28672/8]) costs
    # 2mkn / (989e12 · eff_bf16) in bf16 and 2mkn / (1979e12 · eff_fp8) in FP8; with the H100 curves' ceilings
    # 0.801 and 0.709 (× the sustained fraction, the same for both) the FP8 GEMM takes 989·0.801/(1979·0.709)
    # = 0.565 of the time. Attention, element-wise kernels (plus the FP8 casts), TP/PP communication, bubble
    # and optimizer do not speed up, so the step lands between 0.565 and 1.
    dev = get_device("h100-sxm").with_sustained_fraction(0.735)
    m, k, n = 8192, 8192, 2 * 28672 / 8
    g_bf = gemm_s(dev, 989e12, 2.0, m, k, n)
    g_f8 = gemm_s(dev, 1979e12, 1.0, m, k, n, eff=dev.matmul_eff_fp8)
    assert g_f8 / g_bf == pytest.approx(989 * 0.801 / (1979 * 0.709), rel=1e-3)
    ratio = f8.step_time_s / bf.step_time_s
    assert 0.5 <= ratio <= 0.85, ratio
    assert f8.breakdown_s["compute"] < bf.breakdown_s["compute"]
    for k_ in ("tp_comm", "pp_comm", "optimizer"):
        assert f8.breakdown_s[k_] == pytest.approx(bf.breakdown_s[k_], rel=1e-12)
    # MFU of FP8 training is taken against the bf16 peak (989 TFLOP/s), as NeMo and Megatron report.
    assert f8.mfu == pytest.approx(f8.model_tflops_per_gpu / 989, rel=1e-12)
    assert any("against the bf16 peak" in n_ for n_ in f8.notes)
    # Memory, Megatron accounting (the default): the FP8 GEMM weights are the primary weights (--fp8-param-gather,
    # every NeMo / Megatron-Bridge FP8 recipe), FP8 data + transpose = 2 bytes in place of the bf16 weight's 2: only
    # the scaling state is extra, 4 GEMMs × 3 tensors × (1024 + 2) fp32 per layer, 20 layers per stage.
    got = (f8.memory_breakdown_GiB["weights"] - bf.memory_breakdown_GiB["weights"]) * 2 ** 30
    assert got == pytest.approx(20 * 12 * 1026 * 4, rel=1e-9)
    # Frameworks that keep the 16-bit weight (deepspeed, fsdp2 accountings): FP8 copy + transpose on top — per layer
    # (2·8192² + 2·8192·1024 + 3·8192·28672)/8 = 106,954,752 parameters, 20 layers per stage, 2 bytes.
    bf_d = predict("llama3-70b", "dgx-h100", plan, gpus=64, accounting="deepspeed")
    f8_d = predict("llama3-70b", "dgx-h100", plan.with_(dtype="fp8"), gpus=64, accounting="deepspeed")
    got = (f8_d.memory_breakdown_GiB["weights"] - bf_d.memory_breakdown_GiB["weights"]) * 2 ** 30
    assert got == pytest.approx(20 * (2 * 106_954_752 + 12 * 1026 * 4), rel=1e-9)


def test_fp8_on_a_device_without_fp8_is_one_line_exit_2():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "parsim", "predict", "--model", "llama3-8b", "--cluster", "dgx-a100",
                        "--gpus", "8", "--dtype", "fp8"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "has no FP8 tensor cores" in r.stderr and len(r.stderr.strip().splitlines()) == 1
