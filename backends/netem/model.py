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
full-duplex bound). So for executed schedules the bytes a pair moves in both
directions within a step share that pair's path bandwidth:

    step_time = alpha_step + max(link-bound (price_schedule), max over pairs of
                                 (bytes a->b + bytes b->a) / bottleneck bandwidth(a, b))

``half_duplex_pairs=False`` gives the pure graph model (full duplex; gloo native).
"""
from __future__ import annotations

import networkx as nx

from parsim.costs import network as N
from parsim.schedules import collectives as S


def _bottleneck_Bps(g, a, b, cache):
    if (a, b) not in cache:
        path = nx.shortest_path(g, a, b)
        cache[(a, b)] = cache[(b, a)] = min(g.edges[e]["bandwidth"] for e in zip(path, path[1:]))
    return cache[(a, b)]


def pair_bound_s(g, step, nodes, cache=None) -> float:
    """Largest (bytes both ways) / bottleneck bandwidth over the rank pairs of one step."""
    cache = {} if cache is None else cache
    load = {}
    for t in step.transfers:
        if t.nbytes and nodes[t.src] != nodes[t.dst]:
            k = (min(t.src, t.dst), max(t.src, t.dst))
            load[k] = load.get(k, 0) + t.nbytes
    return max((n / _bottleneck_Bps(g, nodes[a], nodes[b], cache) for (a, b), n in load.items()), default=0.0)


def predict(g: nx.Graph, sched: S.Schedule, nodes, half_duplex_pairs: bool = True) -> dict:
    """Predicted time of `sched` on graph g, rank i on node nodes[i] (servers included)."""
    alpha = link = pair = total_bw = 0.0
    cache = {}
    for st in sched.steps:
        one = S.Schedule(sched.op, sched.algo, sched.p, sched.nbytes, sched.align, (st,), sched.servers)
        price = N.price_schedule(g, one, nodes=nodes)
        pb = pair_bound_s(g, st, nodes, cache) if half_duplex_pairs else 0.0
        alpha += price.alpha_s
        link += price.bandwidth_s
        pair += pb
        total_bw += max(price.bandwidth_s, pb)
    return {"time_s": alpha + total_bw, "latency_term_s": alpha, "bandwidth_term_s": total_bw,
            "graph_bandwidth_term_s": link, "steps": len(sched.steps),
            "model": "parsim.costs.network.price_schedule per step" + (" + gloo half-duplex pairs" if half_duplex_pairs else "")}
