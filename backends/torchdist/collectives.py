"""Execute the collective schedules parsim builds, with torch.distributed isend/irecv.

There are no builders here: every schedule is a ``parsim.schedules.collectives.Schedule``,
the very object ``parsim.costs.network`` prices (ring, double binary tree, halving-doubling,
recursive doubling, hierarchical, the parameter-server variants; all-reduce, reduce-scatter,
all-gather, broadcast, all-to-all, send/recv). Its format and step semantics are documented
there; this module only plays it on one rank's flat buffer:

  for each step: post this rank's receives (into scratch buffers), then its sends (views
  of the buffer as it is when the step begins) — one ``batch_isend_irecv`` — wait for all
  of them, then add or copy every received slice at its ``dst_offset``.

``native`` is the library's own ``all_reduce``, not a schedule (``parsim.costs.network``
prices it as what the library runs: NCCL's ring or tree, gloo's ring).

Entry points:
  * ``rank_program(schedule, rank, itemsize)`` — torch-free: what one rank posts and applies
    per step (element offsets, peers, tags). The executor runs exactly this; the unit tests
    play every rank's program in numpy, matching sends to receives by (src, dst, tag).
  * ``run_schedule(schedule, tensor, group_ranks=None, group=None) -> tensor`` (in place)
  * ``allreduce(tensor, algo, group=None, group_ranks=None, local_size=None) -> tensor``
    (sum, in place; the DP gradient sync of ``backends.torchdist.parallel``)
"""
from __future__ import annotations

import functools

import numpy as np

from parsim.errors import ParsimError
from parsim.schedules.collectives import Schedule, build


def rank_program(schedule: Schedule, rank: int, itemsize: int) -> list[tuple[list, list]]:
    """Per step of `schedule`, what group-local rank `rank` does with a buffer of `itemsize`-byte
    elements: ``(sends, recvs)``, sends ``(peer, tag, start, count)`` read from the buffer and
    recvs ``(peer, tag, start, count, reduce)`` added (``reduce``) or copied into it; starts and
    counts in elements, peers group-local. Transfers of one step between the same pair are
    told apart by ``tag``, their order among that pair's transfers in the step (sender and
    receiver count the same rows, so the tags match). Zero-byte transfers are dropped.
    Every step is listed, empty or not (len = len(schedule.steps)).

    AssertionError when the schedule's alignment is not a multiple of `itemsize` (an offset
    could fall inside an element) or `rank` is not one of its ranks."""
    assert schedule.align % itemsize == 0 and schedule.nbytes % itemsize == 0, (
        f"{schedule.algo} {schedule.op} schedule aligned to {schedule.align} B cannot run on {itemsize}-byte elements")
    assert 0 <= rank < schedule.nranks, f"rank {rank} is not one of the schedule's {schedule.nranks} ranks"
    out = []
    for step in schedule.steps:
        sends, recvs, seen = [], [], {}
        for i in np.flatnonzero((step.src == rank) | (step.dst == rank)).tolist():
            src, dst = int(step.src[i]), int(step.dst[i])
            tag = seen.get((src, dst), 0)
            seen[(src, dst)] = tag + 1
            count = int(step.nbytes[i]) // itemsize
            if count == 0:
                continue
            if src == rank:
                sends.append((dst, tag, int(step.offset[i]) // itemsize, count))
            else:
                recvs.append((src, tag, int(step.dst_offset[i]) // itemsize, count, bool(step.reduce[i])))
        out.append((sends, recvs))
    return out


def run_schedule(schedule: Schedule, tensor, group_ranks=None, group=None, program=None):
    """Run `schedule` on this rank's flat contiguous `tensor` (``schedule.nbytes`` long), in place,
    and return it. `group_ranks[i]` is the global rank of group-local rank i (default:
    ``schedule.ranks``, else 0..nranks-1); a process that is not one of them returns at once.
    Every rank of the group calls this with the same schedule. `program`: this rank's
    ``rank_program``, when the caller keeps it.

    Each step posts all its receives before any send. gloo's TCP pair keeps one FIFO of
    outgoing frames per peer, and a receive is announced to the sender by a small "recv ready"
    frame on it: posted after a send that is already streaming, that frame waits behind the
    whole message, the peer's message to us cannot start, and an exchange runs one way at a
    time (measured: 16 MiB each way at 200 Mbit/s took 1.40 s or 0.70 s at random with sends
    first, always 0.70 s = the one-way time with receives first; backends/netem/model.py
    prices pairs as full duplex because of this).

    A step's operations go through ``batch_isend_irecv``: on gloo (no coalescing) that posts them
    one by one in this order, with their tags; on NCCL it groups them, so a pair exchanging in
    both directions cannot deadlock on the pair's one stream (NCCL matches a pair's operations
    in order and ignores tags; both sides list them in the schedule's order).
    """
    import torch
    import torch.distributed as dist
    assert tensor.dim() == 1 and tensor.is_contiguous(), "run_schedule works on a flat contiguous tensor"
    isz = tensor.element_size()
    assert tensor.numel() * isz == schedule.nbytes, (
        f"{schedule.algo} {schedule.op} schedule is for {schedule.nbytes} B, the buffer has {tensor.numel() * isz} B")
    if group_ranks is None:
        group_ranks = schedule.ranks if schedule.ranks is not None and not schedule.servers else range(schedule.nranks)
    group_ranks = list(group_ranks)
    assert len(group_ranks) == schedule.nranks, (
        f"{schedule.nranks}-rank schedule bound to {len(group_ranks)} global ranks")
    me = dist.get_rank()
    if me not in group_ranks:
        return tensor
    if program is None:
        program = rank_program(schedule, group_ranks.index(me), isz)
    for sends, recvs in program:
        if not sends and not recvs:
            continue
        ops, landed = [], []
        for peer, tag, start, count, red in recvs:   # receives first (see the docstring)
            buf = torch.empty(count, dtype=tensor.dtype, device=tensor.device)
            ops.append(dist.P2POp(dist.irecv, buf, group_ranks[peer], group, tag))
            landed.append((start, count, buf, red))
        for peer, tag, start, count in sends:
            ops.append(dist.P2POp(dist.isend, tensor[start:start + count], group_ranks[peer], group, tag))
        for r in dist.batch_isend_irecv(ops):
            r.wait()
        for start, count, buf, red in landed:
            if red:
                tensor[start:start + count].add_(buf)
            else:
                tensor[start:start + count].copy_(buf)
    return tensor


@functools.lru_cache(maxsize=128)
def _allreduce_program(algo: str, p: int, nbytes: int, itemsize: int, local_size, rank: int):
    """The all-reduce schedule over the group's p workers (no dedicated servers: ps-central's
    server is worker 0) and `rank`'s program in it. Cached: DP sync runs the same buckets
    every step."""
    sched = build("allreduce", algo, p, nbytes, itemsize, local_size=local_size, dedicated=False)
    if sched.servers:
        raise ParsimError(f"all-reduce {algo} needs {sched.servers} dedicated server rank(s) outside the group; "
                          "a gradient sync runs among the workers only (use ps or ps-central)")
    return sched, rank_program(sched, rank, itemsize)


def allreduce(tensor, algo: str = "native", group=None, group_ranks=None, local_size: int | None = None):
    """Sum `tensor` over the group with algorithm `algo` (any all-reduce of
    ``parsim.schedules.collectives`` without dedicated servers, or ``native``), in place. Any
    shape (flattened through a contiguous view; the result is copied back when the view is a
    copy). `local_size`: ranks per node, for hierarchical. ParsimError for an algorithm that
    parsim has no all-reduce schedule of."""
    import torch.distributed as dist
    if group_ranks is None:
        group_ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    group_ranks = list(group_ranks)
    if len(group_ranks) == 1:
        return tensor
    if algo == "native":
        dist.all_reduce(tensor, group=group)
        return tensor
    flat = tensor.reshape(-1)
    contiguous = flat.is_contiguous() and flat.data_ptr() == tensor.data_ptr()
    if not contiguous:
        flat = flat.contiguous()
    isz = flat.element_size()
    sched, program = _allreduce_program(algo, len(group_ranks), flat.numel() * isz, isz, local_size,
                                        group_ranks.index(dist.get_rank()))
    run_schedule(sched, flat, group_ranks, group, program)
    if not contiguous:
        tensor.copy_(flat.view_as(tensor))
    return tensor
