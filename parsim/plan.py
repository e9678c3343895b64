"""Plan: how a model is split over devices. Validation and enumeration of valid plans.

A Plan is the third input, apart from what the model is (ModelSpec) and what the
machine is (Cluster). Rank placement convention (Megatron's): tp innermost, then pp,
then dp — rank = dp_index·(pp·tp) + pp_index·tp + tp_index.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from parsim.errors import ParsimError, closest

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbv")
GRAD_SYNC = ("ring", "tree", "hd", "hierarchical", "ps", "native")
RECOMPUTE = ("none", "selective", "full")
DTYPES = ("bf16", "fp16", "fp32", "fp8")   # fp8: GEMMs of the layers in FP8 (Transformer Engine), the rest bf16


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
        return s + f" mb{self.micro_batch} {self.schedule} {self.grad_sync} z{self.zero} rc:{self.recompute}" + (" sp" if self.sequence_parallel else "")


def _choice(name, value, options):
    if value not in options:
        raise ParsimError(f"{name} = {value!r}: expected one of {', '.join(map(str, options))}{closest(str(value), map(str, options))}")


def validate(plan: Plan, model, gpus: int | None = None) -> Plan:
    """Raise ParsimError naming the first thing wrong with `plan` for `model` on `gpus` devices."""
    for k in ("dp", "tp", "pp", "vpp", "micro_batch", "global_batch", "ep", "cp"):
        v = getattr(plan, k)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ParsimError(f"{k.replace('_', '-')} = {v!r}: expected a positive integer")
    if plan.seq_len is not None and (not isinstance(plan.seq_len, int) or plan.seq_len <= 0):
        raise ParsimError(f"seq-len = {plan.seq_len!r}: expected a positive integer")
    _choice("schedule", plan.schedule, SCHEDULES)
    _choice("grad-sync", plan.grad_sync, GRAD_SYNC)
    _choice("recompute", plan.recompute, RECOMPUTE)
    _choice("dtype", plan.dtype, DTYPES)
    _choice("zero", plan.zero, (0, 1, 2, 3))
    if gpus is not None and plan.gpus != gpus:
        raise ParsimError(f"tp({plan.tp}) * pp({plan.pp}) * dp({plan.dp})"
                          + (f" * cp({plan.cp})" if plan.cp > 1 else "") + f" = {plan.gpus} != gpus({gpus})")
    if model.heads % plan.tp:
        raise ParsimError(f"heads ({model.heads}) of {model.name} is not divisible by tp ({plan.tp})")
    if model.kv_heads % plan.tp:
        raise ParsimError(f"kv_heads ({model.kv_heads}) of {model.name} is not divisible by tp ({plan.tp})")
    if model.ffn_hidden % plan.tp:
        raise ParsimError(f"ffn_hidden ({model.ffn_hidden}) of {model.name} is not divisible by tp ({plan.tp})")
    # Expert parallelism (Megatron's convention): the ep ranks of an expert group are data-parallel
    # ranks of the dense part, so ep divides dp and the experts; gpus stay dp·tp·pp.
    if plan.ep > 1 and not model.experts:
        raise ParsimError(f"ep = {plan.ep}: {model.name} has no experts (dense model), expected ep = 1")
    if plan.ep > 1 and model.experts % plan.ep:
        raise ParsimError(f"ep ({plan.ep}) does not divide the experts ({model.experts}) of {model.name}")
    if plan.dp % plan.ep:
        raise ParsimError(f"ep ({plan.ep}) does not divide dp ({plan.dp}): expert-parallel ranks are data-parallel ranks")
    if model.experts and model.expert_ffn_hidden % plan.tp:
        raise ParsimError(f"expert_ffn_hidden ({model.expert_ffn_hidden}) of {model.name} is not divisible by tp ({plan.tp})")
    if model.layers % (plan.pp * plan.vpp):
        raise ParsimError(f"layers ({model.layers}) of {model.name} is not divisible by pp·vpp = {plan.pp}·{plan.vpp} = {plan.pp * plan.vpp}")
    if plan.global_batch % (plan.micro_batch * plan.dp):
        raise ParsimError(f"global-batch ({plan.global_batch}) is not divisible by micro-batch·dp = "
                          f"{plan.micro_batch}·{plan.dp} = {plan.micro_batch * plan.dp}")
    if plan.schedule == "interleaved" and plan.vpp < 2:
        raise ParsimError(f"schedule interleaved needs vpp > 1, got vpp = {plan.vpp}")
    if plan.schedule in ("gpipe", "1f1b") and plan.vpp != 1:
        raise ParsimError(f"schedule {plan.schedule} runs one stage per rank: vpp = {plan.vpp}, expected 1 (use interleaved)")
    if plan.schedule == "zbv" and plan.vpp != 2:
        raise ParsimError(f"schedule zbv places two stages per rank (V shape): vpp = {plan.vpp}, expected 2")
    if plan.schedule in ("interleaved", "zbv") and plan.microbatches % plan.pp:
        raise ParsimError(f"schedule {plan.schedule} needs micro-batches ({plan.microbatches}) to be a multiple of pp ({plan.pp})")
    if plan.sequence_parallel and plan.tp == 1:
        raise ParsimError("sequence-parallel needs tp > 1, got tp = 1")
    s = plan.seq_len or model.seq_len
    if plan.sequence_parallel and s % plan.tp:
        raise ParsimError(f"sequence-parallel: seq-len ({s}) is not divisible by tp ({plan.tp})")
    # Context parallelism: ranks tp-innermost, then cp, then pp, then dp; ring attention on flash kernels.
    if s % plan.cp or (plan.sequence_parallel and s % (plan.cp * plan.tp)):
        raise ParsimError(f"cp ({plan.cp}) does not divide seq-len ({s})" if s % plan.cp else
                          f"sequence-parallel with cp: seq-len ({s}) is not divisible by cp·tp = {plan.cp}·{plan.tp}")
    if plan.cp > 1 and not plan.flash_attention:
        raise ParsimError(f"cp = {plan.cp} runs ring attention on flash-attention kernels: drop --no-flash")
    return plan


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
