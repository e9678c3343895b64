"""Prediction for the emulated cluster: parsim's schedule pricing plus one gloo fact.

The schedules are ``parsim.schedules.collectives`` (the same objects the backend
executes) and each step is priced by ``parsim.costs.network.price_schedule`` on
the emulated graph (links set to what the probes measured). One property of the
executor is added on top, measured here rather than assumed:

**gloo's isend/irecv pairs are half duplex for bulk data.** gloo's TCP transport
keeps one connection per rank pair, and its point-to-point path does not overlap
a large send with a large receive on it: with 16 MiB each way between two
namespaces on a 200 Mbit/s link, one way took 0.70 s and both ways at once 1.39 s
(2.0x), while raw TCP in both directions takes ~0.74 s and gloo's own all-reduce
of 64 MiB between two hosts at 1 Gbit/s overlaps both ways (0.56 s = the
full-duplex bound). So for executed schedules a pair carries one message at a time, in the step's
order, while the messages in flight share the links (``serialized_pairs_s``):

    step_time = alpha_step + max(link time (price_schedule), serialised wire time)
                + reduction work (price_schedule's, after the data lands on CPU)

``half_duplex_pairs=False`` gives the pure graph model (full duplex; gloo native).
"""
from __future__ import annotations

import networkx as nx

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
    point-to-point path): a pair's messages go in the step's order; the messages in
    flight share every link direction max-min fairly (fluid, re-shared whenever one
    ends). One exchange of n each way on a link of B takes 2n/B; a ring, whose pairs
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


def predict(g: nx.Graph, sched: S.Schedule, nodes, half_duplex_pairs: bool = True) -> dict:
    """Predicted time of `sched` on graph g, rank i on node nodes[i] (servers included)."""
    alpha = link = wire = total_bw = 0.0
    routes = {}
    for st in sched.steps:
        one = S.Schedule(sched.op, sched.algo, sched.p, sched.nbytes, sched.align, (st,), sched.servers)
        price = N.price_schedule(g, one, nodes=nodes)
        alpha += price.alpha_s
        link += price.bandwidth_s
        if half_duplex_pairs:
            # price_schedule's bandwidth part = link time + reduction work (CPU: after the
            # data lands); keep its reduction term, take the serialised wire time if longer
            bare = S.Schedule(sched.op, sched.algo, sched.p, sched.nbytes, sched.align,
                              (S.Step(st.src, st.dst, st.offset, st.nbytes, st.reduce & False, st.dst_offset),),
                              sched.servers)
            link_only = N.price_schedule(g, bare, nodes=nodes).bandwidth_s
            w = serialized_pairs_s(g, st, nodes, routes)
            wire += w
            total_bw += max(link_only, w) + (price.bandwidth_s - link_only)
        else:
            total_bw += price.bandwidth_s
    return {"time_s": alpha + total_bw, "latency_term_s": alpha, "bandwidth_term_s": total_bw,
            "graph_bandwidth_term_s": link, "steps": len(sched.steps),
            "model": "parsim.costs.network.price_schedule per step" + (" + gloo pairs one message at a time" if half_duplex_pairs else "")}
