"""Compute time of one transformer layer (and the embedding / loss head) on one device.

Every function here works on numpy arrays of plans as well as on scalars: the plan
search evaluates whole tables of candidates at once.

A layer lowers to a small compute graph (per micro-batch, per tensor-parallel rank):
GEMMs with their shapes, the attention core, and memory-bound element-wise kernels.
Each is priced by a roofline against the device profile, with the profile's
efficiency curves (data) applied to the kernel's size:
    t = max(FLOPs / (peak · eff_matmul(GFLOP)), bytes / (bandwidth · eff_mem(MB))).
Backward GEMMs (input- and weight-gradient) cost twice the forward; flash-attention
backward costs 2.5× its forward (Dao 2023, FlashAttention-2 §3: 5 vs 2 matmuls).
Causal flash attention skips the masked half of the score blocks, so its time uses
half the counted FLOPs; the FLOP *counts* (MFU/HFU) keep Megatron's full convention.
Devices whose profile carries measured host overheads (the calibrated CPU: eager PyTorch
dispatches synchronously) add them per layer, per loss head and per optimizer step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = ("bf16", "fp16", "fp32")
DTYPE_BYTES = np.array([2.0, 2.0, 4.0])


def peak_flops(dev, dtype_code):
    """Peak matrix FLOP/s per plan, from the dtype code (index into DTYPES)."""
    table = np.array([dev.peak_flops.get(d, 0.0) for d in DTYPES])
    return table[np.asarray(dtype_code)]


def gemm_s(dev, peak, e, M, K, N, batch=1.0, flop_scale=1.0):
    """Roofline time of a (batched) GEMM [M,K]x[K,N] with element size e bytes."""
    flops = 2.0 * M * K * N * batch
    bytes_ = e * (M * K + K * N + M * N) * batch
    t_c = flop_scale * flops / (peak * dev.matmul_eff(flops / 1e9))
    return np.maximum(t_c, dev.memory_time_s(bytes_))


def mlp_fwd_s(model, dev, peak, e, T, t):
    """Forward MLP GEMM seconds of one layer, mean over dense and MoE layers, for T tokens on a TP rank.

    Dense: [T,h]x[h,g·f/t] and [T,f/t]x[f/t,h] (g = 2 gated). MoE (balanced routing): the router
    [T,h]x[h,E]; each of E experts takes c·T·k/E tokens (c the capacity factor, 1 dropless) through
    its own GEMMs; shared experts see all T tokens."""
    h, g = model.hidden, (2.0 if model.gated else 1.0)
    def mlp(M, f, batch=1.0):
        return gemm_s(dev, peak, e, M, h, g * f / t, batch) + gemm_s(dev, peak, e, M, f / t, h, batch)
    dense = mlp(T, model.ffn_hidden) if model.dense_layers else 0.0
    if not model.moe_layers:
        return dense
    E, k, ef = model.experts, model.top_k, model.expert_ffn_hidden
    c = model.capacity_factor or 1.0
    moe = gemm_s(dev, peak, e, T, h, E) + mlp(c * T * k / E, ef, batch=E)
    if model.shared_experts:
        moe = moe + mlp(T, model.shared_experts * ef)
    return (model.dense_layers * dense + model.moe_layers * moe) / model.layers


@dataclass(frozen=True)
class LayerTimes:
    """Seconds per micro-batch on one tensor-parallel rank."""
    fwd_s: np.ndarray            # one layer forward
    bwd_s: np.ndarray            # one layer backward (input + weight gradients)
    wgrad_s: np.ndarray          # the weight-gradient part of bwd_s (zero-bubble schedules split it)
    attn_core_fwd_s: np.ndarray  # what selective recompute repeats
    embed_fwd_s: np.ndarray      # token embedding (first stage)
    embed_bwd_s: np.ndarray
    head_fwd_s: np.ndarray       # final norm, logits GEMM and cross-entropy (last stage)
    head_bwd_s: np.ndarray


def layer_times(model, dev, b, s, t, sp, flash, dtype_code) -> LayerTimes:
    """Price one layer for micro-batch b, sequence s, tensor parallel t (arrays allowed)."""
    b, s, t = (np.asarray(x, dtype=float) for x in (b, s, t))
    sp, flash = np.asarray(sp, dtype=bool), np.asarray(flash, dtype=bool)
    peak, e = peak_flops(dev, dtype_code), DTYPE_BYTES[np.asarray(dtype_code)]
    h, kvd, qd, a, d = model.hidden, model.kv_dim, model.q_dim, model.heads, model.head_dim
    T = b * s
    g = 2.0 if model.gated else 1.0

    gemm_fwd = (gemm_s(dev, peak, e, T, h, (qd + 2 * kvd) / t)     # QKV
                + gemm_s(dev, peak, e, T, qd / t, h)                # output projection
                + mlp_fwd_s(model, dev, peak, e, T, t))             # fc1 (gate+up when gated), fc2; MoE: mean
    heads_per_rank = b * a / t
    # Attention core: QK^T [s,d]x[d,s] and AV [s,s]x[s,d] per head.
    core_flash = gemm_s(dev, peak, e, s, d, s, batch=2 * heads_per_rank, flop_scale=0.5)
    scores_bytes = heads_per_rank * s * s
    core_naive = (gemm_s(dev, peak, e, s, d, s, batch=heads_per_rank) + gemm_s(dev, peak, e, s, s, d, batch=heads_per_rank)
                  + dev.memory_time_s((4 * e + 1) * scores_bytes))  # fused softmax r/w, dropout r/w + mask
    core_fwd = np.where(flash, core_flash, core_naive)
    core_bwd = np.where(flash, 2.5 * core_flash,
                        2 * (core_naive - dev.memory_time_s((4 * e + 1) * scores_bytes))
                        + dev.memory_time_s((3 * e + 1) * scores_bytes))
    # Element-wise kernels: two norms, two residual adds (+dropout for GPT-style), the activation.
    hr = np.where(sp, h / t, h)
    drop = 0.0 if model.gated else 1.0
    f = model.mlp_active_width
    ew_fwd_bytes = T * (e * hr * (2 + 2 + 3 + 3) + drop * 2 * hr + e * (f / t) * (g + 1))
    ew_fwd = dev.memory_time_s(ew_fwd_bytes)
    ew_bwd = dev.memory_time_s(2 * ew_fwd_bytes)

    # Host overheads per layer; under tensor parallelism (DTensor) the measured per-layer total
    # `tp_layer`, split between forward and backward as without it.
    o_f, o_b = dev.overhead("layer_fwd"), dev.overhead("layer_bwd")
    o_tp = dev.overhead("tp_layer")
    if o_tp and (o_f + o_b) > 0:
        o_f, o_b = np.where(t > 1, o_tp * o_f / (o_f + o_b), o_f), np.where(t > 1, o_tp * o_b / (o_f + o_b), o_b)
    fwd = gemm_fwd + core_fwd + ew_fwd + o_f
    wgrad = gemm_fwd
    bwd = 2 * gemm_fwd + core_bwd + ew_bwd + o_b

    embed_fwd = dev.memory_time_s(2 * e * T * h)
    embed_bwd = dev.memory_time_s(3 * e * T * h)
    V = model.vocab
    logits = gemm_s(dev, peak, e, T, h, V / t)
    xent = dev.memory_time_s(4.0 * T * V / t * 3)   # fp32 softmax: read logits, exp-sum, write probs
    head_fwd = logits + xent + dev.memory_time_s(4 * e * T * h) + dev.overhead("head_fwd")
    head_bwd = 2 * logits + dev.memory_time_s(4.0 * T * V / t * 2) + dev.overhead("head_bwd")
    return LayerTimes(fwd, bwd, wgrad, core_fwd, embed_fwd, embed_bwd, head_fwd, head_bwd)


def optimizer_s(dev, params_per_rank, dtype_code, layers_per_rank=0.0):
    """Adam step, memory-bound: reads fp32 master, m, v and the gradient, writes master, m, v
    and the 16-bit copy: 4+4+4+e + 4+4+4+e bytes per parameter (e = 0 extra copy in fp32),
    plus the device's measured host overhead (a base and a per-layer part: per-tensor loops)."""
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    per_param = np.where(e == 4.0, 28.0, 24.0 + 2 * e)
    return (dev.memory_time_s(per_param * np.asarray(params_per_rank, dtype=float))
            + dev.overhead("optimizer_base") + dev.overhead("optimizer_per_layer") * np.asarray(layers_per_rank))
