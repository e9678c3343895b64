"""Caches of a long-lived process are bounded: pricing many clusters keeps at most CLUSTERS_KEPT
clusters' coefficients alive (before: every cluster ever priced, with its graph and routes;
160 cluster sizes took RSS from 49 to 888 MiB). Counted in entries and live objects, not RSS."""
from __future__ import annotations

import gc

import networkx as nx

import importlib
from parsim.caches import CLUSTERS_KEPT, LRU, per_object
from parsim.costs import network as N
from parsim.model import load_model
from parsim.plan import Plan
from parsim.topology import Cluster, load_cluster

P = importlib.import_module("parsim.predict")   # the module (parsim.predict is also the function)


def test_lru_evicts_the_least_recently_used():
    c = LRU(2)
    c["a"], c["b"] = 1, 2
    assert c.get("a") == 1          # a is now the most recent
    c["c"] = 3                      # evicts b
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


def test_per_object_cache_is_bounded_in_objects_and_entries():
    calls = []

    @per_object(objects=2, entries=3)
    def f(obj, x):
        calls.append((id(obj), x))
        return x * 2

    a, b, c = object(), object(), object()
    assert [f(a, i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert f.cache_info()["entries"] == 3            # 5 results, at most 3 kept per object
    f(a, 4)
    assert len(calls) == 5                           # the most recent is a hit
    f(b, 1), f(c, 1)
    assert f.cache_info()["objects"] == 2            # a evicted
    f(a, 4)
    assert len(calls) == 8                           # recomputed after eviction


def _live(kind):
    gc.collect()
    return sum(issubclass(type(o), kind) for o in gc.get_objects())   # type(): no attribute lookups on proxies


def test_pricing_many_cluster_sizes_keeps_a_bounded_number_alive():
    m = load_model("gpt-tiny")
    sizes = 3 * CLUSTERS_KEPT              # without the bound every one of them stays cached
    before_clusters, before_graphs = _live(Cluster), _live(nx.Graph)
    before_routers = len(N._ROUTERS)         # other tests' clusters (e.g. get_cluster's memo) may hold some
    for i in range(1, sizes + 1):
        c = load_cluster("dgx-h100", 8 * i)
        P.predict(m, c, Plan(dp=i, tp=4, pp=2, micro_batch=1, global_batch=2 * i))
        del c
    assert len(P._GROUP_CACHE) <= CLUSTERS_KEPT
    assert N._coeffs_cached.cache_info()["objects"] <= CLUSTERS_KEPT
    gc.collect()
    assert len(N._ROUTERS) - before_routers <= 2 * CLUSTERS_KEPT   # routers die with their graphs (weak keys)
    assert _live(Cluster) - before_clusters <= 2 * CLUSTERS_KEPT, "clusters priced earlier are still alive"
    assert _live(nx.Graph) - before_graphs <= 4 * CLUSTERS_KEPT
