"""Measured vs predicted on this machine's CPU — now the study file studies/cpu/run_vs_predict.yaml.

    python -m studies.cpu.run_vs_predict [--out reports/cpu] [--resume]

is the same as ``parsim validate studies/cpu/run_vs_predict.yaml --out reports/cpu --fresh`` (results
in reports/cpu/results.jsonl, report in reports/cpu/report.{md,html}); the report is regenerated
from the results by ``parsim report reports/cpu --out reports/cpu``. Run
``parsim calibrate`` first on a new machine and keep it otherwise idle.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

STUDY = Path(__file__).with_name("run_vs_predict.yaml")
# The phases compared. StepReport also has ep_comm and cp_comm (parsim.predict.BREAKDOWN_KEYS), but the torch
# backend cannot measure them on the CPU: the MoE dispatch/combine all-to-alls run inside forward/backward and
# are timed as part of them, and context parallelism is not run on gloo (backends/torchdist/runner.py
# _per_rank_phases reports both as 0.0). Comparing them would compare a prediction with a placeholder, so
# they are left out; the stored plans (gpt-small, gpt-tiny) are dense with cp = 1, where both are zero anyway.
KEYS = ["compute", "recompute", "tp_comm", "pp_comm", "bubble", "dp_comm_exposed", "optimizer"]


def to_records(doc, study="cpu-run-vs-predict (the earlier script's run)") -> list[dict]:
    """The earlier script's saved run (run_vs_predict.json: step time and the seven phases, measured
    and predicted) as `parsim validate` result records, so `parsim report` renders it."""
    recs = []
    for r in doc["rows"]:
        if "error" in r:
            continue
        m = {"step_time_s": r["measured_step_s"], "breakdown_s": r["measured_s"], "source": "measured"}
        p = {"step_time_s": r["predicted_step_s"], "breakdown_s": r["predicted_s"]}
        recs.append({"study": study, "id": f"train {r['model']} {r['plan']}", "kind": "train", "status": "ok",
                     "point": {"model": r["model"], "flags": r["flags"]}, "measured": m, "predicted": p,
                     "machine": {"cpus": os.cpu_count(), "loadavg_1_5_15": doc.get("loadavg")},
                     "summary": {"metric": "step_time_s", "measured": m["step_time_s"], "spread": [None, None],
                                 "predicted": p["step_time_s"], "error": r["rel_error"]}})
    return recs


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
    ap.add_argument("--resume", action="store_true", help="finish an interrupted run instead of starting again")
    ap.add_argument("--export", metavar="JSON", help="render the earlier script's saved run (run_vs_predict.json) "
                    "as study results and a parsim report in --out (no runs)")
    a = ap.parse_args(argv)
    if a.export:
        import json

        from parsim import results as R
        from parsim.reportgen import write_report
        store = Path(a.out) / "results.jsonl"
        if store.exists():
            store.unlink()
        for rec in to_records(json.loads(Path(a.export).read_text())):
            R.append(store, rec)
        print("wrote", *write_report([store], a.out, title="CPU run vs predict: the earlier script's run (idle machine)"))
        return 0
    from parsim.cli import main as cli
    return cli(["validate", str(STUDY), "--out", a.out, "--resume" if a.resume else "--fresh"])


if __name__ == "__main__":
    from parsim.errors import run_main
    raise SystemExit(run_main(main, "python -m studies.cpu.run_vs_predict"))
