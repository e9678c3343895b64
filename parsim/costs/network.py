"""Communication pricing: collective schedules played on the cluster graph.

Model (all in bytes, seconds, bytes/s):

* **Routing.** Each transfer follows the shortest paths (hop count) between its ranks'
  graph nodes; where several shortest paths tie it is split over them equally at every
  branching (ECMP): edge share = σ_s(u)·σ_t(v)/σ_s(t) (Brandes' path counting). Routes are
  cached per graph and node pair (treat a graph as immutable once priced).
* **Sharing.** Links are full duplex: each direction of an edge carries ``bandwidth``. The
  transfers of one step share every link direction they cross; a link direction drains its
  load at its bandwidth, so the step's serialisation time is the largest
  load/bandwidth over link directions (equal flows get bandwidth/flows each). This is the
  bottleneck-link bound of fluid max-min sharing: exact when the step's flows are
  symmetric (every collective here), a lower bound when flows with different bottlenecks mix.
* **Latency.** A transfer pays the sum of the edge latencies along its path (per hop).
* **A step** costs  α_step + β_step, with α_step = its largest path latency and β_step =
  its bandwidth time (above) — the Hockney α-β split taken per step. This is an upper
  bound of max(latency + serialisation) over transfers, equal for the symmetric steps of
  these algorithms, and it makes a schedule's price exactly affine in the buffer size, so
  ``collective_coeffs`` is exact (pricing at one size gives both coefficients).
* **Software overhead.** Each step with live transfers pays host software time (LogP's o: on
  the critical path between dependent steps; it is part of α). A rank active in the step (it
  sends or receives in it; a rank blocked in a wait uses no CPU) spends
  c_r = o_step + o_msg · m_r, m_r = the messages it posts in the step (its sends plus its
  receives): ``DeviceProfile.executor_step_overhead_s`` + ``executor_message_overhead_s`` for
  our isend/irecv executor, ``native_step_overhead_s`` (no per-message part) when the library
  runs its own collective (``algo="native"``). Calibrated on CPUs on loopback (gloo + Python,
  ``parsim.calibrate``); 0 on GPUs. It is CPU time, so a step lasts the longer of the slowest
  rank's c_r and the active ranks' total on one CPU over its ``cores`` (work over span, Brent's
  bound): max(max_r c_r, max_CPU Σ_{r on it} c_r / cores) — equal ranks give
  c · max(1, ranks on the CPU / cores). Ranks on one CPU = on the same host (``node``) of the
  graph, or all of them with ``one_cpu=True`` (an emulated cluster: its hosts are namespaces
  of one machine). A co-located parameter server (p−1 sends and p−1 receives per rank) thus
  pays more per step than a ring (one of each); a central server's workers post one message.
* **Reduction work** is priced on the receiving device: 3 bytes of memory traffic per
  reduced byte (read both operands, write the sum) at ``memory_bandwidth · memory_eff``
  (large-kernel efficiency). GPUs reduce inside the copy kernel (NCCL), so the reduction
  overlaps the transfer (max); CPU ranks (gloo) reduce after the data lands (sum).
* **Pipelined schedules** (tree, chained broadcast) overlap their chunks round by round;
  their price depends on the chunk count. Coefficients use NCCL's 512 KiB chunk: α is the
  one-chunk (unpipelined) latency, β the per-byte bandwidth time of one steady-state round
  (chunks stream back to back, NCCL keeps 8 in flight, so latency is paid once per path,
  not per chunk) — ``T(n) = α + β·n``, the form NCCL's own tuning model uses; it is
  optimistic by the pipeline fill (≈ 2H chunk times) for mid-size messages.

Entry points (the core model calls the first two, once per distinct group, cached):
  ``collective_coeffs(cluster, op, algo, ranks) -> (alpha_s, s_per_byte)``
  ``collective_time_s(cluster, op, algo, ranks, nbytes) -> seconds``
  ``price_schedule(cluster_or_graph, schedule, nodes=None, executor="explicit") -> Price``
``nbytes`` is the per-rank buffer (nccl-tests convention: the all-reduce input).

Algorithm names: those of ``parsim.schedules.collectives`` plus ``native`` — what the
library would run: for all-reduce on GPUs NCCL's choice between its ring and its tree
(``collective_time_s`` takes the faster at each size; ``collective_coeffs`` returns the
line of the one faster at 64 MiB, the gradient-bucket regime). NCCL's ring is
``ring-channels``: one ring per GPU of a node, each entering every node at a different
GPU and leaving through a different NIC, on 1/L of the buffer (so a multi-node ring
uses every NIC); ``ring`` is the single textbook ring in rank order (what an explicit
send/recv ring runs). gloo (CPU devices) runs a single ring. Other ops: NCCL runs reduce-scatter and all-gather as (multi-channel) rings and
broadcast as a chained ring. An
algorithm an op does not have (e.g. ``tree`` for reduce_scatter, ``hd`` for a
non-power-of-two group) falls back to the op's native algorithm, as the library would;
``hierarchical`` falls back to ring when the group's nodes hold unequal rank counts.
``ps-central`` uses the cluster's first dedicated server host if it has one, else rank 0;
``ps-sharded`` needs dedicated server hosts (``Cluster.servers``).
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import networkx as nx
import numpy as np

from parsim.caches import per_object
from parsim.errors import ParsimError, closest, require
from parsim.schedules import collectives as S

OPS = S.OPS
# Parameter-server variants, named for what they run (BytePS, OSDI'20): ps = sharded servers
# co-located on the workers; ps-central = one server (dedicated host when the cluster has one);
# ps-sharded = k dedicated servers, push then pull; ps-pipelined = k dedicated servers, BytePS's
# partitions pipelined so pushes and pulls overlap.
ALGOS = ("ring", "tree", "hd", "rd", "hierarchical", "ps", "ps-central", "ps-sharded", "ps-pipelined", "native")
NATIVE = {"reduce_scatter": "ring", "all_gather": "ring", "broadcast": "ring", "all_to_all": "pairwise",
          "sendrecv": "direct"}
NATIVE_REF_BYTES = 64 * 2 ** 20
REDUCE_TRAFFIC = 3.0   # bytes of memory traffic per reduced byte


@dataclass(frozen=True)
class Price:
    alpha_s: float          # latency part (sum over steps of the largest path latency)
    bandwidth_s: float      # serialisation + reduction part at this schedule's size
    steps: int
    overhead_s: float = 0.0  # host software time (sum over steps; see Software overhead above)

    @property
    def time_s(self) -> float:
        return self.alpha_s + self.overhead_s + self.bandwidth_s


# ----------------------------------------------------------------------------- routing

class _Router:
    """Directed-edge arrays and ECMP routes of one graph.

    Shortest paths are found by a bidirectional breadth-first search: a BFS ball around each
    endpoint (distances, Brandes' path counts σ, predecessors), grown one layer at a time,
    always on the side whose next layer is cheaper, until the balls meet. Balls are kept per
    graph node and resumed (not restarted) for the next pair that needs them, so a route
    costs the few layers around its two endpoints: on a cluster graph the search never walks
    a fabric switch's thousands of ports unless a route ends next to it (the single-source
    search this replaces swept the whole 16384-GPU graph from every source: issue 10/12).

    The route does not depend on where the balls meet: every shortest s-t path crosses the
    meeting layer M exactly once, so σ_st = Σ_{m∈M} σ_s(m)·σ_t(m), each edge u->v of the
    shortest-path DAG carries σ_s(u)·σ_t(v)/σ_st (integer path counts, one rounding), and the
    path latency is the largest sum along the DAG taken from s forward — the same numbers a
    single search from s gives (tests/unit/test_network.py checks against one)."""

    def __init__(self, g: nx.Graph, p2p: bool = False, like: "_Router | None" = None):
        # no reference to g here: _ROUTERS is keyed weakly by g, and a value that held its key
        # would keep every graph ever priced alive (the leak of a long-lived process).
        # `like`: a router of the same graph (other bandwidths): its node index, adjacency,
        # latencies, BFS balls and routes are shared (they depend on the graph's shape alone)
        if like is None:
            self.idx = {n: i for i, n in enumerate(g.nodes)}
            self.names = list(self.idx)
            self.adj = [[] for _ in self.idx]
        bw, lat = [], []
        for u, v, d in g.edges(data=True):
            b = float(d.get("bandwidth", 0.0))
            if p2p and d.get("p2p_efficiency") is not None:     # point-to-point reaches its own share
                b = float(d.get("rate", b)) * float(d["p2p_efficiency"])
            require(b > 0 and np.isfinite(b), f"link {u} — {v}: bandwidth = {b} B/s, expected > 0")
            if like is None:
                i, j, lt = self.idx[u], self.idx[v], float(d.get("latency", 0.0))
                self.adj[i].append((j, len(bw), len(bw) + 1, lt))      # (neighbour, id i->j, id j->i, latency)
                self.adj[j].append((i, len(bw) + 1, len(bw), lt))
                lat += [lt, lt]
            bw += [b, b]
        self.bw = np.array(bw)
        if like is None:
            self.lat = np.array(lat)
            self.balls = {}
        else:
            self.idx, self.names, self.adj, self.lat, self.balls = like.idx, like.names, like.adj, like.lat, like.balls
        self.routes = {} if like is None else like.routes     # edge ids and shares: the shape's too

    def _ball(self, s):
        """The BFS ball around s: [dist, sigma, preds, frontier (its outermost layer), radius,
        lat]; preds[v] = [(u, id of u->v, its latency)] for u one layer nearer s; lat[v] = the largest
        latency sum of a shortest s-v path, summed from s."""
        b = self.balls.get(s)
        if b is None:
            b = self.balls[s] = [{s: 0}, {s: 1}, {s: []}, [s], 0, {s: 0.0}]
        return b

    def _grow(self, b):
        """Add the next layer to ball b (False when it already holds its whole component)."""
        dist, sigma, preds, frontier, r, lat = b
        if not frontier:
            return False
        d, adj, nxt = r + 1, self.adj, []
        for u in frontier:
            su, lu = sigma[u], lat[u]
            for v, e_uv, _, le in adj[u]:
                dv = dist.get(v)
                if dv is None:
                    dist[v], sigma[v], preds[v], lat[v] = d, su, [(u, e_uv, le)], lu + le
                    nxt.append(v)
                elif dv == d:
                    sigma[v] += su
                    preds[v].append((u, e_uv, le))
                    if lu + le > lat[v]:
                        lat[v] = lu + le
        b[3], b[4] = nxt, d
        return True

    def _cost(self, b):
        adj = self.adj
        return sum(len(adj[u]) for u in b[3])

    def _meet(self, s, t):
        """(ball of s, ball of t, D = dist(s, t), k, M): M = the nodes at distance k from s and
        D - k from t, with both distances known in the balls (a cut every shortest path crosses once)."""
        bs, bt = self._ball(s), self._ball(t)
        while True:
            D = bs[0].get(t)
            if D is not None:                    # t is inside the ball of s
                return bs, bt, D, D, [t]
            D = bt[0].get(s)
            if D is not None:                    # s is inside the ball of t
                return bs, bt, D, 0, [s]
            # the ends lie beyond both radii; D <= r_s + r_t iff the outer layer of one ball holds
            # a node within the other's radius (a shortest path longer than r crosses layer r once)
            b1, b2 = (bs, bt) if len(bs[3]) <= len(bt[3]) else (bt, bs)
            d2, r1, best, M = b2[0], b1[4], None, []
            for v in b1[3]:
                dv = d2.get(v)
                if dv is not None:
                    if best is None or dv < best:
                        best, M = dv, [v]
                    elif dv == best:
                        M.append(v)
            if M:
                D = r1 + best
                return bs, bt, D, (r1 if b1 is bs else D - r1), M
            grown = (self._grow(bs) if self._cost(bs) <= self._cost(bt) else self._grow(bt)) \
                or self._grow(bs) or self._grow(bt)
            require(grown, f"no path from {self.names[s]} to {self.names[t]} in the cluster graph")

    def route(self, a, b):
        """(directed edge ids, fractions, path latency) of the ECMP split of node a -> node b."""
        key = (a, b)
        r = self.routes.get(key)
        if r is not None:
            return r
        s, t = self.idx[a], self.idx[b]
        if s == t:
            r = self.routes[key] = (np.zeros(0, dtype=np.int64), np.zeros(0), 0.0)
            return r
        bs, bt, D, k, M = self._meet(s, t)
        sig_s, pre_s, lat_s, sig_t, pre_t = bs[1], bs[2], bs[5], bt[1], bt[2]
        sig_st = sum(sig_s[m] * sig_t[m] for m in M)     # every shortest path crosses M once
        eids, fr = [], []
        # s side, from M back to s: σ_t(u) = Σ σ_t over u's successors in the DAG; u->v carries
        # σ_s(u)·σ_t(v)/σ_st (integer counts, one rounding)
        cnt = {m: sig_t[m] for m in M}
        layer = cnt
        for _ in range(k):
            prev = {}
            for v, cv in layer.items():
                for u, e, _ in pre_s[v]:
                    prev[u] = prev.get(u, 0) + cv
                    eids.append(e)
                    fr.append(sig_s[u] * cv / sig_st)
            layer = prev
        # t side, from M on to t: σ_s(u) = Σ σ_s over u's predecessors; the path latency is the
        # s ball's (summed from s) carried forward edge by edge, as one search from s would
        lat = {m: lat_s[m] for m in M}
        layer = {m: sig_s[m] for m in M}
        for _ in range(D - k):
            nxt = {}
            for v, cv in layer.items():
                lv = lat[v]
                for u, e, le in pre_t[v]:        # u one step nearer t; e = u->v, traffic runs v->u
                    nxt[u] = nxt.get(u, 0) + cv
                    eids.append(e ^ 1)           # the two directions of an edge are ids 2i, 2i+1
                    fr.append(cv * sig_t[u] / sig_st)
                    x = lv + le
                    if x > lat.get(u, -1.0):
                        lat[u] = x
            layer = nxt
        r = self.routes[key] = (np.array(eids, dtype=np.int64), np.array(fr), lat[t])
        return r


_ROUTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def router(g: nx.Graph, p2p: bool = False) -> _Router:
    """Routes of graph g (cached per graph). `p2p`: links at their point-to-point bandwidth
    (edge attribute p2p_efficiency of the line rate, where the cluster gives one: a lone
    send/recv reaches less of a link than a collective's many channels; see clusters.yaml)."""
    rs = _ROUTERS.get(g)
    if rs is None:
        rs = _ROUTERS[g] = {}
    r = rs.get(p2p)
    if r is None:
        r = rs[p2p] = _Router(g, p2p, like=next(iter(rs.values()), None))
    return r


def _reduce_coeff(g, node, cache):
    """(s per reduced byte, overlapped with transfer?) of the device at `node`."""
    prof = g.nodes[node].get("profile")
    if prof not in cache:
        if prof is None:
            cache[prof] = (0.0, True)
        else:
            from parsim.hardware import get_device
            dev = get_device(prof)
            eff = float(dev.memory_eff(1e6))
            cache[prof] = (REDUCE_TRAFFIC / (dev.memory_bandwidth_Bps * eff), dev.kind == "gpu")
    return cache[prof]


EXECUTORS = ("explicit", "native")


def _step_overhead(g, node, executor, cache):
    """(seconds of host software time per schedule step, per message posted in it, cores) of
    the device at `node`."""
    prof = g.nodes[node].get("profile")
    if prof not in cache:
        if prof is None:
            cache[prof] = (0.0, 0.0, 0)
        else:
            from parsim.hardware import get_device
            dev = get_device(prof)
            cache[prof] = ((dev.native_step_overhead_s, 0.0, dev.cores) if executor == "native" else
                           (dev.executor_step_overhead_s, dev.executor_message_overhead_s, dev.cores))
    return cache[prof]


def cpu_ids(g, nodes, one_cpu: bool = False) -> np.ndarray:
    """Per rank: an integer naming the CPU it runs on (its host, or 0 for all with one_cpu)."""
    if one_cpu:
        return np.zeros(len(nodes), dtype=np.int64)
    ids = {}
    return np.array([ids.setdefault(g.nodes[x].get("node", x), len(ids)) for x in nodes], dtype=np.int64)


def _overhead_of_step(ovh, per_msg, cores, cpu, src, dst) -> float:
    """Software time of a step whose live transfers go src[i] -> dst[i]: each active rank r
    spends c_r = ovh_r + per_msg_r · (messages it posts: sends + receives); the step lasts
    max(max_r c_r, max over CPUs of Σ c_r on it / its cores) (ranks of cores 0: no sharing)."""
    n = len(ovh)
    msgs = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
    act = msgs > 0
    c = np.where(act, ovh + per_msg * msgs, 0.0)
    span = float(c.max()) if n else 0.0
    shared = act & (cores > 0)
    if shared.any():
        work = np.bincount(cpu[shared], weights=c[shared] / cores[shared])
        span = max(span, float(work.max()))
    return span


# ----------------------------------------------------------------------------- pricing

def _graph(cluster):
    return cluster if isinstance(cluster, nx.Graph) else cluster.graph


def schedule_nodes(cluster, schedule: S.Schedule, ranks=None) -> list:
    """Graph node of every schedule rank: workers on their devices, server ranks on the
    cluster's dedicated servers."""
    ranks = schedule.ranks if ranks is None else ranks
    ranks = range(schedule.p) if ranks is None else ranks
    nodes = [cluster.devices[r] for r in ranks]
    servers = tuple(getattr(cluster, "servers", ()))
    require(schedule.servers <= len(servers),
            f"{schedule.algo} needs {schedule.servers} dedicated server host(s) but cluster {cluster.name} has "
            f"{len(servers)} (build one with the star builder, e.g. preset ps-star)")
    return nodes + list(servers[:schedule.servers])


def price_schedule(cluster, schedule: S.Schedule, nodes=None, executor: str = "explicit",
                   one_cpu: bool = False) -> Price:
    """Price `schedule` on a Cluster (ranks via ``schedule.ranks``/devices) or on a bare graph
    with `nodes[i]` = graph node of schedule rank i. `executor`: "explicit" (our send/recv
    executor runs the steps) or "native" (the library's own collective): which per-step
    software overhead the devices pay; `one_cpu`: every rank runs on one machine's CPU
    (default: ranks share the CPU of their host in the graph)."""
    require(executor in EXECUTORS, f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    g = _graph(cluster)
    if nodes is None:
        require(not isinstance(cluster, nx.Graph), "price_schedule on a bare graph needs nodes= (one per rank)")
        nodes = schedule_nodes(cluster, schedule)
    require(len(nodes) >= schedule.nranks, f"schedule has {schedule.nranks} ranks but {len(nodes)} nodes were given")
    rt = router(g, p2p=schedule.op == "sendrecv")
    red_cache = {}
    rc = np.array([_reduce_coeff(g, n, red_cache) for n in nodes[:schedule.nranks]], dtype=object)
    red_s = np.array([c[0] for c in rc], dtype=float)
    red_ov = np.array([c[1] for c in rc], dtype=bool)
    ov_cache = {}
    oc = np.array([_step_overhead(g, n, executor, ov_cache) for n in nodes[:schedule.nranks]], dtype=float)
    sw = (oc[:, 0], oc[:, 1], oc[:, 2], cpu_ids(g, nodes[:schedule.nranks], one_cpu)) \
        if oc[:, :2].any() else None
    patterns, costs = {}, {}
    alpha = bw_total = over = 0.0
    for st in schedule.steps:
        pk = (id(st.src), id(st.dst))
        pat = patterns.get(pk)
        if pat is None:
            ck = (st.src.tobytes(), st.dst.tobytes())
            pat = patterns.get(ck)
            if pat is None:
                pat = patterns[ck] = _pattern(rt, nodes, st.src, st.dst)
            patterns[pk] = pat
        ck = (id(pat), id(st.nbytes), id(st.reduce))
        c = costs.get(ck)
        if c is None:
            c = costs[ck] = _step_cost(rt, pat, st, red_s, red_ov, schedule.nranks, sw)
        alpha += c[0]
        bw_total += c[1]
        over += c[2]
    return Price(alpha, bw_total, len(schedule.steps), over)


def _pattern(rt: _Router, nodes, src, dst):
    """Routes of a step's (src, dst) pairs, flattened: edge ids, fractions, transfer index, latency."""
    route = rt.route
    rs = [route(nodes[a], nodes[b]) for a, b in zip(src.tolist(), dst.tolist())]
    if not rs:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)
    lens = [len(r[0]) for r in rs]
    return (np.concatenate([r[0] for r in rs]), np.concatenate([r[1] for r in rs]),
            np.repeat(np.arange(len(rs)), lens), np.array([r[2] for r in rs]))


def _step_cost(rt, pat, st, red_s, red_ov, nranks, sw):
    """(latency, bandwidth + reduction, software overhead) of one step."""
    eids, frs, tix, lats = pat
    nb = st.nbytes.astype(float)
    live = nb > 0
    if not live.any():
        return 0.0, 0.0, 0.0
    a = float(lats[live].max())
    o = _overhead_of_step(*sw, st.src[live], st.dst[live]) if sw is not None else 0.0
    load = np.bincount(eids, weights=frs * nb[tix], minlength=len(rt.bw)) if len(eids) else np.zeros(1)
    link = float((load / rt.bw).max()) if len(eids) else 0.0
    red = np.bincount(st.dst[st.reduce], weights=nb[st.reduce], minlength=nranks) * red_s
    over = float(red[red_ov].max()) if red_ov.any() else 0.0
    after = float(red[~red_ov].max()) if (~red_ov).any() else 0.0
    return a, max(link, over) + after, o


# ----------------------------------------------------------------------------- entry points

def _pow2(p):
    return p & (p - 1) == 0


def _resolve(cluster, op, algo, ranks):
    """(schedule algo, builder kwargs, ranks in schedule order) for op/algo on this group."""
    if op not in OPS:
        raise ParsimError(f"unknown collective {op!r}: expected one of {', '.join(OPS)}{closest(op, OPS)}")
    if not (algo in ALGOS or algo in S.BUILDERS[op] or algo == "ring-channels"):
        raise ParsimError(f"unknown algorithm {algo!r}: expected one of {', '.join(ALGOS)}{closest(algo, ALGOS)}")
    p = len(ranks)
    kw = {}
    if op in ("reduce_scatter", "all_gather") and (algo == "ring-channels" or (
            algo == "native" and cluster.device.kind == "gpu")):
        algo = "ring-channels"                    # NCCL: one ring per channel, as for all-reduce
    elif op != "allreduce":
        a = algo if algo in S.BUILDERS[op] else NATIVE[op]
        if (op, a) in (("reduce_scatter", "hd"), ("all_gather", "rd")) and not _pow2(p):
            a = NATIVE[op]
        return a, kw, ranks
    if algo == "native":
        return "native", kw, ranks
    if algo in ("hierarchical", "ring-channels"):
        by_node = {}
        for r in ranks:
            by_node.setdefault(cluster.node_of(r), []).append(r)
        counts = {len(v) for v in by_node.values()}
        if len(counts) != 1 or (op != "allreduce" and algo == "hierarchical"):
            return "ring", kw, ranks
        L, N = counts.pop(), len(by_node)
        node_major = tuple(r for n in sorted(by_node) for r in by_node[n])
        if algo == "ring-channels":
            if N == 1 or L == 1:
                return "ring", kw, ranks
            # channel j enters every node at local GPU j and leaves through GPU j-1 (its NIC)
            kw["orders"] = [[node * L + (j + i) % L for node in range(N) for i in range(L)] for j in range(L)]
            if op != "allreduce" and algo == "ring-channels":
                return "ring", kw, node_major
            return "ring", kw, node_major
        kw["local_size"] = L
        return "hierarchical", kw, node_major
    if algo == "ps-central":
        kw["dedicated"] = bool(getattr(cluster, "servers", ()))
    if algo in ("ps-sharded", "ps-pipelined"):
        k = len(getattr(cluster, "servers", ()))
        require(k > 0, f"{algo} needs dedicated server hosts but cluster {cluster.name} has none "
                       "(use ps for servers co-located on the workers, or a star cluster such as ps-star)")
        kw["servers"] = k
    return algo, kw, ranks


def _ref_bytes(p, servers=1):
    """A buffer every split of these algorithms divides exactly (so the price is exactly affine)."""
    q = 1 << max(0, (p - 1).bit_length())
    return 2 ** 10 * p * q * max(1, servers) * 16


def _bind(sched: S.Schedule, groups) -> S.Schedule:
    """`sched` bound to global ranks: to groups[0] alone, or run by every group of `groups` at
    once (same shape; group k's local rank i is global rank groups[k][i]): one schedule whose
    step j holds every group's step j, so concurrent groups share the links they cross."""
    if len(groups) == 1:
        return sched.with_ranks(groups[0])
    assert sched.servers == 0, "concurrent groups with dedicated servers are not priced together"
    G, p = len(groups), sched.p
    shift = (np.arange(G, dtype=np.int64) * p)[:, None]
    memo = {}

    def rep(a, shifted):
        k = (id(a), shifted)
        if k not in memo:
            memo[k] = ((a[None, :] + shift) if shifted else np.broadcast_to(a, (G, len(a)))).ravel()
        return memo[k]
    steps = tuple(S.Step(rep(st.src, True), rep(st.dst, True), rep(st.offset, False), rep(st.nbytes, False),
                         rep(st.reduce, False), rep(st.dst_offset, False)) for st in sched.steps)
    return S.Schedule(sched.op, sched.algo, G * p, sched.nbytes, sched.align, steps, 0,
                      tuple(r for g in groups for r in g), dict(sched.meta))


def _coeffs_of(cluster, op, a, kw, groups, executor="explicit"):
    """(alpha_s, s_per_byte) of the played schedule `a` on `groups` (tuple of rank tuples: the
    group priced and the ones running at the same time)."""
    p = len(groups[0])
    if a in ("tree",) or (op == "broadcast" and a in ("tree", "ring")):
        parts = 2 if op == "allreduce" else 1
        s = S.TREE_CHUNK_BYTES
        one = S.build(op, a, p, parts * s, 16, chunks=1)
        pr1 = price_schedule(cluster, _bind(one, groups), executor=executor)
        alpha = pr1.alpha_s + pr1.overhead_s
        h = one.meta.get("height", 0)
        c1 = max(1, (2 if op == "allreduce" else 1) * h)   # first chunk count with a steady-state round
        t = [price_schedule(cluster, _bind(S.build(op, a, p, parts * s * c, 16, chunks=c), groups)).bandwidth_s
             for c in (c1, c1 + 1)]
        return alpha, (t[1] - t[0]) / (parts * s)
    if a == "ps-pipelined":
        # its step count grows with the size (C = n/(k·partition) rounds): the line through two
        # played sizes of 4 and 8 rounds is its large-size asymptote; collective_lines pairs it
        # with the one-round line (= ps-sharded) for sizes below k partitions.
        k, part = kw.get("servers", 1), S.PS_PARTITION_BYTES
        t = [price_schedule(cluster, _bind(S.build(op, a, p, k * c * part, 16, **kw), groups), executor=executor).time_s
             for c in (4, 8)]
        slope = (t[1] - t[0]) / (k * 4 * part)
        return t[0] - slope * k * 4 * part, slope
    n = _ref_bytes(p, kw.get("servers", 1))
    pr = price_schedule(cluster, _bind(S.build(op, a, p, n, 16, **kw), groups), executor=executor)
    return pr.alpha_s + pr.overhead_s, pr.bandwidth_s / n


GRAPH_MAX_RANKS = 64   # larger groups are priced by the closed forms below (speed: O(p²) routes)


def _pair(cluster, a, b, p2p=False):
    """(bandwidth B/s, latency s) of the route between ranks a and b: the ECMP split's
    narrowest link share, and the path latency (`p2p`: at the links' point-to-point share)."""
    rt = router(cluster.graph, p2p)
    eids, fr, lat = rt.route(cluster.devices[a], cluster.devices[b])
    return (float(np.min(rt.bw[eids] / fr)) if len(eids) else float("inf")), lat


def _node_groups(cluster, ranks):
    by_node = {}
    for r in ranks:
        by_node.setdefault(cluster.node_of(r), []).append(r)
    return list(by_node.values())


def _hd_steps(cluster, ranks):
    """(α, s/byte) of recursive halving (reduce-scatter) over the first q = 2^k ranks, exactly
    as the played schedule runs it: step j pairs i with i xor d, d = q/2, q/4, ..., 1, and moves
    n/2^j bytes over that pair's route (intra-node for small d, inter-node for large d); plus
    the non-power-of-two fold of the p - q extra ranks (whole buffer, Thakur et al. 2005 §4.4)."""
    import math
    p = len(ranks)
    q = 1 << (p.bit_length() - 1)
    alpha = beta = 0.0
    d, frac = q // 2, 0.5
    while d >= 1:
        bw, lat = _pair(cluster, ranks[0], ranks[d])
        alpha, beta = alpha + lat, beta + frac / bw
        d, frac = d // 2, frac / 2
    fold = (0.0, 0.0)
    if p > q:
        bw, lat = _pair(cluster, ranks[q], ranks[0])
        fold = (lat, 1 / bw)
    assert math.isfinite(beta)
    return alpha, beta, fold


@functools.lru_cache(maxsize=256)
def _tree_alpha(p: int, g: int, a_i: float, a_e: float) -> float:
    """Latency of a one-chunk double-binary-tree all-reduce over p node-major ranks, g per node,
    round by round as the played schedule runs it: the reduce's round k moves every edge whose
    child has height k, the broadcast's round d every edge to depth d (both trees at once);
    a round costs α_e if any of its edges joins two nodes, else α_i."""
    up, down = {}, {}
    for t in S.double_binary_trees(p):
        height, depth = S._levels(t)
        for v, par in enumerate(t):
            if par >= 0:
                lat = a_i if v // g == par // g else a_e
                up[height[v]] = max(up.get(height[v], 0.0), lat)
                down[depth[v]] = max(down.get(depth[v], 0.0), lat)
    return sum(up.values()) + sum(down.values())


def _anchor(ranks, pow2=False):
    """The largest prefix of `ranks` the graph pricing plays (<= GRAPH_MAX_RANKS), keeping whole
    nodes' worth of ranks (so it has the group's ranks-per-node), a power of two if asked."""
    k = GRAPH_MAX_RANKS
    if pow2:
        k = 1 << (k.bit_length() - 1)
    return tuple(ranks[:k])


def _closed_form_coeffs(cluster, op, algo, ranks):
    """α-β closed forms for groups of more than GRAPH_MAX_RANKS ranks, from the same link
    figures the played schedules use: B_i/α_i between two ranks of one node, B_e/α_e between
    ranks of two nodes (the route's narrowest share), g ranks per node, N nodes.

      ring (one ring)            2(p−1)·α + 2(p−1)/p·n/min(B_i, B_e)   (Patarasuk & Yuan 2009)
      ring-channels (NCCL)       per byte max(1/B_i, 1/(g·B_e)) in place of 1/B (one ring per NIC)
      hierarchical               intra reduce-scatter, inter all-reduce of n/g per NIC, intra all-gather
      hd / rd                    the played steps' own pairs: Σ_j α(d_j) + n/2^j / B(d_j) per
                                 direction, plus the fold of a non-power-of-two group (Thakur 2005)
      tree (double binary, NCCL) α of its rounds (intra or inter) + max((1 + c)/2·n/B_e, n/B_i),, c = the most
                                 inter-node children of a node in NCCL's btree over the N nodes
      ps (co-located, BytePS)    2α + 2·max((p−g)/p·n/B_e, (g−1)/p·n/B_i);  ps-central 2α + 2(p−1)·n/B
    reduce_scatter / all_gather take half of the matching all-reduce form. Tested against the
    played schedules (tests/unit/test_network_consistency.py): within 5% where both run."""
    import math
    p = len(ranks)
    nodes = _node_groups(cluster, ranks)
    g, N = max(len(v) for v in nodes), len(nodes)
    same = next((v for v in nodes if len(v) > 1), None)
    B_i, a_i = _pair(cluster, same[0], same[1]) if same else (float("inf"), 0.0)
    if N > 1:     # the nearest and the farthest node: the narrowest share and the longest path
        (b1, l1), (b2, l2) = _pair(cluster, nodes[0][0], nodes[1][0]), _pair(cluster, nodes[0][0], nodes[-1][0])
        B_e, a_e = min(b1, b2), max(l1, l2)
    else:
        B_e, a_e = B_i, a_i
    B, a = min(B_i, B_e), max(a_i, a_e)
    lg = math.ceil(math.log2(p))
    chan = max(1 / B_i, 1 / (g * B_e)) if N > 1 and g > 1 else 1 / B
    gpu = cluster.device.kind == "gpu"
    if op == "sendrecv":
        bw, lat = _pair(cluster, ranks[0], ranks[1], p2p=True)
        return lat, 1 / bw
    if op == "broadcast":
        return lg * a, 1 / B
    if op == "all_to_all":
        return (p - 1) * a, (p - 1) / p / B
    if algo == "native" and not gpu:
        algo = "ring"
    if op in ("reduce_scatter", "all_gather"):
        if algo in ("hd", "rd"):
            al, be, fold = _hd_steps(cluster, ranks)
            if fold[1] == 0.0:
                return al, be
        if algo in ("native", "ring-channels") and gpu:
            return (p - 1) * a, (p - 1) / p * chan
        return (p - 1) * a, (p - 1) / p / B
    if algo == "native":
        lines = [_closed_form_coeffs(cluster, op, x, ranks) for x in ("ring-channels", "tree")]
        return min(lines, key=lambda ab: ab[0] + ab[1] * NATIVE_REF_BYTES)
    if algo == "ring-channels":
        return 2 * (p - 1) * a, 2 * (p - 1) / p * chan
    if algo == "hierarchical" and g > 1 and N > 1:
        return (2 * (g - 1) * a_i + 2 * (N - 1) * a_e,
                2 * (g - 1) / g / B_i + 2 * (N - 1) / N / (g * B_e))
    if algo == "tree":
        # NCCL's double binary tree over node-major ranks: its inter-node edges join one GPU per
        # node (local rank 0 in one tree, the mirrored one in the other), whose NIC sends the
        # tree's half of the buffer up once and down once per inter-node child: (1 + c)/2 · n per
        # NIC, c = the most children a node has in the btree over N nodes; NVLink carries
        # ~n/2 each way per tree (in-node chain). α: 2·log2(p) steps.
        par = S.nccl_btree(N) if N > 1 else [-1]
        kids = max((par.count(v) for v in range(N)), default=0)
        inter = (1 + kids) / 2 / B_e if N > 1 else 0.0
        intra = 1 / B_i if g > 1 else 0.0
        return _tree_alpha(p, g, a_i, a_e), max(inter, intra)
    if algo == "hd":
        al, be, fold = _hd_steps(cluster, ranks)
        return 2 * (al + fold[0]), 2 * (be + fold[1])
    if algo in ("ps", "ps-colocated"):      # each rank's (p-1)/p·n: (g-1)/p over NVLink, (p-g)/p over its NIC
        return 2 * a, 2 * max((p - g) / p / B_e, (g - 1) / p / B_i)
    if algo == "ps-central":
        return 2 * a, 2 * (p - 1) / B
    return 2 * (p - 1) * a, 2 * (p - 1) / p / B          # ring, and anything else


@per_object()   # bounded: at most CLUSTERS_KEPT clusters' coefficients (parsim/caches.py)
def _coeffs_cached(cluster, op, algo, ranks, executor="explicit", others=()):
    p = len(ranks)
    if p <= 1:
        return 0.0, 0.0
    if p > GRAPH_MAX_RANKS and algo not in ("ps-sharded", "ps-pipelined"):   # PS: p·k transfers a step, played
        return _closed_form_coeffs(cluster, op, algo, ranks)
    # the library's own collective pays the native per-step overhead, whatever schedule prices it
    executor = "native" if algo == "native" else executor
    a, kw, ranks_ = _resolve(cluster, op, algo, ranks)
    if a == "native":
        if cluster.device.kind != "gpu" or p == 2:
            return _coeffs_cached(cluster, op, "ring", ranks, executor, others)
        lines = [_coeffs_cached(cluster, op, x, ranks, executor, others) for x in ("ring-channels", "tree")]
        return min(lines, key=lambda ab: ab[0] + ab[1] * NATIVE_REF_BYTES)
    if others and a in ("ps-sharded", "ps-pipelined", "ps-central") and kw.get("dedicated", a != "ps-central"):
        others = ()                        # dedicated servers: one group per server set
    groups = (ranks_,) + tuple(_resolve(cluster, op, algo, g)[2] for g in others)
    return _coeffs_of(cluster, op, a, kw, groups, executor)


def collective_coeffs(cluster, op: str, algo: str, ranks) -> tuple[float, float]:
    """(alpha_s, s_per_byte) of one collective over global `ranks`: time = alpha + s_per_byte·nbytes.
    Cached per (cluster, op, algo, ranks)."""
    return _coeffs_cached(cluster, op, algo, tuple(int(r) for r in ranks))


CONCURRENT_MAX_RANKS = 512   # concurrent groups are played together up to this many ranks in all


def collective_lines(cluster, op: str, algo: str, ranks, concurrent=()) -> tuple:
    """The (alpha_s, s_per_byte) lines whose minimum is the collective's time at any size: one
    line per algorithm, two for a GPU library's own all-reduce (its ring channels and its
    double binary tree; NCCL's tuner picks the faster per size). `collective` and `predict`
    both price through this, so they price the same thing.

    `concurrent`: the other groups (rank tuples of the same size) running the same collective
    at the same time — all data-parallel groups of a plan, one per tp x pp position: their
    schedules are played together on the graph, so they share the links they cross. Played
    together while the group is played (<= GRAPH_MAX_RANKS) and all groups hold at most
    CONCURRENT_MAX_RANKS ranks; beyond, the group alone (the closed forms do not see sharing)."""
    ranks = tuple(int(r) for r in ranks)
    others = tuple(tuple(int(r) for r in g) for g in concurrent)
    if others and (len(ranks) > GRAPH_MAX_RANKS or len(ranks) * (1 + len(others)) > CONCURRENT_MAX_RANKS):
        others = ()
    algos = ("ring-channels", "tree") if (algo == "native" and op == "allreduce" and len(ranks) > 2
                                          and cluster.device.kind == "gpu") else (algo,)
    if algo == "ps-pipelined":               # one round below k partitions, the pipelined asymptote above
        algos = ("ps-sharded", "ps-pipelined")
    return tuple(_coeffs_cached(cluster, op, x, ranks, "explicit", others) for x in algos)


SIZE_DEPENDENT = ("ps-pipelined",)   # schedules whose step count grows with the size


def collective_time_s(cluster, op: str, algo: str, ranks, nbytes: float) -> float:
    """Seconds for one collective of a per-rank buffer of `nbytes` over global `ranks`
    (the minimum over ``collective_lines``; a schedule whose step count depends on the size,
    ps-pipelined, is played at that size)."""
    ranks = tuple(int(r) for r in ranks)
    if algo in SIZE_DEPENDENT and op == "allreduce" and len(ranks) > 1:
        a, kw, ranks_ = _resolve(cluster, op, algo, ranks)
        return price_schedule(cluster, S.build(op, a, len(ranks_), int(nbytes), **kw).with_ranks(ranks_)).time_s
    return min(a + b * float(nbytes) for a, b in collective_lines(cluster, op, algo, ranks))


def busbw_factor(op: str, p: int) -> float:
    """nccl-tests PERFORMANCE.md: busbw = algbw · factor (2(p-1)/p all-reduce, (p-1)/p
    reduce-scatter/all-gather/all-to-all, 1 broadcast and send/recv)."""
    if op == "allreduce":
        return 2 * (p - 1) / p
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (p - 1) / p
    return 1.0


def bandwidths_Bps(op: str, p: int, nbytes: float, time_s: float) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s of `op` over p ranks (the workers; dedicated parameter servers are
    not ranks of the collective) with a per-rank buffer of `nbytes` bytes taking `time_s` seconds:
    algbw = nbytes / time_s, busbw = algbw · busbw_factor(op, p) (nccl-tests PERFORMANCE.md).
    The one place measured and predicted bandwidths are computed; inf for a zero time."""
    algbw = nbytes / time_s if time_s > 0 else float("inf")
    return algbw, algbw * busbw_factor(op, p)
