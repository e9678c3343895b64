"""Plan: how a model is split over devices. Validation and enumeration of valid plans.

A Plan is the third input, apart from what the model is (ModelSpec) and what the
machine is (Cluster). Rank placement convention (Megatron's): tp innermost, then cp, then pp,
then dp — rank = dp_index·(pp·cp·tp) + pp_index·(cp·tp) + cp_index·tp + tp_index; the ep ranks of an
expert group are data-parallel ranks (ep | dp). Validity is parsim.rules' (``validate`` wraps it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from parsim.errors import ParsimError, closest

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbv")
GRAD_SYNC = ("ring", "tree", "hd", "hierarchical", "ps", "native")
RECOMPUTE = ("none", "selective", "full", "selective-op")   # parsim.layer.POLICIES states what each keeps and re-runs
# The recompute policies each framework (named by its memory accounting, parsim.costs.memory.ACCOUNTING) runs, what
# `parsim plan` searches under it: Megatron-LM (and Megatron-DeepSpeed, its fork) --recompute-granularity selective
# (the attention core) or full; torchtitan (FSDP2) activation_checkpoint mode "selective" with option "op" (op-level
# SAC) or "full". Trial 2026-11-30: plan #1 under the megatron accounting was a selective-op plan, which Megatron-LM
# cannot run.
FRAMEWORK_RECOMPUTE = {"megatron": ("none", "selective", "full"), "deepspeed": ("none", "selective", "full"),
                       "fsdp2": ("none", "full", "selective-op")}
KERNELS = ("fused", "eager")   # element-wise kernels: fused (hand-written or torch.compile) or PyTorch eager
# fp8: GEMMs of the layers in FP8 with per-tensor scales (Transformer Engine), the rest bf16; mxfp8: the same GEMMs in
# MXFP8 (FP8 with an E8M0 scale per 32 elements, Blackwell only; parsim.layer prices what differs)
DTYPES = ("bf16", "fp16", "fp32", "fp8", "mxfp8")
FP8_DTYPES = ("fp8", "mxfp8")  # the dtypes whose layer GEMMs run on FP8 tensor cores (their codes: parsim.layer.FP8_CODES)
MAX_DEGREE = 2 ** 20          # per parallel degree (a million devices)
MAX_GPUS = 2 ** 24            # dp·tp·pp·cp
MAX_BATCH = 2 ** 31           # sequences (micro-batch, global batch) and tokens per sequence
_INT_LIMITS = {"dp": MAX_DEGREE, "tp": MAX_DEGREE, "pp": MAX_DEGREE, "vpp": 1024, "ep": MAX_DEGREE,
               "cp": MAX_DEGREE, "micro_batch": MAX_BATCH, "recompute_every": MAX_DEGREE,
               "global_batch": MAX_BATCH, "seq_len": MAX_BATCH}


def _flag(field_name: str) -> str:
    return field_name.replace("_", "-")


@dataclass(frozen=True)
class Plan:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    vpp: int = 1                     # virtual stages (model chunks) per pipeline rank
    micro_batch: int = 1             # sequences per micro-batch
    global_batch: int = 1            # sequences per optimizer step
    seq_len: int | None = None       # None: the model's
    dtype: str = "bf16"
    schedule: str = "1f1b"
    grad_sync: str = "native"
    zero: int = 0
    recompute: str = "none"
    sequence_parallel: bool = False
    overlap: bool = True             # overlap gradient sync with backward
    flash_attention: bool = True     # attention scores never materialised (Dao et al. 2022)
    ep: int = 1                      # expert parallel: experts sharded over ep of the dp ranks (ep | dp)
    cp: int = 1                      # context parallel: each sequence split over cp ranks (ring attention)
    recompute_every: int = 1         # with recompute full: every N-th layer only (torchtitan selective_ac_option = N)
    kernels: str = "fused"           # element-wise/norm kernels: fused (Megatron/TE, torch.compile) or eager PyTorch
    async_tp: bool = False           # TP all-gather / reduce-scatter micro-pipelined with the TP GEMMs (torchtitan async TP)
    # tensor-parallel collectives pipelined with the GEMMs they feed or drain (Megatron-Core / Transformer Engine
    # tp_comm_overlap with userbuffers; needs sequence parallelism): all but one of tp chunks hide under the GEMM.
    # Megatron's counterpart of torchtitan's async_tp (one or the other: parsim.rules)
    tp_overlap: bool = False
    # pipeline send/recv posted ahead and overlapped with the next chunk's compute (Megatron-Core overlap_p2p_comm,
    # the NeMo / Megatron-Bridge default for interleaved schedules): only what a chunk's forward does not cover shows
    pp_overlap: bool = False

    def __post_init__(self):
        """Each field's type and range, checked on construction (one line naming the field)."""
        import numbers
        for k, hi in _INT_LIMITS.items():
            v = getattr(self, k)
            if k == "seq_len" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ParsimError(f"{_flag(k)} = {v!r} ({type(v).__name__}): expected a positive integer")
            if not 1 <= int(v) <= hi:
                raise ParsimError(f"{_flag(k)} = {v}: expected a positive integer <= {hi:,}")
            object.__setattr__(self, k, int(v))        # numpy integers become int
        for k in ("sequence_parallel", "overlap", "flash_attention", "async_tp", "tp_overlap", "pp_overlap"):
            v = getattr(self, k)
            if not isinstance(v, (bool, np.bool_)):
                raise ParsimError(f"{_flag(k)} = {v!r} ({type(v).__name__}): expected True or False")
            object.__setattr__(self, k, bool(v))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("grad-sync", self.grad_sync, GRAD_SYNC)
        _choice("recompute", self.recompute, RECOMPUTE)
        _choice("dtype", self.dtype, DTYPES)
        _choice("kernels", self.kernels, KERNELS)
        if isinstance(self.zero, bool) or not isinstance(self.zero, numbers.Integral) or int(self.zero) not in (0, 1, 2, 3):
            raise ParsimError(f"zero = {self.zero!r}: expected one of 0, 1, 2, 3")
        object.__setattr__(self, "zero", int(self.zero))
        if self.gpus > MAX_GPUS:
            raise ParsimError(f"dp·tp·pp·cp = {self.dp}·{self.tp}·{self.pp}·{self.cp} = {self.gpus:,} devices: "
                              f"expected at most {MAX_GPUS:,}")

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def microbatches(self) -> int:
        """Micro-batches per pipeline per step: global_batch / (micro_batch · dp)."""
        return self.global_batch // (self.micro_batch * self.dp)

    def with_(self, **kw) -> "Plan":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        s = f"dp{self.dp}·tp{self.tp}·pp{self.pp}"
        if self.vpp > 1:
            s += f"·v{self.vpp}"
        if self.ep > 1:
            s += f"·ep{self.ep}"
        if self.cp > 1:
            s += f"·cp{self.cp}"
        rc = self.recompute + (f"/{self.recompute_every}" if self.recompute_every > 1 else "")
        return (s + f" mb{self.micro_batch} {self.schedule} {self.grad_sync} z{self.zero} rc:{rc}"
                + (" sp" if self.sequence_parallel else "") + (" eager" if self.kernels == "eager" else "")
                + (" async-tp" if self.async_tp else "") + (" tpo" if self.tp_overlap else "")
                + (" ppo" if self.pp_overlap else ""))


def _choice(name, value, options):
    if value not in options:
        raise ParsimError(f"{name} = {value!r}: expected one of {', '.join(map(str, options))}{closest(str(value), map(str, options))}")


def validate(plan: Plan, model, gpus: int | None = None) -> Plan:
    """Raise ParsimError naming the first thing wrong with `plan` for `model` on `gpus` devices.

    The rule book is ``parsim.rules`` (one set of rules for predict, search, simulate, run and the
    backend); the plan's own fields were checked when it was constructed."""
    from parsim.rules import check
    return check(plan, model, gpus)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
