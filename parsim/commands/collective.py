"""`parsim collective`: price a collective by algorithm and size on a cluster graph.

Per size and algorithm: time, algorithm bandwidth algbw = size/time and bus bandwidth
busbw = algbw·factor (nccl-tests PERFORMANCE.md: 2(p-1)/p for all-reduce). GB/s = 1e9 B/s.
"""
from __future__ import annotations

import sys

from parsim.commands.common import name_or_path, count, say_defaults
from parsim.errors import ParsimError, closest, require
from parsim.limits import MAX_SIZE_POINTS, require_finite, shown
from parsim.search import DEFAULT_CLUSTER

DEFAULT_ALGOS = {"allreduce": "ring,tree,hd,hierarchical,ps,native"}


def add_arguments(p):
    from parsim.costs.network import OPS
    p.add_argument("--op", default="allreduce", help=f"one of {', '.join(OPS)} (default allreduce)")
    p.add_argument("--algo", default=None, help="comma-separated algorithms (default: all-reduce "
                   f"{DEFAULT_ALGOS['allreduce']}; other ops: their algorithms and native)")
    p.add_argument("--size", default="1KiB:1GiB", help="per-rank buffer: LO:HI[:FACTOR] or a list (default 1KiB:1GiB)")
    p.add_argument("--gpus", type=count("MAX_DEVICES"), default=None, help="ranks (default: one node of the cluster)")
    p.add_argument("--cluster", type=name_or_path, default=None, help=f"preset or file (default {DEFAULT_CLUSTER}, said in the output)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--plot", metavar="FILE.png", help="busbw against size, one line per algorithm")


def rows(cluster, op: str, algos, sizes, ranks) -> list[dict]:
    from parsim.costs.network import bandwidths_Bps, collective_time_s
    out = []
    for algo in algos:
        for n in sizes:
            t = collective_time_s(cluster, op, algo, ranks, n)
            algbw, busbw = bandwidths_Bps(op, len(ranks), n, t)
            out.append({"op": op, "algo": algo, "size_bytes": int(n), "time_s": t,
                        "algbw_GBps": algbw / 1e9, "busbw_GBps": busbw / 1e9})
    return out


def run(a) -> int:
    from parsim.costs.network import ALGOS, OPS
    from parsim.schedules.collectives import algorithms
    from parsim.topology import load_cluster
    from parsim.units import fmt_bytes, fmt_time, parse_size_range
    require(a.op in OPS, f"--op {a.op!r}: expected one of {', '.join(OPS)}{closest(a.op, OPS)}")
    known = (*ALGOS, "ring-channels") if a.op == "allreduce" else (
        *algorithms(a.op), *(("ring-channels",) if a.op in ("reduce_scatter", "all_gather") else ()), "native")
    text = DEFAULT_ALGOS.get(a.op, ",".join(known)) if a.algo is None else a.algo
    algos = [x.strip() for x in text.split(",") if x.strip()]
    require(algos, f"--algo {a.algo!r} names no algorithm: expected a comma-separated list of {', '.join(known)}")
    for x in algos:
        require(x in known, f"--algo {x!r} is not a {a.op} algorithm: expected one of {', '.join(known)}{closest(x, known)}")
    _check_points(a.size)
    if a.plot:
        from parsim.outputs import FIGURE, check_output_path
        check_output_path(a.plot, FIGURE, "--plot")
    sizes = parse_size_range(a.size)
    require(len(sizes) <= MAX_SIZE_POINTS, f"--size {shown(a.size)} has {len(sizes)} sizes, above the limit of "
                                          f"{MAX_SIZE_POINTS} (parsim.limits.MAX_SIZE_POINTS)")
    require(len(sizes) > 0, f"--size {a.size!r} names no size: expected LO:HI[:FACTOR] or a list, e.g. 1KiB:1GiB")
    require(all(s > 0 for s in sizes), f"--size {a.size!r}: sizes must be positive")
    c = load_cluster(a.cluster or DEFAULT_CLUSTER, a.gpus)
    ranks = tuple(range(a.gpus or c.num_devices))
    require(len(ranks) >= 2, f"a collective needs at least 2 ranks, got --gpus {len(ranks)}")
    res = rows(c, a.op, algos, sizes, ranks)
    require_finite(f"{a.op} on {c.name}", time_s=[r["time_s"] for r in res], busbw_GBps=[r["busbw_GBps"] for r in res])
    if a.format == "json":
        from parsim.report import to_json
        sys.stdout.write(say_defaults(a, "") + to_json({"cluster": c.name, "ranks": len(ranks), "op": a.op,
                                  "units": "bytes, seconds, GB/s = 1e9 B/s", "rows": res}))
    else:
        from parsim.tables import text_table
        hdr = ["size", *[h for al in algos for h in (f"{al} time", f"{al} busbw GB/s")]]
        by = {(r["algo"], r["size_bytes"]): r for r in res}
        table = [[fmt_bytes(n), *[x for al in algos for x in (fmt_time(by[al, n]["time_s"]), f"{by[al, n]['busbw_GBps']:.1f}")]]
                 for n in sizes]
        sys.stdout.write(say_defaults(a, "") + text_table(hdr, table, f"{a.op} on {c.name}, {len(ranks)} ranks (busbw: nccl-tests "
                                                f"convention, GB/s = 1e9 B/s)"))
    if a.plot:
        _plot(res, algos, a.plot, f"{a.op} on {c.name}, {len(ranks)} ranks")
    return 0


def _check_points(text) -> None:
    """Refuse a LO:HI:FACTOR range of more than MAX_SIZE_POINTS sizes before it is built (a factor of
    1.0000001 would list 27 M sizes). Text the estimate cannot read is left to parse_size_range."""
    import math

    from parsim.units import parse_size
    lo, _, rest = str(text).partition(":")
    hi, _, factor = rest.partition(":")
    if not rest:
        return
    try:
        lo_b, hi_b, f = parse_size(lo), parse_size(hi), float(factor) if factor else 2.0
    except (ParsimError, ValueError, OverflowError):
        return
    if 0 < lo_b <= hi_b and math.isfinite(f) and f > 1 and math.isfinite(hi_b):
        n = math.log(hi_b / lo_b) / math.log(f) + 1
        require(n <= MAX_SIZE_POINTS, f"--size {shown(text)} has {n:.3g} sizes, above the limit of {MAX_SIZE_POINTS} "
                                      "(parsim.limits.MAX_SIZE_POINTS): use a larger factor")


def _plot(res, algos, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ParsimError(f"--plot needs matplotlib ({e})") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for al in algos:
        pts = [(r["size_bytes"], r["busbw_GBps"]) for r in res if r["algo"] == al]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=al)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size per rank (bytes)")
    ax.set_ylabel("busbw (GB/s, 1e9 B/s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from parsim.outputs import save_figure
    try:
        save_figure(fig, path, "--plot", dpi=120)
    finally:
        plt.close(fig)
