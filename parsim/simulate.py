"""Discrete-event pipeline simulation, and the closed forms it is checked against.

Model. Each rank runs its ops one at a time in the schedule's order (rank-local
serialization). An op starts when the rank's previous op has ended and its inputs
are there: the neighbour stage's op that produced them (plus the p2p transfer when
that stage sits on another rank) and, for B and W, the same stage's earlier op.
Transfers are asynchronous (torch batches isend/irecv): they delay the consumer but
occupy neither rank's compute stream, and concurrent transfers do not share links.

Because every rank's order is fixed, the simulation is a sweep, not a priority
queue: a rank runs ops until the next one waits on an op not yet played, parks on
it, and is woken when that op is played. Every op is visited once (twice if it had to wait); times live in
flat Python lists indexed by op id (``schedule.dep_*`` arrays).

Bubble. ``bubble_fraction`` is Narayanan et al. 2021 §2.2's definition: pipeline
bubble time over ideal compute time, summed over ranks, i.e. sum(idle_s) /
sum(busy_s) where idle = makespan - busy. With uniform stages and free
communication it is (p-1)/m for GPipe and 1F1B and (p-1)/(v·m) for interleaved
1F1B. ``idle_fraction`` is idle over makespan, the share of the step a rank waits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from parsim.errors import ParsimError, require
from parsim.schedules.pipeline import (KIND_NAMES, PipelineSchedule, build_schedule, peak_inflight,
                                       peak_inflight_per_rank)

P2P = float | Callable[[int, int, float], float]


class Event(NamedTuple):
    rank: int
    kind: str          # F, B or W
    microbatch: int
    stage: int
    start_s: float
    end_s: float


@dataclass(frozen=True, eq=False)
class SimResult:
    """One played schedule. Arrays: ``busy_s``/``idle_s`` per rank, ``peak_inflight`` per stage,
    ``start_s``/``end_s`` per op (op ids as in the schedule)."""
    schedule: PipelineSchedule
    makespan_s: float
    busy_s: np.ndarray
    idle_s: np.ndarray
    peak_inflight: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray

    @property
    def bubble_fraction(self) -> float:
        """sum(idle) / sum(busy): bubble time over ideal compute time (Narayanan et al. 2021 §2.2)."""
        return float(self.idle_s.sum() / self.busy_s.sum()) if self.busy_s.sum() > 0 else 0.0

    @property
    def idle_fraction(self) -> np.ndarray:
        """Per rank, idle time over the makespan."""
        return self.idle_s / self.makespan_s if self.makespan_s > 0 else np.zeros_like(self.idle_s)

    @property
    def peak_inflight_per_rank(self) -> np.ndarray:
        """Peak (micro-batch, virtual stage) activation sets a rank holds at once (see
        ``peak_inflight_per_rank`` in parsim.schedules.pipeline); divide by vpp for whole-stage units."""
        return peak_inflight_per_rank(self.schedule)

    def events(self) -> list[Event]:
        """The timeline, rank by rank, each rank's ops in order."""
        s = self.schedule
        return [Event(int(r), KIND_NAMES[k], int(i), int(st), float(a), float(b))
                for r, k, i, st, a, b in zip(s.rank, s.kind, s.microbatch, s.stage, self.start_s, self.end_s)]

    def to_dict(self) -> dict:
        s = self.schedule
        return {"schedule": s.name, "pp": s.pp, "microbatches": s.microbatches, "vpp": s.vpp,
                "makespan_s": self.makespan_s, "bubble_fraction": self.bubble_fraction,
                "bubble_fraction_closed_form": (None if s.split_backward else
                                                float(bubble_fraction_closed_form(s.pp, s.microbatches, s.vpp))),
                "busy_s": self.busy_s.tolist(), "idle_s": self.idle_s.tolist(),
                "idle_fraction": self.idle_fraction.tolist(),
                "peak_inflight_per_stage": self.peak_inflight.tolist(),
                "peak_inflight_per_rank": self.peak_inflight_per_rank.tolist()}


# ---------------------------------------------------------------- closed forms (numpy-vectorisable)

def bubble_fraction_closed_form(pp, microbatches, vpp=1):
    """(p-1)/(v·m): bubble over ideal compute time; v=1 gives GPipe/1F1B's (p-1)/m
    (Narayanan et al. 2021 §2.2). Exact for uniform stages and free communication."""
    pp, m, v = (np.asarray(x, dtype=float) for x in (pp, microbatches, vpp))
    return (pp - 1) / (v * m)


def makespan_closed_form(pp, microbatches, t_fwd_s, t_bwd_s, vpp=1):
    """(m + (p-1)/v)·(tf + tb), tf and tb a rank's whole forward and backward per micro-batch;
    v=1 gives (m+p-1)(tf+tb) for GPipe and 1F1B (Narayanan et al. 2021 §2.2: ideal m(tf+tb)
    plus the bubble (p-1)(tf+tb)/v). Exact for uniform stages and free communication."""
    pp, m, v = (np.asarray(x, dtype=float) for x in (pp, microbatches, vpp))
    return (m + (pp - 1) / v) * (np.asarray(t_fwd_s, dtype=float) + np.asarray(t_bwd_s, dtype=float))


# ---------------------------------------------------------------- durations

def stage_durations(schedule: PipelineSchedule, t_fwd_s, t_bwd_s, t_w_s=None) -> np.ndarray:
    """(num_stages, 3) seconds per op kind F, B, W for each stage.

    Each of t_fwd_s, t_bwd_s, t_w_s is a scalar or a sequence: a scalar or pp values are a
    rank's whole share of the model (split evenly over its vpp stages); pp·vpp values are
    per stage (stage index order). ``t_bwd_s`` is the backward without the weight-grad part
    ``t_w_s``: a fused backward op takes t_bwd + t_w; a split one (ZBV) runs B = t_bwd and
    W = t_w. With ``t_w_s=None`` a split schedule halves t_bwd into B and W (Qi et al. 2023
    §2 take T_B ≈ T_W), so every schedule does the same total work.
    """
    p, v, S = schedule.pp, schedule.vpp, schedule.num_stages

    def per_stage(x, what):
        a = np.asarray(x, dtype=float).reshape(-1)
        if a.size == 1:
            a = np.full(p, a[0])
        if a.size == p:
            a = a[schedule.stage_to_rank] / v
        require(a.size == S, f"{what}: got {a.size} values, expected 1, pp={p} or pp*vpp={S}")
        require(bool(np.all(np.isfinite(a)) and np.all(a >= 0)), f"{what} must be finite and >= 0, got {a.tolist()}")
        return a

    tf, tb = per_stage(t_fwd_s, "forward time"), per_stage(t_bwd_s, "backward time")
    if t_w_s is None:
        tw = tb / 2 if schedule.split_backward else np.zeros(S)
        tb = tb - tw
    else:
        tw = per_stage(t_w_s, "weight-grad time")
    if not schedule.split_backward:
        tb, tw = tb + tw, np.zeros(S)
    return np.stack([tf, tb, tw], axis=1)


def _p2p_per_op(schedule: PipelineSchedule, p2p_s: P2P, p2p_bytes: float) -> np.ndarray:
    """Transfer seconds on each op's data edge (0 when the producer is on the same rank)."""
    rank = schedule.rank
    has = schedule.dep_data >= 0
    src = np.where(has, rank[np.where(has, schedule.dep_data, 0)], rank)
    cross = src != rank
    out = np.zeros(schedule.n_ops)
    if not callable(p2p_s):
        require(float(p2p_s) >= 0, f"p2p time must be >= 0 s, got {p2p_s}")
        out[cross] = float(p2p_s)
        return out
    pairs, inverse = np.unique(np.stack([src[cross], rank[cross]]), axis=1, return_inverse=True)
    prices = np.array([float(p2p_s(int(a), int(b), p2p_bytes)) for a, b in pairs.T])
    require(bool(np.all(prices >= 0)), f"p2p price must be >= 0 s, got {prices.min()}")
    out[cross] = prices[np.asarray(inverse).reshape(-1)] if prices.size else 0.0
    return out


# ---------------------------------------------------------------- the sweep

def simulate(schedule: PipelineSchedule, durations_s: np.ndarray, p2p_s: P2P = 0.0,
             p2p_bytes: float = 0.0) -> SimResult:
    """Play ``schedule`` with ``durations_s`` (num_stages x 3: F, B, W seconds, see stage_durations).

    ``p2p_s`` is the transfer time of one activation or gradient between stages on different
    ranks: seconds, or a price ``f(src_rank, dst_rank, nbytes) -> seconds`` (called once per
    rank pair with ``p2p_bytes``) so a network model can plug in.
    """
    d = np.asarray(durations_s, dtype=float)
    require(d.shape == (schedule.num_stages, 3),
            f"durations must be (stages={schedule.num_stages}, 3), got {d.shape}")
    dur_a = d[schedule.stage, schedule.kind]
    dur = dur_a.tolist()
    lat = _p2p_per_op(schedule, p2p_s, p2p_bytes).tolist()
    n, p = schedule.n_ops, schedule.pp
    dep = schedule.dep_data.tolist()
    off = schedule.rank_offsets.tolist()
    # end[i] < 0: op i not played yet; index -1 (no dependency) hits the sentinel end[n] = 0.
    # dep_stage needs no check here: it is an earlier op of the same rank (build_schedule asserts
    # it), so it has ended by the time the rank is free.
    end = [-1.0] * n + [0.0]
    waiter = [-1] * (n + 1)
    ptr, free_at = off[:-1], [0.0] * p
    ready = list(range(p - 1, -1, -1))
    while ready:
        r = ready.pop()
        i, stop, t = ptr[r], off[r + 1], free_at[r]
        while i < stop:
            a = dep[i]
            ea = end[a]
            if ea < 0:
                waiter[a] = r
                break
            ea += lat[i]
            if ea > t:
                t = ea
            t += dur[i]
            end[i] = t
            w = waiter[i]
            if w >= 0:
                ready.append(w)
            i += 1
        ptr[r], free_at[r] = i, t
    if any(ptr[r] < off[r + 1] for r in range(p)):
        stuck = [f"rank {r} at op {schedule.rank_ops(r)[ptr[r] - off[r]]}" for r in range(p) if ptr[r] < off[r + 1]]
        raise ParsimError(f"schedule {schedule.name} deadlocks: {'; '.join(stuck[:4])}")
    end_a = np.fromiter(end, dtype=float, count=n)
    start_a = end_a - dur_a
    busy = np.array([dur_a[off[r]:off[r + 1]].sum() for r in range(p)])
    makespan = float(end_a.max()) if n else 0.0
    # idle = makespan - busy, a rank without waits at exactly 0 (float sums left "-0.0 ns": trial 2026-11-30)
    idle = makespan - busy
    idle = np.where(np.abs(idle) <= 1e-12 * max(makespan, 1e-30), 0.0, idle)
    return SimResult(schedule, makespan, busy, idle, peak_inflight(schedule), start_a, end_a)



def p2p_on_cluster(cluster, tp: int = 1) -> Callable[[int, int, float], float]:
    """A ``p2p_s`` price for ``simulate``: send/recv between pipeline ranks priced on the cluster
    graph (``parsim.costs.network.collective_time_s``, op "sendrecv"), pipeline rank r on device r·tp
    (Megatron's placement, tp innermost)."""
    from parsim.costs.network import collective_time_s

    def price(src: int, dst: int, nbytes: float) -> float:
        return collective_time_s(cluster, "sendrecv", "native", (src * tp, dst * tp), nbytes)
    return price

def pipeline_step(schedule: str | PipelineSchedule, pp: int, microbatches: int, vpp: int | None = None,
                  t_fwd_s: float | Sequence[float] = 0.0, t_bwd_s: float | Sequence[float] = 0.0,
                  t_w_s: float | Sequence[float] | None = None, p2p_s: P2P = 0.0,
                  p2p_bytes: float = 0.0) -> SimResult:
    """One pipelined step: build the schedule and play it. The hook ``parsim.predict`` calls.

    Times per micro-batch: a scalar or pp values are a rank's whole share of the layers (all
    its virtual stages); pp·vpp values are per virtual stage. See ``stage_durations``.
    """
    sched = schedule if isinstance(schedule, PipelineSchedule) else build_schedule(schedule, pp, microbatches, vpp)
    return simulate(sched, stage_durations(sched, t_fwd_s, t_bwd_s, t_w_s), p2p_s, p2p_bytes)



def priced_stage_times(priced: dict, i: int, pp: int, vpp: int = 1) -> tuple[list[float], list[float], list[float]]:
    """Per-stage (forward, backward without weight-grad, weight-grad) seconds of plan ``i`` of a table
    priced by ``parsim.predict.price``, one value per virtual stage (pp·vpp, stage index order).

    ``priced["stage_s"]`` holds, per plan, a micro-batch's seconds per layer (``layer_fwd``,
    ``layer_bwd``, ``layer_w``), the embedding's and the head's extras and the send/recv a stage pays
    (``p2p``). Stage s runs its layers (``parsim.rules.stage_layer_counts``: even, or one fewer on the
    first and last stage); the embedding's time goes to stage 0 and the head's to the last stage,
    wherever the schedule places them (rank 0 for ZB-V's V).
    """
    from parsim.rules import stage_layer_counts
    st = priced["stage_s"]

    def at(key):
        return float(np.asarray(st[key], dtype=float).reshape(-1)[i if np.size(st[key]) > 1 else 0])

    S = pp * vpp
    n = stage_layer_counts(int(priced["layers"]), S).astype(float)
    p2p = at("p2p")
    f = n * at("layer_fwd") + p2p
    b = n * at("layer_bwd") + p2p
    w = n * at("layer_w")
    f[0] += at("embed_fwd")
    b[0] += at("embed_bwd")
    f[-1] += at("head_fwd")
    b[-1] += at("head_bwd")
    return f.tolist(), b.tolist(), w.tolist()


def simulate_priced(priced: dict, i: int, schedule: str, pp: int, vpp: int, microbatches: int) -> SimResult:
    """Play plan ``i`` of a priced table (see ``priced_stage_times``); no extra p2p latency."""
    tf, tb, tw = priced_stage_times(priced, i, pp, vpp)
    return pipeline_step(schedule, pp, microbatches, vpp, tf, tb, tw)
