"""Measured vs predicted on this machine's CPU: a few plans run by `parsim run` (gloo).

    python -m studies.cpu.run_vs_predict [--out reports/cpu] [--steps 8]

Each plan is trained for real by backends/torchdist and priced by parsim.predict on the
calibrated `cpu-local` cluster (run `python -m parsim.calibrate` first on a new machine).
Writes run_vs_predict.json and run_vs_predict.md: step time and each phase, measured
(median over the timed steps, max over ranks) beside predicted, with the relative error.
Ranks share the machine's cores: keep the machine otherwise idle while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from parsim.outputs import make_output_dir, write_atomic
from parsim.report import to_json

PLANS = [
    ("gpt-small", ["--nproc", "1", "--micro-batch", "2", "--global-batch", "4"]),
    ("gpt-small", ["--nproc", "2", "--dp", "2", "--micro-batch", "2", "--global-batch", "8", "--grad-sync", "ring"]),
    ("gpt-small", ["--nproc", "2", "--pp", "2", "--micro-batch", "2", "--global-batch", "8"]),
    ("gpt-small", ["--nproc", "2", "--tp", "2", "--micro-batch", "2", "--global-batch", "4"]),
    ("gpt-small", ["--nproc", "2", "--dp", "2", "--micro-batch", "2", "--global-batch", "8", "--recompute", "full"]),
    ("gpt-tiny", ["--nproc", "4", "--dp", "2", "--pp", "2", "--micro-batch", "2", "--global-batch", "16"]),
]
KEYS = ["compute", "recompute", "tp_comm", "pp_comm", "bubble", "dp_comm_exposed", "optimizer"]


def repredict(doc: dict) -> dict:
    """Re-price every stored row's plan with the current model (no run): the plan is rebuilt from the
    stored `parsim run` flags and priced exactly as `parsim run` does (parsim.commands.run), on the
    cluster it uses on a CPU (the calibrated cpu-local when present). Updates predicted_step_s,
    predicted_s and rel_error in place; returns `doc`."""
    from parsim.commands.run import _device_profile, add_arguments, make_plan, predicted_report
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    cluster = _device_profile("gloo")[1]
    for row in doc["rows"]:
        if "error" in row:
            continue
        model, plan, nproc = make_plan(ap.parse_args(["--model", row["model"], *row["flags"].split()]))
        pred, why = predicted_report(model, plan, cluster, nproc)
        if pred is None:
            raise RuntimeError(f"{row['model']} {row['flags']}: {why}")
        row["predicted_step_s"] = pred["step_time_s"]
        row["predicted_s"] = {k: pred["breakdown_s"][k] for k in KEYS}
        row["rel_error"] = pred["step_time_s"] / row["measured_step_s"] - 1
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/cpu")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args(argv)
    out = make_output_dir(a.out, "--out")   # before the runs, so their results are not lost to a bad path
    rows = []
    t0 = time.time()
    for model, flags in PLANS:
        cmd = [sys.executable, "-m", "parsim", "run", "--model", model, *flags, "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--format", "json"]
        print("running:", " ".join(cmd[2:]), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(f"  failed ({r.returncode}): {r.stderr.strip()[-300:]}", file=sys.stderr)
            rows.append({"model": model, "flags": " ".join(flags), "error": r.stderr.strip()[-300:]})
            continue
        d = json.loads(r.stdout)
        m, p = d["measured"], d["predicted"]
        row = {"model": model, "plan": d["plan_label"], "flags": " ".join(flags),
               "measured_step_s": m["step_time_s"], "predicted_step_s": p["step_time_s"],
               "rel_error": p["step_time_s"] / m["step_time_s"] - 1,
               "measured_s": {k: m["breakdown_s"][k] for k in KEYS}, "predicted_s": {k: p["breakdown_s"][k] for k in KEYS}}
        rows.append(row)
        print(f"  measured {row['measured_step_s']:.4f} s, predicted {row['predicted_step_s']:.4f} s "
              f"({100 * row['rel_error']:+.0f}%)", flush=True)
    ok = [r for r in rows if "error" not in r]
    mae = sum(abs(r["rel_error"]) for r in ok) / max(1, len(ok))
    load = os.getloadavg()
    lines = ["| plan | measured step (s) | predicted (s) | error | compute m/p (s) | comm+bubble m/p (s) | optimizer m/p (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in ok:
        ms, ps = r["measured_s"], r["predicted_s"]
        comm = lambda x: x["tp_comm"] + x["pp_comm"] + x["bubble"] + x["dp_comm_exposed"]
        lines.append(f"| {r['model']} {r['plan']} | {r['measured_step_s']:.4f} | {r['predicted_step_s']:.4f} | "
                     f"{100 * r['rel_error']:+.0f}% | {ms['compute'] + ms['recompute']:.4f} / {ps['compute'] + ps['recompute']:.4f} | "
                     f"{comm(ms):.4f} / {comm(ps):.4f} | {ms['optimizer']:.4f} / {ps['optimizer']:.4f} |")
    md = ("# Measured vs predicted on the CPU (gloo, fp32)\n\n"
          f"{len(ok)} plans, {a.steps} steps each after {a.warmup} warm-up; load average after the runs {load[0]:.2f}. "
          f"Mean |error| of the step time: {100 * mae:.0f}%.\n\n" + "\n".join(lines) + "\n")
    print(md)
    write_atomic(out / "run_vs_predict.json", to_json({"rows": rows, "mae": mae, "loadavg": load, "wall_s": time.time() - t0}))
    write_atomic(out / "run_vs_predict.md", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
