"""The one rule book for plans: what a valid (dp, tp, pp, vpp, ep, cp, schedule, micro-batch, dtype) split is.

Every consumer asks this module — ``parsim.predict``, ``parsim.search`` (vectorised over its
table of candidates), ``parsim simulate``, ``parsim run`` and the torch backend — so a plan that
search ranks can be predicted, simulated and run, and a plan one of them refuses is refused by
all of them, with the same one-line reason. Modelled on torchtitan's ``ParallelDims`` (a frozen
object that validates all degrees once, every operand in the message).

Each rule is written once, as a vectorised predicate over a table of plans (the dict of
arrays ``parsim.predict.price`` takes) plus a message for one row:
  * ``reject(cols, model)``: the mask of valid rows and the count of rejected rows by their first
    failing rule (search);
  * ``check(plan, model, gpus)``: raise ``ParsimError`` with the first failing rule's message
    (predict, simulate, run, the backend); it evaluates the very same predicates on a one-row table.

The pipeline rules are what torch 2.13's schedules accept (the reference, read from
``torch/distributed/pipelining/schedules.py``):
  * ``Schedule1F1B.__init__``: ``n_microbatches < num_stages`` raises ValueError -> m >= pp;
  * ``ScheduleGPipe``: no constraint on m;
  * ``ScheduleInterleaved1F1B.__init__``: ``number_of_rounds = max(1, m // pp)`` and
    ``m % number_of_rounds != 0`` raises -> pp=4: m=6 accepted (1 round), m=10 accepted (2 rounds),
    m=9 refused (2 rounds); m need not be a multiple of pp;
  * ``ScheduleZBVZeroBubble.__init__``: exactly 2 stages per rank (``n_local_stages != 2`` raises);
    any m >= 1 (it pads its order to max(2p-1, m) micro-batches and drops the extra).
Stage placement: loop (stage s on rank s mod pp) for GPipe, 1F1B, interleaved; V for ZB-V
(rank r holds stages r and 2pp-1-r; ``generate_stage_to_rank_mapping(style="v")``).

Layer assignment (``stage_layer_counts``), for S = pp·vpp stages and L layers:
  * S divides L: L/S layers on every stage (Megatron-LM's default split);
  * otherwise: the embedding and the output head each count as one layer (torchtitan's
    ``generate_llm_fqn_per_model_part(input_weight=1, output_weight=1)``, Megatron-LM's
    ``--account-for-embedding-in-pipeline-split`` / ``--account-for-loss-in-pipeline-split``):
    the L + 2 units are spread evenly, the first (L + 2) mod S stages taking one more, then
    stage 0 and stage S-1 give up the unit of the embedding and of the head. Llama 3 405B
    (126 layers) on 16 stages: 128/16 = 8 units, so 7 layers on the first and last stage and 8
    on the 14 others. Every stage must hold at least one layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from parsim.errors import ParsimError
from parsim.plan import DTYPES, GRAD_SYNC, KERNELS, RECOMPUTE, SCHEDULES

GPIPE, ONE_F_ONE_B, INTERLEAVED, ZBV = range(4)
FP8, MXFP8 = DTYPES.index("fp8"), DTYPES.index("mxfp8")
FULL, SEL_OP, EAGER = RECOMPUTE.index("full"), RECOMPUTE.index("selective-op"), KERNELS.index("eager")


# ---------------------------------------------------------------- layer assignment

def stage_layer_counts(layers: int, num_stages: int) -> np.ndarray:
    """Layers of each of ``num_stages`` pipeline stages (int array, stage order); see the module doc.

    Raises ParsimError when a stage would hold no layer."""
    L, S = int(layers), int(num_stages)
    if S < 1 or L < 1:
        raise ParsimError(f"layers ({L}) over stages ({S}): expected positive integers")
    if L % S == 0:
        return np.full(S, L // S, dtype=np.int64)
    q, x = divmod(L + 2, S)
    units = q + (np.arange(S) < x)
    units[0] -= 1
    units[-1] -= 1
    if units.min() < 1:
        raise ParsimError(f"layers ({L}) cannot be cut into {S} pipeline stages of at least one layer each: "
                          f"expected layers a multiple of {S}, or layers + 2 >= 2·{S} = {2 * S}")
    return units.astype(np.int64)


def stage_layer_ranges(layers: int, num_stages: int) -> list[range]:
    """Global layer indices of every stage (consecutive, stage order)."""
    ends = np.cumsum(stage_layer_counts(layers, num_stages))
    return [range(int(e - n), int(e)) for e, n in zip(ends, stage_layer_counts(layers, num_stages))]


def stage_to_rank(pp: int, vpp: int, schedule: str) -> np.ndarray:
    """Pipeline rank of every stage: V shape for zbv (rank r holds r and 2pp-1-r), else loop (s mod pp)."""
    if schedule == "zbv":
        return np.concatenate([np.arange(pp), np.arange(pp)[::-1]]).astype(np.int64)
    return (np.arange(pp * vpp) % pp).astype(np.int64)


def rank_layers(layers, pp, vpp, v_shape):
    """(first, last, middle) layers per pipeline rank, vectorised over plans (numpy arrays).

    first: rank 0 (holds stage 0, the embedding; with ZB-V's V or pp = 1 also the last stage and the
    output head). last: the rank holding the last stage when that is not rank 0 (pp - 1 in a loop
    placement), else 0. middle: the most layers on any other rank (rank 1 in a loop, the heavier of
    ranks 1 and pp-1 in a V), 0 when there is none. Same assignment as ``stage_layer_counts``."""
    L = np.asarray(layers, dtype=np.int64)
    p, v = np.asarray(pp, dtype=np.int64), np.asarray(vpp, dtype=np.int64)
    V = np.asarray(v_shape, dtype=bool)
    S = p * v
    even = L % S == 0
    q, x = (L + 2) // S, (L + 2) % S

    def loop(r):       # stages r, r+p, ..., r+(v-1)p; those below x take one more unit
        return v * q + np.clip(-((r - x) // p), 0, v)      # ceil((x - r)/p) clipped to [0, v]

    def vee(r):        # stages r and 2p-1-r
        return 2 * q + (r < x) + (2 * p - 1 - r < x)

    first_u = np.where(V, vee(0) - 2, loop(0) - 1 - (p == 1))
    last_u = np.where(V | (p == 1), 0, loop(p - 1) - 1)
    mid_u = np.where(V, np.maximum(vee(1), vee(p - 1)), loop(1))
    has_mid = np.where(V, p > 1, p > 2)
    per_rank = np.where(even, L // np.maximum(p, 1), 0)
    first = np.where(even, per_rank, first_u)
    last = np.where(V | (p == 1), 0, np.where(even, per_rank, last_u))
    mid = np.where(has_mid, np.where(even, per_rank, mid_u), 0)
    return first, last, mid


# ---------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Rule:
    """One rule: ``bad(c)`` is True on the rows of table ``c`` that break it; ``message(c, i)`` is the
    one-line reason for row i, every operand in it. ``label`` names it in search's rejection counts.
    ``needs_device``: the rule reads the device profile (skipped where none is given).
    ``needs_model``: the rule reads the model (skipped by the pipeline-only check, as are ``plan_only``
    rules: a one-rank pipeline of two stages is a schedule torch builds, but a plan with pp = 1 has no
    pipeline group to run it on). ``scope``: "plan"
    rules hold everywhere; "run" rules are the torch backend's own wiring (checked by run only)."""
    label: str
    bad: Callable
    message: Callable
    needs_model: bool = False
    scope: str = "plan"
    plan_only: bool = False      # about mapping a plan onto ranks, not about the schedule (check_pipeline skips it)
    needs_device: bool = False   # reads the device profile (skipped when none is given)


def _i(c, k, i):
    return int(np.asarray(c[k]).reshape(-1)[i])


def _sched_name(c, i):
    return SCHEDULES[_i(c, "schedule", i)]


def _tp_divides(c):
    M, tp = c["model"], c["tp"]
    return (M.heads % tp != 0) | (M.kv_heads % tp != 0) | (M.ffn_hidden % tp != 0)


def _tp_msg(c, i):
    M, t = c["model"], _i(c, "tp", i)
    for k in ("heads", "kv_heads", "ffn_hidden"):
        if getattr(M, k) % t:
            return f"{k} ({getattr(M, k)}) of {M.name} is not divisible by tp ({t})"
    return f"tp ({t}) does not divide the model"


def _stages_bad(c):
    L, S = c["model"].layers, c["pp"] * c["vpp"]
    return ~(((L % S == 0) & (L >= S)) | (L + 2 >= 2 * S))


def _stages_msg(c, i):
    L, p, v = c["model"].layers, _i(c, "pp", i), _i(c, "vpp", i)
    S = p * v
    return (f"layers ({L}) of {c['model'].name} cannot be cut into pp·vpp = {p}·{v} = {S} pipeline stages of at "
            f"least one layer each: expected layers a multiple of {S}, or layers + 2 >= 2·{S} = {2 * S} (uneven split, "
            f"the embedding and the output head counting as one layer each)")


def _batch_msg(c, i):
    gb, mb, dp = _i(c, "gb", i), _i(c, "mb", i), _i(c, "dp", i)
    return (f"global-batch ({gb}) is not divisible by micro-batch·dp = {mb}·{dp} = {mb * dp}")


def _vpp_sched_bad(c):
    s, v = c["schedule"], c["vpp"]
    return (((s == GPIPE) | (s == ONE_F_ONE_B)) & (v != 1)) | ((s == INTERLEAVED) & (v < 2)) | ((s == ZBV) & (v != 2))


def _vpp_sched_msg(c, i):
    s, v = _sched_name(c, i), _i(c, "vpp", i)
    if s in ("gpipe", "1f1b"):
        return f"schedule {s} runs one stage per rank: vpp = {v}, expected 1 (use interleaved or zbv)"
    if s == "interleaved":
        return f"schedule interleaved needs vpp >= 2 stages per rank, got vpp = {v} (use 1f1b for one)"
    return (f"schedule zbv places exactly 2 stages per rank (a V; torch ScheduleZBVZeroBubble): vpp = {v}, "
            "expected 2")


def _m(c):
    return c["gb"] // np.maximum(c["mb"] * c["dp"], 1)


def _rounds(c):
    return np.maximum(1, _m(c) // np.maximum(c["pp"], 1))


def _interleaved_msg(c, i):
    m, p = int(_m(c).reshape(-1)[i]), _i(c, "pp", i)
    r = max(1, m // p)
    return (f"schedule interleaved needs micro-batches m ({m}) to be a multiple of the number of rounds "
            f"max(1, m // pp) = max(1, {m} // {p}) = {r} (torch ScheduleInterleaved1F1B); e.g. m = {r * p}")


def _ep_dense_msg(c, i):
    return f"ep = {_i(c, 'ep', i)}: {c['model'].name} has no experts (dense model), expected ep = 1"


def _ep_experts_msg(c, i):
    M = c["model"]
    return f"ep ({_i(c, 'ep', i)}) does not divide the experts ({M.experts}) of {M.name}"


def _expert_ffn_msg(c, i):
    M = c["model"]
    return f"expert_ffn_hidden ({M.expert_ffn_hidden}) of {M.name} is not divisible by tp ({_i(c, 'tp', i)})"


def _cp_seq_msg(c, i):
    s, p, t = _i(c, "seq", i), _i(c, "cp", i), _i(c, "tp", i)
    if s % p:
        return f"cp ({p}) does not divide seq-len ({s})"
    return f"sequence-parallel with cp: seq-len ({s}) is not divisible by cp·tp = {p}·{t}"


def fp8_device_message(device, dtype: str = "fp8") -> str:
    """The one-line refusal of dtype fp8 on a device without FP8 tensor cores, or of mxfp8 on one whose tensor cores
    do not run MXFP8 (block-scaled FP8: Blackwell, SM 10.0+, per Transformer Engine's MXFP8 recipe; Hopper has FP8
    with per-tensor scales only)."""
    peaks = ", ".join(sorted(device.peak_flops))
    if dtype == "mxfp8":
        alt = "fp8 (per-tensor scaling)" if device.peak_flops.get("fp8") else "bf16"
        return (f"dtype mxfp8: device {device.name} has no MXFP8 (block-scaled FP8) tensor cores (peaks: {peaks}; "
                f"MXFP8 runs natively on Blackwell, SM 10.0+, not on Hopper or earlier); use {alt}")
    return f"dtype fp8: device {device.name} has no FP8 tensor cores (peaks: {peaks}); use bf16"


def _sp_seq_msg(c, i):
    return f"sequence-parallel: seq-len ({_i(c, 'seq', i)}) is not divisible by tp ({_i(c, 'tp', i)})"


def _positions_bad(c):
    m = c["model"]
    return (c["seq"] > m.max_positions) if m.position == "learned" else np.zeros(np.shape(c["seq"]), dtype=bool)


def _positions_msg(c, i):
    m = c["model"]
    return (f"seq-len {_i(c, 'seq', i):,} > the {m.max_positions:,} learned positions of {m.name}: a longer sequence "
            f"needs a larger position table (max_positions in a model file), it cannot be trained as the model is")


RULES = (
    # learned absolute positions (GPT-2/3, OPT): one table row per position, so no sequence longer than the table
    Rule("seq-len beyond the model's learned positions", _positions_bad, _positions_msg, needs_model=True),
    Rule("tp does not divide heads, kv_heads or ffn_hidden", _tp_divides, _tp_msg, needs_model=True),
    # Expert parallelism (Megatron's convention): the ep ranks of an expert group are data-parallel
    # ranks of the dense part, so ep divides dp and the experts; gpus stay dp·tp·pp·cp.
    Rule("ep > 1 on a dense model", lambda c: (c["ep"] > 1) & (not c["model"].experts), _ep_dense_msg,
         needs_model=True),
    Rule("ep does not divide the experts",
         lambda c: (c["ep"] > 1) & (c["model"].experts % np.maximum(c["ep"], 1) != 0), _ep_experts_msg, needs_model=True),
    Rule("ep does not divide dp", lambda c: c["dp"] % c["ep"] != 0,
         lambda c, i: (f"ep ({_i(c, 'ep', i)}) does not divide dp ({_i(c, 'dp', i)}): expert-parallel ranks are "
                       "data-parallel ranks")),
    Rule("tp does not divide expert_ffn_hidden",
         lambda c: bool(c["model"].experts) & (c["model"].expert_ffn_hidden % c["tp"] != 0), _expert_ffn_msg,
         needs_model=True),
    Rule("layers cannot be cut into pp·vpp stages of at least one layer", _stages_bad, _stages_msg, needs_model=True),
    Rule("global batch not divisible by micro_batch·dp", lambda c: c["gb"] % (c["mb"] * c["dp"]) != 0, _batch_msg),
    Rule("vpp > 1 needs pp > 1", lambda c: (c["pp"] == 1) & (c["vpp"] > 1),
         lambda c, i: (f"schedule zbv runs 2 stages per rank (a V) and needs pp > 1, got pp = 1"
                       if _sched_name(c, i) == "zbv" else
                       f"schedule interleaved runs vpp = {_i(c, 'vpp', i)} stages per rank and needs pp > 1, got pp = 1"
                       if _sched_name(c, i) == "interleaved" else
                       f"vpp = {_i(c, 'vpp', i)} stages per rank needs pp > 1, got pp = 1"), plan_only=True),
    Rule("schedule and vpp disagree", _vpp_sched_bad, _vpp_sched_msg),
    Rule("1f1b with fewer micro-batches than pp", lambda c: (c["schedule"] == ONE_F_ONE_B) & (c["pp"] > 1)
         & (_m(c) < c["pp"]),
         lambda c, i: (f"schedule 1f1b needs micro-batches m ({int(_m(c).reshape(-1)[i])}) >= pp ({_i(c, 'pp', i)}) "
                       "(torch Schedule1F1B refuses fewer); use gpipe, interleaved or zbv, or a larger global batch")),
    Rule("interleaved: micro-batches not a multiple of max(1, m // pp)",
         lambda c: (c["schedule"] == INTERLEAVED) & (c["pp"] > 1) & (_m(c) % _rounds(c) != 0), _interleaved_msg),
    Rule("sequence parallel needs tp > 1", lambda c: c["sp"] & (c["tp"] == 1),
         lambda c, i: "sequence-parallel needs tp > 1, got tp = 1"),
    Rule("tp overlap needs sequence parallelism", lambda c: c["tpo"] & ~c["sp"],
         lambda c, i: "tp-overlap (Transformer Engine userbuffers) pipelines sequence-parallel all-gathers and "
                      "reduce-scatters: it needs --sequence-parallel (and tp > 1)"),
    Rule("pp overlap needs the interleaved schedule", lambda c: c["ppo"] & (c["schedule"] != INTERLEAVED),
         lambda c, i: (f"pp-overlap (Megatron's overlap_p2p_comm) overlaps the interleaved schedule's send/recv with "
                       f"the next model chunk: it needs --schedule interleaved (vpp > 1), got {_sched_name(c, i)}")),
    Rule("sequence parallel: seq_len not divisible by tp", lambda c: c["sp"] & (c["seq"] % c["tp"] != 0), _sp_seq_msg),
    # Context parallelism: ranks tp innermost, then cp, then pp, then dp; ring attention on flash kernels.
    Rule("cp does not divide seq_len (or cp·tp with sequence parallel)",
         lambda c: (c["seq"] % c["cp"] != 0) | (c["sp"] & (c["seq"] % (c["cp"] * c["tp"]) != 0)), _cp_seq_msg),
    Rule("cp > 1 without flash attention", lambda c: (c["cp"] > 1) & ~c["flash"],
         lambda c, i: f"cp = {_i(c, 'cp', i)} runs ring attention on flash-attention kernels: drop --no-flash"),
    Rule("fp8 on a device without FP8", lambda c: (c["dtype"] == FP8) & (not c["device"].peak_flops.get("fp8", 0.0)),
         lambda c, i: fp8_device_message(c["device"]), needs_device=True),
    Rule("mxfp8 on a device without MXFP8", lambda c: (c["dtype"] == MXFP8) & (not c["device"].peak_flops.get("mxfp8", 0.0)),
         lambda c, i: fp8_device_message(c["device"], "mxfp8"), needs_device=True),
    # Recompute on every N-th layer is full activation checkpointing of those layers (torchtitan's
    # selective_ac_option = N); N at most the layers (beyond, no layer would be checkpointed).
    Rule("recompute-every > 1 without recompute full", lambda c: (c["rc_every"] > 1) & (c["recompute"] != FULL),
         lambda c, i: (f"recompute-every = {_i(c, 'rc_every', i)} checkpoints every N-th layer fully: it needs "
                       f"recompute full, got recompute {RECOMPUTE[_i(c, 'recompute', i)]}")),
    Rule("recompute-every exceeds the layers", lambda c: c["rc_every"] > c["model"].layers,
         lambda c, i: (f"recompute-every = {_i(c, 'rc_every', i)}: expected at most the layers "
                       f"({c['model'].layers}) of {c['model'].name}"), needs_model=True),
    # Async TP (torchtitan): micro-pipelines the sequence-parallel all-gather / reduce-scatter with the
    # TP GEMMs, which torch.compile's inductor rewrites ("Async TP requires --training.compile",
    # torchtitan parallelize_llama.py): tp > 1, sequence parallel, fused (compiled) kernels.
    Rule("async-tp needs tp > 1 and sequence parallel", lambda c: c["async_tp"] & ((c["tp"] == 1) | ~c["sp"]),
         lambda c, i: (f"async-tp overlaps the sequence-parallel all-gather/reduce-scatter with the TP GEMMs: it "
                       f"needs tp > 1 and sequence-parallel, got tp = {_i(c, 'tp', i)}, sequence-parallel = "
                       f"{bool(np.asarray(c['sp']).reshape(-1)[i])}")),
    Rule("async-tp with eager kernels", lambda c: c["async_tp"] & (c["kernels"] == EAGER),
         lambda c, i: "async-tp is an inductor rewrite (torch.compile): it needs kernels fused, got kernels eager"),
    # Two implementations of one overlap (TP collectives chunked under the GEMMs they feed or drain): Megatron /
    # Transformer Engine's userbuffers (tp-overlap) and torchtitan's inductor rewrite (async-tp); a run has one.
    Rule("tp-overlap with async-tp", lambda c: c["tpo"] & c["async_tp"],
         lambda c, i: ("tp-overlap (Megatron / Transformer Engine userbuffers) and async-tp (torchtitan) are two "
                       "implementations of the same TP overlap: choose one")),
    # the torch backend's own wiring (backends/torchdist/parallel.py), checked by `parsim run`
    Rule("zero >= 2 (FSDP2) with a grad-sync other than native", lambda c: (c["zero"] >= 2) & (c["grad_sync"] != c["native"]),
         lambda c, i: (f"zero {_i(c, 'zero', i)} runs on FSDP2, whose gradient reduce-scatter is its own: "
                       f"grad-sync must be native"), scope="run"),
    Rule("zero 1 with tp > 1", lambda c: (c["zero"] == 1) & (c["tp"] > 1),
         lambda c, i: ("zero 1 (ZeroRedundancyOptimizer) does not take TP-sharded (DTensor) parameters: "
                       f"use tp = 1 or zero 2/3, got tp = {_i(c, 'tp', i)}"), scope="run"),
    Rule("zero >= 2 with pp > 1", lambda c: (c["zero"] >= 2) & (c["pp"] > 1),
         lambda c, i: (f"zero {_i(c, 'zero', i)} (FSDP2) with pp = {_i(c, 'pp', i)} is not wired in the torch "
                       "backend: use pp = 1 or zero 0/1"), scope="run"),
    Rule("fp8 (not run by the torch backend)", lambda c: c["dtype"] == FP8,
         lambda c, i: ("dtype fp8 is not run by this backend (it needs Transformer Engine on FP8 GPUs): "
                       "price it with parsim predict --dtype fp8"), scope="run"),
    Rule("mxfp8 (not run by the torch backend)", lambda c: c["dtype"] == MXFP8,
         lambda c, i: ("dtype mxfp8 is not run by this backend (it needs Transformer Engine on Blackwell GPUs): "
                       "price it with parsim predict --dtype mxfp8"), scope="run"),
    Rule("tp overlap (not run by the torch backend)", lambda c: c["tpo"],
         lambda c, i: ("tp-overlap (Transformer Engine userbuffers) is not run by this backend: price it with "
                       "parsim predict --tp-overlap"), scope="run"),
    Rule("pp overlap (not run by the torch backend)", lambda c: c["ppo"],
         lambda c, i: ("pp-overlap (Megatron's overlap_p2p_comm) is not run by this backend: price it with "
                       "parsim predict --pp-overlap"), scope="run"),
    Rule("cp > 1 (not run by the torch backend)", lambda c: c["cp"] > 1,
         lambda c, i: (f"cp = {_i(c, 'cp', i)}: context parallelism is not run by this backend (torch's "
                       "context_parallel needs CUDA flash/efficient attention; gloo on CPU cannot): price it with "
                       "parsim predict"), scope="run"),
    Rule("selective-op, recompute-every or async-tp (not run by the torch backend)",
         lambda c: (c["recompute"] == SEL_OP) | (c["rc_every"] > 1) | c["async_tp"],
         lambda c, i: ("recompute selective-op, recompute-every > 1 and async-tp are priced, not run by this backend "
                       "(its layers checkpoint none, the attention core or everything): price it with parsim predict"),
         scope="run"),
    Rule("ep > 1 with tp, pp or zero (the torch backend runs ep with dp only)",
         lambda c: (c["ep"] > 1) & ((c["tp"] > 1) | (c["pp"] > 1) | (c["zero"] > 0)),
         lambda c, i: (f"ep = {_i(c, 'ep', i)} runs in this backend with data parallelism only (tp = pp = 1, zero 0), "
                       f"got tp = {_i(c, 'tp', i)}, pp = {_i(c, 'pp', i)}, zero = {_i(c, 'zero', i)}"), scope="run"),
)


_DEFAULTS = {"ep": 1, "cp": 1, "dtype": 0, "flash": True, "recompute": 0, "rc_every": 1, "kernels": 0, "async_tp": False,
             "tpo": False, "ppo": False}


def _table(cols: dict, model, device=None) -> dict:
    c = {k: np.asarray(v) for k, v in cols.items()}
    n = np.asarray(cols["dp"]).shape
    for k, v in _DEFAULTS.items():
        if k not in c:
            c[k] = np.full(n, v)
    for k in ("dp", "tp", "pp", "vpp", "mb", "gb", "seq", "schedule", "zero", "grad_sync", "ep", "cp", "dtype",
              "recompute", "rc_every", "kernels"):
        if k in c:
            c[k] = c[k].astype(np.int64)
    for k in ("sp", "flash", "async_tp", "tpo", "ppo"):
        if k in c:
            c[k] = c[k].astype(bool)
    c["model"] = model
    c["device"] = device
    c["native"] = GRAD_SYNC.index("native")
    return c


def _applies(rule: Rule, scope: str, have_model: bool, have_device: bool = False) -> bool:
    return ((rule.scope == "plan" or scope == "run") and (have_model or not (rule.needs_model or rule.plan_only))
            and (have_device or not rule.needs_device))


def reject(cols: dict, model, scope: str = "plan", device=None) -> tuple[np.ndarray, dict]:
    """Valid rows of a plan table and {rule label: rows rejected by it first}, vectorised.

    ``cols`` is ``parsim.predict.plan_columns``' dict of equal-length arrays. scope "run" adds the
    torch backend's own rules; ``device`` (a device profile) adds the rules that read it (fp8)."""
    c = _table(cols, model, device)
    ok = np.ones(np.asarray(cols["dp"]).shape, dtype=bool)
    counts = {}
    for rule in RULES:
        if not _applies(rule, scope, model is not None, device is not None):
            continue
        bad = np.broadcast_to(rule.bad(c), ok.shape)
        n = int((ok & bad).sum())
        if n:
            counts[rule.label] = n
        ok &= ~bad
    return ok, counts


def first_failure(cols: dict, model, i: int = 0, scope: str = "plan", device=None) -> str | None:
    """The message of the first rule row i breaks, or None."""
    c = _table(cols, model, device)
    for rule in RULES:
        if _applies(rule, scope, model is not None, device is not None) and bool(np.asarray(rule.bad(c)).reshape(-1)[i]):
            return rule.message(c, i)
    return None


def check(plan, model, gpus: int | None = None, scope: str = "plan", device=None):
    """Raise ParsimError naming the first thing wrong with ``plan`` for ``model`` (on ``gpus`` devices of
    profile ``device``, when given). The same rules as ``reject``, on a one-row table. scope "run" adds
    the torch backend's rules."""
    from parsim.predict import plan_columns
    if gpus is not None and plan.gpus != gpus:
        raise ParsimError(f"tp({plan.tp}) * pp({plan.pp}) * dp({plan.dp})"
                          + (f" * cp({plan.cp})" if plan.cp > 1 else "") + f" = {plan.gpus} != gpus({gpus})")
    msg = first_failure(plan_columns([plan], model), model, 0, scope, device)
    if msg:
        raise ParsimError(msg)
    return plan


def check_pipeline(schedule: str, pp: int, microbatches: int, vpp: int) -> None:
    """The pipeline rules alone (schedule, pp, vpp, m), for a schedule built without a model or plan."""
    cols = {"dp": [1], "tp": [1], "pp": [pp], "vpp": [vpp], "mb": [1], "gb": [microbatches], "seq": [1],
            "schedule": [SCHEDULES.index(schedule)], "sp": [False], "zero": [0], "grad_sync": [0]}
    msg = first_failure(cols, None)
    if msg:
        raise ParsimError(msg)


# ---------------------------------------------------------------- the validated dimensions

@dataclass(frozen=True)
class ParallelDims:
    """A plan's degrees, validated once (``check``), with what follows from them: world size, micro-
    batches, stages, each stage's layers and rank. Built by ``ParallelDims.of``."""
    dp: int
    tp: int
    pp: int
    vpp: int
    schedule: str
    microbatches: int
    layers: int
    stage_layers: tuple          # layers per pipeline stage (stage order)
    stage_rank: tuple            # pipeline rank of each stage
    ep: int = 1
    cp: int = 1

    @classmethod
    def of(cls, plan, model, gpus: int | None = None, scope: str = "plan", device=None) -> "ParallelDims":
        check(plan, model, gpus, scope, device)
        S = plan.pp * plan.vpp
        return cls(plan.dp, plan.tp, plan.pp, plan.vpp, plan.schedule, plan.microbatches, model.layers,
                   tuple(int(x) for x in stage_layer_counts(model.layers, S)),
                   tuple(int(x) for x in stage_to_rank(plan.pp, plan.vpp, plan.schedule)), plan.ep, plan.cp)

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def num_stages(self) -> int:
        return self.pp * self.vpp

    @property
    def even(self) -> bool:
        return len(set(self.stage_layers)) == 1

    def layer_range(self, stage: int) -> range:
        """Global layer indices of ``stage``."""
        end = sum(self.stage_layers[:stage + 1])
        return range(end - self.stage_layers[stage], end)

    def rank_stages(self, rank: int) -> list[int]:
        return [s for s, r in enumerate(self.stage_rank) if r == rank]

    def rank_layers(self, rank: int) -> int:
        return sum(self.stage_layers[s] for s in self.rank_stages(rank))

    def describe(self) -> str:
        """One line: the stage split, counts first and the unit named each time, e.g.
        '2 stages × 2 layers each (even split)' or '16 stages: 1 of 7 layers, 14 of 8 layers each, 1 of 7
        layers (uneven: ...)' (Llama 3 405B's 126 layers on 16 stages: 7 + 8·14 + 7)."""
        runs, prev, n = [], None, 0
        for x in list(self.stage_layers) + [None]:
            if x == prev:
                n += 1
                continue
            if prev is not None:
                runs.append((n, prev))
            prev, n = x, 1
        layers = lambda k: f"{k} layer" + ("s" if k != 1 else "")    # noqa: E731
        stages = f"{self.num_stages} stage" + ("s" if self.num_stages != 1 else "")
        if self.even:
            each = " each" if self.num_stages > 1 else ""
            return f"{stages} × {layers(self.stage_layers[0])}{each} (even split)"
        parts = ", ".join(f"{n} of {layers(k)}" + (" each" if n > 1 else "") for n, k in runs)
        return f"{stages}: {parts} (uneven: embedding and head count as one layer each)"
