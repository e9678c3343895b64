"""The public validation corpus (parsim/data/validation/*.csv) and its leave-one-table-out check.

Each CSV is one published source: header comment lines ``# key: value`` give its source (URL and
table), date, hardware, software stack, precision and what the source leaves unstated; each row
names the published table it comes from (column ``table``). A *table* here is one published table
(file + ``table`` column); Narayanan et al. 2021 Table 1 keeps its own file and reader
(parsim.validation) and joins the corpus as one table.

Method (issue 15). A device profile carries two fitted numbers, one per precision class:
``matmul_sustained_fraction`` (16-bit plans) and ``matmul_sustained_fraction_fp8`` (every tensor-core
kernel of an fp8 plan) (parsim.hardware). Each is fitted per GPU type across all tables of that type on
the rows of its precision class, never per table or row: the fraction on a grid (step 0.005)
minimising the mean |relative error| of the published throughput over every expressible row of that
class. Leave-one-table-out: each row of a table is predicted with its class's fraction fitted on the
*other* tables of its GPU type, and each table is reported by its
mean / max / bias of the relative error (prediction / published − 1), for throughput (tokens/s
per GPU, or hardware TFLOP/s per GPU where that is what is published) and for peak memory where
published (memory does not depend on the fitted number).

Knobs a source leaves unstated (micro-batch, virtual stages, recompute for NeMo rows) are searched:
every candidate that fits in memory is priced and the fastest is taken, as the authors tuned for
throughput; the chosen values are reported with each row.

A row the model cannot price as published (a precision outside parsim.plan.DTYPES such as MX-FP8,
FP8 on a device without FP8 tensor cores, a mixture-of-experts model without a preset or ep on a dense
one, torchtitan's op-level or layer-frequency selective activation checkpointing, torch.compile fusion,
a model without a preset) is kept and counted as "not expressible yet: <reason>"; it never enters
a fit. Expressibility is read from what parsim.plan and the rule book accept today (DTYPES, the Plan
fields ep and cp, parsim.rules), so rows become expressible as the model grows: FP8, CP and MoE rows
on Hopper and Blackwell did with --dtype fp8, --cp and --ep.
"""
from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parsim.errors import ParsimError
from parsim.hardware import get_device
from parsim.model import load_model, preset_names
from parsim.plan import DTYPES, RECOMPUTE, Plan, validate

CORPUS_DIR = Path(__file__).parent / "data" / "validation"
NARAYANAN = "narayanan2021_table1"
FRACTIONS = np.round(np.arange(0.50, 1.0001, 0.005), 3)
GiB = 2 ** 30
# What each GPU type's profile keys are (a fitted number is shared by the profiles of one chip).
GPU_TYPE_DEVICES = {"a100-80gb": ("a100-80gb", "a100-40gb"), "h100-sxm": ("h100-sxm",), "h200": ("h200",),
                    "b200": ("b200",), "h100-hbm2e-500w": ("h100-hbm2e-500w",)}
DEFAULT_CLUSTER = {"a100-80gb": "dgx-a100", "h100-sxm": "dgx-h100", "h200": "dgx-h200", "b200": "dgx-b200",
                   "h100-hbm2e-500w": "grand-teton-h100"}
MOE_MODELS = ("mixtral", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss")


@dataclass
class CorpusRow:
    """One published measurement and the plans it may have run (unstated knobs searched)."""
    source: str                     # file stem
    table: str                      # published table within the source
    gpu_type: str
    model: str
    gpus: int
    precision: str
    seq_len: int
    global_batch: int | None
    metric: str                     # "tokens_per_s_per_gpu" or "hardware_tflops_per_gpu"
    published: float                # the published value of `metric`
    peak_memory_GiB: float | None
    cluster: str = ""
    knobs: dict = field(default_factory=dict)   # the stated plan knobs
    techniques: str = ""
    reasons: list = field(default_factory=list)   # [] = expressible; else every reason why not
    plans: list = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def table_id(self) -> str:
        return f"{self.source}: {self.table}"


def read_csv_with_header(path) -> tuple[dict, list[dict]]:
    """(header, rows) of a corpus CSV: ``# key: value`` comment lines (repeated keys joined by
    '; ') and the CSV rows below them."""
    header, lines = {}, []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            k, _, v = line[1:].partition(":")
            if v:
                k = k.strip()
                header[k] = f"{header[k]}; {v.strip()}" if k in header else v.strip()
        elif line.strip():
            lines.append(line)
    return header, list(csv.DictReader(lines))


def _int(x):
    return int(x) if x not in (None, "", "n/a") else None


def _float(x):
    return float(x) if x not in (None, "", "n/a") else None


def _reasons(r: dict, gpu_type: str) -> list[str]:
    """Every reason parsim cannot price this row as published today ([] when it can)."""
    prec, model, tech = r["precision"], r["model"], r.get("techniques", "") or ""
    rc = r.get("recompute", "") or ""
    out = []
    if prec not in DTYPES:
        out.append(f"precision {prec} (not a dtype of parsim.plan.DTYPES: {', '.join(DTYPES)})")
    elif prec == "fp8" and gpu_type in GPU_TYPE_DEVICES and not _has_fp8(gpu_type):
        out.append(f"precision fp8 on {gpu_type} (no FP8 tensor cores)")
    ep = _int(r.get("ep")) or 1
    if model not in preset_names():
        out.append(f"mixture of experts: no model preset for {model}" if model.startswith(MOE_MODELS)
                   else f"no model preset for {model}")
    elif ep > 1 and not load_model(model).experts:
        out.append(f"mixture of experts: ep = {ep} on {model}, a dense model")
    if rc.startswith("selective-"):
        out.append(f"torchtitan {rc[len('selective-'):]}-level selective activation checkpointing (parsim's recompute "
                   f"policies are {', '.join(RECOMPUTE)})")
    if "torch.compile" in tech:
        out.append("torch.compile kernel fusion (no fusion knob in the model)")
    if "AsyncTP" in tech:
        out.append("async tensor parallelism (no knob)")
    if gpu_type not in DEFAULT_CLUSTER and not r.get("cluster"):
        out.append(f"no cluster preset for {gpu_type}")
    return out


def _has_fp8(gpu_type: str) -> bool:
    from parsim.hardware import get_device
    return bool(get_device(GPU_TYPE_DEVICES[gpu_type][0]).peak_flops.get("fp8", 0.0))


def _candidates(r: dict, model) -> list[Plan]:
    """Every valid plan for the row's stated knobs; unstated ones (micro-batch, vpp, recompute) searched."""
    gpus, tp, pp = int(r["gpus"]), _int(r["tp"]) or 1, _int(r["pp"]) or 1
    cp, ep = _int(r.get("cp")) or 1, _int(r.get("ep")) or 1
    dp = gpus // (tp * pp * cp)
    fsdp = _int(r.get("fsdp"))
    torchtitan = r["source"].startswith("torchtitan")
    zero = 3 if (torchtitan or (fsdp or 0) > 0) else 1         # Megatron's distributed optimizer = ZeRO-1
    gb = _int(r.get("global_batch"))
    mbs = [_int(r["micro_batch"])] if _int(r.get("micro_batch")) else [1, 2, 4, 8]
    L = model.layers
    vp = _int(r.get("vp"))
    vpps = [vp] if vp else ([1] if pp == 1 else [1] + [v for v in range(2, L // pp + 1) if (L // pp) % v == 0])
    rcs = [r["recompute"]] if r.get("recompute") else list(RECOMPUTE)
    # NeMo / Megatron-Bridge recipes run TP communication overlap (Transformer Engine userbuffers) with tp > 1:
    # e.g. Megatron-Bridge scripts/performance/configs/llama/llama3_llm_pretrain.py sets
    # comm_overlap.tp_comm_overlap_cfg = userbuffers_fp8_h100_h8192_tp4_mbs1_seqlen8192 for Llama 3 70B on H100, NeMo's
    # llama31_405b recipe MegatronCommOverlapCallback(tp_comm_overlap=True, ...); torchtitan has no such knob.
    tpo = (not torchtitan) and tp > 1
    # ... and overlap the interleaved schedule's send/recv with compute (Megatron-Bridge
    # training/comm_overlap.py: overlap_p2p_comm = True when pp > 1 and vp > 1; NeMo 2.0's MegatronCommOverlapCallback
    # the same)
    out = []
    for mb in mbs:
        for v in vpps:
            for rc in rcs:
                sched = r.get("schedule") or ("interleaved" if v > 1 else "1f1b")
                p = Plan(dp=dp, tp=tp, pp=pp, vpp=v, micro_batch=mb, global_batch=gb, seq_len=int(r["seq_len"]),
                         dtype=r["precision"], schedule=sched, grad_sync="native", zero=zero, recompute=rc,
                         sequence_parallel=tp > 1, overlap=True, flash_attention=True, ep=ep, cp=cp, tp_overlap=tpo,
                         pp_overlap=(not torchtitan) and sched == "interleaved")
                try:
                    validate(p, model, gpus)
                except ParsimError:
                    continue
                out.append(p)
    return out


def load_file(path) -> list[CorpusRow]:
    path = Path(path)
    header, raw = read_csv_with_header(path)
    out = []
    for r in raw:
        r = dict(r, source=path.stem)
        gpu_type = r.get("gpu_type") or header.get("gpu_type", "")
        tps, tfl = _float(r.get("tokens_per_s_per_gpu")), _float(r.get("model_tflops_per_gpu"))
        row = CorpusRow(source=path.stem, table=r["table"], gpu_type=gpu_type, model=r["model"], gpus=int(r["gpus"]),
                        precision=r["precision"], seq_len=int(r["seq_len"]), global_batch=_int(r.get("global_batch")),
                        metric="tokens_per_s_per_gpu", published=tps, peak_memory_GiB=_float(r.get("peak_memory_GiB")),
                        cluster=header.get("cluster") or DEFAULT_CLUSTER.get(gpu_type, ""),
                        knobs={k: r.get(k, "") for k in ("micro_batch", "fsdp", "tp", "pp", "cp", "vp", "ep",
                                                          "schedule", "recompute")},
                        techniques=r.get("techniques", "") or "")
        row.reasons = _reasons(r, gpu_type)
        if not row.reason:
            if row.global_batch is None:
                row.reasons = ["global batch unstated"]
            else:
                row.plans = _candidates(r, load_model(row.model))
                if not row.plans:
                    row.reasons = ["no valid plan for the stated knobs"]
        out.append(row)
    return out


def _narayanan_rows() -> list[CorpusRow]:
    from parsim.validation import rows as n_rows
    out = []
    for r in n_rows():
        out.append(CorpusRow(source=NARAYANAN, table="Table 1", gpu_type="a100-80gb", model=r.model, gpus=r.gpus,
                             precision="fp16", seq_len=2048, global_batch=r.global_batch,
                             metric="hardware_tflops_per_gpu", published=r.measured_tflops, peak_memory_GiB=None,
                             cluster="dgx-a100", knobs={"tp": r.tp, "pp": r.pp}, plans=r.plans))
    return out


@functools.lru_cache(maxsize=None)
def load_corpus() -> tuple:
    """Every corpus row, Narayanan et al. 2021 Table 1 first, then the CSVs in name order."""
    rows = _narayanan_rows()
    for p in sorted(CORPUS_DIR.glob("*.csv")):
        if p.stem != NARAYANAN:
            rows += load_file(p)
    return tuple(rows)


# The fitted constants, one per GPU type and precision class: the 16-bit one (matmul_sustained_fraction) is fitted
# on 16-bit rows only, the FP8 one (matmul_sustained_fraction_fp8, applied to every tensor-core kernel of an fp8
# plan) on FP8 rows only. Each is fitted per GPU type across all its tables, never per table or row. FP8 rows also
# depend on the FP8 GEMM data and recipe (casts, which GEMMs run in FP8), so fitting the 16-bit constant to them
# would make it absorb their error (on H100 the FP8 rows alone pushed it to the grid's upper end before the FP8
# fraction existed). A class without a row elsewhere is predicted with the shipped constant (said in the entry).
FIT_PRECISIONS = ("bf16", "fp16")
CLASSES = ("16-bit", "fp8")


def precision_class(precision: str) -> str:
    """'fp8' for FP8 rows, '16-bit' for bf16/fp16 (the two fitted constants of a GPU type)."""
    return "fp8" if precision == "fp8" else "16-bit"


def _device(gpu_type: str, fraction: float | None, cls: str = "16-bit"):
    """The GPU type's profile with `fraction` as its 16-bit (cls '16-bit') or FP8 (cls 'fp8') sustained fraction."""
    from parsim.hardware import get_device
    dev = get_device(GPU_TYPE_DEVICES[gpu_type][0])
    if fraction is None:
        return dev
    return dev.with_sustained_fraction(fraction) if cls == "16-bit" else dev.with_sustained_fraction(
        dev.sustained_fraction, fp8=fraction)


def shipped_fraction(gpu_type: str, cls: str = "16-bit") -> float:
    """The profile's constant of that class (FP8: its own, else the 16-bit one it falls back to)."""
    dev = get_device(GPU_TYPE_DEVICES[gpu_type][0])
    return dev.sustained_fraction if cls == "16-bit" else (dev.sustained_fraction_fp8 or dev.sustained_fraction)


def predict_row(row: CorpusRow, fraction: float | None = None) -> dict:
    """Best predicted throughput over the row's candidate plans that fit in memory.

    `fraction`: the sustained fraction of the row's precision class (None: the shipped profile).
    Returns {"value": predicted `row.metric`, "memory_GiB", "plan"}; value is nan when no
    candidate fits. Closed-form pipeline pricing (parsim.predict.price), as parsim.validation."""
    from parsim.predict import get_cluster, plan_columns, price
    model = load_model(row.model)
    cl = get_cluster(row.cluster, row.gpus)
    dev = _device(row.gpu_type, fraction, precision_class(row.precision))
    r = price(model, cl, plan_columns(row.plans, model), device=dev)
    step = np.asarray(r["step_time_s"], dtype=float)
    if row.metric == "hardware_tflops_per_gpu":
        val = r["hardware_flops"] / step / row.gpus / 1e12
    else:
        seq = np.array([p.seq_len or model.seq_len for p in row.plans], dtype=float)
        gb = np.array([p.global_batch for p in row.plans], dtype=float)
        val = gb * seq / step / row.gpus
    mem = np.asarray(r["memory_bytes"], dtype=float)
    ok = mem <= dev.memory_bytes
    if not ok.any():
        i = int(np.argmin(mem))
        return {"value": float("nan"), "memory_GiB": float(mem[i] / GiB), "plan": row.plans[i]}
    i = int(np.argmax(np.where(ok, val, -np.inf)))
    return {"value": float(val[i]), "memory_GiB": float(mem[i] / GiB), "plan": row.plans[i]}


@functools.lru_cache(maxsize=None)
def _error_grid(gpu_type: str, cls: str = "16-bit") -> tuple:
    """(expressible rows of this GPU type and precision class, rel. error [row, fraction]): what the fit uses."""
    rows = [r for r in load_corpus() if r.gpu_type == gpu_type and not r.reason and precision_class(r.precision) == cls]
    err = np.array([[predict_row(r, f)["value"] / r.published - 1 for f in FRACTIONS] for r in rows]).reshape(len(rows), len(FRACTIONS))
    return rows, err


def fit_fraction(gpu_type: str, exclude_table: str | None = None, cls: str = "16-bit") -> float | None:
    """The grid fraction minimising mean |rel. error| over every expressible row of `gpu_type` and precision
    class `cls` ('16-bit' or 'fp8') outside `exclude_table`; None when there is no such row."""
    rows, err = _error_grid(gpu_type, cls)
    use = np.array([r.table_id != exclude_table for r in rows], dtype=bool)
    if not use.any():
        return None
    e = np.abs(err[use])
    e = np.where(np.isnan(e), 1.0, e)       # a row no candidate fits counts as 100% off
    return float(FRACTIONS[int(np.argmin(e.mean(axis=0)))])


def _stats(errs) -> dict:
    e = np.array([x for x in errs if x is not None and np.isfinite(x)], dtype=float)
    if not len(e):
        return {}
    return {"mean": float(np.abs(e).mean()), "max": float(np.abs(e).max()), "bias": float(e.mean()), "n": int(len(e))}


def leave_one_table_out() -> list[dict]:
    """One entry per published table: held-out errors, the fractions used (per precision class), rows and reasons."""
    corpus = load_corpus()
    tables = list(dict.fromkeys(r.table_id for r in corpus))
    out = []
    for t in tables:
        rows = [r for r in corpus if r.table_id == t]
        gpu_type = rows[0].gpu_type
        expr = [r for r in rows if not r.reason]
        fractions, sources, fit_on = {}, {}, set()
        for cls in sorted({precision_class(r.precision) for r in expr}):
            f = fit_fraction(gpu_type, exclude_table=t, cls=cls)
            src = f"fitted on the other tables' {cls} rows"
            if f is None:       # no row of this class elsewhere: the shipped constant (said so)
                f, src = shipped_fraction(gpu_type, cls), f"shipped (no other {cls} table of this type to fit on)"
            fractions[cls], sources[cls] = f, src
            fit_on |= {r.table_id for r in _error_grid(gpu_type, cls)[0] if r.table_id != t}
        entry = {"table": t, "gpu_type": gpu_type, "rows": len(rows), "expressible": len(expr),
                 "fraction": fractions.get("16-bit"), "fraction_fp8": fractions.get("fp8"),
                 "fraction_source": sources.get("16-bit"), "fraction_fp8_source": sources.get("fp8"),
                 "fit_on": sorted(fit_on), "not_expressible": {}, "row_results": []}
        for r in rows:
            for why in r.reasons:    # a row missing several features counts under each
                entry["not_expressible"][why] = entry["not_expressible"].get(why, 0) + 1
        step_errs, mem_errs = [], []
        for r in expr:
            f = fractions[precision_class(r.precision)]
            p = predict_row(r, f)
            e = p["value"] / r.published - 1
            me = p["memory_GiB"] / r.peak_memory_GiB - 1 if r.peak_memory_GiB else None
            step_errs.append(e)
            mem_errs.append(me)
            pl = p["plan"]
            entry["row_results"].append({
                "model": r.model, "gpus": r.gpus, "precision": r.precision, "metric": r.metric, "published": r.published,
                # None: no candidate plan fits in memory (JSON has no nan)
                "predicted": round(p["value"], 1) if np.isfinite(p["value"]) else None,
                "rel_error": round(e, 4) if np.isfinite(e) else None,
                "published_memory_GiB": r.peak_memory_GiB, "predicted_memory_GiB": round(p["memory_GiB"], 1),
                "memory_rel_error": None if me is None else round(me, 4),
                "plan": pl.label(), "micro_batch": pl.micro_batch, "vpp": pl.vpp, "recompute": pl.recompute})
        entry["step"] = _stats(step_errs)
        entry["memory"] = _stats(mem_errs)
        out.append(entry)
    return out


def blockers() -> list[dict]:
    """Corpus-wide: for each reason, the rows it blocks and the rows it alone blocks (what adding
    that feature to the model would make expressible), most-blocking first."""
    rows = [r for r in load_corpus() if r.reasons]
    names = sorted({w for r in rows for w in r.reasons})
    out = [{"reason": w, "rows": sum(w in r.reasons for r in rows),
            "only_reason": sum(r.reasons == [w] for r in rows)} for w in names]
    return sorted(out, key=lambda d: (-d["rows"], d["reason"]))


def recompute_brackets() -> list[dict]:
    """Diagnostic, not a held-out metric: rows blocked only by torchtitan's op-level selective AC,
    priced with the shipped profile under parsim's two neighbouring policies, 'selective' (recomputes
    less, keeps more) and 'full' (recomputes more, keeps less). The published throughput and memory
    should fall between the two; a row outside its bracket points at something other than the policy."""
    out = []
    for row in load_corpus():
        if len(row.reasons) != 1 or "op-level selective" not in row.reasons[0]:
            continue
        r = {k: row.knobs.get(k, "") for k in ("micro_batch", "fsdp", "tp", "pp", "cp", "vp", "ep", "schedule")}
        r.update(source=row.source, gpus=row.gpus, global_batch=row.global_batch, seq_len=row.seq_len,
                 precision=row.precision, recompute="")
        model = load_model(row.model)
        entry = {"table": row.table_id, "model": row.model, "gpus": row.gpus, "published": row.published,
                 "published_memory_GiB": row.peak_memory_GiB}
        for rc in ("selective", "full"):
            probe = CorpusRow(**{**row.__dict__, "reasons": [], "plans": _candidates(dict(r, recompute=rc), model)})
            p = _predict_any(probe)
            entry[rc] = {"predicted": round(p["value"], 1), "memory_GiB": round(p["memory_GiB"], 1)}
        lo, hi = sorted((entry["selective"]["predicted"], entry["full"]["predicted"]))
        entry["throughput_in_bracket"] = lo <= row.published <= hi
        if row.peak_memory_GiB:
            mlo, mhi = sorted((entry["selective"]["memory_GiB"], entry["full"]["memory_GiB"]))
            entry["memory_in_bracket"] = mlo <= row.peak_memory_GiB <= mhi
        out.append(entry)
    return out


def _predict_any(row: CorpusRow) -> dict:
    """predict_row, ignoring the memory capacity (a bracket end may not fit: its memory is the point)."""
    from parsim.predict import get_cluster, plan_columns, price
    model = load_model(row.model)
    dev = _device(row.gpu_type, None)
    r = price(model, get_cluster(row.cluster, row.gpus), plan_columns(row.plans, model), device=dev)
    gb = np.array([p.global_batch for p in row.plans], dtype=float)
    val = gb * row.seq_len / np.asarray(r["step_time_s"], dtype=float) / row.gpus
    i = int(np.argmax(val))
    return {"value": float(val[i]), "memory_GiB": float(np.asarray(r["memory_bytes"])[i] / GiB)}


def shipped_fits(cls: str = "16-bit") -> dict:
    """GPU type -> the fraction of precision class `cls` fitted on all its tables (None where no row of that
    class is expressible): what devices.yaml must ship (matmul_sustained_fraction, matmul_sustained_fraction_fp8)."""
    return {g: fit_fraction(g, cls=cls) for g in GPU_TYPE_DEVICES}


def accuracy_metrics() -> dict:
    """Tracked accuracy figures (metric name -> value) for the accuracy ledger.

    Per table with expressible rows: ``corpus.<table>.step_mean|step_max|step_bias`` (held-out
    relative errors, fractions of 1) and ``corpus.<table>.memory_mean|memory_max`` where memory is
    published; ``corpus.<table>.expressible`` and ``.not_expressible`` row counts for every table;
    ``corpus.rows_total`` and ``corpus.rows_not_expressible`` over the corpus."""
    m = {}
    loto = leave_one_table_out()
    for e in loto:
        key = "corpus." + re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]", "_", e["table"]))   # one dot-free name per table
        m[f"{key}.expressible"] = e["expressible"]
        m[f"{key}.not_expressible"] = e["rows"] - e["expressible"]
        for k in ("mean", "max", "bias"):
            if e["step"]:
                m[f"{key}.step_{k}"] = e["step"][k]
            if e["memory"] and k != "bias":
                m[f"{key}.memory_{k}"] = e["memory"][k]
    m["corpus.rows_total"] = sum(e["rows"] for e in loto)
    m["corpus.rows_not_expressible"] = sum(e["rows"] - e["expressible"] for e in loto)
    return m
