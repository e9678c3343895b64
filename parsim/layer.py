"""A transformer layer as data: the one description of what a layer does.

``layer_ops`` lowers one layer (per micro-batch, on one tensor-parallel rank) to a list of
``Op`` records — GEMMs with their shapes (m, k, n, batch), the attention core (flash or
materialised scores), norms, rotary, softmax, residual adds, dropout, the activation, the MoE
router, token dispatch/combine and the expert GEMMs — each carrying its FLOPs, the bytes it
moves, the activation bytes it saves for backward and the collectives it induces. ``head_ops``
and ``embedding_ops`` do the same for the loss head and the token embedding.

Everything else is derived from these lists, vectorised over a table of plans (every shape is a
numpy array with one entry per plan row):
  * compute time: ``parsim.costs.compute.layer_times`` prices each op by a roofline;
  * FLOP counts for MFU/HFU: ``flops`` below (``ModelSpec.layer_fwd_flops`` is built on it);
  * activation memory: ``parsim.costs.memory.activation_bytes_per_layer`` sums ``saved``;
  * tensor-parallel traffic: ``comms`` (priced on the cluster graph by ``parsim.predict``).

FLOP counting convention (what MFU and HFU count; Dao 2023, FlashAttention-2 §4.1): a GEMM
[m,k]x[k,n] is 2·m·k·n; the attention core QKᵀ and AV is 4·s²·head_dim per head over the full
square when the scores are materialised (the masked half is computed, then masked; this is the
count of Narayanan et al. 2021's formula) and half of it with causal flash attention, which
skips the masked blocks. Model FLOPs (MFU) count the causal half always — the useful work,
whatever the kernel — so model FLOPs <= hardware FLOPs <= what the step's time allows at the
device's peak. Element-wise kernels count no FLOPs (they are priced by their bytes).
Backward = 2 × forward FLOPs (input and weight gradients); recompute adds what it repeats.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Element sizes for the activations of each dtype code (parsim.plan.DTYPES order: bf16, fp16, fp32, fp8);
# fp8 plans keep activations, norms, attention and the loss in bf16 (Transformer Engine's recipe).
DTYPE_BYTES = np.array([2.0, 2.0, 4.0, 2.0])
FP8 = 3


@dataclass
class Op:
    """One kernel of a layer on one TP rank for one micro-batch. Arrays broadcast over plan rows.

    kind: "gemm" ([m,k]x[k,n] × batch; weight GEMMs have wgrad=True), "core" (flash attention:
    QKᵀ and AV in one kernel), or "mem" (memory-bound: `bytes` read+written).
    flops: executed forward FLOPs; model_flops: what MFU counts (they differ for the attention core).
    bwd: a GEMM's backward time as a multiple of its forward (2: dgrad + wgrad; flash core 2.5,
    Dao 2023 §3); bwd_bytes: a memory-bound op's backward bytes (its `bwd` is unused). saved: bytes kept for backward without recompute;
    selective: the op is re-run by selective recompute (its saved scores are dropped then).
    comm: collectives it induces per direction: (group, op, bytes). weight: share of layers with it
    (MoE vs dense layers)."""
    name: str
    kind: str
    m: object = 0.0
    k: object = 0.0
    n: object = 0.0
    batch: object = 1.0
    bytes: object = 0.0
    bwd: float = 2.0
    bwd_bytes: object = 0.0
    wgrad: bool = False
    flop_scale: object = 1.0          # time at this share of the GEMM's FLOPs (causal flash: 0.5)
    saved: object = 0.0
    selective: bool = False
    comm: tuple = ()
    weight: float = 1.0
    flops: object = field(default=None)
    model_flops: object = field(default=None)
    fp8: bool = False                 # a layer weight GEMM: runs in FP8 on fp8 plans
    def __post_init__(self):
        if self.flops is None:
            self.flops = 2.0 * self.m * self.k * self.n * self.batch if self.kind in ("gemm", "core") else 0.0
            if self.kind == "core":
                self.flops = self.flops * self.flop_scale
        if self.model_flops is None:
            self.model_flops = self.flops


def _arr(x, dtype=float):
    return np.asarray(x, dtype=dtype)


def layer_ops(model, b, s, t, sp, flash, dtype_code, ep=1, cp=1) -> list[Op]:
    """The ops of one layer (the mean layer: dense and MoE ops carry their share of layers as weight).

    b micro-batch (sequences), s sequence length, t tensor parallel, sp sequence parallel, flash
    attention (bool), dtype_code (index into DTYPE_BYTES), ep expert parallel, cp context parallel
    (each rank holds s/cp tokens of every sequence; ring attention: its queries meet all s keys,
    causal work balanced over the ranks, and K/V blocks of s/cp tokens pass cp-1 times round the
    ring, overlapped with the core; Liu et al. 2023, "Ring Attention"); arrays allowed.
    Shapes follow Megatron's sharding (Shoeybi et al. 2019): QKV and fc1 column-parallel, output
    projection and fc2 row-parallel; with sp the norms, residuals and dropout see s/t tokens
    (Korthikanti et al. 2022 §4.2.2). Saved activations per Korthikanti et al. 2022 §4,
    generalised to GQA, head_dim and gated MLPs."""
    b, s, t, ep, cp = _arr(b), _arr(s), _arr(t), _arr(ep), _arr(cp)
    sp, flash = _arr(sp, bool), _arr(flash, bool)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    # What an FP8 GEMM keeps of its activation input for the weight gradient: the FP8 cast (1 byte; Transformer
    # Engine's Linear saves its quantized input, transformer_engine/pytorch/module/linear.py).
    ein = np.where(np.asarray(dtype_code) == FP8, 1.0, e)
    h, qd, kvd, a, d = model.hidden, model.q_dim, model.kv_dim, model.heads, model.head_dim
    T = b * s / cp                             # tokens of the micro-batch on this rank
    Tr = np.where(sp, T / t, T)                # tokens a replicated (norm, residual) op sees per rank
    g = 2.0 if model.gated else 1.0
    gpt_dropout = not model.gated              # GPT-style models train with dropout (masks: 1 byte)
    act = T * h * e                            # one full activation [b, s, h]
    ops = [
        Op("attn_norm", "mem", bytes=2 * e * Tr * h, bwd_bytes=4 * e * Tr * h, saved=e * Tr * h),
        Op("qkv", "gemm", fp8=True, m=T, k=h, n=(qd + 2 * kvd) / t, wgrad=True, saved=ein * Tr * h),
    ]
    if model.position == "rotary":
        ops.append(Op("rotary", "mem", bytes=2 * e * T * (qd + kvd) / t, bwd_bytes=4 * e * T * (qd + kvd) / t))
    if model.qk_norm:
        ops.append(Op("qk_norm", "mem", bytes=2 * e * T * (qd + kvd) / t, bwd_bytes=4 * e * T * (qd + kvd) / t,
                      saved=e * T * (qd + kvd) / t))
    hpr = b * a / t                            # attention heads on this rank (× micro-batch)
    sq = s / cp                                # queries on this rank
    scores = hpr * sq * s
    qkv_saved = e * T * (qd + 2 * kvd) / t     # Q, K, V
    # flash: one kernel, timed at the causal half of its FLOPs; backward 2.5× (5 vs 2 matmuls). It reads Q, K, V
    # and writes O (the scores stay on chip: its bytes are those four), and keeps Q, K, V, O and the softmax
    # statistics for its backward (Dao 2023 §3.1.2: O and logsumexp; the statistics, b·heads·s fp32, are negligible).
    kv_block = e * b * sq * 2 * kvd / t        # one K/V block passed round the cp ring (per step)
    o_bytes = e * T * qd / t                   # the core's output O (the output projection's input)
    ops.append(Op("attn_core_flash", "core", m=sq, k=d, n=s, batch=2 * hpr, flop_scale=0.5, bwd=2.5,
                  bytes=qkv_saved + o_bytes, saved=qkv_saved + o_bytes, selective=True,
                  weight=np.where(flash, 1.0, 0.0), comm=(("cp", "ring_kv", kv_block),)))
    # materialised scores: QKᵀ, softmax (+ dropout for GPT-style), AV; all of the square is computed.
    naive = np.where(flash, 0.0, 1.0)
    ops += [
        Op("attn_scores", "gemm", m=sq, k=d, n=s, batch=hpr, saved=qkv_saved, selective=True, weight=naive,
           model_flops=0.5 * 2.0 * sq * d * s * hpr),
        Op("attn_softmax", "mem", bytes=(4 * e + 1) * scores, bwd_bytes=(3 * e + 1) * scores, bwd=0.0,
           saved=(2 * e + 1) * scores, selective=True, weight=naive),  # softmax out, dropout mask and out
        Op("attn_context", "gemm", m=sq, k=s, n=d, batch=hpr, selective=True, weight=naive,
           model_flops=0.5 * 2.0 * sq * s * d * hpr),
    ]
    tp_out = _tp_out(act)
    ops += [
        # its input O: kept by the flash core already (16-bit); FP8 plans keep its FP8 cast as well
        Op("attn_out", "gemm", fp8=True, m=T, k=qd / t, n=h, wgrad=True, comm=tp_out,
           saved=np.where(flash, 0.0, o_bytes) + np.where(ein < e, ein * T * qd / t, 0.0)),
        Op("attn_residual", "mem", bytes=3 * e * Tr * h, bwd_bytes=6 * e * Tr * h,
           saved=Tr * h if gpt_dropout else 0.0),                          # dropout mask
        Op("mlp_norm", "mem", bytes=2 * e * Tr * h, bwd_bytes=4 * e * Tr * h, saved=e * Tr * h),
    ]
    if gpt_dropout:
        ops[-2].bytes = ops[-2].bytes + Tr * h       # write the 1-byte mask
        ops[-2].bwd_bytes = ops[-2].bwd_bytes + 2 * Tr * h
    ops += _mlp_ops(model, T, Tr, t, e, g, act, ep, ein)
    ops.append(Op("mlp_residual", "mem", bytes=3 * e * Tr * h + (Tr * h if gpt_dropout else 0.0),
                  bwd_bytes=6 * e * Tr * h + (2 * Tr * h if gpt_dropout else 0.0),
                  saved=Tr * h if gpt_dropout else 0.0))
    # FP8 plans: every FP8 GEMM's activation input is cast (read bf16, write fp8, amax) in forward and its
    # output gradient in backward (Transformer Engine's per-tensor delayed scaling; weights are cast once a step).
    fp8_w = np.where(np.asarray(dtype_code) == FP8, 1.0, 0.0)
    if np.any(fp8_w):
        cin = sum(np.asarray(op.weight) * np.asarray(op.m) * np.asarray(op.k) * np.asarray(op.batch) for op in ops if op.fp8)
        cout = sum(np.asarray(op.weight) * np.asarray(op.m) * np.asarray(op.n) * np.asarray(op.batch) for op in ops if op.fp8)
        ops.append(Op("fp8_cast", "mem", bytes=3.0 * cin, bwd_bytes=3.0 * cout, weight=fp8_w))
    return ops


TP_BLOCK = "tp_block"


def _tp_out(act):
    """A row-parallel output's collective: an all-reduce of the activation, or with sequence
    parallelism a reduce-scatter plus the all-gather before the next column-parallel GEMM (same
    total bytes; Korthikanti et al. 2022 §4.2.2). Priced as TP_BLOCK by parsim.predict. Backward
    repeats it (Shoeybi et al. 2019, Fig. 4: f and g conjugate)."""
    return (("tp", TP_BLOCK, act),)


def _mlp_ops(model, T, Tr, t, e, g, act, ep, ein=None) -> list[Op]:
    ein = e if ein is None else ein            # the saved input of an FP8 GEMM: 1 byte on FP8 plans
    h = model.hidden
    dense_w = model.dense_layers / model.layers
    moe_w = model.moe_layers / model.layers
    ops = []
    if dense_w:
        f = model.ffn_hidden
        ops += [
            Op("fc1", "gemm", fp8=True, m=T, k=h, n=g * f / t, wgrad=True, saved=ein * Tr * h, weight=dense_w),
            Op("activation", "mem", bytes=e * T * (g + 1) * f / t, bwd_bytes=2 * e * T * (g + 1) * f / t,
               saved=e * T * g * f / t, weight=dense_w),
            Op("fc2", "gemm", fp8=True, m=T, k=f / t, n=h, wgrad=True, saved=ein * T * f / t, comm=_tp_out(act),
               weight=dense_w),
        ]
    if moe_w:
        E, k, ef = model.experts, model.top_k, model.expert_ffn_hidden
        c = model.capacity_factor or 1.0
        rows = c * T * k                         # expert rows per rank: balanced routing, padded to capacity
        per_expert = rows * ep / E               # tokens one expert receives from its EP group
        local = E / ep                           # experts held by this rank
        moved = e * T * k * h                    # the top-k copies of the tokens
        a2a = moved * (ep - 1) / ep
        ops += [
            Op("router", "gemm", m=T, k=h, n=E, wgrad=True, saved=e * Tr * h + 4.0 * T * E, weight=moe_w,
               model_flops=2.0 * T * h * E),
            Op("dispatch", "mem", bytes=2 * moved, bwd_bytes=2 * moved, weight=moe_w,
               comm=(("ep", "all_to_all", a2a),)),
            Op("expert_fc1", "gemm", fp8=True, m=per_expert, k=h, n=g * ef / t, batch=local, wgrad=True,
               saved=ein * rows * h, weight=moe_w, model_flops=2.0 * T * k * h * g * ef / t),
            Op("expert_activation", "mem", bytes=e * rows * (g + 1) * ef / t, bwd_bytes=2 * e * rows * (g + 1) * ef / t,
               saved=e * rows * g * ef / t, weight=moe_w),
            Op("expert_fc2", "gemm", fp8=True, m=per_expert, k=ef / t, n=h, batch=local, wgrad=True, saved=ein * rows * ef / t,
               weight=moe_w, model_flops=2.0 * T * k * ef / t * h),
            Op("combine", "mem", bytes=2 * moved, bwd_bytes=2 * moved, weight=moe_w, saved=e * T * k * h,
               comm=(("ep", "all_to_all", a2a), ) + _tp_out(act)),
        ]
        if model.shared_experts:
            sf = model.shared_experts * ef
            ops += [
                Op("shared_fc1", "gemm", fp8=True, m=T, k=h, n=g * sf / t, wgrad=True, saved=0.0, weight=moe_w),
                Op("shared_activation", "mem", bytes=e * T * (g + 1) * sf / t, bwd_bytes=2 * e * T * (g + 1) * sf / t,
                   saved=e * T * g * sf / t, weight=moe_w),
                Op("shared_fc2", "gemm", fp8=True, m=T, k=sf / t, n=h, wgrad=True, saved=ein * T * sf / t, weight=moe_w),
            ]
    return ops


def embedding_ops(model, b, s, t, dtype_code, cp=1) -> list[Op]:
    """Token embedding (vocab-parallel under tp: an all-reduce of its output, forward only)."""
    T, t = _arr(b) * _arr(s) / _arr(cp), _arr(t)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    h = model.hidden
    return [Op("embedding", "mem", bytes=2 * e * T * h, bwd_bytes=3 * e * T * h,
               comm=(("tp", "allreduce_fwd", T * h * e),))]


def head_ops(model, b, s, t, dtype_code, cp=1) -> list[Op]:
    """Final norm, logits GEMM [T,h]x[h,V/t] and fp32 cross-entropy (read logits, exp-sum, write probs).
    Saved: the fp32 logits and their gradient (4 bytes each per vocabulary entry)."""
    T, t = _arr(b) * _arr(s) / _arr(cp), _arr(t)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    h, V = model.hidden, model.vocab
    return [
        Op("final_norm", "mem", bytes=4 * e * T * h, bwd_bytes=0.0),
        Op("logits", "gemm", m=T, k=h, n=V / t, wgrad=True),
        Op("cross_entropy", "mem", bytes=4.0 * T * V / t * 3, bwd_bytes=4.0 * T * V / t * 2, saved=4.0 * T * V / t * 2),
    ]


def flops(ops, which: str = "hardware"):
    """Forward FLOPs of a list of ops (weighted): executed ("hardware") or counted for MFU ("model")."""
    attr = "flops" if which == "hardware" else "model_flops"
    return sum(np.asarray(op.weight) * np.asarray(getattr(op, attr)) for op in ops)


def saved_bytes(ops, selective: bool = False):
    """Activation bytes kept for backward (weighted); selective recompute drops the core's scores."""
    return sum(np.asarray(op.weight) * np.where(selective and op.kind == "mem" and op.selective, 0.0, np.asarray(op.saved))
               for op in ops)


def comms(ops) -> list[tuple]:
    """(group, op, bytes) of every collective the ops induce per direction, weighted by the op's share of layers."""
    return [(grp, kind, np.asarray(op.weight) * nbytes) for op in ops for grp, kind, nbytes in op.comm]
