"""The public validation corpus (parsim/data/validation/*.csv) and its leave-one-table-out check.

Each CSV is one published source: header comment lines ``# key: value`` give its source (URL and
table), date, hardware, software stack, precision and what the source leaves unstated; each row
names the published table it comes from (column ``table``). A *table* here is one published table
(file + ``table`` column); Narayanan et al. 2021 Table 1 keeps its own file and reader
(parsim.validation) and joins the corpus as one table.

Method. A device profile carries two fitted numbers, one per precision class:
``matmul_sustained_fraction`` (16-bit plans) and ``matmul_sustained_fraction_fp8`` (every tensor-core
kernel of an fp8 plan) (parsim.hardware). Each is fitted per GPU type across all tables of that type on
the rows of its precision class, never per table or row: the fraction on a grid (step 0.005)
minimising the mean |relative error| of the published throughput over every expressible row of that
class. Leave-one-table-out: each row of a table is predicted with its class's fraction fitted on the
*other* tables of its GPU type, and each table is reported by its
mean / max / bias of the relative error (prediction / published − 1), for throughput (tokens/s
per GPU, or hardware TFLOP/s per GPU where that is what is published) and for peak memory where
published (memory does not depend on the fitted number).

Knobs a source leaves unstated (micro-batch, virtual stages, recompute for NeMo rows, the gradient dtype and the loss
kernel where the header's `unstated` names them; a row's `grad_dtype` / `cross_entropy` column, else its header's,
states them) are searched:
every candidate that fits in memory is priced and the fastest is taken, as the authors tuned for
throughput; the chosen values are reported with each row.

A row the model cannot price as published (a precision outside parsim.plan.DTYPES, FP8 on a device
without FP8 tensor cores or MXFP8 on one without MXFP8, a mixture-of-experts model without a preset or ep on a dense
one, a recompute policy outside parsim.plan.RECOMPUTE, a model without a preset) is kept and counted as
"not expressible yet: <reason>"; it never enters a fit. Expressibility is read from what parsim.plan
and the rule book accept today (DTYPES, RECOMPUTE, the Plan fields, parsim.rules), so rows become
expressible as the model grows: FP8, CP and MoE rows on Hopper and Blackwell did with --dtype fp8,
--cp and --ep, Blackwell's MXFP8 rows with --dtype mxfp8 (precision class fp8: one fitted constant with the
per-tensor FP8 rows, what MXFP8 does differently priced by parsim.layer), Nemotron-4 with its presets; torchtitan's rows with its recompute policies (op-level SAC = recompute selective-op,
layer-level SAC = recompute full with recompute_every = N, written ``full-every-N`` in the CSVs),
torch.compile (techniques "torch.compile": kernels fused; torchtitan rows without it run PyTorch
eager: kernels eager, or both searched where the header lists torch.compile as unstated) and async TP (techniques "AsyncTP": async_tp). torchtitan rows are priced with
FSDP2's memory accounting (parsim.costs.memory.ACCOUNTING["fsdp2"]), the others with Megatron's; NeMo /
Megatron-Bridge rows run TP communication overlap (tp_overlap, with tp > 1) and PP overlap (pp_overlap, on
interleaved schedules), as their recipes do.

Peak memory: torchtitan publishes the maximum *reserved* memory of its caching allocator; parsim
predicts what is allocated. No public measurement of the allocated-to-reserved gap for these runs was
found, so each memory row is compared twice: allocated as predicted, and allocated plus the
fragmentation allowance of parsim/data/memory.yaml (``fragmentation_fraction`` of the capacity, an
assumption stated there) as the reserved figure.
"""
from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parsim.accuracy import GPU_TYPE_DEVICES, precision_class  # one table of GPU types, one class rule
from parsim.costs.memory import DEFAULT_CROSS_ENTROPY, grad_dtype_name
from parsim.errors import ParsimError
from parsim.hardware import get_device
from parsim.model import load_model, preset_names
from parsim.plan import DTYPES, FP8_DTYPES, RECOMPUTE, Plan, validate

CORPUS_DIR = Path(__file__).parent / "data" / "validation"
NARAYANAN = "narayanan2021_table1"
FRACTIONS = np.round(np.arange(0.50, 1.0001, 0.005), 3)
GiB = 2 ** 30
DEFAULT_CLUSTER = {"a100-80gb": "dgx-a100", "h100-sxm": "dgx-h100", "h200": "dgx-h200", "b200": "dgx-b200",
                   "h100-hbm2e-500w": "grand-teton-h100"}
MOE_MODELS = ("mixtral", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss")
# Megatron-LM's recompute granularities (--recompute-granularity selective | full, or none): what an
# unstated recompute of a NeMo / Megatron-Bridge row is searched over (selective-op is torchtitan's).
MEGATRON_RECOMPUTE = ("none", "selective", "full")


def parse_recompute(value: str) -> tuple[str, int] | None:
    """(policy, every) of a corpus CSV's recompute value: a parsim.plan.RECOMPUTE name, or
    ``full-every-N`` (full recompute of every N-th layer: torchtitan's selective_ac_option = N); None
    when it is neither."""
    m = re.fullmatch(r"full-every-([1-9][0-9]*)", value or "")
    if m:
        return "full", int(m.group(1))
    return (value, 1) if value in RECOMPUTE else None


def is_torchtitan(source: str) -> bool:
    return source.startswith("torchtitan")


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
    accounting: str = "megatron"    # bytes per parameter by framework (parsim.costs.memory.ACCOUNTING)
    # the dtypes the gradients may have been reduced in (parsim.costs.memory.GRAD_DTYPES; None: the framework's
    # default): the file header's `grad_dtype` when its source states it, both when `unstated` names it (searched)
    grad_dtypes: tuple = (None,)
    # the loss kernels the run may have used (parsim.costs.memory.CROSS_ENTROPY_IMPLS; None: native), the same way
    cross_entropies: tuple = (None,)

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
    prec, model = r["precision"], r["model"]
    rc = r.get("recompute", "") or ""
    out = []
    if prec not in DTYPES:
        out.append(f"precision {prec} (not a dtype of parsim.plan.DTYPES: {', '.join(DTYPES)})")
    elif prec in FP8_DTYPES and gpu_type in GPU_TYPE_DEVICES and not _has_fp8(gpu_type, prec):
        out.append(f"precision {prec} on {gpu_type} (no {'FP8' if prec == 'fp8' else 'MXFP8'} tensor cores)")
    ep = _int(r.get("ep")) or 1
    if model not in preset_names():
        out.append(f"mixture of experts: no model preset for {model}" if model.startswith(MOE_MODELS)
                   else f"no model preset for {model}")
    elif ep > 1 and not load_model(model).experts:
        out.append(f"mixture of experts: ep = {ep} on {model}, a dense model")
    if rc and parse_recompute(rc) is None:
        out.append(f"recompute {rc} (parsim's policies are {', '.join(RECOMPUTE)}, or full-every-N)")
    if gpu_type not in DEFAULT_CLUSTER and not r.get("cluster"):
        out.append(f"no cluster preset for {gpu_type}")
    return out


def _has_fp8(gpu_type: str, precision: str = "fp8") -> bool:
    """Whether the GPU type's tensor cores run `precision` (fp8 or mxfp8): its profile has that peak."""
    from parsim.hardware import get_device
    return bool(get_device(GPU_TYPE_DEVICES[gpu_type][0]).peak_flops.get(precision, 0.0))


def _candidates(r: dict, model, unstated: str = "") -> list[Plan]:
    """Every valid plan for the row's stated knobs; unstated ones (micro-batch, vpp, recompute; torch.compile
    where the file's header lists it in `unstated`) searched."""
    gpus, tp, pp = int(r["gpus"]), _int(r["tp"]) or 1, _int(r["pp"]) or 1
    cp, ep = _int(r.get("cp")) or 1, _int(r.get("ep")) or 1
    dp = gpus // (tp * pp * cp)
    fsdp = _int(r.get("fsdp"))
    torchtitan = is_torchtitan(r["source"])
    zero = 3 if (torchtitan or (fsdp or 0) > 0) else 1         # Megatron's distributed optimizer = ZeRO-1
    if torchtitan and pp > 1:
        # torchtitan's FSDP2 under PP: reshard_after_forward=False (parallelize_llama.py apply_fsdp, "For PP, do
        # not reshard after forward to avoid per-microbatch all-gathers") and gradient sync on the last
        # micro-batch only (torch.distributed.pipelining stage._configure_data_parallel_mode): ZeRO-1 with the
        # fsdp2 accounting (parsim.costs.memory.ACCOUNTING)
        zero = 1
    tech = r.get("techniques", "") or ""
    # torchtitan runs PyTorch eager element-wise kernels unless the row compiles its blocks; the
    # Megatron / NeMo stacks run hand-fused kernels (fused norms, bias-SwiGLU, RoPE, bias-dropout-add).
    # Where a torchtitan source leaves torch.compile unstated (its header's `unstated` names it), both
    # are candidates, searched like the other unstated knobs.
    kernels = ["eager"] if torchtitan and "torch.compile" not in tech else ["fused"]
    if torchtitan and "torch.compile" not in tech and "torch.compile" in unstated:
        kernels = ["eager", "fused"]
    async_tp = "AsyncTP" in tech
    gb = _int(r.get("global_batch"))
    mbs = [_int(r["micro_batch"])] if _int(r.get("micro_batch")) else [1, 2, 4, 8]
    L = model.layers
    vp = _int(r.get("vp"))
    vpps = [vp] if vp else ([1] if pp == 1 else [1] + [v for v in range(2, L // pp + 1) if (L // pp) % v == 0])
    rcs = [parse_recompute(r["recompute"])] if r.get("recompute") else [(x, 1) for x in MEGATRON_RECOMPUTE]
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
        for v, kn in ((v, kn) for v in vpps for kn in kernels):
            for rc, every in rcs:
                sched = r.get("schedule") or ("interleaved" if v > 1 else "1f1b")
                p = Plan(dp=dp, tp=tp, pp=pp, vpp=v, micro_batch=mb, global_batch=gb, seq_len=int(r["seq_len"]),
                         dtype=r["precision"], schedule=sched, grad_sync="native", zero=zero, recompute=rc,
                         sequence_parallel=tp > 1, overlap=True, flash_attention=True, ep=ep, cp=cp,
                         recompute_every=every, kernels=kn, async_tp=async_tp, tp_overlap=tpo,
                         pp_overlap=(not torchtitan) and sched == "interleaved")
                try:
                    validate(p, model, gpus)
                except ParsimError:
                    continue
                out.append(p)
    return out


def _stated_or_searched(header: dict, row: dict, key: str, choices: tuple, unstated_word: str) -> tuple:
    """The values of a framework setting a row's run may have used: the row's `key` column, else its file header's
    `key` (one of `choices`, its source after a space), every one of `choices` when the header's ``unstated`` line
    names `unstated_word` (searched like the other unstated knobs), else (None,): the framework's default.
    ParsimError for a stated value outside `choices`."""
    stated = (row.get(key) or header.get(key, "")).split(" ", 1)[0].rstrip(";,")
    if stated:
        if stated not in choices:
            raise ParsimError(f"corpus {key} {stated!r}: expected one of {', '.join(choices)}")
        return (stated,)
    return tuple(choices) if unstated_word in header.get("unstated", "") else (None,)


def _grad_dtypes(header: dict, row: dict) -> tuple:
    """The gradient reduce dtypes a row's run may have used (parsim.costs.memory.GRAD_DTYPES; `_stated_or_searched`,
    "grad dtype" in the header's unstated line)."""
    from parsim.costs.memory import GRAD_DTYPES
    return _stated_or_searched(header, row, "grad_dtype", GRAD_DTYPES, "grad dtype")


def _cross_entropies(header: dict, row: dict) -> tuple:
    """The loss kernels a row's run may have used (parsim.costs.memory.CROSS_ENTROPY_IMPLS; `_stated_or_searched`,
    "cross entropy" in the header's unstated line)."""
    from parsim.costs.memory import CROSS_ENTROPY_IMPLS
    return _stated_or_searched(header, row, "cross_entropy", CROSS_ENTROPY_IMPLS, "cross entropy")


def load_file(path) -> list[CorpusRow]:
    path = Path(path)
    header, raw = read_csv_with_header(path)
    out = []
    for r in raw:
        r = dict(r, source=path.stem)
        gpu_type = r.get("gpu_type") or header.get("gpu_type", "")
        tps = _float(r.get("tokens_per_s_per_gpu"))
        row = CorpusRow(source=path.stem, table=r["table"], gpu_type=gpu_type, model=r["model"], gpus=int(r["gpus"]),
                        precision=r["precision"], seq_len=int(r["seq_len"]), global_batch=_int(r.get("global_batch")),
                        metric="tokens_per_s_per_gpu", published=tps, peak_memory_GiB=_float(r.get("peak_memory_GiB")),
                        cluster=header.get("cluster") or DEFAULT_CLUSTER.get(gpu_type, ""),
                        knobs={k: r.get(k, "") for k in ("micro_batch", "fsdp", "tp", "pp", "cp", "vp", "ep",
                                                          "schedule", "recompute")},
                        techniques=r.get("techniques", "") or "",
                        accounting="fsdp2" if is_torchtitan(path.stem) else "megatron",
                        grad_dtypes=_grad_dtypes(header, r), cross_entropies=_cross_entropies(header, r))
        row.reasons = _reasons(r, gpu_type)
        if not row.reason:
            if row.global_batch is None:
                row.reasons = ["global batch unstated"]
            else:
                row.plans = _candidates(r, load_model(row.model), header.get("unstated", ""))
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
    Returns {"value": predicted `row.metric`, "memory_GiB", "plan", "grad_dtype", "cross_entropy" (of the chosen
    candidate: None for the framework's default), "fits_verdict", "any_fits_verdict", "verdict_refused_readings"};
    value is
    nan when no candidate fits the capacity; fits_verdict: parsim's own fits verdict (capacity less its headroom) on
    the chosen plan, any_fits_verdict: on at least one candidate. Closed-form pipeline pricing
    (parsim.predict.price), as parsim.validation."""
    from parsim.predict import get_cluster, plan_columns, price
    model = load_model(row.model)
    cl = get_cluster(row.cluster, row.gpus)
    dev = _device(row.gpu_type, fraction, precision_class(row.precision))
    cols = plan_columns(row.plans, model)
    vals, mems, rooms, plans, gds, ces = [], [], [], [], [], []
    # an unstated gradient dtype or loss kernel: every candidate priced with each
    for gd, ce in ((gd, ce) for gd in row.grad_dtypes for ce in row.cross_entropies):
        r = price(model, cl, cols, device=dev, accounting=row.accounting, grad_dtype=gd, cross_entropy=ce)
        step = np.asarray(r["step_time_s"], dtype=float)
        if row.metric == "hardware_tflops_per_gpu":
            vals.append(r["hardware_flops"] / step / row.gpus / 1e12)
        else:
            seq = np.array([p.seq_len or model.seq_len for p in row.plans], dtype=float)
            gb = np.array([p.global_batch for p in row.plans], dtype=float)
            vals.append(gb * seq / step / row.gpus)
        mems.append(np.broadcast_to(np.asarray(r["memory_bytes"], dtype=float), step.shape))
        rooms.append(np.broadcast_to(np.asarray(r["memory_headroom_bytes"], dtype=float), step.shape))
        plans += row.plans
        gds += [gd] * len(row.plans)
        ces += [ce] * len(row.plans)
    val, mem, room = np.concatenate(vals), np.concatenate(mems), np.concatenate(rooms)
    # The run was published, so it fitted: candidates are judged against the device's whole capacity. parsim's own
    # verdict (`plan`, `predict`) also keeps a headroom (CUDA context, NCCL, fragmentation); whether it would have
    # accepted the chosen plan, and any candidate at all, is returned beside it (a published run it rejects is a
    # false "does not fit").
    verdict = mem + room <= dev.memory_bytes
    ok = mem <= dev.memory_bytes
    n = len(row.plans)

    def readings_refused(i):
        """The unstated-setting readings (gradient dtype, loss kernel) under which the verdict refuses the chosen plan
        itself: a verdict that holds only under the searched reading is said, not counted as settled."""
        return [" ".join(w for w in (gds[k] and f"grads {gds[k]}", ces[k] and f"loss {ces[k]}") if w) or "default"
                for k in range(i % n, len(plans), n) if not verdict[k]]
    if not ok.any():
        i = int(np.argmin(mem))
        return {"value": float("nan"), "memory_GiB": float(mem[i] / GiB), "plan": plans[i], "grad_dtype": gds[i],
                "cross_entropy": ces[i], "fits_verdict": bool(verdict[i]), "any_fits_verdict": bool(verdict.any()),
                "verdict_refused_readings": readings_refused(i)}
    # the fastest that fits; throughputs within search's tie width (TIE_REL, 0.01%) go to the one using less memory,
    # as `plan` ranks them (an unstated knob that does not change the time - a gradient dtype whose reduction is
    # hidden - was picked first in candidate order, fp32, the costlier in memory)
    from parsim.search import _step_key
    key = np.where(ok, _step_key(1.0 / np.where(val > 0, val, np.nan)), np.inf)
    i = int(np.lexsort((mem, key))[0])
    return {"value": float(val[i]), "memory_GiB": float(mem[i] / GiB), "plan": plans[i], "grad_dtype": gds[i],
            "cross_entropy": ces[i], "fits_verdict": bool(verdict[i]), "any_fits_verdict": bool(verdict.any()),
            "verdict_refused_readings": readings_refused(i)}


@functools.lru_cache(maxsize=None)
def _error_grid(gpu_type: str, cls: str = "16-bit") -> tuple:
    """(expressible dense rows of this GPU type and precision class, rel. error [row, fraction]): what the fit uses.

    Mixture-of-experts rows are left out of every fit and predicted with the dense-fitted constant: their step
    carries a time parsim does not price yet (1.8-3.7 ms per MoE layer and micro-batch on H100 and B200 alike,
    megatron_bridge_moe.csv's "moe time" header), not a kernel-efficiency effect, and pooled with the dense rows they
    would set the kernel constant of every plan on that GPU (measured 2026-11-30, B200 held out: 0.50-0.52 instead of
    0.63-0.66, every dense B200 table 17-20% mean off instead of 6.6-7.5%). So the MoE tables are held-out evidence
    only, never fitted on."""
    rows = [r for r in load_corpus() if r.gpu_type == gpu_type and not r.reason and precision_class(r.precision) == cls
            and not load_model(r.model).experts]
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


# What every table of the corpus is held to (the project's accuracy targets for the public corpus), said
# wherever the per-table figures are shown.
TARGETS = "mean ≤ 5% and max ≤ 12% on every table, peak memory within 5% where published"


def table_ids() -> list[str]:
    """Every published table of the corpus, in corpus order (Narayanan et al. 2021 Table 1 first)."""
    return list(dict.fromkeys(r.table_id for r in load_corpus()))


def leave_one_table_out(progress=None) -> list[dict]:
    """One entry per published table: held-out errors, the fractions used (per precision class), rows and reasons
    (``rows_not_expressible``: each row not priced, with its reasons). `progress`: called as progress(i, n, table)
    before table i of n (the first table of a GPU type also pays for that type's fit grid)."""
    corpus = load_corpus()
    tables = table_ids()
    out = []
    for i, t in enumerate(tables):
        if progress is not None:
            progress(i, len(tables), t)
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
        entry = {"table": t, "gpu_type": gpu_type, "accounting": rows[0].accounting, "rows": len(rows),
                 "expressible": len(expr),
                 "fraction": fractions.get("16-bit"), "fraction_fp8": fractions.get("fp8"),
                 "fraction_source": sources.get("16-bit"), "fraction_fp8_source": sources.get("fp8"),
                 "fit_on": sorted(fit_on), "not_expressible": {}, "row_results": []}
        entry["rows_not_expressible"] = []
        for r in rows:
            for why in r.reasons:    # a row missing several features counts under each
                entry["not_expressible"][why] = entry["not_expressible"].get(why, 0) + 1
            if r.reasons:
                entry["rows_not_expressible"].append({"model": r.model, "gpus": r.gpus, "precision": r.precision,
                                                      "metric": r.metric, "published": r.published,
                                                      "reasons": list(r.reasons)})
        step_errs, mem_errs, res_errs = [], [], []
        for r in expr:
            f = fractions[precision_class(r.precision)]
            p = predict_row(r, f)
            e = p["value"] / r.published - 1
            me = p["memory_GiB"] / r.peak_memory_GiB - 1 if r.peak_memory_GiB else None
            reserved = p["memory_GiB"] + fragmentation_GiB(r.gpu_type)
            re_ = reserved / r.peak_memory_GiB - 1 if r.peak_memory_GiB else None
            # the same row with the shipped constants (what a user of this parsim gets; in-sample for the fit)
            ps = predict_row(r)["value"] if f != shipped_fraction(r.gpu_type, precision_class(r.precision)) else p["value"]
            es = ps / r.published - 1
            step_errs.append(e)
            mem_errs.append(me)
            res_errs.append(re_)
            pl = p["plan"]
            entry["row_results"].append({
                "model": r.model, "gpus": r.gpus, "precision": r.precision, "metric": r.metric, "published": r.published,
                # None: no candidate plan fits in memory (JSON has no nan)
                "predicted": round(p["value"], 1) if np.isfinite(p["value"]) else None,
                "rel_error": round(e, 4) if np.isfinite(e) else None,
                "rel_error_shipped": round(es, 4) if np.isfinite(es) else None,
                "published_memory_GiB": r.peak_memory_GiB, "predicted_memory_GiB": round(p["memory_GiB"], 1),
                "memory_rel_error": None if me is None else round(me, 4),
                "predicted_reserved_GiB": round(reserved, 1), "reserved_rel_error": None if re_ is None else round(re_, 4),
                "plan": pl.label(), "micro_batch": pl.micro_batch, "vpp": pl.vpp, "recompute": pl.recompute,
                "grad_dtype": grad_dtype_name(r.accounting, DTYPES.index(r.precision), p["grad_dtype"]),
                "cross_entropy": p["cross_entropy"] or DEFAULT_CROSS_ENTROPY,
                "fits_verdict": p["fits_verdict"], "any_fits_verdict": p["any_fits_verdict"],
                "verdict_refused_readings": p["verdict_refused_readings"],
                "regime": {k: (getattr(pl, k) if k != "seq_len" else pl.seq_len or load_model(r.model).seq_len)
                           for k in REGIME_KEYS}})
        entry["step"] = _stats(step_errs)
        entry["memory"] = _stats(mem_errs)
        entry["memory_reserved"] = _stats(res_errs)
        out.append(entry)
    return out


def precision_pairs(a: str = "fp8", b: str = "mxfp8") -> list[dict]:
    """Published runs of one table measured in two precisions with every other stated knob the same (the Megatron-Bridge
    pages give FP8-CS and FP8-MX values of one configuration as "A (B)"): [{"table", "gpu_type", "model", "gpus",
    a: value, b: value, "gap": value_b / value_a - 1}], in corpus order. What parsim's pricing of `b` against `a` can
    be held to (MXFP8's extra casts and scales are priced by parsim.layer; the published gap is larger)."""
    knob = lambda r: (r.table_id, r.gpu_type, r.model, r.gpus, r.seq_len, r.global_batch, r.metric,
                      tuple(sorted(r.knobs.items())))
    by_a = {knob(r): r for r in load_corpus() if r.precision == a and r.published}
    out = []
    for r in load_corpus():
        o = by_a.get(knob(r)) if r.precision == b and r.published else None
        if o is not None:
            out.append({"table": r.table_id, "gpu_type": r.gpu_type, "model": r.model, "gpus": r.gpus,
                        a: o.published, b: r.published, "gap": r.published / o.published - 1})
    return out


def precision_gap_words(a: str = "fp8", b: str = "mxfp8") -> str:
    """The published gaps of precision_pairs(a, b) in words ('the N published pairs of such runs (models on GPU types,
    parsim/data/validation) differ by x% to y%'), or '' when the corpus has no such pair: what `predict` and `plan`
    set beside the gap parsim prices."""
    pairs = precision_pairs(a, b)
    if not pairs:
        return ""
    gaps = [p["gap"] for p in pairs]
    return (f"the {len(pairs)} published pairs of such runs ({', '.join(sorted({p['model'] for p in pairs}))} on "
            f"{', '.join(sorted({p['gpu_type'] for p in pairs}))}, parsim/data/validation) differ by "
            f"{100 * min(gaps):+.1f}% to {100 * max(gaps):+.1f}%")


def _alike(rows: list) -> list[list]:
    """Rows of one stated plan split into groups parsim can price alike: a gradient dtype and a loss kernel common to
    every row's candidates. Rows stating both come first, grouped by what they state; a row that leaves one unstated
    searches every value, so it joins the group it can be priced alike with whose floor it raises least (parsim's
    best case: the floor is what no prediction can beat), or starts its own."""
    def common(part, k):
        return set.intersection(*(set(getattr(q, k)) for q in part))

    def floor(part):
        ys = [q.published for q in part]
        return (max(ys) - min(ys)) / (max(ys) + min(ys))

    parts: list[list] = []
    for r in sorted(rows, key=lambda q: len(q.grad_dtypes) * len(q.cross_entropies)):
        fits = [p for p in parts if all(set(getattr(r, k)) & common(p, k) for k in ("grad_dtypes", "cross_entropies"))]
        if fits:
            min(fits, key=lambda p: floor(p + [r])).append(r)
        else:
            parts.append([r])
    order = {id(q): i for i, q in enumerate(rows)}
    return [sorted(p, key=lambda q: order[id(q)]) for p in parts]      # each group in the corpus's order


def repeat_floor() -> list[dict]:
    """Rows that are the same input to parsim but were published with different values (a later software release
    measured the same stated plan again), and the error no prediction from the stated plan can beat on them.

    Two expressible rows are the same input when they share GPU type, model, cluster, GPU count, memory
    accounting, metric and the exact set of candidate plans (every stated knob, and the same unstated ones
    searched), and a gradient dtype and loss kernel they can both be priced with (`_alike`: one row's unstated one is
    searched over the other's stated one): parsim then predicts one value P for both, priced alike. For published values y_min <= ... <= y_max, the P that
    minimises the largest |P / y - 1| is P* = 2·y_min·y_max / (y_min + y_max), and that error is
    floor = (y_max - y_min) / (y_max + y_min): at least one of the rows is predicted at least that far off by any
    model that reads only what was published. Returns one dict per group of two or more rows, largest floor first:
    {"gpu_type", "model", "gpus", "precision", "tables": [table ids], "published": [values], "spread": y_max / y_min - 1,
    "floor": floor}."""
    groups: dict = {}
    for r in load_corpus():
        if r.reason:
            continue
        key = (r.gpu_type, r.model, r.cluster, r.gpus, r.accounting, r.metric, tuple(r.plans))
        groups.setdefault(key, []).append(r)
    out = []
    for rows in (part for g in groups.values() for part in _alike(g)):
        if len(rows) < 2:
            continue
        ys = [r.published for r in rows]
        lo, hi = min(ys), max(ys)
        out.append({"gpu_type": rows[0].gpu_type, "model": rows[0].model, "gpus": rows[0].gpus,
                    "precision": rows[0].precision,
                    "tables": [r.table_id for r in rows], "published": ys,
                    "spread": hi / lo - 1, "floor": (hi - lo) / (hi + lo)})
    return sorted(out, key=lambda d: -d["floor"])


# The plan knobs whose values the published runs of a kind cover (parsim.accuracy.coverage_note compares a plan's
# against them: an answer outside them is an extrapolation from the held-out evidence).
REGIME_KEYS = ("tp", "pp", "cp", "ep", "seq_len", "zero", "schedule", "recompute")


def heldout_summary(loto: list[dict] | None = None) -> dict:
    """The held-out step-time errors of leave_one_table_out() pooled by (GPU type, precision class, dense or MoE),
    and the peak-memory errors (predicted as reserved: allocated + the fragmentation allowance, against the
    published reserved peak) pooled by memory accounting: what parsim/data/validation/heldout.json ships and
    parsim.accuracy reads. Returns {"by_kind": {key: stats}, "memory_by_accounting": {accounting: stats}} with keys
    parsim.accuracy.key(), stats = {"rows", "tables", "mean", "max", "bias", "worst_under"} (relative errors as
    fractions of 1, rounded to 4 places; worst_under the most negative error, 0 if none) and, per kind, "models"
    (the models behind the figure), "by_model": {model: [its rows' held-out errors]}, "shipped": {"mean", "max",
    "bias"} of the same rows predicted with the shipped constants (in-sample for the fit: what a user of this parsim
    gets on those runs) and "regime": {knob: [values the runs used]} for REGIME_KEYS; rows no candidate plan fits
    are left out (they have no error)."""
    from parsim.accuracy import key
    loto = leave_one_table_out() if loto is None else loto
    pooled: dict = {}
    regimes: dict = {}
    models: dict = {}
    shipped: dict = {}       # kind -> errors of the same rows with the shipped constants
    by_model: dict = {}      # kind -> model -> held-out errors of its rows
    for e in loto:
        for r in e["row_results"]:
            if r.get("rel_error") is None:
                continue
            k = key(e["gpu_type"], r["precision"], load_model(r["model"]).experts > 0)
            errs, tables = pooled.setdefault(k, ([], set()))
            errs.append(r["rel_error"])
            tables.add(e["table"])
            if r.get("rel_error_shipped") is not None:
                shipped.setdefault(k, ([], set()))[0].append(r["rel_error_shipped"])
            by_model.setdefault(k, {}).setdefault(r["model"], []).append(r["rel_error"])
            seen = regimes.setdefault(k, {})
            for rk, v in r.get("regime", {}).items():
                seen.setdefault(rk, set()).add(v)
            models.setdefault(k, set()).add(r["model"])
    mem: dict = {}
    for e in loto:          # memory does not depend on the fitted constants: every published row counts
        for r in e["row_results"]:
            if r.get("reserved_rel_error") is not None:
                errs, tables = mem.setdefault(e["accounting"], ([], set()))
                errs.append(r["reserved_rel_error"])
                tables.add(e["table"])

    def stats(pool):        # _stats' mean / max / bias of the pooled errors, rounded, with the row and table counts
        out = {}
        for k, (errs, tables) in sorted(pool.items()):
            st = _stats(errs)
            out[k] = {"rows": st["n"], "tables": len(tables), **{x: round(st[x], 4) for x in ("mean", "max", "bias")},
                      "worst_under": round(float(min(0.0, min(errs))), 4)}
        return out
    by_kind = stats(pooled)
    for k, (errs, _) in shipped.items():
        st = _stats(errs)
        by_kind[k]["shipped"] = {x: round(st[x], 4) for x in ("mean", "max", "bias")}
    for k, seen in regimes.items():       # the models, and the knob values, the runs of this kind used (sorted lists)
        by_kind[k]["models"] = sorted(models[k])
        by_kind[k]["by_model"] = {m: sorted(v) for m, v in sorted(by_model[k].items())}
        by_kind[k]["regime"] = {rk: sorted(v) for rk, v in sorted(seen.items())}
    return {"by_kind": by_kind, "memory_by_accounting": stats(mem)}


def fragmentation_GiB(gpu_type: str) -> float:
    """The allocator's reserved-but-unallocated allowance assumed for a device of this GPU type:
    parsim/data/memory.yaml's fragmentation_fraction x its capacity (an assumption, stated there)."""
    from parsim.costs.memory import headroom_data
    return headroom_data()["fragmentation_fraction"] * get_device(GPU_TYPE_DEVICES[gpu_type][0]).memory_bytes / GiB


def blockers() -> list[dict]:
    """Corpus-wide: for each reason, the rows it blocks and the rows it alone blocks (what adding
    that feature to the model would make expressible), most-blocking first."""
    rows = [r for r in load_corpus() if r.reasons]
    names = sorted({w for r in rows for w in r.reasons})
    out = [{"reason": w, "rows": sum(w in r.reasons for r in rows),
            "only_reason": sum(r.reasons == [w] for r in rows)} for w in names]
    return sorted(out, key=lambda d: (-d["rows"], d["reason"]))


def shipped_fits(cls: str = "16-bit") -> dict:
    """GPU type -> the fraction of precision class `cls` fitted on all its tables (None where no row of that
    class is expressible): what devices.yaml must ship (matmul_sustained_fraction, matmul_sustained_fraction_fp8)."""
    return {g: fit_fraction(g, cls=cls) for g in GPU_TYPE_DEVICES}


def accuracy_metrics(loto: list[dict] | None = None) -> dict:
    """Tracked accuracy figures (metric name -> value) for the accuracy ledger, from
    leave_one_table_out()'s entries (`loto`; computed when not given).

    Per table with expressible rows: ``corpus.<table>.step_mean|step_max|step_bias`` (held-out
    relative errors, fractions of 1) and ``corpus.<table>.memory_mean|memory_max`` (allocated) and
    ``.memory_reserved_mean|memory_reserved_max`` (with the fragmentation allowance) where memory is
    published; ``corpus.<table>.expressible`` and ``.not_expressible`` row counts for every table;
    ``corpus.rows_total`` and ``corpus.rows_not_expressible`` over the corpus; ``corpus.fits_verdict_rejects_chosen_plan``
    and ``corpus.fits_verdict_rejects_every_candidate``: published runs parsim's fits verdict (with its headroom)
    would refuse."""
    m = {}
    loto = leave_one_table_out() if loto is None else loto
    for e in loto:
        key = "corpus." + re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]", "_", e["table"]))   # one dot-free name per table
        m[f"{key}.expressible"] = e["expressible"]
        m[f"{key}.not_expressible"] = e["rows"] - e["expressible"]
        for k in ("mean", "max", "bias"):
            if e["step"]:
                m[f"{key}.step_{k}"] = e["step"][k]
            if e["memory"] and k != "bias":
                m[f"{key}.memory_{k}"] = e["memory"][k]
                m[f"{key}.memory_reserved_{k}"] = e["memory_reserved"][k]
    # published runs (they ran, so they fitted) that parsim's own fits verdict rejects: the chosen plan, or every
    # candidate of the row (a false "does not fit" whatever the unstated knobs were)
    res = [r for e in loto for r in e["row_results"] if "fits_verdict" in r]
    m["corpus.fits_verdict_rejects_chosen_plan"] = sum(not r["fits_verdict"] for r in res)
    m["corpus.fits_verdict_rejects_every_candidate"] = sum(not r["any_fits_verdict"] for r in res)
    # accepted only under the searched reading of an unstated gradient dtype or loss kernel: refused under another
    m["corpus.fits_verdict_depends_on_unstated_setting"] = sum(
        bool(r["fits_verdict"] and r.get("verdict_refused_readings")) for r in res)
    m["corpus.rows_total"] = sum(e["rows"] for e in loto)
    m["corpus.rows_not_expressible"] = sum(e["rows"] - e["expressible"] for e in loto)
    return m
