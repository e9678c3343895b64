"""Prediction vs Narayanan et al. 2021 Table 1 (Selene, A100): table, JSON and a plot.

    python -m studies.validation.narayanan2021 [--out reports/validation]

Prints the per-row comparison with the shipped A100 profile and the leave-one-out errors
of its one fitted number (matmul_sustained_fraction), then writes narayanan2021.json,
narayanan2021.png and narayanan2021.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from parsim.hardware import get_device
from parsim.outputs import make_output_dir, save_figure, write_atomic
from parsim.report import to_json
from parsim.tables import md_table
from parsim.validation import leave_one_out, report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/validation")
    a = ap.parse_args(argv)
    out = make_output_dir(a.out, "--out")
    rows = report()
    loo = leave_one_out()
    for r, (_, f, e) in zip(rows, loo["loo"]):
        r["loo_fraction"], r["loo_rel_error"] = f, round(e, 4)
    mae = sum(abs(r["rel_error"]) for r in rows) / len(rows)
    table = md_table(["model", "GPUs", "tp", "pp", "micro-batch*", "vpp*", "measured TFLOP/s", "predicted", "error",
                      "leave-one-out error"],
                     [[r["model"], r["gpus"], r["tp"], r["pp"], r["micro_batch"], r["vpp"], f"{r['measured_tflops']:.0f}",
                       f"{r['predicted_tflops']:.1f}", f"{100 * r['rel_error']:+.1f}%", f"{100 * r['loo_rel_error']:+.1f}%"]
                      for r in rows])
    md = ("# parsim vs Narayanan et al. 2021, Table 1 (Selene, DGX A100 80GB)\n\n"
          "Hardware TFLOP/s per GPU (full recompute, fp16, interleaved schedule, no flash attention, "
          "no overlap of the gradient all-reduce). *Not stated in the paper: searched, best predicted shown.\n\n"
          + table + "\n\n"
          f"Shipped profile (matmul_sustained_fraction = {get_device('a100-80gb').sustained_fraction}, fitted on all "
          f"public A100 tables, python -m studies.validation.corpus): "
          f"mean |error| {100 * mae:.1f}%, max {100 * max(abs(r['rel_error']) for r in rows):.1f}%.\n"
          f"Table 1 alone fits {loo['fraction_all']}; leave-one-out (each row predicted with the fraction fitted on the other nine): "
          f"mean |error| {100 * loo['loo_mae']:.1f}%, max {100 * loo['loo_max']:.1f}%.\n")
    print(md)
    write_atomic(out / "narayanan2021.json", to_json({"rows": rows, "leave_one_out": loo, "mae": mae}))
    write_atomic(out / "narayanan2021.md", md)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(rows))
    ax.plot(x, [r["measured_tflops"] for r in rows], "o-", label="measured (Narayanan et al. 2021)")
    ax.plot(x, [r["predicted_tflops"] for r in rows], "s--", label="parsim (shipped profile)")
    ax.plot(x, [r["measured_tflops"] * (1 + r["loo_rel_error"]) for r in rows], "x:", label="parsim, leave-one-out")
    ax.set_xticks(list(x), [r["model"].removeprefix("megatron-") for r in rows], rotation=30)
    ax.set_ylabel("hardware TFLOP/s per GPU")
    ax.set_ylim(0, 200)
    ax.set_title(f"Table 1 on Selene: mean |error| {100 * mae:.1f}% (LOO {100 * loo['loo_mae']:.1f}%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, out / "narayanan2021.png", dpi=120)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    from parsim.errors import run_main
    raise SystemExit(run_main(main, "python -m studies.validation.narayanan2021"))
