"""Plan -> StepReport: the analytical step model.

``price(model, cluster, cols)`` is the one implementation. It takes a table of plans
(a dict of equal-length numpy arrays, see ``plan_columns``) and returns a dict of
arrays; ``predict`` prices a single Plan through it and ``search`` whole tables, so the
number a user sees for one plan is the number the search ranked.

A step on the slowest pipeline stage (Narayanan et al. 2021, §2.2 and §3):
    makespan = m·T_max + bubble,   bubble = (p−1)·T_avg         GPipe / 1F1B
                                           (p−1)/v·T_avg        interleaved 1F1B
                                           (p−1)·max(0, F+B−2W) per V-chunk, ZB-V (Qi et al. 2024)
    step     = makespan + exposed data-parallel sync + optimizer
where T is one micro-batch's forward+backward on a pipeline rank (compute, recompute, tensor-
parallel collectives, pipeline send/recv), m = global_batch/(micro_batch·dp).
The discrete-event simulator (parsim.simulate) plays the same schedules exactly.

Ranks differ by their layers (parsim.rules.stage_layer_counts: even, or one fewer on the first and
last stage where pp·vpp does not divide the layers) and by what they hold beside them (the
embedding with stage 0; the head and its logits with the last stage, on rank 0 in ZB-V's V). Rank 0,
the last stage's rank and the heaviest other rank are priced; time is the slowest one's, memory the
worst one's (model states by the framework's accounting, in-flight activations as the schedule
holds them; parsim.costs.memory). Plans are valid by parsim.rules, which every consumer asks.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np

from parsim.caches import CLUSTERS_KEPT, ENTRIES_PER_CLUSTER, LRU
from parsim.costs import compute as C
from parsim import layer as Ly
from parsim.costs import memory as M
from parsim.costs.dpsync import ZERO_SYNC_ALGOS, dp_sync_s, zero_sync_algorithms
from parsim.costs import network as _net
from parsim.costs.network import collective_lines
from parsim.errors import ParsimError
from parsim.limits import MAX_SIM_OPS, require_finite
from parsim.plan import DTYPES, FP8_DTYPES, FRAMEWORK_RECOMPUTE, GRAD_SYNC, KERNELS, RECOMPUTE, SCHEDULES, Plan
from parsim.rules import check as check_plan
from parsim.rules import rank_layers

GiB = 2 ** 30
BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm", "ep_comm", "cp_comm", "pp_comm", "bubble", "dp_comm_exposed", "optimizer")
MEMORY_KEYS = ("weights", "grads", "optimizer", "activations", "buffers")


@dataclass
class StepReport:
    step_time_s: float
    tokens_per_s: float
    samples_per_s: float
    model_tflops_per_gpu: float
    hardware_tflops_per_gpu: float
    mfu: float
    hfu: float
    memory_GiB: float
    memory_breakdown_GiB: dict
    fits: bool
    breakdown_s: dict
    fits_reason: str = ""
    plan: dict = field(default_factory=dict)
    model: str = ""
    cluster: str = ""
    device: str = ""
    gpus: int = 0
    source: str = "predicted"
    notes: list = field(default_factory=list)
    memory_accounting: str = ""          # bytes per parameter by framework (parsim.costs.memory.ACCOUNTING)
    grad_dtype: str = ""                 # gradients accumulated and reduced in (parsim.costs.memory.GRAD_DTYPES)
    cross_entropy: str = ""              # the loss kernel (parsim.costs.memory.CROSS_ENTROPY_IMPLS)
    memory_capacity_GiB: float = 0.0     # what the device reports
    memory_headroom_GiB: float = 0.0     # reserved: CUDA context, NCCL buffers, fragmentation
    memory_worst_rank: int = 0           # pipeline rank whose memory is reported
    # Measured reports only (empty for predictions): [min, max] over the timed steps of each
    # numeric field, keyed like ``flat()`` ("step_time_s", "breakdown_s.compute", ...), and how it
    # was measured (backend, steps, warm-up, the source of each phase).
    spread: dict = field(default_factory=dict)
    measurement: dict = field(default_factory=dict)
    seq_len: int = 0                 # the training length used (the plan's, else the model's)
    params_total: int = 0            # all parameters, tied embeddings once
    params_active: int = 0           # per token (MoE: top_k routed experts); = params_total when dense
    model_summary: str = ""          # shapes and where seq_len came from

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StepReport":
        """Inverse of ``to_dict`` (e.g. a report read back from JSON); unknown keys are an error, except the
        annotations `parsim predict` adds beside a report (ANNOTATIONS), which are dropped."""
        names = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k not in cls.ANNOTATIONS}
        extra = sorted(set(d) - names)
        if extra:
            raise ParsimError(f"not a StepReport: unexpected key(s) {', '.join(extra)}; expected {', '.join(sorted(names))}")
        return cls(**d)

    # Keys `parsim predict --format json` writes beside the report: the held-out errors on published runs like the
    # plan (parsim.accuracy.heldout, .memory_heldout), annotations about parsim, not an outcome of the plan.
    ANNOTATIONS = ("heldout_accuracy", "memory_heldout", "accuracy")

    # The device and the accounting the memory was judged against, and the model's size and training
    # length (inputs, the same on both sides of a comparison): context, not outcomes to compare.
    CONTEXT_FIELDS = ("memory_capacity_GiB", "memory_headroom_GiB", "memory_worst_rank", "seq_len", "params_total",
                      "params_active")

    def flat(self) -> dict:
        """Every numeric outcome by dotted key: step_time_s, ..., breakdown_s.<phase>, memory_breakdown_GiB.<kind>
        (not the context fields: capacity, headroom, worst rank, seq_len, parameter counts). Two reports compare by joining on these keys
        (parsim.compare)."""
        out = {}
        for k, v in asdict(self).items():
            if k in self.CONTEXT_FIELDS:
                continue
            if isinstance(v, dict) and k in ("breakdown_s", "memory_breakdown_GiB"):
                out.update({f"{k}.{kk}": float(vv) for kk, vv in v.items() if _is_num(vv)})
            elif _is_num(v):
                out[k] = float(v)
        return out


def step_rates(step_s: float, global_batch: int, seq_len: int, model_flops: float, hardware_flops: float,
               gpus: int, peak_flops: float | None) -> dict:
    """The rates a step time implies, as StepReport fields: tokens_per_s, samples_per_s,
    model_tflops_per_gpu (no recompute, the MFU convention) and hardware_tflops_per_gpu (with
    recompute, Narayanan et al. 2021's), mfu and hfu against `peak_flops` (FLOP/s per device; None
    where unknown: no MFU rather than a wrong one). One place for predicted and measured reports."""
    out = {"tokens_per_s": global_batch * seq_len / step_s, "samples_per_s": global_batch / step_s,
           "model_tflops_per_gpu": model_flops / step_s / gpus / 1e12,
           "hardware_tflops_per_gpu": hardware_flops / step_s / gpus / 1e12}
    out["mfu"] = model_flops / step_s / gpus / peak_flops if peak_flops else None
    out["hfu"] = hardware_flops / step_s / gpus / peak_flops if peak_flops else None
    return out


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plan_columns(plans, model) -> dict:
    """A table of plans (list of Plan) as the dict of arrays `price` takes."""
    def col(f, dtype=np.int64):
        return np.array([f(p) for p in plans], dtype=dtype)
    return {
        "dp": col(lambda p: p.dp), "tp": col(lambda p: p.tp), "pp": col(lambda p: p.pp),
        "vpp": col(lambda p: p.vpp), "mb": col(lambda p: p.micro_batch), "gb": col(lambda p: p.global_batch),
        "seq": col(lambda p: p.seq_len or model.seq_len), "dtype": col(lambda p: DTYPES.index(p.dtype)),
        "schedule": col(lambda p: SCHEDULES.index(p.schedule)), "grad_sync": col(lambda p: GRAD_SYNC.index(p.grad_sync)),
        "zero": col(lambda p: p.zero), "recompute": col(lambda p: RECOMPUTE.index(p.recompute)),
        "sp": col(lambda p: p.sequence_parallel, bool), "overlap": col(lambda p: p.overlap, bool),
        "flash": col(lambda p: p.flash_attention, bool), "ep": col(lambda p: p.ep), "cp": col(lambda p: p.cp),
        "rc_every": col(lambda p: p.recompute_every), "kernels": col(lambda p: KERNELS.index(p.kernels)),
        "async_tp": col(lambda p: p.async_tp, bool),
        "tpo": col(lambda p: p.tp_overlap, bool), "ppo": col(lambda p: p.pp_overlap, bool),
    }


def _distinct(*cols, radix=()):
    """(a representative row of each distinct row, each row's index into them) of non-negative integer
    columns: np.unique's return_index and return_inverse, without the stable sort return_index costs
    (rows with equal keys are interchangeable here, so any representative will do). One 1-D unique on
    a mixed-radix key when the columns' ranges fit in 63 bits (int32 where they fit in 31), else
    np.unique over rows. radix: known exclusive upper bounds of the first len(radix) columns (saves a
    pass each)."""
    cols = [c if getattr(c, "dtype", None) == np.int64 else np.asarray(c, dtype=np.int64) for c in cols]
    cols = [c.ravel() for c in cols]
    key, span = None, 1
    for i, c in enumerate(cols):
        r = radix[i] if i < len(radix) else (int(c.max()) + 1 if c.size else 1)
        if span * r >= 2 ** 63:
            key = None
            break
        key, span = (c.copy() if key is None else key * r + c), span * r
    if key is None:
        _, inv = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
    else:
        if span <= 2 ** 31:
            key = key.astype(np.int32)
        _, inv = np.unique(key, return_inverse=True)
    inv = inv.ravel()
    rep = np.empty(int(inv.max()) + 1 if inv.size else 0, dtype=np.int64)
    rep[inv] = np.arange(inv.size)
    return rep, inv


class _Groups:
    """Communication coefficients per distinct process-group shape, cached per cluster."""

    def __init__(self, cluster):
        self.cluster = cluster
        self._cache = LRU(ENTRIES_PER_CLUSTER)      # (op, algo, ranks) -> (alpha_s, s_per_byte)

    def coeffs(self, kind: str, op: str, algo: str, tp: int, pp: int, dp: int):
        """((alpha_s, s_per_byte), (alpha_s, s_per_byte)): the collective_lines of the first group of
        `kind` under tp-innermost placement (parsim.topology.group_ranks; time = the smaller line at
        the size), priced together with the groups of that kind running at the same time."""
        key = (kind, op, algo, tp, pp, dp)
        ab = self._cache.get(key)
        if ab is None:
            ranks, others = _concurrent_groups(self.cluster, kind, tp, pp, dp)
            lines = ((0.0, 0.0),) if len(ranks) <= 1 else collective_lines(self.cluster, op, algo, ranks, others)
            ab = (lines * 2)[:2]           # two lines (NCCL: ring channels, tree); min is the time
            self._cache[key] = ab
        return ab

    def lines(self, op: str, algo: str, ranks: tuple):
        """The two (alpha_s, s_per_byte) lines of `op` over the explicit global `ranks` (a group that is
        not one of tp/pp/dp: the EP group, the expert-data-parallel group, the dp·cp group), priced alone."""
        key = ("ranks", op, algo, ranks)
        if key not in self._cache:
            lines = ((0.0, 0.0),) if len(ranks) <= 1 else collective_lines(self.cluster, op, algo, ranks)
            self._cache[key] = (tuple(lines) * 2)[:2]
        return self._cache[key]

    def vec(self, kind, op, shapes, nbytes, algo=None):
        """alpha + beta·nbytes per plan; coefficients are looked up once per distinct group shape.

        `shapes` is a _Shapes (distinct (algo, tp, pp, dp) rows and each plan's index into them);
        algo=None uses the shapes' own data-parallel algorithm, a callable maps that algorithm's
        name to the one to price, a string names it (e.g. the library's, "native")."""
        pick = ((lambda a: GRAD_SYNC[a]) if algo is None else
                (lambda a: algo(GRAD_SYNC[a])) if callable(algo) else (lambda a: algo))
        ab = np.array([self.coeffs(kind, op, pick(a), t, p, d) for a, t, p, d in shapes.rows])   # rows × 2 × 2
        inv = shapes.inv
        t = ab[:, 0, 0][inv] + ab[:, 0, 1][inv] * nbytes
        if not np.array_equal(ab[:, 0], ab[:, 1]):        # a second line (NCCL's tree): the faster at the size
            t = np.minimum(t, ab[:, 1, 0][inv] + ab[:, 1, 1][inv] * nbytes)
        return t


def _concurrent_groups(cluster, kind, tp, pp, dp):
    """(first group's ranks, the other groups of `kind` that run at the same time and can share
    its links). dp: all dp groups, one per tp x pp position; tp: the tp groups on the first
    group's nodes (a group inside one node shares no link with other nodes' groups); pp: the
    stage boundary send/recv pairs of every tp rank and dp replica (1F1B's steady state)."""
    if kind == "pp":
        if pp == 1:
            return (0,), ()
        pairs = [(d * tp * pp + s * tp + t, d * tp * pp + (s + 1) * tp + t)
                 for d in range(dp) for s in range(pp - 1) for t in range(tp)]
        return pairs[0], tuple(pairs[1:])
    from parsim.plan import Plan
    from parsim.topology import group_ranks
    plan = Plan(dp=dp, tp=tp, pp=pp)
    size = {"tp": tp, "dp": dp}[kind]
    count = tp * pp * dp // size
    if size <= 1:
        return (0,), ()
    if count * size > _net.CONCURRENT_MAX_RANKS or size > _net.GRAPH_MAX_RANKS or cluster.device.kind != "gpu":
        return group_ranks(plan, kind, 0), ()
    groups = [group_ranks(plan, kind, i) for i in range(count)]
    nodes0 = {cluster.node_of(r) for r in groups[0]}
    if len(nodes0) == 1:
        groups = [g for g in groups if nodes0 & {cluster.node_of(r) for r in g}]
    return groups[0], tuple(groups[1:])


class _Shapes:
    """Distinct (grad_sync, tp, pp, dp) combinations of a plan table, found with one 1-D unique."""

    def __init__(self, gs, tp, pp, dp):
        gs, tp, pp, dp = (np.asarray(x, dtype=np.int64) for x in (gs, tp, pp, dp))
        assert tp.max() < 2 ** 14 and pp.max() < 2 ** 14 and dp.max() < 2 ** 30
        key = ((gs * 2 ** 14 + tp) * 2 ** 14 + pp) * 2 ** 30 + dp
        uniq, self.inv = np.unique(key, return_inverse=True)
        self.rows = [(int(k >> 58), int(k >> 44) & (2 ** 14 - 1), int(k >> 30) & (2 ** 14 - 1), int(k) & (2 ** 30 - 1))
                     for k in uniq]


_GROUP_CACHE = LRU(CLUSTERS_KEPT)   # id(cluster) -> _Groups; bounded (parsim/caches.py)


def _groups(cluster) -> _Groups:
    g = _GROUP_CACHE.get(id(cluster))
    if g is None or g.cluster is not cluster:
        g = _Groups(cluster)
        _GROUP_CACHE[id(cluster)] = g
    return g


def _min_line_s(ab, inv, nbytes, calls=1.0):
    """Seconds per plan row: the faster of two (alpha_s, s_per_byte) lines (rows × 2 × 2, gathered by
    `inv`) at `nbytes`, alpha paid `calls` times."""
    t0 = calls * ab[:, 0, 0][inv] + ab[:, 0, 1][inv] * nbytes
    if np.array_equal(ab[:, 0], ab[:, 1]):
        return t0
    return np.minimum(t0, calls * ab[:, 1, 0][inv] + ab[:, 1, 1][inv] * nbytes)


def _group_s(G, op, algo, size, stride, nbytes, calls=1.0):
    """Seconds per plan row of `op` over a group of `size` ranks `stride` apart from rank 0 (the EP
    group: ep ranks tp apart; the expert-data-parallel group: dp·cp/ep ranks tp·ep apart, as Megatron-Core places
    them; a cp ring
    neighbour pair: 2 ranks tp apart), alpha paid `calls` times."""
    size = np.asarray(size, dtype=np.int64)
    stride = np.broadcast_to(np.asarray(stride, dtype=np.int64), np.shape(size))
    first, inv = _distinct(size, stride)
    ab = np.array([G.lines(op, algo, tuple(i * int(st) for i in range(int(sz))))
                   for sz, st in zip(size[first], stride[first])], dtype=float).reshape(-1, 2, 2)
    return _min_line_s(ab, inv, nbytes, calls)


def _dpcp_vec(G, gs, tp, pp, dp, cp, nbytes, ag_bytes=None):
    """(all-reduce by the plan's algorithm, reduce-scatter, all-gather by ZeRO's forms of it) seconds of
    `nbytes` (the all-gather's: `ag_bytes`, default `nbytes`) over the dp·cp ranks holding the same weights:
    d·(tp·cp·pp) + c·tp for every d < dp, c < cp."""
    first, inv = _distinct(gs, tp, pp, dp, cp)
    out = []
    for op, pick in (("allreduce", lambda a: a), ("reduce_scatter", lambda a: ZERO_SYNC_ALGOS.get(a, ("native",))[0]),
                     ("all_gather", lambda a: ZERO_SYNC_ALGOS.get(a, (None, "native"))[1])):
        ab = np.array([G.lines(op, pick(GRAD_SYNC[int(a)]),
                               tuple(sorted(d * t_ * c_ * p_ + c * t_ for d in range(int(d_)) for c in range(int(c_)))))
                       for a, t_, p_, d_, c_ in zip(gs[first], tp[first], pp[first], dp[first], cp[first])],
                      dtype=float).reshape(-1, 2, 2)
        out.append(_min_line_s(ab, inv, ag_bytes if op == "all_gather" and ag_bytes is not None else nbytes))
    return out


def _async_tp_exposed_s(model, dev, ops_u, dt_u, eager_u, inv, ag_s, rs_s, t):
    """TP collective seconds left exposed per layer and direction under async TP (torchtitan's
    micro-pipelined TP: torch._inductor's _micro_pipeline_tp with symmetric memory; Wang et al., "Introducing
    Async Tensor Parallelism in PyTorch", PyTorch blog 2024). Each all-gather is split into tp chunks
    consumed by the column-parallel GEMM that needs it, each reduce-scatter fed by the row-parallel GEMM
    producing it: with a GEMM of g seconds and a collective of c, the pair takes max(g, c + g/t) (the
    first (all-gather) or last (reduce-scatter) chunk cannot overlap), so max(0, c - g·(t-1)/t) is
    exposed. Summed over the layer: column-parallel GEMMs against the all-gathers, TP_BLOCK GEMMs
    against the reduce-scatters; backward's dgrad GEMMs are taken as long as the forward ones."""
    peak, e = C.peak_flops(dev, dt_u), C.DTYPE_BYTES[dt_u]
    fp8, f8_peak = Ly.is_fp8(dt_u), C.fp8_peak_flops(dev, dt_u)
    kscale = np.where(fp8, dev.fp8_time_scale(), 1.0)      # FP8 plans: the FP8 sustained fraction (as layer_times)
    g_ag = g_rs = 0.0
    for op in ops_u:
        if op.kind != "gemm":
            continue
        if op.col_parallel:
            g_ag = g_ag + C.op_times(op, dev, peak, e, fp8, eager_u, kscale=kscale, fp8_peak=f8_peak)[0]
        if any(k == Ly.TP_BLOCK for _, k, _ in op.comm):
            g_rs = g_rs + C.op_times(op, dev, peak, e, fp8, eager_u, kscale=kscale, fp8_peak=f8_peak)[0]
    g_ag, g_rs = (np.broadcast_to(np.asarray(x, dtype=float), dt_u.shape)[inv] for x in (g_ag, g_rs))
    lag = (t - 1) / t
    return np.maximum(0.0, ag_s - g_ag * lag) + np.maximum(0.0, rs_s - g_rs * lag)


def _pipeline_structure(layers: int, sched, pp, vpp, m, walk: bool = False) -> dict:
    """What follows from (schedule, pp, vpp, m) alone, per plan: layers on rank 0, on the last stage's
    rank and on the heaviest other rank (parsim.rules.rank_layers); the layers' worth of activations
    those ranks hold at their peak (parsim.costs.memory.inflight_chunks x layers / vpp; the other rank
    is rank 1 in a loop, pp-1 in ZB-V's V, the one holding most); the logits the last stage holds, in
    micro-batches in flight (parsim.costs.memory.last_stage_inflight). Evaluated once per distinct combination.
    walk: also each combination's memory moments of those three ranks over their op order (``moments``: one dict
    per combination, rank kind -> parsim.costs.memory.pipeline_moments, None where pp = 1 or the order is too long;
    ``combo``: each plan's combination)."""
    sched, pp, vpp = (np.asarray(x, dtype=np.int64) for x in (sched, pp, vpp))
    mi = np.rint(np.asarray(m, dtype=float)).astype(np.int64)
    first, inv = _distinct(sched, pp, vpp, mi, radix=(4,))
    sched, pp, vpp, mi = sched[first], pp[first], vpp[first], mi[first]
    v_shape, single = sched == 3, pp == 1
    L_first, L_last, L_mid = rank_layers(layers, pp, vpp, v_shape)
    r_last = np.where(v_shape | single, 0, pp - 1)
    r_mid = np.where(v_shape, pp - 1, 1)
    # activation sets held at the peak, in layers: chunks (one stage's layers each) x layers / vpp
    out = {"L_first": L_first, "L_last": L_last, "L_mid": L_mid,
           "logits_inflight": M.last_stage_inflight(sched, mi)}
    for k, r, L_k in (("first", 0, L_first), ("last", r_last, L_last), ("mid", r_mid, L_mid)):
        out["chunks_" + k] = M.inflight_chunks(sched, pp, vpp, mi, r)
        out["held_" + k] = out["chunks_" + k] * L_k / vpp
    res = {k: np.asarray(v)[inv] for k, v in out.items()}
    if walk:
        res["combo"] = inv
        res["moments"] = [
            {k: (M.pipeline_moments(int(sc), int(p), int(v), int(mm), int(r)) if p > 1 else None)
             for k, r in (("first", 0), ("last", rl), ("mid", rm))}
            for sc, p, v, mm, rl, rm in zip(sched, pp, vpp, mi, r_last, r_mid)]
    return res


def _walk_pipeline_memory(parts, base, pipe, Ls, pp, vpp, m, a_layer, a_work, logits, extra_logits, head_saved,
                          logits16, boundary, head_first) -> None:
    """Where the framework's pipeline runtime keeps its stage outputs (parsim.costs.memory.PIPELINE_KEEPS_STAGE_OUTPUTS:
    torch.distributed.pipelining under FSDP2), each pipeline rank kind's memory is its peak over its own op order
    (parsim.costs.memory.pipeline_moments) rather than every term at its own peak, summed: the gradients of a stage
    exist only from its first backward (FSDP2 accumulates them unsharded in fp32 from there; torchtitan sets them to
    None every step), the kept outputs grow with the forwards run, the loss backward's temporaries and a recomputed
    layer's working set exist inside a backward only. Updates ``parts`` (rank kind -> [weights, grads, optimizer,
    activations, buffers], bytes per plan) in place for the plans with pp > 1 whose order was walked; the breakdown
    is taken at each plan's peak moment. Bytes per term: an activation set in flight (a stage's layers, less its
    receive buffer on a non-first stage), a last-stage micro-batch in flight (its fp32 log-probabilities and the head's
    saved inputs), a stage's gradients, a kept output (16-bit logits on the last stage, a boundary activation
    elsewhere), the loss backward's fp32 temporaries, a recomputed layer's working set; constant: the receive
    buffers (parsim.costs.memory.pipeline_stage_bytes without the outputs)."""
    shape = np.shape(pp)
    bc = lambda x: np.broadcast_to(np.asarray(x, dtype=float), shape)
    a_layer, a_work, logits, extra, head_saved, logits16, boundary, m, v_all = (
        bc(x) for x in (a_layer, a_work, logits, extra_logits, head_saved, logits16, boundary, m, vpp))
    combo = pipe["combo"]
    for k, nf in (("first", 1.0), ("last", 0.0), ("mid", 0.0)):
        nl_all = bc(head_first) if k == "first" else bc(1.0 if k == "last" else 0.0)
        g_all, L_all = bc(parts[k][1]), bc(Ls[k])
        new = [bc(x).copy() for x in parts[k]]
        for c, mom in enumerate(pipe["moments"]):
            C = mom[k]
            rows = np.nonzero((combo == c) & (np.asarray(pp) > 1))[0]
            if C is None or rows.size == 0:
                continue
            v, nl, b = v_all[rows], nl_all[rows], boundary[rows]
            cols = np.stack([L_all[rows] / v * a_layer[rows] - b * (v - nf) / v,   # an activation set in flight
                             logits[rows] + head_saved[rows],                      # + on the last stage
                             g_all[rows] / v,                                      # a stage's gradients
                             logits16[rows], b,                                    # kept outputs
                             extra[rows] * logits[rows], a_work[rows]], axis=1)    # loss backward, a recompute
            C = np.unique(C, axis=0)                                               # moments repeat
            at = np.empty_like(cols)
            step_rows = max(1, (1 << 22) // C.shape[0])                            # ~32 MiB of temporaries a block
            for i in range(0, rows.size, step_rows):
                blk = cols[i:i + step_rows]
                at[i:i + step_rows] = C[(blk @ C.T).argmax(axis=1)] * blk          # each term at the plan's peak
            new[1][rows] = at[:, 2]
            new[3][rows] = at[:, 0] + at[:, 1] + at[:, 5] + at[:, 6]
            new[4][rows] = bc(base[k])[rows] + m[rows] * b * ((v - nf) + (v - nl)) + at[:, 3] + at[:, 4]
        parts[k] = new


# Rows priced at once by `price`: the step model's temporaries are arrays of this many rows, so its memory
# follows the chunk, not the table (~150 live float64 values per row at the peak: ~40 MiB at 32,768 rows).
# Measured on the 2-core development VM (1 thread, CPU seconds, busy): 1M rows of llama2-13b plans
# (tests/benchmarks) 0.80 s in chunks of 32k or 64k rows, 0.84 s of 128k, 0.87 s of 16k (per-chunk Python
# work), 0.89-1.1 s in one piece (fresh pages for every temporary); GPT-3 175B's 3.2M-row table ~3 GiB in one
# piece, ~270 MiB in chunks (tests/benchmarks/plan_space.py).
PRICE_CHUNK_ROWS = 2 ** 15

_INT_COLS = ("dp", "tp", "pp", "vpp", "mb", "gb", "seq", "dtype", "schedule", "grad_sync", "zero", "recompute",
             "ep", "cp", "rc_every", "kernels")
_BOOL_COLS = ("sp", "overlap", "flash", "async_tp", "tpo", "ppo")


def table_rows(cols: dict) -> int:
    """Rows of a plan table (the longest column; 0-d columns broadcast)."""
    return max((int(np.shape(v)[0]) for v in cols.values() if np.ndim(v)), default=1)


def _chunk(cols: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of a plan table, each known column in price's own dtype (int64 or bool), so
    callers may keep a big table in narrow dtypes or as broadcast constants."""
    out = {}
    for k, v in cols.items():
        v = np.asarray(v)
        v = v[start:stop] if v.ndim else np.broadcast_to(v, (stop - start,))
        out[k] = (v.astype(np.int64) if k in _INT_COLS and v.dtype != np.int64 else
                  v.astype(bool) if k in _BOOL_COLS and v.dtype != bool else v)
    return out


def _fp8_weight_elems(ops):
    """Weight elements of a layer's FP8 GEMMs on one rank (weighted by their share of layers), per plan row."""
    return sum(np.asarray(op.weight) * np.asarray(op.k) * np.asarray(op.n) * np.asarray(op.batch) for op in ops if op.fp8)


def _fp8_memory_words(accounting: str, dtype: str = "fp8") -> str:
    """What FP8 adds to memory under `accounting`, read from parsim.costs.memory.FP8_WEIGHT_COPY (MXFP8_WEIGHT_COPY
    for dtype mxfp8)."""
    if dtype == "mxfp8":
        copy_B, _ = M.MXFP8_WEIGHT_COPY[accounting]
        return (f"{copy_B:g} B per parameter of the FP8 layers on top of the 16-bit weight (MXFP8 rowwise + columnwise "
                f"copies with E8M0 scales, parsim.costs.memory.MXFP8_WEIGHT_COPY), no scaling history")
    copy_B, state = M.FP8_WEIGHT_COPY[accounting]
    words = (f"an FP8 weight copy and transpose ({copy_B:g} B per parameter) beside the 16-bit weights" if copy_B
             else "no FP8 weight copy beside the weights (FP8 weights in place of the 16-bit copy, or cast per forward)")
    return words + (f", {state:g} fp32 scaling values per FP8 tensor" if state else ", no scaling history")


def price_chunks(model, cluster, cols: dict, device=None, accounting: str = M.DEFAULT_ACCOUNTING,
                 headroom_bytes: float | None = None, chunk_rows: int = PRICE_CHUNK_ROWS, grad_dtype: str | None = None,
                 cross_entropy: str | None = None):
    """Price a table of plans `chunk_rows` rows at a time: yields (start, stop, result) per chunk, the
    result as `price` returns it for rows [start, stop). Memory is bounded by the chunk, not the
    table (a caller keeps what it needs of each chunk, e.g. the plans that fit). Every row is priced
    from its own columns only, so the results do not depend on the chunking. ParsimError when
    chunk_rows is not a positive integer."""
    if isinstance(chunk_rows, bool) or not hasattr(chunk_rows, "__index__") or int(chunk_rows) < 1:
        raise ParsimError(f"chunk_rows = {chunk_rows!r}: expected a positive integer (rows priced at once)")
    chunk_rows = int(chunk_rows)
    M.check_accounting(accounting)
    M.check_grad_dtype(grad_dtype)
    M.check_cross_entropy(cross_entropy, accounting)
    dev = device or cluster.device
    n = table_rows(cols) if cols else 0
    for start in range(0, max(n, 1), chunk_rows):
        stop = min(n, start + chunk_rows)
        yield start, stop, _price_rows(model, cluster, _chunk(cols, start, stop), dev, accounting, headroom_bytes,
                                       grad_dtype, cross_entropy)


def concat_priced(parts: list, lengths: list) -> dict:
    """One result from consecutive per-chunk results of `price_chunks` (or rows taken from them) of
    `lengths` rows: arrays concatenated (a chunk's 0-d value broadcast to its rows), values equal in every
    chunk kept as one (the model's layers, the capacity, the accounting)."""
    if len(parts) == 1:
        return parts[0]
    acc, start, n = None, 0, sum(lengths)
    for r, rows in zip(parts, lengths):
        acc = _fill(acc, r, start, start + rows, n)
        start += rows
    return _filled(acc)


def take_priced(r: dict, idx, rows: int) -> dict:
    """Rows `idx` of a priced result of `rows` rows (0-d values kept as they are)."""
    return {k: take_priced(v, idx, rows) if isinstance(v, dict) else
            (np.broadcast_to(v, (rows,))[idx] if np.ndim(v) else v) for k, v in r.items()}


def price(model, cluster, cols: dict, device=None, accounting: str = M.DEFAULT_ACCOUNTING,
          headroom_bytes: float | None = None, chunk_rows: int = PRICE_CHUNK_ROWS, grad_dtype: str | None = None,
          cross_entropy: str | None = None) -> dict:
    """Price a table of plans. Returns arrays: step_time_s, breakdown (BREAKDOWN_KEYS), memory (5 keys, bytes, of
    the worst pipeline rank), memory_bytes, fits (memory + headroom <= the device's reported capacity),
    flops.

    `device` overrides the cluster's device profile (used by calibration). `accounting` names the
    framework whose bytes per parameter are used (parsim.costs.memory.ACCOUNTING: megatron, deepspeed,
    fsdp2); `grad_dtype` the dtype gradients are accumulated and reduced in (parsim.costs.memory.GRAD_DTYPES:
    fp32 or 16bit; None: the framework's default, DEFAULT_GRAD_DTYPE): it sets the gradient bytes per parameter
    and the bytes the data-parallel reduction moves; `cross_entropy` the loss kernel (parsim.costs.memory.CROSS_ENTROPY_IMPLS:
    native or te; None: native): the logits' bytes kept and moved. `headroom_bytes` is reserved per device for the CUDA context, NCCL buffers and
    fragmentation (None: parsim.costs.memory.default_headroom_bytes). Plans are assumed valid
    (parsim.rules). The table is priced `chunk_rows` rows at a time (`price_chunks`); the results
    are the same for any chunk size. For tables too big to keep every result of, consume
    `price_chunks` instead."""
    n = table_rows(cols) if cols else 0
    out = None
    for start, stop, r in price_chunks(model, cluster, cols, device, accounting, headroom_bytes, chunk_rows,
                                          grad_dtype, cross_entropy):
        if stop - start == n:                  # one chunk: its result as it is
            return r
        out = _fill(out, r, start, stop, n)    # into table-sized arrays as each chunk comes (no parts kept)
    return _filled(out)


class _Same:
    """A value equal in every chunk so far (kept once, as a one-chunk result would have it)."""
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v


def _fill(acc, v, start: int, stop: int, n: int):
    """Write chunk rows [start, stop) of a priced result into the table-sized result `acc` (None before
    the first chunk): arrays go into one preallocated array per key (no parts kept, no second pass); a
    0-d value stays one value while every chunk has the same, else becomes an array from then on."""
    if isinstance(v, dict):
        acc = {} if acc is None else acc
        for k, x in v.items():
            acc[k] = _fill(acc.get(k), x, start, stop, n)
        return acc
    if np.ndim(v) == 0 and (acc is None or (isinstance(acc, _Same) and np.array_equal(acc.v, v))):
        return _Same(v) if acc is None else acc
    if acc is None or isinstance(acc, _Same):
        arr = np.empty(n, dtype=np.result_type(v) if acc is None else np.result_type(acc.v, v))
        if acc is not None:
            arr[:start] = acc.v
    else:
        arr = acc if np.result_type(acc, v) == acc.dtype else acc.astype(np.result_type(acc, v))
    arr[start:stop] = v
    return arr


def _filled(acc):
    return {k: _filled(x) for k, x in acc.items()} if isinstance(acc, dict) else (
        acc.v if isinstance(acc, _Same) else acc)


def _price_rows(model, cluster, cols: dict, dev, accounting: str, headroom_bytes: float | None,
                grad_dtype: str | None = None, cross_entropy: str | None = None) -> dict:
    """`price` of one chunk of rows (columns in price's dtypes, see `_chunk`)."""
    G = _groups(cluster)
    dp, tp, pp, vpp = (np.asarray(cols[k], dtype=np.int64) for k in ("dp", "tp", "pp", "vpp"))
    mb, gb, seq = (np.asarray(cols[k], dtype=float) for k in ("mb", "gb", "seq"))
    dt, sched, gs = cols["dtype"], cols["schedule"], cols["grad_sync"]
    zero, rc = np.asarray(cols["zero"]), np.asarray(cols["recompute"], dtype=np.int64)
    sp, overlap, flash = (np.asarray(cols[k], dtype=bool) for k in ("sp", "overlap", "flash"))
    dt = np.asarray(dt, dtype=np.int64)
    ep = np.asarray(cols["ep"], dtype=np.int64) if "ep" in cols else np.ones_like(dp)
    cp = np.asarray(cols["cp"], dtype=np.int64) if "cp" in cols else np.ones_like(dp)
    has_cp = bool((cp > 1).any())
    has_ep = "ep" in cols and bool((ep > 1).any())
    # Optional columns (absent: the Plan defaults): full recompute on every N-th layer, eager
    # element-wise kernels, async TP.
    n = dp.shape
    rc_every = np.asarray(cols["rc_every"], dtype=np.int64) if "rc_every" in cols else np.ones(n, np.int64)
    eager = (np.asarray(cols["kernels"], dtype=np.int64) == KERNELS.index("eager")) if "kernels" in cols else np.zeros(n, bool)
    async_tp = np.asarray(cols["async_tp"], dtype=bool) if "async_tp" in cols else np.zeros(n, bool)
    FULL, SEL_OP = RECOMPUTE.index("full"), RECOMPUTE.index("selective-op")
    # share of layers a full-recompute plan checkpoints: floor(layers / N) of them (every N-th)
    ck = np.where(rc == FULL, (model.layers // rc_every) / model.layers, 1.0)
    e = C.DTYPE_BYTES[dt]
    h = model.hidden
    t = tp.astype(float)
    L = model.layers / pp                                  # layers per pipeline rank
    m = gb / (mb * dp)                                     # micro-batches per step
    # Per-layer compute and activation bytes depend on few columns: evaluate them once per
    # distinct (micro_batch, seq, tp, sp, flash, dtype, recompute, ep) and gather.
    # (bool and code columns have known ranges; ep and cp only when some plan uses them)
    first, inv = _distinct(sp, flash, eager, dt, rc, mb, seq, tp, *((ep,) if has_ep else ()),
                           *((cp,) if has_cp else ()), radix=(2, 2, 2, 8, 8))
    epf, cpf = ep[first], cp[first]
    lt_u = C.layer_times(model, dev, mb[first], seq[first], t[first], sp[first], flash[first], dt[first], epf, cpf,
                         rc[first], eager[first], cross_entropy or M.DEFAULT_CROSS_ENTROPY)
    lt = C.LayerTimes(*(np.asarray(getattr(lt_u, f))[inv] for f in C.LayerTimes.__dataclass_fields__))
    # Single-threaded CPU ranks beyond the host's cores share them: compute stretches by
    # ranks-on-the-host / cores (the device profile's `cores`, measured by calibration).
    cpu_share = 1.0
    if dev.kind == "cpu" and dev.cores > 0:
        cpu_share = np.maximum(1.0, np.minimum(dp * tp * pp * cp, cluster.gpus_per_node) / dev.cores)
        lt = C.LayerTimes(*(getattr(lt, f) * cpu_share for f in C.LayerTimes.__dataclass_fields__))
    pia = M.MOE_PROBS_IN_ACTIVATION[M.check_accounting(accounting)]   # what an MoE combine keeps, by framework
    a_kept = M.activation_bytes_per_layer(model, mb[first], seq[first], t[first], sp[first], rc[first], flash[first],
                                          dt[first], epf, cpf, probs_in_activation=pia)[inv]
    a_none = M.activation_bytes_per_layer(model, mb[first], seq[first], t[first], sp[first], 0,
                                          flash[first], dt[first], epf, cpf, probs_in_activation=pia)[inv]
    # every N-th layer checkpointed (full): the mean layer keeps ck of the input-only set, 1-ck of everything
    a_layer = ck * a_kept + (1.0 - ck) * a_none
    # a layer being recomputed holds its whole activation set (less what its policy kept) once at a time
    a_work = np.where((rc == FULL) & (ck > 0), a_none, np.where(rc == SEL_OP, np.maximum(a_none - a_kept, 0.0), 0.0))
    # Placement: tp innermost, then cp, then pp, then dp; the pp and dp groups stride over tp·cp.
    S = _Shapes(gs, tp, pp, dp)
    S_out = _Shapes(gs, tp * cp, pp, dp) if has_cp else S

    # Collectives the layer's ops induce (parsim.layer), per layer per micro-batch and direction:
    # each row-parallel output an all-reduce, or with sequence parallelism an all-gather plus a
    # reduce-scatter of the same total size (Shoeybi et al. 2019, Fig. 4; Korthikanti et al. 2022,
    # §4.2.2); backward repeats them. The vocab-parallel embedding all-reduces its output (forward).
    act = mb * seq / cp * h * e                            # one activation of this rank's tokens
    ar = G.vec("tp", "allreduce", S, act, "native")
    ag = G.vec("tp", "all_gather", S, act, "native")
    # A sequence-parallel block's all-gathers (forward: the column-parallel input; backward: the row-parallel output's
    # gradient) at the framework's element size: FP8 under torchtitan's Float8 TP (parsim.layer.FP8_TP_ALLGATHER_BYTES)
    ag_scale = Ly.tp_allgather_scale(dt, M.check_accounting(accounting))
    ag_sp = G.vec("tp", "all_gather", S, act * ag_scale, "native") if np.any(ag_scale != 1.0) else ag
    # Priced once per distinct message size (dense layers: two blocks of `act` bytes each). MoE
    # dispatch and combine are all-to-alls over the ep group (NVLink inside a node, NICs across).
    blocks: dict = {}
    ep_bytes = 0.0
    ops_u = Ly.layer_ops(model, mb[first], seq[first], t[first], sp[first], flash[first], dt[first], epf, cpf)
    kv_bytes = 0.0
    for grp, kind, nbytes in Ly.comms(ops_u):
        nb = np.broadcast_to(np.asarray(nbytes, dtype=float), first.shape)
        if grp == "tp" and kind == Ly.TP_BLOCK:
            key = nb.tobytes()
            blocks[key] = (blocks[key][0] + 1, nb) if key in blocks else (1, nb)
        elif grp == "ep" and kind == "all_to_all":
            ep_bytes = ep_bytes + nb
        elif grp == "cp" and kind == "ring_kv":
            kv_bytes = kv_bytes + nb
        else:
            raise AssertionError(f"collective {grp}/{kind} of the layer is not priced")
    tp_layer = tp_ag = tp_rs = 0.0
    act_u = act[first]
    for count, nb in blocks.values():
        if np.array_equal(nb, act_u):      # a full activation (dense layers): the collectives priced above
            a_ag, a_ar, nb = ag_sp, ar, act
        else:
            nb = nb[inv]
            a_ag, a_ar = G.vec("tp", "all_gather", S, nb * ag_scale, "native"), G.vec("tp", "allreduce", S, nb, "native")
        a_rs = G.vec("tp", "reduce_scatter", S, nb, "native")
        tp_layer = tp_layer + count * np.where(sp, a_ag + a_rs, a_ar)
        tp_ag, tp_rs = tp_ag + count * a_ag, tp_rs + count * a_rs
    if async_tp.any():
        tp_layer = np.where(async_tp, _async_tp_exposed_s(model, dev, ops_u, dt[first], eager[first], inv, tp_ag, tp_rs, t),
                            tp_layer)
    ep_layer = 0.0
    if model.moe_layers and has_ep:
        # one all-to-all per op carrying bytes (dispatch, combine): alpha per call, beta on the bytes
        n_a2a = sum(1 for op in ops_u for g_, k_, _ in op.comm if g_ == "ep") * model.moe_layers / model.layers
        # priced on the devices Megatron-Core places the EP group on: its rank order tp-cp-ep-dp-pp (pp last;
        # megatron/core/parallel_state.py initialize_model_parallel, expert RankGenerator(tp=etp, ep, dp, pp,
        # cp=1)) puts the ep ranks of one stage etp = tp ranks apart (inside one node when tp·ep <= its GPUs)
        ep_layer = np.where(ep > 1, _group_s(G, "all_to_all", "native", ep, tp, np.asarray(ep_bytes)[inv],
                                             calls=n_a2a), 0.0)
    # Ring attention: cp-1 steps, each a send/recv of a K/V block to the ring neighbour (tp ranks away),
    # overlapped with the attention core; backward passes K/V and dK/dV (2×) under the core's backward.
    cp_f = cp_b = kv = 0.0
    if has_cp:
        kv = np.where(cp > 1, (cp - 1) * _group_s(G, "sendrecv", "native", np.minimum(cp, 2), tp,
                                                  np.asarray(kv_bytes)[inv]), 0.0)
        cp_f = np.maximum(kv - lt.attn_core_fwd_s, 0.0)
        cp_b = np.maximum(2 * kv - lt.attn_core_bwd_s, 0.0)
    # TP overlap (Megatron-Core/Transformer Engine tp_comm_overlap, userbuffers): each sequence-parallel all-gather
    # and reduce-scatter is split into tp chunks pipelined with the GEMM that consumes or produces them (Wang et al.,
    # ASPLOS 2023, "Overlap communication with dependent computation via decomposition"): one chunk of t stays
    # exposed, the rest hides under the layer's GEMMs (everything but the attention core) when they last longer.
    tpo = np.asarray(cols["tpo"], dtype=bool) if "tpo" in cols else np.zeros(np.shape(dp), dtype=bool)
    tp_f = tp_b = tp_layer
    if tpo.any():
        hide = lambda gemm_s: np.maximum(tp_layer - np.maximum(gemm_s, 0.0), tp_layer / t)
        tp_f = np.where(tpo, hide(lt.fwd_s - lt.attn_core_fwd_s), tp_layer)
        tp_b = np.where(tpo, hide(lt.bwd_s - lt.attn_core_bwd_s), tp_layer)
    comm_f, comm_b = tp_f + ep_layer + cp_f, tp_b + ep_layer + cp_b
    tp_embed = ar                                          # vocab-parallel embedding all-reduce (forward)

    # Pipeline send/recv per micro-batch and chunk boundary; with tp>1 each rank sends 1/t
    # and the receiver all-gathers over tp (scatter/gather, Narayanan et al. 2021 §4.1).
    p2p = G.vec("pp", "sendrecv", S_out, act / t, "native") + np.where((tp > 1) & ~sp, ag, 0.0)
    p2p = np.where(pp > 1, p2p, 0.0)
    # PP overlap (Megatron-Core overlap_p2p_comm, interleaved schedules): each chunk's send/recv is posted before
    # the next chunk computes and waited on after it, so only what one chunk's forward (its layers, L/vpp) does not
    # cover is exposed.
    if "ppo" in cols and np.asarray(cols["ppo"], dtype=bool).any():
        chunk_f = (model.layers / pp) / vpp * (lt.fwd_s + comm_f)
        p2p = np.where(np.asarray(cols["ppo"], dtype=bool), np.maximum(p2p - chunk_f, 0.0), p2p)

    # What the recompute policy re-runs (parsim.layer.recomputed) and the collectives it repeats: full
    # the layer's (on the checkpointed share ck of layers), selective the core's K/V ring, selective-op
    # the all-gathers (sequence parallel) or all-reduces feeding a column-parallel GEMM it recomputes.
    regather = np.asarray(Ly.regathers(ops_u, "selective-op"), dtype=float)
    rec = lt.recompute_s + np.select([rc == FULL, rc == 1, rc == SEL_OP],
                                     [comm_f, cp_f, np.where(sp, regather * ag_sp, max(regather - 1.0, 0.0) * ar)],
                                     default=0.0)
    rec = ck * rec
    # Layers per pipeline rank (parsim.rules.stage_layer_counts: even where pp·vpp divides the layers,
    # else the embedding and the head count as a layer each). Three kinds of rank are priced: rank 0
    # (stage 0 and the embedding; with ZB-V's V or pp = 1 also the last stage and the head), the rank
    # holding the last stage when it is another one ("last"), and the heaviest other rank ("mid").
    v_shape, single = sched == 3, pp == 1
    # where the framework's pipeline runtime keeps its stage outputs, a rank's memory is walked over its op order
    keeps = M.PIPELINE_KEEPS_STAGE_OUTPUTS[M.check_accounting(accounting)]
    walk = keeps and bool(np.any(pp > 1))
    pipe = _pipeline_structure(model.layers, sched, pp, vpp, m, walk=walk)
    L_first, L_last, L_mid = pipe["L_first"], pipe["L_last"], pipe["L_mid"]
    head_first = single | v_shape                          # the head sits on rank 0
    has_last, has_mid = ~head_first, np.where(v_shape, pp > 1, pp > 2)
    layer_c, layer_tp = lt.fwd_s + lt.bwd_s, comm_f + comm_b   # TP, EP and exposed CP collectives per layer
    pp_c = 2 * vpp * p2p
    head_c = lt.head_fwd_s + lt.head_bwd_s
    first_c = L_first * layer_c + lt.embed_fwd_s + lt.embed_bwd_s + np.where(head_first, head_c, 0.0)
    last_c = L_last * layer_c + head_c
    mid_c = L_mid * layer_c
    first_tp = L_first * layer_tp + tp_embed
    T_first = first_c + first_tp + L_first * rec + pp_c
    T_last = np.where(has_last, last_c + L_last * (layer_tp + rec) + pp_c, T_first)
    T_mid = np.where(has_mid, mid_c + L_mid * (layer_tp + rec) + pp_c, 0.0)
    T_max = np.maximum(np.maximum(T_first, T_last), T_mid)
    # all ranks' work over pp: every layer once, the embedding and the head once, send/recv on every rank
    T_avg = (model.layers * (layer_c + layer_tp + rec) + lt.embed_fwd_s + lt.embed_bwd_s + head_c + tp_embed) / pp + pp_c
    Tf_avg = L * (lt.fwd_s + comm_f)
    W_avg = L * lt.wgrad_s
    Tb_avg = T_avg - Tf_avg
    bubble = np.select(
        [sched == 2, sched == 3],
        [(pp - 1) / vpp * T_avg, (pp - 1) * np.maximum(0.0, Tf_avg + Tb_avg - 3 * W_avg) / 2],
        default=(pp - 1) * T_avg)
    makespan = m * T_max + bubble
    # Seconds per micro-batch for the discrete-event simulator (parsim.simulate.priced_stage_times):
    # per layer (forward, backward without its weight-grad part, weight-grad), the embedding's and the
    # head's extras, and the send/recv a stage pays per micro-batch; stage times follow from each
    # stage's layers (parsim.rules.stage_layer_counts). F + B + W summed over a rank's stages is its T.
    stage_s = {"layer_fwd": lt.fwd_s + comm_f, "layer_bwd": lt.bwd_s + comm_b + rec - lt.wgrad_s,
               "layer_w": lt.wgrad_s, "embed_fwd": lt.embed_fwd_s + tp_embed, "embed_bwd": lt.embed_bwd_s,
               "head_fwd": lt.head_fwd_s, "head_bwd": lt.head_bwd_s, "p2p": p2p}

    # Parameters per rank kind. Routed experts are sharded over ep (each rank holds experts/ep of every
    # MoE layer of its stages); the layers' dense part and the routed experts are each taken at their
    # mean per layer (dense and MoE layers mixed: the pipeline splits layers, not parameters).
    P_layer = model.params_per_layer
    X = model.moe_layers * model.experts * model.expert_params        # routed expert parameters
    tied_copy = model.tied_embeddings & (pp > 1)           # an untied copy of the embedding as the head
    head_P = model.head_params + np.where(tied_copy, model.vocab * h, 0)
    # Dense and MoE layers per rank kind. A dense prefix (moe_first_dense, MoE on every later layer: DeepSeek's
    # first_k_dense_replace) sits on the first rank, so the others hold MoE layers only (trial 2026-11-30: the mean
    # layer gave every rank 3/61 of DeepSeek-V3's dense MLPs in place of experts, 5% too few expert parameters on
    # the worst rank); dense layers spread through the model (moe_every > 1) are taken at their mean share.
    if model.dense_prefix:
        nd = {"first": np.minimum(model.dense_prefix, L_first), "last": 0.0, "mid": 0.0}
    else:
        nd = {k: Lk * model.dense_layers / model.layers for k, Lk in (("first", L_first), ("last", L_last),
                                                                      ("mid", L_mid))}
    Lk = {"first": L_first, "last": L_last, "mid": L_mid}
    moe_dense_part = (model.moe_layer_params - model.experts * model.expert_params) if model.experts else 0.0
    dense_P = {k: nd[k] * model.dense_layer_params + (Lk[k] - nd[k]) * moe_dense_part if model.experts
               else Lk[k] * model.dense_layer_params for k in Lk}
    P_first = (dense_P["first"] + model.embedding_params + np.where(head_first, head_P, 0)) / t
    P_last = np.where(has_last, (dense_P["last"] + head_P) / t, 0.0)
    P_mid = dense_P["mid"] / t
    x_moe = model.experts * model.expert_params / (ep * t)   # routed expert parameters of one MoE layer on one rank
    X_first, X_last, X_mid = ((L_first - nd["first"]) * x_moe, np.where(has_last, (L_last - nd["last"]) * x_moe, 0.0),
                              (L_mid - nd["mid"]) * x_moe)
    P_dense = np.maximum(np.maximum(P_first, P_last), P_mid)
    P_exp = np.maximum(np.maximum(X_first, X_last), X_mid) if X else 0.0
    P_rank = np.maximum(np.maximum(P_first + X_first, P_last + X_last), P_mid + X_mid) if X else P_dense
    sharded = bool(X) and has_ep             # (dense tables skip the expert arithmetic)

    # Data-parallel sync of the largest stage, by the plan's algorithm (ZeRO: its reduce-scatter
    # and all-gather forms), as the frameworks schedule it per ZeRO stage (parsim.costs.dpsync).
    # With ep > 1 the expert gradients are reduced over their own expert-data-parallel group; with cp > 1 the weights
    # are replicated over dp·cp ranks, which reduce the gradients. The experts too: a rank holds the experts of its
    # ep index, shared by the dp/ep ranks of that index in each of the cp groups, so the expert-data-parallel group has
    # dp·cp/ep ranks (Megatron-Core folds cp into it: its expert RankGenerator(tp=etp, ep, dp, pp, cp=1) takes
    # dp = world / (etp·ep·pp), i.e. dp·cp/ep at etp = tp; trial 2026-11-30: dp/ep left the experts' optimizer
    # state cp times too large at cp 4 and their gradients unreduced across cp).
    # Gradients move in the dtype they are reduced in (parsim.costs.memory.grad_element_bytes: fp32 or 16-bit, by
    # --grad-dtype or the framework's default), parameters (ZeRO's all-gather) in their 16-bit dtype.
    edp = dp * cp // ep
    ge = M.grad_element_bytes(accounting, dt, grad_dtype)
    P_sync = np.where(ep > 1, P_dense, P_rank) if sharded else P_rank
    grad_bytes, param_bytes = P_sync * ge, P_sync * e
    t_ar = G.vec("dp", "allreduce", S, grad_bytes)
    t_rs = G.vec("dp", "reduce_scatter", S, grad_bytes, lambda a: ZERO_SYNC_ALGOS.get(a, ("native",))[0])
    t_ag = G.vec("dp", "all_gather", S, param_bytes, lambda a: ZERO_SYNC_ALGOS.get(a, (None, "native"))[1])
    if has_cp:
        t_ar, t_rs, t_ag = (np.where(cp > 1, v, old) for v, old in
                            zip(_dpcp_vec(G, gs, tp, pp, dp, cp, grad_bytes, param_bytes), (t_ar, t_rs, t_ag)))
    if sharded:
        # the expert-data-parallel group on Megatron's devices (order tp-ep-dp-pp of the expert RankGenerator):
        # edp ranks of one stage tp·ep apart
        x_ar, x_rs, x_ag = (np.where((ep > 1) & (edp > 1), _group_s(G, op, "native", edp, tp * ep, P_exp * b), 0.0)
                            for op, b in (("allreduce", ge), ("reduce_scatter", ge), ("all_gather", e)))
        t_ar, t_rs, t_ag = t_ar + x_ar, t_rs + x_rs, t_ag + x_ag
    bwd_last_mb = np.minimum(T_first, T_last) - np.minimum(Tf_avg, T_max)
    t_sync, dp_exposed = dp_sync_s(zero, m, t_ar, t_rs, t_ag, overlap, bwd_last_mb, T_avg, L)
    t_sync, dp_exposed = np.where(dp > 1, t_sync, 0.0), np.where(dp > 1, dp_exposed, 0.0)

    # ZeRO shards over every rank holding the same weights: dp·cp (the weights are replicated over the cp
    # ranks too; Megatron's distributed optimizer uses the data-parallel group with context parallel,
    # parallel_state.get_data_parallel_group(with_context_parallel=True); torchtitan's FSDP2 the dp_shard_cp mesh)
    dpc = dp * cp
    opt_params = P_rank / np.where(zero >= 1, dpc, 1)
    if sharded:
        opt_params = np.where(ep > 1, P_dense / np.where(zero >= 1, dpc, 1) + P_exp / np.where(zero >= 1, edp, 1), opt_params)
    opt = C.optimizer_s(dev, opt_params, dt, L) * cpu_share
    # MXFP8 plans quantize every local FP8-GEMM weight to its rowwise and columnwise MXFP8 copies once a step
    # (parsim.costs.compute.mxfp8_weight_quantize_s), on the rank holding the most layers
    fp8_rows, mx_rows = Ly.is_fp8(dt), dt == Ly.MXFP8
    # weight elements of a layer's FP8 GEMMs on one rank, per plan (FP8 plans only)
    w_fp8 = (np.broadcast_to(np.asarray(_fp8_weight_elems(ops_u), dtype=float), first.shape)[inv]
             if fp8_rows.any() else 0.0)
    if mx_rows.any():
        opt = opt + np.where(mx_rows, C.mxfp8_weight_quantize_s(dev, np.maximum(np.maximum(L_first, L_last), L_mid)
                                                                 * w_fp8), 0.0)
    step = makespan + dp_exposed + opt

    # Breakdown on the bottleneck rank.
    which = np.where(T_first >= np.maximum(T_last, T_mid), 0, np.where(T_last >= T_mid, 1, 2))
    L_b = np.choose(which, [L_first, L_last, L_mid])
    stage_c = np.choose(which, [first_c, last_c, mid_c])
    # TP collectives of the stage from their own terms (per layer tp_f + tp_b: exposed forward and backward, after
    # any TP overlap), not layer_tp less the EP and CP parts: that difference left rounding residues below zero.
    stage_tp = L_b * (tp_f + tp_b) + np.where(which == 0, tp_embed, 0.0)
    ep_stage = L_b * 2 * ep_layer
    cp_stage = L_b * (cp_f + cp_b)
    zeros = np.zeros(np.shape(step))                       # one shared (read-only) column for absent parts
    breakdown = {
        "compute": m * stage_c, "recompute": m * L_b * rec, "tp_comm": m * stage_tp,
        "ep_comm": m * ep_stage if sharded else zeros,
        "cp_comm": m * cp_stage if has_cp else zeros, "pp_comm": m * pp_c,
        "bubble": bubble, "dp_comm_exposed": dp_exposed, "optimizer": opt,
    }

    # Memory of every rank kind; the worst one is reported. In-flight activations per rank are the
    # schedule's own peaks (parsim.costs.memory.inflight_chunks) in units of one stage of that rank
    # (its layers / vpp); the last stage keeps the loss's logits of its in-flight micro-batches (fp32, or 16-bit
    # with Transformer Engine's fused loss: parsim.costs.memory.loss_logit_bytes) plus
    # what its framework's loss backward adds (parsim.costs.memory.loss_backward_logits), and per in-flight
    # micro-batch what the final norm and the output layer keep of their inputs (parsim.costs.memory.head_saved_bytes).
    logits = M.loss_logit_bytes(e, cross_entropy) * mb * seq / cp * model.vocab / t   # the loss's logits, 1 micro-batch
    extra_logits = M.loss_backward_logits(accounting, t, cross_entropy)
    head_saved = M.head_saved_bytes(accounting, e, mb * seq / cp, h, t, sp)
    logits_held = logits * (pipe["logits_inflight"] + extra_logits) + pipe["logits_inflight"] * head_saved
    acts = {"first": pipe["held_first"] * a_layer + a_work + np.where(head_first, logits_held, 0.0),
            "last": pipe["held_last"] * a_layer + a_work + logits_held,
            "mid": pipe["held_mid"] * a_layer + a_work}
    per_param = M.state_bytes_per_param(dpc, zero, dt, accounting, grad_dtype)
    state_pp = per_param[0] + per_param[1] + per_param[2]
    # routed experts: their ZeRO shards are over the expert-data-parallel group (dp·cp/ep ranks)
    per_param_x = M.state_bytes_per_param(edp, zero, dt, accounting, grad_dtype) if sharded else per_param
    state_x = per_param_x[0] + per_param_x[1] + per_param_x[2]
    buffers = M.DDP_BUCKET_BYTES * (dp > 1) + np.where(zero >= 3, 2 * P_layer / t * e, 0.0)
    # The pipeline runtime's own buffers per rank kind (parsim.costs.memory.pipeline_stage_bytes): what crosses a
    # stage boundary is the rank's local activation, 1/t of it with sequence parallelism (Megatron's p2p also sends
    # 1/t without it: scatter-gather of the replicated activation, parsim's convention act/t for every plan there).
    boundary = np.where(sp | (not keeps), act / t, act)
    logits16 = e * mb * seq / cp * model.vocab / t           # one micro-batch's 16-bit logits
    pp_buf = {k: np.where(pp > 1, M.pipeline_stage_bytes(accounting, m, vpp, boundary, logits16, nf, nl,
                                                         pipe["chunks_" + k]), 0.0)
              for k, nf, nl in (("first", True, head_first), ("last", False, True), ("mid", False, False))}
    # FP8 weights on top of the framework's own and the scaling state per FP8 tensor (input, weight, output
    # gradient), by framework (parsim.costs.memory.FP8_WEIGHT_COPY: Transformer Engine's FP8 copy + transpose and
    # delayed-scaling amax history; none for Megatron's FP8 primary weights' copy, none of either for torchao's
    # dynamic scaling under FSDP2).
    fp8_layer = 0.0
    if fp8_rows.any():
        n_tensors = 3 * sum(float(np.max(op.weight)) > 0 for op in ops_u if op.fp8)
        # Megatron's FP8/MXFP8 weight is the parameter itself (fp8_param_gather): what it adds over the 16-bit weight
        # is sharded as the weights are, over dp·cp at ZeRO-3 (trial 2026-11-30: MXFP8's 0.0625 B/param was charged on
        # every tp-local parameter, 2 GiB on llama3-70b tp 2 at ZeRO-3, where the rank holds 1/(dp·cp) of them)
        held = np.where((zero >= 3) & (accounting == "megatron"), 1.0 / dpc, 1.0)
        for code, table in ((Ly.FP8, M.FP8_WEIGHT_COPY), (Ly.MXFP8, M.MXFP8_WEIGHT_COPY)):
            copy_B, history = table[M.check_accounting(accounting)]
            fp8_layer = np.where(dt == code, copy_B * w_fp8 * held + n_tensors * history * 4.0, fp8_layer)
    # FSDP2's root module (torchtitan: the embedding, the final norm and the output layer, outside every block)
    # is not resharded after forward ("the root FSDP state has its value specially set to False", fully_shard's
    # reshard_after_forward doc): at ZeRO-3 its unsharded 16-bit parameters stay from forward through backward,
    # and the output layer's unsharded gradient from the start of backward to the root's post-backward, the last.
    root = {"first": 0.0, "last": 0.0}
    if accounting == "fsdp2" and np.any(zero >= 3):
        z3 = (zero >= 3) & (e < 4.0)
        emb, head = model.embedding_params / t * e, head_P / t * e
        root = {"first": np.where(z3, emb + np.where(head_first, 2 * head, 0.0), 0.0),
                "last": np.where(z3, 2 * head, 0.0)}
    buffers_by = {"first": buffers + root["first"] + pp_buf["first"], "last": buffers + root["last"] + pp_buf["last"],
                  "mid": buffers + pp_buf["mid"]}
    Ps = {"first": P_first, "last": P_last, "mid": P_mid}
    Xs = {"first": X_first, "last": X_last, "mid": X_mid}
    Ls = {"first": L_first, "last": L_last, "mid": L_mid}
    # per rank kind: weights, gradients, optimizer state, activations, buffers (bytes)
    parts = {k: [Ps[k] * per_param[0] + Xs[k] * per_param_x[0] + Ls[k] * fp8_layer,
                 Ps[k] * per_param[1] + Xs[k] * per_param_x[1],
                 Ps[k] * per_param[2] + Xs[k] * per_param_x[2], acts[k], buffers_by[k]] for k in Ps}
    if walk:
        base = {"first": buffers + root["first"], "last": buffers + root["last"], "mid": buffers}
        _walk_pipeline_memory(parts, base, pipe, Ls, pp, vpp, m, a_layer, a_work, logits, extra_logits, head_saved,
                              logits16, boundary, head_first)
    # The optimizer step's fp32 copy of 16-bit gradients (parsim.costs.memory.STEP_GRAD_COPY) lives when no
    # activation does: it raises a rank's peak only by what it exceeds them by (counted with the optimizer state).
    step_copy = M.step_grad_copy_bytes_per_param(dpc, zero, dt, accounting, grad_dtype)
    step_copy_x = M.step_grad_copy_bytes_per_param(edp, zero, dt, accounting, grad_dtype) if sharded else step_copy
    if np.any(step_copy > 0):
        for k in parts:
            parts[k][2] = parts[k][2] + np.maximum(Ps[k] * step_copy + Xs[k] * step_copy_x - parts[k][3], 0.0)
    totals = {k: sum(np.broadcast_to(np.asarray(x, dtype=float), np.shape(step)) for x in parts[k]) for k in parts}
    totals["last"] = np.where(has_last, totals["last"], 0.0)
    totals["mid"] = np.where(has_mid, totals["mid"], 0.0)
    worst = np.where(totals["first"] >= np.maximum(totals["last"], totals["mid"]), 0,
                     np.where(totals["last"] >= totals["mid"], 1, 2))
    weights, grads, optim, activations, buffers = (
        np.choose(worst, [np.broadcast_to(np.asarray(parts[k][j], dtype=float), np.shape(worst))
                          for k in ("first", "last", "mid")]) for j in range(5))
    total = weights + grads + optim + activations + buffers
    # pipeline rank of the worst kind: 0; the last stage's (pp - 1, or 0 in a V); rank 1 (pp - 1 in a V)
    worst_rank = np.where(worst == 0, 0, np.where(worst == 1, np.where(single | v_shape, 0, pp - 1),
                                                  np.where(v_shape, pp - 1, 1)))
    capacity = dev.memory_bytes
    headroom = M.default_headroom_bytes(capacity) if headroom_bytes is None else float(headroom_bytes)

    # FLOPs per sequence (parsim.layer states the convention): executed (HFU) and counted (MFU).
    seq_u, flash_u = seq[first], flash[first]
    hw_layer = np.asarray(model.layer_fwd_flops(seq_u, flash_u), dtype=float)[inv]
    logits_fl = np.asarray(model.logits_fwd_flops(seq_u), dtype=float)[inv]
    per_seq_model = 3 * (model.layers * np.asarray(model.model_layer_fwd_flops(seq_u), dtype=float)[inv] + logits_fl)
    per_seq_hw = 3 * (model.layers * hw_layer + logits_fl)
    extra = np.zeros(np.shape(rc))
    for code, policy in enumerate(RECOMPUTE):
        if code and np.any(rc == code):
            pol = np.broadcast_to(np.asarray(model.recompute_fwd_flops(policy, seq_u, flash_u), dtype=float),
                                  seq_u.shape)[inv]
            extra = np.where(rc == code, ck * pol, extra)
    return {
        "step_time_s": step, "makespan_s": makespan, "microbatches": m, "stage_s": stage_s, "layers": model.layers,
        "dp_sync_s": np.where(dp > 1, t_sync, 0.0),
        "breakdown": breakdown, "cp_kv_s": m * L * 3 * kv if has_cp else zeros,
        "memory": {"weights": weights, "grads": grads, "optimizer": optim, "activations": activations, "buffers": buffers},
        "memory_bytes": total, "memory_capacity_bytes": capacity, "memory_headroom_bytes": headroom,
        "fits": total + headroom <= capacity, "worst_rank": worst_rank,
        "memory_by_rank_kind": totals, "memory_accounting": accounting,
        "model_flops": gb * per_seq_model, "hardware_flops": gb * (per_seq_hw + model.layers * extra),
        "peak_flops": C.peak_flops(dev, dt),
    }


@functools.lru_cache(maxsize=64)
def _cluster_cached(spec: str, gpus):
    from parsim.topology import load_cluster
    return load_cluster(spec, gpus)


def get_cluster(spec, gpus=None):
    """load_cluster, memoised for preset names and paths (a Cluster is not mutated once built),
    so that repeated predictions reuse the priced communication groups."""
    if isinstance(spec, str):
        return _cluster_cached(spec, gpus)
    from parsim.topology import load_cluster
    return load_cluster(spec, gpus)     # a Cluster as is; anything else refused


def _scalar(x):
    return float(np.asarray(x).ravel()[0])


def _too_big_to_play(plan) -> bool:
    from parsim.schedules.pipeline import schedule_ops
    return schedule_ops(plan.schedule, plan.pp, plan.vpp, plan.microbatches) > MAX_SIM_OPS


def simulated_makespan(r: dict, cols: dict, i: int):
    """Makespan of plan ``i`` of a priced table played by the discrete-event simulator, or None where
    the closed form is exact (pp = 1) or the schedule has more than parsim.limits.MAX_SIM_OPS ops (the
    caller notes the closed form). The plan must satisfy the rule book (parsim.rules), which accepts
    exactly the schedules the simulator builds: a refusal here is a bug, so it propagates."""
    pp = int(cols["pp"][i])
    if pp == 1:
        return None
    from parsim.schedules.pipeline import schedule_ops
    from parsim.simulate import simulate_priced
    m = int(round(float(np.asarray(r["microbatches"]).ravel()[i])))
    name, vpp = SCHEDULES[int(cols["schedule"][i])], int(cols["vpp"][i])
    if schedule_ops(name, pp, vpp, m) > MAX_SIM_OPS:
        return None
    return simulate_priced(r, i, name, pp, vpp, m).makespan_s


def _loss_note(model, plan: Plan, seq: int, accounting: str, cross_entropy: str | None) -> str:
    """What the loss holds on the last stage (parsim.costs.memory.loss_logit_bytes per in-flight micro-batch, and
    loss_backward_logits once, at its backward), and, for Megatron's native loss, what Transformer Engine's fused one
    (--cross-entropy te) would hold instead. Printed ("loss:") from 1 GiB for one micro-batch, else JSON only."""
    e = float(C.DTYPE_BYTES[DTYPES.index(plan.dtype)])
    entries = plan.micro_batch * seq / plan.cp * model.vocab / plan.tp
    kinds = M.CROSS_ENTROPY_IMPLS if accounting == "megatron" else ("native",)   # te is Megatron's only
    held = {c: [float(x) / GiB for x in M.loss_held_bytes(accounting, e, entries, plan.tp, c)] for c in kinds}
    kept, once = {c: h[0] for c, h in held.items()}, {c: h[1] for c, h in held.items()}
    ce = cross_entropy or M.DEFAULT_CROSS_ENTROPY
    shape = f"{plan.micro_batch}x{seq // plan.cp} tokens x {model.vocab:,}/{plan.tp} vocabulary"
    if ce == "te":
        what = (f"Transformer Engine fused cross entropy keeps {kept[ce]:.2f} GiB of 16-bit logits per in-flight "
                f"micro-batch on the last stage, the gradient written over them ({shape})")
    else:
        what = (f"native fp32 cross entropy keeps {kept[ce]:.2f} GiB of fp32 logits per in-flight micro-batch on the "
                f"last stage, and {once[ce]:.2f} GiB more once, at its backward ({shape}; {accounting}'s count, "
                f"parsim.costs.memory.LOSS_BACKWARD_LOGITS)")
    words = f"loss{':' if kept[ce] + once[ce] >= 1.0 else ' detail:'} {what}"
    if ce == "native" and accounting == "megatron":
        words += (f"; Transformer Engine's fused loss (--cross-entropy te, the Megatron-Bridge performance recipes') "
                  f"keeps {kept['te']:.2f} GiB per micro-batch and nothing more")
    return words


def _mxfp8_gap_note(model, cluster, plan: Plan, step_s: float, accounting, headroom_bytes, grad_dtype,
                    cross_entropy=None) -> str:
    """How much slower parsim prices this MXFP8 plan than the same plan in per-tensor FP8, beside the gaps published for
    pairs of such runs (parsim.corpus.precision_pairs): MXFP8's casts, scales and weight re-quantisation are priced
    (parsim.layer), the rest of the published gap is not (trial 2026-11-30: no answer said so)."""
    from parsim.corpus import precision_gap_words
    fp8 = price(model, cluster, plan_columns([plan.with_(dtype="fp8")], model), accounting=accounting,
                headroom_bytes=headroom_bytes, grad_dtype=grad_dtype, cross_entropy=cross_entropy)
    closed = _scalar(fp8["step_time_s"])
    mine = closed / step_s - 1 if step_s > 0 else 0.0     # mxfp8's throughput relative to fp8's (both closed forms)
    published = precision_gap_words("fp8", "mxfp8")
    if not published:
        return f"mxfp8: priced {100 * mine:+.1f}% throughput against the same plan in per-tensor fp8"
    return (f"mxfp8: priced {100 * mine:+.1f}% throughput against the same plan in per-tensor fp8; {published}: what "
            f"MXFP8 costs beyond its casts and scales is not priced, expect it slower than shown")


def predict(model, cluster, plan: Plan, gpus: int | None = None, accounting: str = M.DEFAULT_ACCOUNTING,
            headroom_bytes: float | None = None, grad_dtype: str | None = None,
            cross_entropy: str | None = None) -> StepReport:
    """Price one plan: the step time, its breakdown and the memory per device.

    model: a ModelSpec, a preset name (``parsim.model.preset_names()``) or a model file;
    cluster: a Cluster, a preset name or a cluster file (sized to `gpus`, default ``plan.gpus``);
    plan: a Plan (dp·tp·pp devices); accounting: bytes per parameter by framework (megatron,
    deepspeed, fsdp2; parsim.costs.memory); headroom_bytes: reserved per device (None: the sourced
    default); grad_dtype: fp32 or 16bit, the dtype gradients are accumulated and reduced in (None: the
    framework's default, parsim.costs.memory.DEFAULT_GRAD_DTYPE); cross_entropy: the loss kernel, native or te
    (Transformer Engine's fused cross entropy, Megatron only; None: native). Returns a StepReport: seconds (``step_time_s``, ``breakdown_s`` — compute, recompute,
    tp_comm, pp_comm, bubble, dp_comm_exposed, optimizer — on the bottleneck stage), rates (tokens/s,
    samples/s, model/hardware TFLOP/s per GPU, MFU, HFU) and GiB (``memory_GiB``,
    ``memory_breakdown_GiB`` on the worst pipeline rank; ``fits`` against the device's capacity less
    the headroom). The step is m·T_max + bubble + exposed DP sync + optimizer (Narayanan et al. 2021
    §2.2, §3), the pipeline played by the discrete-event simulator where pp > 1.

    Raises ParsimError for an unknown model/cluster or a plan the rule book (parsim.rules) refuses
    (degrees that do not multiply to the devices, tp not dividing the heads, ...), naming the values,
    or a cluster too small for it.
    """
    from parsim.limits import check_plan_sizes
    from parsim.model import load_model
    check_plan_sizes(plan, gpus)      # before anything is sized by them
    model = load_model(model)
    M.check_accounting(accounting)
    M.check_grad_dtype(grad_dtype, plan.dtype)
    M.check_cross_entropy(cross_entropy, accounting)
    if headroom_bytes is not None and not (np.isfinite(headroom_bytes) and headroom_bytes >= 0):
        raise ParsimError(f"memory headroom = {headroom_bytes!r} bytes: expected a finite size >= 0")
    check_plan(plan, model, gpus or plan.gpus)
    cluster = get_cluster(cluster, gpus or plan.gpus)
    if plan.dtype in FP8_DTYPES:                          # the rules that read the device
        check_plan(plan, model, device=cluster.device)
    zero_sync_algorithms(plan.grad_sync, plan.zero)       # ZeRO needs a reduce-scatter/all-gather form
    if plan.gpus > cluster.num_devices:
        raise ParsimError(f"plan needs {plan.gpus} devices but cluster {cluster.name} has {cluster.num_devices}")
    M.check_headroom_below_capacity(headroom_bytes, cluster.device)
    M.check_cross_entropy_device(cross_entropy, cluster.device)
    cols = plan_columns([plan], model)
    r = price(model, cluster, cols, accounting=accounting, headroom_bytes=headroom_bytes, grad_dtype=grad_dtype,
              cross_entropy=cross_entropy)
    step = _scalar(r["step_time_s"])
    breakdown = {k: _scalar(v) for k, v in r["breakdown"].items()}
    # The pipeline part is played by the simulator; the closed form is kept where exact (pp = 1).
    sim, closed = simulated_makespan(r, cols, 0), _scalar(r["makespan_s"])
    if sim is not None:
        # the simulated makespan replaces the closed form's bubble; a difference at rounding level is no negative
        # bubble (trial 2026-11-30 printed "bubble -0.0000 -0.0%")
        bub = breakdown["bubble"] + sim - closed
        step, breakdown["bubble"] = step + sim - closed, (0.0 if abs(bub) <= 1e-12 * max(step, 1e-30) else bub)
    gpus_ = plan.gpus
    seq = plan.seq_len or model.seq_len
    mem = {k: _scalar(v) / GiB for k, v in r["memory"].items()}
    total = _scalar(r["memory_bytes"])
    cap, room = cluster.device.memory_bytes, _scalar(r["memory_headroom_bytes"])
    fits = bool(np.asarray(r["fits"]).ravel()[0])
    worst = int(np.asarray(r["worst_rank"]).ravel()[0])
    reason = "" if fits else (f"pipeline rank {worst} needs {total / GiB:.2f} GiB + {room / GiB:.2f} GiB headroom = "
                              f"{(total + room) / GiB:.2f} GiB but a {cluster.device.name} has {cap / GiB:.2f} GiB")
    mf, hf, pk = _scalar(r["model_flops"]), _scalar(r["hardware_flops"]), _scalar(r["peak_flops"])
    from parsim.rules import ParallelDims
    dims = ParallelDims.of(plan, model)
    code = DTYPES.index(plan.dtype)
    g32 = M.grad_dtype_name(accounting, code, grad_dtype) == "fp32"
    per_param = [float(b) for b in M.state_bytes_per_param(1, 0, code, accounting, grad_dtype)]
    copy_B = float(M.step_grad_copy_bytes_per_param(1, 0, code, accounting, grad_dtype))
    notes = [f"memory: worst pipeline rank ({worst}); {accounting} accounting "
             f"({'+'.join(f'{b:g}' for b in per_param)} B/param before ZeRO, gradients reduced in "
             f"{'fp32' if g32 else plan.dtype if plan.dtype in ('bf16', 'fp16') else 'bf16'}"
             f"{'' if grad_dtype else ', the framework default (--grad-dtype)'}); "
             f"activations per Korthikanti et al. 2022, in flight as the {plan.schedule} schedule holds them",
             f"memory: capacity {cap / GiB:.2f} GiB ({cap / 2 ** 20:,.0f} MiB as the device reports it), "
             f"headroom {room / GiB:.2f} GiB (CUDA context, NCCL buffers, fragmentation)"]
    if copy_B:
        notes.append(f"gradients: 16-bit, so the optimizer step makes an fp32 copy of them ({copy_B:g} B/param, sharded "
                     f"like the optimizer: {accounting}'s {sum(per_param) + copy_B:g} "
                     f"B/param at the step); it lives when the activations are freed, so the optimizer row includes what it "
                     f"exceeds them by")
    notes.append(_loss_note(model, plan, seq, accounting, cross_entropy))
    unhidden = [w for w, on in (("TP (--tp-overlap)", plan.tp > 1 and plan.sequence_parallel and not plan.tp_overlap
                                  and not plan.async_tp),
                                 ("PP (--pp-overlap)", plan.schedule == "interleaved" and not plan.pp_overlap)) if on]
    if unhidden:
        notes.append(f"overlap: {' and '.join(unhidden)} communication overlap not priced; Megatron-Core / Transformer "
                     f"Engine run it (the NeMo / Megatron-Bridge recipes turn it on, and their published runs are priced "
                     f"with it), and it makes a plan like this faster")
    if plan.pp > 1:
        notes.append(f"pipeline: {dims.describe()}")
    if plan.cp > 1:
        kv_s = _scalar(r["cp_kv_s"])
        notes.append(f"context parallel: ring K/V exchange {kv_s:.6g} s per step (forward K/V, backward K/V and dK/dV), "
                     f"{kv_s - breakdown['cp_comm']:.6g} s of it hidden under the attention core, "
                     f"{breakdown['cp_comm']:.6g} s exposed (cp_comm)")
    if plan.dtype in FP8_DTYPES:
        mx = plan.dtype == "mxfp8"
        notes.append(f"{plan.dtype}: the layers' GEMMs at the {'MXFP8' if mx else 'FP8'} peak "
                     f"({cluster.device.peak_flops[plan.dtype] / 1e12:.0f} TFLOP/s) "
                     f"with the FP8 efficiency curve, attention, norms, embedding and loss in bf16; "
                     + ("each GEMM operand quantized rowwise and columnwise (2 copies + 1 scale byte per 32 elements), "
                        "the weights once a step; " if mx else "")
                     + f"memory ({accounting} accounting): {_fp8_memory_words(accounting, plan.dtype)}; "
                     f"MFU/HFU are taken against "
                     f"the bf16 peak ({pk / 1e12:.0f} TFLOP/s), as NeMo and Megatron report; achieved model "
                     f"{mf / step / gpus_ / 1e12:.1f} TFLOP/s per GPU")
    if plan.dtype == "mxfp8" and cluster.device.peak_flops.get("fp8", 0.0):
        notes.append(_mxfp8_gap_note(model, cluster, plan, _scalar(r["step_time_s"]), accounting, headroom_bytes,
                                     grad_dtype, cross_entropy))
    if plan.ep > 1:
        notes.append("expert parallel: balanced routing assumed (every expert gets tokens·top_k/experts)")
    if plan.recompute not in FRAMEWORK_RECOMPUTE.get(accounting, RECOMPUTE):
        notes.append(f"recompute: {plan.recompute} is not a policy of the {accounting} accounting's framework (it runs "
                     f"{', '.join(FRAMEWORK_RECOMPUTE[accounting])}; selective-op is torchtitan's op-level SAC, "
                     f"--memory-accounting fsdp2): priced as asked, but no run of that framework does it")
    if plan.flash_attention and cluster.device.attention_eff_fwd is not None and model.head_dim != 128:
        # the profiles' attention curves are head-dim-128 kernel benchmarks (parsim/data/devices.yaml)
        notes.append(f"attention: the flash core is priced at {cluster.device.name}'s head-dim-128 kernel rates (the "
                     f"published curves); this model's heads are {model.head_dim} wide, and kernel rates differ by head "
                     f"dim (FlashAttention-2 on H100, causal forward at 16k: 335 TFLOP/s at 128, 299 at 64; FlashAttention-3 "
                     f"paper, Fig. 5)")
    if plan.pp > 1 and model.dense_prefix:
        notes.append(f"dense prefix: the first pipeline rank holds the {model.dense_prefix} dense layers (memory "
                     f"priced per rank: the others hold MoE layers only); every stage's time is priced with the mean "
                     f"layer ({model.moe_layers} of {model.layers} MoE)")
    if plan.pp > 1 and model.window_layers not in (None, model.layers):
        share = float(Ly.window_share(model.sliding_window, seq))
        mean = (model.window_layers * share + model.layers - model.window_layers) / model.layers
        if mean < 1.0:
            notes.append(f"window: every stage is priced with the mean layer's attention span ({model.window_layers} of "
                         f"{model.layers} layers windowed: {mean:.3f} of the global core); where the windowed layers sit "
                         f"together (Qwen2's max_window_layers, a clustered layer_types) a stage of global layers does up "
                         f"to {1 / mean:.2f}x that core work and its stage is slower than priced (Gemma-2's alternation "
                         f"spreads them evenly)")
    if sim is not None:
        notes.append(f"pipeline: simulated makespan {sim:.6g} s, closed form {closed:.6g} s")
    elif plan.pp > 1 and _too_big_to_play(plan):
        notes.append(f"pipeline: closed form only: {plan.microbatches} micro-batches x pp {plan.pp} x vpp {plan.vpp} "
                     f"is beyond the simulator's limit of {MAX_SIM_OPS} ops (parsim.limits.MAX_SIM_OPS); its "
                     f"error, at most (p-1)/m of a stage's time, is negligible at that many micro-batches")
    require_finite(f"predict {model.name} {plan.label()}", step_time_s=step, memory_bytes=total,
                   breakdown_s=breakdown.values(), model_flops=mf)
    return StepReport(
        step_time_s=step,
        **step_rates(step, plan.global_batch, seq, mf, hf, gpus_, pk),
        memory_GiB=total / GiB, memory_breakdown_GiB=mem, fits=fits, fits_reason=reason,
        breakdown_s=breakdown,
        plan={**plan.to_dict(), "seq_len": seq}, model=model.name, cluster=cluster.name, device=cluster.device.name,
        gpus=gpus_, notes=notes, memory_accounting=accounting, grad_dtype="fp32" if g32 else "16bit",
        cross_entropy=cross_entropy or M.DEFAULT_CROSS_ENTROPY,
        memory_capacity_GiB=cap / GiB,
        memory_headroom_GiB=room / GiB, memory_worst_rank=worst,
        seq_len=seq, params_total=model.params, params_active=model.active_params, model_summary=model.summary(),
    )

