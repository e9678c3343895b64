"""Cluster: a networkx graph of devices, NICs, switches and hosts, plus rank placement.

Graph conventions (read by ``parsim.costs.network`` and ``backends/netem``):
  nodes  ``kind`` ∈ {device, nic, switch, host}; devices carry ``profile`` (a device
         profile name, ``parsim/data/devices.yaml``) and ``node`` (the server they sit in);
         dedicated parameter-server devices carry ``role: server``.
  edges  ``bandwidth`` (bytes/s delivered, each direction — full duplex — already multiplied
         by ``efficiency``), ``rate`` (nominal bytes/s), ``efficiency`` (fraction of the rate
         a bulk transfer achieves: data with its source), ``latency`` (s, per hop) and
         ``link`` (class: nvlink, pcie, nic, uplink, direct, host).
Rank r runs on ``Cluster.devices[r]`` (default: node-major, so a Plan's tp-innermost,
then pp, then dp numbering keeps tp inside a node); ``place(cluster, order)`` sets any
other order. ``Cluster.servers`` lists dedicated parameter-server devices (schedule
ranks p..p+k-1, see ``parsim.schedules.collectives``).

Builders: ``dgx`` (nodes of GPUs on an NVSwitch, a NIC per GPU, one non-blocking fabric
switch), ``fat_tree`` (leaf/spine with an oversubscription ratio), ``rail_optimized``,
``ring``, ``torus`` (2D/3D), ``fully_connected`` and ``star`` (hosts on one switch plus
dedicated parameter-server hosts). Files: YAML (preset keys with ``builder:``, or an
explicit ``nodes:``/``links:`` graph, units in the key names: ``bandwidth_GBps`` =
1e9 bytes/s, ``latency_us`` = 1e-6 s) and GraphML (attributes in SI units, as above).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import yaml

from parsim import limits
from parsim.errors import ParsimError, closest, require, unknown_preset
from parsim.hardware import DeviceProfile, get_device

DATA = Path(__file__).parent / "data"
GB, US = 1e9, 1e-6


@dataclass(frozen=True, eq=False)
class Cluster:
    name: str
    graph: nx.Graph
    devices: tuple              # device node names; rank r runs on devices[r]
    gpus_per_node: int
    device_profile: str
    meta: dict = field(default_factory=dict)
    servers: tuple = ()         # dedicated parameter-server device nodes

    @functools.cached_property
    def _node_idx(self) -> tuple:
        """Server index of every rank, read from the graph on first use (building a cluster needs none)."""
        nodes = self.graph.nodes
        return tuple(int(nodes[d].get("node", i // self.gpus_per_node)) if d in nodes else i // self.gpus_per_node
                     for i, d in enumerate(self.devices))

    @property
    def device(self) -> DeviceProfile:
        return get_device(self.device_profile)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def node_of(self, rank: int) -> int:
        """The server (node) index rank `rank` runs on."""
        return self._node_idx[rank]

    def __hash__(self):
        return id(self)


# ----------------------------------------------------------------------------- builders

def _link_class(rate, latency, eff=1.0, link="direct", where="cluster", **extra) -> dict:
    """The attributes every link of one class shares (a builder's NVLink, PCIe, NIC, uplink links):
    checked here once per class, as ``validate`` checks each link of a graph it did not build. Each
    edge gets its own copy (networkx copies the keywords of add_edge/add_edges_from)."""
    rate, latency, eff = float(rate), float(latency), float(eff)
    attrs = dict(bandwidth=rate * eff, rate=rate, efficiency=eff, latency=latency, link=link, **extra)
    _check_link(f"{where}: {link} links", attrs)
    return attrs


def _link_ok(d: dict) -> bool:
    """A link's numbers in range: 0 < bandwidth <= MAX_LINK_GBPS, 0 <= latency <= MAX_LINK_LATENCY_US,
    0 < efficiency <= 1, all int or float (NaN fails every comparison)."""
    b, lat, eff = d.get("bandwidth"), d.get("latency", 0.0), d.get("efficiency", 1.0)
    num = (int, float)
    return (type(b) in num and 0 < b <= limits.MAX_LINK_GBPS * GB and type(lat) in num
            and 0 <= lat <= limits.MAX_LINK_LATENCY_US * US and type(eff) in num and 0 < eff <= 1)


def _check_link(what: str, d: dict) -> None:
    """ParsimError naming the first number of link(s) `what` out of range (see _link_ok)."""
    if _link_ok(d):
        return
    b, lat, eff = d.get("bandwidth"), d.get("latency", 0.0), d.get("efficiency", 1.0)
    limits.check_number(f"{what} bandwidth (B/s)", b, 0, limits.MAX_LINK_GBPS * GB, lo_open=True)
    limits.check_number(f"{what} latency (s)", lat, 0, limits.MAX_LINK_LATENCY_US * US)
    limits.check_number(f"{what} efficiency", eff, 0, 1, lo_open=True)


def _dgx_nodes(g, nodes, gpus, device, nvlink, pcie):
    """DGX-style servers 0..nodes-1: GPUs on an NVSwitch, each GPU with its own NIC
    (PCIe, no latency); `nvlink`, `pcie`: their link classes. Returns (devices, NICs by server).
    Graph order as if added one GPU at a time (switch, gpu0, nic0, gpu1, ...; a GPU's neighbours
    switch then NIC), so routing sees the same adjacency whatever the size."""
    devs, nics, node_list = [], [], []
    for n in range(nodes):
        node_list.append((f"n{n}/nvswitch", {"kind": "switch", "node": n}))
        d_n, nic_n = [f"n{n}/gpu{i}" for i in range(gpus)], [f"n{n}/nic{i}" for i in range(gpus)]
        for i in range(gpus):
            node_list.append((d_n[i], {"kind": "device", "profile": device, "node": n, "local": i}))
            node_list.append((nic_n[i], {"kind": "nic", "node": n}))
        devs += d_n
        nics.append(nic_n)
    g.add_nodes_from(node_list)
    g.add_edges_from(((d, f"n{i // gpus}/nvswitch") for i, d in enumerate(devs)), **nvlink)
    g.add_edges_from(zip(devs, (x for nic_n in nics for x in nic_n)), **pcie)
    return devs, nics


def _node_links(where, nvlink_Bps, nvlink_latency_s, nvlink_efficiency, nic_Bps, nic_efficiency,
                nvlink_p2p_efficiency=None):
    """(nvlink, pcie) link classes of a DGX-style server; nvlink_p2p_efficiency: the share of the NVLink
    line rate a lone point-to-point send/recv reaches (parsim.costs.network prices sendrecv schedules
    with it; None: the collectives' efficiency)."""
    extra = {}
    if nvlink_p2p_efficiency is not None:
        require(0 < float(nvlink_p2p_efficiency) <= 1,
                f"nvlink_p2p_efficiency = {nvlink_p2p_efficiency}: expected a fraction in (0, 1]")
        extra["p2p_efficiency"] = float(nvlink_p2p_efficiency)
    return (_link_class(nvlink_Bps, nvlink_latency_s, nvlink_efficiency, "nvlink", where, **extra),
            _link_class(nic_Bps, 0.0, nic_efficiency, "pcie", where))


def dgx(name: str, nodes: int, gpus_per_node: int, device: str, nvlink_Bps: float, nvlink_latency_s: float,
        nic_Bps: float, nic_latency_s: float, nvlink_efficiency: float = 1.0, nic_efficiency: float = 1.0,
        meta: dict | None = None, nvlink_p2p_efficiency: float | None = None) -> Cluster:
    """DGX-style nodes: GPUs on an NVSwitch, one NIC per GPU, all NICs on one non-blocking fabric switch."""
    return fat_tree(name, nodes, gpus_per_node, device, nvlink_Bps, nvlink_latency_s, nic_Bps, nic_latency_s,
                    nodes_per_leaf=nodes, nvlink_efficiency=nvlink_efficiency, nic_efficiency=nic_efficiency, meta=meta,
                    nvlink_p2p_efficiency=nvlink_p2p_efficiency)


def fat_tree(name: str, nodes: int, gpus_per_node: int, device: str, nvlink_Bps: float, nvlink_latency_s: float,
             nic_Bps: float, nic_latency_s: float, nodes_per_leaf: int = 4, spines: int = 4,
             oversubscription: float = 1.0, uplink_latency_s: float = 1e-6, nvlink_efficiency: float = 1.0,
             nic_efficiency: float = 1.0, meta: dict | None = None, nvlink_p2p_efficiency: float | None = None) -> Cluster:
    """Leaf/spine: DGX-style nodes, the NICs of `nodes_per_leaf` nodes on one leaf; every leaf
    has one uplink to each of `spines` spines carrying (NICs below · nic rate / oversubscription)
    / spines. oversubscription = 2 means a leaf's uplinks carry half of what its hosts inject.
    One leaf (nodes <= nodes_per_leaf) needs no spine ("fabric" switch)."""
    require(nodes >= 1 and gpus_per_node >= 1, f"fat_tree: nodes = {nodes}, gpus_per_node = {gpus_per_node}: expected >= 1")
    require(nodes_per_leaf >= 1 and spines >= 1, f"fat_tree: nodes_per_leaf = {nodes_per_leaf}, spines = {spines}: expected >= 1")
    require(oversubscription >= 1, f"fat_tree: oversubscription = {oversubscription}: expected >= 1 (1 = non-blocking)")
    leaves = -(-nodes // nodes_per_leaf)
    _check_size(name, nodes * gpus_per_node, 3 * nodes * gpus_per_node + (leaves * spines if leaves > 1 else 0))
    where = f"cluster {name}"
    nvlink, pcie = _node_links(where, nvlink_Bps, nvlink_latency_s, nvlink_efficiency, nic_Bps, nic_efficiency,
                               nvlink_p2p_efficiency)
    nic = _link_class(nic_Bps, nic_latency_s, nic_efficiency, "nic", where)
    g = nx.Graph()
    leaf_names = ["fabric"] if leaves == 1 else [f"leaf{i}" for i in range(leaves)]
    g.add_nodes_from(leaf_names, kind="switch", tier=1)
    devices, nics = _dgx_nodes(g, nodes, gpus_per_node, device, nvlink, pcie)
    g.add_edges_from(((x, leaf_names[n // nodes_per_leaf]) for n, nic_n in enumerate(nics) for x in nic_n), **nic)
    if leaves > 1:
        up = _link_class(nodes_per_leaf * gpus_per_node * nic_Bps / oversubscription / spines, uplink_latency_s,
                         nic_efficiency, "uplink", where)
        for s in range(spines):
            g.add_node(f"spine{s}", kind="switch", tier=2)
            g.add_edges_from(((lf, f"spine{s}") for lf in leaf_names), **up)
    m = dict(meta or {})
    m.setdefault("builder", "fat_tree" if leaves > 1 else "dgx")
    return Cluster(name, g, tuple(devices), gpus_per_node, device, m)


def rail_optimized(name: str, nodes: int, gpus_per_node: int, device: str, nvlink_Bps: float,
                   nvlink_latency_s: float, nic_Bps: float, nic_latency_s: float, spines: int = 2,
                   oversubscription: float = 1.0, uplink_latency_s: float = 1e-6, nvlink_efficiency: float = 1.0,
                   nic_efficiency: float = 1.0, meta: dict | None = None,
                   nvlink_p2p_efficiency: float | None = None) -> Cluster:
    """Rail-optimized: NIC i of every node on rail switch i (same-rank GPUs one hop apart);
    rails joined by `spines` spines for cross-rail traffic (which also may hop over NVLink
    to the right rail: both are shortest paths, ECMP splits them)."""
    require(nodes >= 1 and gpus_per_node >= 1 and spines >= 0,
            f"rail: nodes = {nodes}, gpus_per_node = {gpus_per_node}, spines = {spines}: expected >= 1, >= 1, >= 0")
    _check_size(name, nodes * gpus_per_node, 3 * nodes * gpus_per_node + gpus_per_node * spines)
    where = f"cluster {name}"
    nvlink, pcie = _node_links(where, nvlink_Bps, nvlink_latency_s, nvlink_efficiency, nic_Bps, nic_efficiency,
                               nvlink_p2p_efficiency)
    nic = _link_class(nic_Bps, nic_latency_s, nic_efficiency, "nic", where)
    g = nx.Graph()
    rails = [f"rail{i}" for i in range(gpus_per_node)]
    g.add_nodes_from(rails, kind="switch", tier=1)
    devices, nics = _dgx_nodes(g, nodes, gpus_per_node, device, nvlink, pcie)
    g.add_edges_from(((x, rails[i]) for nic_n in nics for i, x in enumerate(nic_n)), **nic)
    if gpus_per_node > 1 and spines > 0:
        up = _link_class(nodes * nic_Bps / oversubscription / spines, uplink_latency_s, nic_efficiency, "uplink", where)
        for s in range(spines):
            g.add_node(f"spine{s}", kind="switch", tier=2)
            g.add_edges_from(((r, f"spine{s}") for r in rails), **up)
    m = dict(meta or {})
    m.setdefault("builder", "rail")
    return Cluster(name, g, tuple(devices), gpus_per_node, device, m)


def _direct(name, n, device, link_Bps, latency_s, efficiency, edges, gpus_per_node, builder, meta):
    require(gpus_per_node >= 1, f"{builder}: gpus_per_node = {gpus_per_node}: expected >= 1")
    g = nx.Graph()
    devs = [f"d{i}" for i in range(n)]
    for i, d in enumerate(devs):
        g.add_node(d, kind="device", profile=device, node=i // gpus_per_node)
    direct = _link_class(link_Bps, latency_s, efficiency, "direct", f"cluster {name}")
    g.add_edges_from(((devs[a], devs[b]) for a, b in edges if a != b), **direct)
    m = dict(meta or {})
    m.setdefault("builder", builder)
    return Cluster(name, g, tuple(devs), gpus_per_node, device, m)


def ring(name: str, n: int, device: str, link_Bps: float, latency_s: float, efficiency: float = 1.0,
         gpus_per_node: int = 1, meta: dict | None = None) -> Cluster:
    """n devices in a ring of direct links."""
    require(n >= 1, f"ring: n = {n}: expected >= 1")
    _check_size(name, n, n)
    return _direct(name, n, device, link_Bps, latency_s, efficiency, [(i, (i + 1) % n) for i in range(n)],
                   gpus_per_node, "ring", meta)


def torus(name: str, dims, device: str, link_Bps: float, latency_s: float, efficiency: float = 1.0,
          gpus_per_node: int = 1, meta: dict | None = None) -> Cluster:
    """2D/3D torus (wrap-around mesh) of direct links; dims e.g. (4, 4) or (4, 4, 4)."""
    dims = tuple(int(d) for d in dims)
    require(len(dims) in (1, 2, 3) and all(d >= 1 for d in dims), f"torus: dims = {dims}: expected 1-3 sizes >= 1")
    n = math.prod(dims)
    _check_size(name, n, len(dims) * n)
    idx = lambda c: sum(c[k] * math.prod(dims[k + 1:]) for k in range(len(dims)))
    edges = []
    for i in range(n):
        c, rest = [], i
        for k in range(len(dims)):
            c.append(rest // math.prod(dims[k + 1:]))
            rest %= math.prod(dims[k + 1:])
        for k in range(len(dims)):
            if dims[k] > 1:
                nb = list(c)
                nb[k] = (c[k] + 1) % dims[k]
                edges.append((i, idx(nb)))
    return _direct(name, n, device, link_Bps, latency_s, efficiency, edges, gpus_per_node,
                   f"torus{len(dims)}d", meta)


def fully_connected(name: str, n: int, device: str, link_Bps: float, latency_s: float, efficiency: float = 1.0,
                    gpus_per_node: int = 1, meta: dict | None = None) -> Cluster:
    """Every pair of devices has its own direct link."""
    require(n >= 1, f"full: n = {n}: expected >= 1")
    _check_size(name, n, n * (n - 1) // 2)
    return _direct(name, n, device, link_Bps, latency_s, efficiency,
                   [(i, j) for i in range(n) for j in range(i + 1, n)], gpus_per_node, "full", meta)


def star(name: str, hosts: int, device: str, link_Bps: float, latency_s: float, efficiency: float = 1.0,
         devices_per_host: int = 1, servers: int = 0, server_device: str = "cpu", intra_Bps: float = 10e9,
         meta: dict | None = None) -> Cluster:
    """`hosts` worker hosts and `servers` dedicated parameter-server hosts on one switch, each host
    with one link of `link_Bps` (BytePS's setting). Devices hang off their host with an
    `intra_Bps` link (shared memory/loopback). Server devices are ``ps{k}/d0`` (role server)."""
    require(hosts >= 1 and devices_per_host >= 1 and servers >= 0,
            f"star: hosts = {hosts}, devices_per_host = {devices_per_host}, servers = {servers}")
    _check_size(name, hosts * devices_per_host + servers, hosts * (devices_per_host + 1) + 2 * servers)
    host_link = _link_class(link_Bps, latency_s, efficiency, "host", f"cluster {name}")
    local = _link_class(intra_Bps, 0.0, 1.0, "local", f"cluster {name}")
    g = nx.Graph()
    g.add_node("sw0", kind="switch", tier=1)
    devices, srv = [], []
    for s in range(servers):
        h = f"ps{s}"
        g.add_node(h, kind="host", role="server")
        g.add_edge(h, "sw0", **host_link)
        g.add_node(f"{h}/d0", kind="device", profile=server_device, node=hosts + s, role="server")
        g.add_edge(h, f"{h}/d0", **local)
        srv.append(f"{h}/d0")
    for i in range(hosts):
        h = f"h{i}"
        g.add_node(h, kind="host")
        g.add_edge(h, "sw0", **host_link)
        for j in range(devices_per_host):
            d = f"{h}/d{j}"
            g.add_node(d, kind="device", profile=device, node=i, local=j)
            g.add_edge(h, d, **local)
            devices.append(d)
    m = dict(meta or {})
    m.setdefault("builder", "star")
    return Cluster(name, g, tuple(devices), devices_per_host, device, m, tuple(srv))


def _check_size(name, devices: int, links: int) -> None:
    """Refuse a cluster beyond parsim.limits.MAX_DEVICES devices or MAX_LINKS links, before building it."""
    if devices > limits.MAX_DEVICES:
        raise ParsimError(f"cluster {name}: {devices} devices is above the limit of {limits.MAX_DEVICES} "
                          "(parsim.limits.MAX_DEVICES)")
    if links > limits.MAX_LINKS:
        raise ParsimError(f"cluster {name}: {links} links is above the limit of {limits.MAX_LINKS} "
                          "(parsim.limits.MAX_LINKS)")


# ----------------------------------------------------------------------------- validation & placement

def validate(c: Cluster, built: bool = False) -> Cluster:
    """Raise ParsimError naming the first problem: empty/disconnected graph, a link without a
    positive bandwidth or with a negative latency, a rank device that is missing or not a
    device, duplicated, unreachable, or naming an unknown profile.

    built: the graph is one a builder here has just made (``_build``): connected and within the size
    limits by construction (checked before building), its links made of classes whose numbers were
    checked once each (``_link_class``). The walk over every link, the link count and the connectivity
    search are then skipped: they were ~40% of loading a 16,384-GPU DGX cluster (125 of ~300 ms of
    CPU on the development VM), repeating per link what was checked per class. Rank devices are
    always checked."""
    g = c.graph
    require(len(c.devices) > 0, f"cluster {c.name}: no devices")
    if not built:
        if g.number_of_nodes() > 0 and not nx.is_connected(g):
            comps = list(nx.connected_components(g))
            devs = set(c.devices) | set(c.servers)
            with_dev = [k for k in comps if k & devs]
            # the devices all reach each other but a node without devices hangs loose (trial 2026-11-30: a switch
            # left with no links was said as "every device must reach every other")
            loose = sorted(str(n) for k in comps if not k & devs for n in k)
            require(len(with_dev) > 1,
                    f"cluster {c.name}: node(s) {', '.join(limits.shown(n, 30) for n in loose[:3])}"
                    f"{' …' if len(loose) > 3 else ''} connect to no device: remove them or link them")
            require(False, f"cluster {c.name}: graph is not connected ({len(comps)} components, {len(with_dev)} with "
                           f"devices); every device must reach every other")
        require(g.number_of_nodes() > 0, f"cluster {c.name}: graph is empty")
        _check_size(c.name, len(c.devices), g.number_of_edges())
    require(g.number_of_nodes() <= limits.MAX_GRAPH_NODES, f"cluster {c.name}: {g.number_of_nodes()} graph nodes is "
                                                           f"above the limit of {limits.MAX_GRAPH_NODES} (parsim.limits.MAX_GRAPH_NODES)")
    if not built:
        for u, v, d in g.edges(data=True):
            if not _link_ok(d):
                _check_link(f"cluster {c.name}: link {limits.shown(u, 30)} — {limits.shown(v, 30)}", d)
    require(len(set(c.devices)) == len(c.devices), f"cluster {c.name}: a device appears twice in the rank order")
    profiles = {c.device_profile}
    nodes = g.nodes
    for d in (*c.devices, *c.servers):   # messages built only on failure (16,384 f-strings cost ~40 ms)
        a = nodes[d] if d in g else None
        prof = a.get("profile", c.device_profile) if a is not None else None
        if a is None or a.get("kind") != "device" or not isinstance(prof, str):
            require(a is not None, f"cluster {c.name}: rank device {d!r} is not in the graph")
            require(a.get("kind") == "device", f"cluster {c.name}: rank node {d!r} has kind "
                                               f"{a.get('kind')!r}, expected device")
            raise ParsimError(f"cluster {c.name}: device {limits.shown(d, 40)} has profile "
                              f"{limits.shown(prof, 40)}, expected a device profile name")
        profiles.add(prof)
    for prof in sorted(profiles):        # each named profile once (16384 lookups of one name cost ~1 s)
        get_device(prof)
    return c


def place(c: Cluster, order) -> Cluster:
    """The same cluster with ranks on devices in `order`: device names, or a permutation of
    the current rank numbers (rank r then runs on the device that rank order[r] had)."""
    order = list(order)
    if order and all(isinstance(o, int) for o in order):
        require(sorted(order) == list(range(len(c.devices))),
                f"rank order must be a permutation of 0..{len(c.devices) - 1}, got {order}")
        devs = tuple(c.devices[o] for o in order)
    else:
        devs = tuple(str(o) for o in order)
        unknown = [d for d in devs if d not in c.graph]
        require(not unknown, f"rank order names devices not in the graph: {unknown[:3]}"
                             f"{closest(unknown[0], list(c.devices)) if unknown else ''}")
    return validate(Cluster(c.name, c.graph, devs, c.gpus_per_node, c.device_profile, dict(c.meta), c.servers))


def group_ranks(plan, kind: str, index: int = 0) -> tuple:
    """Ranks of the `index`-th process group of `kind` (tp | pp | dp) under tp-innermost placement:
    rank = dp_i·(pp·tp) + pp_i·tp + tp_i, dp outermost — the order of the backend's device mesh (dp, pp, tp).
    Not Megatron-Core's (tp-cp-ep-dp-pp) nor torchtitan's (mesh pp, dp, cp, tp), which put pp outermost: with
    tp·dp within a node they keep the dp group inside it and send the pipeline's p2p across nodes. Known
    difference; re-pricing the public corpus with pp outermost moved its tables' held-out means by -2.0 to +1.4
    points (B200 25.02 and NeMo 24.07 better, Megatron-Bridge H100 dense and MoE worse), so it was not switched on its own."""
    tp, pp, dp = plan.tp, plan.pp, plan.dp
    if kind == "tp":
        return tuple(range(index * tp, index * tp + tp))
    if kind == "pp":
        base = (index // tp) * (tp * pp) + index % tp
        return tuple(base + i * tp for i in range(pp))
    if kind == "dp":
        return tuple(index + i * tp * pp for i in range(dp))
    raise ParsimError(f"unknown process group kind {kind!r}: expected tp, pp or dp")


def process_groups(plan) -> dict:
    """{kind: [ranks of every group]} for tp, pp and dp."""
    n = plan.tp * plan.pp * plan.dp
    return {k: [group_ranks(plan, k, i) for i in range(n // size)]
            for k, size in (("tp", plan.tp), ("pp", plan.pp), ("dp", plan.dp))}


# ----------------------------------------------------------------------------- files and presets

@functools.lru_cache(maxsize=None)
def _presets() -> dict:
    return yaml.safe_load((DATA / "clusters.yaml").read_text())


def cluster_names() -> list[str]:
    return list(_presets())


def _num(d, key, default=None):
    v = d.get(key, default)
    if v is None:
        raise KeyError(key)
    return float(v)


# Schema of a preset-style cluster mapping: key -> (kind, lo, hi, lo_open). Units in the key names.
_GBPS = ("num", 0.0, limits.MAX_LINK_GBPS, True)
_LAT = ("num", 0.0, limits.MAX_LINK_LATENCY_US, False)
_EFF = ("num", 0.0, 1.0, True)
CLUSTER_SCHEMA = {
    "name": ("str",), "builder": ("str",), "device": ("str",), "server_device": ("str",), "source": ("str",),
    "description": ("str",),
    "gpus_per_node": ("int", 1, "MAX_DEVICES"), "nodes_per_leaf": ("int", 1, "MAX_DEVICES"),
    "spines": ("int", 0, "MAX_DEVICES"), "hosts": ("int", 1, "MAX_DEVICES"), "servers": ("int", 0, "MAX_DEVICES"),
    "devices": ("int", 1, "MAX_DEVICES"), "dims": ("dims",),
    "nvlink_GBps": _GBPS, "nic_GBps": _GBPS, "link_GBps": _GBPS, "intra_GBps": _GBPS,
    "nvlink_latency_us": _LAT, "nic_latency_us": _LAT, "link_latency_us": _LAT, "uplink_latency_us": _LAT,
    "nvlink_efficiency": _EFF, "nic_efficiency": _EFF, "link_efficiency": _EFF, "nvlink_p2p_efficiency": _EFF,
    "oversubscription": ("num", 1.0, limits.MAX_OVERSUBSCRIPTION, False),
}


def check_cluster_mapping(name, d: dict) -> dict:
    """Type and range of every key of a preset-style cluster mapping (CLUSTER_SCHEMA); unknown keys
    are refused (a misspelt optional key would otherwise be ignored silently)."""
    where = f"cluster {limits.shown(str(name), 40)}"
    _known_keys(where, "", d, tuple(CLUSTER_SCHEMA))
    for k, v in d.items():
        spec = CLUSTER_SCHEMA[k]
        if spec[0] == "str":
            require(isinstance(v, (str, int, float)) and not isinstance(v, bool),
                    f"{where}: {k} = {limits.shown(v, 40)}: expected a string")
        elif spec[0] == "int":
            limits.check_count(f"{where}: {k}", v, spec[2], lo=spec[1])
        elif spec[0] == "num":
            limits.check_number(f"{where}: {k}", v, spec[1], spec[2], lo_open=spec[3])
        else:
            require(isinstance(v, (list, tuple)) and 1 <= len(v) <= 3,
                    f"{where}: dims = {limits.shown(v, 40)}: expected a list of 1-3 sizes, e.g. [4, 4]")
            for x in v:
                limits.check_count(f"{where}: dims", x, "MAX_DEVICES")
            _check_size(name, math.prod(v), len(v) * math.prod(v))
    return d


def _nodes_for(name, gpus, gpn):
    require(gpus > 0, f"gpus = {gpus}: expected a positive integer")
    if gpus > gpn and gpus % gpn:
        raise ParsimError(f"gpus ({gpus}) is not a whole number of {name} nodes of {gpn} GPUs")
    return -(-gpus // gpn), min(gpn, gpus)


def _build(name: str, d: dict, gpus: int | None) -> Cluster:
    """A cluster from a preset-style mapping (``builder:`` plus its keys), sized to `gpus`."""
    check_cluster_mapping(name, d)
    builder = d.get("builder", "dgx")
    if gpus is not None:
        limits.check_count("gpus", gpus, "MAX_DEVICES")
    try:
        dev = str(d["device"])
        get_device(dev)
        meta = dict(d)
        if builder in ("dgx", "fat_tree", "rail"):
            gpn = int(d["gpus_per_node"])
            nodes, gpn_used = _nodes_for(name, gpn if gpus is None else int(gpus), gpn)
            common = dict(nvlink_Bps=_num(d, "nvlink_GBps") * GB, nvlink_latency_s=_num(d, "nvlink_latency_us") * US,
                          nic_Bps=_num(d, "nic_GBps") * GB, nic_latency_s=_num(d, "nic_latency_us") * US,
                          nvlink_efficiency=_num(d, "nvlink_efficiency", 1.0), nic_efficiency=_num(d, "nic_efficiency", 1.0),
                          meta=meta, nvlink_p2p_efficiency=d.get("nvlink_p2p_efficiency"))
            if builder == "dgx":
                c = dgx(name, nodes, gpn_used, dev, **common)
            elif builder == "fat_tree":
                c = fat_tree(name, nodes, gpn_used, dev, nodes_per_leaf=int(d.get("nodes_per_leaf", 4)),
                             spines=int(d.get("spines", 4)), oversubscription=_num(d, "oversubscription", 1.0),
                             uplink_latency_s=_num(d, "uplink_latency_us", 1.0) * US, **common)
            else:
                c = rail_optimized(name, nodes, gpn_used, dev, spines=int(d.get("spines", 2)),
                                   oversubscription=_num(d, "oversubscription", 1.0),
                                   uplink_latency_s=_num(d, "uplink_latency_us", 1.0) * US, **common)
        elif builder in ("ring", "torus", "full"):
            link = dict(link_Bps=_num(d, "link_GBps") * GB, latency_s=_num(d, "link_latency_us") * US,
                        efficiency=_num(d, "link_efficiency", 1.0), gpus_per_node=int(d.get("gpus_per_node", 1)), meta=meta)
            if builder == "torus":
                dims = [int(x) for x in d["dims"]]
                if gpus is not None and gpus != math.prod(dims):
                    raise ParsimError(f"cluster {name}: a {'x'.join(map(str, dims))} torus has {math.prod(dims)} devices, "
                                      f"not gpus = {gpus}")
                c = torus(name, dims, dev, **link)
            else:
                n = int(gpus if gpus is not None else d.get("devices", 8))
                c = (ring if builder == "ring" else fully_connected)(name, n, dev, **link)
        elif builder == "star":
            dph = int(d.get("gpus_per_node", 1))
            n = gpus if gpus is not None else int(d.get("hosts", 4)) * dph
            hosts, dph_used = _nodes_for(name, int(n), dph)
            c = star(name, hosts, dev, _num(d, "link_GBps") * GB, _num(d, "link_latency_us") * US,
                     _num(d, "link_efficiency", 1.0), dph_used, int(d.get("servers", 0)),
                     str(d.get("server_device", "cpu")), _num(d, "intra_GBps", 10.0) * GB, meta)
        else:
            raise ParsimError(f"cluster {name}: unknown builder {builder!r}: expected one of "
                              f"dgx, fat_tree, rail, ring, torus, full, star{closest(builder, BUILDER_NAMES)}")
    except KeyError as e:
        raise ParsimError(f"cluster {name}: missing key {e}; builder {builder} needs "
                          f"{', '.join(BUILDER_KEYS.get(builder, ('device',)))}") from None
    except (TypeError, ValueError) as e:
        raise ParsimError(f"cluster {name}: malformed ({type(e).__name__}: {e}); builder {builder} needs "
                          f"{', '.join(BUILDER_KEYS.get(builder, ('device',)))}") from None
    return validate(c, built=True)


BUILDER_NAMES = ("dgx", "fat_tree", "rail", "ring", "torus", "full", "star")
_NODE_KEYS = ("device", "gpus_per_node", "nvlink_GBps", "nvlink_latency_us", "nic_GBps", "nic_latency_us")
# optional per-link-class data: nvlink_p2p_efficiency = the share of the NVLink line rate a lone
# send/recv reaches (default: nvlink_efficiency, the collectives' share); see _node_links
BUILDER_KEYS = {"dgx": _NODE_KEYS, "fat_tree": _NODE_KEYS + ("nodes_per_leaf", "spines", "oversubscription"),
                "rail": _NODE_KEYS + ("spines",), "ring": ("device", "link_GBps", "link_latency_us"),
                "torus": ("device", "dims", "link_GBps", "link_latency_us"),
                "full": ("device", "link_GBps", "link_latency_us"),
                "star": ("device", "link_GBps", "link_latency_us", "servers")}


def _from_graph_mapping(name: str, d: dict) -> Cluster:
    """An explicit graph: ``nodes: [{id, kind, profile?, node?, role?}]``, ``links: [{a, b,
    bandwidth_GBps, latency_us, efficiency?, link?}]``, optional ``ranks:`` (device order)."""
    g = nx.Graph()
    where = f"cluster {limits.shown(str(name), 40)}"
    # every key read, refused when unknown (trial 2026-11-30: latncy_us, efficency, gpus_per_nod and profle were
    # accepted, the link falling back to 0 latency and efficiency 1)
    _known_keys(where, "", d, GRAPH_FILE_KEYS)
    for key, limit in (("nodes", "MAX_GRAPH_NODES"), ("links", "MAX_LINKS")):
        require(isinstance(d.get(key), list) and all(isinstance(x, dict) for x in d[key]),
                f"{where}: {key} must be a list of mappings, got {limits.shown(d.get(key), 40)}")
        require(len(d[key]) <= getattr(limits, limit), f"{where}: {len(d[key])} {key} is above the limit of "
                                                       f"{getattr(limits, limit)} (parsim.limits.{limit})")
    try:
        for i, n in enumerate(d["nodes"]):
            _known_keys(where, f"nodes[{i}].", n, GRAPH_NODE_KEYS)
            n = dict(n)
            g.add_node(str(n.pop("id")), **n)
        for i, e in enumerate(d["links"]):
            _known_keys(where, f"links[{i}].", e, GRAPH_LINK_KEYS)
            a, b = str(e["a"]), str(e["b"])
            for x in (a, b):
                require(x in g, f"cluster {name}: link {a} — {b} names an undeclared node {x!r}")
            link = f"{where}: link {limits.shown(a, 30)} — {limits.shown(b, 30)}"
            g.add_edge(a, b, **_link_class(
                limits.check_number(f"{link} bandwidth_GBps", e["bandwidth_GBps"], 0, "MAX_LINK_GBPS", True) * GB,
                limits.check_number(f"{link} latency_us", e.get("latency_us", 0.0), 0, "MAX_LINK_LATENCY_US") * US,
                limits.check_number(f"{link} efficiency", e.get("efficiency", 1.0), 0, 1, True),
                str(e.get("link", "direct")), link,
                **({"p2p_efficiency": limits.check_number(f"{link} p2p_efficiency", e["p2p_efficiency"], 0, 1, True)}
                   if e.get("p2p_efficiency") is not None else {})))
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ParsimError(f"cluster {name}: malformed graph ({what}); expected nodes: [{{id, kind, "
                          "profile}}] and links: [{a, b, bandwidth_GBps, latency_us}]") from None
    c = from_graph(name, g, d.get("ranks"), d.get("device"), d.get("gpus_per_node"), d.get("servers"))
    check_equal_hop_paths(c)
    return c


# The keys an explicit-graph cluster file may carry (what to_mapping writes, and a node's optional label)
GRAPH_FILE_KEYS = ("name", "device", "gpus_per_node", "ranks", "servers", "nodes", "links")
GRAPH_NODE_KEYS = ("id", "kind", "profile", "node", "local", "rank", "role", "tier", "label")
GRAPH_LINK_KEYS = ("a", "b", "bandwidth_GBps", "latency_us", "efficiency", "link", "p2p_efficiency")


def _known_keys(where: str, prefix: str, d: dict, known: tuple) -> None:
    """Refuse a key of mapping `d` outside `known`, naming it (after `prefix`, e.g. ``links[3].``) and the closest
    ones: a misspelt optional key would otherwise be ignored silently."""
    for k in d:
        if k not in known:
            raise ParsimError(f"{where}: unknown key {limits.shown(prefix + str(k), 40)}{closest(str(k), known)}; "
                              f"expected keys {', '.join(known)}")


def check_equal_hop_paths(c: "Cluster") -> None:
    """Refuse a graph where two devices reach each other over equally short paths of unequal bandwidth.

    parsim routes by hop count and splits a transfer equally over tied shortest paths (parsim.costs.network, ECMP),
    which is what a fabric does between equal paths, not between an NVSwitch and a NIC: two GPUs wired to a shared
    NIC as well as to their NVSwitch would send half their NVLink traffic through the NIC (trial 2026-11-30: a
    thin-NIC H200 file priced an 8-GPU ring 4x slower than the preset, unsaid). Checked on the two-hop paths
    between devices, through their neighbours: ParsimError naming the pair, both paths and the fix."""
    g = c.graph
    devs = set(c.devices) | set(c.servers)
    for u in c.devices:
        nb = {w: g.edges[u, w]["bandwidth"] for w in g[u] if w not in devs}
        if len(nb) < 2:
            continue
        ws = sorted(nb, key=lambda w: -nb[w])
        for i, hi in enumerate(ws):
            for lo in ws[i + 1:]:
                if nb[hi] < 2 * nb[lo]:
                    continue
                shared = [v for v in g[lo] if v in devs and v != u and v in g[hi]]
                if shared:
                    v = shared[0]
                    raise ParsimError(
                        f"cluster {c.name}: devices {limits.shown(str(u), 30)} and {limits.shown(str(v), 30)} reach "
                        f"each other over two equally short paths of unequal bandwidth, via {limits.shown(str(hi), 30)} "
                        f"({nb[hi] / GB:,.0f} GB/s) and via {limits.shown(str(lo), 30)} ({nb[lo] / GB:,.0f} GB/s): parsim "
                        f"splits traffic equally over equal-hop paths, so half of it would cross the slower one; give each "
                        f"device its own port node to {limits.shown(str(lo), 30)} (device - port - NIC) so that path is "
                        f"longer than the fast one")


def from_graph(name, g, ranks=None, device=None, gpus_per_node=None, servers=None) -> Cluster:
    """A Cluster over an existing graph: ranks = device nodes (``kind: device``, not ``role:
    server``) ordered by their ``rank``/``node``/``local`` attributes unless `ranks` is given;
    servers = devices with ``role: server``. Validated."""
    is_dev = [n for n, a in g.nodes(data=True) if a.get("kind") == "device" and a.get("role") != "server"]
    srv = tuple(servers) if servers else tuple(sorted(n for n, a in g.nodes(data=True)
                                                     if a.get("kind") == "device" and a.get("role") == "server"))
    for n in is_dev:   # integers (they order the ranks and name the server a device sits in)
        for k in ("node", "local", "rank"):
            if k in g.nodes[n]:
                limits.check_count(f"cluster {name}: device {limits.shown(n, 40)} {k}", g.nodes[n][k],
                                   "MAX_GRAPH_NODES", lo=0)
    if ranks is None:
        ranks = sorted(is_dev, key=lambda n: (g.nodes[n].get("rank", 0), g.nodes[n].get("node", 0),
                                              g.nodes[n].get("local", 0), str(n)))
    require(ranks, f"cluster {name}: no device nodes (kind: device)")
    require(isinstance(ranks, (list, tuple)), f"cluster {name}: ranks = {limits.shown(ranks, 40)}: expected a list of device names")
    ranks = tuple(str(r) for r in ranks)
    for r in ranks:
        require(r in g, f"cluster {name}: rank device {limits.shown(r, 40)} is not in the graph")
        for k in ("node", "local", "rank"):
            if k in g.nodes[r]:
                limits.check_count(f"cluster {name}: device {limits.shown(r, 40)} {k}", g.nodes[r][k], "MAX_GRAPH_NODES", lo=0)
    profiles = {g.nodes[r].get("profile") for r in ranks}
    if not device:
        require(profiles != {None}, f"cluster {name}: devices have no profile; set profile: on them or device: "
                                    "for the cluster")
        require(len(profiles) == 1, f"cluster {name}: devices name several profiles {sorted(map(str, profiles))}; "
                                    "set device: to the one the ranks use")
        device = profiles.pop()
    if gpus_per_node is None:
        per = {}
        for r in ranks:
            per[g.nodes[r].get("node", r)] = per.get(g.nodes[r].get("node", r), 0) + 1
        gpus_per_node = max(per.values())
    gpn = limits.check_count(f"cluster {name}: gpus_per_node", gpus_per_node, "MAX_DEVICES")
    return validate(Cluster(name, g, ranks, gpn, str(device), {"builder": "graph"}, srv))


def load_cluster(spec, gpus: int | None = None, order=None) -> Cluster:
    """A preset name, a YAML file (preset keys or an explicit graph) or a GraphML file, sized to
    `gpus` devices where the builder allows; `order` sets the rank placement (see ``place``)."""
    if gpus is not None:
        limits.check_count("gpus", gpus, "MAX_DEVICES")
    if isinstance(spec, Cluster):
        c = spec
    else:
        require(isinstance(spec, (str, Path)), f"cluster = {limits.shown(spec, 40)}: expected a Cluster, a preset "
                                               "name or a file path")
        presets = _presets()
        local = _calibrated_local(spec)
        if local is not None:
            c = _load_file(local, gpus)
        elif spec in presets:
            c = _build(spec, presets[spec], gpus)
        else:
            c = _load_file(spec, gpus)
    return place(c, order) if order is not None else c


def _calibrated_local(spec) -> str | None:
    """The measured loopback cluster `parsim calibrate` wrote (parsim.calibrate.local_cluster) when `spec` is the
    ``cpu-local`` preset, as the calibrated ``cpu`` device takes precedence over the catalog's: every command prices
    cpu-local alike (trial 2026-11-30: after calibrating, `run` predicted on the measured link and `predict
    --cluster cpu-local`, `collective` on the preset's placeholder). None otherwise."""
    if str(spec) != "cpu-local":
        return None
    from parsim.calibrate import local_cluster
    f = local_cluster()
    return None if f == "cpu-local" else f


def _load_file(spec, gpus):
    from parsim.fileio import exists, read_user_file
    p = Path(str(spec))
    if not exists(p):
        presets = _presets()
        raise ParsimError(unknown_preset("cluster", spec, presets, "parsim presets clusters"))
    if p.suffix.lower() == ".graphml":
        text = read_user_file(p, "cluster")   # regular file, size capped, no DOCTYPE/ENTITY
        try:
            g = nx.parse_graphml(text)
        except Exception as e:  # networkx and ElementTree raise several parser errors
            raise ParsimError(f"cannot read GraphML {limits.shown(str(p))}: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}") from None
        gr = nx.Graph(g)
        ga = g.graph
        c = from_graph(str(ga.get("name", p.stem)), gr, None, ga.get("device"), ga.get("gpus_per_node"))
        check_equal_hop_paths(c)
        return _resize(c, gpus)
    d = read_user_file(p, "cluster")   # regular file, size, nesting, no aliases or duplicate keys
    if not isinstance(d, dict):
        raise ParsimError(f"cluster file {p}: expected a mapping, got {type(d).__name__}")
    if isinstance(d.get("nodes"), list) or "links" in d:      # an explicit graph; else a preset's keys
        return _resize(_from_graph_mapping(str(d.get("name", p.stem)), d), gpus)
    return _build(str(d.get("name", p.stem)), d, gpus)


def _resize(c: Cluster, gpus):
    """An explicit graph has a fixed size: the first `gpus` devices, or an error if it has fewer."""
    if gpus is None or gpus == c.num_devices:
        return c
    require(gpus <= c.num_devices, f"cluster {c.name} has {c.num_devices} devices, fewer than gpus = {gpus}")
    # whole nodes, as a preset is sized (trial 2026-11-30: --gpus 30 of a 4 x 8 file priced "30 x h200", unsaid)
    require(not c.gpus_per_node or gpus % c.gpus_per_node == 0,
            f"gpus = {gpus} is not a whole number of {c.name} nodes ({c.gpus_per_node} devices each): expected a "
            f"multiple of {c.gpus_per_node} (the first gpus devices of the file are used)")
    return Cluster(c.name, c.graph, c.devices[:gpus], c.gpus_per_node, c.device_profile, c.meta, c.servers)


def to_mapping(c: Cluster) -> dict:
    """The explicit-graph YAML mapping of a cluster (units in the keys)."""
    nodes = [{"id": str(n), **{k: v for k, v in a.items()}} for n, a in c.graph.nodes(data=True)]
    links = []
    for u, v, a in c.graph.edges(data=True):
        rate = a.get("rate", a["bandwidth"] / a.get("efficiency", 1.0))
        links.append({"a": str(u), "b": str(v), "bandwidth_GBps": rate / GB, "efficiency": a.get("efficiency", 1.0),
                      "latency_us": a.get("latency", 0.0) / US, "link": a.get("link", "direct"),
                      **({"p2p_efficiency": a["p2p_efficiency"]} if "p2p_efficiency" in a else {})})
    return {"name": c.name, "device": c.device_profile, "gpus_per_node": c.gpus_per_node,
            "ranks": [str(d) for d in c.devices], "servers": [str(s) for s in c.servers],
            "nodes": nodes, "links": links}


def save_cluster(c: Cluster, path) -> Path:
    """Write YAML (explicit graph, units in keys) or GraphML (SI attributes; rank order kept as
    a ``rank`` attribute on devices) by the file suffix."""
    from parsim.outputs import CLUSTER, check_output_path, write_atomic
    p = check_output_path(path, CLUSTER, "cluster file")
    if p.suffix.lower() == ".graphml":
        g = c.graph.copy()
        for r, d in enumerate(c.devices):
            g.nodes[d]["rank"] = r
        g.graph.update(name=c.name, device=c.device_profile, gpus_per_node=c.gpus_per_node)
        return write_atomic(p, lambda f: nx.write_graphml(g, f), CLUSTER, "cluster file")
    return write_atomic(p, yaml.safe_dump(to_mapping(c), sort_keys=False), CLUSTER, "cluster file")


# ----------------------------------------------------------------------------- summaries

def link_classes(c: Cluster) -> list[dict]:
    """Links grouped by class: count, delivered bandwidth (GB/s = 1e9 B/s, each direction), latency."""
    out = {}
    for _, _, a in c.graph.edges(data=True):
        key = (a.get("link", "?"), round(a["bandwidth"], 3), a.get("latency", 0.0), a.get("efficiency", 1.0))
        out[key] = out.get(key, 0) + 1
    return [{"link": k[0], "count": n, "bandwidth_GBps": k[1] / GB, "efficiency": k[3], "latency_us": k[2] / US}
            for k, n in sorted(out.items(), key=lambda kv: (-kv[0][1], kv[0][0]))]


def bisection_Bps(c: Cluster) -> float:
    """Bandwidth (bytes/s, one direction) across the cut between the first and second half of the
    ranks (max-flow = min-cut). The true bisection is the minimum over all balanced cuts; for
    the node-major order of these builders the rank-halves cut is the usual worst case."""
    n = c.num_devices
    if n < 2:
        return 0.0
    g = nx.DiGraph()
    for u, v, a in c.graph.edges(data=True):
        g.add_edge(u, v, capacity=a["bandwidth"])
        g.add_edge(v, u, capacity=a["bandwidth"])
    for d in c.devices[: n // 2]:
        g.add_edge("_src", d)          # no capacity attribute = infinite
    for d in c.devices[n // 2:]:
        g.add_edge(d, "_dst")
    return float(nx.maximum_flow_value(g, "_src", "_dst"))


def draw(c: Cluster, path) -> Path:
    """A picture of the cluster: servers as boxes, fabric tiers in layers, a legend
    (parsim.topology_draw; matplotlib Agg, format by the file's suffix)."""
    from parsim import topology_draw
    return topology_draw.draw(c, path)
