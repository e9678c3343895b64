"""Compute time of one transformer layer (and the embedding / loss head) on one device.

Every function here works on numpy arrays of plans as well as on scalars: the plan
search evaluates whole tables of candidates at once.

A layer is described once, as data (parsim.layer: per micro-batch, per tensor-parallel rank,
GEMMs with their shapes, the attention core, memory-bound element-wise kernels, MoE router,
dispatch/combine and expert GEMMs). Each op is priced by a roofline against the device profile, with the profile's
efficiency curves (data) applied to the kernel's size:
    t = max(FLOPs / (peak · eff_matmul(GFLOP)), bytes / (bandwidth · eff_mem(MB))).
Backward GEMMs (input- and weight-gradient) cost twice the forward; flash-attention
backward costs 2.5× its forward (Dao 2023, FlashAttention-2 §3: 5 vs 2 matmuls).
Causal flash attention skips the masked half of the score blocks, so its time uses
half the FLOPs of the full square, and counts that half (see parsim.layer for the convention).
Devices whose profile carries measured host overheads (the calibrated CPU: eager PyTorch
dispatches synchronously) add them per layer, per loss head and per optimizer step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsim import layer as Ly
from parsim.layer import DTYPE_BYTES, FP8, MXFP8, MX_BLOCK  # noqa: F401  (one table of element sizes)
from parsim.plan import DTYPES, FP8_DTYPES


def peak_flops(dev, dtype_code):
    """Peak matrix FLOP/s per plan, from the dtype code (index into DTYPES): what non-FP8 GEMMs run at,
    and what MFU/HFU are taken against. For fp8 and mxfp8 plans that is the bf16 peak (NeMo and Megatron report
    MFU of FP8 training against the bf16 peak; the FP8 peak is fp8_peak_flops)."""
    table = np.array([dev.peak_flops.get(d if d not in FP8_DTYPES else "bf16", 0.0) for d in DTYPES])
    return table[np.asarray(dtype_code)]


def fp8_peak_flops(dev, dtype_code=FP8):
    """The device's tensor-core peak for the FP8 GEMMs of dtype code `dtype_code` (fp8: peak_TFLOPs fp8; mxfp8:
    peak_TFLOPs mxfp8, the block-scaled FP8 rate, only on devices whose tensor cores run MXFP8); 0 without it.
    An array of codes gives an array (0 on non-FP8 rows)."""
    code = np.asarray(dtype_code)
    out = np.where(code == MXFP8, dev.peak_flops.get("mxfp8", 0.0), np.where(code == FP8, dev.peak_flops.get("fp8", 0.0), 0.0))
    return float(out) if out.ndim == 0 else out


def mxfp8_weight_quantize_s(dev, weight_elems):
    """Seconds to quantize `weight_elems` FP8-GEMM weight elements to MXFP8 once a step: read bf16 (2 bytes), write the
    rowwise and the columnwise copy with their E8M0 scales (2·(1 + 1/32) bytes), memory-bound.

    Megatron-Core with MXFP8 and fp8_param_gather (Megatron-Bridge's bf16_with_mxfp8_mixed: fp8_param_gather and
    reuse_grad_buf_for_mxfp8_param_ag): the parameter all-gather lands in bf16 in the (reused) gradient buffer and "the
    parameters are cast from bf16 to MXFP8 during copy" into every local weight (megatron/core/distributed
    param_and_grad_buffer / distributed_data_parallel start_param_sync): all of the rank's FP8 weights, each step, as
    the columnwise blocks span rows and cannot be cut from a flat ZeRO shard. Per-tensor fp8 quantizes only the ZeRO
    shard in the optimizer step (not priced). weight_elems: array allowed."""
    return dev.memory_time_s((2.0 + 2.0 * (1.0 + 1.0 / MX_BLOCK)) * np.asarray(weight_elems, dtype=float))


def gemm_s(dev, peak, e, M, K, N, batch=1.0, flop_scale=1.0, eff=None, grouped=False):
    """Roofline time of a (batched) GEMM [M,K]x[K,N] with element size e bytes (eff: the efficiency
    curve, default the device's matmul curve). The efficiency is read at the GFLOP of the whole batch
    (one batched kernel), or with `grouped` at the GFLOP of one member (`batch` GEMMs issued one by one:
    MoE grouped expert GEMMs)."""
    flops = 2.0 * M * K * N * batch
    bytes_ = e * (M * K + K * N + M * N) * batch
    size_gflop = flops / np.asarray(batch, dtype=float) / 1e9 if grouped else flops / 1e9
    t_c = flop_scale * flops / (peak * (eff or dev.matmul_eff)(size_gflop))
    return np.maximum(t_c, dev.memory_time_s(bytes_))


@dataclass(frozen=True)
class LayerTimes:
    """Seconds per micro-batch on one tensor-parallel rank."""
    fwd_s: np.ndarray            # one layer forward
    bwd_s: np.ndarray            # one layer backward (input + weight gradients)
    wgrad_s: np.ndarray          # the weight-gradient part of bwd_s (zero-bubble schedules split it)
    attn_core_fwd_s: np.ndarray  # what selective recompute repeats (and context parallelism overlaps K/V with)
    embed_fwd_s: np.ndarray      # token embedding (first stage)
    embed_bwd_s: np.ndarray
    head_fwd_s: np.ndarray       # final norm, logits GEMM and cross-entropy (last stage)
    head_bwd_s: np.ndarray
    attn_core_bwd_s: np.ndarray  # the core's backward (context parallelism overlaps dK/dV with it)
    recompute_s: np.ndarray      # forward work the plan's recompute policy re-runs in backward (no collectives)


def op_times(op, dev, peak, e, fp8=None, eager=False, share=1.0, kscale=1.0, fp8_peak=None):
    """(forward, backward, weight-gradient) seconds of one parsim.layer.Op, weighted by its share of layers.

    GEMMs: roofline gemm_s; backward `bwd`× the forward, of which the forward's time again is the weight
    gradient for weight GEMMs. The flash core: at the device's published flash-attention rate by sequence length
    (profile curves attention_eff_fwd / attention_eff_bwd, fractions of the 16-bit peak for the causal-half FLOPs,
    backward `bwd`× the forward FLOPs), bounded below by its bytes (Q, K, V, O: it never writes the scores); where
    the profile has no attention figure, a GEMM roofline of the same FLOPs and bytes.
    Memory-bound ops: their bytes at the device's bandwidth curve, forward and backward.
    fp8 (bool array): rows whose layer weight GEMMs (op.fp8) run at the FP8 peak with the FP8 curve,
    operands 1 byte; fp8_peak (array, per row): that peak (fp8_peak_flops of the row's dtype: fp8 or mxfp8;
    None: the fp8 one). eager (bool array, Plan.kernels): memory-bound ops at their eager traffic
    (parsim.layer.mem_bytes). share: the part of the op timed (a recomputed share of a GEMM's n, of a
    memory-bound op's bytes, of the core's FLOPs and bytes). kscale (array): multiplier of every tensor-core
    kernel's time (FP8 plans: the profile's fp8_time_scale, its FP8 sustained fraction in place of the 16-bit one)."""
    w = np.asarray(op.weight, dtype=float)
    if op.kind == "mem":
        fb, bb = Ly.mem_bytes(op, eager)
        f, b = dev.memory_time_s(share * fb), dev.memory_time_s(share * bb)
        return w * f, w * b, 0.0
    if op.kind == "core":
        flops = share * 2.0 * op.m * op.k * op.n * op.batch * op.flop_scale
        t_mem = dev.memory_time_s(share * op.bytes)
        if dev.attention_eff_fwd is not None:
            f = np.maximum(kscale * flops / (peak * dev.attention_eff_fwd(op.m)), t_mem)
            eff_b = dev.attention_eff_bwd or dev.attention_eff_fwd
            b = np.maximum(kscale * op.bwd * flops / (peak * eff_b(op.m)), t_mem)
            return w * f, w * b, 0.0
        f = np.maximum(kscale * flops / (peak * dev.matmul_eff(flops / 1e9)), t_mem)
        return w * f, w * op.bwd * f, 0.0
    n = op.n * share
    f = gemm_s(dev, peak, e, op.m, op.k, n, op.batch, op.flop_scale, grouped=op.grouped)
    if op.fp8 and fp8 is not None and np.any(fp8):
        # the FP8 peak per row (fp8 or mxfp8 rate; 0 off the FP8 rows, where it is masked to 1 and not used)
        pk = fp8_peak if fp8_peak is not None else fp8_peak_flops(dev)
        pk = np.where(np.asarray(fp8, dtype=bool), pk, 1.0)
        f8 = gemm_s(dev, pk, 1.0, op.m, op.k, n, op.batch, op.flop_scale,
                    dev.matmul_eff_fp8 or dev.matmul_eff, grouped=op.grouped)
        f = np.where(fp8, f8, f)
    f = kscale * f
    return w * f, w * op.bwd * f, (w * f if op.wgrad else 0.0)


def ops_times(ops, dev, peak, e, fp8=None, eager=False, kscale=1.0, fp8_peak=None):
    """Summed (forward, backward, weight-gradient, attention-core forward, attention-core backward)
    seconds of a list of ops (the core: the ops selective recompute repeats)."""
    fwd = bwd = wg = sel = sel_b = 0.0
    for op in ops:
        f, b, w = op_times(op, dev, peak, e, fp8, eager, kscale=kscale, fp8_peak=fp8_peak)
        fwd, bwd, wg = fwd + f, bwd + b, wg + w
        if op.selective:
            sel, sel_b = sel + f, sel_b + b
    return fwd, bwd, wg, sel, sel_b


def recompute_fwd_s(ops, dev, peak, e, fp8, eager, recompute_code, kscale=1.0, fp8_peak=None):
    """Seconds of forward work one layer re-runs in backward under each plan row's recompute policy
    (parsim.layer.recomputed: the ops, and the share of each, that the policy repeats); kscale as op_times."""
    rc = np.asarray(recompute_code)
    out = 0.0
    for code, policy in enumerate(Ly.POLICIES):
        if not np.any(rc == code) or policy == "none":
            continue
        t_ = sum((op_times(op, dev, peak, e, fp8, eager, share, kscale, fp8_peak)[0]
                  for op, share in Ly.recomputed(ops, policy)), 0.0)
        out = out + np.where(rc == code, t_, 0.0)
    return out


def layer_times(model, dev, b, s, t, sp, flash, dtype_code, ep=1, cp=1, recompute_code=0, eager=False,
                cross_entropy: str = "native") -> LayerTimes:
    """Price one layer for micro-batch b, sequence s, tensor parallel t (arrays allowed), from its
    description as data (parsim.layer): every op of the layer, the embedding and the loss head.
    recompute_code: index into parsim.plan.RECOMPUTE (what ``recompute_s`` re-runs); eager: Plan.kernels
    == "eager" (memory-bound ops at their eager traffic); cross_entropy: the loss kernel
    (parsim.costs.memory.CROSS_ENTROPY_IMPLS, parsim.layer.head_ops)."""
    b, s, t = (np.asarray(x, dtype=float) for x in (b, s, t))
    peak, e = peak_flops(dev, dtype_code), DTYPE_BYTES[np.asarray(dtype_code)]
    fp8 = Ly.is_fp8(dtype_code)
    f8_peak = fp8_peak_flops(dev, dtype_code)
    if np.any(fp8 & (np.asarray(f8_peak) <= 0)):
        from parsim.errors import ParsimError
        from parsim.rules import fp8_device_message      # the rule book's rule; callers ask it first
        code = np.asarray(dtype_code).reshape(-1)[int(np.argmax((fp8 & (np.asarray(f8_peak) <= 0)).reshape(-1)))]
        raise ParsimError(fp8_device_message(dev, DTYPES[int(code)]))
    kscale = np.where(fp8, dev.fp8_time_scale(), 1.0)      # FP8 plans: the FP8 sustained fraction
    ops = Ly.layer_ops(model, b, s, t, sp, flash, dtype_code, ep, cp)
    fwd, bwd, wgrad, core_fwd, core_bwd = ops_times(ops, dev, peak, e, fp8, eager, kscale, f8_peak)
    rec = recompute_fwd_s(ops, dev, peak, e, fp8, eager, recompute_code, kscale, f8_peak)
    # Host overheads per layer; under tensor parallelism (DTensor) the measured per-layer total
    # `tp_layer`, split between forward and backward as without it.
    o_f, o_b = dev.overhead("layer_fwd"), dev.overhead("layer_bwd")
    o_tp = dev.overhead("tp_layer")
    if o_tp and (o_f + o_b) > 0:
        o_f, o_b = np.where(t > 1, o_tp * o_f / (o_f + o_b), o_f), np.where(t > 1, o_tp * o_b / (o_f + o_b), o_b)
    # full recompute re-runs the layer's forward with its host overhead
    rec = rec + np.where(np.asarray(recompute_code) == Ly.POLICIES.index("full"), o_f, 0.0)
    embed_fwd, embed_bwd, _, _, _ = ops_times(Ly.embedding_ops(model, b, s, t, dtype_code, cp), dev, peak, e)
    head_fwd, head_bwd, _, _, _ = ops_times(Ly.head_ops(model, b, s, t, dtype_code, cp, cross_entropy), dev, peak, e, eager=eager,
                                            kscale=kscale)
    shape = np.broadcast(b, s, t).shape
    full = lambda x: np.broadcast_to(np.asarray(x, dtype=float), shape)
    return LayerTimes(full(fwd + o_f), full(bwd + o_b), full(wgrad), full(core_fwd), full(embed_fwd),
                      full(embed_bwd), full(head_fwd + dev.overhead("head_fwd")),
                      full(head_bwd + dev.overhead("head_bwd")), full(core_bwd), full(rec))


def optimizer_s(dev, params_per_rank, dtype_code, layers_per_rank=0.0):
    """Adam step, memory-bound: reads fp32 master, m, v and the gradient, writes master, m, v
    and the 16-bit copy: 4+4+4+e + 4+4+4+e bytes per parameter (e = 0 extra copy in fp32),
    plus the device's measured host overhead (a base and a per-layer part: per-tensor loops)."""
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    per_param = np.where(e == 4.0, 28.0, 24.0 + 2 * e)
    return (dev.memory_time_s(per_param * np.asarray(params_per_rank, dtype=float))
            + dev.overhead("optimizer_base") + dev.overhead("optimizer_per_layer") * np.asarray(layers_per_rank))
