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

# Element sizes for the activations of each dtype code (parsim.plan.DTYPES order: bf16, fp16, fp32, fp8, mxfp8);
# fp8 and mxfp8 plans keep activations, norms, attention and the loss in bf16 (Transformer Engine's recipes).
DTYPE_BYTES = np.array([2.0, 2.0, 4.0, 2.0, 2.0])
FP8, MXFP8 = 3, 4
FP8_CODES = (FP8, MXFP8)     # the dtype codes whose layer weight GEMMs run on the FP8 tensor cores

# What quantizing one element for an FP8 GEMM writes, and what of it a GEMM keeps for backward, by recipe (bytes):
#   fp8    per-tensor scaling (Transformer Engine's Float8CurrentScaling / DelayedScaling): one FP8 copy, 1 byte; on
#          Blackwell "the rowwise and columnwise tensors share the same memory layout" (TE docs, FP8 Current Scaling,
#          "Transpose handling"), so the one copy serves the forward GEMM and both backward GEMMs.
#   mxfp8  MXFP8 block scaling (TE's MXFP8BlockScaling; TE docs, "MXFP8"): one E8M0 scale byte per 32 consecutive
#          elements, blocks one-dimensional. "Rowwise and columnwise MXFP8 tensors are numerically different - one
#          cannot derive one from the other. Both must be quantized independently from the full-precision data": an
#          operand read along both of its dimensions (a GEMM input X: rowwise by the forward GEMM, columnwise by the
#          weight-gradient GEMM; an output gradient dY: rowwise by dgrad, columnwise by wgrad; a weight: rowwise by
#          the forward GEMM, columnwise by dgrad) is written twice, each copy with its scales: 2·(1 + 1/32) bytes.
#          The input kept for wgrad is its columnwise copy only: 1 + 1/32 bytes.
# Both read the 16-bit source once (per-tensor current scaling's separate amax pass is not priced for fp8: parsim's
# fp8 cast has read + write only, as before MXFP8 was added; the difference priced between the two is the second copy
# and the scales).
MX_BLOCK = 32                                   # elements per E8M0 scale
QUANT_WRITE_BYTES = {FP8: 1.0, MXFP8: 2.0 * (1.0 + 1.0 / MX_BLOCK)}
QUANT_SAVED_BYTES = {FP8: 1.0, MXFP8: 1.0 + 1.0 / MX_BLOCK}


def is_fp8(dtype_code):
    """Bool array: rows whose layer weight GEMMs run in FP8 (dtype fp8 or mxfp8)."""
    return np.isin(np.asarray(dtype_code), FP8_CODES)


def _by_recipe(dtype_code, table, other):
    """Per plan row: table[code] for the FP8 codes, `other` elsewhere."""
    code = np.asarray(dtype_code)
    return np.where(code == FP8, table[FP8], np.where(code == MXFP8, table[MXFP8], other))


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
    # The separate torch ``mm`` calls a weight GEMM is made of, as shares of its n, in forward order
    # (torchtitan's Llama: wq, wk, wv for qkv; w1, w3 for a gated fc1); () = not an aten.mm (the attention
    # core, grouped expert GEMMs, memory-bound ops). Read by the op-level selective policy (recomputed).
    mm_parts: tuple = ()
    out_bytes: object = 0.0           # bytes of the op's forward output on this rank (what op-level SAC keeps)
    col_parallel: bool = False        # a column-parallel GEMM: its input is all-gathered (sp) under tp
    branch: str = ""                  # "dense" / "moe": the MLP of dense or MoE layers; "": every layer
    eager_bytes: object = None        # bytes as PyTorch eager runs the op, one kernel per elementary op
    eager_bwd_bytes: object = None    # (None: one fused kernel, the same as `bytes` / `bwd_bytes`)
    rs_out_bytes: object = 0.0        # its TP reduce-scatter's output (sequence parallel), kept by op-level SAC
    # A grouped GEMM (MoE experts): `batch` independent GEMMs, one per local expert, each at the matmul
    # efficiency of its own size (Transformer Engine's GroupedLinear issues one cuBLAS GEMM per expert,
    # transformer_engine/pytorch/module/grouped_linear.py -> general_grouped_gemm); False: one batched kernel
    # whose efficiency is that of its total FLOPs (the attention bmm).
    grouped: bool = False
    def __post_init__(self):
        if self.flops is None:
            self.flops = 2.0 * self.m * self.k * self.n * self.batch if self.kind in ("gemm", "core") else 0.0
            if self.kind == "core":
                self.flops = self.flops * self.flop_scale
        if self.model_flops is None:
            self.model_flops = self.flops


def _arr(x, dtype=float):
    return np.asarray(x, dtype=dtype)


def window_share(window, s):
    """Share of the causal half of the s×s score square a sliding window of `window` keys per query leaves
    (1 without a window or when window >= s): (w·s - w²/2) / (s²/2) = 2w/s - (w/s)², continuous count.
    E.g. Mistral 7B's 4,096-key window at s = 32,768: 2/8 - 1/64 = 0.234. Arrays allowed for s."""
    s = np.asarray(s, dtype=float)
    if window is None:
        return np.ones_like(s)
    x = np.minimum(float(window) / s, 1.0)
    return 2.0 * x - x * x


def layer_ops(model, b, s, t, sp, flash, dtype_code, ep=1, cp=1, probs_in_activation=False) -> list[Op]:
    """The ops of one layer (the mean layer: dense and MoE ops carry their share of layers as weight).

    b micro-batch (sequences), s sequence length, t tensor parallel, sp sequence parallel, flash
    attention (bool), dtype_code (index into DTYPE_BYTES), ep expert parallel, cp context parallel
    (each rank holds s/cp tokens of every sequence; ring attention: its queries meet all s keys,
    causal work balanced over the ranks, and K/V blocks of s/cp tokens pass cp-1 times round the
    ring, overlapped with the core; Liu et al. 2023, "Ring Attention"; with a sliding window the ring still
    passes all cp-1 blocks, an upper bound); arrays allowed.
    Shapes follow Megatron's sharding (Shoeybi et al. 2019): QKV and fc1 column-parallel, output
    projection and fc2 row-parallel; with sp the norms, residuals and dropout see s/t tokens
    (Korthikanti et al. 2022 §4.2.2). Saved activations per Korthikanti et al. 2022 §4,
    generalised to GQA, head_dim and gated MLPs. probs_in_activation: where an MoE layer applies the routing
    probabilities (what its combine keeps for backward; parsim.costs.memory.MOE_PROBS_IN_ACTIVATION by framework)."""
    b, s, t, ep, cp = _arr(b), _arr(s), _arr(t), _arr(ep), _arr(cp)
    sp, flash = _arr(sp, bool), _arr(flash, bool)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    # What an FP8 GEMM keeps of its activation input for the weight gradient: the FP8 cast (1 byte; Transformer
    # Engine's Linear saves its quantized input, transformer_engine/pytorch/module/linear.py); MXFP8: its columnwise
    # copy and scales, 1 + 1/32 bytes (QUANT_SAVED_BYTES).
    ein = _by_recipe(dtype_code, QUANT_SAVED_BYTES, e)
    h, qd, kvd, a, d = model.hidden, model.q_dim, model.kv_dim, model.heads, model.head_dim
    T = b * s / cp                             # tokens of the micro-batch on this rank
    Tr = np.where(sp, T / t, T)                # tokens a replicated (norm, residual) op sees per rank
    g = 2.0 if model.gated else 1.0
    gpt_dropout = model.dropout                # dropout masks (1 byte) kept for backward (ModelSpec.dropout)
    act = T * h * e                            # one full activation [b, s, h]
    rms = model.norm == "rmsnorm"
    ops = [_norm_op("attn_norm", e * Tr * h, e, rms, saved=e * Tr * h)]
    vd = model.v_dim                           # V and the core's output O: heads · v_head_dim (q_dim but with MLA)
    if model.mla:
        ops += _mla_projections(model, T, Tr, t, e, ein, rms)
        kvd_core = (qd + vd) / 2               # K and V per token, as one K/V pair of the mean width (bytes, CP)
    else:
        kvd_core = kvd
        ops.append(Op("qkv", "gemm", fp8=True, m=T, k=h, n=(qd + 2 * kvd) / t, wgrad=True, saved=ein * Tr * h,
                      mm_parts=(qd / (qd + 2 * kvd), kvd / (qd + 2 * kvd), kvd / (qd + 2 * kvd)), col_parallel=True,
                      out_bytes=e * T * (qd + 2 * kvd) / t))
    if model.position == "rotary":
        # latent attention ropes only the qk_rope_head_dim part of each query head and the one shared rotary key
        n_qk = (T * (model.heads * model.qk_rope_head_dim / t + model.qk_rope_head_dim) if model.mla
                else T * (qd + kvd) / t)
        ops.append(Op("rotary", "mem", bytes=2 * e * n_qk, bwd_bytes=4 * e * n_qk,
                      eager_bytes=(16 + 2 * e) * n_qk, eager_bwd_bytes=(16 + 2 * e) * n_qk))
    if model.qk_norm:
        ops.append(_norm_op("qk_norm", e * T * (qd + kvd) / t, e, rms, saved=e * T * (qd + kvd) / t))
    hpr = b * a / t                            # attention heads on this rank (× micro-batch)
    sq = s / cp                                # queries on this rank
    scores = hpr * sq * s
    qkv_saved = e * T * (qd + 2 * kvd_core) / t   # Q, K, V (latent attention: K as wide as Q, V heads·v_head_dim)
    # flash: one kernel, timed at the causal half of its FLOPs; backward 2.5× (5 vs 2 matmuls). It reads Q, K, V
    # and writes O (the scores stay on chip: its bytes are those four), and keeps Q, K, V, O and the softmax
    # statistics for its backward (Dao 2023 §3.1.2: O and logsumexp; the statistics, b·heads·s fp32, are negligible).
    kv_block = e * b * sq * 2 * kvd_core / t   # one K/V block passed round the cp ring (per step)
    o_bytes = e * T * vd / t                   # the core's output O (the output projection's input)
    # op-level SAC keeps the SDPA outputs: the attention output and the fp32 log-sum-exp per query and head
    # Sliding window w < s (on window_layers of the layers, else every layer): a query meets at most w keys, so the causal pairs of a sequence are
    # w·s - w²/2 instead of s²/2 (in the continuous count this module uses): the share r = 2w/s - (w/s)² of the
    # causal half, which the flash kernel skips the rest of (FlashAttention-2's window_size; a materialised score
    # matrix is computed whole and masked, so only its model FLOPs shrink).
    r = window_share(model.sliding_window, s)
    if model.window_layers is not None:       # the other layers attend to the whole prefix: the layer-weighted span
        r = (model.window_layers * r + (model.layers - model.window_layers)) / model.layers
    # QKᵀ over head_dim and AV over v_head_dim: one GEMM pair of their mean width (the same FLOPs)
    d_core = (d + model.v_head_dim) / 2
    ops.append(Op("attn_core_flash", "core", m=sq, k=d_core, n=s, batch=2 * hpr, flop_scale=0.5 * r, bwd=2.5,
                  bytes=qkv_saved + o_bytes, saved=qkv_saved + o_bytes, selective=True,
                  weight=np.where(flash, 1.0, 0.0), comm=(("cp", "ring_kv", kv_block),),
                  out_bytes=o_bytes + 4.0 * hpr * sq))
    # materialised scores: QKᵀ, softmax (+ dropout for GPT-style), AV; all of the square is computed.
    naive = np.where(flash, 0.0, 1.0)
    ops += [
        Op("attn_scores", "gemm", m=sq, k=d, n=s, batch=hpr, saved=qkv_saved, selective=True, weight=naive,
           model_flops=0.5 * r * 2.0 * sq * d * s * hpr),
        Op("attn_softmax", "mem", bytes=(4 * e + 1) * scores, bwd_bytes=(3 * e + 1) * scores, bwd=0.0,
           saved=(2 * e + 1) * scores, selective=True, weight=naive),  # softmax out, dropout mask and out
        Op("attn_context", "gemm", m=sq, k=s, n=model.v_head_dim, batch=hpr, selective=True, weight=naive,
           model_flops=0.5 * r * 2.0 * sq * s * model.v_head_dim * hpr),
    ]
    tp_out = _tp_out(act)
    ops += [
        # its input O: kept by the flash core already (16-bit); FP8 plans keep its FP8 cast as well.
        # Row-parallel: its output is the full [T, h] partial sum on each rank (out_bytes)
        Op("attn_out", "gemm", fp8=True, m=T, k=vd / t, n=h, wgrad=True, comm=tp_out,
           saved=np.where(flash, 0.0, o_bytes) + np.where(ein < e, ein * T * vd / t, 0.0),
           mm_parts=(1.0,), out_bytes=e * T * h),
        Op("attn_residual", "mem", bytes=3 * e * Tr * h, bwd_bytes=6 * e * Tr * h,
           saved=Tr * h if gpt_dropout else 0.0),                          # dropout mask
        _norm_op("mlp_norm", e * Tr * h, e, rms, saved=e * Tr * h),
    ]
    if gpt_dropout:
        ops[-2].bytes = ops[-2].bytes + Tr * h       # write the 1-byte mask
        ops[-2].bwd_bytes = ops[-2].bwd_bytes + 2 * Tr * h
    ops += _mlp_ops(model, T, Tr, t, e, g, act, ep, ein, probs_in_activation)
    ops.append(Op("mlp_residual", "mem", bytes=3 * e * Tr * h + (Tr * h if gpt_dropout else 0.0),
                  bwd_bytes=6 * e * Tr * h + (2 * Tr * h if gpt_dropout else 0.0),
                  saved=Tr * h if gpt_dropout else 0.0))
    # A row-parallel output reduce-scattered under sequence parallelism: its [T/t, h] result is what
    # op-level SAC keeps of the collective (torchtitan saves reduce_scatter_tensor outputs).
    for op in ops:
        if any(k == TP_BLOCK for _, k, _ in op.comm):
            op.rs_out_bytes = np.where(sp & (t > 1), e * Tr * h, 0.0)
    # FP8 plans: every FP8 GEMM's activation input is quantized (read bf16, write what QUANT_WRITE_BYTES says: fp8 one
    # 1-byte copy, 3 bytes an element in all; mxfp8 a rowwise and a columnwise copy with their scales, 2 + 2.0625) in
    # forward and its output gradient in backward (weights are quantized once a step: parsim.costs.compute).
    fp8_w = np.where(is_fp8(dtype_code), 1.0, 0.0)
    if np.any(fp8_w):
        cin = sum(np.asarray(op.weight) * np.asarray(op.m) * np.asarray(op.k) * np.asarray(op.batch) for op in ops if op.fp8)
        cout = sum(np.asarray(op.weight) * np.asarray(op.m) * np.asarray(op.n) * np.asarray(op.batch) for op in ops if op.fp8)
        per_elem = e + _by_recipe(dtype_code, QUANT_WRITE_BYTES, 0.0)
        ops.append(Op("fp8_cast", "mem", bytes=per_elem * cin, bwd_bytes=per_elem * cout, weight=fp8_w))
    return ops


def _mla_projections(model, T, Tr, t, e, ein, rms) -> list[Op]:
    """Latent attention's projections on one TP rank (Megatron-Core MLASelfAttention; DeepSeek-V2 §2.1): the down
    projections to the q and kv latents are replicated over the TP ranks ("duplicated") and run on the rank's tokens
    (Tr: T/t with sequence parallelism), the latents are normed, and the column-parallel up projections give each
    rank its heads' Q (nope + rope dims) and K-nope, V. The sequence-parallel all-gather then carries the latents
    (q_lora + kv_lora + rope wide) rather than the hidden state; parsim prices its block collective at the hidden
    width as for every layer (parsim.predict), an upper bound for latent attention with sp."""
    h, hq, d, dr, dv = model.hidden, model.heads, model.head_dim, model.qk_rope_head_dim, model.v_head_dim
    ql, kl = model.q_lora_rank, model.kv_lora_rank
    ops = []
    if ql:
        ops += [Op("q_down", "gemm", fp8=True, m=Tr, k=h, n=ql, wgrad=True, saved=ein * Tr * h, mm_parts=(1.0,),
                   out_bytes=e * Tr * ql),
                _norm_op("q_norm", e * T * ql, e, rms, saved=e * T * ql),
                Op("q_up", "gemm", fp8=True, m=T, k=ql, n=hq * d / t, wgrad=True, saved=ein * T * ql,
                   col_parallel=True, mm_parts=(1.0,), out_bytes=e * T * hq * d / t)]
    else:
        ops.append(Op("q_proj", "gemm", fp8=True, m=T, k=h, n=hq * d / t, wgrad=True, saved=ein * Tr * h,
                      col_parallel=True, mm_parts=(1.0,), out_bytes=e * T * hq * d / t))
    # the kv down projection reads the same normed input: a 16-bit plan keeps it once, an FP8 one casts it again
    ops += [Op("kv_down", "gemm", fp8=True, m=Tr, k=h, n=kl + dr, wgrad=True,
               saved=np.where(ein < e, ein * Tr * h, 0.0), mm_parts=(1.0,), out_bytes=e * Tr * (kl + dr)),
            _norm_op("kv_norm", e * T * kl, e, rms, saved=e * T * kl),
            Op("kv_up", "gemm", fp8=True, m=T, k=kl, n=hq * (d - dr + dv) / t, wgrad=True, saved=ein * T * kl,
               col_parallel=True, mm_parts=(1.0,), out_bytes=e * T * hq * (d - dr + dv) / t)]
    return ops


TP_BLOCK = "tp_block"

# Element size (bytes) of the sequence-parallel TP all-gathers of an FP8 plan, by framework (the keys of
# parsim.costs.memory.ACCOUNTING name the framework, as FP8_WEIGHT_COPY there); None: the activation's own size.
#   fsdp2      1: torchtitan's Float8 TP (torchtitan/parallelisms/parallelize_llama.py apply_tp, end of 2024: with
#              enable_float8 the blocks use torchao.float8.float8_tensor_parallel's PrepareFloat8ModuleInput,
#              Float8ColwiseParallel and Float8RowwiseParallel). The attention and feed-forward inputs are cast to
#              float8 e4m3 *before* their Shard(1) -> Replicate() all-gather (one FP8 all-gather per block input), and
#              each row-parallel output passes cast_to_float8_e5m2_dynamic_bw after its reduce-scatter, so in backward
#              the all-gather of the output gradient carries float8 e5m2 too. The reduce-scatters (row-parallel
#              outputs forward, the input gradients backward) stay bf16.
#   megatron, deepspeed  None: Transformer Engine's sequence-parallel all-gathers priced at the 16-bit size (an FP8
#              all-gather there is not sourced here).
FP8_TP_ALLGATHER_BYTES = {"megatron": None, "deepspeed": None, "fsdp2": 1.0}


def tp_allgather_scale(dtype_code, framework: str):
    """Bytes of a sequence-parallel TP all-gather relative to the 16-bit activation it gathers, per plan row:
    FP8_TP_ALLGATHER_BYTES[framework] / DTYPE_BYTES for FP8 rows of a framework that gathers in FP8, else 1.
    `framework`: a key of FP8_TP_ALLGATHER_BYTES (the memory accounting name)."""
    code = np.asarray(dtype_code)
    b = FP8_TP_ALLGATHER_BYTES[framework]
    if b is None:
        return np.ones(np.shape(code))
    return np.where(code == FP8, b / DTYPE_BYTES[code], 1.0)    # torchtitan's Float8 TP only (no MXFP8 TP sourced)


def _tp_out(act):
    """A row-parallel output's collective: an all-reduce of the activation, or with sequence
    parallelism a reduce-scatter plus the all-gather before the next column-parallel GEMM (same
    total bytes; Korthikanti et al. 2022 §4.2.2). Priced as TP_BLOCK by parsim.predict. Backward
    repeats it (Shoeybi et al. 2019, Fig. 4: f and g conjugate)."""
    return (("tp", TP_BLOCK, act),)


# ---------------------------------------------------------------- element-wise kernels: fused or eager
#
# `bytes` / `bwd_bytes` of a memory-bound op are one fused kernel's traffic: its inputs read and its
# outputs written once (Megatron-LM / Transformer Engine's hand-fused kernels, or what torch.compile's
# inductor generates per op). PyTorch eager runs one kernel per elementary torch op, each reading and
# writing its operands in HBM. Per element of the op's tensor (e = activation bytes, fp32 = 4):
#   RMSNorm (torchtitan's models/norms.py RMSNorm, eager: x.float(); pow(2); mean(-1); rsqrt; x·r;
#            .type_as(x); ·weight):  forward  (e+4) + 8 + 4 + 8 + (4+e) + 2e          = 28 + 4e
#            autograd of the same:    backward 4e (·w, dw) + (e+4) + 16 (x·r) + 4 (mean) + 12 (pow)
#                                              + 12 (sum of the two dx) + (4+e)        = 52 + 6e
#            (fused: 2e forward, 4e backward). nn.LayerNorm is one ATen kernel each way: eager = fused.
#   rotary  (torchtitan's apply_rotary_emb: .float(), complex multiply by freqs_cis, .type_as):
#            forward and backward (e+4) + 8 + (4+e) = 16 + 2e per element of q and k (fused 2e, 4e).
#   SwiGLU  (silu(w1 x) · w3 x): silu 2e + mul 3e = 5e forward per ffn element (fused 3e); backward
#            d(silu) and d(w3) 3e each + silu backward 3e = 9e (fused 6e). GELU is one kernel: eager = fused.
# Residual adds are one kernel either way. Plan.kernels picks the traffic ("fused" | "eager").

def _norm_op(name, n_bytes, e, rms, saved=0.0, **kw):
    """A norm over tensors of `n_bytes` (e bytes per element): fused traffic 2·n / 4·n, eager RMSNorm above."""
    n = n_bytes / e
    eager = dict(eager_bytes=(28 + 4 * e) * n, eager_bwd_bytes=(52 + 6 * e) * n) if rms else {}
    return Op(name, "mem", bytes=2 * n_bytes, bwd_bytes=4 * n_bytes, saved=saved, **eager, **kw)


def _act_op(name, e, n_ffn, g, saved=0.0, **kw):
    """The MLP activation over n_ffn ffn elements per rank (gated: SwiGLU, eager 5e / 9e; else one kernel)."""
    eager = dict(eager_bytes=5 * e * n_ffn, eager_bwd_bytes=9 * e * n_ffn) if g == 2.0 else {}
    return Op(name, "mem", bytes=e * (g + 1) * n_ffn, bwd_bytes=2 * e * (g + 1) * n_ffn, saved=saved, **eager, **kw)


def _fc1_parts(g):
    """torchtitan's gated MLP runs w1 and w3 as two mm calls (feed_forward: w2(silu(w1 x) * w3 x))."""
    return (0.5, 0.5) if g == 2.0 else (1.0,)


def mem_bytes(op, eager):
    """(forward, backward) bytes of a memory-bound op per plan row; eager: bool array (Plan.kernels)."""
    if op.eager_bytes is None:
        return op.bytes, op.bwd_bytes
    eager = np.asarray(eager, dtype=bool)
    return np.where(eager, op.eager_bytes, op.bytes), np.where(eager, op.eager_bwd_bytes, op.bwd_bytes)


# ---------------------------------------------------------------- recompute policies
#
# What each policy (parsim.plan.RECOMPUTE, in its order) keeps for backward and re-runs in backward,
# derived from the op list; activation memory, recompute time and recomputed FLOPs all follow from it.
#   none          every op's `saved`;
#   selective     Korthikanti et al. 2022 §5: the attention core's scores (mem ops marked selective) are
#                 dropped and the core re-run;
#   full          only the layer input is kept and the whole layer re-run (Korthikanti et al. 2022 §4.3);
#                 Plan.recompute_every = N applies it to every N-th layer only (torchtitan's
#                 selective_ac_option = N: blocks whose 1-based index is a multiple of N);
#   selective-op  torchtitan's op-level selective AC (torchtitan/models/llama/parallelize_llama.py,
#                 _save_list and _custom_policy): inside a checkpointed block the outputs of aten.mm,
#                 of SDPA (flash/efficient attention) and of reduce_scatter_tensor are saved — except every
#                 second mm, counted in forward order per block — and everything else is recomputed.
#                 For Llama (wq, wk, wv, wo, w1, w3, w2) the mm outputs kept are wq, wv, w1, w2 and the
#                 recomputed ones wk, wo, w3. Kept: the block input + those outputs + the SDPA output and
#                 its log-sum-exp + the reduce-scattered outputs. Re-run: the recomputed mm shares, the
#                 element-wise ops up to the last GEMM (non-reentrant checkpoint stops once what backward
#                 needs is recomputed: the final residual add is not), the materialised attention (bmm,
#                 softmax: not on the list) and grouped expert GEMMs; the TP all-gathers feeding a
#                 column-parallel GEMM with a recomputed share are re-gathered (all_gather is not on the list).
POLICIES = ("none", "selective", "full", "selective-op")


def _mm_saved_shares(ops) -> dict:
    """{id(op): share of the op's output kept by op-level SAC} over its mm parts; the mm counter runs per
    layer kind (the shared ops, then the dense or the MoE MLP), odd counts saved."""
    out = {}
    common = [op for op in ops if not op.branch]
    n0 = sum(len(op.mm_parts) for op in common)
    for branch_ops, start in ((common, 0), ([op for op in ops if op.branch == "dense"], n0),
                              ([op for op in ops if op.branch == "moe"], n0)):
        n = start
        for op in branch_ops:
            kept = 0.0
            for share in op.mm_parts:
                n += 1
                kept += share if n % 2 == 1 else 0.0
            out[id(op)] = kept
    return out


def recomputed(ops, policy: str) -> list[tuple]:
    """[(op, share of its forward re-run in backward)] under `policy` (POLICIES), one layer."""
    if policy == "none":
        return []
    if policy == "selective":
        return [(op, 1.0) for op in ops if op.selective]
    if policy == "full":
        return [(op, 1.0) for op in ops]
    assert policy == "selective-op", policy
    kept = _mm_saved_shares(ops)
    out = []
    last_gemm = {b: max([i for i, op in enumerate(ops) if op.kind == "gemm" and op.branch in ("", b)], default=-1)
                 for b in ("", "dense", "moe")}
    for i, op in enumerate(ops):
        if op.kind == "core":
            continue                                           # SDPA output kept
        if op.name == "fp8_cast":                              # the casts of the recomputed mm inputs
            f8 = [o for o in ops if o.fp8]
            size = [np.asarray(o.weight) * np.asarray(o.m) * np.asarray(o.k) * np.asarray(o.batch) for o in f8]
            share = sum(sz * (1.0 - kept.get(id(o), 0.0) if o.mm_parts else sz) for sz, o in zip(size, f8)) / sum(size)
            out.append((op, share))
            continue
        if op.mm_parts:
            share = 1.0 - kept[id(op)]
        elif op.kind == "gemm":
            share = 1.0                                        # bmm of the materialised scores, grouped expert GEMMs
        else:
            ends = [last_gemm[op.branch]] if op.branch else [last_gemm["dense"], last_gemm["moe"]]
            share = 1.0 if i < max(ends) else 0.0
        if share:
            out.append((op, share))
    return out


def saved_for(ops, policy: str, input_bytes):
    """Activation bytes one layer keeps for backward under `policy` (weighted by each op's share of
    layers); input_bytes: the layer input (what a checkpointed layer keeps)."""
    if policy in ("none", "selective"):
        return saved_bytes(ops, selective=policy == "selective")
    if policy == "full":
        return np.asarray(input_bytes, dtype=float)
    kept = _mm_saved_shares(ops)
    total = np.asarray(input_bytes, dtype=float)
    for op in ops:
        w = np.asarray(op.weight)
        if op.kind == "core":
            total = total + w * np.asarray(op.out_bytes)
        elif op.mm_parts:
            total = total + w * kept[id(op)] * np.asarray(op.out_bytes)
        total = total + w * np.asarray(op.rs_out_bytes)
    return total


def recomputed_flops(ops, policy: str):
    """Executed forward FLOPs one layer re-runs in backward under `policy` (weighted; HFU counts them)."""
    return sum((np.asarray(op.weight) * np.asarray(op.flops) * share for op, share in recomputed(ops, policy)), 0.0)


def regathers(ops, policy: str) -> float:
    """Column-parallel GEMMs (mean layer) whose input op-level SAC gathers again in backward (0 otherwise)."""
    if policy != "selective-op":
        return 0.0
    kept = _mm_saved_shares(ops)
    return float(sum(float(np.max(op.weight)) for op in ops if op.col_parallel and kept[id(op)] < 1.0 - 1e-12))


def _mlp_ops(model, T, Tr, t, e, g, act, ep, ein=None, probs_in_activation=False) -> list[Op]:
    ein = e if ein is None else ein            # the saved input of an FP8 GEMM: 1 byte on FP8 plans
    h = model.hidden
    dense_w = model.dense_layers / model.layers
    moe_w = model.moe_layers / model.layers
    ops = []
    if dense_w:
        f = model.ffn_hidden
        ops += [
            Op("fc1", "gemm", fp8=True, m=T, k=h, n=g * f / t, wgrad=True, saved=ein * Tr * h, weight=dense_w,
               mm_parts=_fc1_parts(g), col_parallel=True, out_bytes=e * T * g * f / t, branch="dense"),
            _act_op("activation", e, T * f / t, g, saved=e * T * g * f / t, weight=dense_w, branch="dense"),
            Op("fc2", "gemm", fp8=True, m=T, k=f / t, n=h, wgrad=True, saved=ein * T * f / t, comm=_tp_out(act),
               weight=dense_w, mm_parts=(1.0,), out_bytes=e * T * h, branch="dense"),
        ]
    if moe_w:
        E, k, ef = model.experts, model.top_k, model.expert_ffn_hidden
        c = model.capacity_factor or 1.0
        rows = c * T * k                         # expert rows per rank: balanced routing, padded to capacity
        per_expert = rows * ep / E               # tokens one expert receives from its EP group
        local = E / ep                           # experts held by this rank
        moved = e * T * k * h                    # the top-k copies of the tokens
        # The all-to-all's buffer is the whole send buffer (nccl-tests' convention, which
        # parsim.costs.network.collective_* price: nbytes per rank, of which (ep-1)/ep leave the rank and
        # busbw = algbw·(ep-1)/ep; its 1/ep own slice stays local). Passing only the (ep-1)/ep that leaves
        # counted that factor twice: the all-to-all was priced (ep-1)/ep too fast (7/8 at ep 8).
        a2a = moved
        # Megatron-Core's all-to-all dispatcher (megatron/core/transformer/moe/token_dispatcher.py,
        # MoEAlltoAllTokenDispatcher): "Permutation 1" groups the top-k copies by destination EP rank before
        # the all-to-all; with more than one local expert, "Permutation 2" (sort_chunks_by_idxs) sorts the
        # received chunks by local expert after it, and combine undoes both. Each permutation reads and
        # writes the top-k copies: 2·moved bytes, forward and backward.
        perm = 2 * moved * np.where(np.asarray(E / ep) > 1, 2.0, 1.0)
        # Where the routing probabilities p are applied decides what the combine keeps for backward:
        #   after the experts (probs_in_activation False: the weighted sum y = sum_k p_k·E_k(x) at the combine, as
        #   parsim's torch backend does, out * w then index_add): d(y)/d(p_k) needs each expert output, the top-k
        #   copies [T·k, h] (e·T·k·h bytes) are kept;
        #   inside the experts' activation (True: Megatron-Core's TEGroupedMLP calls weighted_bias_swiglu_impl(fc1
        #   output, bias, permuted_probs), moe_apply_probs_on_input = False "applying after activation and glu";
        #   its combine unpermutes without probs): the weighted SwiGLU keeps its input (kept already, below) and the
        #   probabilities (4 bytes a row, fp32 router), the combine nothing but its index map.
        pia = bool(probs_in_activation)
        combine_saved = 0.0 if pia else e * T * k * h
        probs_saved = 4.0 * rows if pia else 0.0
        ops += [
            Op("router", "gemm", m=T, k=h, n=E, wgrad=True, saved=e * Tr * h + 4.0 * T * E, weight=moe_w,
               model_flops=2.0 * T * h * E, mm_parts=(1.0,), out_bytes=e * T * E, branch="moe"),
            Op("dispatch", "mem", bytes=perm, bwd_bytes=perm, weight=moe_w,
               comm=(("ep", "all_to_all", a2a),), branch="moe"),
            Op("expert_fc1", "gemm", fp8=True, m=per_expert, k=h, n=g * ef / t, batch=local, wgrad=True, grouped=True,
               saved=ein * rows * h, weight=moe_w, model_flops=2.0 * T * k * h * g * ef / t, branch="moe"),
            _act_op("expert_activation", e, rows * ef / t, g, saved=e * rows * g * ef / t + probs_saved, weight=moe_w,
                    branch="moe"),
            Op("expert_fc2", "gemm", fp8=True, m=per_expert, k=ef / t, n=h, batch=local, wgrad=True, grouped=True, saved=ein * rows * ef / t,
               weight=moe_w, model_flops=2.0 * T * k * ef / t * h, branch="moe"),
            Op("combine", "mem", bytes=perm, bwd_bytes=perm, weight=moe_w, saved=combine_saved,
               comm=(("ep", "all_to_all", a2a), ) + _tp_out(act), branch="moe"),
        ]
        if model.shared_experts:
            sf = model.shared_experts * ef
            ops += [
                Op("shared_fc1", "gemm", fp8=True, m=T, k=h, n=g * sf / t, wgrad=True, saved=0.0, weight=moe_w,
                   mm_parts=_fc1_parts(g), col_parallel=True, out_bytes=e * T * g * sf / t, branch="moe"),
                _act_op("shared_activation", e, T * sf / t, g, saved=e * T * g * sf / t, weight=moe_w, branch="moe"),
                Op("shared_fc2", "gemm", fp8=True, m=T, k=sf / t, n=h, wgrad=True, saved=ein * T * sf / t, weight=moe_w,
                   mm_parts=(1.0,), out_bytes=e * T * h, branch="moe"),
            ]
    return ops


def embedding_ops(model, b, s, t, dtype_code, cp=1) -> list[Op]:
    """Token embedding (vocab-parallel under tp: an all-reduce of its output, forward only)."""
    T, t = _arr(b) * _arr(s) / _arr(cp), _arr(t)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    h = model.hidden
    return [Op("embedding", "mem", bytes=2 * e * T * h, bwd_bytes=3 * e * T * h,
               comm=(("tp", "allreduce_fwd", T * h * e),))]


def head_ops(model, b, s, t, dtype_code, cp=1, cross_entropy: str = "native") -> list[Op]:
    """Final norm, logits GEMM [T,h]x[h,V/t] and the cross-entropy (T = b·s/cp tokens on this rank).
    cross_entropy (parsim.costs.memory.CROSS_ENTROPY_IMPLS): "native", an fp32 loss (read logits, exp-sum, write
    probs: 3 fp32 passes forward, 2 backward; saved: the fp32 logits and their gradient); "te", Transformer Engine's
    fused kernel on the e-byte logits (online softmax + loss pass forward: 3 e-byte passes; the in-place gradient
    scaled in backward: 2; saved: the logits, overwritten by their gradient)."""
    T, t = _arr(b) * _arr(s) / _arr(cp), _arr(t)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    h, V = model.hidden, model.vocab
    B = e if cross_entropy == "te" else 4.0
    return [
        Op("final_norm", "mem", bytes=4 * e * T * h, bwd_bytes=0.0),
        Op("logits", "gemm", m=T, k=h, n=V / t, wgrad=True),
        Op("cross_entropy", "mem", bytes=B * T * V / t * 3, bwd_bytes=B * T * V / t * 2,
           saved=B * T * V / t * (1 if cross_entropy == "te" else 2)),
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
