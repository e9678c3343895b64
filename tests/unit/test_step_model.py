"""The step model: memory goldens (Korthikanti et al. 2022), ZeRO, schedules, report keys."""

import pytest

from parsim.costs.memory import activation_bytes_per_layer, inflight_microbatches, model_state_bytes
from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.plan import Plan
from parsim.predict import BREAKDOWN_KEYS, MEMORY_KEYS, predict

GPT = load_model("megatron-18.4b")   # GELU, ffn = 4h, MHA: the shapes of Korthikanti's formulas
s, b, h, a = 2048, 1, 6144, 48


def act(t=1, sp=False, rc=0, flash=False):
    return float(activation_bytes_per_layer(GPT, b, s, t, sp, rc, flash, 0))


def test_activation_bytes_korthikanti():
    # Korthikanti et al. 2022: sbh(34 + 5as/h) with no parallelism ...
    assert act() == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    # ... sbh(10 + 24/t + 5as/(ht)) with tensor parallel t (eq. 2) ...
    assert act(t=8) == pytest.approx(s * b * h * (10 + 24 / 8 + 5 * a * s / (h * 8)))
    # ... sbh(34/t + 5as/(ht)) with sequence parallel too (eq. 4) ...
    assert act(t=8, sp=True) == pytest.approx(s * b * h * (34 / 8 + 5 * a * s / (h * 8)))
    # ... 34·sbh/t with selective recompute (eq. 5); flash attention stores no scores either.
    assert act(t=8, sp=True, rc=1) == pytest.approx(s * b * h * 34 / 8)
    assert act(t=8, sp=True, flash=True) == pytest.approx(s * b * h * 34 / 8)
    # Full recompute keeps the 2-byte layer input only.
    assert act(t=8, rc=2) == pytest.approx(2 * s * b * h)
    assert act(t=8, sp=True, rc=2) == pytest.approx(2 * s * b * h / 8)


def test_inflight_microbatches():
    # GPipe holds all m, 1F1B min(p, m), interleaved p·(1 + (p−1)/(p·v)).
    assert inflight_microbatches(0, 4, 1, 16) == 16
    assert inflight_microbatches(1, 4, 1, 16) == 4
    assert inflight_microbatches(1, 4, 1, 2) == 2
    assert inflight_microbatches(2, 4, 2, 16) == pytest.approx(4 * (1 + 3 / 8))


def test_model_state_zero():
    # DeepSpeed / ZeRO paper mixed-precision Adam: 2Ψ + 2Ψ + 12Ψ = 16Ψ bytes; ZeRO 1/2/3 shard 12Ψ,
    # then 2Ψ, then 2Ψ over dp (Rajbhandari et al. 2020, §3.1 and §5).
    psi, dp = 1e9, 8
    tot = [sum(model_state_bytes(psi, dp, z, 0, "deepspeed")) for z in range(4)]
    assert tot[0] == pytest.approx(16 * psi)
    assert tot[1] == pytest.approx(4 * psi + 12 * psi / dp)
    assert tot[2] == pytest.approx(2 * psi + 14 * psi / dp)
    assert tot[3] == pytest.approx(16 * psi / dp)


def test_model_state_megatron_default():
    # Megatron-LM keeps fp32 main grads: 2 + 4 + 12 = 18 B/param; its distributed optimizer (ZeRO-1)
    # 6 + 12/d (Megatron-LM dist_optimizer docs table); the default accounting.
    psi, dp = 1e9, 8
    assert sum(model_state_bytes(psi, dp, 0, 0)) == pytest.approx(18 * psi)
    assert sum(model_state_bytes(psi, dp, 1, 0, "megatron")) == pytest.approx(6 * psi + 12 * psi / dp)
    # FSDP2 (torchtitan): fp32 sharded params 4 + fp32 grads 4 + Adam 8 = 16, all over dp at ZeRO-3;
    # at ZeRO-2 (reshard_after_forward=False) the fp32 params stay sharded (FSDP2 always shards them) and
    # the unsharded bf16 params (2 B) stay from forward to backward: 2 + (4 + 4 + 8)/d
    assert sum(model_state_bytes(psi, dp, 3, 0, "fsdp2")) == pytest.approx(16 * psi / dp)
    assert sum(model_state_bytes(psi, dp, 2, 0, "fsdp2")) == pytest.approx(2 * psi + 16 * psi / dp)
    # ZeRO-1 (FSDP2 under PP: gradient sync on the last micro-batch only) accumulates the fp32 gradient
    # unsharded: 2 + 4 + (4 + 8)/d = 6 + 12/d, the same bytes as Megatron's distributed optimizer
    assert sum(model_state_bytes(psi, dp, 1, 0, "fsdp2")) == pytest.approx(6 * psi + 12 * psi / dp)
    assert sum(model_state_bytes(psi, dp, 1, 0, "fsdp2")) == pytest.approx(sum(model_state_bytes(psi, dp, 1, 0)))
    # fp32 training (dtype code 2): 4 + 4 + 8 in every convention
    for acc in ("megatron", "deepspeed", "fsdp2"):
        assert sum(model_state_bytes(psi, 1, 0, 2, acc)) == pytest.approx(16 * psi)
    with pytest.raises(ParsimError, match="memory accounting 'megatorn'.*did you mean megatron"):
        model_state_bytes(psi, 1, 0, 0, "megatorn")


def base(**kw):
    d = dict(dp=8, tp=8, pp=1, micro_batch=1, global_batch=64, recompute="selective", sequence_parallel=True)
    d.update(kw)
    return Plan(**d)


def test_report_has_every_key_and_is_consistent():
    r = predict("llama2-70b", "dgx-h100", base(), gpus=64)
    assert set(r.breakdown_s) == set(BREAKDOWN_KEYS)
    assert set(r.memory_breakdown_GiB) == set(MEMORY_KEYS)
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s, rel=1e-9)
    assert sum(r.memory_breakdown_GiB.values()) == pytest.approx(r.memory_GiB, rel=1e-9)
    m = load_model("llama2-70b")
    assert r.tokens_per_s == pytest.approx(64 * m.seq_len / r.step_time_s)
    assert r.model_tflops_per_gpu == pytest.approx(m.model_step_flops(64) / r.step_time_s / 64 / 1e12)
    assert r.hardware_tflops_per_gpu > r.model_tflops_per_gpu      # selective recompute adds FLOPs
    assert 0 < r.mfu < r.hfu < 1


def test_more_pipeline_microbatches_shrink_the_bubble_share():
    # Bubble ∝ (p−1)·T while useful work ∝ m·T: quadrupling m cuts the bubble share.
    r1 = predict("llama2-70b", "dgx-h100", base(dp=2, pp=4, global_batch=8), gpus=64)
    r4 = predict("llama2-70b", "dgx-h100", base(dp=2, pp=4, global_batch=32), gpus=64)
    assert r4.breakdown_s["bubble"] / r4.step_time_s < 0.5 * r1.breakdown_s["bubble"] / r1.step_time_s


def test_interleaving_divides_the_bubble():
    one = predict("llama2-70b", "dgx-h100", base(dp=2, pp=4, global_batch=32), gpus=64)
    two = predict("llama2-70b", "dgx-h100", base(dp=2, pp=4, global_batch=32, vpp=2, schedule="interleaved"), gpus=64)
    # (p−1)/(v·m) vs (p−1)/m: half, up to the extra send/recv per virtual stage in T.
    assert two.breakdown_s["bubble"] == pytest.approx(one.breakdown_s["bubble"] / 2, rel=0.05)


def test_zero3_cuts_memory_and_adds_communication():
    z0 = predict("llama2-13b", "dgx-h100", base(tp=1, dp=64, global_batch=64, sequence_parallel=False), gpus=64)
    z3 = predict("llama2-13b", "dgx-h100", base(tp=1, dp=64, global_batch=64, sequence_parallel=False, zero=3), gpus=64)
    assert z3.memory_breakdown_GiB["weights"] == pytest.approx(z0.memory_breakdown_GiB["weights"] / 64)
    assert z3.breakdown_s["dp_comm_exposed"] >= z0.breakdown_s["dp_comm_exposed"]


def test_not_fitting_is_reported_not_raised():
    r = predict("llama3-70b", "dgx-h100", Plan(dp=8, global_batch=8), gpus=8)
    assert not r.fits and "GiB" in r.fits_reason and "h100-sxm" in r.fits_reason


def test_full_recompute_costs_a_forward():
    none = predict("llama2-7b", "dgx-a100", base(dp=8, tp=1, sequence_parallel=False, recompute="none"), gpus=8)
    full = predict("llama2-7b", "dgx-a100", base(dp=8, tp=1, sequence_parallel=False, recompute="full"), gpus=8)
    # backward ≈ 2× forward, so recompute ≈ a third of compute (element-wise ops make it inexact)
    assert full.breakdown_s["recompute"] == pytest.approx(full.breakdown_s["compute"] / 3, rel=0.15)
    assert full.memory_breakdown_GiB["activations"] < none.memory_breakdown_GiB["activations"]


def test_cpu_ranks_beyond_cores_share_them():
    # 4 single-threaded ranks on a 2-core host: each rank's compute takes 4/2 = 2× as long as with
    # 2 ranks (same per-rank micro-batches), since the host runs only 2 at a time.
    from dataclasses import replace

    from parsim.plan import Plan
    from parsim.predict import get_cluster, plan_columns, price
    m = load_model("gpt-small")
    cl = get_cluster("cpu-local", 4)
    dev = replace(cl.device, cores=2)
    two, four = (price(m, cl, plan_columns([Plan(dp=d, micro_batch=2, global_batch=2 * d)], m), device=dev)
                 for d in (2, 4))
    assert four["breakdown"]["compute"][0] == pytest.approx(2 * two["breakdown"]["compute"][0], rel=1e-9)
    none = price(m, cl, plan_columns([Plan(dp=4, micro_batch=2, global_batch=8)], m), device=replace(dev, cores=0))
    assert none["breakdown"]["compute"][0] == pytest.approx(two["breakdown"]["compute"][0], rel=1e-9)


def test_tensor_parallel_host_overhead_replaces_the_per_layer_one():
    # A profile with measured per-layer host overheads: 100 us fwd + 200 us bwd without TP, and a
    # measured 3000 us per layer (fwd+bwd) under DTensor TP, split 1:2 like the non-TP one.
    from dataclasses import replace

    from parsim.costs.compute import layer_times
    from parsim.hardware import get_device
    m = load_model("gpt-small")
    base = get_device("a100-80gb")
    dev = replace(base, overhead_s=(("layer_bwd", 200e-6), ("layer_fwd", 100e-6), ("tp_layer", 3000e-6)))
    plain, with_o = (layer_times(m, d, 2, 128, 2, False, True, 0) for d in (base, dev))
    assert float(with_o.fwd_s - plain.fwd_s) == pytest.approx(1000e-6)
    assert float(with_o.bwd_s - plain.bwd_s) == pytest.approx(2000e-6)
    plain1, with1 = (layer_times(m, d, 2, 128, 1, False, True, 0) for d in (base, dev))
    assert float(with1.fwd_s - plain1.fwd_s) == pytest.approx(100e-6)


def test_fsdp2_root_module_stays_unsharded():
    # FSDP2's root (torchtitan: embedding, final norm, output layer) keeps its unsharded bf16 parameters from
    # forward through backward (fully_shard: the root's reshard_after_forward is False), and the output layer's
    # unsharded gradient through backward. llama3-8b, ZeRO-3, one rank kind: embedding 128256·4096 = 525,336,576
    # params, head (output + final norm) 525,340,672: 2·525,336,576 + 2·2·525,340,672 = 3,152,035,840 bytes more
    # buffers under fsdp2 than under the megatron accounting (the states differ too, the buffers only by this).
    from parsim.plan import Plan
    from parsim.predict import predict
    p = Plan(dp=8, micro_batch=1, global_batch=8, seq_len=8192, zero=3, recompute="selective-op")
    a, b = (predict("llama3-8b", "grand-teton-h100", p, accounting=acc) for acc in ("fsdp2", "megatron"))
    assert (a.memory_breakdown_GiB["buffers"] - b.memory_breakdown_GiB["buffers"]) * 2 ** 30 == pytest.approx(
        3_152_035_840, rel=1e-12)
    # not at ZeRO-1/2 (every parameter of the stage is unsharded there already)
    a, b = (predict("llama3-8b", "grand-teton-h100", p.with_(zero=1), accounting=acc) for acc in ("fsdp2", "megatron"))
    assert a.memory_breakdown_GiB["buffers"] == pytest.approx(b.memory_breakdown_GiB["buffers"], rel=1e-12)


def test_fsdp2_loss_holds_three_fp32_logits_four_under_loss_parallel():
    # torchtitan's loss is eager cross_entropy(pred.float(), labels): at its backward the saved fp32 log-probs,
    # nll_loss's dense fp32 gradient of them and log_softmax's fp32 gradient of the logits are live together
    # (parsim.costs.memory.LOSS_BACKWARD_LOGITS: fsdp2 2 on top of the saved one, megatron 1). llama3-8b, one
    # rank kind, micro-batch 2 x 8192 tokens: one fp32 logits tensor = 4·16384·128256 = 8,405,385,216 B more
    # activations under fsdp2 than under megatron (the layers' activations do not depend on the accounting).
    from parsim.plan import Plan
    from parsim.predict import predict
    p = Plan(dp=8, micro_batch=2, global_batch=16, seq_len=8192, zero=3, recompute="selective-op")
    a, b = (predict("llama3-8b", "grand-teton-h100", p, accounting=acc) for acc in ("fsdp2", "megatron"))
    assert (a.memory_breakdown_GiB["activations"] - b.memory_breakdown_GiB["activations"]) * 2 ** 30 == pytest.approx(
        8_405_385_216, rel=1e-9)
    # vocab-parallel under tp = 2: each rank holds V/2 of every logits row (4 B x 16384 x 64128 = 4,202,692,608 B),
    # and torchtitan's loss_parallel backward (torch/distributed/tensor/parallel/loss.py,
    # _nll_loss_and_log_softmax_backward: zeros_like(x), then (grad_input + exp(x)) * grad_output) holds 3 of them on
    # top of the saved log-probs (parsim.costs.memory.LOSS_PARALLEL_BACKWARD_LOGITS), megatron's fused loss 1:
    # 2 x 4,202,692,608 = 8,405,385,216 B more.
    p2 = Plan(dp=4, tp=2, micro_batch=2, global_batch=8, seq_len=8192, zero=3, recompute="full")
    a, b = (predict("llama3-8b", "grand-teton-h100", p2, accounting=acc) for acc in ("fsdp2", "megatron"))
    assert (a.memory_breakdown_GiB["activations"] - b.memory_breakdown_GiB["activations"]) * 2 ** 30 == pytest.approx(
        2 * 4_202_692_608, rel=1e-9)
    # with sequence parallelism torchtitan's output layer (ColwiseParallel(input_layouts=Shard(1))) saves its
    # all-gathered input [16384, 4096], Megatron's the shard [8192, 4096] (re-gathered in backward): 2 B x 8192 x 4096
    # = 67,108,864 B more (parsim.costs.memory.HEAD_SAVES_GATHERED_INPUT)
    a, b = (predict("llama3-8b", "grand-teton-h100", p2.with_(sequence_parallel=True), accounting=acc)
            for acc in ("fsdp2", "megatron"))
    assert (a.memory_breakdown_GiB["activations"] - b.memory_breakdown_GiB["activations"]) * 2 ** 30 == pytest.approx(
        2 * 4_202_692_608 + 67_108_864, rel=1e-9)


def test_fsdp2_float8_keeps_no_weight_copy():
    # torchtitan's Float8 is torchao's dynamic scaling: the weight is cast to float8 inside each forward, no
    # persistent FP8 copy and no amax history (parsim.costs.memory.FP8_WEIGHT_COPY["fsdp2"] = (0, 0)): the same
    # weights under fp8 as under bf16. Transformer Engine keeping the 16-bit weight (deepspeed accounting) adds
    # 2 B per FP8 GEMM parameter + 3 tensors x 1026 fp32 per GEMM (tested in test_layer_graph).
    from parsim.plan import Plan
    from parsim.predict import predict
    p = Plan(dp=8, micro_batch=1, global_batch=8, seq_len=8192, zero=3, recompute="full")
    bf, f8 = (predict("llama3-8b", "grand-teton-h100", p.with_(dtype=d), accounting="fsdp2") for d in ("bf16", "fp8"))
    assert f8.memory_breakdown_GiB["weights"] == pytest.approx(bf.memory_breakdown_GiB["weights"], rel=1e-12)
    bf_d, f8_d = (predict("llama3-8b", "grand-teton-h100", p.with_(dtype=d), accounting="deepspeed") for d in ("bf16", "fp8"))
    assert f8_d.memory_breakdown_GiB["weights"] > bf_d.memory_breakdown_GiB["weights"] + 10   # 2 B x 6.98e9 params


def test_torchtitan_float8_tp_all_gathers_in_fp8():
    # torchtitan's Float8 TP (torchao.float8.float8_tensor_parallel: PrepareFloat8ModuleInput / Float8ColwiseParallel
    # cast the block input to float8 e4m3 before its sequence-parallel all-gather; Float8RowwiseParallel casts the
    # output gradient to e5m2 before the backward all-gather): every SP all-gather of an fp8 plan carries 1 B per
    # element, the reduce-scatters stay bf16 (parsim.layer.FP8_TP_ALLGATHER_BYTES["fsdp2"] = 1). llama3-8b, tp 8 on
    # one Grand Teton node, one micro-batch of 8192 tokens, no recompute: act = 8192 x 4096 x 2 B = 67,108,864 B;
    # per layer 2 blocks (attention, MLP) x (forward + backward) x (all-gather + reduce-scatter), 32 layers, plus
    # the vocab-parallel embedding's all-reduce of act on rank 0:
    #   fsdp2:    tp_comm = 32 * 2 * 2 * (AG(act / 2) + RS(act)) + AR(act)
    #   megatron: tp_comm = 32 * 2 * 2 * (AG(act) + RS(act)) + AR(act)   (Transformer Engine: 16-bit, unchanged)
    from parsim.costs.network import collective_time_s
    from parsim.plan import Plan
    from parsim.predict import get_cluster, predict
    p = Plan(dp=1, tp=8, micro_batch=1, global_batch=1, seq_len=8192, dtype="fp8", sequence_parallel=True,
             recompute="none", zero=0)
    cl = get_cluster("grand-teton-h100", 8)
    act, ranks = 8192 * 4096 * 2.0, tuple(range(8))
    ag, rs, ar = (lambda n, op=op: collective_time_s(cl, op, "native", ranks, n)
                  for op in ("all_gather", "reduce_scatter", "allreduce"))
    for acc, ag_bytes in (("fsdp2", act / 2), ("megatron", act)):
        r = predict("llama3-8b", cl, p, accounting=acc)
        assert r.breakdown_s["tp_comm"] == pytest.approx(32 * 2 * 2 * (ag(ag_bytes) + rs(act)) + ar(act), rel=1e-9), acc
    # bf16 plans gather bf16 under every framework
    b16 = [predict("llama3-8b", cl, p.with_(dtype="bf16"), accounting=acc).breakdown_s["tp_comm"]
           for acc in ("fsdp2", "megatron")]
    assert b16[0] == pytest.approx(b16[1], rel=1e-12)
    assert b16[0] == pytest.approx(32 * 2 * 2 * (ag(act) + rs(act)) + ar(act), rel=1e-9)


def test_torchtitan_float8_tp_regathers_in_fp8_under_op_level_sac():
    # Op-level SAC recomputes every second matmul and re-runs the sequence-parallel all-gathers feeding them
    # (parsim.layer.regathers: 2 per llama layer); under torchtitan's Float8 TP those carry float8 too, so the
    # recompute differs from the 16-bit framework's by 32 layers x 2 x (AG(act) - AG(act / 2)), act = 8192 x 4096 x 2 B.
    import numpy as np
    from parsim import layer as Ly
    from parsim.costs.network import collective_time_s
    from parsim.model import load_model
    from parsim.plan import Plan
    from parsim.predict import get_cluster, predict
    p = Plan(dp=1, tp=8, micro_batch=1, global_batch=1, seq_len=8192, dtype="fp8", sequence_parallel=True,
             recompute="selective-op", zero=0)
    cl = get_cluster("grand-teton-h100", 8)
    act = 8192 * 4096 * 2.0
    ag = lambda n: collective_time_s(cl, "all_gather", "native", tuple(range(8)), n)
    regathers = float(np.asarray(Ly.regathers(Ly.layer_ops(load_model("llama3-8b"), 1.0, 8192.0, 8.0, True, True, 3),
                                              "selective-op")))
    assert regathers == 2.0
    f8, te = (predict("llama3-8b", cl, p, accounting=acc).breakdown_s["recompute"] for acc in ("fsdp2", "megatron"))
    assert te - f8 == pytest.approx(32 * regathers * (ag(act) - ag(act / 2)), rel=1e-9)
