"""A cluster graph as a picture people can read: servers as boxes, fabric tiers in layers, a legend.

``layout(cluster)`` is pure (no matplotlib): it places every graph node from the graph's own data,
for any builder or graph file, with no picture per preset:

- *servers*: the graph nodes that carry a ``node`` attribute (devices, their NICs, a node-local
  switch such as the NVSwitch) plus host nodes whose devices all sit in one server, drawn as one
  box per server: node-local switches in the bottom row, devices above them, NICs and hosts on
  top (where the fabric attaches);
- *fabric tiers*: every other node (leaf, rail and spine switches, a star's switch) in layers above
  the boxes, tier = hops from the nearest server member (leaf 1, spine 2, ...), ordered within a
  tier by the mean position of the nodes it links below (fewer crossings), spread evenly;
- *direct networks* (devices linked to devices, no switch: ring, torus, fully connected): a torus
  whose ``dims`` the cluster records is drawn as its grid (3D: its planes side by side, wrap-around
  links as arcs); any other direct network on a circle.

``draw(cluster, path)`` renders it with matplotlib (Agg): link classes in colours, line width
proportional to bandwidth, the links of one server to one switch drawn as one bundle labelled
with their count, and a legend of node kinds and link classes (delivered GB/s per direction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

ROW_SWITCH, ROW_DEVICE, ROW_UPLINK = "node switch", "device", "nic/host"
BOX_GAP = 1.5          # x units between server boxes (a member takes 1 unit)
TIER_STEP = 2.5        # y units between fabric tiers


@dataclass
class Layout:
    """Positions in plot units (x right, y up) and what the drawing groups.

    pos: graph node -> (x, y); boxes: server index -> (x0, y0, x1, y1) with its members in
    `members`; tiers: fabric tier (1 = next to the servers) -> its graph nodes, in x order;
    direct: True for a network of device-to-device links (no boxes, no tiers); arcs: edges drawn
    as arcs (a torus's wrap-around links)."""
    pos: dict
    boxes: dict = field(default_factory=dict)
    members: dict = field(default_factory=dict)
    tiers: dict = field(default_factory=dict)
    direct: bool = False
    arcs: set = field(default_factory=set)
    faint: set = field(default_factory=set)     # edges drawn light and dashed (a 3D torus's plane-to-plane links)

    @property
    def width(self) -> float:
        xs = [p[0] for p in self.pos.values()]
        return max(xs) - min(xs) if xs else 0.0


def _kind(g, n) -> str:
    return g.nodes[n].get("kind", "?")


def _servers(c) -> dict:
    """Server index -> its graph nodes: those with a ``node`` attribute, and non-switch nodes
    without one whose device neighbours all sit in one server (a host above its devices)."""
    g = c.graph
    members: dict = {}
    for n, a in g.nodes(data=True):
        if "node" in a:
            members.setdefault(int(a["node"]), []).append(n)
    for n, a in g.nodes(data=True):
        if "node" in a or a.get("kind") == "switch":
            continue
        homes = {int(g.nodes[m]["node"]) for m in g[n] if _kind(g, m) == "device" and "node" in g.nodes[m]}
        if len(homes) == 1:
            members[homes.pop()].append(n)
    return dict(sorted(members.items()))


def _row(g, n) -> str:
    k = _kind(g, n)
    return ROW_DEVICE if k == "device" else ROW_SWITCH if k == "switch" else ROW_UPLINK


def _order_key(g, n):
    a = g.nodes[n]
    return (a.get("local", 0) if isinstance(a.get("local", 0), int) else 0, str(n))


def _direct_layout(c, lay: Layout) -> Layout:
    g = c.graph
    devs = list(c.devices) + [s for s in c.servers if s not in c.devices]
    devs += [n for n in g if n not in set(devs)]
    dims = [int(d) for d in (c.meta.get("dims") or [])]
    if dims and 2 <= len(dims) <= 3 and math.prod(dims) == len(c.devices) == len(g):
        if len(dims) == 2:
            dims = [1] + dims
        planes, rows, cols = dims
        for i, d in enumerate(c.devices):
            a, rest = divmod(i, rows * cols)
            b, k = divmod(rest, cols)
            lay.pos[d] = (k + a * (cols + BOX_GAP), -float(b))
        plane = {d: i // (rows * cols) for i, d in enumerate(c.devices)}
        for u, v in g.edges():
            (xu, yu), (xv, yv) = lay.pos[u], lay.pos[v]
            if abs(xu - xv) + abs(yu - yv) > 1.0 + 1e-9:     # wrap-around (or a plane-to-plane) link
                lay.arcs.add((u, v))
            if plane[u] != plane[v]:
                lay.faint.add((u, v))
    else:
        n = len(devs)
        r = max(1.0, n / (2 * math.pi))                      # about one unit between neighbours
        for i, d in enumerate(devs):
            t = math.pi / 2 - 2 * math.pi * i / n
            lay.pos[d] = (r * math.cos(t), r * math.sin(t))
    lay.direct = True
    return lay


def layout(c) -> Layout:
    """Where every node of cluster `c`'s graph goes (see the module docstring); pure, no matplotlib."""
    import networkx as nx
    g = c.graph
    lay = Layout(pos={})
    members = _servers(c)
    inside = {n for ms in members.values() for n in ms}
    outside = [n for n in g if n not in inside]
    if not outside and all(len(ms) == 1 for ms in members.values()):
        return _direct_layout(c, lay)
    rows = [r for r in (ROW_SWITCH, ROW_DEVICE, ROW_UPLINK) if any(_row(g, n) == r for n in inside)]
    y_of = {r: float(i) for i, r in enumerate(rows)}
    x0 = 0.0
    for s, ms in members.items():
        by_row = {r: sorted((n for n in ms if _row(g, n) == r), key=lambda n: _order_key(g, n)) for r in rows}
        w = max(1, max(len(v) for v in by_row.values()))
        for r, ns in by_row.items():
            for i, n in enumerate(ns):   # centred in the box: one node-local switch sits in the middle
                lay.pos[n] = (x0 + (w - len(ns)) / 2 + i, y_of[r])
        lay.boxes[s] = (x0 - 0.5, -0.5, x0 + w - 0.5, len(rows) - 0.5)
        lay.members[s] = ms
        x0 += w + BOX_GAP
    width = max(x0 - BOX_GAP - 1, 0.0)
    if outside:
        hops = nx.multi_source_dijkstra_path_length(g, inside, weight=lambda u, v, d: 1) if inside else {}
        tiers: dict = {}
        for n in outside:
            tiers.setdefault(int(hops.get(n, 1)), []).append(n)
        top = len(rows) - 0.5
        for t in sorted(tiers):
            def below(n):
                xs = [lay.pos[m][0] for m in g[n] if m in lay.pos and lay.pos[m][1] < top + (t - 0.5) * TIER_STEP]
                return sum(xs) / len(xs) if xs else width / 2
            ns = sorted(tiers[t], key=lambda n: (below(n), str(n)))
            for i, n in enumerate(ns):
                lay.pos[n] = (width * (i + 0.5) / len(ns), top + t * TIER_STEP)
            lay.tiers[t] = ns
    return lay


# ----------------------------------------------------------------------------- drawing

LINK_COLOURS = {"nvlink": "tab:green", "pcie": "tab:gray", "nic": "tab:orange", "uplink": "tab:blue",
                "direct": "tab:red", "host": "tab:purple", "local": "tab:gray"}
NODE_STYLE = {  # kind -> (marker, colour, label)
    "device": ("s", "tab:green", "device (GPU)"), "server": ("s", "tab:purple", "parameter-server device"),
    "nic": ("o", "tab:orange", "NIC"), "node switch": ("D", "tab:olive", "node-local switch (NVSwitch)"),
    "switch": ("D", "tab:blue", "fabric switch (leaf / rail / spine)"), "host": ("^", "tab:purple", "host")}


def _style_of(g, n, inside) -> str:
    a = g.nodes[n]
    k = a.get("kind", "?")
    if k == "device":
        return "server" if a.get("role") == "server" else "device"
    if k == "switch":
        return "node switch" if n in inside else "switch"
    return k if k in NODE_STYLE else "host"


def draw(c, path) -> Path:
    """A PNG (any matplotlib format by the suffix) of cluster `c` laid out by :func:`layout`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Rectangle

    from parsim.topology import link_classes
    g = c.graph
    lay = layout(c)
    inside = {n for ms in lay.members.values() for n in ms}
    xs = [p[0] for p in lay.pos.values()]
    ys = [p[1] for p in lay.pos.values()]
    span_x, span_y = max(xs) - min(xs) + 2, max(ys) - min(ys) + 2
    if lay.direct:   # equal aspect; the legend takes about 3.5 inches on the right
        scale = min(0.75, 12.0 / span_x, 10.0 / span_y)
        w_in, h_in = 4.5 + scale * span_x, max(3.5, 1.0 + scale * span_y)
    else:
        w_in = min(30.0, max(8.0, 1.0 + 0.26 * span_x))
        h_in = min(12.0, max(4.5, 2.5 + 0.75 * span_y))
    fig, ax = plt.subplots(figsize=(w_in, h_in))
    unit_pt = 72 * w_in / span_x                       # points per x unit: marker sizes follow the density
    ms = max(3.0, min(14.0, 0.55 * unit_pt))
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    top_bw = max((a["bandwidth"] for _, _, a in g.edges(data=True)), default=1.0) or 1.0
    lw = lambda bw: 0.6 + 2.4 * bw / top_bw            # noqa: E731

    # many servers: each drawn as its box alone (members, their links and labels would be a smear)
    compact = len(lay.boxes) > 32
    for s, (x0, y0, x1, y1) in lay.boxes.items():
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="0.96", edgecolor="0.55", lw=0.8, zorder=0))
        if len(lay.boxes) <= 64:
            ps = any(g.nodes[n].get("role") == "server" for n in lay.members[s])
            ax.text((x0 + x1) / 2, y0 - 0.15, f"node {s}" + (" (server)" if ps else ""), ha="center", va="top",
                    fontsize=7, color="0.3")

    # links: those of one server to one outside node as one bundle; the rest one by one
    home = {n: s for s, mem in lay.members.items() for n in mem}
    bundles, single = {}, []
    for u, v, a in g.edges(data=True):
        if compact and u in home and v in home and home[u] == home[v]:
            continue
        if (u in home) != (v in home):
            m, o = (u, v) if u in home else (v, u)
            bundles.setdefault((home[m], o, a.get("link", "?")), []).append((m, a))
        else:
            single.append((u, v, a))
    segs: dict = {}
    for (s, o, link), es in bundles.items():
        if len(es) == 1:
            single.append((es[0][0], o, es[0][1]))
            continue
        mx = sum(lay.pos[m][0] for m, _ in es) / len(es)
        my = lay.boxes[s][3]                            # from the box's edge: the server's links as one
        bw = sum(a["bandwidth"] for _, a in es)
        # one line for len(es) links: the width of one, thickened with the count (log, capped)
        segs.setdefault(link, []).append((((mx, my), lay.pos[o]), min(6.0, lw(bw / len(es)) * (1 + math.log2(len(es)) / 2))))
        ox, oy = lay.pos[o]
        if compact:
            continue
        ax.text(mx + 0.3 * (ox - mx), my + 0.3 * (oy - my), f"{len(es)}×", fontsize=7, color="0.25",
                ha="center", va="center", bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8), zorder=4)
    for u, v, a in single:
        link = a.get("link", "?")
        if (u, v) in lay.arcs or (v, u) in lay.arcs:
            # bulge away from the grid's centre, about 0.4 units for a 4-wide wrap (peak = rad · length / 2)
            (xu, yu), (xv, yv) = lay.pos[u], lay.pos[v]
            dx, dy = xv - xu, yv - yu
            out = ((xu + xv) / 2 - cx, (yu + yv) / 2 - cy)
            if abs(out[0]) + abs(out[1]) < 1e-9:
                out = (0.0, -1.0)
            side = 1.0 if dy * out[0] - dx * out[1] >= 0 else -1.0     # matplotlib's arc3 bends by rad·(dy, -dx)
            edge = abs((xu + xv) / 2 - cx) >= (max(xs) - min(xs)) / 2 - 1e-9 or \
                abs((yu + yv) / 2 - cy) >= (max(ys) - min(ys)) / 2 - 1e-9
            peak = 0.45 if edge else 0.25                 # units: outer wraps outside, inner ones near their row
            rad = side * 2 * peak / max(1.0, math.hypot(dx, dy))
            faint = (u, v) in lay.faint or (v, u) in lay.faint
            ax.add_patch(FancyArrowPatch(lay.pos[u], lay.pos[v], arrowstyle="-", connectionstyle=f"arc3,rad={rad}",
                                         color=LINK_COLOURS.get(link, "0.4"), lw=lw(a["bandwidth"]) * (0.5 if faint else 1),
                                         alpha=0.25 if faint else 0.6, ls="--" if faint else "-", zorder=1,
                                         shrinkA=4, shrinkB=4))
            continue
        segs.setdefault(link, []).append(((lay.pos[u], lay.pos[v]), lw(a["bandwidth"])))
    for link, items in segs.items():
        ax.add_collection(LineCollection([s for s, _ in items], linewidths=[w for _, w in items],
                                         colors=LINK_COLOURS.get(link, "0.4"), alpha=0.6, zorder=1))

    by_style: dict = {}
    for n in g:
        by_style.setdefault(_style_of(g, n, inside), []).append(n)
    drawn = []
    for st, ns in by_style.items():
        marker, colour, _ = NODE_STYLE[st]
        if compact:
            ns = [n for n in ns if n not in home]
            if not ns:
                continue
        drawn.append(st)
        size = ms * (1.4 if st in ("switch", "node switch") else 1.0 if st in ("device", "server") else 0.7)
        ax.plot([lay.pos[n][0] for n in ns], [lay.pos[n][1] for n in ns], marker, ms=size, color=colour,
                mec="black", mew=0.4, ls="none", zorder=3)
    # names: fabric switches always; devices by rank when there are few enough to read
    for ns in lay.tiers.values():
        for n in ns:
            x, y = lay.pos[n]
            ax.text(x, y + 0.35, str(n), ha="center", va="bottom", fontsize=7, zorder=5)
    if compact:
        for s, (x0, y0, x1, y1) in lay.boxes.items():
            n_dev = sum(1 for n in lay.members[s] if g.nodes[n].get("kind") == "device")
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(n_dev), ha="center", va="center", fontsize=6, rotation=90)
    elif len(c.devices) <= 128:
        rank = {d: r for r, d in enumerate(c.devices)}
        for d, r in rank.items():
            x, y = lay.pos[d]
            ax.text(x, y, str(r), ha="center", va="center", fontsize=max(4.0, min(7.0, ms * 0.55)), color="white",
                    zorder=4)

    handles = [Line2D([], [], marker=NODE_STYLE[st][0], color=NODE_STYLE[st][1], mec="black", mew=0.4, ls="none",
                      ms=7, label=NODE_STYLE[st][2] + (" (number = rank)" if st == "device" and len(c.devices) <= 128
                                                       else ""))
               for st in NODE_STYLE if st in drawn]
    if lay.boxes:
        handles.insert(0, Rectangle((0, 0), 1, 1, facecolor="0.96", edgecolor="0.55",
                                    label="server (node)" + (": number = its devices" if compact else "")))
    seen = set()
    for lc in link_classes(c):
        key = lc["link"]
        label = f"{key}: {lc['bandwidth_GBps']:.4g} GB/s per direction, ×{lc['count']}"
        if key in seen:
            label = f"{key}: {lc['bandwidth_GBps']:.4g} GB/s, ×{lc['count']}"
        seen.add(key)
        handles.append(Line2D([], [], color=LINK_COLOURS.get(key, "0.4"), lw=lw(lc["bandwidth_GBps"] * 1e9), label=label))
    if lay.faint:
        handles.append(Line2D([], [], color="0.5", lw=1, ls="--", alpha=0.6, label="dashed: links between the planes"))
    bundled = any(len(es) > 1 for es in bundles.values())
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False,
              title="line width ∝ bandwidth" + ("; N× = N links bundled" if bundled else ""), title_fontsize=7)
    nodes = len({c.node_of(r) for r in range(c.num_devices)})
    ax.set_title(f"{c.name}: {c.num_devices} × {c.device_profile} in {nodes} node(s), {g.number_of_edges()} links",
                 fontsize=9)
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.set_aspect("equal" if lay.direct else "auto")
    ax.axis("off")
    fig.tight_layout()
    from parsim.outputs import save_figure
    try:
        return save_figure(fig, path, "--draw", dpi=100)
    finally:
        plt.close(fig)
