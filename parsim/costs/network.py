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

import weakref

from parsim.caches import per_object
from dataclasses import dataclass

import networkx as nx
import numpy as np

from parsim.errors import ParsimError, closest, require
from parsim.schedules import collectives as S

OPS = S.OPS
ALGOS = ("ring", "tree", "hd", "rd", "hierarchical", "ps", "ps-central", "ps-sharded", "native")
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

    Shortest paths are found by breadth-first search from the source with Brandes' path
    counts σ; the search stops at the target's layer and is resumed (not restarted) for
    the next target of the same source, so all-pairs patterns cost one BFS per source."""

    def __init__(self, g: nx.Graph):
        # no reference to g here: _ROUTERS is keyed weakly by g, and a value that held its key
        # would keep every graph ever priced alive (the leak of a long-lived process)
        self.idx = {n: i for i, n in enumerate(g.nodes)}
        self.adj = [[] for _ in self.idx]
        bw, lat = [], []
        for u, v, d in g.edges(data=True):
            b = float(d.get("bandwidth", 0.0))
            require(b > 0 and np.isfinite(b), f"link {u} — {v}: bandwidth = {b} B/s, expected > 0")
            i, j, lt = self.idx[u], self.idx[v], float(d.get("latency", 0.0))
            self.adj[i].append((j, len(bw), len(bw) + 1, lt))      # (neighbour, id i->j, id j->i, latency)
            self.adj[j].append((i, len(bw) + 1, len(bw), lt))
            bw += [b, b]
            lat += [lt, lt]
        self.bw = np.array(bw)
        self.lat = np.array(lat)
        self.routes = {}
        self.searches = {}

    def _search(self, s, t):
        """Resume the BFS from s until t's layer is complete: (dist, sigma, latency)."""
        st = self.searches.get(s)
        if st is None:
            st = self.searches[s] = ({s: 0}, {s: 1}, {s: 0.0}, {s: []}, [s])
        dist, sigma, lat, preds, frontier = st
        adj = self.adj
        while t not in dist:
            require(frontier, f"no path from {self.g_name(s)} to {self.g_name(t)} in the cluster graph")
            d = dist[frontier[0]] + 1
            nxt = []
            for u in frontier:
                su, lu = sigma[u], lat[u]
                for v, e_uv, _, le in adj[u]:
                    dv = dist.get(v)
                    if dv is None:
                        dist[v], sigma[v], lat[v], preds[v] = d, su, lu + le, [(u, e_uv)]
                        nxt.append(v)
                    elif dv == d:
                        sigma[v] += su
                        preds[v].append((u, e_uv))
                        if lu + le > lat[v]:
                            lat[v] = lu + le
            frontier[:] = nxt
        return sigma, lat, preds

    def g_name(self, i):
        return list(self.idx)[i]

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
        sigma, lat, preds = self._search(s, t)
        # backward over the shortest-path DAG: flow through (u -> v) = flow(v)·σ(u)/σ(v)
        flow = {t: 1.0}
        eids, fr = [], []
        layer = [t]
        while layer[0] != s:
            prev = {}
            for v in layer:
                fv_sv = flow[v] / sigma[v]
                for u, e_uv in preds[v]:
                    share = fv_sv * sigma[u]
                    eids.append(e_uv)
                    fr.append(share)
                    prev[u] = prev.get(u, 0.0) + share
            flow = prev
            layer = list(prev)
        r = self.routes[key] = (np.array(eids, dtype=np.int64), np.array(fr), float(lat[t]))
        return r


_ROUTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def router(g: nx.Graph) -> _Router:
    r = _ROUTERS.get(g)
    if r is None:
        r = _ROUTERS[g] = _Router(g)
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
    rt = router(g)
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
    if algo == "ps-sharded":
        k = len(getattr(cluster, "servers", ()))
        require(k > 0, f"ps-sharded needs dedicated server hosts but cluster {cluster.name} has none "
                       "(use ps for servers co-located on the workers, or a star cluster such as ps-star)")
        kw["servers"] = k
    return algo, kw, ranks


def _ref_bytes(p, servers=1):
    """A buffer every split of these algorithms divides exactly (so the price is exactly affine)."""
    q = 1 << max(0, (p - 1).bit_length())
    return 2 ** 10 * p * q * max(1, servers) * 16


def _coeffs_of(cluster, op, a, kw, ranks, executor="explicit"):
    p = len(ranks)
    if a in ("tree",) or (op == "broadcast" and a in ("tree", "ring")):
        parts = 2 if op == "allreduce" else 1
        s = S.TREE_CHUNK_BYTES
        one = S.build(op, a, p, parts * s, 16, chunks=1).with_ranks(ranks)
        pr1 = price_schedule(cluster, one, executor=executor)
        alpha = pr1.alpha_s + pr1.overhead_s
        h = one.meta.get("height", 0)
        c1 = max(1, (2 if op == "allreduce" else 1) * h)   # first chunk count with a steady-state round
        t = [price_schedule(cluster, S.build(op, a, p, parts * s * c, 16, chunks=c).with_ranks(ranks)).bandwidth_s
             for c in (c1, c1 + 1)]
        return alpha, (t[1] - t[0]) / (parts * s)
    n = _ref_bytes(p, kw.get("servers", 1))
    pr = price_schedule(cluster, S.build(op, a, p, n, 16, **kw).with_ranks(ranks), executor=executor)
    return pr.alpha_s + pr.overhead_s, pr.bandwidth_s / n


GRAPH_MAX_RANKS = 64   # larger groups are priced by the closed forms below (speed: O(p²) routes)


def _pair(cluster, a, b):
    """(bandwidth B/s, latency s) of the route between ranks a and b: the ECMP split's
    narrowest link share, and the path latency."""
    rt = router(cluster.graph)
    eids, fr, lat = rt.route(cluster.devices[a], cluster.devices[b])
    return (float(np.min(rt.bw[eids] / fr)) if len(eids) else float("inf")), lat


def _closed_form_coeffs(cluster, op, algo, ranks):
    """α-β closed forms for groups of more than GRAPH_MAX_RANKS ranks, on link figures read off
    the graph: B_i/α_i between two ranks of one node, B_e/α_e between ranks of two nodes; g ranks
    per node, N nodes. Ring 2(p−1)(α + n/(p·B)) (Patarasuk & Yuan 2009); multi-channel ring with
    one NIC per channel: per-byte max(1/B_i, 1/(g·B_e)); hierarchical: intra reduce-scatter,
    inter all-reduce of n/g per NIC, intra all-gather; halving-doubling 2·log2(p)·α +
    2(p−1)/p·n/B (Thakur et al. 2005); tree 2·log2(p)·α + 2n/B; co-located PS (BytePS)
    2α + 2(p−1)/p·n/B; central PS 2α + 2(p−1)·n/B (the server's link carries every push and pull)."""
    import math
    p = len(ranks)
    by_node = {}
    for r in ranks:
        by_node.setdefault(cluster.node_of(r), []).append(r)
    g, N = max(len(v) for v in by_node.values()), len(by_node)
    same = next((v for v in by_node.values() if len(v) > 1), None)
    B_i, a_i = _pair(cluster, same[0], same[1]) if same else (float("inf"), 0.0)
    nodes = list(by_node.values())
    B_e, a_e = _pair(cluster, nodes[0][0], nodes[1][0]) if N > 1 else (B_i, a_i)
    B, a = min(B_i, B_e), max(a_i, a_e)
    lg = math.ceil(math.log2(p))
    chan = max(1 / B_i, 1 / (g * B_e)) if N > 1 and g > 1 else 1 / B
    gpu = cluster.device.kind == "gpu"
    if op == "sendrecv":
        bw, lat = _pair(cluster, ranks[0], ranks[1])
        return lat, 1 / bw
    if op in ("reduce_scatter", "all_gather"):
        return (p - 1) * a, (p - 1) / p * (chan if gpu else 1 / B)
    if op == "broadcast":
        return lg * a, 1 / B
    if op == "all_to_all":
        return (p - 1) * a, (p - 1) / p / B
    if algo == "native":
        if not gpu:
            algo = "ring"
        else:
            lines = [(2 * (p - 1) * a, 2 * (p - 1) / p * chan), (2 * lg * a, 2 / B)]
            return min(lines, key=lambda ab: ab[0] + ab[1] * NATIVE_REF_BYTES)
    if algo == "hierarchical" and g > 1 and N > 1:
        return (2 * (g - 1) * a_i + 2 * (N - 1) * a_e,
                2 * (g - 1) / g / B_i + 2 * (N - 1) / N / (g * B_e))
    if algo == "tree":
        return 2 * lg * a, 2 / B
    if algo == "hd":
        return 2 * lg * a, 2 * (p - 1) / p / B
    if algo in ("ps", "ps-colocated"):
        return 2 * a, 2 * (p - 1) / p / B
    if algo == "ps-central":
        return 2 * a, 2 * (p - 1) / B
    return 2 * (p - 1) * a, 2 * (p - 1) / p / B          # ring, and anything else


@per_object()   # bounded: at most CLUSTERS_KEPT clusters' coefficients (parsim/caches.py)
def _coeffs_cached(cluster, op, algo, ranks, executor="explicit"):
    p = len(ranks)
    if p <= 1:
        return 0.0, 0.0
    if p > GRAPH_MAX_RANKS:
        return _closed_form_coeffs(cluster, op, algo, ranks)
    # the library's own collective pays the native per-step overhead, whatever schedule prices it
    executor = "native" if algo == "native" else executor
    a, kw, ranks = _resolve(cluster, op, algo, ranks)
    if a == "native":
        if cluster.device.kind != "gpu" or p == 2:
            return _coeffs_cached(cluster, op, "ring", ranks, executor)
        lines = [_coeffs_cached(cluster, op, x, ranks, executor) for x in ("ring-channels", "tree")]
        return min(lines, key=lambda ab: ab[0] + ab[1] * NATIVE_REF_BYTES)
    return _coeffs_of(cluster, op, a, kw, ranks, executor)


def collective_coeffs(cluster, op: str, algo: str, ranks) -> tuple[float, float]:
    """(alpha_s, s_per_byte) of one collective over global `ranks`: time = alpha + s_per_byte·nbytes.
    Cached per (cluster, op, algo, ranks)."""
    return _coeffs_cached(cluster, op, algo, tuple(int(r) for r in ranks))


def collective_time_s(cluster, op: str, algo: str, ranks, nbytes: float) -> float:
    """Seconds for one collective of a per-rank buffer of `nbytes` over global `ranks`."""
    ranks = tuple(int(r) for r in ranks)
    if algo == "native" and op == "allreduce" and len(ranks) > 2 and cluster.device.kind == "gpu":
        return min(collective_time_s(cluster, op, x, ranks, nbytes) for x in ("ring-channels", "tree"))
    a, b = collective_coeffs(cluster, op, algo, ranks)
    return a + b * float(nbytes)


def busbw_factor(op: str, p: int) -> float:
    """nccl-tests PERFORMANCE.md: busbw = algbw · factor (2(p-1)/p all-reduce, (p-1)/p
    reduce-scatter/all-gather/all-to-all, 1 broadcast and send/recv)."""
    if op == "allreduce":
        return 2 * (p - 1) / p
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (p - 1) / p
    return 1.0
