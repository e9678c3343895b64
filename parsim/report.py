"""Text for people: a StepReport's arithmetic, ranked plans; their CSV/JSON records.

Tables are laid out by ``parsim.tables`` (the one renderer); units are in every column name.
"""
from __future__ import annotations

import csv
import io
import json

from parsim.outputs import write_atomic  # noqa: E402,F401  (the one writer; kept importable from here)
from parsim.plan import FP8_DTYPES
from parsim.tables import terminal_width, text_table, wrap


def _pct(x, total):
    return f"{100 * x / total:5.1f}%" if total else "-"


def step_report_text(rep) -> str:
    """The arithmetic of one prediction: plan, breakdown of the step, memory by kind."""
    p = rep.plan
    head = (f"{rep.model} on {rep.gpus} × {rep.device} ({rep.cluster}): dp={p['dp']} tp={p['tp']} pp={p['pp']}"
            + (f" ep={p['ep']}" if p.get("ep", 1) > 1 else "") + (f" cp={p['cp']}" if p.get("cp", 1) > 1 else "")
            + f" vpp={p['vpp']} micro_batch={p['micro_batch']} global_batch={p['global_batch']} schedule={p['schedule']}"
            f" grad_sync={p['grad_sync']} zero={p['zero']} recompute={p['recompute']}"
            f" sp={p['sequence_parallel']} dtype={p['dtype']}"
            + (f" recompute_every={p['recompute_every']}" if p.get("recompute_every", 1) > 1 else "")
            + (" kernels=eager" if p.get("kernels") == "eager" else "") + (" async_tp=True" if p.get("async_tp") else "")
            + (" tp_overlap=True" if p.get("tp_overlap") else "") + (" pp_overlap=True" if p.get("pp_overlap") else ""))
    total = rep.step_time_s
    rows = [(k, f"{v:.4f}", _pct(v, total)) for k, v in rep.breakdown_s.items()]
    rows.append(("step_time", f"{total:.4f}", "100.0%"))
    if getattr(rep, "model_summary", ""):
        head = (f"model {rep.model_summary}\n" f"params total {rep.params_total:,}  active {rep.params_active:,}  "
                f"seq_len {rep.seq_len}\n" + head)
    width = terminal_width()
    out = [wrap(head, width).rstrip("\n"), text_table(["part", "seconds", "share"], rows,
                                                      "step time breakdown (bottleneck stage)", width=width)]
    mem = rep.memory_breakdown_GiB
    mrows = [(k, f"{v:.2f}") for k, v in mem.items()] + [("total", f"{rep.memory_GiB:.2f}")]
    acc = getattr(rep, "memory_accounting", "")
    title = (f"memory per device, worst pipeline rank ({getattr(rep, 'memory_worst_rank', 0)})"
             + (f", {acc} accounting" if acc else "")
             + (f", {'fp32' if rep.grad_dtype == 'fp32' else '16-bit'} gradients" if getattr(rep, "grad_dtype", "") else "")
             + (", Transformer Engine fused loss" if getattr(rep, "cross_entropy", "") == "te" else ""))
    cap = getattr(rep, "memory_capacity_GiB", 0.0)
    caption = (f"capacity {cap:.2f} GiB as the device reports it, less {rep.memory_headroom_GiB:.2f} GiB headroom "
               f"(CUDA context, NCCL buffers, fragmentation) = {cap - rep.memory_headroom_GiB:.2f} GiB usable"
               if cap else None)
    out.append(text_table(["kind", "GiB"], mrows, title, caption, width=width))
    tail = [f"tokens/s {rep.tokens_per_s:,.0f}   samples/s {rep.samples_per_s:,.2f}   "
            f"model TFLOP/s/GPU {_tflops(rep.model_tflops_per_gpu)} (MFU {100 * rep.mfu:.1f}%)   "
            f"hardware TFLOP/s/GPU {_tflops(rep.hardware_tflops_per_gpu)} (HFU {100 * rep.hfu:.1f}%)",
            "fits: yes" if rep.fits else f"fits: NO — {rep.fits_reason}"]
    tail += [f"note: {n}" for n in rep.notes if n.startswith(("attention:", "context parallel", "expert parallel", "gradients:", "loss:", "overlap:",
                                                                "recompute:", "window:")
                                                               + FP8_DTYPES)]
    out += [wrap(line, width).rstrip("\n") for line in tail]
    return "\n".join(out) + "\n"


PLAN_COLS = ["dp", "tp", "pp", "ep", "cp", "vpp", "micro_batch", "schedule", "grad_sync", "zero", "recompute",
             "sequence_parallel", "step_time_s", "step_time_closed_s", "tokens_per_s", "mfu", "memory_GiB"]
BREAK_COLS = ["compute_s", "recompute_s", "tp_comm_s", "ep_comm_s", "cp_comm_s", "pp_comm_s", "bubble_s", "dp_comm_exposed_s", "optimizer_s"]
# the default `plan` table (fits parsim.tables.WIDTH = 120 characters): what a user choosing a plan
# compares, under short headers; ep and cp only when a shown plan uses them. `--wide`: every column.
SHORT_COLS = {"dp": "dp", "tp": "tp", "pp": "pp", "ep": "ep", "cp": "cp", "vpp": "vpp", "micro_batch": "mb",
              "schedule": "schedule", "grad_sync": "grad sync", "zero": "zero", "recompute": "recompute",
              "sequence_parallel": "sp", "step_time_s": "step s", "tokens_per_s": "tokens/s", "mfu": "MFU",
              "memory_GiB": "mem GiB"}
SHORT_LEGEND = ("mb = micro-batch (sequences); sp = sequence parallel; step s = predicted step time (s); "
                "mem GiB = memory per GPU, worst pipeline rank; --wide: every column (closed-form step time, "
                "the step's breakdown)")


def _fmt(col, v, row=None):
    if col == "step_time_closed_s" and row is not None:
        # the closed-form pipeline price, shown where the simulator re-priced the plan and differs; a plan the
        # simulator did not re-play has only the closed form (trial 2026-11-30: '=' there read as "agrees")
        if not row["simulated"]:
            return "(step)"
        if abs(float(v) - float(row["step_time_s"])) < 5e-4 * float(v):
            return "="
    if col == "mfu":
        return f"{100 * v:.1f}%"
    if col == "sequence_parallel":
        return "sp" if v else "-"
    if isinstance(v, float) or hasattr(v, "dtype") and v.dtype.kind == "f":
        v = float(v)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return str(v)


def _ranks(nums: list) -> str:
    """'1–8, 10' for sorted 1-based ranks."""
    out, start = [], None
    for i, k in enumerate(nums):
        if start is None:
            start = k
        if i + 1 == len(nums) or nums[i + 1] != k + 1:
            out.append(f"{start}" if start == k else f"{start}–{k}")
            start = None
    return ", ".join(out)


def plans_text(res, top: int, wide: bool = False) -> str:
    """The top `top` plans of a search as a terminal table: by default the columns SHORT_COLS
    names (fits 120 characters), with `wide` every column of PLAN_COLS and BREAK_COLS under its
    full name (as wide as they need; CSV and JSON always carry every column)."""
    cols = res.columns
    n = min(top, len(res))
    if wide:
        shown = PLAN_COLS + BREAK_COLS
        headers = ["#"] + shown
    else:
        used = lambda c: c in cols and any(int(cols[c][i]) != 1 for i in range(n))   # noqa: E731
        shown = [c for c in SHORT_COLS if c not in ("ep", "cp") or used(c)]
        headers = ["#"] + [SHORT_COLS[c] for c in shown]
    rows = [[i + 1] + [_fmt(c, cols[c][i], {k: cols[k][i] for k in ("simulated", "step_time_s")})
                       for c in shown] for i in range(n)]
    a = res.attrs
    title = (f"top {n} of {len(res):,} fitting plans: {a['model']} on {a['gpus']} × {a['device']} ({a['cluster']}), "
             f"global batch {a['global_batch']} × seq {a['seq_len']}, {a['dtype']}")
    if a.get("model_summary"):
        title = f"model {a['model_summary']}\n" + title
    rej = "; ".join(f"{k}: {v:,}" for k, v in res.rejected.items()) or "none"
    if a.get("memory_accounting"):
        grads = {"fp32": ", fp32 gradients", "16bit": ", 16-bit gradients"}.get(a.get("grad_dtype"), "")
        grads += ", Transformer Engine fused loss" if a.get("cross_entropy") == "te" else ""
        title += (f"; memory: {a['memory_accounting']} accounting{grads}, {a['memory_headroom_GiB']:.2f} GiB headroom of "
                  f"{a['memory_capacity_GiB']:.2f} GiB")
    caption = (f"{res.candidates:,} candidates generated, {res.priced:,} valid and priced in {res.seconds:.2f} s; "
               f"rejected: {rej}\n")
    sim = [bool(cols["simulated"][i]) for i in range(n)]
    replayed = ("every shown plan's step time is re-played by the pipeline simulator" if all(sim) else
                f"the step time of plans {_ranks([i + 1 for i in range(n) if sim[i]])} is re-played by the pipeline "
                f"simulator, of the others the closed form (`parsim predict` re-plays any plan: it may differ by "
                f"~0.5%)" if any(sim) else "step times are the closed form (no plan re-played by the simulator)")
    if wide:
        caption += (f"{replayed}; step_time_closed_s is the closed form ('=' where they agree within 0.05%, "
                    f"'(step)' where step_time_s is itself the closed form)")
    else:
        caption += replayed + "\n" + SHORT_LEGEND
    if a.get("dtype") in FP8_DTYPES:
        caption += f"\n{a['dtype']}: MFU against the bf16 peak, as NeMo and Megatron report FP8 training"
    if a.get("dtype") == "mxfp8":          # what MXFP8 costs beyond its priced casts and scales (predict says it per plan)
        from parsim.corpus import precision_gap_words
        published = precision_gap_words("fp8", "mxfp8")
        if published:
            caption += (f"\nmxfp8 against the same plan in fp8: {published}; parsim prices MXFP8's casts and scales "
                        f"only (`parsim predict` gives a plan's own priced gap): expect these plans slower than shown")
    if a.get("device") and a.get("dtype"):       # how sure: the held-out error on published runs like these
        from parsim.accuracy import lines, ranked_first_knobs
        first = ranked_first_knobs(cols, a.get("seq_len")) if n else None
        caption += "\n" + "\n".join(lines(a["device"], a["dtype"], bool(a.get("moe")), first,
                                          [float(x) for x in cols["step_time_s"]],   # every fitting plan, not only shown
                                          a["memory_accounting"] if a.get("memory_heldout") else None,
                                          float(cols["memory_GiB"][0]) if n else 0.0,
                                          a["memory_capacity_GiB"] - a["memory_headroom_GiB"], model=a.get("model_evidence", a.get("model")),
                                          as_named=a.get("model")))
        if a.get("memory_heldout"):          # the shown plans past #1 whose fit the worst published error would undo
            from parsim.accuracy import memory_at_risk
            risk = [k for k in memory_at_risk(a["memory_accounting"], [float(x) for x in cols["memory_GiB"][:n]],
                                               a["memory_capacity_GiB"] - a["memory_headroom_GiB"]) if k > 1]
            if risk:
                caption += ("\nplans " + ", ".join(f"#{k}" for k in risk) + " also fit only if their memory is not as "
                            "far under as the worst published run's")
    return text_table(headers, rows, title, caption, width=None if wide else terminal_width())


def _tflops(x: float) -> str:
    """TFLOP/s with one decimal, or three significant digits below 10 (a CPU's 0.0035 was printed '0.0' beside a
    28% MFU)."""
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def plans_records(res, top: int | None = None) -> list[dict]:
    n = len(res) if top is None else min(top, len(res))
    out = []
    for i in range(n):
        rec = {}
        for k, v in res.columns.items():
            x = v[i]
            rec[k] = x.item() if hasattr(x, "item") else x
        out.append(rec)
    return out


def plans_csv(res, top: int | None = None) -> str:
    recs = plans_records(res, top)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(res.columns))
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


def to_json(obj) -> str:
    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "to_dict"):
            return o.to_dict()
        raise TypeError(type(o).__name__)
    return json.dumps(obj, indent=2, default=default, allow_nan=False) + "\n"
