"""`parsim topology show|save`: summarise, draw or export a cluster graph."""
from __future__ import annotations

import sys

from parsim.commands.common import name_or_path, count, say_defaults
from parsim.search import DEFAULT_CLUSTER


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    show = sub.add_parser("show", help="devices, links by class, bisection bandwidth")
    save = sub.add_parser("save", help="write the graph as YAML (units in keys) or GraphML")
    for q in (show, save):
        q.add_argument("--cluster", type=name_or_path, default=None, help=f"preset or file (default {DEFAULT_CLUSTER}, said in the output)")
        q.add_argument("--gpus", type=count("MAX_DEVICES"), default=None, help="size the preset to this many devices")
    show.add_argument("--draw", metavar="FILE.png", help="draw the graph (matplotlib)")
    show.add_argument("--format", choices=("table", "json"), default="table")
    save.add_argument("--out", required=True, metavar="FILE.yaml|FILE.graphml")


def summary(c) -> dict:
    """The cluster in numbers; bisection_GBps is None above parsim.limits.MAX_BISECTION_DEVICES devices."""
    from parsim.limits import MAX_BISECTION_DEVICES
    from parsim.topology import bisection_Bps, link_classes
    kinds = {}
    for _, a in c.graph.nodes(data=True):
        kinds[a.get("kind", "?")] = kinds.get(a.get("kind", "?"), 0) + 1
    return {"cluster": c.name, "builder": c.meta.get("builder", ""), "device": c.device_profile,
            "devices": c.num_devices, "gpus_per_node": c.gpus_per_node,
            "nodes": len({c.node_of(r) for r in range(c.num_devices)}), "servers": list(c.servers),
            "graph_nodes_by_kind": kinds, "links": c.graph.number_of_edges(), "link_classes": link_classes(c),
            "bisection_GBps": bisection_Bps(c) / 1e9 if c.num_devices <= MAX_BISECTION_DEVICES else None,
            "source": c.meta.get("source", "")}


def run(a) -> int:
    from parsim.errors import ParsimError
    from parsim.topology import draw, load_cluster, save_cluster
    if not getattr(a, "action", None):
        raise ParsimError("topology: expected an action: show or save")
    from parsim.outputs import CLUSTER, FIGURE, check_output_path
    if a.action == "save":
        check_output_path(a.out, CLUSTER, "--out")
    elif a.draw:
        check_output_path(a.draw, FIGURE, "--draw")
    c = load_cluster(a.cluster or DEFAULT_CLUSTER, a.gpus)
    if a.action == "save":
        say_defaults(a, "")
        p = save_cluster(c, a.out)
        print(f"wrote {p} ({c.num_devices} devices, {c.graph.number_of_edges()} links)")
        return 0
    s = summary(c)
    from parsim.limits import require_finite
    require_finite(f"cluster {c.name}", bisection_GBps=s["bisection_GBps"])
    from parsim.limits import MAX_BISECTION_DEVICES
    bis = (f"{s['bisection_GBps']:.1f} GB/s per direction" if s["bisection_GBps"] is not None else
           f"not computed above {MAX_BISECTION_DEVICES} devices (parsim.limits.MAX_BISECTION_DEVICES)")
    if a.format == "json":
        from parsim.report import to_json
        sys.stdout.write(say_defaults(a, "") + to_json(s))
    else:
        from parsim.tables import text_table
        head = (f"{s['cluster']} ({s['builder']}): {s['devices']} × {s['device']} on {s['nodes']} node(s), "
                f"{s['gpus_per_node']} per node; graph nodes {s['graph_nodes_by_kind']}"
                + (f"; dedicated servers {len(s['servers'])}" if s["servers"] else "") + "\n")
        rows = [[l["link"], l["count"], f"{l['bandwidth_GBps']:.2f}", f"{l['efficiency']:.2f}", f"{l['latency_us']:.1f}"]
                for l in s["link_classes"]]
        sys.stdout.write(say_defaults(a, head) + text_table(["link", "count", "bandwidth GB/s", "efficiency", "latency us"], rows,
                                           "links by class (bandwidth delivered per direction = rate × efficiency)",
                                           f"bisection (first vs second half of the ranks, max-flow): "
                                           f"{bis}; GB = 1e9 B"
                                           + (f"\nsource: {s['source']}" if s["source"] else "")))
    if a.draw:
        p = draw(c, a.draw)
        print(f"drew {p}")
    return 0
