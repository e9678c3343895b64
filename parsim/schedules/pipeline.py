"""Pipeline schedules as plain data: per rank, the ordered compute ops and their dependencies.

A schedule is what both executors read: ``parsim.simulate`` plays it against op
durations, ``backends/torchdist`` runs it with ``torch.distributed.pipelining``.
The op orders and the stage placement are those of torch 2.13's schedules of the
same name (``torch/distributed/pipelining/schedules.py``: ``ScheduleGPipe``,
``Schedule1F1B``, ``ScheduleInterleaved1F1B``, ``ScheduleZBVZeroBubble``) with
torch's ``None`` padding slots dropped; ``PipelineSchedule.torch_order()`` gives
each rank's list in torch's action-string format (``"1F0"``, ``"5I3"``, ``"5W3"``),
which ``_Action.from_str`` reads back.

Op kinds: ``F`` forward; ``B`` backward — the full backward, or only the
input-gradient part (torch's ``I``) when ``split_backward`` is set; ``W`` the
weight-gradient part of a split backward (Qi et al. 2023, "Zero Bubble Pipeline
Parallelism", §2).

Dependencies (one data edge + one same-stage edge per op; -1 when none):
  F(s, i) needs F(s-1, i)   (the activation from the previous stage)
  B(s, i) needs B(s+1, i)   (the output gradient from the next stage) and F(s, i)
  W(s, i) needs B(s, i)
The data edge crosses ranks unless both stages sit on one rank (the turn of ZBV's V).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsim.errors import ParsimError, closest, require
from parsim.limits import MAX_SIM_OPS

F, B, W = 0, 1, 2
KIND_NAMES = ("F", "B", "W")

# accepted spellings -> canonical name (torch's get_schedule_class names included)
SCHEDULE_ALIASES = {
    "gpipe": "gpipe", "1f1b": "1f1b", "interleaved": "interleaved",
    "interleaved1f1b": "interleaved", "interleaved-1f1b": "interleaved",
    "zbv": "zbv", "zbvzerobubble": "zbv", "zero-bubble": "zbv", "zb-v": "zbv",
}
SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbv")
TORCH_CLASS = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
               "interleaved": "ScheduleInterleaved1F1B", "zbv": "ScheduleZBVZeroBubble"}


@dataclass(frozen=True, eq=False)
class PipelineSchedule:
    """Ops of every rank, flattened: rank r's ops are ``[rank_offsets[r], rank_offsets[r+1])`` in order.

    Arrays are integer numpy arrays of length ``n_ops`` (except ``stage_to_rank``, one
    entry per stage, and ``rank_offsets``, ``pp + 1`` entries).
    """
    name: str
    pp: int
    microbatches: int
    vpp: int                     # stages per rank (virtual pipeline size)
    split_backward: bool         # B is input-grad only and W ops exist
    stage_to_rank: np.ndarray
    rank_offsets: np.ndarray
    kind: np.ndarray
    microbatch: np.ndarray
    stage: np.ndarray
    dep_data: np.ndarray         # op of the neighbour stage this op consumes, or -1
    dep_stage: np.ndarray        # earlier op of the same stage and micro-batch this op needs, or -1

    @property
    def num_stages(self) -> int:
        return self.pp * self.vpp

    @property
    def n_ops(self) -> int:
        return int(self.kind.shape[0])

    @property
    def rank(self) -> np.ndarray:
        """Rank of every op."""
        return np.repeat(np.arange(self.pp), np.diff(self.rank_offsets))

    def rank_ops(self, r: int) -> list[tuple[str, int, int]]:
        """Rank r's ops in order as (kind, micro-batch, stage), e.g. ('F', 3, 1)."""
        lo, hi = self.rank_offsets[r], self.rank_offsets[r + 1]
        return [(KIND_NAMES[k], int(i), int(s))
                for k, i, s in zip(self.kind[lo:hi], self.microbatch[lo:hi], self.stage[lo:hi])]

    def torch_order(self) -> dict[int, list[str]]:
        """Per rank, torch's action strings (``f"{stage}{type}{mb}"``; a split backward's B is ``I``)."""
        names = {"F": "F", "B": "I" if self.split_backward else "B", "W": "W"}
        return {r: [f"{s}{names[k]}{i}" for k, i, s in self.rank_ops(r)] for r in range(self.pp)}


# ---------------------------------------------------------------- per-rank op orders (torch's)

def _gpipe_rank(r: int, p: int, m: int):
    """All forwards, then all backwards (Huang et al. 2019; torch ``ScheduleGPipe``)."""
    return [(F, i, r) for i in range(m)] + [(B, i, r) for i in range(m)]


def _1f1b_rank(r: int, p: int, m: int):
    """p-1-r warm-up forwards, then one forward / one backward, then the remaining backwards
    (Narayanan et al. 2021 §2.2, PipeDream-Flush; torch ``Schedule1F1B``)."""
    warm = p - 1 - r
    ops = [(F, i, r) for i in range(warm)]
    for k in range(m - warm):
        ops += [(F, warm + k, r), (B, k, r)]
    return ops + [(B, i, r) for i in range(m - warm, m)]


def _interleaved_rank(r: int, p: int, m: int, v: int):
    """Depth-first interleaved 1F1B (Narayanan et al. 2021 §2.2; torch ``ScheduleInterleaved1F1B``,
    ``_get_warmup_ops`` + ``_get_1f1b_rank_ops``). Rank r holds stages r, r+p, ..., r+(v-1)p.

    Forwards walk the local stages in blocks of ``per_round`` micro-batches, backwards walk them in
    reverse; the k-th forward (backward) op of a rank touches local stage (k // per_round) % v
    (reversed for backwards) and micro-batch (k // (per_round*v)) * per_round + k % per_round.
    """
    per_round = m // max(1, m // p)
    n = m * v
    warm = min((v - 1) * per_round + 2 * (p - 1 - r), n)
    k = np.arange(n)
    block, mb = (k // per_round) % v, (k // (per_round * v)) * per_round + k % per_round
    f_stage, b_stage = block * p + r, (v - 1 - block) * p + r
    # sequence: warm forwards, then (F, B) pairs for the rest, then the last `warm` backwards
    kinds = np.concatenate([np.full(warm, F), np.tile([F, B], n - warm), np.full(warm, B)])
    fi, bi = np.cumsum(kinds == F) - 1, np.cumsum(kinds == B) - 1
    is_f = kinds == F
    stage = np.where(is_f, f_stage[np.where(is_f, fi, 0)], b_stage[np.where(is_f, 0, bi)])
    micro = np.where(is_f, mb[np.where(is_f, fi, 0)], mb[np.where(is_f, 0, bi)])
    return kinds, micro, stage


def _zbv_rank(r: int, p: int, m: int):
    """ZB-V (Qi et al. 2023 §6, "ZB-V"; torch ``ScheduleZBVZeroBubble``): two stages per rank in a V,
    rank r holds stages r and 2p-1-r; backward split into input-grad B and weight-grad W."""
    n_micro = max(2 * p - 1, m)
    c0, c1 = r, 2 * p - 1 - r
    ops, f0, f1, b0, b1 = [], 0, 0, 0, 0
    for _ in range(2 * (p - r) - 1):
        ops.append((F, f0, c0)); f0 += 1
    for _ in range(r):
        ops += [(F, f1, c1), (F, f0, c0)]; f1 += 1; f0 += 1
    for _ in range(p - r):
        ops += [(F, f1, c1), (B, b1, c1), (W, b1, c1)]; f1 += 1; b1 += 1
    while f1 < f0 or f0 < n_micro:
        if f0 < n_micro:
            ops.append((F, f0, c0)); f0 += 1
        ops += [(B, b0, c0), (W, b0, c0), (F, f1, c1), (B, b1, c1), (W, b1, c1)]
        b0 += 1; f1 += 1; b1 += 1
    w0, w1 = b0, b1
    for _ in range(r):
        ops += [(B, b0, c0), (B, b1, c1)]; b0 += 1; b1 += 1
    for _ in range(p - r):
        ops += [(B, b0, c0), (W, w0, c0)]; b0 += 1; w0 += 1
    ops += [(W, i, c1) for i in range(w1, b1)] + [(W, i, c0) for i in range(w0, b0)]
    return [op for op in ops if op[1] < m]  # torch pads to 2p-1 micro-batches, then drops the extra


# ---------------------------------------------------------------- building

def canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key.startswith("schedule"):
        key = key[len("schedule"):]
    if key not in SCHEDULE_ALIASES:
        raise ParsimError(f"unknown pipeline schedule {name!r}: expected one of "
                          f"{', '.join(SCHEDULES)}{closest(key, SCHEDULES) or closest(key, SCHEDULE_ALIASES)}")
    return SCHEDULE_ALIASES[key]


def default_vpp(name: str) -> int:
    return {"gpipe": 1, "1f1b": 1, "interleaved": 2, "zbv": 2}[canonical_name(name)]


def check_schedule_args(name: str, pp: int, microbatches: int, vpp: int | None = None) -> tuple[str, int]:
    """Validate like torch's constructors do (the rule book, parsim.rules.check_pipeline); returns
    (canonical name, vpp)."""
    name = canonical_name(name)
    vpp = default_vpp(name) if vpp is None else vpp
    require(isinstance(pp, (int, np.integer)) and not isinstance(pp, bool) and pp >= 1,
            f"pipeline size pp={pp!r} must be an integer >= 1")
    require(isinstance(microbatches, (int, np.integer)) and not isinstance(microbatches, bool) and microbatches >= 1,
            f"micro-batches m={microbatches!r} must be an integer >= 1")
    require(isinstance(vpp, (int, np.integer)) and not isinstance(vpp, bool) and vpp >= 1,
            f"virtual stages vpp={vpp!r} must be an integer >= 1")
    # the size first (Python ints, no overflow), then the rule book on values that fit in int64
    ops = schedule_ops(name, pp, vpp, microbatches)
    require(ops <= MAX_SIM_OPS, f"{name} with pp={pp}, vpp={vpp}, m={microbatches} has {ops} ops, above the "
                                f"limit of {MAX_SIM_OPS} the simulator plays (parsim.limits.MAX_SIM_OPS)")
    from parsim.rules import check_pipeline
    check_pipeline(name, int(pp), int(microbatches), int(vpp))
    return name, int(vpp)


def schedule_ops(name: str, pp: int, vpp: int, microbatches: int) -> int:
    """Ops of a schedule: F and B (and W for zbv's split backward) per stage and micro-batch."""
    return (3 if canonical_name(name) == "zbv" else 2) * int(pp) * int(vpp) * int(microbatches)


def build_schedule(name: str, pp: int, microbatches: int, vpp: int | None = None) -> PipelineSchedule:
    """The schedule ``name`` (gpipe, 1f1b, interleaved, zbv) for pp ranks and m micro-batches."""
    name, v = check_schedule_args(name, pp, microbatches, vpp)
    p, m = int(pp), int(microbatches)
    kinds, micro, stage, counts = [], [], [], []
    for r in range(p):
        if name == "interleaved":
            k, i, s = _interleaved_rank(r, p, m, v)
        else:
            ops = {"gpipe": _gpipe_rank, "1f1b": _1f1b_rank}.get(name, _zbv_rank)(r, p, m)
            k, i, s = (np.array(c, dtype=np.int64) for c in zip(*ops))
        kinds.append(k); micro.append(i); stage.append(s); counts.append(len(k))
    from parsim.rules import stage_to_rank as placement
    stage_to_rank = placement(p, v, name)
    return _with_dependencies(name, p, m, v, name == "zbv", stage_to_rank,
                              np.concatenate([[0], np.cumsum(counts)]),
                              np.concatenate(kinds).astype(np.int8), np.concatenate(micro).astype(np.int32),
                              np.concatenate(stage).astype(np.int32))


def _with_dependencies(name, p, m, v, split, stage_to_rank, offsets, kind, micro, stage) -> PipelineSchedule:
    S, n = p * v, kind.shape[0]
    op_id = np.full((3, S + 1, m), -1, dtype=np.int64)   # [kind, stage, mb]; row S stays -1 (no stage)
    op_id[kind, stage, micro] = np.arange(n)
    expected = (3 if split else 2) * S * m
    assert n == expected and (op_id[:, :S] >= 0).sum() == n, f"{name}: ops do not cover every (kind, stage, mb)"
    rank = np.repeat(np.arange(p), np.diff(offsets))
    assert np.all(stage_to_rank[stage] == rank), f"{name}: an op sits on a rank that does not hold its stage"
    prev_stage = np.where(stage > 0, stage - 1, S)       # S indexes the all -1 row
    next_stage = np.where(stage < S - 1, stage + 1, S)
    dep_data = np.select([kind == F, kind == B], [op_id[F, prev_stage, micro], op_id[B, next_stage, micro]], -1)
    dep_stage = np.select([kind == B, kind == W], [op_id[F, stage, micro], op_id[B, stage, micro]], -1)
    # same-stage inputs come earlier on the same rank (the simulator relies on it)
    assert np.all(dep_stage < np.arange(n)), f"{name}: an op precedes the F (or B) of its own stage"
    return PipelineSchedule(name, p, m, v, split, stage_to_rank, offsets, kind, micro, stage,
                            dep_data.astype(np.int64), dep_stage.astype(np.int64))


def peak_inflight(schedule: PipelineSchedule) -> np.ndarray:
    """Peak number of micro-batches whose activations a stage holds, per stage.

    A micro-batch is in flight on stage s from the start of F(s, i) to the end of the op that frees
    its activations: B(s, i), or W(s, i) when the backward is split (W still reads the stored inputs).
    Ops of a stage run in order on one rank, so this depends on the order only, not on timing.
    """
    release = W if schedule.split_backward else B
    delta = np.where(schedule.kind == F, 1, np.where(schedule.kind == release, -1, 0))
    S = schedule.num_stages
    peaks = np.zeros(S, dtype=np.int64)
    order = np.argsort(schedule.stage, kind="stable")     # ops grouped by stage, each group in rank order
    cum = np.cumsum(delta[order])
    bounds = np.searchsorted(schedule.stage[order], np.arange(S + 1))
    for s in range(S):
        lo, hi = bounds[s], bounds[s + 1]
        base = cum[lo - 1] if lo > 0 else 0
        peaks[s] = (cum[lo:hi] - base).max(initial=0)
    return peaks


def peak_inflight_per_rank(schedule: PipelineSchedule) -> np.ndarray:
    """Peak number of (micro-batch, stage) activation sets a rank holds at once, per rank.

    Same rule as ``peak_inflight``, summed over the rank's stages at each point of its order; in
    units of one virtual stage (1/vpp of the rank's layers). For interleaved 1F1B with m a multiple
    of p, rank 0 peaks at p·v + p - 1 = v·p·(1 + (p-1)/(p·v)) chunks, Korthikanti et al. 2022 §4.2.3.
    """
    release = W if schedule.split_backward else B
    delta = np.where(schedule.kind == F, 1, np.where(schedule.kind == release, -1, 0))
    off = schedule.rank_offsets
    return np.array([np.cumsum(delta[off[r]:off[r + 1]]).max(initial=0) for r in range(schedule.pp)])
