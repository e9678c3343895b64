"""Leave-one-table-out over the public validation corpus (parsim/data/validation/): table, JSON, plot.

    python -m studies.validation.corpus [--out reports/validation]

For every published table: the GPU type's fitted numbers (matmul_sustained_fraction for 16-bit rows,
matmul_sustained_fraction_fp8 for FP8 rows) are fitted on all *other* tables of that GPU type and the
held-out table is predicted; per table the mean, max
and bias of the relative error of the published throughput (and of peak memory where published),
and the rows parsim cannot express yet, counted by reason. Writes corpus.json, corpus.md and
corpus.png, and the same results as a comparison report in published/ (report.md, figures/,
report.html: what `parsim report --published` renders). The method is parsim.corpus's docstring;
the numbers are computed once, there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from parsim.corpus import FRACTIONS, accuracy_metrics, blockers, fragmentation_GiB, heldout_summary, leave_one_table_out, load_corpus, repeat_floor, \
    read_csv_with_header, shipped_fits, CORPUS_DIR, TARGETS
from parsim.hardware import get_device
from parsim.outputs import make_output_dir
from parsim.report import to_json, write_atomic
from parsim.tables import md_table


def _pct(x):
    return "–" if x is None else f"{100 * x:+.1f}%"


def _abs_pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(loto: list[dict], fits: dict) -> str:
    corpus = load_corpus()
    n_rows, n_expr = len(corpus), sum(1 for r in corpus if not r.reason)
    lines = ["# parsim against the public validation corpus, leave-one-table-out", "",
             f"{n_rows} published rows in {len(loto)} tables; {n_expr} expressible by parsim today, "
             f"{n_rows - n_expr} not expressible yet (counted below, never dropped). Each table is predicted with the "
             f"GPU type's sustained fractions (`matmul_sustained_fraction` for 16-bit rows, "
             f"`matmul_sustained_fraction_fp8` for FP8 rows) fitted on the *other* tables' rows of that type and precision (grid "
             f"{FRACTIONS[0]}–{FRACTIONS[-1]}, step 0.005; minimum mean |error| over their rows). Error = "
             "predicted / published − 1. Unstated knobs (micro-batch, virtual stages; recompute for NeMo rows) are "
             "searched and the fastest plan that fits is shown.", "",
             "## Per table (held out)", "",
             md_table(["table", "GPU type", "rows", "expressible", "16-bit fraction", "FP8 fraction (fitted on the others)",
                       "step mean", "step max", "step bias", "memory mean", "memory max", "as reserved: mean", "max"],
                      [[e["table"], e["gpu_type"], e["rows"], e["expressible"], "–" if e["fraction"] is None else e["fraction"],
                        "–" if e.get("fraction_fp8") is None else e["fraction_fp8"],
                        _abs_pct(e["step"].get("mean")), _abs_pct(e["step"].get("max")), _pct(e["step"].get("bias")),
                        _abs_pct(e["memory"].get("mean")), _abs_pct(e["memory"].get("max")),
                        _abs_pct(e["memory_reserved"].get("mean")), _abs_pct(e["memory_reserved"].get("max"))] for e in loto])]
    lines += ["", f"Accuracy targets: {TARGETS}.",
              "Memory: parsim predicts allocated bytes; torchtitan publishes the allocator's maximum *reserved* memory. "
              "No public measurement of that gap was found: 'as reserved' adds parsim/data/memory.yaml's fragmentation "
              "allowance (fragmentation_fraction x capacity, an assumption: "
              + ", ".join(f"{g} {fragmentation_GiB(g):.1f} GiB" for g in sorted({e['gpu_type'] for e in loto if e['memory']}))
              + ") to the prediction.", "",
              "## The same stated plan, published twice", "",
              "Rows below are one input to parsim (same GPU type, model, GPU count and candidate plans: every stated knob "
              "equal; a gradient dtype or loss kernel one release leaves unstated is searched over the value another "
              "states, and such a row joins the group whose floor it raises least) but were published with different values by different software releases, so parsim, pricing "
              "them alike, predicts one value for all of them. No prediction from the stated plan can bring every row of a group closer than "
              "its floor = (max − min) / (max + min) (reached at 2·min·max / (min + max)); techniques the pages name "
              "that parsim does not read (e.g. tokendrop vs. force-balanced dropless routing) are said in the CSVs.", "",
              md_table(["GPU type", "model", "GPUs", "precision", "tables", "published", "spread",
                        "floor (some row is at least this far off)"],
                       [[g["gpu_type"], g["model"], g["gpus"], g["precision"], "; ".join(g["tables"]),
                         ", ".join(f"{y:g}" for y in g["published"]), _abs_pct(g["spread"]), _abs_pct(g["floor"])]
                        for g in repeat_floor()]), "",
              "## Published runs parsim's fits verdict would refuse", "",
              "Every published run fitted its GPUs. parsim's `plan` and `predict` accept a plan only when its memory plus "
              "a headroom (CUDA context, NCCL buffers, fragmentation: parsim/data/memory.yaml) is within the capacity; "
              "the corpus picks among candidates by the capacity alone. Below, the rows whose chosen plan that verdict "
              "refuses: false \"does not fit\" answers where the plan is the run's own (every knob stated or derived, "
              "e.g. Qwen3's no recompute from its recipe); where a knob is searched (NeMo's recompute) the run may "
              "have used another candidate, and the last column says whether the verdict refuses every one:", "",
              md_table(["table", "model", "GPUs", "plan", "predicted GiB", "every candidate refused"],
                       [[e["table"], r["model"], r["gpus"], r["plan"], r["predicted_memory_GiB"],
                         "yes" if not r["any_fits_verdict"] else "no"]
                        for e in loto for r in e["row_results"] if "fits_verdict" in r and not r["fits_verdict"]]
                       or [["–", "none", "", "", "", ""]]), "",
              "Rows the verdict accepts only under the searched reading of a setting their source leaves unstated "
              "(gradient dtype, loss kernel): the same plan is refused under the other reading, so whether parsim "
              "would have refused the run depends on what it really used:", "",
              md_table(["table", "model", "GPUs", "plan", "priced with", "refused with"],
                       [[e["table"], r["model"], r["gpus"], r["plan"],
                         f"grads {r['grad_dtype']}, loss {r['cross_entropy']}", "; ".join(r["verdict_refused_readings"])]
                        for e in loto for r in e["row_results"]
                        if r.get("fits_verdict") and r.get("verdict_refused_readings")]
                       or [["–", "none", "", "", "", ""]]), "",
              "## Shipped fitted numbers (all tables of the GPU type)", "",
              ]
    shipped_rows = []
    for cls, key in (("16-bit", "matmul_sustained_fraction"), ("fp8", "matmul_sustained_fraction_fp8")):
        for g, f in fits[cls].items():
            try:
                dev = get_device(g)
                shipped = dev.sustained_fraction if cls == "16-bit" else dev.sustained_fraction_fp8
            except Exception:
                shipped = None
            shipped_rows.append([g, f"{cls} ({key})", "no expressible row" if f is None else f,
                                 "– (the 16-bit one)" if shipped is None else shipped])
    lines.append(md_table(["GPU type", "precision", "fitted on all its tables", "shipped in devices.yaml"], shipped_rows))
    lines += ["", "## Rows by held-out table", ""]
    for e in loto:
        if not e["row_results"]:
            continue
        rows = []
        for r in e["row_results"]:
            if "note" in r:
                rows.append([r["model"], r["gpus"], "–", "–", r["note"], "", "", "", "", "", ""])
                continue
            pred = "no plan fits" if r["predicted"] is None else f"{r['predicted']:g}"
            rows.append([r["model"], r["gpus"], f"{r['published']:g}", pred, _pct(r["rel_error"]),
                         "–" if r["published_memory_GiB"] is None else r["published_memory_GiB"], r["predicted_memory_GiB"],
                         _pct(r["memory_rel_error"]), r["predicted_reserved_GiB"] if r["published_memory_GiB"] else "–",
                         _pct(r["reserved_rel_error"]),
                         f"{r['plan']}; grads {r['grad_dtype']}, loss {r['cross_entropy']}"])
        lines += [f"### {e['table']}", "",
                  md_table(["model", "GPUs", "published", "predicted", "error", "memory published GiB", "predicted GiB",
                            "memory error", "as reserved GiB", "error",
                            "plan (searched knobs; 'native' after z is the gradient-sync algorithm, not the loss)"],
                           rows)]
        fr = "; ".join(f"{c} fraction {e[k]} ({e[k + '_source']})" for c, k in (("16-bit", "fraction"), ("FP8", "fraction_fp8"))
                       if e.get(k) is not None)
        lines.append(f"\nMetric: {e['row_results'][0].get('metric', '')}; {fr}; other tables of the type: {', '.join(e['fit_on']) or '–'}.\n")
    lines += ["## Not expressible yet", "", "Corpus-wide, what blocks how many rows (a row may miss several features; "
              "'only reason' = rows that adding this feature alone would make expressible):", "",
              md_table(["reason", "rows", "only reason"], [[b["reason"], b["rows"], b["only_reason"]] for b in blockers()])]
    lines += ["", "By table (a row counts under each of its reasons):", "",
              md_table(["table", "reason", "rows"], [[e["table"], reason, n] for e in loto
                                                     for reason, n in e["not_expressible"].items()])]
    lines += ["", "## Sources", ""]
    for p in sorted(CORPUS_DIR.glob("*.csv")):
        h, _ = read_csv_with_header(p)
        lines.append(f"- `{p.name}`: {h.get('title', '')}. Source: {h.get('source', '')}. Unstated: {h.get('unstated', '–')}.")
    return "\n".join(lines) + "\n"


def plot(loto: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [e for e in loto if e["step"]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, e in enumerate(done):
        errs = [100 * r["rel_error"] for r in e["row_results"] if r.get("rel_error") is not None]
        ax.scatter([i] * len(errs), errs, marker="o", alpha=0.7)
        ax.plot([i - 0.25, i + 0.25], [100 * e["step"]["bias"]] * 2, "k-")
    ax.axhspan(-5, 5, color="g", alpha=0.08, label="±5% (target mean)")
    ax.axhline(12, color="r", ls=":", lw=0.8, label="±12% (target max)")
    ax.axhline(-12, color="r", ls=":", lw=0.8)
    ax.set_xticks(range(len(done)), [e["table"].replace(": ", "\n") for e in done], fontsize=7)
    ax.set_ylabel("held-out error of throughput, %")
    n_no = sum(e["rows"] - e["expressible"] for e in loto)
    ax.set_title(f"Leave-one-table-out, {sum(e['expressible'] for e in done)} rows "
                 f"({n_no} rows not expressible yet); bar = bias", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/validation")
    a = ap.parse_args(argv)
    out = make_output_dir(a.out, "--out")     # checked before the 30 s of work, not after
    loto = leave_one_table_out()
    fits = {cls: shipped_fits(cls) for cls in ("16-bit", "fp8")}
    md = markdown(loto, fits)
    print(md)
    write_atomic(out / "corpus.json", to_json({"tables": loto, "fits": fits, "metrics": accuracy_metrics(loto)}))
    write_atomic(out / "corpus.md", md)
    # what `plan` and `predict` quote as their held-out accuracy (parsim.accuracy); shipped with the package
    from parsim.accuracy import HELDOUT_FILE
    write_atomic(HELDOUT_FILE, to_json(dict(heldout_summary(loto), source="python -m studies.validation.corpus "
                                             "(parsim.corpus.heldout_summary of leave_one_table_out)")) + "\n")
    plot(loto, out / "corpus.png")
    # the same held-out results in the comparison-report format (what `parsim report --published` renders)
    from parsim.reportgen import PUBLISHED_TITLE, published_inputs, write_report
    recs, published = published_inputs(loto)
    write_report([], out / "published", title=PUBLISHED_TITLE, records=recs, published=published)
    return 0


if __name__ == "__main__":
    from parsim.errors import run_main
    raise SystemExit(run_main(main, "python -m studies.validation.corpus"))
