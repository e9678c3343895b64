"""Collective schedules as data and their price on a graph — the seam to parsim's model.

``schedule(op, algo, world, nbytes, ...)`` and ``predict(graph, sched, rank_nodes)``
are what the benchmark and the sweep call. They use ``parsim.schedules.collectives``
and ``parsim.costs.network`` (issue 3) when those provide schedule generation and
graph pricing; until then the small versions below stand in, with the same
semantics the DESIGN fixes: steps of transfers (src, dst, bytes) run in order;
transfers in a step run concurrently; flows are routed on the graph and share
each link direction max-min fairly; every step pays its paths' latency.

A transfer also names the slice of the buffer it carries (``offset`` and
``nbytes``, in bytes) and whether the receiver adds it in (``reduce``) or copies
it: the format ``backends/torchdist/collectives.run_schedule`` executes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from parsim.errors import ParsimError, closest, require

OPS = ("allreduce", "reduce_scatter", "all_gather", "broadcast")
# ps: sharded servers co-located on every rank (BytePS); ps-central: one server
# (rank 0); ps-sharded: servers on the first k ranks (dedicated hosts in the ps preset)
ALGOS = ("ring", "tree", "hd", "hierarchical", "ps", "ps-central", "ps-sharded", "native")
ELEM_B = 4  # float32 buffers
TREE_MIN_CHUNK_B = 64 * 1024  # pipelined tree: chunks no smaller than this ...
TREE_MAX_CHUNKS = 8            # ... and at most this many


@dataclass(frozen=True)
class Transfer:
    src: int
    dst: int
    offset: int   # bytes into the buffer
    nbytes: int
    reduce: bool  # receiver adds (True) or copies (False)


@dataclass(frozen=True)
class Schedule:
    op: str
    algo: str
    world: int
    count: int    # elements per rank buffer
    steps: tuple  # of tuples of Transfer

    @property
    def nbytes(self) -> int:
        return self.count * ELEM_B


def _split(count, parts):
    """Byte ranges of `parts` near-equal chunks of `count` elements: [(offset, nbytes)]."""
    b = [count * i // parts * ELEM_B for i in range(parts + 1)]
    return [(b[i], b[i + 1] - b[i]) for i in range(parts)]


def _ring(ranks, count, reduce_phase=True, gather_phase=True):
    """Ring (Patarasuk & Yuan 2009): p-1 reduce-scatter steps then p-1 all-gather
    steps, each rank sending one n/p chunk to its successor."""
    p = len(ranks)
    ch = _split(count, p)
    steps = []
    if reduce_phase:
        for s in range(p - 1):
            steps.append(tuple(Transfer(ranks[i], ranks[(i + 1) % p], *ch[(i - s) % p], True) for i in range(p)))
    if gather_phase:
        for s in range(p - 1):
            steps.append(tuple(Transfer(ranks[i], ranks[(i + 1) % p], *ch[(i + 1 - s) % p], False) for i in range(p)))
    return steps


def _hd(ranks, count):
    """Recursive halving reduce-scatter then recursive doubling all-gather
    (Thakur, Rabenseifner & Gropp 2005): 2 log2 p steps, n/2, n/4, ... bytes."""
    p = len(ranks)
    require(p & (p - 1) == 0, f"hd needs a power-of-two number of ranks, got {p}")
    lo = {r: 0 for r in range(p)}
    n = {r: count for r in range(p)}
    rs, history = [], []
    d = p // 2
    while d >= 1:
        step, new = [], {}
        for i in range(p):
            j = i ^ d
            half = n[i] // 2
            keep_low = (i & d) == 0
            k_off, k_cnt = (lo[i], half) if keep_low else (lo[i] + half, n[i] - half)
            s_off, s_cnt = (lo[i] + half, n[i] - half) if keep_low else (lo[i], half)
            step.append(Transfer(ranks[i], ranks[j], s_off * ELEM_B, s_cnt * ELEM_B, True))
            new[i] = (k_off, k_cnt)
        rs.append(tuple(step))
        history.append(dict(lo=dict(lo), n=dict(n)))
        for i in range(p):
            lo[i], n[i] = new[i]
        d //= 2
    ag = []
    d = 1
    while d < p:
        ag.append(tuple(Transfer(ranks[i], ranks[i ^ d], lo[i] * ELEM_B, n[i] * ELEM_B, False) for i in range(p)))
        prev = history.pop()
        lo, n = prev["lo"], prev["n"]
        d *= 2
    return rs + ag


def _tree(ranks, count):
    """Binary tree (heap order, root ranks[0]): pipelined reduce towards the root,
    then pipelined broadcast, in k chunks; k + height - 1 steps per phase."""
    p = len(ranks)
    k = max(1, min(TREE_MAX_CHUNKS, count * ELEM_B // TREE_MIN_CHUNK_B))
    ch = _split(count, k)
    depth = [0] * p
    for i in range(1, p):
        depth[i] = depth[(i - 1) // 2] + 1
    H = max(depth)
    height = [H - d for d in depth]  # leaves at the deepest level send first
    steps = []
    for t in range(k + H - 1):
        step = [Transfer(ranks[i], ranks[(i - 1) // 2], *ch[t - height[i]], True)
                for i in range(1, p) if 0 <= t - height[i] < k]
        if step:
            steps.append(tuple(step))
    for t in range(k + H - 1):
        step = [Transfer(ranks[(i - 1) // 2], ranks[i], *ch[t - (depth[i] - 1)], False)
                for i in range(1, p) if 0 <= t - (depth[i] - 1) < k]
        if step:
            steps.append(tuple(step))
    return steps


def _ps(workers, count, servers):
    """Parameter server (BytePS, Jiang et al. OSDI'20): shard j of the buffer lives
    on servers[j]; every worker pushes shard j to it (reduce), then pulls it back."""
    ch = _split(count, len(servers))
    push = tuple(Transfer(r, s, *ch[j], True) for j, s in enumerate(servers) for r in workers if r != s)
    pull = tuple(Transfer(s, r, *ch[j], False) for j, s in enumerate(servers) for r in workers if r != s)
    return [push, pull]


def _hierarchical(groups, count):
    """Reduce to each group's first rank, ring all-reduce among those leaders,
    broadcast back inside each group (the two-level scheme of Horovod/NCCL)."""
    leaders = [g[0] for g in groups]
    up = tuple(Transfer(r, g[0], 0, count * ELEM_B, True) for g in groups for r in g[1:])
    down = tuple(Transfer(g[0], r, 0, count * ELEM_B, False) for g in groups for r in g[1:])
    return ([up] if up else []) + _ring(leaders, count) + ([down] if down else [])


def schedule(op: str, algo: str, p: int, nbytes: int, local_size: int | None = None, servers: int = 0) -> Schedule:
    """The schedule of one collective over workers 0..p-1 on an nbytes buffer, in
    the conventions of parsim.schedules.collectives: `servers` dedicated server
    ranks p..p+servers-1 (ps-central uses one if given, else worker 0 serves;
    ps-sharded needs them); hierarchical groups local_size consecutive ranks."""
    require(op in OPS, f"unknown collective {op!r}: expected one of {', '.join(OPS)}{closest(op, OPS)}")
    require(algo in ALGOS, f"unknown algorithm {algo!r}: expected one of {', '.join(ALGOS)}{closest(algo, ALGOS)}")
    require(p >= 1, f"{p} workers: expected at least 1")
    count = max(1, nbytes // ELEM_B)
    ranks = list(range(p))
    if p == 1 and not servers:
        return Schedule(op, algo, p, count, ())
    if op != "allreduce":
        require(algo in ("ring", "native"), f"{op} is implemented with ring or native only, not {algo!r}")
        steps = {"reduce_scatter": lambda: _ring(ranks, count, True, False),
                 "all_gather": lambda: _ring(ranks, count, False, True),
                 "broadcast": lambda: [tuple(Transfer(0, r, 0, count * ELEM_B, False) for r in ranks[1:])]}[op]()
    elif algo in ("ring", "native"):
        steps = _ring(ranks, count)
    elif algo == "hd":
        steps = _hd(ranks, count)
    elif algo == "tree":
        steps = _tree(ranks, count)
    elif algo == "hierarchical":
        L = local_size or p
        require(p % L == 0, f"hierarchical: {p} ranks is not a whole number of hosts of {L}")
        steps = _hierarchical([ranks[i:i + L] for i in range(0, p, L)], count)
    elif algo == "ps":
        steps = _ps(ranks, count, ranks)
    elif algo == "ps-central":
        steps = _ps(ranks, count, [p] if servers else [0])
    else:
        require(servers >= 1, "ps-sharded needs dedicated server ranks (e.g. --cluster ps --servers 2)")
        steps = _ps(ranks, count, list(range(p, p + servers)))
    return Schedule(op, algo, p, count, tuple(steps))


# -- pricing on the graph ------------------------------------------------------

def _maxmin(paths, cap):
    """Max-min fair rates (progressive filling) of flows over directed link resources."""
    rate = [0.0] * len(paths)
    left = dict(cap)
    active = set(range(len(paths)))
    while active:
        users = {}
        for f in active:
            for e in paths[f]:
                users.setdefault(e, []).append(f)
        e_min = min(users, key=lambda e: left[e] / len(users[e]))
        share = left[e_min] / len(users[e_min])
        for f in users[e_min]:
            rate[f] = share
            for e in paths[f]:
                left[e] -= share
            active.discard(f)
    return rate


def flow_time_s(paths, nbytes, cap):
    """Time for concurrent flows to finish: fluid, max-min fair, re-shared as flows end."""
    remaining = list(map(float, nbytes))
    live = [i for i, b in enumerate(remaining) if b > 0]
    t = 0.0
    for _ in range(len(remaining) + 1):
        if not live:
            return t
        rates = _maxmin([paths[i] for i in live], cap)
        dt = min(remaining[i] / r for i, r in zip(live, rates))
        t += dt
        for i, r in zip(live, rates):
            remaining[i] -= r * dt
        live = [i for i in live if remaining[i] > 1e-6 * nbytes[i]]
    raise AssertionError("flow simulation did not converge")


def predict(graph: nx.Graph, steps, rank_nodes) -> dict:
    """Predicted time of a schedule's steps (transfers with src, dst, nbytes): per step, routed flows (shortest path by hops
    between the ranks' device nodes) share link directions max-min fairly; the step
    ends with its slowest flow plus the largest path latency."""
    g = graph
    cap = {}
    for u, v, d in g.edges(data=True):
        cap[(u, v)] = cap[(v, u)] = float(d["bandwidth"])
    route = {}
    total, bw_part, lat_part = 0.0, 0.0, 0.0
    steps = getattr(steps, "steps", steps)
    for step in steps:
        paths, sizes, lats = [], [], []
        for tr in step:
            a, b = rank_nodes[tr.src], rank_nodes[tr.dst]
            if (a, b) not in route:
                route[(a, b)] = nx.shortest_path(g, a, b)
            path = route[(a, b)]
            hops = list(zip(path, path[1:]))
            paths.append(hops)
            sizes.append(tr.nbytes)
            lats.append(sum(g.edges[e].get("latency", 0.0) for e in hops))
        tb = flow_time_s(paths, sizes, cap)
        tl = max(lats) if lats else 0.0
        bw_part += tb
        lat_part += tl
        total += tb + tl
    return {"time_s": total, "bandwidth_term_s": bw_part, "latency_term_s": lat_part, "steps": len(steps),
            "model": "backends.netem.model (fluid max-min on the graph)"}


def bytes_moved(steps) -> int:
    return sum(t.nbytes for s in steps for t in s)


def busbw_factor(op: str, world: int) -> float:
    """nccl-tests bus bandwidth factor: all-reduce 2(p-1)/p, (reduce-scatter, all-gather) (p-1)/p."""
    if world <= 1:
        return 1.0
    return {"allreduce": 2 * (world - 1) / world}.get(op, (world - 1) / world if op != "broadcast" else 1.0)
