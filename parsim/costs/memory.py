"""Memory per device: weights, gradients, optimizer state, activations, buffers (bytes).

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", §4), generalised to GQA and gated MLPs. For a GPT layer
with 16-bit activations, per micro-batch:
    no parallelism:           s·b·h·(34 + 5·a·s/h)
    tensor parallel t:        s·b·h·(10 + 24/t + 5·a·s/(h·t))          (eq. 2)
    + sequence parallel:      s·b·h·(34/t + 5·a·s/(h·t))               (eq. 4)
    + selective recompute:    s·b·h·34/t                               (eq. 5)
    full recompute:           2·s·b·h (/t with sequence parallel)      (§4.3)
The "10" are the layer-norm inputs (4), the QKV and MLP inputs (2+2) and two dropout
masks (1+1); the "24" are Q,K,V (6), the projection input (2) and the MLP's 4h
intermediate before and after the activation (8+8); 5·a·s/h are the attention scores
(softmax output 2, dropout mask 1, dropout output 2). Flash attention never stores the
scores, like selective recompute.

Model states: bytes per parameter by the framework's accounting (``ACCOUNTING``: Megatron-LM's
18 B with fp32 main gradients — the default —, DeepSpeed/ZeRO's 16 B, FSDP2's fp32-sharded 16 B),
sharded by ZeRO stage (Rajbhandari et al. 2020, §5). In-flight activations per pipeline rank come
from the schedule's own op order (``inflight_chunks``); where the framework's pipeline runtime keeps its stage
outputs (torch.distributed.pipelining under FSDP2) a rank's peak is taken over that order moment by moment
(``pipeline_moments``: gradients from a stage's first backward, kept outputs growing with the forwards, the loss
backward and a recomputed layer inside a backward only). What the device can give the model is its
reported capacity less a headroom (``default_headroom_bytes``, data in parsim/data/memory.yaml).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from parsim.costs.compute import DTYPE_BYTES

DDP_BUCKET_BYTES = 25 * 2 ** 20 * 2   # two 25 MiB gradient buckets in flight (PyTorch DDP default bucket_cap_mb=25)


def activation_bytes_per_layer(model, b, s, t, sp, recompute_code, flash, dtype_code, ep=1, cp=1,
                               probs_in_activation=False):
    """Bytes of stored activations for one layer and one micro-batch on one TP rank, summed from
    the layer's description (parsim.layer: each op's `saved`).

    recompute_code: index into parsim.plan.RECOMPUTE — 0 none, 1 selective (the attention core's scores
    are not kept), 2 full (only the layer input is kept: e·s·b·h, /t with sequence parallelism;
    Korthikanti et al. 2022 §4.3), 3 selective-op (torchtitan's op-level SAC: the layer input and the
    outputs its policy saves; parsim.layer.saved_for). probs_in_activation: MoE routing probabilities applied in
    the experts' activation (MOE_PROBS_IN_ACTIVATION[accounting]), not at the combine."""
    from parsim.layer import DTYPE_BYTES as E, POLICIES, layer_ops, saved_for
    b, s, t = (np.asarray(x, dtype=float) for x in (b, s, t))
    sp = np.asarray(sp, dtype=bool)
    rc = np.asarray(recompute_code)
    ops = layer_ops(model, b, s, t, sp, flash, dtype_code, ep, cp, probs_in_activation=probs_in_activation)
    e = E[np.asarray(dtype_code)]
    inp = np.where(sp, e * s * b * model.hidden / t, e * s * b * model.hidden) / np.asarray(cp, dtype=float)
    out = 0.0
    for code, policy in enumerate(POLICIES):
        if np.any(rc == code):
            out = out + np.where(rc == code, saved_for(ops, policy, inp), 0.0)
    return out


# ---------------------------------------------------------------- model states: bytes per parameter

# Bytes per parameter (weights, gradients, optimizer state) of mixed-precision Adam, by framework.
# Each component is sharded over dp by ZeRO: stage >= 1 the optimizer state, >= 2 the gradients,
# >= 3 the weights (Rajbhandari et al. 2020, §5).
ACCOUNTING = {
    # Megatron-LM: bf16/fp16 weights, fp32 main gradients (--accumulate-allreduce-grads-in-fp32, the
    # default with bf16), fp32 master weights + Adam m, v: 2 + 4 + 12 = 18 B/param; with its distributed
    # optimizer (ZeRO-1 here) 6 + 12/d (Megatron-LM docs/source/api-guide/dist_optimizer.md, table
    # "bf16 param, fp32 grads: non-distributed 18, distributed 6 + 12/d").
    "megatron": (2.0, 4.0, 12.0),
    # DeepSpeed / the ZeRO paper (Rajbhandari et al. 2020, §3.1): fp16 weights and gradients, fp32
    # master weights, momentum and variance: 2 + 2 + 12 = 16 B/param ("K = 12").
    "deepspeed": (2.0, 2.0, 12.0),
    # FSDP2 as torchtitan runs it (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)): the
    # sharded parameters are the fp32 master copy, gradients are reduced and kept in fp32, Adam m, v
    # in fp32: 4 + 4 + 8 = 16 B/param. FSDP2 shards its parameters at every stage; the compute copy is
    # unsharded per layer (ZeRO-3: see buffers) or, with reshard_after_forward=False, for the whole
    # stage (+2 B/param in 16-bit, the unsharded fp32 parameters in fp32): ZeRO-2 here (gradients
    # reduce-scattered every micro-batch) and ZeRO-1 (gradient sync on the last micro-batch only:
    # set_requires_gradient_sync(False) before, the unsharded gradient accumulated in the fp32 reduce
    # dtype, as torch.distributed.pipelining's stage._configure_data_parallel_mode runs FSDP2 under PP).
    "fsdp2": (4.0, 4.0, 8.0),
}
ACCOUNTINGS = tuple(ACCOUNTING)
DEFAULT_ACCOUNTING = "megatron"
FP32_STATE = (4.0, 4.0, 8.0)        # fp32 training: weights, gradients, Adam m and v, in every framework

# The dtype 16-bit training accumulates and reduces its gradients in (--grad-dtype): fp32, or the parameters'
# own 16-bit dtype ("16bit"). fp32 training always has fp32 gradients.
GRAD_DTYPES = ("fp32", "16bit")
# Each framework's default:
#   megatron   fp32 with bf16 parameters (bf16, fp8 and mxfp8 plans: Megatron-LM's arguments.py turns
#              accumulate_allreduce_grads_in_fp32 on for bf16, "bfloat16 requires gradient accumulation and
#              all-reduce to be done in fp32"), 16-bit with fp16 parameters (that flag's default, off). The
#              NeMo / Megatron-Bridge performance recipes turn it off (grad_reduce_in_fp32 = False).
#   deepspeed  16-bit (the ZeRO paper's fp16 gradients)
#   fsdp2      fp32 (torchtitan's MixedPrecisionPolicy reduce_dtype = float32, training.mixed_precision_reduce)
DEFAULT_GRAD_DTYPE = {"megatron": "fp32", "deepspeed": "16bit", "fsdp2": "fp32"}
# Model-state bytes per parameter of 16-bit training with 16-bit gradients, by framework, from forward to backward:
#   megatron   2 + 2 + 12. Megatron-LM's docs/source/api-guide/dist_optimizer.md counts 20 ("fp16 param, fp16 grads":
#              non-distributed 20, distributed 4 + 16/d): the optimizer's fp32 copy of the gradient (4 B, sharded like
#              the optimizer) is made in the step (the distributed optimizer's _copy_model_grads_to_main_grads,
#              shard_main_param.grad = shard_model_grad.float()) and dropped by its zero_grad, when no activation is
#              held: STEP_GRAD_COPY below, counted where it is larger than the activations it replaces
#   deepspeed  the ZeRO paper's 2 + 2 + 12 (ACCOUNTING above)
#   fsdp2      4 + 2 + 8 below ZeRO-2: the unsharded gradient accumulated across micro-batches stays in the reduce
#              dtype (torch FSDPParam.to_accumulated_grad_if_needed upcasts only when the gradient's dtype differs
#              from reduce_dtype); at ZeRO >= 2 the reduced shard is cast to the sharded parameter's dtype (fp32) as
#              its .grad: 4 B / dp, as with fp32 reduction (FSDP2_SHARDED_GRAD_BYTES)
ACCOUNTING_16BIT_GRADS = {"megatron": (2.0, 2.0, 12.0), "deepspeed": (2.0, 2.0, 12.0), "fsdp2": (4.0, 2.0, 8.0)}
FSDP2_SHARDED_GRAD_BYTES = 4.0
# fp32 gradient copy the optimizer step makes with 16-bit gradients (bytes per parameter, sharded like the optimizer)
STEP_GRAD_COPY = {"megatron": 4.0, "deepspeed": 0.0, "fsdp2": 0.0}
# ... and with fp32 gradients where the framework's default is 16-bit (DeepSpeed's bf16 optimizer accumulates fp32
# gradients: 2 + 4 + 12)
ACCOUNTING_FP32_GRADS = {"megatron": ACCOUNTING["megatron"], "deepspeed": (2.0, 4.0, 12.0),
                         "fsdp2": ACCOUNTING["fsdp2"]}


def check_grad_dtype(name, dtype: str | None = None):
    """`name` when it is None (the framework's default) or one of GRAD_DTYPES, and, given the plan's `dtype`, not
    16-bit gradients for fp32 training (they would be ignored: fp32 training keeps fp32 gradients); ParsimError
    otherwise."""
    from parsim.errors import ParsimError
    if name is not None and name not in GRAD_DTYPES:
        raise ParsimError(f"grad dtype {name!r}: expected one of {', '.join(GRAD_DTYPES)}")
    if name == "16bit" and dtype == "fp32":
        raise ParsimError("grad dtype 16bit with dtype fp32: fp32 training keeps fp32 gradients; expected --grad-dtype "
                          "fp32 (or none) with --dtype fp32, or a 16-bit --dtype")
    return name


def grads_fp32(accounting: str, dtype_code, grad_dtype: str | None = None):
    """Whether each row's gradients are accumulated and reduced in fp32 (bool array over `dtype_code`, an index
    into parsim.plan.DTYPES): always for fp32 training; else `grad_dtype` ("fp32" or "16bit"), or None for the
    framework's default (DEFAULT_GRAD_DTYPE; Megatron's depends on the parameters' dtype, see above)."""
    code = np.asarray(dtype_code)
    fp32_train = DTYPE_BYTES[code] == 4.0
    choice = check_grad_dtype(grad_dtype) or DEFAULT_GRAD_DTYPE[check_accounting(accounting)]
    if grad_dtype is None and accounting == "megatron":
        from parsim.plan import DTYPES
        return fp32_train | (code != DTYPES.index("fp16"))
    return fp32_train | (choice == "fp32")


def check_headroom_below_capacity(headroom_bytes, device) -> None:
    """ParsimError when a memory headroom leaves nothing of the device's capacity (trial 2026-11-30:
    --memory-headroom 200GiB on an H100 printed '= -120.35 GiB usable')."""
    if headroom_bytes is not None and headroom_bytes >= device.memory_bytes:
        from parsim.errors import ParsimError
        raise ParsimError(f"memory headroom {headroom_bytes / 2 ** 30:.2f} GiB: expected less than the capacity of a "
                          f"{device.name} ({device.memory_bytes / 2 ** 30:.2f} GiB)")


def step_grad_copy_bytes_per_param(dp, zero, dtype_code, accounting: str = DEFAULT_ACCOUNTING,
                                   grad_dtype: str | None = None):
    """Bytes per parameter on one device of the fp32 gradient copy the optimizer step makes from 16-bit gradients
    (STEP_GRAD_COPY; 0 with fp32 gradients), sharded over dp with the optimizer state (ZeRO stage >= 1)."""
    dp, zero = np.asarray(dp, dtype=float), np.asarray(zero)
    copy = np.where(grads_fp32(accounting, dtype_code, grad_dtype), 0.0, STEP_GRAD_COPY[check_accounting(accounting)])
    return copy / np.where(zero >= 1, dp, 1.0)


def grad_dtype_name(accounting: str, dtype_code: int, grad_dtype: str | None = None) -> str:
    """The GRAD_DTYPES name ("fp32" or "16bit") one plan's gradients are priced in (grads_fp32, said in outputs)."""
    return "fp32" if bool(grads_fp32(accounting, dtype_code, grad_dtype)) else "16bit"


def grad_element_bytes(accounting: str, dtype_code, grad_dtype: str | None = None):
    """Bytes of one gradient element as the data-parallel reduction moves it (4 in fp32, else 2)."""
    return np.where(grads_fp32(accounting, dtype_code, grad_dtype), 4.0, 2.0)


def check_accounting(name: str) -> str:
    from parsim.errors import ParsimError, closest
    if name not in ACCOUNTING:
        raise ParsimError(f"memory accounting {name!r}: expected one of {', '.join(ACCOUNTINGS)}"
                          f"{closest(str(name), ACCOUNTINGS)}")
    return name


def state_bytes_per_param(dp, zero, dtype_code, accounting: str = DEFAULT_ACCOUNTING, grad_dtype: str | None = None):
    """(weights, grads, optimizer) bytes per parameter on one device, after ZeRO sharding: the
    factors ``model_state_bytes`` multiplies the parameter count by (vectorised over plans). `grad_dtype`:
    GRAD_DTYPES or None (the framework's default, DEFAULT_GRAD_DTYPE)."""
    dp, zero = np.asarray(dp, dtype=float), np.asarray(zero)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    g32 = grads_fp32(accounting, dtype_code, grad_dtype)
    b32, b16 = ACCOUNTING_FP32_GRADS[check_accounting(accounting)], ACCOUNTING_16BIT_GRADS[accounting]
    bw, bg, bo = (np.where(g32, x, y) for x, y in zip(b32, b16))
    fp32 = e == 4.0
    w = np.where(fp32, FP32_STATE[0], bw) / np.where(zero >= 3, dp, 1.0)
    if accounting == "fsdp2":
        # sharded master at every stage + the unsharded compute copy below ZeRO-3; the sharded gradient (ZeRO >= 2)
        # takes the fp32 parameter's dtype
        unsharded_copy = np.where(fp32, FP32_STATE[0], 2.0)
        w = np.where((zero == 1) | (zero == 2), np.where(fp32, FP32_STATE[0], bw) / dp + unsharded_copy, w)
        bg = np.where(zero >= 2, FSDP2_SHARDED_GRAD_BYTES, bg)
    g = np.where(fp32, FP32_STATE[1], bg) / np.where(zero >= 2, dp, 1.0)
    o = np.where(fp32, FP32_STATE[2], bo) / np.where(zero >= 1, dp, 1.0)
    return w, g, o


def model_state_bytes(params_per_rank, dp, zero, dtype_code, accounting: str = DEFAULT_ACCOUNTING,
                      grad_dtype: str | None = None):
    """(weights, grads, optimizer) bytes per device for ``params_per_rank`` parameters (before ZeRO).

    Bytes per parameter follow ``accounting`` (ACCOUNTING above) for 16-bit training and FP32_STATE
    for fp32; ZeRO stage z shards the optimizer (z >= 1), gradients (z >= 2), weights (z >= 3) over dp.
    The fsdp2 convention at ZeRO-1 and -2 shards its fp32 parameters and also holds the unsharded
    compute copy (2 B/param in 16-bit) from forward to backward (FSDP2's reshard_after_forward=False),
    counted with the weights. `grad_dtype` as state_bytes_per_param (the optimizer step's fp32 copy of 16-bit
    gradients is apart: step_grad_copy_bytes_per_param)."""
    N = np.asarray(params_per_rank, dtype=float)
    return tuple(N * f for f in state_bytes_per_param(dp, zero, dtype_code, accounting, grad_dtype))


# ---------------------------------------------------------------- the loss and FP8 weights, by framework

# fp32 logit-sized tensors ([tokens, vocab/t], 4 bytes an entry) the cross-entropy's backward holds on top of
# the log-probabilities each in-flight micro-batch keeps, by framework (``ACCOUNTING``'s keys):
#   megatron, deepspeed  1: parsim's convention, not sourced to a measurement. Megatron-Core's vocab-parallel loss
#                        saves the fp32 softmax (exp_logits) and turns it into the gradient in place, so the saved
#                        tensor itself is the gradient (no second fp32 one); what the 1 stands for is the transients
#                        around it, which bracket it: at the end of the forward the 16-bit logits, their fp32 copy and
#                        the shifted copy (up to 10 B an entry with the 4 B kept: 1.5 of these 4-byte tensors on top),
#                        in the backward the in-place fp32 gradient's 16-bit cast handed to the output layer (6 B: 0.5
#                        on top). (Trial 2026-11-30: the comment said "written over the saved softmax" and counted a
#                        second fp32 tensor without saying why; 0.5..1.5 is the range, 1 is kept.)
#   fsdp2                2: torchtitan's loss is eager PyTorch, cross_entropy(pred.flatten(0, 1).float(), labels)
#                        (train.py's loss_fn at the end of 2024, compiling it was switched off with "TODO: compiling
#                        loss function causes CUDA errors"; torch.compile wraps each TransformerBlock only).
#                        aten's cross_entropy is log_softmax + nll_loss: log_softmax saves its fp32 output;
#                        nll_loss_backward returns a dense zero-filled fp32 gradient of that output, and
#                        _log_softmax_backward_data allocates the fp32 gradient of the logits while both are live:
#                        saved output + 2 gradients = 3 fp32 tensors at the loss backward (the forward's peak, bf16
#                        logits + fp32 copy + fp32 output = 2.5 of them, is lower).
LOSS_BACKWARD_LOGITS = {"megatron": 1.0, "deepspeed": 1.0, "fsdp2": 2.0}
# ... and with the vocabulary split over tp > 1 ranks (vocab-parallel loss):
#   megatron, deepspeed  1: the same fused vocab_parallel_cross_entropy.
#   fsdp2                3: torchtitan runs loss_parallel() with tp > 1 (train.py's train_context, the output layer
#                        ColwiseParallel(output_layouts=Shard(-1))), where DTensor's nll_loss backward handler
#                        (torch/distributed/tensor/parallel/loss.py, _nll_loss_and_log_softmax_backward, fused with
#                        log_softmax's backward to spare an all-gather) runs grad_input = torch.zeros_like(x), scatters
#                        the -1s into it and returns (grad_input + torch.exp(x)) * grad_output: while the sum is
#                        allocated the saved log-probs x, grad_input, exp(x) and the sum are live, and while the product
#                        is, x, grad_input, the sum and the product - 4 fp32 [tokens, vocab/t] tensors, 3 on top of the
#                        saved one (its forward, _log_softmax: bf16 logits + fp32 copy + shifted + exp = 3.5, is lower).
LOSS_PARALLEL_BACKWARD_LOGITS = {"megatron": 1.0, "deepspeed": 1.0, "fsdp2": 3.0}


# The cross-entropy implementation (--cross-entropy), Megatron-Core's cross_entropy_fusion_impl:
#   native  the framework's own loss, as the tables above count it: fp32 logits kept per in-flight micro-batch
#           (Megatron's vocab_parallel_cross_entropy, fused or not, and torchtitan's eager loss upcast them) plus
#           what its backward adds (LOSS_BACKWARD_LOGITS / LOSS_PARALLEL_BACKWARD_LOGITS).
#   te      Transformer Engine's fused parallel_cross_entropy (Megatron-Core with cross_entropy_loss_fusion and
#           cross_entropy_fusion_impl = "te"; TE >= 2.1, Megatron-LM issue #1481): a Triton kernel that reads the
#           16-bit logits as they come from the output layer, keeps them (ctx.save_for_backward(_input)) with
#           per-token softmax statistics ([tokens, 3] fp32, m_d_X_y, negligible here) and writes the gradient into
#           the same buffer (transformer_engine/pytorch/cross_entropy.py, CrossEntropyFunction; "the loss and
#           gradient calculation happens in FP32 only" in registers): one 16-bit logit tensor per in-flight
#           micro-batch, nothing added in backward. Its time: forward an online-softmax pass and a loss pass
#           (3 e-byte passes), backward the gradient scaled in place (2). The Megatron-Bridge performance scripts
#           set it for every recipe (scripts/performance/utils/overrides.py, _set_common_perf_overrides:
#           recipe.model.cross_entropy_fusion_impl = "te"; the Llama 3 and Qwen recipes since Megatron-Bridge
#           PR #1154, 2025-10-31, cherry-picked into r0.2.0) until PR #4138 (2026-06) went back to native.
#           Only Megatron-Core runs it: refused with the deepspeed and fsdp2 accountings.
CROSS_ENTROPY_IMPLS = ("native", "te")
DEFAULT_CROSS_ENTROPY = "native"
CROSS_ENTROPY_FRAMEWORKS = {"native": ACCOUNTINGS, "te": ("megatron",)}


def check_cross_entropy(name, accounting: str = DEFAULT_ACCOUNTING):
    """`name` when it is None (DEFAULT_CROSS_ENTROPY) or one of CROSS_ENTROPY_IMPLS run by the `accounting`'s
    framework (CROSS_ENTROPY_FRAMEWORKS); ParsimError otherwise."""
    from parsim.errors import ParsimError
    if name is not None and name not in CROSS_ENTROPY_IMPLS:
        raise ParsimError(f"cross entropy {name!r}: expected one of {', '.join(CROSS_ENTROPY_IMPLS)}")
    if name is not None and check_accounting(accounting) not in CROSS_ENTROPY_FRAMEWORKS[name]:
        raise ParsimError(f"cross entropy {name!r} with memory accounting {accounting!r}: Transformer Engine's fused "
                          f"cross entropy is Megatron-Core's (cross_entropy_fusion_impl te); expected --cross-entropy "
                          f"native with --memory-accounting {accounting}, or --memory-accounting megatron")
    return name


def check_cross_entropy_device(name, device) -> None:
    """ParsimError for Transformer Engine's loss on a device it does not run on (a CPU profile: TE is CUDA-only;
    trial 2026-11-30: `--cross-entropy te --cluster cpu-local` was priced)."""
    if name == "te" and getattr(device, "kind", "gpu") == "cpu":
        from parsim.errors import ParsimError
        raise ParsimError(f"cross entropy 'te' on device {device.name}: Transformer Engine runs on NVIDIA GPUs only; "
                          f"expected --cross-entropy native on a CPU cluster")


def loss_logit_bytes(e, cross_entropy: str | None = None):
    """Bytes per logit entry ([tokens, vocab/t]) the loss keeps for each in-flight micro-batch: 4 (fp32 logits) for
    the native losses, the logits' own e bytes for Transformer Engine's (CROSS_ENTROPY_IMPLS). e: array allowed."""
    return np.where(check_cross_entropy(cross_entropy) == "te", np.asarray(e, dtype=float), 4.0)


def loss_held_bytes(accounting: str, e, entries, tp, cross_entropy: str | None = None) -> tuple:
    """(bytes the loss keeps per in-flight micro-batch, bytes it adds once at its backward) for `entries` logit entries
    ([tokens, vocab/t] of one micro-batch on this rank) of e-byte logits: loss_logit_bytes x entries and
    loss_backward_logits of those. Scalars or arrays."""
    kept = loss_logit_bytes(e, cross_entropy) * np.asarray(entries, dtype=float)
    return kept, kept * loss_backward_logits(accounting, tp, cross_entropy)


def loss_backward_logits(accounting: str, tp, cross_entropy: str | None = None):
    """Logit-sized tensors (of loss_logit_bytes each) the loss backward holds on top of the kept logits, by framework
    and tensor-parallel degree (LOSS_BACKWARD_LOGITS for tp = 1, LOSS_PARALLEL_BACKWARD_LOGITS for tp > 1; none for
    Transformer Engine's fused loss, which writes the gradient over its input)."""
    a = check_accounting(accounting)
    if check_cross_entropy(cross_entropy, a) == "te":
        return np.zeros(np.shape(tp))
    return np.where(np.asarray(tp) > 1, LOSS_PARALLEL_BACKWARD_LOGITS[a], LOSS_BACKWARD_LOGITS[a])


# What the output layer keeps of its input for its weight gradient, by framework (True: the whole [tokens, h],
# False: the sequence-parallel shard [tokens/t, h]; the same without sequence parallelism):
#   megatron, deepspeed  False: Megatron-Core's ColumnParallelLinear with sequence_parallel saves its sharded input
#                        and all-gathers it again in backward (LinearWithGradAccumulationAndAsyncCommunication).
#   fsdp2                True: torchtitan's output layer is ColwiseParallel(input_layouts=Shard(1)): DTensor
#                        redistributes the input to Replicate() (an all-gather) before the matmul, and autograd saves
#                        the all-gathered [tokens, h] input of mm.
HEAD_SAVES_GATHERED_INPUT = {"megatron": False, "deepspeed": False, "fsdp2": True}


def head_saved_bytes(accounting: str, e, tokens, hidden, t, sp):
    """Bytes the last stage keeps per in-flight micro-batch for the final norm and the output layer's backward:
    the norm's input (e·tokens·h, /t with sequence parallelism) and the output layer's input (the same, or the whole
    e·tokens·h where the framework's column-parallel head saves its all-gathered input: HEAD_SAVES_GATHERED_INPUT).
    tokens: of the micro-batch on this rank (b·s/cp). Vectorised."""
    full = np.asarray(e, dtype=float) * np.asarray(tokens, dtype=float) * hidden
    shard = np.where(np.asarray(sp, dtype=bool), full / np.asarray(t, dtype=float), full)
    return shard + (full if HEAD_SAVES_GATHERED_INPUT[check_accounting(accounting)] else shard)


# What a pipeline stage's runtime keeps between stages, by framework:
#   megatron, deepspeed  False: two boundary activations in flight (a send and a receive; Megatron-Core's schedules
#                        free each output's data once sent, deallocate_output_tensor) - DDP_BUCKET_BYTES' neighbour.
#   fsdp2                True: torch.distributed.pipelining as torchtitan ran it at the end of 2024 (torch 2.6,
#                        torch/distributed/pipelining/stage.py): forward_one_chunk appends every micro-batch's output
#                        to output_chunks, which clear_runtime_states empties only at the next step() (every stage
#                        until pytorch PR #153383 of 2025-05 kept only the last stage's); the last stage's outputs
#                        are the bf16 logits, kept (detached, PR #138504) to be merged and returned by step().
#                        _prepare_forward_infra / _prepare_backward_infra allocate one receive buffer per micro-batch
#                        (args_recv_info[chunk] for the activation into every non-first stage, grad_recv_info[chunk]
#                        for the gradient into every non-last stage), kept for the whole run. A non-first stage's
#                        receive buffer is its first layer's saved input while that micro-batch is in flight.
PIPELINE_KEEPS_STAGE_OUTPUTS = {"megatron": False, "deepspeed": False, "fsdp2": True}


def pipeline_stage_bytes(accounting: str, m, vpp, boundary_bytes, logits_bytes, has_first, has_last, chunks_held):
    """Bytes a pipeline rank's stage runtime holds beside its layers' activations (pp > 1), by framework.

    m micro-batches per step, vpp stages on the rank, boundary_bytes one stage-boundary activation (e·b·s/cp·h, /t
    with sequence parallelism), logits_bytes one micro-batch's 16-bit logits on the last stage (e·b·s/cp·V/t),
    has_first / has_last: the rank holds stage 0 / the last stage, chunks_held: (micro-batch, stage) activation sets
    in flight at the peak (inflight_chunks). PIPELINE_KEEPS_STAGE_OUTPUTS False: 2 boundary activations. True
    (torch.distributed.pipelining, end of 2024): per stage, m receive buffers for the activation (non-first stages)
    and m for its gradient (non-last), the m outputs of the step (boundary activations, or the logits on the last
    stage), less the receive buffers already counted as a held chunk's first-layer input. Vectorised."""
    keep = PIPELINE_KEEPS_STAGE_OUTPUTS[check_accounting(accounting)]
    b, lg = np.asarray(boundary_bytes, dtype=float), np.asarray(logits_bytes, dtype=float)
    if not keep:
        return 2.0 * b * np.ones(np.shape(m))
    m, v = np.asarray(m, dtype=float), np.asarray(vpp, dtype=float)
    nf, nl = np.asarray(has_first, dtype=float), np.asarray(has_last, dtype=float)
    recv = m * b * ((v - nf) + (v - nl))
    outputs = m * ((v - nl) * b + nl * lg)
    # held chunks on non-first stages: their first layer's saved input is the receive buffer (a share (v-1)/v of
    # rank 0's chunks when it holds stage 0)
    shared = np.asarray(chunks_held, dtype=float) * b * (v - nf) / v
    return recv + outputs - shared

# FP8 GEMM weights held on top of the framework's weights (bytes per parameter of the FP8 layers) and the scaling
# state per FP8 tensor (fp32 values: an amax history + scale + scale_inv), by framework:
#   megatron   0 B and 1024 + 2: the FP8 weights are the primary weights (--fp8-param-gather, every NeMo /
#              Megatron-Bridge FP8 recipe: FP8 data + transpose in place of the bf16 weight), Transformer Engine's
#              DelayedScaling default amax_history_len = 1024 per tensor (input, weight, output gradient).
#   deepspeed  2 B and 1024 + 2: Transformer Engine keeping the 16-bit weight plus its FP8 copy and transpose.
#   fsdp2      0 B and 0: torchtitan's Float8 is torchao's Float8Linear with dynamic scaling ("only dynamic tensor
#              scaling (the default) is supported", torchtitan/float8.py convert_to_float8_training): the weight
#              is cast to float8 inside each forward (and all-gathered in float8 by FSDP2 with
#              enable_fsdp_float8_all_gather, freed after the block like the bf16 one), its amax computed on the
#              fly; no persistent copy and no amax history. What a Float8Linear saves for backward lives inside
#              the checkpointed block, as every torchtitan Float8 run uses activation checkpointing.
FP8_WEIGHT_COPY = {"megatron": (0.0, 1026.0), "deepspeed": (2.0, 1026.0), "fsdp2": (0.0, 0.0)}

# The same for MXFP8 (dtype mxfp8): an MXFP8 weight is a rowwise and a columnwise FP8 copy, each with one E8M0 scale
# byte per 32 elements (Transformer Engine's MXFP8 recipe: the two are quantized independently; 2·(1 + 1/32) =
# 2.0625 B per parameter), and no scaling state (each scale is local to its block: no amax history).
#   megatron   0.0625 B: Megatron-Bridge's bf16_with_mxfp8_mixed sets fp8_param_gather and
#              reuse_grad_buf_for_mxfp8_param_ag: the MXFP8 weight (2.0625 B) is the model's parameter, in place of the
#              16-bit one parsim's accounting counts (2 B), and the bf16 all-gather lands in the gradient buffer (no
#              buffer of its own). Same place as the fp8 entry's FP8 data + transpose in place of the bf16 weight,
#              plus the scales.
#   deepspeed  2.0625 B: Transformer Engine keeping the 16-bit weight plus its cached MXFP8 copies.
#   fsdp2      0 B: torchao's MX training casts inside each forward like its Float8Linear (no persistent copy;
#              not sourced beyond that structure).
MXFP8_WEIGHT_COPY = {"megatron": (2.0 * (1.0 + 1.0 / 32) - 2.0, 0.0), "deepspeed": (2.0 * (1.0 + 1.0 / 32), 0.0),
                     "fsdp2": (0.0, 0.0)}

# Where an MoE layer applies its routing probabilities, by framework (parsim.layer._mlp_ops: what the combine keeps):
#   megatron   in the experts' activation: Megatron-Core's TEGroupedMLP (megatron/core/transformer/moe/experts.py)
#              runs bias_act_func -> weighted_bias_swiglu_impl(intermediate_parallel, bias_parallel, permuted_probs)
#              with moe_apply_probs_on_input = False (the default, "Apply probs on input of experts instead of
#              applying after activation and glu"), and the all-to-all dispatcher's combine unpermutes without
#              probabilities: the combine keeps no [tokens·top_k, hidden] tensor.
#   deepspeed, fsdp2   after the experts, at the combine (parsim's torch backend, backends/torchdist/model.py MoE:
#              index_add of out * w): the top-k expert outputs are kept for the probabilities' gradient.
MOE_PROBS_IN_ACTIVATION = {"megatron": True, "deepspeed": False, "fsdp2": False}


# ---------------------------------------------------------------- in-flight activations per rank

def inflight_chunks(schedule_code, pp, vpp, m, rank):
    """Peak (micro-batch, stage) activation sets pipeline rank ``rank`` holds, as torch 2.13's
    schedules order the ops (parsim.schedules.pipeline.peak_inflight_per_rank gives the same, op by op;
    a test checks them over a grid). One set = one stage's layers for one micro-batch.

      GPipe        m                              (all forwards before any backward)
      1F1B         min(p - r, m)                  (p-1-r warm-up forwards + 1; Narayanan et al. 2021 §2.2)
      interleaved  min(warm + 1, m·v), warm = min((v-1)·R + 2(p-1-r), m·v), R = m // max(1, m // p)
                   (torch's _get_warmup_ops; rank 0 with p | m: p·v + p - 1, Korthikanti et al. 2022 §4.2.3)
      ZB-V         min(m + 1 + r, 2m, 2p)         (2(p-r)-1 + 2r forwards of its two stages before the
                                                   first W frees one; Qi et al. 2023 §6)
    Vectorised over plans; ``rank`` is an array or scalar."""
    sc = np.asarray(schedule_code)
    p, v, m, r = (np.asarray(x, dtype=np.int64) for x in (pp, vpp, m, rank))
    n = m * v
    R = m // np.maximum(1, m // np.maximum(p, 1))
    warm = np.minimum((v - 1) * R + 2 * (p - 1 - r), n)
    return np.select([sc == 0, sc == 1, sc == 2, sc == 3],
                     [m, np.minimum(p - r, m), np.minimum(warm + 1, n), np.minimum(np.minimum(m + 1 + r, 2 * m), 2 * p)],
                     default=np.minimum(p - r, m)).astype(float)


def inflight_microbatches(schedule_code, pp, vpp, m):
    """Rank 0's in-flight activations in units of the rank's whole share of layers: inflight_chunks / vpp.

    GPipe m; 1F1B min(p, m) (Narayanan et al. 2021 §2.2.1); interleaved p·(1 + (p−1)/(p·v)) when p | m
    (Korthikanti et al. 2022 §4.2.3); ZB-V min(m + 1, 2p)/2, about p."""
    return inflight_chunks(schedule_code, pp, vpp, m, 0) / np.asarray(vpp, dtype=float)


def last_stage_inflight(schedule_code, m):
    """Micro-batches whose output (the logits) the last stage holds at its peak: m for GPipe, else 1
    (1F1B, interleaved and ZB-V run a micro-batch's backward on the last stage right after its
    forward; parsim.schedules.pipeline.peak_inflight agrees)."""
    return np.where(np.asarray(schedule_code) == 0, np.asarray(m, dtype=float), 1.0)


# ---------------------------------------------------------------- capacity and headroom

def default_headroom_bytes(capacity_bytes):
    """Bytes reserved outside what the model accounts for, by default: CUDA context and library
    workspaces + NCCL buffers (fixed) + a fraction of the capacity for allocator fragmentation
    (data with its sources: parsim/data/memory.yaml). Vectorised over capacities."""
    h = headroom_data()
    return h["fixed_GiB"] * 2 ** 30 + h["fragmentation_fraction"] * np.asarray(capacity_bytes, dtype=float)


@functools.lru_cache(maxsize=None)
def headroom_data() -> dict:
    """The default headroom's terms (parsim/data/memory.yaml, key ``headroom``)."""
    import yaml
    d = yaml.safe_load((Path(__file__).parent.parent / "data" / "memory.yaml").read_text())["headroom"]
    return {"fixed_GiB": float(d["cuda_context_GiB"]) + float(d["nccl_buffers_GiB"]),
            "fragmentation_fraction": float(d["fragmentation_fraction"]), "source": str(d.get("source", ""))}


# ---------------------------------------------------------------- a pipeline rank's memory over its op order

# Columns of pipeline_moments: what a rank holds at one moment of its op order, in counts.
MOMENT_TERMS = ("chunks", "last_chunks", "stages_with_grads", "last_outputs", "outputs", "last_backward", "backward")
# Largest op order walked per rank (2·m·vpp ops, 3 with a split backward); beyond it the closed form (every term at
# its own peak, summed) stands in: an upper bound.
MAX_MOMENT_OPS = 1 << 14


@functools.lru_cache(maxsize=16)
def _schedule(name: str, pp: int, m: int, vpp: int):
    from parsim.schedules.pipeline import build_schedule
    return build_schedule(name, pp, m, vpp)


@functools.lru_cache(maxsize=4096)
def pipeline_moments(schedule_code: int, pp: int, vpp: int, m: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s memory terms at every moment of its op order (torch's, parsim.schedules.pipeline), as counts:
    an array [moments, len(MOMENT_TERMS)] - activation sets in flight (all its stages; of the last stage), local
    stages that have run a backward (their gradients exist from then on: FSDP2 accumulates the unsharded gradient
    from a stage's first backward, torchtitan zeroes them - set to None - every step), forwards run so far on the
    last stage and on its other stages (the outputs torch.distributed.pipelining keeps until the next step), and
    whether the moment is inside the last stage's loss backward or inside a backward's layers (a recomputed layer's
    working set; the micro-batch's log-probabilities are freed by then). Moments are taken inside every backward
    (the last stage's: at its loss, then in its layers) before it frees its activation set, and after every op. None when the order is longer than
    MAX_MOMENT_OPS (the caller sums the terms' own peaks instead)."""
    from parsim.plan import SCHEDULES
    from parsim.schedules.pipeline import B as KB, F as KF, W as KW, schedule_ops
    name = SCHEDULES[int(schedule_code)]
    if schedule_ops(name, pp, vpp, m) > MAX_MOMENT_OPS * pp:
        return None
    s = _schedule(name, pp, m, vpp)
    lo, hi = s.rank_offsets[rank], s.rank_offsets[rank + 1]
    last = s.num_stages - 1
    release = KW if s.split_backward else KB
    inflight, fwd, grads = {}, {}, set()
    rows = []

    def row(bwd, last_bwd, loss_done=0):
        return (sum(inflight.values()), inflight.get(last, 0) - loss_done, len(grads), fwd.get(last, 0),
                sum(v for k, v in fwd.items() if k != last), last_bwd, bwd)

    for kind, st in zip(s.kind[lo:hi], s.stage[lo:hi]):
        st = int(st)
        if kind == KF:
            inflight[st] = inflight.get(st, 0) + 1
            fwd[st] = fwd.get(st, 0) + 1
        else:
            if kind == KB and st == last:
                # the loss backward first, then the layers' (their recompute) with that micro-batch's log-probs freed
                rows.append(row(0, 1))
                rows.append(row(1, 0, loss_done=1))
            else:
                rows.append(row(1, 0))
            if kind == release:
                inflight[st] -= 1
                grads.add(st)
            elif kind == KW:
                grads.add(st)
        rows.append(row(0, 0))
    return np.array(rows, dtype=float)
