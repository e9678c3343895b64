"""Collective micro-benchmarks on emulated clusters, prediction beside measurement.

    python studies/netem/sweep.py [--quick] [--only A,C] [--out reports/netem]
    python studies/netem/sweep.py --repredict reports/netem/sweep.json --out DIR   # new model, same data

Each configuration is one emulated cluster (namespaces + tbf-shaped veths): its
links are probed first, then one process group per configuration runs every
(algorithm, size) point `repeats` times after a warm-up, and rank 0 reports
median and spread beside the time parsim predicts on the graph with the
measured link rates (cheap points are repeated more: until MIN_TIME_S of them is
timed, at most MAX_REPEATS). Sizes are chosen per link rate so each point takes at most
a few seconds (the machine has 2 shared cores: fewer points, repeated).

Writes <out>/sweep.json and <out>/sweep.png and prints the table, the mean
absolute error, the ordering check and the ring-vs-link-rate check. Root,
iproute2 and tc are required (the emulation); torch for the ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backends.netem import presets  # noqa: E402
from parsim.units import fmt_bytes, parse_rate  # noqa: E402

ALL = "ring,native,tree,hd,hierarchical,ps,ps-central"
# name: (preset, preset kwargs, link, ranks per host, algorithms, sizes, repeats)
CONFIGS = {
    "A": ("switch", dict(hosts=4), "200Mbit", 1, ALL, "4KiB,1MiB,16MiB", 3),
    "B": ("switch", dict(hosts=4), "1Gbit", 1, "ring,native,hd,ps-central", "1MiB,16MiB,64MiB", 3),
    "C": ("switch", dict(hosts=8), "100Mbit", 1, "ring,native,tree,hd,ps,ps-central", "4KiB,256KiB,2MiB", 3),
    "D": ("ps", dict(hosts=4, servers=2), "200Mbit", 1, "ring,ps-central,ps-sharded", "1MiB,8MiB", 3),
    "E": ("racks", dict(hosts=4, oversubscription=2.0), "200Mbit", 2, "ring,native,hierarchical", "1MiB,8MiB", 3),
    "F": ("switch", dict(hosts=2), "1Gbit", 1, "ring,native,ps-central", "1MiB,16MiB", 3),
}
QUICK = {"A": "1MiB,4MiB", "B": "1MiB,16MiB", "C": "256KiB", "D": "1MiB", "E": "1MiB", "F": "1MiB"}
RUN_TIMEOUT_S = 420
LAUNCHES = 3     # separate launches of the ranks per configuration; a point is the median of their medians
from backends.torchdist.bench import MAX_REPEATS, MIN_TIME_S  # noqa: E402  (the protocol calibration uses too)
PRED_TIE = 0.02  # predictions within 2% of each other count as "the model calls it a tie"


def _launch(emu, job, name):
    """One launch of the benchmark's ranks in the emulated hosts, through the one launcher
    (backends.torchdist.launch, each rank behind its host's ``ip netns exec`` prefix); rank 0's points."""
    from backends.torchdist import bench
    from backends.torchdist.launch import RunFailed
    from parsim.commands.emulate import rank_prefixes
    pre = dict(rank_prefixes(emu))
    try:
        return bench.launch_job(job, len(pre), RUN_TIMEOUT_S, rank_prefix=pre.__getitem__,
                                local_ranks=max(1, len(pre) // max(1, len(emu.plan.hosts))))
    except RunFailed as e:
        raise SystemExit(f"config {name}: {e}") from None


def merge_launches(runs):
    """One point per (algo, size) from several launches: the median of the launches' medians
    (launches differ by up to 2x at 4 KiB on this VM: process placement, wake-ups), all samples
    kept for the spread; each launch's median and error stay in the point."""
    out = []
    for pts in zip(*runs):
        first = dict(pts[0])
        assert all((q["algo"], q["size_B"]) == (first["algo"], first["size_B"]) for q in pts)
        meds = [q["median_s"] for q in pts]
        med = statistics.median(meds)
        times = [t for q in pts for t in q["times_s"]]
        first.update(times_s=times, repeats=len(times), median_s=med, min_s=min(times), max_s=max(times),
                     spread=(max(times) - min(times)) / med, launch_medians_s=meds,
                     launch_errors=[(first["predicted_s"] - m) / m for m in meds],
                     error=(first["predicted_s"] - med) / med, correct=all(q["correct"] for q in pts))
        out.append(first)
    return out


def run_config(name, preset, kw, link, rph, algos, sizes, repeats, launches=LAUNCHES):
    from backends.netem.cluster import Emulation
    from backends.netem.probe import probe_pairs
    g = presets.build(preset, bandwidth_Bps=parse_rate(link), devices_per_host=rph, **kw)
    t0 = time.monotonic()
    load_before = os.getloadavg()
    with Emulation(g, ranks_per_host=rph) as emu:
        emu.probes = probe_pairs(emu)
        emu.write_state()
        from backends.torchdist.bench import make_job
        job = make_job("allreduce", algos, sizes, repeats, 1, MIN_TIME_S, MAX_REPEATS, world=len(emu.ranks()),
                       netem_state=emu.state_file)
        points = merge_launches([_launch(emu, job, name) for _ in range(launches)])
        probes = emu.probes
    link_Bps = statistics.median(p["measured_Bps"] for p in probes)
    for pt in points:
        pt.update(config=name, preset=preset, link=link, link_configured_Bps=parse_rate(link),
                  link_measured_Bps=link_Bps, ranks_per_host=rph,
                  hosts=sum(1 for n in g if g.nodes[n].get("kind") == "host"))
    print(f"config {name}: {preset} {kw} {link} x{rph}/host: {len(points)} points in {time.monotonic() - t0:.0f} s; "
          f"probe {link_Bps * 8 / 1e6:.1f} Mbit/s of {parse_rate(link) * 8 / 1e6:.0f}", flush=True)
    return {"name": name, "preset": preset, "kwargs": kw, "link": link, "ranks_per_host": rph,
            "probes": probes, "points": points,
            "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()}}


def repredict(doc):
    """Recompute every point's prediction with the current model, from the stored
    probes and the configuration's graph (no measurement is repeated)."""
    import json as _json
    from backends.netem.cluster import Emulation
    from backends.torchdist.bench import predict_point
    for c in doc["results"]:
        preset, kw, link, rph = c["preset"], c["kwargs"], c["link"], c["ranks_per_host"]
        g = presets.build(preset, bandwidth_Bps=parse_rate(link), devices_per_host=rph, **kw)
        emu = Emulation(g, prefix="ps00000-", ranks_per_host=rph)  # a plan only: nothing is created
        emu.probes = c["probes"]
        st = _json.loads(_json.dumps(emu.state(), default=str))
        for p in c["points"]:
            _, _, pred = predict_point(p["op"], p["algo"], p["world"], p["size_B"], state=st)
            p["predicted"] = pred
            p["predicted_s"] = pred["time_s"]
            p["error"] = (pred["time_s"] - p["median_s"]) / p["median_s"]
            if "launch_medians_s" in p:
                p["launch_errors"] = [(pred["time_s"] - m) / m for m in p["launch_medians_s"]]
    return doc


def ordering_check(points):
    """Pairs of algorithms at one (config, size) whose measured gap exceeds the noise
    (the larger of their max-min ranges): does the prediction order them the same way?"""
    by = {}
    for p in points:
        by.setdefault((p["config"], p["size_B"]), []).append(p)
    agree, wrong, ties, pred_ties = 0, [], 0, []
    for key, pts in by.items():
        for a, b in combinations(pts, 2):
            gap = a["median_s"] - b["median_s"]
            noise = max(a["max_s"] - a["min_s"], b["max_s"] - b["min_s"])
            if abs(gap) <= noise:
                ties += 1
                continue
            pgap = a["predicted_s"] - b["predicted_s"]
            if abs(pgap) <= PRED_TIE * max(a["predicted_s"], b["predicted_s"]):
                pred_ties.append(f"{key[0]} {fmt_bytes(key[1])}: {a['algo']} {a['median_s']:.3g}s vs {b['algo']} "
                                 f"{b['median_s']:.3g}s measured, both predicted {a['predicted_s']:.3g}s")
                continue
            if pgap * gap > 0:
                agree += 1
            else:
                wrong.append(f"{key[0]} {fmt_bytes(key[1])}: {a['algo']} {a['median_s']:.3g}s vs {b['algo']} "
                             f"{b['median_s']:.3g}s measured, predicted {a['predicted_s']:.3g}s vs {b['predicted_s']:.3g}s")
    return {"agree": agree, "disagree": len(wrong), "within_noise": ties, "disagreements": wrong,
            "predicted_equal": len(pred_ties), "predicted_equal_but_measured_apart": pred_ties}


def summarise(points):
    from parsim.costs.network import bandwidths_Bps

    def mae(ps):
        return statistics.mean(abs(p["error"]) for p in ps) if ps else None
    big = [p for p in points if p["size_B"] >= 1 << 20]
    by_algo = {}
    for p in big:
        by_algo.setdefault(p["algo"], []).append(p)
    ring64 = [p for p in points if p["algo"] == "ring" and p["size_B"] == 64 << 20 and p["world"] > 2]
    ring_check = [{"config": p["config"], "world": p["world"],
                   "busbw_Bps": bandwidths_Bps(p["op"], p["workers"], p["size_B"], p["median_s"])[1],
                   "link_measured_Bps": p["link_measured_Bps"]} for p in ring64]
    for r in ring_check:
        r["fraction_of_link"] = r["busbw_Bps"] / r["link_measured_Bps"]
    small = [p for p in points if p["size_B"] < 1 << 20]
    tiny_by_algo = {}
    for p in points:
        if p["size_B"] <= 4 << 10:
            tiny_by_algo.setdefault(p["algo"], []).append(p)
    nl = min((len(p.get("launch_errors", [])) for p in points), default=0)
    by_launch = [statistics.mean(abs(p["launch_errors"][k]) for p in points) for k in range(nl)]
    return {"mae_all": mae(points), "mae_all_by_launch": by_launch, "mae_ge_1MiB": mae(big), "n_all": len(points), "n_ge_1MiB": len(big),
            "mae_lt_1MiB": mae(small), "n_lt_1MiB": len(small),
            "mae_4KiB_by_algo": {a: mae(ps) for a, ps in sorted(tiny_by_algo.items())},
            "mae_ge_1MiB_by_algo": {a: mae(ps) for a, ps in sorted(by_algo.items())},
            "ordering": ordering_check(points), "ring_64MiB_vs_link": ring_check}


def table(points) -> str:
    from parsim.tables import text_table
    return text_table(("cfg", "link", "ranks", "algo", "size", "measured", "spread", "predicted", "error"),
                      [(p["config"], p["link"], p["world"], p["algo"], fmt_bytes(p["size_B"]), f"{p['median_s']:.4f}s",
                        f"{p['spread'] * 100:.1f}%", f"{p['predicted_s']:.4f}s", f"{p['error'] * 100:+.1f}%")
                       for p in points]).rstrip()


def plot(points, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    algos = sorted({p["algo"] for p in points})
    for i, a in enumerate(algos):
        ps = [p for p in points if p["algo"] == a]
        ax.errorbar([p["predicted_s"] for p in ps], [p["median_s"] for p in ps],
                    yerr=[[p["median_s"] - p["min_s"] for p in ps], [p["max_s"] - p["median_s"] for p in ps]],
                    fmt="o", ms=4, label=a, color=plt.cm.tab10(i))
    lo = min(min(p["predicted_s"], p["min_s"]) for p in points) * 0.7
    hi = max(max(p["predicted_s"], p["max_s"]) for p in points) * 1.4
    xs = [lo, hi]
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="0.85", label="±10%")
    ax.set(xscale="log", yscale="log", xlabel="predicted time (s)", ylabel="measured time (s), median, min-max",
           title="all-reduce on emulated clusters (tbf-shaped veths)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def to_records(doc, study="netem-allreduce-sweep") -> list[dict]:
    """A saved sweep (sweep.json) as `parsim validate` result records (parsim.results), one per point,
    with the ids studies/netem/sweep.yaml gives them, so `parsim report` renders it."""
    from backends.torchdist.bench import bandwidths_GBps
    from parsim.units import fmt_bytes
    recs = []
    for c in doc["results"]:
        net = {"preset": c["preset"], **c["kwargs"], "link": c["link"], "ranks_per_host": c["ranks_per_host"]}
        for q in c["points"]:
            q = dict(q)
            q.update(bandwidths_GBps(q["op"], q["workers"], q["size_B"], q["median_s"], q["predicted_s"]))
            pred = q.pop("predicted")
            recs.append({"study": study, "id": f"{c['name']}: collective {q['op']} {q['algo']} {fmt_bytes(q['size_B'])}",
                         "kind": "collective", "status": "ok" if q["correct"] else "failed",
                         "point": {"op": q["op"], "algo": q["algo"], "size_B": q["size_B"], "network": c["name"]},
                         "network_spec": net, "measured": q, "predicted": pred,
                         "profile": {"name": "cpu", "link_probes": c["probes"]},
                         "loadavg_1_5_15": (c.get("loadavg_1_5_15") or {}).get("after"),
                         "summary": {"metric": "time_s", "measured": q["median_s"], "spread": [q["min_s"], q["max_s"]],
                                     "predicted": q["predicted_s"], "error": q["error"]}})
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one or two small sizes per configuration")
    ap.add_argument("--only", default=None, help="comma list of configurations (default: all)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "netem"))
    ap.add_argument("--launches", type=int, default=LAUNCHES, help="separate launches per configuration "
                    "(a point is the median of their medians)")
    ap.add_argument("--repredict", metavar="JSON", help="re-price a saved sweep with the current model (no runs)")
    ap.add_argument("--export", metavar="JSON", help="write a saved sweep as study results (<out>/results.jsonl) and "
                    "render it with parsim report (no runs)")
    a = ap.parse_args(argv)
    if a.export:
        from parsim import results as R
        from parsim.reportgen import write_report
        out = Path(a.out)
        store = out / "results.jsonl"
        if store.exists():
            store.unlink()
        for rec in to_records(json.loads(Path(a.export).read_text())):
            R.append(store, rec)
        paths = write_report([store], out, title="All-reduce on emulated clusters (studies/netem/sweep.yaml)")
        print("wrote " + ", ".join(map(str, [store, *paths])))
        return 0
    from parsim.outputs import make_output_dir, write_atomic
    out = make_output_dir(a.out, "--out")   # before the sweep, so its results are not lost to a bad path
    from backends.netem.cluster import unavailable
    reason = "" if a.repredict else unavailable()
    if reason:
        print(f"sweep: {reason}", file=sys.stderr)
        return 2
    names = a.only.split(",") if a.only else list(CONFIGS)
    t0 = time.monotonic()
    wall = None
    if a.repredict:
        old = json.loads(Path(a.repredict).read_text())
        wall = old.get("wall_s")
        configs = repredict(old)["results"]
    else:
        configs = []
        for n in names:
            preset, kw, link, rph, algos, sizes, rep = CONFIGS[n]
            configs.append(run_config(n, preset, kw, link, rph, algos, QUICK[n] if a.quick else sizes, rep,
                                      a.launches))
    points = [p for c in configs for p in c["points"]]
    summary = summarise(points)
    doc = {"configs": CONFIGS, "results": configs, "summary": summary, "wall_s": wall or time.monotonic() - t0,
           "repredicted": bool(a.repredict),
           "notes": ["time = slowest rank, barrier-aligned start; median of repeats after 1 warm-up; a point = "
                     "the median over the configuration's separate launches of their medians",
                     "prediction: parsim.costs.network.price_schedule per step on the graph with probed link "
                     "rates (full duplex: the executor posts each step's receives before its sends), the shaped "
                     "links played as tbf token buckets (backends/netem/model.py)",
                     "each step pays the cpu profile's calibrated software overhead (executor: a fixed part "
                     "executor_step_overhead_us plus executor_message_overhead_us per message a rank posts, the "
                     "active ranks' total shared over the cores; native: native_step_overhead_us), from "
                     "parsim.calibrate on loopback with this benchmark's protocol, not fitted to this sweep; the "
                     "links bank tokens meanwhile",
                     f"repeats: the configured count, more for cheap points until {MIN_TIME_S} s is timed "
                     f"(at most {MAX_REPEATS})",
                     "no sch_netem on this kernel: latency is the probes' measured round trip",
                     "2 CPU cores shared with other work: spreads include that noise"]}
    write_atomic(out / "sweep.json", json.dumps(doc, indent=1, default=str))
    plot(points, out / "sweep.png")
    lines = []

    def say(text=""):
        print(text)
        lines.append(str(text))

    say(table(points))
    s = summary
    say(f"\nMAE all {s['n_all']} points: {s['mae_all'] * 100:.1f}%   points >= 1 MiB ({s['n_ge_1MiB']}): "
          f"{s['mae_ge_1MiB'] * 100:.1f}%")
    if len(s.get("mae_all_by_launch", [])) > 1:
        say("MAE all points, each launch on its own: " + ", ".join(f"{v * 100:.1f}%" for v in s["mae_all_by_launch"])
            + " (the metric's own launch-to-launch spread)")
    say("MAE >= 1 MiB by algorithm: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in s["mae_ge_1MiB_by_algo"].items()))
    if s.get("n_lt_1MiB"):
        say(f"MAE < 1 MiB ({s['n_lt_1MiB']}): {s['mae_lt_1MiB'] * 100:.1f}%; 4 KiB by algorithm: "
            + ", ".join(f"{k} {v * 100:.1f}%" for k, v in s["mae_4KiB_by_algo"].items()))
    o = s["ordering"]
    say(f"ordering (pairs whose measured gap exceeds noise): {o['agree']} agree, {o['disagree']} disagree, "
          f"{o['predicted_equal']} predicted equal; {o['within_noise']} pairs within noise")
    for w in o["disagreements"]:
        say(f"  disagree: {w}")
    for w in o["predicted_equal_but_measured_apart"]:
        say(f"  predicted equal: {w}")
    for r in s["ring_64MiB_vs_link"]:
        say(f"explicit ring 64 MiB on {r['world']} ranks (config {r['config']}): busbw {r['busbw_Bps'] * 8 / 1e6:.0f} Mbit/s "
              f"= {r['fraction_of_link'] * 100:.1f}% of the measured link {r['link_measured_Bps'] * 8 / 1e6:.0f} Mbit/s")
    for c in configs:
        if c.get("loadavg_1_5_15"):
            say(f"load average (1/5/15 min) during config {c['name']}: before "
                + "/".join(f"{x:.1f}" for x in c["loadavg_1_5_15"]["before"]) + ", after "
                + "/".join(f"{x:.1f}" for x in c["loadavg_1_5_15"]["after"]))
    if a.repredict:
        say("(predictions re-made with the current model on the stored measurements)")
    write_atomic(out / "sweep.txt", "\n".join(lines) + "\n")
    print(f"wrote {out / 'sweep.json'}, sweep.txt and sweep.png ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    from parsim.errors import run_main
    raise SystemExit(run_main(main, "python -m studies.netem.sweep"))
