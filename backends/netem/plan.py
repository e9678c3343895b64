"""Cluster graph -> namespace plan (pure: no commands run here).

An emulated cluster is one network namespace per host and one per switch (a
Linux bridge inside), joined by veth pairs, each end's egress shaped to the
link's bandwidth. Only the network tier is emulated: devices and NICs collapse
into their host (ranks on one host talk over that namespace's loopback), and a
host-to-switch path through NICs becomes one veth whose rate is the path's
slowest link. Bridges must form a tree (a loop would flood), so a fabric with
redundant switch links keeps a maximum-bandwidth spanning tree and lists the
links it dropped.

Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking range) and nowhere
else; names carry a run-unique prefix so leftovers can be found and removed.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

import networkx as nx

from parsim.errors import require

SUBNET = ipaddress.ip_network("198.18.0.0/15")
PREFIX_RE = re.compile(r"^ps[0-9a-f]{5}-")  # every namespace we ever create matches this
HOST_IF = "eth0"  # the emulated NIC inside each host namespace (GLOO_SOCKET_IFNAME)


@dataclass(frozen=True)
class Host:
    node: str            # the graph's host node
    ns: str              # namespace name
    address: str         # IPv4 in 198.18.0.0/15
    ranks: tuple         # graph device nodes placed here, in rank order (may be empty)


@dataclass(frozen=True)
class Switch:
    node: str
    ns: str


@dataclass(frozen=True)
class Veth:
    a_ns: str
    a_if: str
    b_ns: str
    b_if: str
    bandwidth_Bps: float  # each direction
    latency_s: float      # one way; only emulated where the kernel has sch_netem
    edge: tuple           # the graph nodes this veth stands for (a side, b side)


@dataclass(frozen=True)
class NetPlan:
    prefix: str
    hosts: tuple
    switches: tuple
    veths: tuple
    dropped: tuple  # redundant switch-switch edges left out (bridges need a tree)

    @property
    def namespaces(self) -> list:
        return [h.ns for h in self.hosts] + [s.ns for s in self.switches]

    def host(self, node) -> Host:
        return next(h for h in self.hosts if h.node == node)


def new_prefix(seed: int | None = None) -> str:
    """'ps' + 5 hex digits + '-': unique per run (pid and a random salt)."""
    x = (os.getpid() << 8 ^ int.from_bytes(os.urandom(2), "little")) if seed is None else seed
    return f"ps{x & 0xFFFFF:05x}-"


def host_address(i: int) -> str:
    """i-th host address: 198.18.0.1, 198.18.0.2, ... skipping .0 and .255 of each /24."""
    require(i >= 0, f"host index {i} must be >= 0")
    per24 = 254
    a = int(SUBNET.network_address) + (i // per24) * 256 + (i % per24) + 1
    addr = ipaddress.ip_address(a)
    require(addr in SUBNET and addr != SUBNET.broadcast_address,
            f"host index {i} does not fit in {SUBNET} ({per24 * 512} hosts at most)")
    return str(addr)


def graph_of(cluster) -> nx.Graph:
    """The networkx graph of a Cluster (or the graph itself)."""
    g = cluster if isinstance(cluster, nx.Graph) else getattr(cluster, "graph", cluster)
    require(isinstance(g, nx.Graph), f"expected a Cluster or networkx graph, got {type(cluster).__name__}")
    return g


def _kind(g, n):
    return g.nodes[n].get("kind", "device")


def host_groups(g) -> list:
    """[(anchor, members, devices)] per host. A host is a 'host' node with the
    devices and NICs hanging off it; where there are none, the devices (and NICs)
    sharing a ``node`` attribute; else each device alone. A switch whose
    neighbours all sit in one host (an NVSwitch) belongs to that host."""
    hosts = [n for n in g if _kind(g, n) == "host"]
    groups = []
    if hosts:
        for h in hosts:
            seen, stack = {h}, [h]
            while stack:
                for m in g.neighbors(stack.pop()):
                    if m not in seen and _kind(g, m) in ("device", "nic"):
                        seen.add(m)
                        stack.append(m)
            groups.append((h, seen))
    elif any("node" in g.nodes[n] for n in g if _kind(g, n) == "device"):
        by = {}
        for n in g:
            if _kind(g, n) in ("device", "nic") and "node" in g.nodes[n]:
                by.setdefault(g.nodes[n]["node"], set()).add(n)
        groups = [(None, m) for _, m in sorted(by.items(), key=lambda kv: str(kv[0]))]
    else:
        groups = [(None, {n}) for n in g if _kind(g, n) == "device"]
    out = []
    # dedicated servers (role: server) rank after the workers, as the ps schedules expect
    groups.sort(key=lambda am: any(g.nodes[n].get("role") == "server" for n in (am[0], *am[1]) if n is not None))
    for anchor, members in groups:
        for sw in (n for n in g if _kind(g, n) == "switch"):
            if all(m in members for m in g.neighbors(sw)):
                members = members | {sw}
        devs = tuple(sorted((n for n in members if _kind(g, n) == "device"),
                            key=lambda d: (g.nodes[d].get("rank", 0), str(d))))
        out.append((anchor if anchor is not None else devs[0], frozenset(members), devs))
    return out


def network_edges(g) -> set:
    """The edges the emulation shapes: those touching a switch that is not inside a
    host (host-to-switch and switch-to-switch links), as frozensets."""
    inner = set().union(*(m for _, m, _ in host_groups(g))) if len(g) else set()
    return {frozenset((u, v)) for u, v in g.edges
            if any(_kind(g, n) == "switch" and n not in inner for n in (u, v))}


def _uplinks(g, members):
    """{switch: (aggregate bandwidth_Bps, latency_s)} over the edges leaving a host to switches."""
    ups = {}
    for u in members:
        for v in g.neighbors(u):
            if v not in members and _kind(g, v) == "switch":
                e = g.edges[u, v]
                bw, lat = ups.get(v, (0.0, 0.0))
                ups[v] = (bw + e["bandwidth"], max(lat, e.get("latency", 0.0)))
    return ups


def plan_from_graph(cluster, prefix: str) -> NetPlan:
    """Namespace plan of a cluster graph (see host_groups for what a host is)."""
    g = graph_of(cluster)
    require(PREFIX_RE.match(prefix) is not None, f"bad prefix {prefix!r}: expected e.g. 'ps0a1b2-'")
    groups = host_groups(g)
    require(len(groups) >= 1, "cluster graph has no host or device nodes")
    require(len(groups) <= 64, f"{len(groups)} hosts is too many to emulate here (64 at most)")
    inner = set().union(*(m for _, m, _ in groups))
    switch_nodes = [n for n in g if _kind(g, n) == "switch" and n not in inner]

    hosts, veths = [], []
    port = {sw: 0 for sw in switch_nodes}
    sw_ns = {sw: f"{prefix}s{i}" for i, sw in enumerate(switch_nodes)}
    for i, (anchor, members, devs) in enumerate(groups):
        ns = f"{prefix}h{i}"
        ups = _uplinks(g, members)
        require(len(ups) >= 1 or len(groups) == 1, f"host {anchor!r} reaches no switch")
        hosts.append(Host(node=anchor, ns=ns, address=host_address(i), ranks=devs))
        if ups:
            # one emulated NIC per host, to the switch it reaches fastest; several
            # rails to that switch are emulated as one link of their summed rate
            sw, (bw, lat) = max(ups.items(), key=lambda kv: kv[1][0])
            veths.append(Veth(ns, HOST_IF, sw_ns[sw], f"p{port[sw]}", bw, lat, (anchor, sw)))
            port[sw] += 1

    # switch fabric: a maximum-bandwidth spanning tree of the switch-to-switch edges
    fabric = g.subgraph(switch_nodes)
    tree = nx.maximum_spanning_tree(fabric, weight="bandwidth")
    dropped = tuple(sorted(tuple(sorted(map(str, e))) for e in fabric.edges if not tree.has_edge(*e)))
    for u, v in sorted(tree.edges, key=lambda e: (str(e[0]), str(e[1]))):
        e = g.edges[u, v]
        veths.append(Veth(sw_ns[u], f"p{port[u]}", sw_ns[v], f"p{port[v]}",
                          e["bandwidth"], e.get("latency", 0.0), (u, v)))
        port[u] += 1
        port[v] += 1
    for sw, n in port.items():
        require(n < 4000, f"switch {sw!r} has {n} ports; at most 4000 can be emulated")
    return NetPlan(prefix=prefix, hosts=tuple(hosts),
                   switches=tuple(Switch(sw, sw_ns[sw]) for sw in switch_nodes),
                   veths=tuple(veths), dropped=dropped)


def rank_table(plan: NetPlan, ranks_per_host: int | None = None) -> list:
    """[(rank, host, local_rank)] in rank order. Hosts with devices get one rank per
    device; ranks_per_host overrides that for every host."""
    out = []
    for h in plan.hosts:
        n = ranks_per_host if ranks_per_host is not None else max(1, len(h.ranks))
        out += [(len(out) + k, h, k) for k in range(n)]
    return out
