"""Sane upper bounds on what a user can ask for, checked before anything is allocated.

One place for every limit, each with why it is where it is. A request beyond a limit is
refused with a ``ParsimError`` that names the value, the limit and its name here, e.g.
``gpus = 1000000000 is above the limit of 65536 (parsim.limits.MAX_DEVICES)``.
The costs quoted were measured on the 2-core development machine (Python 3, networkx).
README § "Limits" lists them for users.
"""
from __future__ import annotations

import math

from parsim.errors import ParsimError

# ---- cluster and plan sizes -----------------------------------------------------------------
# Devices in one cluster (and so any plan degree dp, tp, pp): 4 x the 16,384 H100s of Llama 3
# 405B's training (Dubey et al. 2024). At 131,072 a DGX graph took ~7 s and ~300 MiB to build and
# one `predict` ~10 s of CPU here; at 2**50 (seen in issue 11) nothing would ever finish.
MAX_DEVICES = 2 ** 16
# Links (graph edges) in one cluster: a 65,536-GPU DGX cluster has ~200k (NVLink, PCIe, NIC per
# GPU); a fully connected cluster of n devices has n(n-1)/2, so 1,024 devices is the most it can have.
MAX_LINKS = 2 ** 19
# Graph nodes of an explicit (YAML nodes:/links: or GraphML) cluster: 3 per GPU of the largest DGX.
MAX_GRAPH_NODES = 3 * MAX_DEVICES + 2 ** 12
# Devices up to which `topology show` computes the bisection bandwidth (a max-flow over the
# graph): 16,384 DGX GPUs took 4.5 s of CPU here, 65,536 took 44 s. Beyond it the summary says so.
MAX_BISECTION_DEVICES = 2 ** 14
# Sequences per optimizer step. 16,777,216 is 4,096 x Llama 3's 4,096-sequence batch (Dubey et
# al. 2024, 16M tokens of 4,096): no real run is near it, and the count stays exact in float64.
MAX_GLOBAL_BATCH = 2 ** 24
# Tokens per sequence: 4,194,304 is 4 x the longest published training context (1M tokens).
MAX_SEQ_LEN = 2 ** 22
# Pipeline ops (forward, backward, weight-grad over every micro-batch and virtual stage) the
# discrete-event simulator plays: ~225 B and ~1 us per op here, so 2,097,152 ops is ~0.5 GiB
# and ~2 s. Bigger schedules: `parsim simulate` refuses; predict/plan use the closed form, whose
# relative error ((p-1)/m of a stage's time at most) vanishes at that many micro-batches.
MAX_SIM_OPS = 2 ** 21
# Sizes in one `parsim collective --size` sweep: 1 B .. 1 PiB by factors of 2 is 51 points;
# each point is priced on the graph for every algorithm.
MAX_SIZE_POINTS = 1024
# One op's time (a stage's forward, backward or weight-grad of a micro-batch, a p2p transfer):
# a day. Beyond it the input is a unit mistake, and sums over MAX_SIM_OPS ops stay finite.
MAX_OP_TIME_S = 86_400.0

# ---- model files (ModelSpec fields) -----------------------------------------------------------
# Inclusive (low, high) bounds of every integer field of a model (preset, model file or Hugging Face
# config.json), checked when the ModelSpec is made, before any shape reaches an array. The largest
# published values quoted are Llama 3 405B's (Dubey et al. 2024: 126 layers, hidden 16,384, 128 heads,
# ffn 53,248), Megatron 1T's (Narayanan et al. 2021: hidden 25,600, 160 heads), Gemma's vocabulary
# (256,000) and DeepSeek-V3's MoE (256 routed experts of ffn 2,048, top-8, 1 shared).
MODEL_LIMITS = {
    "layers": (1, 10_000),             # ~80 x 126
    "hidden": (1, 2 ** 20),            # 40 x 25,600
    "heads": (1, 2 ** 14),             # 100 x 160
    "kv_heads": (1, 2 ** 14),          # as heads (kv_heads divides heads)
    "head_dim": (1, 2 ** 14),          # 64 x the widest heads (256: Gemma)
    "ffn_hidden": (1, 2 ** 22),        # ~80 x 53,248
    "vocab": (1, 2 ** 24),             # 64 x 256,000
    "seq_len": (1, MAX_SEQ_LEN),       # the training length: the same bound as --seq-len
    "max_positions": (1, 2 ** 24),     # position-table rows: 16 x the longest advertised context (1M)
    "norms_per_layer": (0, 8),         # real layers have 2 (pre-norm) to 4 (Gemma 2's sandwich norms)
    "experts": (0, 2 ** 14),           # 64 x 256
    "top_k": (0, 2 ** 14),             # at most experts (checked on the spec)
    "expert_ffn_hidden": (1, 2 ** 22),  # as ffn_hidden
    "shared_experts": (0, 2 ** 10),    # 1,024 x 1
    "moe_every": (1, 10_000),          # at most one MoE layer in `layers`
    "moe_first_dense": (0, 10_000),    # as layers
    "sliding_window": (1, MAX_SEQ_LEN),  # keys each query attends to (Mistral 7B: 4,096); as seq_len
    "window_layers": (1, 10_000),      # layers using the window, at most `layers` (checked on the spec)
    # multi-head latent attention (DeepSeek-V2/V3: q_lora_rank 1,536, kv_lora_rank 512, rotary part 64, v 128)
    "q_lora_rank": (0, 2 ** 20),       # 0: a full-rank query projection; at most hidden's bound
    "kv_lora_rank": (0, 2 ** 20),      # 0: no latent attention
    "qk_rope_head_dim": (0, 2 ** 14),  # the rotary part of head_dim (checked below it on the spec)
    "v_head_dim": (1, 2 ** 14),        # as head_dim
}
# An MoE layer's capacity factor (expert rows padded to factor x tokens x top_k / experts): GShard and
# Switch use 1.0-2.0; above 64 the padding is a unit mistake, not a plan.
MAX_CAPACITY_FACTOR = 64.0

# ---- links (cluster files) ------------------------------------------------------------------
# Per-direction bandwidth of one link: 100 TB/s is ~50 x NVLink 5 (1.8 TB/s per GPU).
MAX_LINK_GBPS = 1e5
# Per-hop latency: one second is ~1e5 x a datacenter hop; a slower "link" is a unit mistake.
MAX_LINK_LATENCY_US = 1e6
# A leaf's uplinks may carry 1/1000 of what its hosts inject at most.
MAX_OVERSUBSCRIPTION = 1e3

# ---- user files -----------------------------------------------------------------------------
# Bytes read from a model file or a Hugging Face config.json: real ones are < 10 KiB.
MAX_MODEL_FILE_BYTES = 2 ** 20
# Bytes read from a cluster file (YAML or GraphML). The explicit graph of a 2,048-GPU DGX cluster
# (`topology save`) is 0.86 MiB and took 3.7 s of CPU to parse here with the safe pure-Python YAML
# reader, so 4 MiB is ~17 s. Builder-style files (a few lines) size clusters of any size.
MAX_CLUSTER_FILE_BYTES = 2 ** 22
# Bytes read from a `parsim report` input: a predict/plan JSON output or a run result (a plan JSON of --top 1000
# is ~2 MiB) and a study's results.jsonl (a point is ~10 KiB, a traced one with its pipeline ops ~200 KiB: 256 MiB
# holds thousands). Trial 2026-11-30: `parsim report /dev/zero` read until the kernel killed it at 24 GB.
MAX_REPORT_INPUT_BYTES = 2 ** 26
MAX_RESULTS_BYTES = 2 ** 28
# Nesting of mappings/lists in any user file: the deepest real one (an explicit cluster graph) has
# 3 levels; 32 stops deep-nesting bombs long before Python's recursion limit.
MAX_NESTING = 32

# ---- run / emulate flags --------------------------------------------------------------------
# Torch threads per rank: no host has more cores than this.
MAX_THREADS = 1024
# Training steps of one `parsim run`: 10^6 steps of the smallest model take days on a CPU.
MAX_STEPS = 10 ** 6
# Emulated hosts (network namespaces) of `parsim emulate` and of a study's networks: each is a namespace, a veth pair
# and tc qdiscs on this machine; 32 is what `emulate --hosts` takes.
MAX_EMULATED_HOSTS = 32
# Seconds (--timeout, --watchdog): a week.
MAX_WAIT_S = 7 * 86_400.0
# Processes per emulated host (every rank shares this machine's CPUs).
MAX_RANKS_PER_HOST = 64


def _why(name: str) -> str:
    return f"parsim.limits.{name}"


def check_count(what: str, value, limit_name: str, lo: int = 1) -> int:
    """`value` as an int in [lo, parsim.limits.<limit_name>], else ParsimError naming both.

    Accepts Python and numpy integers (not bool, not float); returns int(value)."""
    hi = globals()[limit_name]
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ParsimError(f"{what} = {value!r}: expected an integer in {lo}..{hi}")
    v = int(value.__index__())
    if v < lo:
        raise ParsimError(f"{what} = {v}: expected an integer >= {lo}")
    if v > hi:
        raise ParsimError(f"{what} = {v} is above the limit of {hi} ({_why(limit_name)})")
    return v


def _unit_hint(what: str, value) -> str:
    """For a key that carries its unit (…_GBps, …_us) given a string with a unit: the number it should be
    (trial 2026-11-30: `nic_GBps: 200Gbps` said only "expected a number")."""
    if not isinstance(value, str):
        return ""
    from parsim import units
    try:
        if what.endswith("GBps"):
            return f" in GB/s (the unit is in the key): {value} = {units.parse_rate(value) / 1e9:g}"
        if what.endswith("_us"):
            return f" in µs (the unit is in the key): {value} = {units.parse_time(value) * 1e6:g}"
    except Exception:      # not a quantity either: no hint
        return ""
    return ""


def check_number(what: str, value, lo: float, hi: float | str, lo_open: bool = False) -> float:
    """`value` as a finite float in [lo, hi] ((lo, hi] with lo_open); hi may name a limit here."""
    limit_name = hi if isinstance(hi, str) else None
    top = globals()[hi] if limit_name else hi
    if isinstance(value, bool):
        raise ParsimError(f"{what} = {value!r}: expected a number")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParsimError(f"{what} = {shown(value)}: expected a number{_unit_hint(what, value)}") from None
    rng = f"{'(' if lo_open else '['}{lo:g}, {top:g}]"
    if not math.isfinite(v):
        raise ParsimError(f"{what} = {v}: expected a finite number in {rng}")
    if v < lo or (lo_open and v == lo):
        raise ParsimError(f"{what} = {v:g}: expected a number in {rng}")
    if v > top:
        raise ParsimError(f"{what} = {v:g} is above the limit of {top:g}"
                          + (f" ({_why(limit_name)})" if limit_name else f": expected a number in {rng}"))
    return v


def check_plan_sizes(plan, gpus=None) -> None:
    """A Plan's degrees and batch sizes against the limits here (integers, >= 1, <= the limit), and
    gpus = dp·tp·pp <= MAX_DEVICES: before a cluster is sized or a schedule played for them."""
    for k, lim in (("dp", "MAX_DEVICES"), ("tp", "MAX_DEVICES"), ("pp", "MAX_DEVICES"), ("vpp", "MAX_DEVICES"),
                   ("micro_batch", "MAX_GLOBAL_BATCH"), ("global_batch", "MAX_GLOBAL_BATCH")):
        check_count(k.replace("_", "-"), getattr(plan, k), lim)
    if plan.seq_len is not None:
        check_count("seq-len", plan.seq_len, "MAX_SEQ_LEN")
    check_count(f"gpus = dp·tp·pp = {plan.dp}·{plan.tp}·{plan.pp}; gpus", plan.dp * plan.tp * plan.pp, "MAX_DEVICES")
    if gpus is not None:
        check_count("gpus", gpus, "MAX_DEVICES")


def require_finite(what: str, **values) -> None:
    """ParsimError unless every value (a number or an iterable of numbers) is finite: outputs
    are finite or the command fails."""
    for k, v in values.items():
        vs = v if hasattr(v, "__iter__") and not isinstance(v, str) else [v]
        for x in vs:
            if x is not None and not math.isfinite(float(x)):
                raise ParsimError(f"{what}: {k} came out {float(x)} (inputs too large or a zero bandwidth); "
                                  "refusing to print a non-finite result")


def shown(value, width: int = 60) -> str:
    """repr(value), shortened to about `width` characters for one-line messages."""
    r = repr(value)
    if len(r) <= width:
        return r
    return f"{r[:width - 1]}…' ({len(str(value))} characters)"
