"""Data-parallel synchronisation per step, as the frameworks run it (ZeRO stages 0-3).

Pure functions of per-collective times (seconds, arrays over a table of plans). Per optimizer
step with m micro-batches, t_ar/t_rs/t_ag the time of one all-reduce / reduce-scatter /
all-gather of a stage's full gradient (or parameter) buffer over the dp group:

  stage 0 (DDP, Li et al. 2020):  one all-reduce after the last micro-batch's backward
                                  (gradients accumulate locally, DDP's no_sync);
                                  traffic t_ar, hidden under that backward when overlapped.
  stage 1 (DeepSpeed ZeRO-1):     gradients accumulate unsharded; at the accumulation boundary
                                  one reduce-scatter (hidden under the last backward when
                                  overlapped), then the optimizer updates its shard and the
                                  parameters are all-gathered: t_rs + t_ag. The all-gather
                                  follows the optimizer step, so it is never hidden under backward.
  stage 2 (DeepSpeed ZeRO-2;      gradients are reduce-scattered after *every* micro-batch's
           FSDP2 default):        backward into sharded gradients (DeepSpeed stage 2's
                                  reduce per micro-batch; FSDP2 with gradient sync on, its
                                  default); each overlaps only its own backward (DeepSpeed waits
                                  for the reduction stream at the end of backward). Then the
                                  parameter all-gather after the optimizer: m·t_rs + t_ag.
                                  (FSDP2 with set_requires_gradient_sync(False) until the last
                                  micro-batch holds unsharded gradients and reduces once: that is
                                  stage 1's traffic and memory.)
  stage 3 (ZeRO-3 / FSDP2         every micro-batch all-gathers the parameters for forward and
           reshard_after_forward): again for backward and reduce-scatters the gradients:
                                  m·(2·t_ag + t_rs); prefetched under the micro-batch's compute
                                  when overlapped, except the first layer's gather of each pass.

Megatron-Core's own DP overlap is NOT priced, on the evidence: its recipes (NeMo / Megatron-Bridge comm-overlap
config) turn on overlap_grad_reduce and overlap_param_gather with 128·2^20-parameter buckets, which the NeMo docs say
expose "only one DP communication chunk", the parameter all-gather hidden under the next step's first forward. Priced
that way (2026-11-30), the public corpus's DP-heavy rows went wrong, held out: Mixtral-8x7B and Nemotron-4 15B on 64
B200 (dp 64, two micro-batches per step) +2.3% -> +15.5% and +10.5% -> +19.5% too fast, and every dense NeMo /
Megatron-Bridge table 0.2-1.1 points worse. Whatever keeps that all-gather exposed in practice (contention with the
forward's kernels, the first bucket's wait, ...) is not known here; the ZeRO-1 formula above fits the published runs.

Sources: Rajbhandari et al. 2020 (ZeRO, §5, §7: stage 3 moves 1.5x an all-reduce's bytes);
DeepSpeed stage_1_and_2.py (reduce at every micro-batch with partition_gradients, the
overlapping_partition_gradients_reduce_epilogue wait); PyTorch FSDP2 fully_shard docs
(set_requires_gradient_sync, reshard_after_forward).

Invariant (property-tested): 0 <= exposed <= traffic for every plan.
"""
from __future__ import annotations

import numpy as np

from parsim.errors import ParsimError

# The reduce-scatter and all-gather schedules a --grad-sync algorithm has (parsim.schedules):
# ring -> ring/ring; hd -> recursive halving / recursive doubling; native -> the library's own.
ZERO_SYNC_ALGOS = {"ring": ("ring", "ring"), "hd": ("hd", "rd"), "native": ("native", "native")}


def zero_sync_algorithms(grad_sync: str, zero: int) -> tuple[str, str]:
    """(reduce-scatter algorithm, all-gather algorithm) that ZeRO stage `zero` >= 1 runs for the
    plan's --grad-sync; ParsimError for an algorithm with no reduce-scatter/all-gather form
    (tree, hierarchical, ps all-reduce whole buffers)."""
    if zero < 1:
        return grad_sync, grad_sync
    if grad_sync not in ZERO_SYNC_ALGOS:
        raise ParsimError(f"grad-sync {grad_sync} with zero {zero}: ZeRO reduce-scatters gradients and all-gathers "
                          f"parameters, and {grad_sync} has no such schedule; expected one of "
                          f"{', '.join(ZERO_SYNC_ALGOS)}")
    return ZERO_SYNC_ALGOS[grad_sync]


def dp_sync_s(zero, m, t_ar, t_rs, t_ag, overlap, bwd_window_s, mb_compute_s, layers_per_rank):
    """(traffic_s, exposed_s) of data-parallel synchronisation per step (arrays, seconds).

    zero: ZeRO stage; m: micro-batches per step; t_ar/t_rs/t_ag: one all-reduce/reduce-scatter/
    all-gather of a stage's full buffer; overlap: bool; bwd_window_s: one micro-batch's backward
    on the stage (what a gradient collective launched during backward can hide under);
    mb_compute_s: one micro-batch's forward+backward on the stage (what ZeRO-3's prefetched
    gathers can hide under); layers_per_rank: ZeRO-3's first gather of a pass is one layer's.
    Formulas in the module docstring."""
    zero, m = np.asarray(zero), np.asarray(m, dtype=float)
    overlap = np.asarray(overlap, dtype=bool)
    w = np.where(overlap, np.maximum(bwd_window_s, 0.0), 0.0)
    rs_mult = np.where(zero == 2, m, 1.0)                      # ZeRO-2: a reduce-scatter per micro-batch
    rs_ag = rs_mult * t_rs + t_ag                               # ZeRO-1/2 traffic
    rs_ag_exposed = rs_mult * np.maximum(t_rs - w, 0.0) + t_ag  # ... the all-gather after the optimizer: exposed
    traffic = np.where(zero == 0, t_ar, rs_ag)
    exposed = np.where(zero == 0, np.maximum(t_ar - w, 0.0), rs_ag_exposed)
    z3 = zero >= 3
    if np.any(z3):
        pick = lambda x: np.broadcast_to(x, z3.shape)[z3]      # noqa: E731
        ag, mm, ov = pick(t_ag), pick(m), pick(overlap)
        z3_mb = 2 * ag + pick(t_rs)
        z3_first = 2 * ag / np.maximum(pick(layers_per_rank), 1.0)   # forward and backward: first layer's gather
        z3_exp = np.where(ov, np.minimum(z3_mb, np.maximum(z3_mb - pick(mb_compute_s), 0.0) + z3_first), z3_mb)
        traffic = np.array(np.broadcast_to(traffic, z3.shape), dtype=float)
        exposed = np.array(np.broadcast_to(exposed, z3.shape), dtype=float)
        traffic[z3], exposed[z3] = mm * z3_mb, mm * z3_exp
    return traffic, exposed
