"""What people look at after a pipeline simulation: a Chrome trace and a Gantt chart.

Chrome trace: the Trace Event Format's complete events (``"ph": "X"``, times in
microseconds), one thread per rank, ops named ``F3``/``B3``/``W3`` with micro-batch,
stage and kind in ``args``; opens in Perfetto (ui.perfetto.dev) or chrome://tracing.
Gantt: matplotlib (Agg, imported only here), ranks as rows, idle time left blank.
"""
from __future__ import annotations

import json
from pathlib import Path

from parsim.schedules.pipeline import KIND_NAMES
from parsim.simulate import SimResult
from parsim.units import fmt_time

COLOURS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}
KIND_LONG = {"F": "forward", "B": "backward", "W": "weight-grad"}


def chrome_trace(result: SimResult) -> dict:
    """Trace Event Format dict: pid 0, tid = rank."""
    s = result.schedule
    long_b = "input-grad" if s.split_backward else "backward"
    meta = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
             "args": {"name": f"{s.name} pp={s.pp} m={s.microbatches} vpp={s.vpp}"}}]
    meta += [{"name": "thread_name", "ph": "M", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}}
             for r in range(s.pp)]
    ops = [{"name": f"{KIND_NAMES[k]}{i}", "cat": KIND_NAMES[k], "ph": "X", "pid": 0, "tid": int(r),
            "ts": a * 1e6, "dur": (b - a) * 1e6,
            "args": {"microbatch": int(i), "stage": int(st),
                     "kind": long_b if k == 1 else KIND_LONG[KIND_NAMES[k]]}}
           for r, k, i, st, a, b in zip(s.rank.tolist(), s.kind.tolist(), s.microbatch.tolist(),
                                        s.stage.tolist(), result.start_s.tolist(), result.end_s.tolist())]
    return {"traceEvents": meta + ops, "displayTimeUnit": "ms",
            "otherData": {"makespan_s": result.makespan_s, "bubble_fraction": result.bubble_fraction}}


def write_chrome_trace(result: SimResult, path) -> Path:
    from parsim.outputs import JSON, write_atomic
    return write_atomic(path, json.dumps(chrome_trace(result)), JSON, "--trace")


def gantt_title(result: SimResult) -> str:
    s = result.schedule
    v = f" v={s.vpp}" if s.vpp > 1 else ""
    return (f"{s.name} p={s.pp} m={s.microbatches}{v}: makespan {fmt_time(result.makespan_s)}, "
            f"bubble {result.bubble_fraction:.1%} of compute")


def write_gantt(result: SimResult, path, label_ops: int = 400) -> Path:
    """PNG Gantt chart: one row per rank (rank 0 on top), F/B/W coloured, idle blank.
    Ops are labelled with their micro-batch when there are at most ``label_ops`` of them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    s = result.schedule
    scale, unit = (1e3, "ms") if result.makespan_s < 10 else (1.0, "s")
    fig, ax = plt.subplots(figsize=(min(4 + s.n_ops / (3 * s.pp), 18), 0.8 + 0.45 * s.pp), dpi=110)
    rank = s.rank
    kinds_present = sorted(set(s.kind.tolist()))
    # one colour per kind; later virtual stages a lighter shade so interleaving is visible
    shades = {(k, c): to_rgba(COLOURS[KIND_NAMES[k]], 0.6 if c else 1.0) for k in range(3) for c in (0, 1)}
    colours = [shades[k, c] for k, c in zip(s.kind.tolist(), (s.stage // s.pp % 2).tolist())]
    x, w = result.start_s * scale, (result.end_s - result.start_s) * scale
    edge = dict(edgecolor="white", linewidth=0.4) if s.n_ops <= 4 * label_ops else dict(linewidth=0)
    off = s.rank_offsets
    for r in range(s.pp):    # one PolyCollection per rank: fast for 10^5 ops
        lo, hi = off[r], off[r + 1]
        ax.broken_barh(list(zip(x[lo:hi], w[lo:hi])), (r - 0.4, 0.8), facecolors=colours[lo:hi], **edge)
    if s.n_ops <= label_ops:
        for r, i, a, b in zip(rank, s.microbatch, result.start_s, result.end_s):
            ax.text((a + b) / 2 * scale, r, str(i), ha="center", va="center", fontsize=6, color="white")
    ax.set_yticks(range(s.pp), [f"rank {r}" for r in range(s.pp)])
    ax.set_ylim(s.pp - 0.5, -0.5)
    ax.set_xlim(0, result.makespan_s * scale)
    ax.set_xlabel(f"time ({unit}); blank = idle")
    ax.set_facecolor("#F2F2F2")
    names = {0: "forward", 1: "input-grad (B)" if s.split_backward else "backward", 2: "weight-grad (W)"}
    ax.legend(handles=[Patch(color=COLOURS[KIND_NAMES[k]], label=names[k]) for k in kinds_present],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(gantt_title(result), fontsize=10)
    fig.tight_layout()
    from parsim.outputs import save_figure
    try:
        return save_figure(fig, path, "--gantt")
    finally:
        plt.close(fig)
