"""Communication pricing.

First version (core issue): α-β costs on the slowest link class the group crosses
(NVLink inside a node, the per-GPU NIC across nodes). The topology issue replaces the
internals with schedules routed on the cluster graph; the two entry points stay:

* ``collective_time_s(cluster, op, algo, ranks, nbytes)`` -> seconds
* ``collective_coeffs(cluster, op, algo, ranks)`` -> (alpha_s, s_per_byte), so that
  time = alpha_s + s_per_byte · nbytes can be evaluated vectorised over many plans.

``nbytes`` is the per-rank buffer size (nccl-tests convention: the all-reduce input).
"""
from __future__ import annotations

import math

OPS = ("allreduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all", "sendrecv")
ALGOS = ("ring", "tree", "hd", "hierarchical", "ps", "native")


def _link(cluster, ranks):
    """(bandwidth B/s, latency s) of the slowest link class a group crosses."""
    g = cluster.graph
    nodes = {cluster.node_of(r) for r in ranks}
    kind = "nvlink" if len(nodes) == 1 else "nic"
    for _, _, d in g.edges(data=True):
        if d.get("link") == kind:
            return d["bandwidth"], d["latency"] * (1 if kind == "nvlink" else 2)
    raise AssertionError(f"no {kind} link in cluster {cluster.name}")


def collective_coeffs(cluster, op: str, algo: str, ranks) -> tuple[float, float]:
    """(alpha_s, s_per_byte) of one collective over `ranks`."""
    p = len(ranks)
    if p <= 1:
        return 0.0, 0.0
    B, a = _link(cluster, ranks)
    lg = math.ceil(math.log2(p))
    if op == "sendrecv":
        return a, 1.0 / B
    if op in ("reduce_scatter", "all_gather"):
        return (p - 1) * a, (p - 1) / p / B
    if op == "broadcast":
        return lg * a, 1.0 / B
    if op == "all_to_all":
        return (p - 1) * a, (p - 1) / p / B
    assert op == "allreduce", op
    if algo in ("ring", "native"):
        return 2 * (p - 1) * a, 2 * (p - 1) / p / B
    if algo == "tree":
        return 2 * lg * a, 2.0 / B
    if algo == "hd":
        return 2 * lg * a, 2 * (p - 1) / p / B
    if algo == "ps":  # sharded parameter servers co-located on the workers (BytePS)
        return 2 * a, 2 * (p - 1) / p / B
    if algo == "hierarchical":
        g = cluster.gpus_per_node
        local = min(g, p)
        nodes = max(1, p // local)
        Bi, ai = _link(cluster, ranks[:local])
        t_a = 2 * (local - 1) * ai + 2 * (nodes - 1) * a
        t_b = 2 * (local - 1) / local / Bi + (2 * (nodes - 1) / nodes / B / local if nodes > 1 else 0.0)
        return t_a, t_b
    raise AssertionError(algo)


def collective_time_s(cluster, op: str, algo: str, ranks, nbytes: float) -> float:
    a, b = collective_coeffs(cluster, op, algo, ranks)
    return a + b * nbytes
