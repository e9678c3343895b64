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

Megatron-Core's data-parallel overlap (chunks given; the frameworks of DP_CHUNKED_OVERLAP): its DDP and
distributed optimizer split the gradient reduce-scatter (all-reduce without ZeRO) and the parameter all-gather into
buckets, never across a virtual pipeline stage's model chunk, and overlap each with computation, "exposing only one
DP communication chunk" (NeMo docs, features/optimizations/communication_overlap.rst). The NeMo and Megatron-Bridge
recipes set, whenever dp > 1, overlap_grad_reduce and overlap_param_gather True and bucket_size 128·2^20 parameters
(MegatronCommOverlapCallback / CommOverlapConfig._get_optimizer_overlap_cfgs; DP_BUCKET_PARAMS). With
overlap_param_gather the updated parameters are gathered under the *next* step's first forward (Megatron-Core
DistributedDataParallelConfig: "overlap param all-gather with forward compute"). Per collective t over c chunks:
  exposed = max(t - window, t / c)   (window: the last backward for the gradients, a forward for the parameters).

Sources: Rajbhandari et al. 2020 (ZeRO, §5, §7: stage 3 moves 1.5x an all-reduce's bytes);
DeepSpeed stage_1_and_2.py (reduce at every micro-batch with partition_gradients, the
overlapping_partition_gradients_reduce_epilogue wait); PyTorch FSDP2 fully_shard docs
(set_requires_gradient_sync, reshard_after_forward).

Invariant (property-tested): 0 <= exposed <= traffic for every plan.
"""
from __future__ import annotations

import numpy as np

from parsim.errors import ParsimError

# Frameworks whose DP collectives are chunked and overlapped as Megatron-Core's (module docstring), by the memory
# accounting name that stands for the framework; the others as the ZeRO stages above (DeepSpeed; FSDP2, whose own
# prefetching is stage 3's; parsim's torch backend).
DP_CHUNKED_OVERLAP = {"megatron": True, "deepspeed": False, "fsdp2": False}
DP_BUCKET_PARAMS = 128 * 2 ** 20     # parameters per DP bucket in the NeMo / Megatron-Bridge recipes (docstring)


def dp_chunks(params_per_rank, pp, vpp):
    """Chunks Megatron-Core splits one rank's DP collectives into (arrays): its buckets of DP_BUCKET_PARAMS, and at
    least one per model chunk (vpp of them under pipeline parallelism)."""
    return np.maximum(np.where(np.asarray(pp) > 1, vpp, 1), np.ceil(np.asarray(params_per_rank, dtype=float) / DP_BUCKET_PARAMS))

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


def dp_sync_s(zero, m, t_ar, t_rs, t_ag, overlap, bwd_window_s, mb_compute_s, layers_per_rank, chunks=None,
              fwd_window_s=0.0):
    """(traffic_s, exposed_s) of data-parallel synchronisation per step (arrays, seconds).

    zero: ZeRO stage; m: micro-batches per step; t_ar/t_rs/t_ag: one all-reduce/reduce-scatter/
    all-gather of a stage's full buffer; overlap: bool; bwd_window_s: one micro-batch's backward
    on the stage (what a gradient collective launched during backward can hide under);
    mb_compute_s: one micro-batch's forward+backward on the stage (what ZeRO-3's prefetched
    gathers can hide under); layers_per_rank: ZeRO-3's first gather of a pass is one layer's.
    chunks (array, or None): Megatron-Core's chunked overlap of stages 0-2 with that many chunks per rank, the
    parameter all-gather hidden under fwd_window_s (one micro-batch's forward on the stage); None: as above.
    Formulas in the module docstring."""
    zero, m = np.asarray(zero), np.asarray(m, dtype=float)
    overlap = np.asarray(overlap, dtype=bool)
    w = np.where(overlap, np.maximum(bwd_window_s, 0.0), 0.0)
    rs_mult = np.where(zero == 2, m, 1.0)                      # ZeRO-2: a reduce-scatter per micro-batch
    rs_ag = rs_mult * t_rs + t_ag                               # ZeRO-1/2 traffic
    if chunks is None:
        rs_ag_exposed = rs_mult * np.maximum(t_rs - w, 0.0) + t_ag  # ... the all-gather after the optimizer: exposed
        ar_exposed = np.maximum(t_ar - w, 0.0)
    else:                                                       # Megatron-Core: one chunk at least, when overlapped
        c = np.maximum(np.asarray(chunks, dtype=float), 1.0)
        wf = np.where(overlap, np.maximum(fwd_window_s, 0.0), 0.0)
        hide = lambda t_, win: np.where(overlap, np.maximum(t_ - win, t_ / c), t_)     # noqa: E731
        rs_ag_exposed = rs_mult * hide(t_rs, w) + hide(t_ag, wf)
        ar_exposed = hide(t_ar, w)
    traffic = np.where(zero == 0, t_ar, rs_ag)
    exposed = np.where(zero == 0, ar_exposed, rs_ag_exposed)
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
