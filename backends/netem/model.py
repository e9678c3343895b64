"""Prediction for the emulated cluster: parsim's schedule pricing plus what the emulator adds.

The schedules are ``parsim.schedules.collectives`` (the same objects the backend
executes) and each step is priced by ``parsim.costs.network.price_schedule`` on
the emulated graph (links set to what the probes measured): full-duplex links
shared by the step's flows, per-step latency and software overhead, the CPU
reduction after the data lands.

**Pairs are full duplex — because the executor posts receives first.** gloo's TCP
pair keeps one FIFO of outgoing frames per peer, and a receive is announced to the
sender by a small "recv ready" frame that the sender waits for. A rank that posts
its send first and its receive second can put that frame behind a whole message
already streaming to the same peer, and then the peer's message waits for it: an
exchange runs one way at a time. Measured between two namespaces at 200 Mbit/s,
16 MiB each way: 1.40 s or 0.70 s at random with sends posted first, always 0.70 s
(the one-way time) with receives first. ``backends.torchdist.collectives.run_schedule``
posts every receive of a step before its sends, so the graph model's full duplex
holds. ``half_duplex_pairs=True`` plays the other extreme (``serialized_pairs_s``: a
pair carries one message at a time, in the step's order), the bound for an executor
that posts sends first:

    step_time = alpha_step + max(link time (price_schedule), serialised wire time)
                + reduction work (price_schedule's, after the data lands on CPU)

**Software overhead and the token buckets.** Each step also pays the ranks' host
software time o (``DeviceProfile.executor_step_overhead_s`` / ``native_step_overhead_s``,
calibrated on loopback by ``parsim.calibrate``; ``price_schedule`` adds it). The
emulated links are tbf shapers (``backends.netem.cluster``: burst = max(128 KiB, 1 ms
of line rate)): an idle link banks tokens at its rate up to the burst, and banked bytes
leave at veth speed. So each shaped link is played as a token bucket across the
steps: full before the collective, refilled while the ranks spend o and while the
link idles for the rest of a step (other links' traffic, the CPU reduction), drained
by the bytes it carries; a step's link time is the largest (load - tokens)/rate.
Effects: a message that fits the banked tokens costs no wire time (4 KiB: a step is
alpha + o), and while o fits in the burst a bulk step costs alpha + max(o, wire).
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from parsim.costs import network as N
from parsim.schedules import collectives as S


def _maxmin(paths, cap):
    """Max-min fair rates (progressive filling) of flows over directed-link capacities."""
    rate, left, active = [0.0] * len(paths), dict(cap), set(range(len(paths)))
    while active:
        users = {}
        for f in active:
            for e in paths[f]:
                users.setdefault(e, []).append(f)
        if not users:  # flows with no links (same node): instantaneous
            for f in active:
                rate[f] = float("inf")
            break
        e_min = min(users, key=lambda e: left[e] / len(users[e]))
        share = left[e_min] / len(users[e_min])
        for f in users[e_min]:
            rate[f] = share
            for e in paths[f]:
                left[e] -= share
            active.discard(f)
    return rate


def serialized_pairs_s(g, step, nodes, routes=None) -> float:
    """Wire time of one step when each rank pair moves one message at a time (gloo's
    point-to-point path when sends are posted before receives, see above): a pair's
    messages go in the step's order; the messages in flight share every link direction
    max-min fairly (fluid, re-shared whenever one ends). One exchange of n each way on a link of B takes 2n/B; a ring, whose pairs
    carry one message each, gets the plain link bound."""
    routes = {} if routes is None else routes
    queues = {}
    for t in step.transfers:
        if t.nbytes > 0:
            queues.setdefault(frozenset((t.src, t.dst)), []).append(t)
    cap = {}
    for u, v, d in g.edges(data=True):
        cap[(u, v)] = cap[(v, u)] = float(d["bandwidth"])

    def path(t):
        a, b = nodes[t.src], nodes[t.dst]
        if (a, b) not in routes:
            p = nx.shortest_path(g, a, b)
            routes[(a, b)] = list(zip(p, p[1:]))
        return routes[(a, b)]

    live = {k: [q[0], float(q[0].nbytes)] for k, q in queues.items()}
    nxt = {k: 1 for k in queues}
    t_now = 0.0
    for _ in range(sum(len(q) for q in queues.values()) + 1):
        if not live:
            return t_now
        keys = list(live)
        rates = _maxmin([path(live[k][0]) for k in keys], cap)
        dt = min(live[k][1] / r for k, r in zip(keys, rates))
        t_now += dt
        for k, r in zip(keys, rates):
            live[k][1] -= r * dt
            if live[k][1] <= 1e-9 * live[k][0].nbytes:
                if nxt[k] < len(queues[k]):
                    live[k] = [queues[k][nxt[k]], float(queues[k][nxt[k]].nbytes)]
                    nxt[k] += 1
                else:
                    del live[k]
    raise AssertionError("pair simulation did not finish")


def tbf_links(g: nx.Graph) -> dict:
    """{directed edge id (``parsim.costs.network`` router numbering): tbf burst in bytes} of the
    links the emulation shapes (``backends.netem.cluster``: burst = max(128 KiB, 1 ms of the
    configured rate)); links inside a host (loopback) are not shaped and have no bucket."""
    from backends.netem.cluster import TBF_BURST_S, TBF_MIN_BURST_B
    from backends.netem.plan import network_edges
    shaped = network_edges(g)
    out = {}
    for k, (u, v) in enumerate(g.edges):       # the router numbers edge k as 2k (u->v) and 2k+1 (v->u)
        if frozenset((u, v)) in shaped:
            d = g.edges[u, v]
            out[2 * k] = out[2 * k + 1] = max(TBF_MIN_BURST_B, float(d.get("configured_bandwidth", d["bandwidth"]))
                                              * TBF_BURST_S)
    return out


def _step_loads(rt, step, nodes):
    """Bytes each directed link carries in one step (ECMP fractions as in the pricing)."""
    load = np.zeros(len(rt.bw))
    for t in step.transfers:
        if t.nbytes > 0:
            eids, fr, _ = rt.route(nodes[t.src], nodes[t.dst])
            np.add.at(load, eids, fr * float(t.nbytes))
    return load


def predict(g: nx.Graph, sched: S.Schedule, nodes, half_duplex_pairs: bool = False, executor: str = "explicit",
            token_bucket: bool = True, one_cpu: bool = True) -> dict:
    """Predicted time of `sched` on graph g, rank i on node nodes[i] (servers included).
    `executor`: "explicit" (run_schedule) or "native" (gloo's own collective) — which per-step
    software overhead applies; `token_bucket`: play the shaped links' tbf buckets (above);
    `one_cpu`: the ranks share this machine's CPU (the emulated hosts are namespaces of one
    machine; False: each host of the graph its own)."""
    alpha = link = wire = total_bw = over = credit = 0.0
    routes = {}
    rt = N.router(g)
    burst = tbf_links(g) if token_bucket else {}
    bids = np.array(sorted(burst), dtype=np.int64)
    cap = np.array([burst[b] for b in bids], dtype=float)
    tokens = cap.copy()                                   # idle links before the collective: buckets full
    rate = rt.bw[bids] if len(bids) else np.zeros(0)
    other = np.ones(len(rt.bw), dtype=bool)
    other[bids] = False
    for st in sched.steps:
        one = S.Schedule(sched.op, sched.algo, sched.p, sched.nbytes, sched.align, (st,), sched.servers)
        price = N.price_schedule(g, one, nodes=nodes, executor=executor, one_cpu=one_cpu)
        alpha += price.alpha_s
        over += price.overhead_s
        link += price.bandwidth_s
        # price_schedule's bandwidth part = link time + reduction work (CPU: after the
        # data lands); keep its reduction term, take the serialised wire time if longer
        bare = S.Schedule(sched.op, sched.algo, sched.p, sched.nbytes, sched.align,
                          (S.Step(st.src, st.dst, st.offset, st.nbytes, st.reduce & False, st.dst_offset),),
                          sched.servers)
        link_only = N.price_schedule(g, bare, nodes=nodes).bandwidth_s
        red = price.bandwidth_s - link_only
        c = 0.0
        if len(bids):
            # the software overhead comes first: the links idle and bank tokens meanwhile
            tokens = np.minimum(cap, tokens + rate * price.overhead_s)
            load = _step_loads(rt, st, nodes)
            busy = np.maximum(0.0, load[bids] - tokens) / rate
            link_tb = max(float(busy.max()), float((load[other] / rt.bw[other]).max()) if other.any() else 0.0)
            c = max(0.0, link_only - link_tb)           # what the banked tokens saved on the bottleneck
            tokens = np.maximum(0.0, tokens - load[bids])
        on_wire = link_only - c
        if half_duplex_pairs:
            w = serialized_pairs_s(g, st, nodes, routes)
            wire += w
            on_wire = max(on_wire, w - c)
        if len(bids):   # after its own traffic a link idles for the rest of the step and the reduction
            tokens = np.minimum(cap, tokens + rate * np.maximum(0.0, on_wire - busy + red))
        credit += c
        total_bw += on_wire + red
    return {"time_s": alpha + over + total_bw, "latency_term_s": alpha, "overhead_term_s": over,
            "bandwidth_term_s": total_bw, "token_bucket_credit_s": credit,
            "graph_bandwidth_term_s": link, "steps": len(sched.steps),
            "model": "parsim.costs.network.price_schedule per step (latency + software overhead + links)"
                     + (" + gloo pairs one message at a time" if half_duplex_pairs else "")
                     + (" + tbf token buckets on the shaped links" if token_bucket else "")}
