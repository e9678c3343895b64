"""Cluster: a networkx graph of devices, NICs and switches, plus rank placement.

Nodes carry ``kind`` (device | nic | switch | host) and devices a ``profile`` name;
edges carry ``bandwidth`` (bytes/s, each direction, full duplex) and ``latency`` (s).
Ranks map to devices in ``Cluster.devices`` order (node-major).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import yaml

from parsim.errors import ParsimError, closest
from parsim.hardware import DeviceProfile, get_device

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True, eq=False)
class Cluster:
    name: str
    graph: nx.Graph
    devices: tuple              # device node names; rank r runs on devices[r]
    gpus_per_node: int
    device_profile: str
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> DeviceProfile:
        return get_device(self.device_profile)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def __hash__(self):
        return id(self)


def dgx(name: str, nodes: int, gpus_per_node: int, device: str, nvlink_Bps: float, nvlink_latency_s: float,
        nic_Bps: float, nic_latency_s: float, nvlink_efficiency: float = 1.0, nic_efficiency: float = 1.0,
        meta: dict | None = None) -> Cluster:
    """DGX-style nodes: GPUs on an NVSwitch, one NIC per GPU, all NICs on one non-blocking fabric switch."""
    g = nx.Graph()
    devices = []
    g.add_node("fabric", kind="switch")
    for n in range(nodes):
        sw = f"n{n}/nvswitch"
        g.add_node(sw, kind="switch")
        for i in range(gpus_per_node):
            d, nic = f"n{n}/gpu{i}", f"n{n}/nic{i}"
            g.add_node(d, kind="device", profile=device, node=n)
            g.add_node(nic, kind="nic", node=n)
            g.add_edge(d, sw, bandwidth=nvlink_Bps * nvlink_efficiency, latency=nvlink_latency_s, link="nvlink")
            g.add_edge(d, nic, bandwidth=nic_Bps * nic_efficiency, latency=0.0, link="pcie")
            g.add_edge(nic, "fabric", bandwidth=nic_Bps * nic_efficiency, latency=nic_latency_s, link="nic")
            devices.append(d)
    return Cluster(name, g, tuple(devices), gpus_per_node, device, dict(meta or {}))


@functools.lru_cache(maxsize=None)
def _presets() -> dict:
    return yaml.safe_load((DATA / "clusters.yaml").read_text())


def cluster_names() -> list[str]:
    return list(_presets())


def _build(name: str, d: dict, gpus: int | None) -> Cluster:
    try:
        gpn = int(d["gpus_per_node"])
        if gpus is None:
            gpus = gpn
        if gpus <= 0:
            raise ParsimError(f"gpus = {gpus}: expected a positive integer")
        nodes = -(-gpus // gpn)
        gpn_used = min(gpn, gpus)
        if gpus > gpn and gpus % gpn:
            raise ParsimError(f"gpus ({gpus}) is not a whole number of {name} nodes of {gpn} GPUs")
        get_device(d["device"])
        return dgx(name, nodes, gpn_used, d["device"], float(d["nvlink_GBps"]) * 1e9, float(d["nvlink_latency_us"]) * 1e-6,
                   float(d["nic_GBps"]) * 1e9, float(d["nic_latency_us"]) * 1e-6,
                   float(d.get("nvlink_efficiency", 1.0)), float(d.get("nic_efficiency", 1.0)), meta=d)
    except (KeyError, TypeError, ValueError) as e:
        raise ParsimError(f"cluster {name}: malformed ({type(e).__name__}: {e}); expected keys device, gpus_per_node, "
                          "nvlink_GBps, nvlink_latency_us, nic_GBps, nic_latency_us") from None


def load_cluster(spec, gpus: int | None = None) -> Cluster:
    """A preset name or a YAML file with the same keys, sized to `gpus` devices."""
    if isinstance(spec, Cluster):
        return spec
    presets = _presets()
    if spec in presets:
        return _build(spec, presets[spec], gpus)
    p = Path(str(spec))
    if not p.exists():
        raise ParsimError(f"unknown cluster {spec!r}: not a preset and no such file{closest(spec, presets)} "
                          f"(presets: {', '.join(presets)})")
    try:
        d = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ParsimError(f"cannot read cluster file {p}: {type(e).__name__}") from None
    if not isinstance(d, dict):
        raise ParsimError(f"cluster file {p}: expected a mapping, got {type(d).__name__}")
    return _build(p.stem, d, gpus)


def group_ranks(plan, kind: str, index: int = 0) -> tuple:
    """Ranks of the `index`-th process group of `kind` (tp | pp | dp) under tp-innermost placement."""
    tp, pp, dp = plan.tp, plan.pp, plan.dp
    if kind == "tp":
        return tuple(range(index * tp, index * tp + tp))
    if kind == "pp":
        base = (index // tp) * (tp * pp) + index % tp
        return tuple(base + i * tp for i in range(pp))
    if kind == "dp":
        return tuple(index + i * tp * pp for i in range(dp))
    raise AssertionError(kind)
