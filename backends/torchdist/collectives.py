"""Execute parsim communication schedules with isend/irecv on a flat tensor.

A schedule is plain data: a list of steps; a step is a list of transfers that run
concurrently; a transfer moves ``nbytes`` at byte ``offset`` of the buffer from
group-local rank ``src`` to ``dst``, which then either adds it into its own slice
(``reduce``) or overwrites its slice with it (copy). A step ends when all its transfers
have landed; reductions are applied after the step, so a rank may send and receive the
same slice in one step (ring, halving-doubling).

What runs is what parsim prices: ``parsim.schedules.collectives.allreduce_schedule`` (same
format; transfers may also carry ``dst_offset``, the receiver's offset, for all-to-all).
The builders below are the same algorithms written independently: the fallback when that
module is absent, and a cross-check in the tests. ``native`` is the library's own
``all_reduce``. ``run_schedule`` executes any op's schedule (reduce-scatter, all-gather,
broadcast, all-to-all, send/recv), not only all-reduce.

Entry points (also used by ``backends/torchdist/bench.py``):
  * ``run_schedule(schedule, tensor, group_ranks, group=None) -> tensor`` (in place)
  * ``allreduce(tensor, algo, group=None, group_ranks=None, local_size=None) -> tensor`` (sum, in place)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

ALGOS = ("ring", "tree", "hd", "hierarchical", "ps", "ps-central", "native")
USE_PRICED = True     # False: always the fallback builders below (tests compare both)


@dataclass(frozen=True)
class Transfer:
    src: int          # group-local rank
    dst: int
    offset: int       # bytes into the buffer
    nbytes: int
    reduce: bool      # True: dst[slice] += data; False: dst[slice] = data
    dst_offset: int | None = None   # bytes into the receiver's buffer (None: same as offset)


# ---------------------------------------------------------------- fallback builders (element units)

def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    """(start, count) of k near-equal contiguous chunks of n elements."""
    b = [n * i // k for i in range(k + 1)]
    return [(b[i], b[i + 1] - b[i]) for i in range(k)]


def _T(src, dst, chunk, itemsize, reduce):
    return Transfer(src, dst, chunk[0] * itemsize, chunk[1] * itemsize, reduce)


def build_ring(p: int, n: int, itemsize: int = 4, ranks=None):
    """Ring all-reduce (Patarasuk & Yuan 2009): p-1 reduce-scatter steps then p-1 all-gather steps,
    each moving n/p elements to the next rank: 2(p-1) steps of n/p."""
    ranks = list(range(p)) if ranks is None else list(ranks)
    p = len(ranks)
    ch = _chunks(n, p)
    steps = []
    for k in range(p - 1):   # rank i sends chunk (i - k) mod p, the next one adds it
        steps.append([_T(ranks[i], ranks[(i + 1) % p], ch[(i - k) % p], itemsize, True) for i in range(p)])
    for k in range(p - 1):   # rank i now owns chunk (i + 1) mod p complete; pass it on
        steps.append([_T(ranks[i], ranks[(i + 1) % p], ch[(i + 1 - k) % p], itemsize, False) for i in range(p)])
    return steps


def build_tree(p: int, n: int, itemsize: int = 4):
    """Binomial-tree reduce to rank 0 then broadcast back: 2·ceil(log2 p) steps of n."""
    full = (0, n)
    up, k = [], 1
    while k < p:
        up.append([_T(i, i - k, full, itemsize, True) for i in range(k, p, 2 * k)])
        k *= 2
    down = [[Transfer(t.dst, t.src, t.offset, t.nbytes, False) for t in step] for step in reversed(up)]
    return up + down


def build_hd(p: int, n: int, itemsize: int = 4):
    """Recursive halving reduce-scatter + recursive doubling all-gather (Rabenseifner; Thakur,
    Rabenseifner & Gropp 2005): 2·log2 p' steps, halving then doubling the slice. For p not a
    power of two the p - p' extra ranks first fold into ranks 0.. and get the result back at the end."""
    q = 1 << (p.bit_length() - 1)
    extra = p - q
    full = (0, n)
    steps = []
    if extra:
        steps.append([_T(q + i, i, full, itemsize, True) for i in range(extra)])
    # each rank tracks the element range it is responsible for
    lo, hi = [0] * q, [n] * q
    dist_, rs = q // 2, []
    while dist_ >= 1:
        step = []
        new = []
        for i in range(q):
            j = i ^ dist_
            mid = (lo[i] + hi[i]) // 2
            keep = (lo[i], mid) if i < j else (mid, hi[i])
            give = (mid, hi[i]) if i < j else (lo[i], mid)
            step.append(_T(i, j, (give[0], give[1] - give[0]), itemsize, True))
            new.append(keep)
        for i in range(q):
            lo[i], hi[i] = new[i]
        rs.append(step)
        dist_ //= 2
    ag, dist_ = [], 1
    while dist_ < q:
        step = []
        for i in range(q):
            step.append(_T(i, i ^ dist_, (lo[i], hi[i] - lo[i]), itemsize, False))
        # after the exchange each pair owns the union of its two ranges
        new = [(min(lo[i], lo[i ^ dist_]), max(hi[i], hi[i ^ dist_])) for i in range(q)]
        for i in range(q):
            lo[i], hi[i] = new[i]
        ag.append(step)
        dist_ *= 2
    steps += rs + ag
    if extra:
        steps.append([_T(i, q + i, full, itemsize, False) for i in range(extra)])
    return steps


def build_hierarchical(p: int, n: int, itemsize: int = 4, local_size: int | None = None):
    """Intra-node ring reduce-scatter, inter-node ring all-reduce of each shard among the ranks with
    the same local index, intra-node ring all-gather. Ranks are node-major (local_size per node)."""
    L = p if not local_size else local_size
    assert p % L == 0, f"hierarchical: group of {p} is not a whole number of nodes of {L}"
    nodes = p // L
    ch = _chunks(n, L)
    steps = []
    rs = build_ring(L, n, itemsize)[: L - 1]
    ag = build_ring(L, n, itemsize)[L - 1:]
    shift = lambda step, base: [Transfer(t.src + base, t.dst + base, t.offset, t.nbytes, t.reduce) for t in step]
    for s in rs:
        steps.append([t for node in range(nodes) for t in shift(s, node * L)])
    if nodes > 1:
        # after the local reduce-scatter, local rank i owns chunk (i + 1) mod L
        inter_steps = []
        for i in range(L):
            c = ch[(i + 1) % L]
            ring = build_ring(nodes, c[1], itemsize, ranks=[node * L + i for node in range(nodes)])
            ring = [[Transfer(t.src, t.dst, t.offset + c[0] * itemsize, t.nbytes, t.reduce) for t in st] for st in ring]
            inter_steps.append(ring)
        for k in range(len(inter_steps[0])):
            steps.append([t for r in inter_steps for t in r[k]])
    for s in ag:
        steps.append([t for node in range(nodes) for t in shift(s, node * L)])
    return steps


def build_ps(p: int, n: int, itemsize: int = 4):
    """Sharded parameter servers co-located on the workers (BytePS, OSDI'20): rank j serves shard j;
    push (every rank sends shard j to j, reduced) then pull (j sends its shard to every rank)."""
    ch = _chunks(n, p)
    push = [_T(i, j, ch[j], itemsize, True) for j in range(p) for i in range(p) if i != j]
    pull = [_T(j, i, ch[j], itemsize, False) for j in range(p) for i in range(p) if i != j]
    return [push, pull]


def build_ps_central(p: int, n: int, itemsize: int = 4):
    """One central parameter server (rank 0): every worker pushes its whole buffer, the server adds
    and sends the sum back (incast on the server's link)."""
    full = (0, n)
    return [[_T(i, 0, full, itemsize, True) for i in range(1, p)], [_T(0, i, full, itemsize, False) for i in range(1, p)]]


def build(algo: str, p: int, n: int, itemsize: int = 4, local_size: int | None = None):
    """The all-reduce schedule of `algo` for a group of p ranks and a buffer of n elements."""
    priced = _priced_schedule(algo, p, n * itemsize, local_size, itemsize) if USE_PRICED else None
    if priced is not None:
        return priced
    if algo == "ring":
        return build_ring(p, n, itemsize)
    if algo == "tree":
        return build_tree(p, n, itemsize)
    if algo == "hd":
        return build_hd(p, n, itemsize)
    if algo == "hierarchical":
        return build_hierarchical(p, n, itemsize, local_size)
    if algo == "ps":
        return build_ps(p, n, itemsize)
    if algo == "ps-central":
        return build_ps_central(p, n, itemsize)
    raise ValueError(f"no schedule for all-reduce algorithm {algo!r}; expected one of {', '.join(ALGOS)}")


def _priced_schedule(algo, p, nbytes, local_size, itemsize):
    """The schedule parsim prices (``parsim.schedules.collectives.allreduce_schedule``), or None
    when that module is not there (then the builders above, the same algorithms, are used).
    Offsets are aligned to the element size; the central server is worker 0 (no extra rank)."""
    try:
        from parsim.schedules.collectives import allreduce_schedule
    except ImportError:
        return None
    sched = allreduce_schedule(algo, p, nbytes, align=itemsize, local_size=local_size,
                               dedicated=False if algo == "ps-central" else None)
    if getattr(sched, "servers", 0):
        raise ValueError(f"{algo} schedule needs {sched.servers} dedicated server rank(s) outside the group")
    return sched


def _get(obj, *names, default=None):
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def _normalise(schedule):
    """Read a schedule object (``.steps`` or a list of steps; transfers with src, dst, offset/
    nbytes or bytes, reduce or op) into lists of :class:`Transfer`."""
    steps = _get(schedule, "steps", default=schedule)
    out = []
    for step in steps:
        ts = _get(step, "transfers", default=step)
        row = []
        for t in ts:
            if isinstance(t, Transfer):
                row.append(t)
                continue
            op = _get(t, "op", "kind", default=None)
            red = _get(t, "reduce", default=None)
            if red is None:
                red = str(op).lower() in ("reduce", "sum", "add")
            off = int(_get(t, "offset", "offset_bytes", default=0))
            dof = _get(t, "dst_offset", default=None)
            row.append(Transfer(int(_get(t, "src")), int(_get(t, "dst")), off,
                                int(_get(t, "nbytes", "bytes", "length", "size")), bool(red),
                                None if dof is None else int(dof)))
        out.append(row)
    return out


# ---------------------------------------------------------------- executor

def run_schedule(schedule, tensor: torch.Tensor, group_ranks=None, group=None) -> torch.Tensor:
    """Run `schedule` on this rank's contiguous 1-D `tensor` (in place) and return it.

    `group_ranks[i]` is the global rank of group-local rank i. Every rank of the group calls
    this with the same schedule. Transfers between the same pair in one step are told apart
    by a tag (their order in the step).

    Each step posts all its receives before any send. gloo's TCP pair keeps one FIFO of
    outgoing frames per peer, and a receive is announced to the sender by a small "recv ready"
    frame on it: posted after a send that is already streaming, that frame waits behind the
    whole message, the peer's message to us cannot start, and an exchange runs one way at a
    time (measured: 16 MiB each way at 200 Mbit/s took 1.40 s or 0.70 s at random with sends
    first, always 0.70 s = the one-way time with receives first).
    """
    assert tensor.dim() == 1 and tensor.is_contiguous(), "run_schedule works on a flat contiguous tensor"
    if group_ranks is None:
        group_ranks = getattr(schedule, "ranks", None) or range(dist.get_world_size())
    group_ranks = list(group_ranks)
    me = group_ranks.index(dist.get_rank())
    isz = tensor.element_size()
    for step in _normalise(schedule):
        reqs, landed, seen, sends = [], [], {}, []
        for t in step:
            if t.src != me and t.dst != me:
                continue
            tag = seen.setdefault((t.src, t.dst), 0)
            seen[(t.src, t.dst)] += 1
            assert t.offset % isz == 0 and t.nbytes % isz == 0, f"transfer {t} not aligned to {isz}-byte elements"
            a, n = t.offset // isz, t.nbytes // isz
            d = a if t.dst_offset is None else t.dst_offset // isz
            if n == 0:
                continue
            if t.src == me:
                sends.append((a, n, t.dst, tag))
            else:   # receives first (see the docstring)
                buf = torch.empty(n, dtype=tensor.dtype, device=tensor.device)
                reqs.append(dist.irecv(buf, src=group_ranks[t.src], group=group, tag=tag))
                landed.append((d, n, buf, t.reduce))
        for a, n, dst, tag in sends:
            reqs.append(dist.isend(tensor[a:a + n], dst=group_ranks[dst], group=group, tag=tag))
        for r in reqs:
            r.wait()
        for a, n, buf, red in landed:
            if red:
                tensor[a:a + n].add_(buf)
            else:
                tensor[a:a + n].copy_(buf)
    return tensor


def allreduce(tensor: torch.Tensor, algo: str = "native", group=None, group_ranks=None,
              local_size: int | None = None) -> torch.Tensor:
    """Sum `tensor` over the group with algorithm `algo`, in place. Any shape (flattened
    through a contiguous view; the result is copied back when the view is a copy)."""
    if group_ranks is None:
        group_ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    if len(group_ranks) == 1:
        return tensor
    if algo == "native":
        dist.all_reduce(tensor, group=group)
        return tensor
    flat = tensor.reshape(-1)
    contiguous = flat.is_contiguous() and flat.data_ptr() == tensor.data_ptr()
    if not contiguous:
        flat = flat.contiguous()
    run_schedule(build(algo, len(group_ranks), flat.numel(), flat.element_size(), local_size), flat, group_ranks, group)
    if not contiguous:
        tensor.copy_(flat.view_as(tensor))
    return tensor


def schedule_bytes_sent(schedule) -> dict:
    """Bytes each group-local rank sends over the whole schedule (a check against the pricing)."""
    out = {}
    for step in _normalise(schedule):
        for t in step:
            out[t.src] = out.get(t.src, 0) + t.nbytes
    return out


def simulate(schedule, buffers: list) -> list:
    """Play a schedule on plain Python/numpy buffers (one per rank): the single-process check
    that a schedule computes an all-reduce. Returns the new buffers."""
    import numpy as np
    bufs = [np.array(b, dtype=float) for b in buffers]
    isz = 8
    for step in _normalise(schedule):
        snap = [b.copy() for b in bufs]
        for t in step:
            a, n = t.offset // isz, t.nbytes // isz
            d = a if t.dst_offset is None else t.dst_offset // isz
            if t.reduce:
                bufs[t.dst][d:d + n] += snap[t.src][a:a + n]
            else:
                bufs[t.dst][d:d + n] = snap[t.src][a:a + n]
    return bufs


def log2ceil(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0
