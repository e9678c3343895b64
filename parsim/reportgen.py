"""Comparison reports: Markdown with PNGs beside it, and one standalone HTML file (figures embedded).

``write_report(paths, out)`` reads any mix of
* study results (``results.jsonl`` of `parsim validate`, parsim.results),
* ``parsim predict --format json`` outputs (one StepReport each) and ``parsim plan --format json``
  outputs (the top plans): these are put side by side (what-if),
and writes ``report.md`` + ``figures/*.png`` and ``report.html`` under ``out``. ``published_records()``
turns the published-table validation (Narayanan et al. 2021 Table 1, parsim.validation) into the
same records, so `parsim report --published` renders it in the same format.

Error convention everywhere: (predicted − measured) / measured (+ = predicted too high). A phase's
contribution to a plan's error is (predicted phase − measured phase) / measured step time; with the part no phase
accounts for (`err_unattributed`: measured phases are timed one by one and need not add up to the measured step) the
contributions of the phases (BREAKDOWN_KEYS) sum to the step-time error.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from parsim.errors import ParsimError
from parsim.predict import BREAKDOWN_KEYS
from parsim.tables import html_table, md_table

BAND = 0.10          # the ±10% band of the scatter
PHASE_COLOURS = {"compute": "#4C72B0", "recompute": "#8172B3", "tp_comm": "#DD8452", "ep_comm": "#DA8BC3",
                 "cp_comm": "#8C8C8C", "pp_comm": "#C44E52", "bubble": "#BBBBBB", "dp_comm_exposed": "#55A868",
                 "optimizer": "#937860"}


# -- inputs -----------------------------------------------------------------------------

def load_inputs(paths) -> tuple[list[dict], list[dict]]:
    """(study records, what-if plans) from result stores, predict/plan JSON outputs and run results (run --out: the
    measured report)."""
    from parsim import results as R
    records, plans = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise ParsimError(f"report input {p}: no such file (expected results.jsonl, or predict/plan JSON)")
        if p.is_dir():
            p = p / "results.jsonl"
        if p.suffix == ".jsonl":
            records += list(R.latest(R.read(p)).values())
            continue
        from parsim.fileio import parse_json, read_text
        text = read_text(p, "report")      # a regular file, size capped (not /dev/zero, a FIFO, a directory)
        d = parse_json(text, f"report input {p} (results.jsonl, or predict/plan --format json)")
        if isinstance(d, dict) and "step_time_s" in d and "breakdown_s" in d:
            new = [{"name": p.stem, "report": d}]
        elif isinstance(d, dict) and isinstance(d.get("measured"), dict) and "breakdown_s" in d["measured"]:
            # a `parsim run --out` result: its measured StepReport and the prediction `run` made of the same plan
            # (trial 2026-11-30: a predict JSON given beside it was ranked against the measurement as a what-if)
            new = [{"name": f"{p.stem} (measured)", "report": dict(d["measured"], source="measured")}]
            if isinstance(d.get("predicted"), dict) and "breakdown_s" in d["predicted"]:
                new.append({"name": f"{p.stem} (run's prediction)", "report": d["predicted"]})
        elif isinstance(d, dict) and "plans" in d:
            new = [{"name": f"{p.stem} #{i + 1}", "report": _plan_row_as_report(row, d.get("attrs", {}))}
                   for i, row in enumerate(d["plans"][:5])]
        else:
            raise ParsimError(f"report input {p}: expected a StepReport (predict --format json), a plan list "
                              "(plan --format json) or a run result (run --out)")
        for q in new:
            st = q["report"].get("step_time_s")
            if isinstance(st, bool) or not isinstance(st, (int, float)) or not (math.isfinite(st) and st > 0):
                raise ParsimError(f"report input {p}: step_time_s = {st!r}: expected a finite number of seconds > 0")
            _check_fits(q["report"], p)
        plans += new
    names = [q["name"] for q in plans]           # one column per input, even when a file is given twice
    for i, q in enumerate(plans):
        if names.count(q["name"]) > 1:
            q["name"] = f"{q['name']} ({names[:i + 1].count(q['name'])})"
    return records, plans


def _check_fits(report: dict, path) -> None:
    """ParsimError when a predicted input's `fits` disagrees with its own memory, headroom and capacity (fits means
    memory_GiB + memory_headroom_GiB <= memory_capacity_GiB; trial 2026-11-30: a hand-edited `fits: true` on a plan
    needing more than the device was ranked as the fastest that fits). Inputs without those numbers (plan lists,
    measured runs) are taken as they say."""
    fits, nums = report.get("fits"), [report.get(k) for k in ("memory_GiB", "memory_headroom_GiB",
                                                               "memory_capacity_GiB")]
    if report.get("source") == "measured" or not isinstance(fits, bool) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in nums) or nums[2] <= 0:
        return
    mem, room, cap = nums
    if fits != (mem + room <= cap * (1 + 1e-9)):
        raise ParsimError(f"report input {path}: fits = {str(fits).lower()} but memory {mem:.2f} GiB + headroom "
                          f"{room:.2f} GiB {'>' if fits else '<='} capacity {cap:.2f} GiB: expected fits = "
                          f"{str(not fits).lower()} (an edited input? re-run parsim predict)")


def _plan_row_as_report(row, attrs):
    keys = ("dp", "tp", "pp", "vpp", "ep", "cp", "micro_batch", "schedule", "grad_sync", "zero", "recompute",
            "sequence_parallel", "tp_overlap", "pp_overlap")
    return {"step_time_s": row["step_time_s"], "tokens_per_s": row.get("tokens_per_s"), "mfu": row.get("mfu"),
            "memory_GiB": row.get("memory_GiB"), "breakdown_s": {k: row.get(f"{k}_s", 0.0) for k in BREAKDOWN_KEYS},
            "plan": {**{k: row.get(k) for k in keys}, "global_batch": attrs.get("global_batch"),
                     "seq_len": attrs.get("seq_len"), "dtype": attrs.get("dtype")},
            "model": attrs.get("model", ""), "cluster": attrs.get("cluster", ""), "gpus": attrs.get("gpus"),
            "fits": True,          # plan lists hold only plans that fit
            "memory_accounting": attrs.get("memory_accounting"), "grad_dtype": attrs.get("grad_dtype"),
            "cross_entropy": attrs.get("cross_entropy"), "accuracy": attrs.get("accuracy")}


def workload(report: dict) -> tuple:
    """(model, global batch, sequence length) of a predict/plan report: the work one step does. Step times of two
    plans compare only when this is the same (a what-if over plans, clusters or dtypes of one workload)."""
    plan = report.get("plan") or {}
    return (report.get("model", ""), plan.get("global_batch"), plan.get("seq_len") or report.get("seq_len"))


def _workload_words(w: tuple) -> str:
    model, gb, seq = w
    return f"{model or '?'} (global batch {gb if gb is not None else '?'} × seq {seq if seq is not None else '?'})"


CORE_KNOBS = ("dp", "tp", "pp", "vpp", "micro_batch", "schedule", "zero", "recompute")


def _knobs(report: dict) -> dict:
    """Every setting of a what-if input that changes its price: the plan's knobs, its dtype, gradient dtype, loss kernel
    and memory accounting."""
    return {**(report.get("plan") or {}), "memory_accounting": report.get("memory_accounting"),
            "grad_dtype": report.get("grad_dtype"), "cross_entropy": report.get("cross_entropy")}


def _plan_cells(plans: list[dict]) -> list[str]:
    """Each input's plan cell: its model, the core knobs, and every other setting whose value differs between the
    inputs (trial 2026-11-30: two plans differing only in sequence parallelism, or bf16 / fp8 / mxfp8 inputs, printed
    identical cells)."""
    knobs = [_knobs(p["report"]) for p in plans]
    other = sorted({k for kn in knobs for k in kn if k not in CORE_KNOBS and k != "global_batch"
                    and len({str(x.get(k)) for x in knobs}) > 1})
    return [f"{p['report'].get('model', '')}: " + " ".join(f"{k}={kn[k]}" for k in CORE_KNOBS if k in kn)
            + "".join(f" {k}={kn.get(k)}" for k in other if kn.get(k) not in (None, ""))   # a measured run has none
            + f" on {p['report'].get('cluster', '')}"
            for p, kn in zip(plans, knobs)]


def _error_figure(report: dict):
    """(mean relative error, what it is) of the held-out figure a report's `accuracy` annotation quotes (its own kind's,
    else the nearest evidence's); (None, '') when it carries none."""
    acc = report.get("accuracy") or {}
    if acc.get("heldout"):
        return acc["heldout"]["mean"], f"the held-out mean error of {acc.get('kind')}"
    if acc.get("nearest_evidence"):
        return acc["nearest_evidence"]["mean"], f"the nearest evidence's mean error ({acc['nearest_evidence']['kind']})"
    return None, ""


def _whatif_verdict(plans: list[dict]) -> str:
    """The fastest fitting plan of each workload (model, global batch, sequence length) among the what-if inputs: a
    step time is only compared with another of the same work (trial 2026-11-30: a predict of one model and a plan list
    of another were ranked together, the smaller model's step called the fastest plan)."""
    groups: dict = {}
    for p in plans:
        groups.setdefault(workload(p["report"]), []).append(p)
    parts = []
    # measured and predicted inputs are ranked apart: a measurement is not an alternative to a prediction
    source = lambda p: "measured" if p["report"].get("source") == "measured" else "predicted"   # noqa: E731
    kinds = {source(p) for p in plans}
    if len(kinds) > 1:
        groups = {(w, k): [p for p in ps if source(p) == k] for w, ps in groups.items() for k in ("predicted", "measured")}
        groups = {wk: ps for wk, ps in groups.items() if ps}
    for w, ps in groups.items():
        kind = ""
        if len(kinds) > 1:
            w, kind = w
        fitting = [p for p in ps if p["report"].get("fits") is True]
        unknown = [p["name"] for p in ps if p["report"].get("fits") is None]
        unfit = [p["name"] for p in ps if p["report"].get("fits") is False]
        head = (f"{_workload_words(w)}" + (f", {kind}" if kind else "") + ": ") if len(groups) > 1 else ""
        if fitting:
            ranked = sorted(fitting, key=lambda p: p["report"]["step_time_s"])
            best = ranked[0]
            sure = ""
            err, what = _error_figure(best["report"])
            if err is not None and len(ranked) > 1:
                close = [p["name"] for p in ranked[1:] if p["report"]["step_time_s"] <= best["report"]["step_time_s"] * (1 + err)]
                if close:
                    sure = (f" {', '.join(close)} {'is' if len(close) == 1 else 'are'} within {100 * err:.1f}% of it, "
                            f"{what}: parsim cannot rank them apart; measure them (parsim run / parsim validate).")
            parts.append(f"{head}fastest plan that fits{' (measured)' if kind == 'measured' else ''}: {best['name']} "
                         f"({best['report']['step_time_s']:.4g} s per step)."
                         + sure
                         + (f" Not fitting in memory (priced, not candidates): {', '.join(unfit)}." if unfit else "")
                         + (f" Fit not stated in the input (not ranked): {', '.join(unknown)}." if unknown else ""))
        else:
            parts.append(f"{head}no plan is known to fit in memory ({', '.join(unfit + unknown)}): the step times are "
                         f"priced for comparison only.")
    text = " ".join(parts)
    n_work = len({workload(p["report"]) for p in plans})
    if len(groups) == 1:
        text = text[0].upper() + text[1:]
    elif n_work > 1:
        text = (f"These inputs train {n_work} different workloads (model, global batch × sequence length): step "
                f"times and tokens/s compare only within one, so each has its own verdict"
                + (", measured and predicted inputs apart" if len(kinds) > 1 else "") + ". " + text)
    else:
        text = ("Measured and predicted inputs are ranked apart (a measurement is not an alternative to a "
                "prediction; compare them with parsim validate). " + text)
    return text


NOT_EXPRESSIBLE = "not expressible yet"     # a published row parsim cannot price as published (parsim.corpus)


def published_records(tables=None) -> list[dict]:
    """The public validation corpus held out table by table as report records: one per published row of
    every table (a row not expressible yet is a record with status NOT_EXPRESSIBLE and its reasons, so
    every table of the corpus appears), 'measured' = the published figure (tokens/s per GPU, or hardware TFLOP/s per GPU
    for Narayanan et al. 2021 Table 1), 'predicted' = the prediction with the GPU type's fitted number
    fitted on the *other* tables (leave-one-table-out). `tables`: parsim.corpus.leave_one_table_out()'s
    entries (computed when not given: the one place the numbers come from). A row no candidate plan
    fits, or of a GPU type with no other table to fit on, is a failed record with that cause."""
    from parsim.corpus import leave_one_table_out
    tables = leave_one_table_out() if tables is None else tables
    out, seen = [], {}
    for e in tables:
        for r in e["row_results"]:
            pid = f"{e['table']}: {r['model']} {r.get('precision', '')}, {r['gpus']} GPUs".replace(" ,", ",")
            seen[pid] = seen.get(pid, 0) + 1
            if seen[pid] > 1:
                pid += f" #{seen[pid]}"
            rec = {"study": e["table"], "id": pid, "kind": "published", "gpu_type": e["gpu_type"], "status": "ok",
                   "point": r, "summary": {"metric": r.get("metric"), "measured": r.get("published"),
                                           "spread": [None, None], "predicted": r.get("predicted"),
                                           "error": r.get("rel_error")}}
            if "note" in r or r.get("predicted") is None:
                rec.update(status="failed", failure="not predicted",
                           cause=r.get("note") or "no candidate plan fits in memory")
            out.append(rec)
        for r in e.get("rows_not_expressible", []):      # counted and listed, never dropped
            pid = f"{e['table']}: {r['model']} {r.get('precision', '')}, {r['gpus']} GPUs".replace(" ,", ",")
            seen[pid] = seen.get(pid, 0) + 1
            if seen[pid] > 1:
                pid += f" #{seen[pid]}"
            out.append({"study": e["table"], "id": pid, "kind": "published", "gpu_type": e["gpu_type"],
                        "status": NOT_EXPRESSIBLE, "failure": NOT_EXPRESSIBLE, "cause": "; ".join(r["reasons"]),
                        "point": r, "summary": {"metric": r.get("metric"), "measured": r.get("published"),
                                                "spread": [None, None], "predicted": None, "error": None}})
    return out


PUBLISHED_TITLE = "Published-table validation: the public corpus, leave-one-table-out"


def published_inputs(tables=None, progress=None) -> tuple[list[dict], dict]:
    """(records, published) for write_report(records=..., published=...): the corpus held out table by
    table, from `tables` (parsim.corpus.leave_one_table_out()'s entries) or computed here once (`progress`
    as leave_one_table_out takes it)."""
    from parsim.corpus import blockers, leave_one_table_out
    tables = leave_one_table_out(progress) if tables is None else tables
    return published_records(tables), {"tables": tables, "blockers": blockers()}


def published_sections(tables, blockers) -> list[tuple]:
    """The report sections of the corpus beyond the common ones: the per-table held-out statistics
    (parsim.corpus's mean / max / bias, not recomputed here) and the rows not expressible, by reason."""
    from parsim.corpus import TARGETS
    def pct(x, sign=False):
        return "-" if x is None else (f"{100 * x:+.1f}%" if sign else f"{100 * x:.1f}%")
    def frac(e, key):       # the 16-bit ("fraction") or FP8 ("fraction_fp8") sustained fraction used for the table
        if e.get(key) is None:
            return "-"
        return f"{e[key]}{' (shipped: none to fit on)' if str(e.get(key + '_source')).startswith('shipped') else ''}"
    rows = []
    for e in tables:
        st, mem, res = e.get("step") or {}, e.get("memory") or {}, e.get("memory_reserved") or {}
        rows.append([e["table"], e["gpu_type"], e["rows"], e["expressible"], st.get("n", 0),
                     frac(e, "fraction"), frac(e, "fraction_fp8"),
                     pct(st.get("mean")), pct(st.get("max")),
                     pct(st.get("bias"), True), pct(mem.get("mean")), pct(mem.get("max")),
                     pct(res.get("mean")), pct(res.get("max"))])
    n_rows, n_expr = sum(e["rows"] for e in tables), sum(e["expressible"] for e in tables)
    per_table = ("Per table, held out: the GPU type's `matmul_sustained_fraction` (16-bit rows) and "
                 "`matmul_sustained_fraction_fp8` (FP8 rows) fitted on the other tables of that "
                 "type (parsim.corpus), error = predicted / published − 1; bias = the mean signed error. "
                 f"{n_rows} published rows in {len(tables)} tables, {n_expr} expressible today. Accuracy targets: "
                 f"{TARGETS}.")
    head = ["table", "GPU type", "rows", "expressible", "predicted", "16-bit fraction (fitted on the others)",
            "FP8 fraction", "step mean",
            "step max", "step bias", "memory mean (allocated)", "memory max (allocated)",
            "memory mean (as reserved)", "memory max (as reserved)"]
    by_table = [[e["table"], why, n] for e in tables for why, n in e["not_expressible"].items()]
    why = [[b["reason"], b["rows"], b["only_reason"]] for b in blockers]
    text = (f"{n_rows - n_expr} of {n_rows} published rows are not expressible yet: counted, never dropped. "
            "Corpus-wide (a row may miss several features; 'only reason' = rows that this feature alone would make "
            "expressible), then by table (a row counts under each of its reasons).")
    return [("Per table (leave-one-table-out)", per_table, [(head, rows)], []),
            ("Not expressible yet", text, [(["reason", "rows", "only reason"], why),
                                            (["table", "reason", "rows"], by_table)], [])]


# -- figures ----------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# metric -> (quantity, unit) of a point's headline number (its summary.metric): the axis labels of the
# predicted-vs-measured scatters, one figure per metric (a fraction of peak and seconds never share axes).
METRICS = {
    "step_time_s": ("training step time", "s"),
    "time_s": ("collective time", "s"),
    "gemm_best_fraction_of_peak": ("best GEMM throughput", "fraction of the device's peak FLOP/s"),
    "tokens_per_s_per_gpu": ("training throughput", "tokens/s per GPU"),
    "hardware_tflops_per_gpu": ("hardware FLOP rate", "TFLOP/s per GPU"),
}


def metric_label(metric) -> str:
    """'training step time (s)' for 'step_time_s'; an unknown metric is shown by its name."""
    q, u = METRICS.get(metric, (str(metric), ""))
    return f"{q} ({u})" if u else q


def reference_word(kinds) -> str:
    """What the predictions are compared with: 'published' (published-table rows), 'measured' (study
    points) or 'measured or published' (both in one report)."""
    kinds = set(kinds)
    return "published" if kinds == {"published"} else "measured" if "published" not in kinds else "measured or published"


def fig_scatter(df, path, title, reference="measured"):
    """Predicted vs `reference` (measured or published) of ONE metric (df's rows all have the same
    summary.metric), log axes labelled with the quantity and its unit, the ±10% band; one colour per
    `group` (default: the point's kind). None when no row has both numbers."""
    plt = _plt()
    ok = df.dropna(subset=["measured", "predicted"])
    ok = ok[(ok.measured > 0) & (ok.predicted > 0)]
    if ok.empty:
        return None
    metrics = sorted(set(ok.metric.dropna()))
    assert len(metrics) <= 1, f"one quantity per scatter, got {metrics}"
    label = metric_label(metrics[0]) if metrics else "value"
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    spread = False
    for i, (kind, g) in enumerate(ok.groupby("group" if "group" in ok else "kind")):
        yerr = None
        if g.spread_min.notna().any():
            lo = (g.measured - g.spread_min.fillna(g.measured)).clip(lower=0)
            hi = (g.spread_max.fillna(g.measured) - g.measured).clip(lower=0)
            yerr, spread = [lo.values, hi.values], True
        ax.errorbar(g.predicted, g.measured, yerr=yerr, fmt="o", ms=5, label=kind, color=plt.cm.tab10(i % 10))
    lo = min(ok.predicted.min(), ok.measured.min()) * 0.7
    hi = max(ok.predicted.max(), ok.measured.max()) * 1.4
    xs = [lo, hi]
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, [x / (1 + BAND) for x in xs], [x / (1 - BAND) for x in xs], color="0.88",
                    label=f"±{BAND:.0%} (prediction within {BAND:.0%} of {reference})")
    ylabel = f"{reference} {label}" + (" — median; bars: min–max" if spread else "")
    ax.set(xscale="log", yscale="log", xlabel=f"predicted {label}", ylabel=ylabel, xlim=xs, ylim=xs, title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def fig_scatters(df, figdir, reference="measured", by="") -> list:
    """One fig_scatter per metric of df, written as figdir/scatter_<metric>.png; `by` is said in the titles
    (e.g. "by GPU type"). Returns the paths written."""
    out = []
    for metric in sorted(set(df.metric.dropna())):
        q = METRICS.get(metric, (str(metric), ""))[0]
        title = f"{q}: predicted vs {reference}" + (f", {by}" if by else "")
        p = fig_scatter(df[df.metric == metric], Path(figdir) / f"scatter_{metric}.png", title, reference)
        if p:
            out.append(p)
    return out


def phase_table(records):
    """One row per training point: measured and predicted seconds of each phase, and its contribution
    to the step error, (predicted − measured) / measured step."""
    import pandas as pd
    rows = []
    for r in records:
        if r.get("kind") != "train" or r.get("status") != "ok" or not r.get("predicted"):
            continue
        m, p = r["measured"], r["predicted"]
        row = {"id": r["id"], "measured_step_s": m["step_time_s"], "predicted_step_s": p["step_time_s"]}
        for k in BREAKDOWN_KEYS:
            row[f"m_{k}"] = m["breakdown_s"].get(k, 0.0)
            row[f"p_{k}"] = p["breakdown_s"].get(k, 0.0)
            row[f"err_{k}"] = (row[f"p_{k}"] - row[f"m_{k}"]) / m["step_time_s"]
        # what the phases do not account for: the step error less their contributions (measured phases are timed one
        # by one and can add up to more or less than the measured step; trial 2026-11-30: 3 of 7 CPU rows)
        row["err_unattributed"] = ((p["step_time_s"] - m["step_time_s"]) / m["step_time_s"]
                                   - sum(row[f"err_{k}"] for k in BREAKDOWN_KEYS))
        rows.append(row)
    return pd.DataFrame(rows)


def fig_phase_error(pt, path):
    if pt.empty:
        return None
    plt = _plt()
    import numpy as np
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(pt) + 3), 4.2))
    n, w = len(BREAKDOWN_KEYS), 0.8 / len(BREAKDOWN_KEYS)
    x = np.arange(len(pt))
    for j, k in enumerate(BREAKDOWN_KEYS):
        ax.bar(x + (j - n / 2 + 0.5) * w, 100 * pt[f"err_{k}"], w, label=k, color=PHASE_COLOURS[k])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [_short(i) for i in pt.id], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("(predicted − measured) / measured step, %")
    ax.set_title("error by phase: each phase's share of the step-time error")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _short(pid: str) -> str:
    return pid.replace("train ", "").replace(" native", "").replace(" z0", "").replace(" rc:none", "")


def fig_breakdown(items, path, title):
    """Stacked bars of the phases (BREAKDOWN_KEYS); items: [(label, breakdown_s dict)]."""
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(items) + 3), 4.5))
    bottom = [0.0] * len(items)
    for k in BREAKDOWN_KEYS:
        v = [float(b.get(k) or 0.0) for _, b in items]
        ax.bar(range(len(items)), v, 0.7, bottom=bottom, label=k, color=PHASE_COLOURS[k])
        bottom = [a + b for a, b in zip(bottom, v)]
    ax.set_xticks(range(len(items)), [lab for lab, _ in items], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("seconds per step")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def fig_busbw(records, path):
    coll = [r for r in records if r.get("kind") == "collective" and r.get("status") == "ok"]
    if not coll:
        return None
    plt = _plt()
    groups = {}
    for r in coll:
        m = r["measured"]
        key = (r["point"].get("network") or "local", m["world"])
        groups.setdefault(key, []).append(r)
    ncol = min(3, len(groups))
    nrow = -(-len(groups) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.2 * nrow), squeeze=False)
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    for ax, ((net, world), rs) in zip(axes.ravel(), sorted(groups.items(), key=lambda kv: str(kv[0]))):
        algos = sorted({r["measured"]["algo"] for r in rs})
        for i, a in enumerate(algos):
            pts = sorted((r["measured"] for r in rs if r["measured"]["algo"] == a), key=lambda m: m["size_B"])
            c = plt.cm.tab10(i)
            ax.plot([m["size_B"] for m in pts], [m["predicted_busbw_GBps"] for m in pts], "-", color=c, label=a)
            ax.plot([m["size_B"] for m in pts], [m["busbw_GBps"] for m in pts], "o", color=c)
        ax.set(xscale="log", yscale="log", xlabel="size per rank (line: predicted, dots: measured)",
               ylabel="busbw (GB/s, 1e9 B)",
               title=f"{rs[0]['measured']['op']} on {net}, {world} ranks")
        from matplotlib.ticker import NullFormatter

        from parsim.units import fmt_bytes
        sizes = sorted({r["measured"]["size_B"] for r in rs})
        ax.set_xticks(sizes, [fmt_bytes(x) for x in sizes], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def measured_pipeline_ops(trace_dir) -> list[tuple]:
    """(rank, 'F'|'B', micro-batch, start_s, end_s) from the backend's Chrome traces (torch.profiler,
    one rank<r>.json each): the pipelining schedule's "Forward i" / "Backward i" annotations,
    on one clock (baseTimeNanoseconds + ts), t = 0 at the first op."""
    import re
    ops = []
    pat = re.compile(r"^(Forward|Backward) (\d+)$")
    for f in sorted(Path(trace_dir).glob("rank*.json")):
        rank = int(re.findall(r"\d+", f.stem)[0])
        d = json.loads(f.read_text())
        base = float(d.get("baseTimeNanoseconds", 0)) / 1e3 if isinstance(d, dict) else 0.0
        for e in d["traceEvents"] if isinstance(d, dict) else d:
            m = pat.match(str(e.get("name", "")))
            if m and e.get("ph") == "X":
                t0 = (base + float(e["ts"])) / 1e6
                ops.append((rank, m.group(1)[0], int(m.group(2)), t0, t0 + float(e["dur"]) / 1e6))
    if ops:
        t_min = min(o[3] for o in ops)
        ops = [(r, k, i, a - t_min, b - t_min) for r, k, i, a, b in ops]
    return ops


def predicted_pipeline(record):
    """The discrete-event simulation of the record's plan with the cost model's stage times."""
    from parsim.model import load_model
    from parsim.plan import Plan
    from parsim.predict import get_cluster, plan_columns, price
    from parsim.simulate import simulate_priced
    plan = Plan(**record["point"]["plan"])
    model = load_model(record["point"]["model"])
    priced = price(model, get_cluster(record.get("cluster") or "cpu-local", plan.gpus), plan_columns([plan], model))
    return simulate_priced(priced, 0, plan.schedule, plan.pp, plan.vpp, plan.microbatches)


def fig_gantt(record, path):
    ops = [tuple(o) for o in record.get("pipeline_ops") or []]
    if not ops and record.get("trace_dir") and Path(record["trace_dir"]).exists():
        ops = measured_pipeline_ops(record["trace_dir"])
    if not ops:
        return None
    from parsim.report_pipeline import COLOURS
    from parsim.schedules.pipeline import KIND_NAMES
    sim = predicted_pipeline(record)
    s = sim.schedule
    pred = [(int(r), KIND_NAMES[int(k)], int(i), a, b) for r, k, i, a, b in
            zip(s.rank, s.kind, s.microbatch, sim.start_s, sim.end_s)]
    plt = _plt()
    pp = s.pp
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 + 0.6 * pp), sharey=True)
    for ax, data, title in ((axes[0], pred, f"predicted (simulated): {sim.makespan_s * 1e3:.1f} ms"),
                            (axes[1], ops, f"measured (torch.profiler trace): "
                                          f"{max(o[4] for o in ops) * 1e3:.1f} ms")):
        for r, k, i, a, b in data:
            ax.broken_barh([(a * 1e3, (b - a) * 1e3)], (r - 0.4, 0.8), facecolors=COLOURS.get(k, "#999999"),
                           edgecolor="white", linewidth=0.4)
            ax.text((a + b) / 2 * 1e3, r, str(i), ha="center", va="center", fontsize=6, color="white")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms")
    axes[0].set_yticks(range(pp), [f"rank {r}" for r in range(pp)])
    axes[0].set_ylim(pp - 0.5, -0.5)
    fig.suptitle(f"{_short(record['id'])}: F = forward (blue), B = backward (orange), blank = idle", fontsize=9)
    fig.tight_layout()
    from parsim.outputs import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


# -- text -------------------------------------------------------------------------------

def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if pct:
        return f"{100 * v:+.1f}%"
    v = float(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}"


def summary_rows(df, reference="measured"):
    """(headers, rows) of the summary table; `reference` heads the column of what predictions are compared
    with (reference_word: measured, published)."""
    rows = []
    for _, r in df.iterrows():
        spread = "-" if r.spread_min is None or r.spread_min != r.spread_min else \
            f"[{_fmt(r.spread_min)}, {_fmt(r.spread_max)}]"
        # "compared": both sides are there (the error column says how well they agree; "ok" read as a verdict)
        status = ("compared" if r.status == "ok" else f"{NOT_EXPRESSIBLE}: {r.cause}" if r.status == NOT_EXPRESSIBLE
                  else f"FAILED ({r.failure}): {r.cause}")
        rows.append([r.id, r.metric or "-", _fmt(r.predicted), _fmt(r.measured), spread, _fmt(r.error, True), status])
    return ["point", "metric", "predicted", reference, "spread [min, max]", "error", "status"], rows


def findings(df, pt, reference="measured") -> str:
    """A short paragraph: how many points, the error overall, the largest errors and their phase."""
    ok = df[(df.status == "ok") & df.error.notna()]
    unexpressed = df[df.status == NOT_EXPRESSIBLE]
    failed = df[(df.status != "ok") & (df.status != NOT_EXPRESSIBLE)]
    tail = (f" {len(unexpressed)} published row(s) not expressible yet: listed in the summary with the reason."
            if len(unexpressed) else "")
    if ok.empty:
        return f"No point has both a {reference} figure and a prediction ({len(failed)} failed).{tail}"
    mae = ok.error.abs().mean()
    within = (ok.error.abs() <= BAND).mean()
    parts = [f"{len(ok)} point{'' if len(ok) == 1 else 's'} compared: mean |error| {mae:.1%}, {within:.0%} within ±{BAND:.0%}; "
             f"error = (predicted − {reference})/{reference}."]
    for metric, g in ok.groupby("metric"):
        if ok.metric.nunique() > 1:
            parts.append(f"{metric}: mean |error| {g.error.abs().mean():.1%} over {len(g)} points.")
    worst = ok.reindex(ok.error.abs().sort_values(ascending=False).index).head(3)
    descr = []
    for _, r in worst.iterrows():
        d = f"{r.id} ({r.error:+.0%})"
        if not pt.empty and r.id in set(pt.id):
            row = pt[pt.id == r.id].iloc[0]
            k = max(BREAKDOWN_KEYS, key=lambda k: abs(row[f"err_{k}"]))
            d += f", mostly {k} ({k} predicted {row[f'p_{k}']:.3g} s vs measured {row[f'm_{k}']:.3g} s)"
        descr.append(d)
    parts.append("Largest errors: " + "; ".join(descr) + ".")
    if not pt.empty:
        mean_abs = {k: pt[f"err_{k}"].abs().mean() for k in BREAKDOWN_KEYS}
        k = max(mean_abs, key=mean_abs.get)
        parts.append(f"Over the training points the phase that contributes most to the error is {k} "
                     f"(mean |contribution| {mean_abs[k]:.1%} of the measured step).")
    if len(failed):
        parts.append(f"{len(failed)} point(s) failed: " + "; ".join(f"{r.id}: {r.failure}" for _, r in failed.iterrows())
                     + ".")
    return " ".join(parts) + tail


def _load_note(recs) -> str:
    """A warning when the machine was busier than its CPUs while points ran (1-minute load average)."""
    loads = [(r.get("loadavg_1_5_15") or (r.get("machine") or {}).get("loadavg_1_5_15") or [0])[0] for r in recs]
    cpus = max([(r.get("machine") or {}).get("cpus") or 0 for r in recs] or [0])
    if not cpus or not loads or max(loads) <= cpus:
        return ""
    return (f" The machine was loaded beyond its {cpus} CPUs while the study ran (1-minute load average up to "
            f"{max(loads):.1f}): measured times include that contention, the predictions do not.")


# -- the report -------------------------------------------------------------------------

def write_report(paths=(), out="report", formats=("md", "html"), title="", records=None, published=None) -> list[Path]:
    """Render the report of `paths` (and/or `records`) into `out`; returns the files written.
    `published`: {"tables": parsim.corpus.leave_one_table_out(), "blockers": parsim.corpus.blockers()}
    adds the corpus's per-table and not-expressible sections (its records come in `records`)."""
    from parsim import results as R
    from parsim.report import write_atomic
    recs, plans = load_inputs(paths) if paths else ([], [])
    recs = list(records or []) + recs
    if not recs and not plans:
        raise ParsimError("nothing to report: the inputs hold no points")
    from parsim.outputs import make_output_dir
    out = make_output_dir(out, "--out")        # the directory itself, never its parents; a file there is refused
    figdir = out / "figures"
    try:
        figdir.mkdir(exist_ok=True)
    except OSError as e:
        raise ParsimError(f"cannot create {figdir}: {e.strerror or e}") from None
    sections = []          # (heading, paragraph, [(headers, rows)], [figure paths])
    if recs:
        df = R.frame(recs)
        df["group"] = [r.get("gpu_type") or r.get("kind") for r in recs]    # scatter colours: GPU type of a published row
        pt = phase_table(recs)
        reference = reference_word(df.kind)
        head, rows = summary_rows(df, reference)
        studies = ", ".join(sorted({str(s) for s in df.study.dropna()}))
        sections.append(("Findings", findings(df, pt, reference) + _load_note(recs), [], []))
        if published:
            sections += published_sections(published["tables"], published.get("blockers") or [])
        pub_only = reference == "published"
        how_pub = ("Published = the source's figure; predicted held out (leave-one-table-out: the GPU type's fitted "
                   "number fitted on its other tables), the fastest plan that fits over the knobs the source leaves "
                   "unstated. Every row of every table is listed; rows not expressible yet say why.")
        how_meas = ("Measured = median of the timed repeats (training: max over ranks per step); spread = fastest and "
                    "slowest repeat.")
        how = how_pub if pub_only else how_meas if reference == "measured" else f"{how_meas} {how_pub}"
        how += " One scatter per metric: each plots one quantity, in its unit."
        scatters = fig_scatters(df, figdir, reference, "by GPU type" if pub_only else "")
        sections.append(("Summary", f"{'Tables' if pub_only else 'Study'}: {studies}. {how}", [(head, rows)], scatters))
        machines = {json.dumps(r.get("machine"), sort_keys=True) for r in recs if r.get("machine")}
        vers = {json.dumps(r.get("versions"), sort_keys=True) for r in recs if r.get("versions")}
        profs = {json.dumps({k: (v[:160] + "…" if isinstance(v, str) and len(v) > 160 else v)
                             for k, v in (r.get("profile") or {}).items() if k in ("name", "file", "source")},
                            sort_keys=True) for r in recs if r.get("profile")}
        if machines or vers:
            sections.append(("Where it ran", "Machine: " + ("; ".join(sorted(machines)) or "not recorded")
                             + ". Versions: " + ("; ".join(sorted(vers)) or "not recorded") + ". Profile(s): "
                             + ("; ".join(sorted(profs)) or "not recorded") + ".", [], []))
        if not pt.empty:
            ph_rows = [[_short(r.id)] + [_fmt(r[f"err_{k}"], True) for k in BREAKDOWN_KEYS]
                       + [_fmt(r["err_unattributed"], True)] for _, r in pt.iterrows()]
            items = []
            for _, r in pt.iterrows():
                items.append((f"{_short(r.id)} P", {k: r[f"p_{k}"] for k in BREAKDOWN_KEYS}))
                items.append((f"{_short(r.id)} M", {k: r[f"m_{k}"] for k in BREAKDOWN_KEYS}))
            sections.append(("Error by phase", "Each phase's (predicted − measured) seconds as a share of the measured "
                             "step; with the last column (the step error less the phases': the measured phases, timed "
                             "one by one, need not add up to the measured step) they sum to the step error.",
                             [(["point", *BREAKDOWN_KEYS, "not in a phase"], ph_rows)],
                             [fig_phase_error(pt, figdir / "phase_error.png"),
                              fig_breakdown(items, figdir / "breakdown.png",
                                            "breakdown per plan: P = predicted, M = measured")]))
        bw = fig_busbw(recs, figdir / "busbw.png")
        if bw:
            sections.append(("Collectives", "Bus bandwidth (nccl-tests convention, GB = 1e9 B) by size: lines "
                             "predicted on the cluster graph, points measured.", [], [bw]))
        traced = [r for r in recs if (r.get("pipeline_ops") or r.get("trace_dir")) and r.get("status") == "ok"]
        for r in traced[:1]:
            try:
                g = fig_gantt(r, figdir / "gantt.png")
            except (ParsimError, KeyError, OSError, ValueError) as e:
                g, r = None, dict(r, gantt_error=str(e))
            if g:
                sections.append(("Pipeline", "One pipelined plan: the simulator's schedule with the cost model's "
                                 "stage times beside the backend's measured trace (one extra, untimed step).", [], [g]))
    if plans:
        keys = ["fits", "step_time_s", "tokens_per_s", "mfu", "memory_GiB"] + [f"breakdown_s.{k}" for k in BREAKDOWN_KEYS]
        rows = []
        for k in keys:
            row = [k]
            for p in plans:
                v = p["report"]
                for part in k.split("."):
                    v = v.get(part) if isinstance(v, dict) else None
                row.append(("yes" if v else "no") if k == "fits" and isinstance(v, bool) else _fmt(v))
            rows.append(row)
        desc = [["plan"] + _plan_cells(plans)]
        verdict = _whatif_verdict(plans)
        sections.append(("What-if: plans side by side", verdict,
                         [(["", *[p["name"] for p in plans]], desc + rows)],
                         [fig_breakdown([(p["name"], p["report"]["breakdown_s"]) for p in plans],
                                        figdir / "whatif.png",
                                        "step breakdown per input (predicted, or measured for a run)")]))
    written = []
    title = title or "parsim comparison report"
    if "md" in formats:
        md = [f"# {title}", ""]
        for h, text, tables, figs in sections:
            md += [f"## {h}", "", text, ""]
            for th, tr in tables:
                md += [md_table(th, tr), ""]
            md += [f"![{h}](figures/{Path(f).name})\n" for f in figs if f]
        write_atomic(out / "report.md", "\n".join(md))
        written.append(out / "report.md")
    if "html" in formats:
        body = [f"<h1>{html.escape(title)}</h1>"]
        for h, text, tables, figs in sections:
            body += [f"<h2>{html.escape(h)}</h2>", f"<p>{html.escape(text)}</p>"]
            body += [html_table(th, tr) for th, tr in tables]
            for f in figs:
                if f:
                    b64 = base64.b64encode(Path(f).read_bytes()).decode()
                    body.append(f'<figure><img alt="{html.escape(h)}" src="data:image/png;base64,{b64}"></figure>')
        doc = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
               "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
               "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
               "th{background:#f2f2f2}img{max-width:100%}</style></head><body>" + "\n".join(body) + "</body></html>\n")
        write_atomic(out / "report.html", doc)
        written.append(out / "report.html")
    return written
