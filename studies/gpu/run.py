"""Single-GPU check of the step model: measured step time and peak memory beside prediction.

    PYTHONPATH=. python3 studies/gpu/run.py [--out-dir DIR] [--quick]

One GPU, NCCL backend (world size 1), the image's packages only, well under 8 minutes: a
few GPT-3-shaped models and plans (micro-batch, recompute), bf16 autocast, each trained a
few steps by backends/torchdist (the same code path as `parsim run`) and priced by
parsim.predict on the matching DGX preset sized to one GPU. Writes ``gpu_study.json``
under --out-dir (default: $OUT, else studies/gpu/results) and prints a table.

Without a GPU it runs its CPU fallback (gloo, gpt-tiny, 8 steps) so the script itself is
checked anywhere; that fallback says so in its output and its JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# (model, micro_batch, recompute): sized for one 80-141 GB GPU with fp32 weights + AdamW
GPU_CASES = [
    ("gpt-small", 16, "none"),
    ("gpt3-125m", 8, "none"),
    ("gpt3-125m", 8, "full"),
    ("gpt3-350m", 4, "selective"),
    ("gpt3-1.3b", 2, "none"),
]
CPU_CASES = [("gpt-tiny", 2, "none"), ("gpt-tiny", 2, "full")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or str(ROOT / "studies/gpu/results"))
    ap.add_argument("--quick", action="store_true", help="first two cases only")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cases after this")
    a = ap.parse_args(argv)

    import torch

    from backends.torchdist.launch import RunFailed, launch
    from parsim.commands.run import _device_profile, as_dict, compare
    from parsim.model import load_model
    from parsim.plan import Plan
    from parsim.predict import predict
    from parsim.topology import load_cluster

    gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    backend = "nccl" if gpu else "gloo"
    cases = GPU_CASES if gpu else CPU_CASES
    steps = a.steps if gpu else 8
    if a.quick:
        cases = cases[:2]
    profile, cluster_name = _device_profile(backend)
    device_name = torch.cuda.get_device_name(0) if gpu else "cpu (fallback: no GPU visible)"
    print(f"device: {device_name}; backend {backend}; prediction on {cluster_name} (profile {profile})", flush=True)
    from parsim.outputs import make_output_dir, write_atomic
    out_dir = make_output_dir(a.out_dir, "--out-dir")
    results, t_start = [], time.monotonic()
    for name, mb, rc in cases:
        if time.monotonic() - t_start > a.budget_s:
            print(f"budget of {a.budget_s:.0f} s spent: skipping {name} mb{mb} {rc}", flush=True)
            continue
        model = load_model(name)
        plan = Plan(micro_batch=mb, global_batch=mb * 2, dtype="bf16" if gpu else "fp32", recompute=rc, overlap=False)
        cfg = {"model": model.to_dict(), "plan": plan.to_dict(), "backend": backend, "steps": steps,
               "warmup": min(a.warmup if gpu else 3, steps - 1), "device_profile": profile, "timeout_s": 120, "watchdog_s": 120,
               "threads_per_rank": 1}
        row = {"model": name, "plan": plan.to_dict(), "label": plan.label()}
        t0 = time.monotonic()
        try:
            measured = launch(cfg, 1, timeout_s=240)
        except RunFailed as e:
            row["error"] = str(e)
            print(f"{name:10} mb{mb:<3} {rc:9} FAILED: {e}", flush=True)
            results.append(row)
            continue
        try:
            predicted = as_dict(predict(model, load_cluster(cluster_name, 1), plan))
        except Exception as e:   # noqa: BLE001 — the measurement is still worth keeping
            predicted, row["prediction_error"] = None, f"{type(e).__name__}: {e}"
        row.update(measured=measured, predicted=predicted, wall_s=time.monotonic() - t0,
                   relative_error={k: err for k, _, _, err in compare(measured, predicted)})
        results.append(row)
        pt = predicted["step_time_s"] if predicted else float("nan")
        pm = predicted["memory_GiB"] if predicted else float("nan")
        print(f"{name:10} mb{mb:<3} {rc:9} step {measured['step_time_s'] * 1e3:8.2f} ms (pred {pt * 1e3:8.2f})  "
              f"peak mem {measured['memory_GiB']:7.2f} GiB (pred {pm:7.2f})  mfu {measured['mfu'] or 0:.3f}", flush=True)
    doc = {"device": device_name, "backend": backend, "gpu": gpu, "cluster": cluster_name,
           "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "note": None if gpu else "CPU fallback: no GPU was visible; these are not GPU results",
           "results": results}
    write_atomic(out_dir / "gpu_study.json", json.dumps(doc, indent=1, default=str))
    print(f"wrote {out_dir / 'gpu_study.json'} ({time.monotonic() - t_start:.0f} s)")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
