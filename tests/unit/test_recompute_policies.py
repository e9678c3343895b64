"""Recompute policies, element-wise kernels and async TP as derived from the one layer description
(parsim.layer): hand-derived goldens with the arithmetic in the comments.

Llama 3 8B (parsim preset): h = 4096, q_dim = 4096 (32 heads x 128), kv_dim = 1024 (8 KV heads), ffn = 14336,
32 layers, vocab 128256, gated MLP (SwiGLU), RMSNorm, rotary. One micro-batch of b = 1 sequence of s = 8192
tokens, bf16 (e = 2), flash attention, no tensor parallelism unless said: T = 8192 tokens.
"""
import numpy as np
import pytest

from parsim import layer as Ly
from parsim.costs.memory import activation_bytes_per_layer
from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.plan import RECOMPUTE, Plan
from parsim.predict import plan_columns, predict, price, get_cluster
from parsim.rules import check

T, H, QD, KVD, F, A, E = 8192, 4096, 4096, 1024, 14336, 32, 2


@pytest.fixture(scope="module")
def m():
    return load_model("llama3-8b")


def ops(m, t=1.0, sp=False):
    return Ly.layer_ops(m, 1.0, float(T), t, sp, True, 0)


def test_policies_are_the_plan_names():
    assert Ly.POLICIES == RECOMPUTE


def test_op_level_sac_keeps_every_second_mm_and_the_sdpa_output(m):
    # torchtitan's Llama block runs 7 mm in this order: wq, wk, wv (qkv), wo, w1, w3 (fc1), w2. Odd counts are
    # saved: wq (1), wv (3), w1 (5), w2 (7); even ones recomputed: wk (2), wo (4), w3 (6).
    # Kept bytes: block input e·T·h + wq e·T·qd + wv e·T·kvd + SDPA out e·T·qd + log-sum-exp 4·a·T + w1 e·T·f
    #             + w2 e·T·h = 2·8192·(4096 + 4096 + 1024 + 4096 + 14336 + 4096) + 4·32·8192
    #             = 2·8192·31744 + 1,048,576 = 520,093,696 + 1,048,576 = 521,142,272
    assert activation_bytes_per_layer(m, 1, T, 1, False, RECOMPUTE.index("selective-op"), True, 0) == 521_142_272
    # what it re-runs: wk (kvd/(qd+2kvd) = 1/6 of qkv), wo, w3 (half of fc1), and the element-wise ops before w2
    re = {op.name: share for op, share in Ly.recomputed(ops(m), "selective-op")}
    assert re["qkv"] == pytest.approx(1 / 6) and re["attn_out"] == 1.0 and re["fc1"] == 0.5
    assert {"attn_norm", "rotary", "attn_residual", "mlp_norm", "activation"} <= set(re)
    assert "attn_core_flash" not in re and "fc2" not in re and "mlp_residual" not in re   # saved / after the last mm
    # recomputed FLOPs: 2·T·h·(kvd + qd + f) = 2·8192·4096·(1024 + 4096 + 14336) = 67,108,864·19,456
    #                   = 1,305,670,057,984
    assert Ly.recomputed_flops(ops(m), "selective-op") == 1_305_670_057_984
    assert m.recompute_fwd_flops("selective-op", T, True) == 1_305_670_057_984


def test_op_level_sac_under_tensor_and_sequence_parallelism(m):
    # tp = 2 with sequence parallelism: column-parallel outputs are /t, the row-parallel mm outputs (wo, w2) are the
    # full [T, h] partial sums on each rank, and the two reduce-scattered [T/t, h] outputs are saved too.
    # input e·T/2·h + wq e·T·qd/2 + wv e·T·kvd/2 + SDPA e·T·qd/2 + lse 4·(a/2)·T + w1 e·T·f/2 + w2 e·T·h
    #   + 2 x e·T/2·h = 2·8192·(2048 + 2048 + 512 + 2048 + 7168 + 4096 + 2·2048) + 4·16·8192
    #   = 16384·22016 + 524,288 = 360,710,144 + 524,288 = 361,234,432
    got = activation_bytes_per_layer(m, 1, T, 2, True, RECOMPUTE.index("selective-op"), True, 0)
    assert got == 361_234_432
    # the all-gathers feeding the two column-parallel GEMMs with a recomputed mm (wk in qkv, w3 in fc1) run again
    assert Ly.regathers(ops(m, 2.0, True), "selective-op") == 2.0


def test_policy_order_memory_and_recompute(m):
    # none keeps most, full least; op-level SAC in between, and it re-runs more than selective, less than full
    b = [activation_bytes_per_layer(m, 1, T, 1, False, c, True, 0) for c in range(4)]
    assert b[2] < b[3] < b[1] <= b[0]
    # full keeps the layer input only: e·T·h = 2·8192·4096 = 67,108,864
    assert b[2] == 67_108_864
    fl = {p: Ly.recomputed_flops(ops(m), p) for p in RECOMPUTE}
    assert fl["none"] == 0 and fl["selective"] < fl["selective-op"] < fl["full"] == m.layer_fwd_flops(T, True)


def test_full_every_second_layer(m):
    # recompute full with recompute_every = 2 (torchtitan's selective_ac_option = 2): floor(32/2) = 16 of 32 layers
    # checkpointed. Recomputed FLOPs per mean layer: half a layer forward; memory per mean layer:
    # (e·T·h + none)/2 = (67,108,864 + 1,140,850,688)/2 = 603,979,776; activations on the one pipeline rank:
    # 32 layers x that + one layer's recompute working set (none: 1,140,850,688) + torchtitan's eager loss at its
    # backward (fsdp2: saved fp32 log-probs + nll_loss's fp32 gradient + log_softmax's fp32 gradient of the logits)
    # 3·4·T·V = 12·8192·128256 = 12,608,077,824, and the final norm's and the output layer's saved inputs (tp 1:
    # 2·e·T·h = 134,217,728; parsim.costs.memory.head_saved_bytes):
    # 19,327,352,832 + 1,140,850,688 + 12,608,077,824 + 134,217,728 = 33,210,499,072
    none = activation_bytes_per_layer(m, 1, T, 1, False, 0, True, 0)
    assert none == 1_140_850_688
    assert m.recompute_fwd_flops("full", T, True, every=2) == pytest.approx(0.5 * m.layer_fwd_flops(T, True))
    base = Plan(dp=8, micro_batch=1, global_batch=8, seq_len=T, zero=3, recompute="full")
    half = predict(m, "grand-teton-h100", base.with_(recompute_every=2), accounting="fsdp2")
    full = predict(m, "grand-teton-h100", base, accounting="fsdp2")
    assert half.memory_breakdown_GiB["activations"] * 2 ** 30 == pytest.approx(33_210_499_072, rel=1e-12)
    assert half.breakdown_s["recompute"] == pytest.approx(0.5 * full.breakdown_s["recompute"], rel=1e-12)
    assert half.step_time_s < full.step_time_s


def test_eager_kernels_move_the_elementwise_bytes_of_their_decomposition(m):
    # torchtitan's eager RMSNorm: (e+4) + 8 + 4 + 8 + (4+e) + 2e = 28 + 4e = 36 B per element forward (fused: 2e = 4),
    # backward 52 + 6e = 64 (fused 4e = 8); attn_norm over T·h = 33,554,432 elements: 1,207,959,552 B forward
    norm = next(op for op in ops(m) if op.name == "attn_norm")
    assert Ly.mem_bytes(norm, True) == (36 * T * H, 64 * T * H) == (1_207_959_552, 2_147_483_648)
    assert Ly.mem_bytes(norm, False) == (4 * T * H, 8 * T * H)
    # SwiGLU: silu (2e) + mul (3e) = 5e = 10 B per ffn element forward, 9e = 18 backward (fused 3e, 6e)
    act = next(op for op in ops(m) if op.name == "activation")
    assert Ly.mem_bytes(act, True) == (10 * T * F, 18 * T * F)
    assert Ly.mem_bytes(act, False) == (6 * T * F, 12 * T * F)
    # the GELU of a GPT layer and LayerNorm are one kernel each way: eager = fused
    for op in Ly.layer_ops(load_model("gpt3-175b"), 1.0, 2048.0, 1.0, False, True, 0):
        if op.kind == "mem":
            assert Ly.mem_bytes(op, True) == Ly.mem_bytes(op, False), op.name
    # and a plan with eager kernels is slower, compute only
    p = Plan(dp=8, micro_batch=2, global_batch=16, seq_len=T, zero=3, recompute="selective-op")
    fused, eager = (predict(m, "grand-teton-h100", p.with_(kernels=k), accounting="fsdp2") for k in ("fused", "eager"))
    assert eager.breakdown_s["compute"] > fused.breakdown_s["compute"]
    assert eager.breakdown_s["recompute"] > fused.breakdown_s["recompute"]
    assert eager.memory_GiB == fused.memory_GiB


def test_async_tp_hides_tp_collectives_under_the_tp_gemms(m):
    p = Plan(dp=4, tp=8, micro_batch=2, global_batch=8, seq_len=T, zero=3, recompute="full", sequence_parallel=True)
    sync, asyn = (predict("llama3-70b", "grand-teton-h100", p.with_(async_tp=a), accounting="fsdp2") for a in (False, True))
    assert 0 <= asyn.breakdown_s["tp_comm"] < sync.breakdown_s["tp_comm"]
    assert asyn.breakdown_s["compute"] == sync.breakdown_s["compute"] and asyn.step_time_s < sync.step_time_s


def test_async_tp_exposed_formula():
    # a pair of GEMM g and collective c split in t chunks takes max(g, c + g/t): exposed max(0, c - g·(t-1)/t).
    # t = 8: c = 1, g = 0.5 -> 1 - 0.4375 = 0.5625; c = 1, g = 4 -> 0
    from parsim.predict import _async_tp_exposed_s  # noqa: F401  (the function priced in predict)
    lag = 7 / 8
    assert max(0.0, 1 - 0.5 * lag) == pytest.approx(0.5625) and max(0.0, 1 - 4 * lag) == 0.0


def test_rules_for_the_new_knobs(m):
    def plan(**kw):
        return Plan(global_batch=8, **kw)  # noqa
    with pytest.raises(ParsimError, match="recompute-every = 2 checkpoints every N-th layer fully: it needs recompute full"):
        check(plan(dp=8, recompute="selective", recompute_every=2), m, 8)
    with pytest.raises(ParsimError, match="recompute-every = 33: expected at most the layers \\(32\\)"):
        check(plan(dp=8, recompute="full", recompute_every=33), m, 8)
    with pytest.raises(ParsimError, match="async-tp .* needs tp > 1 and sequence-parallel, got tp = 8, sequence-parallel = False"):
        check(plan(tp=8, async_tp=True), m, 8)
    with pytest.raises(ParsimError, match="async-tp is an inductor rewrite .* got kernels eager"):
        check(plan(tp=8, sequence_parallel=True, async_tp=True, kernels="eager"), m, 8)
    with pytest.raises(ParsimError, match="kernels = 'compiled': expected one of fused, eager"):
        plan(kernels="compiled")
    # priced, not run by the torch backend
    with pytest.raises(ParsimError, match="not run by this backend"):
        check(plan(dp=8, recompute="selective-op"), m, 8, scope="run")
    check(plan(dp=8, recompute="full", recompute_every=2), m, 8)


def test_vectorised_table_equals_single_plans(m):
    # the search's path: one price() call over a table mixing policies, kernels and async TP gives each row's
    # single-plan numbers (the new knobs are columns, not per-object state)
    base = Plan(dp=4, tp=2, micro_batch=1, global_batch=8, seq_len=T, zero=3, sequence_parallel=True)
    plans = [base.with_(recompute=r) for r in RECOMPUTE] + [
        base.with_(recompute="full", recompute_every=4), base.with_(kernels="eager", recompute="selective-op"),
        base.with_(async_tp=True, recompute="selective-op")]
    cl = get_cluster("grand-teton-h100", 8)
    table = price(m, cl, plan_columns(plans, m))
    for i, p in enumerate(plans):
        one = price(m, cl, plan_columns([p], m))
        for k in ("step_time_s", "memory_bytes", "hardware_flops"):
            assert np.asarray(table[k])[i] == pytest.approx(float(np.asarray(one[k])[0]), rel=1e-12), (p.label(), k)
    # hardware FLOPs add what each policy re-runs: selective-op > selective, full/4 = 8 of 32 layers
    hw = np.asarray(table["hardware_flops"])
    assert hw[0] < hw[1] < hw[3] < hw[2] and hw[0] < hw[4] < hw[2]
