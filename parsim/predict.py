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
where T is one micro-batch's forward+backward on a stage (compute, recompute, tensor-
parallel collectives, pipeline send/recv), m = global_batch/(micro_batch·dp).
The discrete-event simulator (parsim.simulate) plays the same schedules exactly.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np

from parsim.costs import compute as C
from parsim import layer as Ly
from parsim.costs import memory as M
from parsim.costs.network import collective_coeffs
from parsim.errors import ParsimError
from parsim.plan import DTYPES, GRAD_SYNC, RECOMPUTE, SCHEDULES, Plan, validate

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
    seq_len: int = 0                 # the training length used (the plan's, else the model's)
    params_total: int = 0            # all parameters, tied embeddings once
    params_active: int = 0           # per token (MoE: top_k routed experts); = params_total when dense
    model_summary: str = ""          # shapes and where seq_len came from

    def to_dict(self) -> dict:
        return asdict(self)


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
    }


def _unique_rows(*cols, radix=()):
    """(first index, inverse) of the distinct rows of non-negative integer columns: one 1-D np.unique
    on a mixed-radix key when the columns' ranges fit in 63 bits, else np.unique over rows.
    radix: known exclusive upper bounds of the first len(radix) columns (saves a pass each)."""
    cols = [c if getattr(c, "dtype", None) == np.int64 else np.asarray(c, dtype=np.int64) for c in cols]
    key, span = None, 1
    for i, c in enumerate(cols):
        r = radix[i] if i < len(radix) else (int(c.max()) + 1 if c.size else 1)
        if span * r >= 2 ** 63:
            _, first, inv = np.unique(np.stack(cols, axis=1), axis=0, return_index=True, return_inverse=True)
            return first, inv.ravel()
        key, span = (c.copy() if key is None else key * r + c), span * r
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    return first, inv


class _Groups:
    """Communication coefficients per distinct process-group shape, cached per cluster."""

    def __init__(self, cluster):
        self.cluster = cluster
        self._cache = {}      # (op, algo, ranks) -> (alpha_s, s_per_byte)

    def coeffs(self, kind: str, op: str, algo: str, tp: int, pp: int, dp: int):
        """(alpha_s, s_per_byte) for the first group of `kind` under tp-innermost placement."""
        if kind == "tp":
            ranks = tuple(range(tp))
        elif kind == "pp":          # neighbouring stages: ranks 0 and tp
            ranks = (0, tp) if pp > 1 else (0,)
        else:
            ranks = tuple(i * tp * pp for i in range(dp))
        return self._coeffs(op, algo, ranks)

    def _coeffs(self, op, algo, ranks):
        key = (op, algo, ranks)
        if key not in self._cache:
            self._cache[key] = (0.0, 0.0) if len(ranks) <= 1 else collective_coeffs(self.cluster, op, algo, ranks)
        return self._cache[key]

    def vec(self, kind, op, shapes, nbytes, algo=None):
        """alpha + beta·nbytes per plan; coefficients are looked up once per distinct group shape.

        `shapes` is a _Shapes (distinct (algo, tp, pp, dp) rows and each plan's index into them);
        algo=None uses the shapes' own data-parallel algorithm, otherwise the library's ("native")."""
        ab = np.array([self.coeffs(kind, op, GRAD_SYNC[a] if algo is None else algo, t, p, d)
                       for a, t, p, d in shapes.rows])
        return ab[shapes.inv, 0] + ab[shapes.inv, 1] * nbytes


class _Shapes:
    """Distinct (grad_sync, tp, pp, dp) combinations of a plan table, found with one 1-D unique."""

    def __init__(self, gs, tp, pp, dp):
        gs, tp, pp, dp = (np.asarray(x, dtype=np.int64) for x in (gs, tp, pp, dp))
        assert tp.max() < 2 ** 14 and pp.max() < 2 ** 14 and dp.max() < 2 ** 30
        key = ((gs * 2 ** 14 + tp) * 2 ** 14 + pp) * 2 ** 30 + dp
        uniq, self.inv = np.unique(key, return_inverse=True)
        self.rows = [(int(k >> 58), int(k >> 44) & (2 ** 14 - 1), int(k >> 30) & (2 ** 14 - 1), int(k) & (2 ** 30 - 1))
                     for k in uniq]


_GROUP_CACHE: dict = {}


def _groups(cluster) -> _Groups:
    g = _GROUP_CACHE.get(id(cluster))
    if g is None or g.cluster is not cluster:
        g = _GROUP_CACHE[id(cluster)] = _Groups(cluster)
    return g


def _group_coeffs(G, op, algo, size, stride):
    """(alpha_s, s_per_byte) per plan row for a group of `size` ranks `stride` apart from rank 0
    (the EP group: ep ranks tp·pp apart; the expert-data-parallel group: dp/ep ranks tp·pp·ep apart)."""
    size, stride = np.asarray(size, dtype=np.int64), np.broadcast_to(np.asarray(stride, dtype=np.int64), np.shape(size))
    first, inv = _unique_rows(size, stride)
    ab = np.array([G._coeffs(op, algo, tuple(i * int(st) for i in range(int(sz))))
                   for sz, st in zip(size[first], stride[first])]).reshape(-1, 2)
    return ab[inv, 0], ab[inv, 1]


def _dpcp_vec(G, gs, tp, pp, dp, cp, nbytes):
    """(all-reduce by the plan's algorithm, reduce-scatter, all-gather) seconds of `nbytes` over the
    dp·cp ranks holding the same weights: d·(tp·cp·pp) + c·tp for every d < dp, c < cp."""
    first, inv = _unique_rows(gs, tp, pp, dp, cp)
    out = []
    for op, native in (("allreduce", False), ("reduce_scatter", True), ("all_gather", True)):
        ab = np.array([G._coeffs(op, "native" if native else GRAD_SYNC[int(a)],
                                 tuple(sorted(d * t_ * c_ * p_ + c * t_ for d in range(int(d_)) for c in range(int(c_)))))
                       for a, t_, p_, d_, c_ in zip(gs[first], tp[first], pp[first], dp[first], cp[first])]).reshape(-1, 2)
        out.append(ab[inv, 0] + ab[inv, 1] * nbytes)
    return out


def _ep_coeffs(G, tp, pp, ep, op):
    """Coefficients of `op` over the expert-parallel group (library's own algorithm)."""
    return _group_coeffs(G, op, "native", ep, tp * pp)


def price(model, cluster, cols: dict, device=None) -> dict:
    """Price a table of plans. Returns arrays: step_time_s, breakdown (7 keys), memory (5 keys), flops.

    `device` overrides the cluster's device profile (used by calibration)."""
    dev = device or cluster.device
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
    e = C.DTYPE_BYTES[dt]
    h = model.hidden
    t = tp.astype(float)
    L = model.layers / pp                                  # layers per pipeline rank
    m = gb / (mb * dp)                                     # micro-batches per step
    # Per-layer compute and activation bytes depend on few columns: evaluate them once per
    # distinct (micro_batch, seq, tp, sp, flash, dtype, recompute, ep) and gather.
    # (bool and code columns have known ranges; ep and cp only when some plan uses them)
    first, inv = _unique_rows(sp, flash, dt, rc, mb, seq, tp, *((ep,) if has_ep else ()),
                              *((cp,) if has_cp else ()), radix=(2, 2, 8, 4))
    epf, cpf = ep[first], cp[first]
    lt_u = C.layer_times(model, dev, mb[first], seq[first], t[first], sp[first], flash[first], dt[first], epf, cpf)
    lt = C.LayerTimes(*(np.asarray(getattr(lt_u, f))[inv] for f in C.LayerTimes.__dataclass_fields__))
    # Single-threaded CPU ranks beyond the host's cores share them: compute stretches by
    # ranks-on-the-host / cores (the device profile's `cores`, measured by calibration).
    cpu_share = 1.0
    if dev.kind == "cpu" and dev.cores > 0:
        cpu_share = np.maximum(1.0, np.minimum(dp * tp * pp * cp, cluster.gpus_per_node) / dev.cores)
        lt = C.LayerTimes(*(getattr(lt, f) * cpu_share for f in C.LayerTimes.__dataclass_fields__))
    a_layer = M.activation_bytes_per_layer(model, mb[first], seq[first], t[first], sp[first], rc[first], flash[first],
                                           dt[first], epf, cpf)[inv]
    a_work = np.where(rc == 2, M.activation_bytes_per_layer(model, mb[first], seq[first], t[first], sp[first], 0,
                                                            flash[first], dt[first], epf, cpf)[inv], 0.0)
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
    tp_layer = 0.0
    act_u = act[first]
    for count, nb in blocks.values():
        if np.array_equal(nb, act_u):      # a full activation (dense layers): the collectives priced above
            a_ag, a_ar, nb = ag, ar, act
        else:
            nb = nb[inv]
            a_ag, a_ar = G.vec("tp", "all_gather", S, nb, "native"), G.vec("tp", "allreduce", S, nb, "native")
        tp_layer = tp_layer + count * np.where(sp, a_ag + G.vec("tp", "reduce_scatter", S, nb, "native"), a_ar)
    ep_layer = 0.0
    if model.moe_layers and has_ep:
        # one all-to-all per op carrying bytes (dispatch, combine): alpha per call, beta on the bytes
        n_a2a = sum(1 for op in ops_u for g_, k_, _ in op.comm if g_ == "ep") * model.moe_layers / model.layers
        a, bta = _ep_coeffs(G, tp, pp, ep, "all_to_all")
        ep_layer = np.where(ep > 1, n_a2a * a + bta * np.asarray(ep_bytes)[inv], 0.0)
    # Ring attention: cp-1 steps, each a send/recv of a K/V block to the ring neighbour (tp ranks away),
    # overlapped with the attention core; backward passes K/V and dK/dV (2×) under the core's backward.
    cp_f = cp_b = kv = 0.0
    if has_cp:
        a_, b_ = _group_coeffs(G, "sendrecv", "native", np.minimum(cp, 2), tp)
        kv = np.where(cp > 1, (cp - 1) * (a_ + b_ * np.asarray(kv_bytes)[inv]), 0.0)
        cp_f = np.maximum(kv - lt.attn_core_fwd_s, 0.0)
        cp_b = np.maximum(2 * kv - lt.attn_core_bwd_s, 0.0)
    comm_layer = tp_layer + ep_layer                        # per layer, per direction, on the critical path
    comm_f, comm_b = comm_layer + cp_f, comm_layer + cp_b
    tp_embed = ar                                          # vocab-parallel embedding all-reduce (forward)

    # Pipeline send/recv per micro-batch and chunk boundary; with tp>1 each rank sends 1/t
    # and the receiver all-gathers over tp (scatter/gather, Narayanan et al. 2021 §4.1).
    p2p = G.vec("pp", "sendrecv", S_out, act / t, "native") + np.where((tp > 1) & ~sp, ag, 0.0)
    p2p = np.where(pp > 1, p2p, 0.0)

    rec = np.select([rc == 2, rc == 1], [lt.fwd_s + comm_f, lt.attn_core_fwd_s + cp_f], default=0.0)
    body_c = L * (lt.fwd_s + lt.bwd_s)
    body_tp = L * (comm_f + comm_b)                        # TP, EP and exposed CP collectives of the stage's layers
    body_rec = L * rec
    pp_c = 2 * vpp * p2p
    first_c = body_c + lt.embed_fwd_s + lt.embed_bwd_s
    last_c = body_c + lt.head_fwd_s + lt.head_bwd_s
    single = pp == 1
    first_c = np.where(single, first_c + lt.head_fwd_s + lt.head_bwd_s, first_c)
    first_tp = body_tp + tp_embed
    T_first = first_c + first_tp + body_rec + pp_c
    T_last = last_c + body_tp + body_rec + pp_c
    T_mid = body_c + body_tp + body_rec + pp_c
    T_last = np.where(single, T_first, T_last)
    T_max = np.maximum(np.maximum(T_first, T_last), np.where(pp > 2, T_mid, 0.0))
    T_avg = np.where(single, T_first, (T_first + T_last + np.maximum(pp - 2, 0) * T_mid) / pp)
    Tf_avg = L * (lt.fwd_s + comm_f)
    W_avg = L * lt.wgrad_s
    Tb_avg = T_avg - Tf_avg
    bubble = np.select(
        [sched == 2, sched == 3],
        [(pp - 1) / vpp * T_avg, (pp - 1) * np.maximum(0.0, Tf_avg + Tb_avg - 3 * W_avg) / 2],
        default=(pp - 1) * T_avg)
    makespan = m * T_max + bubble
    # Per-rank seconds per micro-batch for the discrete-event simulator (parsim.simulate): forward,
    # backward without its weight-grad part, weight-grad; F + B + W of a rank is its T above.
    f_body, w_body = Tf_avg + vpp * p2p, W_avg
    b_body = L * (lt.bwd_s + comm_b) + body_rec + vpp * p2p - w_body
    stage_s = {"fwd_first": f_body + lt.embed_fwd_s + tp_embed + np.where(single, lt.head_fwd_s, 0.0),
               "bwd_first": b_body + lt.embed_bwd_s + np.where(single, lt.head_bwd_s, 0.0),
               "fwd_mid": f_body, "bwd_mid": b_body, "fwd_last": f_body + lt.head_fwd_s,
               "bwd_last": b_body + lt.head_bwd_s, "w": w_body}

    # Parameters per rank on the first and the last stage (the two that differ).
    # Routed experts are sharded over ep (each rank holds experts/ep of every MoE layer of its stage).
    P_layer = model.params_per_layer
    X = model.moe_layers * model.experts * model.expert_params        # routed expert parameters
    P_body = (model.layer_params_total - X) / pp           # (the layers' mean, split evenly over stages)
    tied_copy = model.tied_embeddings & (pp > 1)
    P_first = (P_body + model.embedding_params + np.where(single, model.head_params, 0)) / t
    P_last = np.where(single, P_first, (P_body + model.head_params + np.where(tied_copy, model.vocab * h, 0)) / t)
    P_dense = np.maximum(P_first, P_last)
    sharded = bool(X) and has_ep             # (dense tables skip the expert arithmetic)
    P_exp = X / (pp * ep * t) if X else 0.0
    P_rank = P_dense + P_exp if X else P_dense

    # Data-parallel gradient sync of the largest stage, by the plan's algorithm. With ep > 1 the
    # expert gradients are reduced over their own expert-data-parallel group (dp/ep ranks).
    edp = dp // ep
    grad_bytes = (np.where(ep > 1, P_dense, P_rank) if sharded else P_rank) * e
    t_ar = G.vec("dp", "allreduce", S, grad_bytes)
    # ZeRO's reduce-scatter and all-gather are the library's own (FSDP / DeepSpeed); the plan's
    # algorithm choice applies to the all-reduce.
    t_rs = G.vec("dp", "reduce_scatter", S, grad_bytes, "native")
    t_ag = G.vec("dp", "all_gather", S, grad_bytes, "native")
    if has_cp:   # the weights are replicated over dp·cp ranks: gradients are reduced over that group
        t_ar, t_rs, t_ag = (np.where(cp > 1, v, old) for v, old in
                            zip(_dpcp_vec(G, gs, tp, pp, dp, cp, grad_bytes), (t_ar, t_rs, t_ag)))
    if sharded:
        xb = P_exp * e
        ca = [_group_coeffs(G, op, algo, edp, tp * pp * ep) for op, algo in
              (("allreduce", "native"), ("reduce_scatter", "native"), ("all_gather", "native"))]
        x_ar, x_rs, x_ag = (np.where((ep > 1) & (edp > 1), a_ + b_ * xb, 0.0) for a_, b_ in ca)
        t_ar, t_rs, t_ag = t_ar + x_ar, t_rs + x_rs, t_ag + x_ag
    t_sync = np.where(zero >= 1, t_rs + t_ag, t_ar)
    bwd_last_mb = np.minimum(T_first, T_last) - np.minimum(Tf_avg, T_max)
    window = np.where(overlap, np.maximum(bwd_last_mb, 0.0), 0.0)
    dp_exposed = np.maximum(t_sync - window, 0.0)
    # ZeRO-3 gathers the weights again in every micro-batch's forward and backward (prefetched
    # under compute; only the excess is exposed).
    z3_per_mb = 2 * t_ag + t_rs
    dp_exposed = dp_exposed + np.where(zero >= 3, m * np.maximum(z3_per_mb - T_avg, 0.0) + t_ag, 0.0)
    dp_exposed = np.where(dp > 1, dp_exposed, 0.0)

    opt_params = P_rank / np.where(zero >= 1, dp, 1)
    if sharded:
        opt_params = np.where(ep > 1, P_dense / np.where(zero >= 1, dp, 1) + P_exp / np.where(zero >= 1, edp, 1), opt_params)
    opt = C.optimizer_s(dev, opt_params, dt, L) * cpu_share
    step = makespan + dp_exposed + opt

    # Breakdown on the bottleneck stage.
    is_first = T_first >= T_last
    stage_c = np.where(is_first, first_c, last_c)
    stage_tp = np.where(is_first, first_tp, body_tp)
    ep_stage = L * 2 * ep_layer
    cp_stage = L * (cp_f + cp_b)
    zeros = np.zeros(np.shape(step))                       # one shared (read-only) column for absent parts
    breakdown = {
        "compute": m * stage_c, "recompute": m * body_rec,
        "tp_comm": m * (stage_tp - ep_stage - cp_stage) if sharded or has_cp else m * stage_tp,
        "ep_comm": m * ep_stage if sharded else zeros,
        "cp_comm": m * cp_stage if has_cp else zeros, "pp_comm": m * pp_c,
        "bubble": bubble, "dp_comm_exposed": dp_exposed, "optimizer": opt,
    }

    # Memory on the worst of the first and last stage.
    inflight = M.inflight_microbatches(sched, pp, vpp, m)
    logits = 4.0 * mb * seq / cp * model.vocab / t * 2        # fp32 logits and their gradient
    act_first = L * a_layer * inflight + a_work + np.where(single, logits, 0.0)
    act_last = L * a_layer * np.where(single, inflight, 1.0) + a_work + logits
    weights, grads, optim = M.model_state_bytes(np.where(ep > 1, P_dense, P_rank) if sharded else P_rank, dp, zero, dt)
    if sharded:
        xw, xg, xo = M.model_state_bytes(np.where(ep > 1, P_exp, 0.0), edp, zero, dt)
        weights, grads, optim = weights + xw, grads + xg, optim + xo
    buffers = (M.DDP_BUCKET_BYTES * (dp > 1) + np.where(zero >= 3, 2 * P_layer / t * e, 0.0)
               + np.where(pp > 1, 2 * act / t, 0.0))
    # FP8 (Transformer Engine): each FP8 GEMM weight also lives as an FP8 copy and its transpose (2 bytes
    # per parameter, not sharded by ZeRO here), plus delayed-scaling state per FP8 tensor (input, weight,
    # output gradient): an amax history of 1024 fp32 values (TE's DelayedScaling default) and scale, scale_inv.
    fp8_rows = dt == Ly.FP8
    if fp8_rows.any():
        fp8_ops = [op for op in ops_u if op.fp8]
        w_elems = sum(np.asarray(op.weight) * np.asarray(op.k) * np.asarray(op.n) * np.asarray(op.batch) for op in fp8_ops)
        n_tensors = 3 * sum(float(np.max(op.weight)) > 0 for op in fp8_ops)
        fp8_state = L * (2.0 * np.broadcast_to(np.asarray(w_elems, dtype=float), first.shape)[inv] + n_tensors * 1026 * 4.0)
        weights = weights + np.where(fp8_rows, fp8_state, 0.0)
    activations = np.maximum(act_first, act_last)
    total = weights + grads + optim + activations + buffers

    # FLOPs per sequence (parsim.layer states the convention): executed (HFU) and counted (MFU).
    seq_u, flash_u = seq[first], flash[first]
    hw_layer = np.asarray(model.layer_fwd_flops(seq_u, flash_u), dtype=float)[inv]
    core = np.asarray(model.attn_core_fwd_flops(seq_u, flash_u), dtype=float)[inv]
    logits_fl = np.asarray(model.logits_fwd_flops(seq_u), dtype=float)[inv]
    per_seq_model = 3 * (model.layers * np.asarray(model.model_layer_fwd_flops(seq_u), dtype=float)[inv] + logits_fl)
    per_seq_hw = 3 * (model.layers * hw_layer + logits_fl)
    extra = np.select([rc == 2, rc == 1], [hw_layer, core], default=0.0)
    return {
        "step_time_s": step, "makespan_s": makespan, "microbatches": m, "stage_s": stage_s, "dp_sync_s": np.where(dp > 1, t_sync, 0.0),
        "breakdown": breakdown, "cp_kv_s": m * L * 3 * kv if has_cp else zeros,
        "memory": {"weights": weights, "grads": grads, "optimizer": optim, "activations": activations, "buffers": buffers},
        "memory_bytes": total, "memory_capacity_bytes": dev.memory_bytes,
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
    return _cluster_cached(spec, gpus) if isinstance(spec, str) else spec


def _scalar(x):
    return float(np.asarray(x).ravel()[0])


def simulated_makespan(r: dict, cols: dict, i: int):
    """Makespan of plan `i` of a priced table played by the discrete-event simulator, or None where
    the closed form is exact (pp = 1) or the schedule cannot be built (e.g. 1f1b with m < pp)."""
    pp = int(cols["pp"][i])
    if pp == 1:
        return None
    from parsim.simulate import simulate_priced
    m = int(round(float(np.asarray(r["microbatches"]).ravel()[i])))
    try:
        return simulate_priced(r, i, SCHEDULES[int(cols["schedule"][i])], pp, int(cols["vpp"][i]), m).makespan_s
    except ParsimError:
        return None


def predict(model, cluster, plan: Plan, gpus: int | None = None) -> StepReport:
    """Price one plan. `model` and `cluster` may be names/paths or loaded objects."""
    from parsim.model import load_model
    model = load_model(model)
    cluster = get_cluster(cluster, gpus or plan.gpus)
    validate(plan, model, gpus or plan.gpus)
    if plan.gpus > cluster.num_devices:
        raise ParsimError(f"plan needs {plan.gpus} devices but cluster {cluster.name} has {cluster.num_devices}")
    cols = plan_columns([plan], model)
    r = price(model, cluster, cols)
    step = _scalar(r["step_time_s"])
    breakdown = {k: _scalar(v) for k, v in r["breakdown"].items()}
    # The pipeline part is played by the simulator; the closed form is kept where exact (pp = 1).
    sim, closed = simulated_makespan(r, cols, 0), _scalar(r["makespan_s"])
    if sim is not None:
        step, breakdown["bubble"] = step + sim - closed, breakdown["bubble"] + sim - closed
    gpus_ = plan.gpus
    seq = plan.seq_len or model.seq_len
    mem = {k: _scalar(v) / GiB for k, v in r["memory"].items()}
    total = _scalar(r["memory_bytes"])
    cap = cluster.device.memory_bytes
    fits = total <= cap
    reason = "" if fits else (f"needs {total / GiB:.1f} GiB per device but a {cluster.device.name} has {cap / GiB:.1f} GiB")
    mf, hf, pk = _scalar(r["model_flops"]), _scalar(r["hardware_flops"]), _scalar(r["peak_flops"])
    notes = ["memory: worst of first and last pipeline stage; activations per Korthikanti et al. 2022"]
    if plan.cp > 1:
        kv_s = _scalar(r["cp_kv_s"])
        notes.append(f"context parallel: ring K/V exchange {kv_s:.6g} s per step (forward K/V, backward K/V and dK/dV), "
                     f"{kv_s - breakdown['cp_comm']:.6g} s of it hidden under the attention core, "
                     f"{breakdown['cp_comm']:.6g} s exposed (cp_comm)")
    if plan.dtype == "fp8":
        notes.append(f"fp8: the layers' GEMMs at the FP8 peak ({cluster.device.peak_flops['fp8'] / 1e12:.0f} TFLOP/s) "
                     f"with their own efficiency curve, attention, norms, embedding and loss in bf16; memory adds "
                     f"Transformer Engine's FP8 weight copies (+transpose) and scaling state; MFU/HFU are taken against "
                     f"the bf16 peak ({pk / 1e12:.0f} TFLOP/s), as NeMo and Megatron report; achieved model "
                     f"{mf / step / gpus_ / 1e12:.1f} TFLOP/s per GPU")
    if plan.ep > 1:
        notes.append("expert parallel: balanced routing assumed (every expert gets tokens·top_k/experts)")
    if sim is not None:
        notes.append(f"pipeline: simulated makespan {sim:.6g} s, closed form {closed:.6g} s")
    return StepReport(
        step_time_s=step,
        tokens_per_s=plan.global_batch * seq / step,
        samples_per_s=plan.global_batch / step,
        model_tflops_per_gpu=mf / step / gpus_ / 1e12,
        hardware_tflops_per_gpu=hf / step / gpus_ / 1e12,
        mfu=mf / step / gpus_ / pk, hfu=hf / step / gpus_ / pk,
        memory_GiB=total / GiB, memory_breakdown_GiB=mem, fits=fits, fits_reason=reason,
        breakdown_s=breakdown,
        plan={**plan.to_dict(), "seq_len": seq}, model=model.name, cluster=cluster.name, device=cluster.device.name,
        gpus=gpus_, notes=notes, seq_len=seq, params_total=model.params, params_active=model.active_params,
        model_summary=model.summary(),
    )
