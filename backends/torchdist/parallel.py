"""Apply a parsim Plan to the torch GPT: TP (DTensor), PP (torch.distributed.pipelining),
DP gradient sync (parsim's schedules or native), ZeRO (ZeroRedundancyOptimizer / FSDP2),
recompute (activation checkpointing).

Rank placement is parsim's (``parsim.topology.group_ranks``): tp innermost, then pp, then
dp, i.e. a (dp, pp, tp) device mesh in row-major order.

What maps and what does not:
  * ZeRO-1 (optimizer state sharded) -> ``ZeroRedundancyOptimizer`` over the DP group; the
    gradients are still all-reduced with the plan's algorithm. Needs tp = 1 (it does not
    take DTensor parameters).
  * ZeRO-3 -> FSDP2 ``fully_shard(reshard_after_forward=True)``.
  * ZeRO-2 -> FSDP2 ``fully_shard(reshard_after_forward=False)``: gradients and optimizer
    state sharded, parameters kept gathered from forward to backward but stored sharded
    between steps, so every step still all-gathers them once; torch has no
    "replicated parameters, sharded gradients" mode. Not exactly ZeRO-2.
  * With FSDP the gradient reduce-scatter is FSDP's own: grad-sync must be native, and
    the DP time is inside backward (no separate exposed figure).
  * Tied embeddings are untied when the embedding and the head sit on different stages or
    are TP-sharded (noted in the report).
  * Expert parallelism (ep | dp, with tp = pp = 1 and zero 0): the ep consecutive dp ranks of an
    expert group each hold experts/ep of every MoE layer and exchange tokens with all-to-all
    (gloo on CPU, NCCL on GPU); dense gradients are averaged over dp, expert gradients summed
    over the expert-data-parallel group (dp ranks ep apart) and divided by dp. The all-to-alls
    are timed inside forward/backward (ep_comm is not separated).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from backends.torchdist.model import GPTStage, loss_fn, stage_layers
from parsim.errors import ParsimError

BUCKET_BYTES = 25 * 2**20


def stage_to_rank(plan, microbatches: int) -> list[int]:
    """Pipeline stage -> pp rank, from parsim's pipeline schedule (V shape for zbv)."""
    if plan.pp == 1:
        return [0]
    from parsim.schedules.pipeline import build_schedule
    sch = build_schedule(plan.schedule, plan.pp, microbatches, plan.vpp)
    return [int(r) for r in sch.stage_to_rank]


def check_plan(spec, plan, world: int, device_type: str = "cpu"):
    """Raise ParsimError for anything this backend cannot run (before any process starts): the rule
    book's plan rules plus its "run" rules (this backend's ZeRO wiring; fp8 and cp not run; ep with data
    parallelism only), parsim.rules."""
    from parsim.rules import check
    check(plan, spec, world, scope="run")


# ---------------------------------------------------------------- timing hooks

@dataclass
class PhaseClock:
    """Per-step accumulators (seconds) filled by hooks and the runner."""
    sync: callable = None
    t: dict = field(default_factory=dict)
    in_recompute: int = 0
    ops: list = field(default_factory=list)     # pipeline ops executed this step, in order

    def add(self, k, dt):
        self.t[k] = self.t.get(k, 0.0) + dt

    def reset(self):
        self.t, self.ops = {}, []

    def now(self):
        if self.sync:
            self.sync()
        return time.perf_counter()


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def instrument_recompute(module, clock: PhaseClock, recompute: str):
    """Time the forward re-runs that activation checkpointing does inside backward."""
    if recompute == "none":
        return
    from backends.torchdist.model import Attention, Block
    subs = []
    for m in module.modules():
        if recompute == "full" and isinstance(m, Block):
            subs += [m.attn_norm, m.attn, m.mlp_norm, m.mlp]     # what the checkpointed body re-runs
        elif recompute == "selective" and isinstance(m, Attention):
            subs.append(m.core)
    for sub in subs:
        def pre(mod, args, _c=clock):
            if _in_backward():
                _c.in_recompute += 1
                mod._parsim_t0 = _c.now()

        def post(mod, args, out, _c=clock):
            if _in_backward() and getattr(mod, "_parsim_t0", None) is not None:
                _c.add("recompute", _c.now() - mod._parsim_t0)
                _c.in_recompute -= 1
            mod._parsim_t0 = None
        sub.register_forward_pre_hook(pre)
        sub.register_forward_hook(post)


_FUNCOL_PATCHED = {}


def instrument_tp_comm(clock: PhaseClock):
    """Time DTensor's collectives (TP comm): wrap the functional collectives DTensor calls and
    wait for each one right away, so its time is its own. Idempotent."""
    import torch.distributed._functional_collectives as funcol
    names = ("all_reduce", "all_gather_single", "reduce_scatter_single", "all_gather_tensor",
             "reduce_scatter_tensor", "all_to_all_single")
    for n in names:
        orig = _FUNCOL_PATCHED.get(n) or getattr(funcol, n, None)
        if orig is None:
            continue
        _FUNCOL_PATCHED[n] = orig

        def wrapped(*a, _orig=orig, **kw):
            t0 = clock.now()
            out = _orig(*a, **kw)
            if hasattr(out, "trigger_wait"):
                out.trigger_wait()
            dt = clock.now() - t0
            clock.add("tp_comm", dt)
            if clock.in_recompute:
                clock.add("tp_comm_in_recompute", dt)
            return out
        setattr(funcol, n, wrapped)


def timed_stage_class(clock: PhaseClock):
    """A PipelineStage that times its forward and backward chunks."""
    from torch.distributed.pipelining import PipelineStage

    class TimedStage(PipelineStage):
        """Also logs the executed ops as (kind, micro-batch, stage) in clock.ops — parsim's
        PipelineSchedule.rank_ops format, so the executed order can be checked against it."""

        def _timed(self, kind, phase, call, chunk, *a, **kw):
            clock.ops.append((kind, int(chunk), self.stage_index))
            t0 = clock.now()
            try:
                return call(chunk, *a, **kw)
            finally:
                clock.add(phase, clock.now() - t0)

        def forward_one_chunk(self, chunk, *a, **kw):
            return self._timed("F", "forward", super().forward_one_chunk, chunk, *a, **kw)

        def backward_one_chunk(self, chunk, *a, **kw):   # full backward, or input-grad only (I)
            return self._timed("B", "backward", super().backward_one_chunk, chunk, *a, **kw)

        def backward_weight_one_chunk(self, chunk, *a, **kw):
            return self._timed("W", "backward", super().backward_weight_one_chunk, chunk, *a, **kw)

    return TimedStage


# ---------------------------------------------------------------- TP

def tp_plan(stage: GPTStage, sp: bool) -> dict:
    """Megatron/torchtitan layout: Q, K, V, up (gate) column-parallel; out and down row-parallel;
    embeddings row-parallel (vocab); head column-parallel. With sequence parallel the norms and
    the residual stream are sharded on the sequence dimension."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel)
    seq = Shard(1) if sp else Replicate()
    plan = {}
    if stage.first:
        plan["tok"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
        if stage.pos is not None:
            plan["pos"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    for i in stage.layers:
        p = f"layers.{i}."
        for lin in ("attn.wq", "attn.wk", "attn.wv", "mlp.w_up") + (("mlp.w_gate",) if stage.spec.gated else ()):
            plan[p + lin] = ColwiseParallel()
        plan[p + "attn.wo"] = RowwiseParallel(output_layouts=seq)
        plan[p + "mlp.w_down"] = RowwiseParallel(output_layouts=seq)
        if sp:
            plan[p + "attn_norm"] = SequenceParallel()
            plan[p + "mlp_norm"] = SequenceParallel()
            plan[p + "attn"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
            plan[p + "mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    if stage.last:
        if sp:
            plan["norm"] = SequenceParallel()
        plan["head"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate())
    return plan


# ---------------------------------------------------------------- building a rank

@dataclass
class RankModel:
    stages: list                 # local GPTStage modules (after TP/FSDP)
    stage_ids: list
    num_stages: int
    schedule: object             # torch pipelining schedule, or None when pp == 1
    optimizer: object
    mesh: object
    groups: dict                 # tp/pp/dp -> ProcessGroup (or None when size 1)
    ranks: dict                  # tp/pp/dp -> tuple of global ranks of this rank's groups
    holds_first: bool
    holds_last: bool
    notes: list

    def parameters(self):
        for s in self.stages:
            yield from s.parameters()


def build_rank(spec, plan, rank: int, device, clock: PhaseClock, seed: int = 0, lr: float = 1e-3) -> RankModel:
    from torch.distributed.device_mesh import init_device_mesh
    from parsim.topology import group_ranks
    dev_type = device.type
    mesh = init_device_mesh(dev_type, (plan.dp, plan.pp, plan.tp), mesh_dim_names=("dp", "pp", "tp"))
    tp_i, pp_i, dp_i = rank % plan.tp, (rank // plan.tp) % plan.pp, rank // (plan.tp * plan.pp)
    ranks = {"tp": group_ranks(plan, "tp", rank // plan.tp),
             "pp": group_ranks(plan, "pp", dp_i * plan.tp + tp_i),
             "dp": group_ranks(plan, "dp", pp_i * plan.tp + tp_i)}
    groups = {k: (mesh[k].get_group() if getattr(plan, k) > 1 else None) for k in ("tp", "pp", "dp")}
    from backends.torchdist.model import ExpertParallel
    ep = ExpertParallel()
    if plan.ep > 1:   # every rank creates every group, in the same order (dist.new_group's contract)
        E, D = plan.ep, plan.dp
        for blk in range(D // E):
            g = dist.new_group([d * plan.tp * plan.pp for d in range(blk * E, blk * E + E)])
            if dp_i // E == blk:
                ep = ExpertParallel(g, dp_i % E, E)
        for j in range(E):
            members = [d * plan.tp * plan.pp for d in range(j, D, E)]
            g = dist.new_group(members) if len(members) > 1 else None
            if dp_i % E == j:
                groups["edp"], ranks["edp"] = g, tuple(members)
    for k in ranks:
        assert rank in ranks[k], (k, rank, ranks[k])
        if groups[k] is not None:
            assert tuple(dist.get_process_group_ranks(groups[k])) == tuple(ranks[k]), (k, ranks[k])
    notes = []
    S = plan.pp * plan.vpp
    m = plan.microbatches
    s2r = stage_to_rank(plan, m)
    my_stages = [s for s in range(S) if s2r[s] == pp_i]
    tie = spec.tied_embeddings and S == 1 and plan.tp == 1
    if spec.tied_embeddings and not tie:
        notes.append("tied embeddings untied (embedding and head on different stages or TP-sharded)")
    if dev_type == "cpu":
        notes.append("cpu: fp32 (no mixed precision)")
    stages = []
    for s in my_stages:
        mod = GPTStage(spec, stage_layers(spec, S, s), s == 0, s == S - 1, seed, plan.recompute, tie, ep).to(device)
        if plan.tp > 1:
            from torch.distributed.tensor.parallel import parallelize_module
            parallelize_module(mod, mesh["tp"], tp_plan(mod, plan.sequence_parallel))
        if plan.zero >= 2:
            from torch.distributed.fsdp import fully_shard
            dp_mesh = mesh["dp"]
            for blk in mod.layers.values():
                fully_shard(blk, mesh=dp_mesh, reshard_after_forward=plan.zero == 3)
            fully_shard(mod, mesh=dp_mesh, reshard_after_forward=plan.zero == 3)
        instrument_recompute(mod, clock, plan.recompute)
        stages.append(mod)
    if plan.tp > 1:
        instrument_tp_comm(clock)
    if plan.zero >= 2:
        notes.append(f"zero {plan.zero}: FSDP2 fully_shard(reshard_after_forward={plan.zero == 3}); "
                     "DP reduce-scatter inside backward")

    params = [p for s in stages for p in s.parameters()]
    foreach = plan.tp == 1 and plan.zero < 2   # DTensor and plain tensors do not mix in foreach kernels
    if plan.zero == 1 and plan.dp > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, process_group=groups["dp"],
                                      lr=lr, weight_decay=0.0)
        notes.append("zero 1: ZeroRedundancyOptimizer (optimizer state sharded over dp)")
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=foreach)

    schedule = None
    if plan.pp > 1:
        from torch.distributed.pipelining import (Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
                                                  ScheduleZBVZeroBubble)
        Stage = timed_stage_class(clock)
        pstages = [Stage(mod, s, S, device, group=groups["pp"]) for mod, s in zip(stages, my_stages)]
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved": ScheduleInterleaved1F1B,
               "zbv": ScheduleZBVZeroBubble}[plan.schedule]
        if plan.schedule in ("gpipe", "1f1b"):
            schedule = cls(pstages[0], m, loss_fn=loss_fn)
        else:
            schedule = cls(pstages, m, loss_fn=loss_fn)
    return RankModel(stages, my_stages, S, schedule, opt, mesh, groups, ranks, 0 in my_stages, (S - 1) in my_stages,
                     notes)


# ---------------------------------------------------------------- DP gradient sync

def local_grad(p):
    g = p.grad
    if g is None:
        return None
    return g.to_local() if hasattr(g, "to_local") else g


def sync_grads(rm: RankModel, plan, local_size: int | None = None, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Average gradients over the DP group with the plan's algorithm; returns the bytes synced.

    Gradients are flattened into buckets of at most `bucket_bytes` (in parameter order),
    each bucket all-reduced (sum) by ``collectives.allreduce`` — parsim's schedule run with
    isend/irecv, or the library's all_reduce for native — then divided by dp and copied back.
    """
    if plan.dp == 1 or plan.zero >= 2:
        return 0
    from backends.torchdist.collectives import allreduce
    grads = []
    experts = set()
    total = 0
    if plan.ep > 1:   # expert gradients: summed over the expert-data-parallel group, then / dp
        for mod in rm.stages:
            experts |= {id(p) for n, p in mod.named_parameters() if ".experts." in n}
        for p in rm.parameters():
            if id(p) in experts:
                if p.grad is None:     # an expert no token reached: a zero gradient, so every rank joins
                    p.grad = torch.zeros_like(p)
                if rm.groups.get("edp") is not None:
                    dist.all_reduce(p.grad, group=rm.groups["edp"])
                p.grad.div_(plan.dp)
                total += p.grad.numel() * p.grad.element_size()
    for p in rm.parameters():
        if id(p) in experts:
            continue
        g = local_grad(p)
        if g is None:
            g = torch.zeros_like(p.to_local() if hasattr(p, "to_local") else p)
            p.grad = g if not hasattr(p, "to_local") else None
        grads.append(g)
    bucket, size = [], 0
    buckets = []
    for g in grads:
        if bucket and size + g.numel() * g.element_size() > bucket_bytes:
            buckets.append(bucket)
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    if bucket:
        buckets.append(bucket)
    for b in buckets:
        flat = torch.cat([g.reshape(-1) for g in b])
        allreduce(flat, plan.grad_sync, group=rm.groups["dp"], group_ranks=rm.ranks["dp"], local_size=local_size)
        flat.div_(plan.dp)
        off = 0
        for g in b:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n
        total += flat.numel() * flat.element_size()
    return total


def state_bytes(rm: RankModel) -> dict:
    """Bytes of this rank's weights, gradients and optimizer state (local shards)."""
    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    seen, w, g = set(), 0, 0
    for p in rm.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        w += nbytes(p)
        if p.grad is not None:
            g += nbytes(p.grad)
    opt = 0
    state = rm.optimizer.optim.state if hasattr(rm.optimizer, "optim") else rm.optimizer.state
    for st in state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                opt += nbytes(v)
    return {"weights": w, "grads": g, "optimizer": opt}


def forward_backward(rm: RankModel, plan, tokens, targets, clock: PhaseClock, autocast) -> float | None:
    """One step's forward and backward over all micro-batches; returns the mean loss where this
    rank computes it (the last stage), else None."""
    m = plan.microbatches
    if rm.schedule is None:
        mod = rm.stages[0]
        losses = []
        for i in range(m):
            sl = slice(i * plan.micro_batch, (i + 1) * plan.micro_batch)
            # zero >= 2: FSDP2 reduce-scatters after every micro-batch's backward (its default, as
            # DeepSpeed ZeRO-2 does), into sharded gradients: what parsim.costs.dpsync prices
            t0 = clock.now()
            with autocast():
                loss = loss_fn(mod(tokens[sl]), targets[sl]) / m
            t1 = clock.now()
            loss.backward()
            t2 = clock.now()
            clock.add("forward", t1 - t0)
            clock.add("backward", t2 - t1)
            losses.append(float(loss.detach()) * m)
        return sum(losses) / m
    t0 = clock.now()
    losses = []
    args = (tokens,) if rm.holds_first else ()
    kwargs = {"target": targets, "losses": losses} if rm.holds_last else {}
    with autocast():
        rm.schedule.step(*args, **kwargs)
    clock.add("pipeline", clock.now() - t0)
    if rm.holds_last:
        return float(torch.stack([l.detach().float() for l in losses]).mean())
    return None
