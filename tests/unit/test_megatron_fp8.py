"""Megatron / NeMo FP8 rows (issue 15): the flash-attention core at its published kernel rate, what FP8 training
keeps in memory as Megatron-Core and Transformer Engine keep it, ZeRO sharding over dp·cp and TP communication
overlap. Hand-derivable numbers; the arithmetic is in the comments."""
import dataclasses

import numpy as np
import pytest
import yaml

from parsim import layer as Ly
from parsim.costs.compute import op_times
from parsim.errors import ParsimError
from parsim.hardware import get_device
from parsim.model import DATA, load_model
from parsim.plan import RECOMPUTE, Plan
from parsim.predict import predict

BF16, FP8 = 0, Ly.FP8


def _ops(model, dtype, t=4, s=8192, b=1, flash=True):
    return {op.name: op for op in Ly.layer_ops(load_model(model), np.array([b]), np.array([s]), np.array([t]),
                                               np.array([t > 1]), np.array([flash]), np.array([dtype]))}


def test_flash_core_moves_q_k_v_o_never_the_scores():
    # Llama 3 70B (q_dim 8192, kv_dim 1024), tp 4, one sequence of 8192: the core reads Q, K, V and writes O,
    # 2 bytes · 8192 tokens · (8192 + 2·1024 + 8192)/4 = 75,497,472 bytes; the s² = 67M scores per head stay on chip.
    core = _ops("llama3-70b", BF16)["attn_core_flash"]
    assert float(np.ravel(core.bytes)[0]) == 2 * 8192 * (8192 + 2 * 1024 + 8192) / 4 == 75_497_472
    # it keeps the same four for its backward (O is the output projection's input: not kept twice in bf16)
    assert float(np.ravel(core.saved)[0]) == 75_497_472
    assert float(np.ravel(_ops("llama3-70b", BF16)["attn_out"].saved)[0]) == 0.0


def test_flash_core_runs_at_the_published_cudnn_rate_on_h100():
    # H100: cuDNN causal forward at seq 8192 runs 529 TFLOP/s (FlashAttention-3 paper Fig. 5) = 0.535 of 989; backward
    # 518 not causal (Fig. 6) × the causal/non-causal forward ratio 529/600 = 456.7 = 0.462, both × the sustained
    # fraction. Llama 3 70B, tp 4: 16 heads on the rank, causal FLOPs 2·8192²·128·16 (half of 4·s²·d per head)
    # = 2.199e12 → forward 2.199e12 / (989e12 · 0.535 · f) s; backward 2.5× the FLOPs at 0.462.
    dev = get_device("h100-sxm")
    f = dev.sustained_fraction
    core = _ops("llama3-70b", BF16)["attn_core_flash"]
    fwd, bwd, wg = op_times(core, dev, 989e12, 2.0)
    flops = 2 * 8192 ** 2 * 128 * 16
    assert float(np.ravel(fwd)[0]) == pytest.approx(flops / (989e12 * 0.535 * f), rel=1e-9)
    assert float(np.ravel(bwd)[0]) == pytest.approx(2.5 * flops / (989e12 * 0.462 * f), rel=1e-9)
    assert wg == 0.0
    # a device without a published attention series (here the B200 profile with its cuDNN series removed) prices it as
    # a GEMM roofline of the same FLOPs and bytes
    b200 = dataclasses.replace(get_device("b200"), attention_eff_fwd=None, attention_eff_bwd=None)
    f_b, b_b, _ = op_times(core, b200, 2250e12, 2.0)
    roof = max(flops / (2250e12 * float(b200.matmul_eff(flops / 1e9))), float(b200.memory_time_s(75_497_472)))
    assert float(np.ravel(f_b)[0]) == pytest.approx(roof, rel=1e-9)
    assert float(np.ravel(b_b)[0]) == pytest.approx(2.5 * roof, rel=1e-9)


def test_flash_core_runs_at_the_published_fa2_rate_on_a100():
    # A100 (torchtitan: SDPA's flash backend = FlashAttention-2): FlashAttention-2 paper Fig. 4(c), causal forward +
    # backward at seq 8192 = 165 TFLOP/s → 165/312 = 0.529 of the peak, for forward and backward alike, × the sustained
    # fraction. Llama 3 8B on one rank (tp 1): 32 heads · head dim 128, causal FLOPs 2·8192²·128·32 = 5.498e11;
    # forward + backward = 3.5 × that at 312e12 · 0.529 · f: the paper's combined rate, exactly.
    for name in ("a100-80gb", "a100-40gb"):
        dev = get_device(name)
        f = dev.sustained_fraction
        core = _ops("llama3-8b", BF16, t=1)["attn_core_flash"]
        fwd, bwd, _ = op_times(core, dev, 312e12, 2.0)
        flops = 2 * 8192 ** 2 * 128 * 32
        assert float(np.ravel(fwd)[0]) == pytest.approx(flops / (312e12 * 0.529 * f), rel=1e-9)
        assert float(np.ravel(fwd + bwd)[0]) == pytest.approx(3.5 * flops / (312e12 * 0.529 * f), rel=1e-9)
        # slower than the GEMM roofline it replaced (flash core at 0.529 of peak vs ~0.86 for a GEMM of 550 GFLOP)
        assert float(np.ravel(fwd)[0]) > flops / (312e12 * float(dev.matmul_eff(flops / 1e9)))


def test_non_flash_plans_never_read_the_attention_series():
    # Megatron-LM 2021 (Narayanan et al. Table 1) had no flash attention: its plans (flash_attention=False) price the
    # materialised scores as GEMMs and memory-bound ops; the flash core's weight is 0, so its A100 curve costs nothing.
    core = _ops("llama3-8b", BF16, t=1, flash=False)["attn_core_flash"]
    fwd, bwd, _ = op_times(core, get_device("a100-80gb"), 312e12, 2.0)
    assert float(np.ravel(fwd)[0]) == 0.0 and float(np.ravel(bwd)[0]) == 0.0


def test_attention_points_are_the_published_cudnn_series():
    bench = yaml.safe_load((DATA / "compute_benchmarks.yaml").read_text())["attention"]["flash_attention_3_paper"]
    devices = yaml.safe_load((DATA / "devices.yaml").read_text())
    seq = bench["seq_len"]
    h = bench["h100-sxm"]
    causal, noncausal = h["fwd_bf16_hdim128_causal"]["cudnn_TFLOPs"], h["fwd_bf16_hdim128_noncausal"]["cudnn_TFLOPs"]
    for dev in ("h100-sxm", "h200"):
        pts = devices[dev]["attention_efficiency"]
        assert pts["fwd"] == [[s, round(v / 989, 3)] for s, v in zip(seq, causal)], dev
        # the backward panel carries no mask: its rate × the causal/non-causal forward ratio of the same kernel,
        # e.g. 8192: 518 · 529/600 / 989 = 0.462; 512: 305 · 315/497 / 989 = 0.195
        want = [[s, round(b * c / n / 989, 3)] for s, b, c, n in
                zip(seq, h["bwd_bf16_hdim128"]["cudnn_TFLOPs"], causal, noncausal)]
        assert pts["bwd"] == want, dev
        assert dict(map(tuple, pts["bwd"]))[8192] == 0.462 and dict(map(tuple, pts["bwd"]))[512] == 0.195
    # the 500 W H100 runs torchtitan's SDPA = FlashAttention-2: the FA2 series of the same figures
    pts = devices["h100-hbm2e-500w"]["attention_efficiency"]
    for key, panel in (("fwd", "fwd_bf16_hdim128_causal"), ("bwd", "bwd_bf16_hdim128")):
        want = [[s, round(v / 989, 3)] for s, v in zip(seq, bench["h100-sxm"][panel]["flash_attention_2_TFLOPs"])]
        assert pts[key] == want, ("h100-hbm2e-500w", key)


def test_a100_attention_points_are_the_published_fa2_series():
    # FlashAttention-2 paper Fig. 4(c) (A100 80GB SXM4, forward + backward, causal, head dim 64) / the 312 TFLOP/s
    # bf16 peak, the combined rate used for forward and backward: 171/312 = 0.548 at 16k, 88/312 = 0.282 at 512.
    bench = yaml.safe_load((DATA / "compute_benchmarks.yaml").read_text())["attention"]["flash_attention_2_paper"]
    devices = yaml.safe_load((DATA / "devices.yaml").read_text())
    series = bench["a100-80gb"]["fwd_bwd_bf16_hdim64_causal"]["flash_attention_2_TFLOPs"]
    want = [[s, round(v / 312, 3)] for s, v in zip(bench["seq_len"], series)]
    assert want[-1] == [16384, 0.548] and want[0] == [512, 0.282]
    for dev in ("a100-80gb", "a100-40gb"):
        assert devices[dev]["peak_TFLOPs"]["bf16"] == 312
        assert devices[dev]["attention_efficiency"] == {"fwd": want, "bwd": want}, dev


def test_fp8_gemms_keep_their_fp8_input_for_backward():
    # Transformer Engine's Linear saves its FP8-cast input: Llama 3 70B, tp 4 with sequence parallelism, 8192 tokens:
    # QKV input 8192/4 · 8192 · 1 byte = 16,777,216 (bf16: twice that); fc2 input 8192 · 28672/4 · 1; the output
    # projection keeps an FP8 copy of O (8192 · 8192/4) beside the bf16 O the core keeps.
    bf, f8 = _ops("llama3-70b", BF16), _ops("llama3-70b", FP8)
    sv = lambda ops, k: float(np.ravel(ops[k].saved)[0])
    assert sv(f8, "qkv") == 16_777_216 and sv(bf, "qkv") == 2 * 16_777_216
    assert sv(f8, "fc2") == 8192 * 28672 / 4 and sv(bf, "fc2") == 2 * 8192 * 28672 / 4
    assert sv(f8, "attn_out") == 8192 * 8192 / 4 and sv(bf, "attn_out") == 0.0
    assert sv(f8, "attn_core_flash") == sv(bf, "attn_core_flash")          # Q, K, V, O stay bf16
    # non-FP8 ops keep their 16-bit tensors (the norm inputs, the SwiGLU input)
    for k in ("attn_norm", "mlp_norm", "activation"):
        assert sv(f8, k) == sv(bf, k)


def test_zero_shards_optimizer_state_over_dp_times_cp():
    # Megatron's distributed optimizer shards over the data-parallel group with context parallelism: dp = 2, cp = 2
    # → the 12 B/param of fp32 master weights and Adam moments are split 4 ways, not 2.
    plan = Plan(dp=2, tp=1, pp=1, cp=2, micro_batch=1, global_batch=8, seq_len=8192, zero=1)
    r = predict("llama3-8b", "dgx-h100", plan, gpus=4)
    params = load_model("llama3-8b").params
    assert r.memory_breakdown_GiB["optimizer"] * 2 ** 30 == pytest.approx(12 * params / 4, rel=1e-9)


def test_tp_overlap_leaves_one_chunk_of_tp_exposed():
    # Llama 3 70B on 64 H100, tp 8: the layer's GEMMs outlast its sequence-parallel all-gathers and reduce-scatters,
    # so with TE userbuffers only one chunk of tp = 8 stays exposed: tp_comm drops to 1/8 on the bottleneck rank (the
    # last stage here; rank 0's embedding all-reduce, forward only, is not overlapped and would add to that).
    base = Plan(dp=2, tp=8, pp=4, micro_batch=1, global_batch=64, seq_len=8192, sequence_parallel=True, dtype="fp8")
    off = predict("llama3-70b", "dgx-h100", base, gpus=64)
    on = predict("llama3-70b", "dgx-h100", base.with_(tp_overlap=True), gpus=64)
    assert on.breakdown_s["compute"] == pytest.approx(off.breakdown_s["compute"], rel=1e-12)
    assert off.breakdown_s["tp_comm"] / 8 == pytest.approx(on.breakdown_s["tp_comm"], rel=1e-9)
    assert on.step_time_s < off.step_time_s
    assert on.plan["tp_overlap"] and "tpo" in base.with_(tp_overlap=True).label()


def test_tp_overlap_needs_sequence_parallel_and_is_not_run_by_the_backend():
    with pytest.raises(ParsimError, match="needs --sequence-parallel"):
        predict("llama3-8b", "dgx-h100", Plan(dp=1, tp=2, global_batch=1, tp_overlap=True), gpus=2)
    from parsim.rules import check
    p = Plan(dp=1, tp=2, global_batch=1, sequence_parallel=True, tp_overlap=True, seq_len=512)
    with pytest.raises(ParsimError, match="not run by this backend"):
        check(p, load_model("llama3-8b"), 2, scope="run")


def test_fp8_plans_use_the_fp8_sustained_fraction():
    # H100 ships a 16-bit fraction (0.735, assumed) and an FP8 one (fitted on the FP8 rows): every tensor-core kernel
    # of an fp8 plan takes sustained_fraction / sustained_fraction_fp8 times its 16-bit-curve time.
    dev = get_device("h100-sxm")
    assert dev.sustained_fraction_fp8 is not None
    assert dev.fp8_time_scale() == pytest.approx(dev.sustained_fraction / dev.sustained_fraction_fp8, rel=1e-12)
    core = _ops("llama3-70b", FP8)["attn_core_flash"]
    t1, _, _ = op_times(core, dev, 989e12, 2.0)
    t2, _, _ = op_times(core, dev, 989e12, 2.0, kscale=dev.fp8_time_scale())
    assert float(np.ravel(t2)[0]) == pytest.approx(float(np.ravel(t1)[0]) * dev.fp8_time_scale(), rel=1e-12)
    # a profile without an FP8 fraction: FP8 plans use the 16-bit one
    assert get_device("a100-80gb").fp8_time_scale() == 1.0


def test_pp_overlap_hides_send_recv_under_a_chunk():
    # Llama 3 70B on 64 H100, TP4 PP8 VP5 (the Megatron-Bridge H100 recipe): one activation send/recv per chunk
    # boundary (8192 tokens · 8192 · 2 B / tp 4 = 33.5 MB) takes well under one chunk's forward (2 layers), so with
    # overlap_p2p_comm nothing of it is exposed: pp_comm goes to 0 and the step shortens by what it was.
    base = Plan(dp=2, tp=4, pp=8, vpp=5, schedule="interleaved", micro_batch=1, global_batch=128, seq_len=8192,
                sequence_parallel=True, dtype="fp8", tp_overlap=True)
    off = predict("llama3-70b", "dgx-h100", base, gpus=64)
    on = predict("llama3-70b", "dgx-h100", base.with_(pp_overlap=True), gpus=64)
    assert off.breakdown_s["pp_comm"] > 0 and on.breakdown_s["pp_comm"] == 0.0
    assert on.breakdown_s["compute"] == pytest.approx(off.breakdown_s["compute"], rel=1e-12)
    assert on.step_time_s < off.step_time_s
    assert "ppo" in base.with_(pp_overlap=True).label()
    # it is Megatron's interleaved-schedule option, and the torch backend does not run it
    with pytest.raises(ParsimError, match="needs --schedule interleaved"):
        predict("llama3-70b", "dgx-h100", base.with_(vpp=1, schedule="1f1b", pp_overlap=True), gpus=64)
    from parsim.rules import check
    with pytest.raises(ParsimError, match="not run by this backend"):
        check(base.with_(tp_overlap=False, pp_overlap=True), load_model("llama3-70b"), 64, scope="run")


def test_tp_overlap_and_async_tp_are_one_or_the_other():
    # Megatron / TE userbuffers (tp_overlap) and torchtitan's inductor rewrite (async_tp) are two implementations of the
    # same overlap: a plan with both is refused in one line (each on its own is priced).
    base = Plan(dp=2, tp=8, pp=1, micro_batch=1, global_batch=16, seq_len=8192, sequence_parallel=True)
    with pytest.raises(ParsimError, match="choose one"):
        predict("llama3-70b", "dgx-h100", base.with_(tp_overlap=True, async_tp=True), gpus=16)
    off = predict("llama3-70b", "dgx-h100", base, gpus=16)
    for knob in ("tp_overlap", "async_tp"):
        on = predict("llama3-70b", "dgx-h100", base.with_(**{knob: True}), gpus=16)
        assert on.breakdown_s["tp_comm"] < off.breakdown_s["tp_comm"], knob
        assert on.breakdown_s["compute"] == pytest.approx(off.breakdown_s["compute"], rel=1e-12), knob


def test_fp8_recompute_runs_at_the_fp8_sustained_fraction():
    # Full recompute re-runs the layer's forward (parsim.layer.recomputed): on an fp8 plan those kernels take the same
    # FP8 time scale as the forward itself, so the recompute of a checkpointed layer equals its forward less the
    # host overhead (none on a GPU profile).
    from parsim.costs.compute import layer_times
    dev = get_device("h100-sxm")
    m = load_model("llama3-70b")
    args = (np.array([1.0]), np.array([8192.0]), np.array([8.0]), np.array([True]), np.array([True]), np.array([FP8]))
    lt = layer_times(m, dev, *args, 1, 1, np.array([RECOMPUTE.index("full")]), np.array([False]))
    assert float(lt.recompute_s[0]) == pytest.approx(float(lt.fwd_s[0]), rel=1e-12)
