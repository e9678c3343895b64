"""Collective communication schedules as plain data: the IR both executors read.

``parsim.costs.network`` prices a schedule on a cluster graph; ``backends/torchdist``
executes the very same object with isend/irecv on a flat tensor.

Data format
-----------
* A :class:`Schedule` is an ordered tuple of :class:`Step`; steps run one after the other.
* A :class:`Step` is a batch of transfers that run concurrently, stored column-wise as
  equal-length numpy arrays (struct of arrays, so that 1024-rank rings stay cheap):
  ``src``, ``dst`` (group-local ranks), ``offset`` (byte offset read on the sender),
  ``dst_offset`` (byte offset written on the receiver; equal to ``offset`` for every
  algorithm except all-to-all), ``nbytes`` and ``reduce`` (bool). ``Step.transfers``
  yields the same rows as :class:`Transfer` objects.
* Receiver action: ``reduce=True`` adds the data into ``buf[dst_offset : dst_offset+nbytes]``;
  ``reduce=False`` copies it there.
* Execution semantics (what makes ring and recursive doubling correct): every transfer of
  a step reads the sender's buffer *as it was when the step began*; received data is
  applied when the step ends (isend/irecv into a scratch buffer, wait all, then add/copy).
* Ranks: ``0 .. p-1`` are the group's workers (``Schedule.ranks[i]`` is the global rank of
  local rank i when known). Parameter-server schedules with *dedicated* server hosts add
  ``Schedule.servers`` extra ranks ``p .. p+k-1`` that hold no input: their buffer starts
  as zeros of the same length and they end with nothing the caller needs.
* Every rank's buffer is ``nbytes`` long (nccl-tests convention: the per-rank buffer).
  Offsets are multiples of ``align`` bytes (element size; default: the largest power of
  two <= 16 dividing ``nbytes``, which every power-of-two element size divides).
  ``segments(nbytes, parts, align)`` gives the split every algorithm uses.

What each op leaves behind (p workers, ``seg = segments(nbytes, p, align)``):
  allreduce       every worker holds the element-wise sum of all workers' inputs;
  reduce_scatter  worker r holds the sum in ``[seg[r], seg[r+1])`` (the rest is scratch);
  all_gather      worker r's input is its slice ``seg[r]``; afterwards every worker holds
                  every worker's slice;
  broadcast       worker 0's buffer on every worker;
  all_to_all      worker i's slice j ends in worker j's slice i;
  sendrecv        worker i's buffer copied to worker i+1 (a pipeline-stage boundary).

Sources: ring — Patarasuk & Yuan 2009 (bandwidth-optimal, 2(p-1) steps of n/p);
recursive halving-doubling and recursive doubling with the non-power-of-two fold —
Thakur, Rabenseifner & Gropp 2005, §4; double binary tree — Sanders, Speck & Träff
2009 ("two-tree" algorithms), as used by NCCL 2.4; parameter servers — Jiang et al.,
BytePS, OSDI'20; chunk size of pipelined trees — NCCL's default 4 MiB buffer in 8
steps = 512 KiB per pipeline step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from parsim.errors import ParsimError, closest, require

OPS = ("allreduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all", "sendrecv")
TREE_CHUNK_BYTES = 512 * 1024     # NCCL: 4 MiB buffer / 8 steps per pipeline slot
MAX_TREE_CHUNKS = 64              # default cap on chunks when the caller does not choose


@dataclass(frozen=True)
class Transfer:
    """One row of a Step: ``dst.buf[dst_offset:+nbytes] (+)= src.buf[offset:+nbytes]``."""
    src: int
    dst: int
    offset: int
    nbytes: int
    reduce: bool
    dst_offset: int


@dataclass(frozen=True, eq=False)
class Step:
    """Concurrent transfers, column-wise. Arrays may be shared between steps (read-only)."""
    src: np.ndarray
    dst: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    reduce: np.ndarray
    dst_offset: np.ndarray

    @staticmethod
    def of(rows) -> "Step":
        """From (src, dst, offset, nbytes, reduce[, dst_offset]) tuples."""
        rows = [tuple(r) if len(r) == 6 else (*r, r[2]) for r in rows]
        a = np.array(rows, dtype=np.int64).reshape(-1, 6)
        return Step(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4].astype(bool), a[:, 5])

    def __len__(self):
        return len(self.src)

    @property
    def transfers(self):
        return [Transfer(int(s), int(d), int(o), int(n), bool(r), int(q)) for s, d, o, n, r, q in
                zip(self.src, self.dst, self.offset, self.nbytes, self.reduce, self.dst_offset)]

    def __iter__(self):
        return iter(self.transfers)


@dataclass(frozen=True, eq=False)
class Schedule:
    op: str
    algo: str
    p: int                      # workers: group-local ranks 0..p-1
    nbytes: int                 # per-rank buffer
    align: int
    steps: tuple
    servers: int = 0            # dedicated server ranks p..p+servers-1 (zero-initialised)
    ranks: tuple | None = None  # global rank of each worker, when bound to a group
    meta: dict = field(default_factory=dict)

    @property
    def nranks(self) -> int:
        return self.p + self.servers

    def transfers(self):
        """(step index, Transfer) for every transfer, in order."""
        for i, s in enumerate(self.steps):
            for t in s.transfers:
                yield i, t

    def bytes_sent(self) -> np.ndarray:
        out = np.zeros(self.nranks, dtype=np.int64)
        for s in self.steps:
            np.add.at(out, s.src, s.nbytes)
        return out

    def with_ranks(self, ranks) -> "Schedule":
        ranks = tuple(int(r) for r in ranks)
        require(len(ranks) == self.p, f"schedule for {self.p} ranks bound to {len(ranks)} global ranks")
        return Schedule(self.op, self.algo, self.p, self.nbytes, self.align, self.steps, self.servers, ranks, dict(self.meta))


# ----------------------------------------------------------------------------- helpers

def default_align(nbytes: int) -> int:
    """Largest power of two <= 16 dividing nbytes (so any power-of-two element size fits)."""
    n = int(nbytes)
    return 16 if n == 0 else min(16, n & -n)


def segments(nbytes: int, parts: int, align: int = 1) -> np.ndarray:
    """Offsets (parts+1) of `parts` near-equal, `align`-aligned slices of `nbytes`."""
    units = int(nbytes) // align
    return (units * np.arange(parts + 1, dtype=np.int64) // parts) * align


def _check(p: int, nbytes: int, align):
    require(isinstance(p, (int, np.integer)) and p >= 1, f"group size p = {p!r}: expected a positive integer")
    require(nbytes >= 0, f"nbytes = {nbytes}: expected >= 0 bytes")
    align = default_align(nbytes) if align is None else int(align)
    require(align >= 1 and nbytes % align == 0, f"nbytes ({nbytes}) is not a multiple of align ({align} B)")
    return int(p), int(nbytes), align


def _pow2(p: int) -> bool:
    return p & (p - 1) == 0


def _mk(op, algo, p, nbytes, align, steps, servers=0, **meta) -> Schedule:
    return Schedule(op, algo, p, nbytes, align, tuple(s for s in steps if len(s)), servers, None, meta)


def _split_layout(lo: np.ndarray, hi: np.ndarray, m: int, align: int):
    """Ring g's bytes [lo[g], hi[g]) cut into m contiguous chunks; position i owns chunk i."""
    units = (hi - lo) // align
    bounds = lo[:, None] + (units[:, None] * np.arange(m + 1) // m) * align         # G × (m+1)
    return bounds[:, :-1], bounds[:, 1:] - bounds[:, :-1]


def _owner_layout(orders: np.ndarray, nbytes: int, align: int):
    """Channel c of C, position i (rank r = orders[c, i]) owns part c of rank r's segment
    ``segments(nbytes, p)[r]`` — NCCL's split of each rank's slice over its channels."""
    C, p = orders.shape
    seg = segments(nbytes, p, align)
    units = (seg[1:] - seg[:-1]) // align
    sub = seg[:-1, None] + (units[:, None] * np.arange(C + 1) // C) * align          # p × (C+1)
    c = np.arange(C)[:, None]
    return sub[orders, c], sub[orders, c + 1] - sub[orders, c]


def _rings(groups: np.ndarray, off: np.ndarray, nb: np.ndarray, rs: bool, ag: bool) -> list:
    """Concurrent rings (Patarasuk & Yuan 2009). `groups` is G×m (ranks in ring order); position
    i of ring g owns the chunk (off[g, i], nb[g, i]). Reduce-scatter: at step k position i sends
    the chunk of position (i-k-1) mod m to position i+1, which adds it, so after m-1 steps
    position i holds the sum of its own chunk. All-gather: at step k position i sends the chunk
    of position (i-k) mod m. Step k's chunk row is a rotation, i.e. a window of the doubled
    table (no per-step arithmetic; src/dst arrays are shared by all steps)."""
    G, m = groups.shape
    if m <= 1:
        return []
    off_ext, nb_ext = np.concatenate([off, off], axis=1), np.concatenate([nb, nb], axis=1)   # G × 2m
    src = groups.ravel()
    dst = np.roll(groups, -1, axis=1).ravel()
    uniform = bool((nb == nb.flat[0]).all())
    nb_shared = np.full(G * m, nb.flat[0]) if uniform else None
    out = []
    for shift, red, on in ((1, True, rs), (0, False, ag)):
        if not on:
            continue
        flag = np.full(G * m, red)
        for k in range(m - 1):
            st = (m - k - shift) % m                       # row k: chunk of position (i - k - shift) mod m
            o = off_ext[:, st:st + m].ravel()
            out.append(Step(src, dst, o, nb_shared if uniform else nb_ext[:, st:st + m].ravel(), flag, o))
    return out


def _orders(p, orders):
    g = np.arange(p)[None, :] if orders is None else np.array([list(o) for o in orders], dtype=np.int64)
    require(g.ndim == 2 and g.shape[1] == p and all(sorted(row) == list(range(p)) for row in g.tolist()),
            f"ring orders must be permutations of 0..{p - 1}")
    return g


def _merge(*step_lists) -> list:
    """Run several independent step lists side by side (step i of each together)."""
    out = []
    for i in range(max((len(s) for s in step_lists), default=0)):
        parts = [s[i] for s in step_lists if i < len(s)]
        out.append(parts[0] if len(parts) == 1 else Step(*(np.concatenate([getattr(s, f) for s in parts])
                                                          for f in ("src", "dst", "offset", "nbytes", "reduce", "dst_offset"))))
    return out


# ----------------------------------------------------------------------------- all-reduce

def allreduce_ring(p, nbytes, align=None, orders=None) -> Schedule:
    """Ring: 2(p-1) steps of n/p bytes per rank; time 2(p-1)(α + n/(pB)) (Patarasuk & Yuan 2009).
    `orders`: several rings ("channels", as NCCL builds one per NIC) each given as a rank
    permutation, running side by side on consecutive slices of the buffer."""
    p, nbytes, align = _check(p, nbytes, align)
    g = _orders(p, orders)
    return _mk("allreduce", "ring", p, nbytes, align, _rings(g, *_owner_layout(g, nbytes, align), True, True),
               channels=len(g))


def _fold(p):
    """Thakur et al. 2005 §4: q = largest power of two <= p; extra ranks q+i fold into rank i."""
    q = 1 << (p.bit_length() - 1)
    return q, p - q


def allreduce_rd(p, nbytes, align=None) -> Schedule:
    """Recursive doubling (small messages): log2 q steps exchanging the whole buffer, both sides
    add; α-optimal, n·log2 q bytes per rank. Non-powers of two fold the p-q extra ranks in
    first and copy the result back last (2 extra steps)."""
    p, nbytes, align = _check(p, nbytes, align)
    q, e = _fold(p)
    steps = [Step.of([(q + i, i, 0, nbytes, 1) for i in range(e)])]
    d = 1
    while d < q:
        steps.append(Step.of([(i, i ^ d, 0, nbytes, 1) for i in range(q)]))
        d *= 2
    steps.append(Step.of([(i, q + i, 0, nbytes, 0) for i in range(e)]))
    return _mk("allreduce", "rd", p, nbytes, align, steps)


def _halving_doubling(q, nbytes, align, rs=True, ag=True):
    """Recursive halving reduce-scatter (distance q/2, q/4, .., 1: keep one half, send the other,
    partner adds) leaves rank r with segment r of q; recursive doubling all-gather (distance
    1, 2, .., q/2) exchanges owned ranges back. 2·log2 q steps, (q-1)/q·n bytes each way."""
    seg = segments(nbytes, q, align)
    lo, hi = np.zeros(q, dtype=np.int64), np.full(q, q, dtype=np.int64)   # owned segment range
    steps = []
    d = q // 2
    while d >= 1 and rs:
        rows = []
        for i in range(q):
            mid = (lo[i] + hi[i]) // 2
            give = (mid, hi[i]) if i & d == 0 else (lo[i], mid)
            rows.append((i, i ^ d, seg[give[0]], seg[give[1]] - seg[give[0]], 1))
        for i in range(q):
            mid = (lo[i] + hi[i]) // 2
            lo[i], hi[i] = (lo[i], mid) if i & d == 0 else (mid, hi[i])
        steps.append(Step.of(rows))
        d //= 2
    if not rs:
        lo, hi = np.arange(q), np.arange(q) + 1
    d = 1
    while d < q and ag:
        steps.append(Step.of([(i, i ^ d, seg[lo[i]], seg[hi[i]] - seg[lo[i]], 0) for i in range(q)]))
        lo, hi = np.minimum(lo, lo[np.arange(q) ^ d]), np.maximum(hi, hi[np.arange(q) ^ d])
        d *= 2
    return steps


def allreduce_hd(p, nbytes, align=None) -> Schedule:
    """Rabenseifner: recursive halving reduce-scatter + recursive doubling all-gather,
    2·log2 q steps, bandwidth term 2(q-1)/q·n/B (Thakur, Rabenseifner & Gropp 2005 §4.4);
    non-powers of two fold the extra ranks in and out (whole buffer, 2 extra steps)."""
    p, nbytes, align = _check(p, nbytes, align)
    q, e = _fold(p)
    steps = [Step.of([(q + i, i, 0, nbytes, 1) for i in range(e)])]
    steps += _halving_doubling(q, nbytes, align)
    steps.append(Step.of([(i, q + i, 0, nbytes, 0) for i in range(e)]))
    return _mk("allreduce", "hd", p, nbytes, align, steps)


def _inorder_tree(p):
    """Balanced in-order binary tree over 0..p-1: parent array (-1 for the root)."""
    parent = [-1] * p

    def build(lo, hi, par):
        if lo > hi:
            return
        mid = (lo + hi) // 2
        parent[mid] = par
        build(lo, mid - 1, mid)
        build(mid + 1, hi, mid)
    build(0, p - 1, -1)
    return parent


def _levels(parent):
    """(height above the deepest leaf below, depth from the root) of every node."""
    p = len(parent)
    depth = [0] * p
    for v in range(p):
        u = v
        while parent[u] >= 0:
            u, depth[v] = parent[u], depth[v] + 1
    height = [0] * p
    for v in sorted(range(p), key=lambda v: -depth[v]):
        if parent[v] >= 0:
            height[parent[v]] = max(height[parent[v]], height[v] + 1)
    return height, depth


def _pipelined_tree(parent, lo, hi, chunks, align, reduce_up=True, bcast_down=True):
    """Rounds of a chunked tree on bytes [lo, hi): node v sends chunk c up at round c + h(v)
    (its children's chunk c landed in earlier rounds); the root's chunk c is complete after
    round c + H - 1 and travels down, reaching depth d at round c + H + d - 1. Up and down
    overlap: 2H + chunks - 1 rounds. Returns {round: [rows]}."""
    height, depth = _levels(parent)
    root = parent.index(-1)
    H = height[root]
    b = segments(hi - lo, chunks, align) + lo
    rounds = {}
    for v, par in enumerate(parent):
        if par < 0:
            continue
        for c in range(chunks):
            if reduce_up:
                rounds.setdefault(c + height[v], []).append((v, par, b[c], b[c + 1] - b[c], 1))
            if bcast_down:
                t = c + depth[v] - 1 + (H if reduce_up else 0)
                rounds.setdefault(t, []).append((par, v, b[c], b[c + 1] - b[c], 0))
    return rounds, H


def _tree_chunks(nbytes, chunks, chunk_bytes, parts):
    if chunks is None:
        chunks = max(1, min(MAX_TREE_CHUNKS, -(-nbytes // (parts * chunk_bytes))))
    require(chunks >= 1, f"chunks = {chunks}: expected >= 1")
    return int(chunks)


def nccl_btree(p):
    """NCCL's binary tree (src/graph/trees.cc, ncclGetBtree): rank r's parent is
    (r ^ bit) | (bit << 1) — or r ^ bit when that is out of range — with bit the lowest set
    bit of r; rank 0 is the root with one child. Odd ranks are the leaves."""
    parent = [-1] * p
    for r in range(1, p):
        bit = r & -r
        up = (r ^ bit) | (bit << 1)
        parent[r] = up if up < p else r ^ bit
    return parent


def double_binary_trees(p):
    """NCCL's double binary tree (Sanders, Speck & Träff 2009; NCCL 2.4, ncclGetDtree): the
    second tree mirrors the first (r -> p-1-r) for even p and shifts it by one for odd p,
    so the leaves of one tree are interior nodes of the other."""
    t1 = nccl_btree(p)
    t2 = [-1] * p
    for v, par in enumerate(t1):
        if p % 2 == 0:
            t2[p - 1 - v] = -1 if par < 0 else p - 1 - par
        else:
            t2[(v + 1) % p] = -1 if par < 0 else (par + 1) % p
    return t1, t2


def allreduce_tree(p, nbytes, align=None, chunks=None, chunk_bytes=TREE_CHUNK_BYTES) -> Schedule:
    """Double binary tree, pipelined: each tree reduces then broadcasts half the buffer in
    `chunks` chunks (default n/2/512KiB, at most 64); reduce and broadcast overlap, so
    2H + chunks - 1 rounds, H = tree height ≈ log2 p (Sanders, Speck & Träff 2009)."""
    p, nbytes, align = _check(p, nbytes, align)
    if p == 1:
        return _mk("allreduce", "tree", 1, nbytes, align, [], chunks=1, height=0)
    chunks = _tree_chunks(nbytes, chunks, chunk_bytes, 2)
    half = segments(nbytes, 2, align)
    rounds, H = {}, 0
    for t, (lo, hi) in zip(double_binary_trees(p), ((half[0], half[1]), (half[1], half[2]))):
        r, h = _pipelined_tree(t, lo, hi, chunks, align)
        H = max(H, h)
        for k, rows in r.items():
            rounds.setdefault(k, []).extend(rows)
    steps = [Step.of(rounds[k]) for k in sorted(rounds)]
    return _mk("allreduce", "tree", p, nbytes, align, steps, chunks=chunks, height=H)


def allreduce_hierarchical(p, nbytes, align=None, local_size=None) -> Schedule:
    """Intra-node ring reduce-scatter, inter-node ring all-reduce of each shard among the ranks
    with the same local index, intra-node ring all-gather (NCCL/Horovod hierarchical). Ranks
    are node-major: local rank l of node j is j·local_size + l. Bandwidth term
    2(L-1)/L·n/B_intra + 2(N-1)/N·n/(L·B_inter) for L ranks per node and N nodes."""
    p, nbytes, align = _check(p, nbytes, align)
    L = p if not local_size else int(local_size)
    require(L >= 1 and p % L == 0, f"hierarchical: group of {p} ranks is not a whole number of nodes of "
                                   f"local_size {L}")
    N = p // L
    nodes = np.arange(p).reshape(N, L)
    whole_lo, whole_hi = np.zeros(N, dtype=np.int64), np.full(N, nbytes, dtype=np.int64)
    seg = segments(nbytes, L, align)
    inter = np.arange(p).reshape(N, L).T                      # L rings of N members
    local = _split_layout(whole_lo, whole_hi, L, align)
    steps = _rings(nodes, *local, True, False)
    steps += _rings(inter, *_split_layout(seg[:-1], seg[1:], N, align), True, True)
    steps += _rings(nodes, *local, False, True)
    return _mk("allreduce", "hierarchical", p, nbytes, align, steps, local_size=L)


def allreduce_ps(p, nbytes, align=None) -> Schedule:
    """Sharded servers co-located on the workers (BytePS, OSDI'20): worker j serves slice j.
    Push: every worker sends slice j to worker j, which adds; pull: worker j sends its summed
    slice to every worker. 2 steps, each (p-1)/p·n out of and into every worker: the ring's
    bandwidth term 2(p-1)/p·n/B."""
    p, nbytes, align = _check(p, nbytes, align)
    seg = segments(nbytes, p, align)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(p), np.arange(p)))
    i, j = i[i != j], j[i != j]                       # worker i, server (slice) j
    off, nb = seg[j], (seg[1:] - seg[:-1])[j]
    push = Step(i, j, off, nb, np.ones(len(i), bool), off)
    pull = Step(j, i, off, nb, np.zeros(len(i), bool), off)
    return _mk("allreduce", "ps", p, nbytes, align, [push, pull])


def allreduce_ps_central(p, nbytes, align=None, dedicated=True) -> Schedule:
    """One central parameter server. `dedicated`: the server is an extra rank p on its own host
    (zero-initialised); every worker pushes its whole buffer (server link: incast of p·n) and
    pulls the sum: 2(α + p·n/B). Otherwise worker 0 is the server: (p-1)·n each way."""
    p, nbytes, align = _check(p, nbytes, align)
    s, first = (p, 0) if dedicated else (0, 1)
    push = [(i, s, 0, nbytes, 1) for i in range(first, p)]
    pull = [(s, i, 0, nbytes, 0) for i in range(first, p)]
    return _mk("allreduce", "ps-central", p, nbytes, align, [Step.of(push), Step.of(pull)], servers=int(dedicated))


def allreduce_ps_sharded(p, nbytes, align=None, servers=1) -> Schedule:
    """k sharded servers on dedicated hosts, ranks p..p+k-1, push *then* pull (no pipelining):
    each worker pushes slice j of k to server j; after every push has landed, it pulls slice j
    back. Each of the 2 steps takes max(n/B, p·n/(k·B)), so 2·max(M/B, nM/(kB)): twice
    BytePS's bound, which ps-pipelined approaches."""
    p, nbytes, align = _check(p, nbytes, align)
    k = int(servers)
    require(k >= 1, f"ps-sharded needs at least one dedicated server, got {servers}")
    seg = segments(nbytes, k, align)
    push = [(i, p + j, seg[j], seg[j + 1] - seg[j], 1) for j in range(k) for i in range(p)]
    pull = [(p + j, i, seg[j], seg[j + 1] - seg[j], 0) for j in range(k) for i in range(p)]
    return _mk("allreduce", "ps-sharded", p, nbytes, align, [Step.of(push), Step.of(pull)], servers=k)


PS_PARTITION_BYTES = 4_096_000   # BytePS's default partition size (BYTEPS_PARTITION_BYTES, BytePS docs)


def allreduce_ps_pipelined(p, nbytes, align=None, servers=1, partition_bytes=PS_PARTITION_BYTES) -> Schedule:
    """k sharded servers on dedicated hosts (ranks p..p+k-1), partitions pipelined as BytePS
    runs them (Jiang et al., OSDI'20 §4): the buffer is cut into k·C partitions of about
    `partition_bytes`, partition j served by server j mod k; round t pushes partitions
    t·k..t·k+k-1 while the previous round's sums are pulled, so pushes (worker -> server) and
    pulls (server -> worker) use the two directions of every link at once. C + 1 steps, each
    max(n/(C·B), p·n/(k·C·B)): time (C+1)/C · max(M/B, nM/(kB)) + (C+1)·α — BytePS's bound
    max(M/B, nM/(kB)) as C grows, where push-then-pull (ps-sharded) pays twice it."""
    p, nbytes, align = _check(p, nbytes, align)
    k = int(servers)
    require(k >= 1, f"ps-pipelined needs at least one dedicated server, got {servers}")
    require(partition_bytes >= 1, f"partition_bytes = {partition_bytes}: expected >= 1")
    C = max(1, -(-nbytes // (k * int(partition_bytes))))
    seg = segments(nbytes, k * C, align)
    workers = np.arange(p)

    def rows(t, push):
        if not 0 <= t < C:
            return []
        out = []
        for j in range(t * k, t * k + k):
            off, nb, srv = seg[j], seg[j + 1] - seg[j], p + j % k
            out += [(i, srv, off, nb, 1) if push else (srv, i, off, nb, 0) for i in workers.tolist()]
        return out
    steps = [Step.of(rows(t, True) + rows(t - 1, False)) for t in range(C + 1)]
    return _mk("allreduce", "ps-pipelined", p, nbytes, align, steps, servers=k, rounds=C)


# ----------------------------------------------------------------------------- other ops

def reduce_scatter_ring(p, nbytes, align=None, orders=None) -> Schedule:
    """Ring reduce-scatter: p-1 steps of n/p; worker r ends with slice r summed. `orders`:
    channels as in allreduce_ring (each rank's slice split over them)."""
    p, nbytes, align = _check(p, nbytes, align)
    g = _orders(p, orders)
    return _mk("reduce_scatter", "ring", p, nbytes, align, _rings(g, *_owner_layout(g, nbytes, align), True, False),
               channels=len(g))


def reduce_scatter_hd(p, nbytes, align=None) -> Schedule:
    """Recursive halving: log2 p steps of n/2, n/4, ... (Thakur et al. 2005 §4.3); p = 2^k only."""
    p, nbytes, align = _check(p, nbytes, align)
    require(_pow2(p), f"reduce_scatter hd (recursive halving) needs a power-of-two group, got p = {p}; use ring")
    return _mk("reduce_scatter", "hd", p, nbytes, align, _halving_doubling(p, nbytes, align, rs=True, ag=False))


def all_gather_ring(p, nbytes, align=None, orders=None) -> Schedule:
    """Ring all-gather: p-1 steps of n/p; worker r contributes slice r. `orders`: channels."""
    p, nbytes, align = _check(p, nbytes, align)
    g = _orders(p, orders)
    return _mk("all_gather", "ring", p, nbytes, align, _rings(g, *_owner_layout(g, nbytes, align), False, True),
               channels=len(g))


def all_gather_rd(p, nbytes, align=None) -> Schedule:
    """Recursive doubling all-gather: log2 p steps of n/p, 2n/p, ... (Thakur et al. 2005 §4.1); p = 2^k."""
    p, nbytes, align = _check(p, nbytes, align)
    require(_pow2(p), f"all_gather rd (recursive doubling) needs a power-of-two group, got p = {p}; use ring")
    return _mk("all_gather", "rd", p, nbytes, align, _halving_doubling(p, nbytes, align, rs=False, ag=True))


def broadcast_tree(p, nbytes, align=None, chunks=None, chunk_bytes=TREE_CHUNK_BYTES) -> Schedule:
    """Pipelined binary tree from worker 0 (tree rooted at 0 via relabelling): depth + chunks - 1 rounds."""
    p, nbytes, align = _check(p, nbytes, align)
    if p == 1:
        return _mk("broadcast", "tree", 1, nbytes, align, [], chunks=1, height=0)
    chunks = _tree_chunks(nbytes, chunks, chunk_bytes, 1)
    t = _inorder_tree(p)
    root = t.index(-1)
    swap = lambda v: 0 if v == root else (root if v == 0 else v)     # relabel so the root is 0
    parent = [-1] * p
    for v, par in enumerate(t):
        parent[swap(v)] = -1 if par < 0 else swap(par)
    rounds, H = _pipelined_tree(parent, 0, nbytes, chunks, align, reduce_up=False)
    return _mk("broadcast", "tree", p, nbytes, align, [Step.of(rounds[k]) for k in sorted(rounds)], chunks=chunks, height=H)


def broadcast_ring(p, nbytes, align=None, chunks=None, chunk_bytes=TREE_CHUNK_BYTES) -> Schedule:
    """Pipelined chain 0 → 1 → … → p-1 (NCCL's broadcast): p - 2 + chunks rounds of n/chunks."""
    p, nbytes, align = _check(p, nbytes, align)
    chunks = 1 if p == 1 else _tree_chunks(nbytes, chunks, chunk_bytes, 1)
    parent = [-1] + list(range(p - 1))
    rounds, H = _pipelined_tree(parent, 0, nbytes, chunks, align, reduce_up=False) if p > 1 else ({}, 0)
    return _mk("broadcast", "ring", p, nbytes, align, [Step.of(rounds[k]) for k in sorted(rounds)], chunks=chunks, height=H)


def all_to_all_pairwise(p, nbytes, align=None) -> Schedule:
    """All pairs at once, as NCCL posts grouped send/recv: one step; worker i's slice j goes to
    worker j's slice i ((p-1)/p·n out of and into every worker)."""
    p, nbytes, align = _check(p, nbytes, align)
    seg = segments(nbytes, p, align)
    require(p == 1 or nbytes % (p * align) == 0,
            f"all_to_all needs equal slices: nbytes ({nbytes}) is not a multiple of p·align ({p}·{align})")
    i, j = (a.ravel() for a in np.meshgrid(np.arange(p), np.arange(p)))
    i, j = i[i != j], j[i != j]
    step = Step(i, j, seg[j], np.full(len(i), nbytes // p), np.zeros(len(i), bool), seg[i])
    return _mk("all_to_all", "pairwise", p, nbytes, align, [step])


def sendrecv_direct(p, nbytes, align=None) -> Schedule:
    """Pipeline boundary: worker i sends its buffer to worker i+1, all at once (one step)."""
    p, nbytes, align = _check(p, nbytes, align)
    return _mk("sendrecv", "direct", p, nbytes, align, [Step.of([(i, i + 1, 0, nbytes, 0) for i in range(p - 1)])])


BUILDERS = {
    "allreduce": {"ring": allreduce_ring, "tree": allreduce_tree, "hd": allreduce_hd, "rd": allreduce_rd,
                  "hierarchical": allreduce_hierarchical, "ps": allreduce_ps, "ps-central": allreduce_ps_central,
                  "ps-sharded": allreduce_ps_sharded, "ps-pipelined": allreduce_ps_pipelined},
    "reduce_scatter": {"ring": reduce_scatter_ring, "hd": reduce_scatter_hd},
    "all_gather": {"ring": all_gather_ring, "rd": all_gather_rd},
    "broadcast": {"ring": broadcast_ring, "tree": broadcast_tree},
    "all_to_all": {"pairwise": all_to_all_pairwise},
    "sendrecv": {"direct": sendrecv_direct},
}


def algorithms(op: str) -> tuple:
    if op not in BUILDERS:
        raise ParsimError(f"unknown collective {op!r}: expected one of {', '.join(OPS)}{closest(op, OPS)}")
    return tuple(BUILDERS[op])


def build(op: str, algo: str, p: int, nbytes: int, align=None, **kw) -> Schedule:
    """The schedule of `op` by `algo` over p workers and a per-rank buffer of `nbytes`.

    Keywords by algorithm: ``local_size`` (hierarchical), ``chunks``/``chunk_bytes`` (tree,
    broadcast), ``servers`` (ps-sharded), ``dedicated`` (ps-central). Unused keywords are ignored."""
    algos = algorithms(op)
    if algo not in algos:
        raise ParsimError(f"no {op} schedule named {algo!r}: expected one of {', '.join(algos)}{closest(algo, algos)}"
                          + (" ('native' is the library's own collective; parsim.costs.network prices it)"
                             if algo == "native" else ""))
    fn = BUILDERS[op][algo]
    import inspect
    params = inspect.signature(fn).parameters
    return fn(p, nbytes, align, **{k: v for k, v in kw.items() if k in params and v is not None})


def reference(schedule: Schedule, rank: int, input_of) -> tuple[np.ndarray, np.ndarray]:
    """What worker `rank` holds after `schedule` ran, by the op's contract (the table in this
    module's docstring), not by playing the schedule: ``(expected, defined)``, two 1-D arrays of
    the inputs' length; ``defined`` is False where the op leaves scratch (reduce-scatter outside
    the worker's own slice). ``input_of(w)`` returns worker w's input, a 1-D numpy array of
    ``schedule.nbytes`` bytes (any element size dividing ``schedule.align``); it is called once
    per worker needed, so a caller can generate inputs instead of holding all p.

    The oracle of the executor tests and of the benchmark's result check; dedicated server
    ranks have no contract (AssertionError)."""
    p, op = schedule.p, schedule.op
    assert 0 <= rank < p, f"rank {rank} is not one of the schedule's {p} workers"
    mine = np.asarray(input_of(rank))
    isz = mine.itemsize
    assert mine.ndim == 1 and mine.nbytes == schedule.nbytes and schedule.align % isz == 0, (
        f"input of {mine.nbytes} B in {isz}-byte elements for a {schedule.nbytes} B schedule aligned to "
        f"{schedule.align} B")
    seg = segments(schedule.nbytes, p, schedule.align) // isz
    defined = np.ones(len(mine), dtype=bool)
    if op in ("allreduce", "reduce_scatter"):
        out = mine.copy()
        for w in range(p):
            if w != rank:
                out += input_of(w)
        if op == "reduce_scatter":
            defined[:] = False
            defined[seg[rank]:seg[rank + 1]] = True
    elif op == "all_gather":
        out = mine.copy()
        for w in range(p):
            if w != rank:
                out[seg[w]:seg[w + 1]] = input_of(w)[seg[w]:seg[w + 1]]
    elif op == "broadcast":
        out = np.array(input_of(0), copy=True)
    elif op == "all_to_all":
        out, k = mine.copy(), schedule.nbytes // p // isz
        for w in range(p):
            if w != rank:
                out[seg[w]:seg[w] + k] = input_of(w)[seg[rank]:seg[rank] + k]
    elif op == "sendrecv":
        out = mine.copy() if rank == 0 else np.array(input_of(rank - 1), copy=True)
    else:
        raise AssertionError(f"no contract for op {op!r}")
    return out, defined


def allreduce_schedule(algo: str, p: int, nbytes: int, align=None, **kw) -> Schedule:
    """Shorthand for ``build("allreduce", algo, ...)`` (what backends/torchdist calls)."""
    return build("allreduce", algo, p, nbytes, align, **kw)
