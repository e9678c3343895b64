"""Bounded caches for long-lived processes (a notebook, a service pricing many clusters).

Before: the per-cluster communication caches were keyed by cluster and never evicted, so every
cluster ever priced stayed in memory with its graph and routes (160 cluster sizes in one process:
RSS 49 -> 888 MiB). Now each is an LRU over clusters: at most ``CLUSTERS_KEPT`` clusters' worth
of cached coefficients, each at most ``ENTRIES_PER_CLUSTER`` entries.

Sizes: a plan search touches one cluster and a few hundred (op, algo, group) shapes; 8 clusters
cover a sweep that alternates between a few. An entry is two floats plus its key (~200 B), so the
bound is ~8 x 4096 x 200 B = 6.5 MiB of coefficients, plus the 8 clusters they keep alive.
"""
from __future__ import annotations

import functools
from collections import OrderedDict

CLUSTERS_KEPT = 8
ENTRIES_PER_CLUSTER = 4096


class LRU:
    """A mapping with at most `maxsize` entries; the least recently used goes first."""

    def __init__(self, maxsize: int):
        assert maxsize >= 1
        self.maxsize = maxsize
        self._d: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key, default=None):
        try:
            v = self._d[key]
        except KeyError:
            self.misses += 1
            return default
        self._d.move_to_end(key)
        self.hits += 1
        return v

    def __getitem__(self, key):
        v = self._d[key]            # KeyError as a dict would
        self._d.move_to_end(key)
        return v

    def __setitem__(self, key, value):
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.maxsize:
            self._d.popitem(last=False)

    def __contains__(self, key):
        return key in self._d

    def __len__(self):
        return len(self._d)

    def values(self):
        return self._d.values()

    def clear(self):
        self._d.clear()
        self.hits = self.misses = 0


def per_object(objects: int = CLUSTERS_KEPT, entries: int = ENTRIES_PER_CLUSTER):
    """Memoise ``f(obj, *args)`` by the identity of `obj` (which need not be hashable by value) and
    the hashable `args`: at most `objects` objects are kept, each with at most `entries` results.
    The wrapper has ``cache_clear()``, ``cache_info()`` -> (hits, misses, objects, entries) and
    ``entries()`` (total cached results, for tests of the bound)."""
    def deco(f):
        table = LRU(objects)    # id(obj) -> (obj, LRU of results); obj is kept so its id is not reused

        @functools.wraps(f)
        def wrapper(obj, *args):
            slot = table.get(id(obj))
            if slot is None or slot[0] is not obj:
                slot = (obj, LRU(entries))
                table[id(obj)] = slot
            res = slot[1].get(args, _MISSING)
            if res is _MISSING:
                res = f(obj, *args)
                slot[1][args] = res
            return res

        def cache_info():
            hits = sum(s[1].hits for s in table.values())
            misses = sum(s[1].misses for s in table.values())
            return {"hits": hits, "misses": misses, "objects": len(table), "entries": wrapper.entries()}

        wrapper.cache_clear = table.clear
        wrapper.cache_info = cache_info
        wrapper.entries = lambda: sum(len(s[1]) for s in table.values())
        return wrapper
    return deco


_MISSING = object()
