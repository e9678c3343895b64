"""Small cluster graphs for emulation, in parsim's topology convention.

Nodes carry ``kind`` in {host, device, switch}; edges carry ``bandwidth``
(bytes/s) and ``latency`` (s). Each host holds ``devices_per_host`` device nodes
(the ranks). These are the shapes the emulator is for; richer graphs come from
``parsim.topology`` or a cluster file.
"""
from __future__ import annotations

import networkx as nx

from parsim.errors import closest, require


# Ranks on one host talk over the namespace's loopback, which is not shaped;
# nominal figures (gloo over loopback TCP on this class of machine), not fitted.
LOOPBACK_BPS = 2e9
LOOPBACK_LATENCY_S = 20e-6


def _add_host(g, name, switch, bandwidth_Bps, latency_s, devices):
    index = sum(1 for n in g if g.nodes[n].get("kind") == "host")
    g.add_node(name, kind="host", node=index)
    g.add_edge(name, switch, bandwidth=float(bandwidth_Bps), latency=float(latency_s), link="nic")
    for d in range(devices):
        dev = f"{name}/d{d}"
        g.add_node(dev, kind="device", profile="cpu", node=index)
        g.add_edge(name, dev, bandwidth=LOOPBACK_BPS / 2, latency=LOOPBACK_LATENCY_S / 2,
                   link="loopback", intra_host=True)


def as_cluster(g: nx.Graph, devices_per_host: int = 1):
    """Wrap a preset graph as a parsim Cluster (ranks = devices in host order)."""
    from parsim.topology import Cluster
    devices = tuple(n for n in g if g.nodes[n].get("kind") == "device")
    return Cluster(g.graph.get("name", "netem"), g, devices, devices_per_host, "cpu", {"emulated": True})


def single_switch(hosts: int, bandwidth_Bps: float, latency_s: float = 0.0, devices_per_host: int = 1) -> nx.Graph:
    """`hosts` hosts on one switch, each with one link of `bandwidth_Bps`."""
    require(hosts >= 1, f"hosts={hosts} must be >= 1")
    g = nx.Graph(name=f"switch{hosts}")
    g.add_node("sw0", kind="switch")
    for i in range(hosts):
        _add_host(g, f"h{i}", "sw0", bandwidth_Bps, latency_s, devices_per_host)
    return g


def two_racks(hosts: int, bandwidth_Bps: float, latency_s: float = 0.0, oversubscription: float = 2.0,
              devices_per_host: int = 1) -> nx.Graph:
    """Two racks of hosts/2 under one spine. Each rack uplink carries
    (hosts/2) * bandwidth / oversubscription: oversubscription=2 halves it."""
    require(hosts >= 2 and hosts % 2 == 0, f"hosts={hosts} must be even and >= 2 for two racks")
    require(oversubscription >= 1, f"oversubscription={oversubscription} must be >= 1")
    g = nx.Graph(name=f"racks{hosts}")
    g.add_node("spine", kind="switch")
    per = hosts // 2
    for r in range(2):
        tor = f"tor{r}"
        g.add_node(tor, kind="switch")
        g.add_edge(tor, "spine", bandwidth=per * bandwidth_Bps / oversubscription, latency=latency_s, link="uplink")
        for i in range(per):
            _add_host(g, f"h{r * per + i}", tor, bandwidth_Bps, latency_s, devices_per_host)
    return g


def parameter_server(hosts: int, bandwidth_Bps: float, latency_s: float = 0.0, servers: int = 1,
                     devices_per_host: int = 1) -> nx.Graph:
    """`hosts` worker hosts plus `servers` dedicated server hosts (ps0..), one switch.
    Server hosts come last, so they take ranks p..p+servers-1 as the ps schedules expect."""
    require(servers >= 1, f"servers={servers} must be >= 1")
    g = nx.Graph(name=f"ps{servers}x{hosts}")
    g.add_node("sw0", kind="switch")
    for i in range(hosts):
        _add_host(g, f"h{i}", "sw0", bandwidth_Bps, latency_s, devices_per_host)
    for s in range(servers):
        _add_host(g, f"ps{s}", "sw0", bandwidth_Bps, latency_s, 1)
        g.nodes[f"ps{s}"]["role"] = "server"
        g.nodes[f"ps{s}/d0"]["role"] = "server"
    return g


PRESETS = {"switch": single_switch, "racks": two_racks, "ps": parameter_server}


def build(preset: str, **kw) -> nx.Graph:
    require(preset in PRESETS, f"unknown cluster preset {preset!r}: expected one of {', '.join(PRESETS)}{closest(preset, PRESETS)}")
    return PRESETS[preset](**kw)
