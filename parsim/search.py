"""Plan search: enumerate every valid plan for a model on a cluster, price them all at once,
rank them.

Candidates are built as a numpy table (one row per plan), never as Python objects. Knob
combinations that are meaningless rather than invalid are not generated at all (sequence
parallel needs tp > 1; ZeRO and the choice of gradient-sync algorithm need dp > 1; ZeRO's
reduce-scatter/all-gather are the library's, so the all-reduce algorithm is a knob only at
ZeRO 0; vpp only with the interleaved schedule, and 2 with ZB-V). Invalid ones are generated, rejected by
a vectorised mask and counted by their first failing reason; plans that do not fit in
device memory are priced and then dropped, counted too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from parsim.errors import ParsimError
from parsim.plan import DTYPES, FP8_DTYPES, FRAMEWORK_RECOMPUTE, GRAD_SYNC, RECOMPUTE, SCHEDULES, Plan, divisors
from parsim.costs.memory import (DEFAULT_ACCOUNTING, DEFAULT_CROSS_ENTROPY, check_accounting, check_cross_entropy,
                                 check_grad_dtype, grad_dtype_name)
from parsim.predict import (BREAKDOWN_KEYS, GiB, MEMORY_KEYS, PRICE_CHUNK_ROWS, concat_priced, get_cluster,
                            price_chunks, simulated_makespan, take_priced)
from parsim.rules import reject

DEFAULT_MODEL = "llama2-13b"
DEFAULT_CLUSTER = "dgx-h100"
LONG_SEQ = 16384                # context parallelism is searched from this sequence length on
DEFAULT_GLOBAL_BATCH = 1024     # sequences: 4M tokens of 4096, Llama 2's batch (Touvron et al. 2023, Table 1)


@dataclass
class SearchResult:
    columns: dict                   # column -> numpy array, fitting plans best first
    attrs: dict
    candidates: int                 # generated
    priced: int                     # valid, priced
    rejected: dict = field(default_factory=dict)   # reason -> count
    seconds: float = 0.0

    @property
    def table(self):
        """The ranked plans as a pandas DataFrame (pandas is imported only here)."""
        import pandas as pd
        df = pd.DataFrame(self.columns)
        df.attrs.update(self.attrs)
        return df

    def __len__(self):
        return len(self.columns["dp"])


def _micro_batches(gb: int, max_mb: int):
    return [b for b in (1, 2, 4, 8, 16, 32) if b <= max_mb and b <= gb]



CP_DEGREES = (1, 2, 4, 8, 16)           # the context-parallel degrees searched (at seq_len >= LONG_SEQ, cp | seq_len)


def cp_not_searched(seq_len: int) -> list[int]:
    """The cp degrees a search at `seq_len` leaves out because they do not divide it (a long sequence only: below
    LONG_SEQ no cp is searched at all); [] when none. `plan` says them (trial 2026-11-30: at seq 32767 the cp column
    vanished and the candidates fell from 145,100 to 56,300, unsaid)."""
    return [c for c in CP_DEGREES[1:] if seq_len >= LONG_SEQ and seq_len % c]


def candidates(model, gpus: int, global_batch: int, seq_len: int, gpus_per_node: int | None = None,
               dtype: str = "bf16", max_micro_batch: int = 16, device=None, accounting: str | None = None,
               comm_overlap: bool = False) -> tuple[dict, dict, int]:
    """The candidate table (dict of arrays, `price` columns), rejection counts by rule (parsim.rules) and
    the number generated. ``gpus_per_node`` is unused (tensor parallelism across nodes is valid, and
    priced on the cluster graph); kept for callers. ``device``: the device profile, for the rules that
    read it (fp8). ``accounting``: the framework (parsim.costs.memory.ACCOUNTING) whose recompute policies are
    searched (parsim.plan.FRAMEWORK_RECOMPUTE; None: every policy). ``comm_overlap``: Megatron-Core / Transformer Engine's communication overlap where the
    NeMo / Megatron-Bridge recipes switch it on: TP overlap (Plan.tp_overlap) on every candidate with tp > 1 and
    sequence parallelism, PP overlap (Plan.pp_overlap) on every interleaved one (parsim.corpus prices the
    published Megatron runs so)."""
    # Expert parallelism (MoE only): ep divides the experts and dp (ep ranks are data-parallel ranks).
    # Context parallelism is searched for long sequences only (>= LONG_SEQ tokens): cp | seq, cp <= 16.
    cps = [c for c in CP_DEGREES if seq_len % c == 0 and (c == 1 or seq_len >= LONG_SEQ)]
    shapes = [(tp, pp, gpus // (tp * pp * cp), ep, cp) for cp in cps if gpus % cp == 0
              for tp in divisors(gpus // cp) for pp in divisors(gpus // (cp * tp))
              for ep in divisors(gpus // (tp * pp * cp)) if ep == 1 or (model.experts and model.experts % ep == 0)]
    sv = [(SCHEDULES.index("gpipe"), 1), (SCHEDULES.index("1f1b"), 1), (SCHEDULES.index("zbv"), 2)]
    sv += [(SCHEDULES.index("interleaved"), v) for v in (2, 3, 4, 6, 8)]
    mbs = _micro_batches(global_batch, max_micro_batch)
    # The recompute policies of the framework the memory accounting names (parsim.plan.FRAMEWORK_RECOMPUTE; None: all)
    rcs = np.array([RECOMPUTE.index(r) for r in (FRAMEWORK_RECOMPUTE[accounting] if accounting else RECOMPUTE)])
    # Full product of the independent knobs as index grids.
    grids = np.meshgrid(np.arange(len(shapes)), np.arange(len(sv)), np.arange(len(mbs)),
                        rcs, np.arange(2), np.arange(4), np.arange(len(GRAD_SYNC)),
                        indexing="ij")
    si, vi, mi, rc, sp, zero, gs = (g.ravel() for g in grids)
    sh = np.array(shapes, dtype=np.int64)
    tp, pp, dp, ep, cp = sh[si, 0], sh[si, 1], sh[si, 2], sh[si, 3], sh[si, 4]
    svt = np.array(sv, dtype=np.int64)
    sched, vpp = svt[vi, 0], svt[vi, 1]
    mb = np.array(mbs, dtype=np.int64)[mi]
    sp = sp.astype(bool)
    native = GRAD_SYNC.index("native")
    # Not generated: meaningless combinations.
    keep = ~(sp & (tp == 1)) & ~((dp == 1) & ((zero > 0) | (gs != native))) & ~((zero > 0) & (gs != native))
    keep &= ~((pp == 1) & (sched != SCHEDULES.index("1f1b")))      # no pipeline: the schedule is moot
    # Rejected by the rule book (parsim.rules, the same rules predict/simulate/run apply), counted by
    # the first failing rule.
    table = {"dp": dp, "tp": tp, "pp": pp, "vpp": vpp, "mb": mb, "gb": np.full(dp.shape, global_batch, np.int64),
             "seq": np.full(dp.shape, seq_len, np.int64), "schedule": sched, "sp": sp, "zero": zero, "grad_sync": gs,
             "ep": ep, "cp": cp, "dtype": np.full(dp.shape, DTYPES.index(dtype), np.int64),
             "flash": np.ones(dp.shape, bool)}
    table = {k: v[keep] for k, v in table.items()}
    valid, rejected = reject(table, model, device=device)
    ok = np.zeros(keep.shape, dtype=bool)
    ok[np.nonzero(keep)[0][valid]] = True
    idx = np.nonzero(ok)[0]
    n = idx.size
    cols = {"dp": dp[idx], "tp": tp[idx], "pp": pp[idx], "vpp": vpp[idx], "mb": mb[idx],
            "gb": np.full(n, global_batch, np.int64), "seq": np.full(n, seq_len, np.int64),
            "dtype": np.full(n, DTYPES.index(dtype), np.int64), "schedule": sched[idx], "grad_sync": gs[idx],
            "zero": zero[idx], "recompute": rc[idx], "sp": sp[idx], "overlap": np.ones(n, bool),
            "flash": np.ones(n, bool), "ep": ep[idx], "cp": cp[idx]}
    if comm_overlap:
        cols["tpo"] = (cols["tp"] > 1) & cols["sp"]
        cols["ppo"] = (cols["pp"] > 1) & (cols["schedule"] == SCHEDULES.index("interleaved"))
    return cols, rejected, int(keep.sum())


def search(model=DEFAULT_MODEL, cluster=DEFAULT_CLUSTER, gpus: int = 64, global_batch: int | None = None,
           seq_len: int | None = None, dtype: str | None = None, top: int | None = None, result: bool = False,
           resimulate: int = 8, accounting: str = DEFAULT_ACCOUNTING, headroom_bytes: float | None = None,
           chunk_rows: int = PRICE_CHUNK_ROWS, comm_overlap: bool = False, grad_dtype: str | None = None,
           cross_entropy: str | None = None):
    """Rank every valid plan; returns a pandas DataFrame (best first), or a SearchResult with counts.

    Valid: parsim.rules (the rule book predict, simulate and run use). Fits: memory of the worst
    pipeline rank + headroom <= the device's reported capacity (`accounting`, `headroom_bytes`, `grad_dtype`, `cross_entropy` as in
    parsim.predict.predict). Ties in step time (within 0.01%) go to the plan using less memory.

    All plans are priced with the closed-form pipeline; the best `resimulate` are re-priced with the
    discrete-event simulator (column `simulated`), `step_time_closed_s` keeps the fast form.

    Candidates are priced `chunk_rows` at a time (parsim.predict.price_chunks) and only the plans that
    fit are kept, so memory follows the fitting plans, not the candidates; the ranking is the same
    for any chunk size. ``comm_overlap``: price Megatron-Core / Transformer Engine's TP and PP communication
    overlap where it applies (candidates' docstring); columns tp_overlap / pp_overlap say where it was."""
    from parsim.model import load_model
    t0 = time.perf_counter()
    from parsim.limits import check_count
    gpus = check_count("gpus", gpus, "MAX_DEVICES")      # before divisors(gpus) and the graph
    if global_batch is not None:
        global_batch = check_count("global batch", global_batch, "MAX_GLOBAL_BATCH")
    if seq_len is not None:
        seq_len = check_count("seq_len", seq_len, "MAX_SEQ_LEN")
    model = load_model(model)
    cl = get_cluster(cluster, gpus)
    gb = DEFAULT_GLOBAL_BATCH if global_batch is None else global_batch
    seq = seq_len or model.seq_len
    if gb <= 0 or seq <= 0:
        raise ParsimError(f"global batch {gb} and seq_len {seq}: expected positive integers")
    if dtype is None:                    # the device's default (bf16 on GPUs, fp32 on CPUs)
        from parsim.hardware import default_dtype
        dtype = default_dtype(cl.device)
    if dtype not in DTYPES:
        raise ParsimError(f"dtype = {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype in FP8_DTYPES and not cl.device.peak_flops.get(dtype, 0.0):   # every candidate would break it:
        from parsim.rules import fp8_device_message                              # say the rule once, as predict does
        raise ParsimError(fp8_device_message(cl.device, dtype))
    check_accounting(accounting)
    check_grad_dtype(grad_dtype, dtype)
    check_cross_entropy(cross_entropy, accounting)
    if headroom_bytes is not None and not (np.isfinite(headroom_bytes) and headroom_bytes >= 0):
        raise ParsimError(f"memory headroom = {headroom_bytes!r} bytes: expected a finite size >= 0")
    from parsim.costs.memory import check_headroom_below_capacity
    check_headroom_below_capacity(headroom_bytes, cl.device)
    from parsim.costs.memory import check_cross_entropy_device
    check_cross_entropy_device(cross_entropy, cl.device)
    cols, rejected, generated = candidates(model, gpus, gb, seq, dtype=dtype, device=cl.device,
                                           accounting=accounting, comm_overlap=comm_overlap)
    n = len(cols["dp"])
    if n == 0:
        # the counts name the rules; the simplest plan (pure data parallelism) says the operands of the first it breaks
        from parsim.plan import Plan
        from parsim.rules import check
        try:
            check(Plan(dp=gpus, micro_batch=1, global_batch=gb, seq_len=seq, dtype=dtype), model, gpus, device=cl.device)
            why = ""
        except ParsimError as e:
            why = f" (e.g. dp {gpus}: {e})"
        raise ParsimError(f"no valid plan for {model.name} on {gpus} devices with global batch {gb}: "
                          + "; ".join(f"{k}: {v}" for k, v in rejected.items()) + why)
    r, cols, n_fit = _price_fitting(model, cl, cols, accounting, headroom_bytes, chunk_rows, grad_dtype,
                                  cross_entropy)
    cap, room = cl.device.memory_bytes, float(np.asarray(r["memory_headroom_bytes"]).ravel()[0])
    if n_fit < n:
        rejected[f"does not fit in {cap / GiB:.2f} GiB ({cl.device.name}) less {room / GiB:.2f} GiB headroom"] = n - n_fit
    fits = np.ones(n_fit, dtype=bool)
    step_closed = r["step_time_s"]
    step, simulated = _resimulate(r, cols, fits, resimulate)
    order = _rank(r, fits, step)
    if top:
        order = order[:top]
    peak = r["peak_flops"][order]
    df = {
        "dp": cols["dp"][order], "tp": cols["tp"][order], "pp": cols["pp"][order], "ep": cols["ep"][order],
        "cp": cols["cp"][order],
        "vpp": cols["vpp"][order],
        "micro_batch": cols["mb"][order],
        "schedule": np.array(SCHEDULES)[cols["schedule"][order]],
        "grad_sync": np.array(GRAD_SYNC)[cols["grad_sync"][order]],
        "zero": cols["zero"][order], "recompute": np.array(RECOMPUTE)[cols["recompute"][order]],
        "sequence_parallel": cols["sp"][order],
        "tp_overlap": cols["tpo"][order] if "tpo" in cols else np.zeros(len(order), bool),
        "pp_overlap": cols["ppo"][order] if "ppo" in cols else np.zeros(len(order), bool),
        "step_time_s": step[order],
        "step_time_closed_s": step_closed[order], "simulated": simulated[order],
        "tokens_per_s": gb * seq / step[order],
        "mfu": r["model_flops"][order] / step[order] / gpus / peak,
        "memory_GiB": r["memory_bytes"][order] / GiB,
        "dp_sync_s": r["dp_sync_s"][order],
    }
    for k in BREAKDOWN_KEYS:
        df[f"{k}_s"] = r["breakdown"][k][order]
    df["bubble_s"] = df["bubble_s"] + (step - step_closed)[order]
    for k in MEMORY_KEYS:
        df[f"{k}_GiB"] = r["memory"][k][order] / GiB
    from parsim.model import preset_twin
    attrs = dict(model=model.name, model_evidence=preset_twin(model) or model.name, cluster=cl.name,
                 device=cl.device.name, gpus=gpus, global_batch=gb, seq_len=seq, cp_not_searched=cp_not_searched(seq),
                 dtype=dtype, memory_accounting=accounting,
                 grad_dtype=grad_dtype_name(accounting, DTYPES.index(dtype), grad_dtype),
                 cross_entropy=cross_entropy or DEFAULT_CROSS_ENTROPY,
                 memory_capacity_GiB=cap / GiB, memory_headroom_GiB=room / GiB,
                 params_total=model.params, params_active=model.active_params, model_summary=model.summary(),
                 moe=model.experts > 0, comm_overlap=bool(comm_overlap))
    from parsim.accuracy import heldout, memory_heldout   # how sure: held-out errors on published runs like these
    attrs["heldout_accuracy"] = heldout(cl.device.name, dtype, model.experts > 0)
    attrs["memory_heldout"] = memory_heldout(accounting)
    from parsim.accuracy import labelled, ranked_first_knobs
    attrs["accuracy"] = labelled(cl.device.name, dtype, model.experts > 0, attrs["model_evidence"],
                                 ranked_first_knobs(df, seq), accounting if attrs["memory_heldout"] else None,
                                 float(df["memory_GiB"][0]) if len(order) else 0.0, (cap - room) / GiB, model.name)
    res = SearchResult(df, attrs, generated, n, rejected, time.perf_counter() - t0)
    return res if result else res.table


def _price_fitting(model, cl, cols, accounting, headroom_bytes, chunk_rows, grad_dtype=None, cross_entropy=None):
    """(priced results of the fitting plans, their columns, how many) from the candidate table, priced
    chunk by chunk: the rows that do not fit are dropped as each chunk is priced. Rows keep their
    order (the ranking's last tie-break)."""
    parts, lengths, keep = [], [], []
    least = np.inf           # the smallest memory of any candidate: what "nothing fits" reports
    least_states = np.inf    # the smallest model states (weights, gradients, optimizer) of any candidate
    for start, stop, r in price_chunks(model, cl, cols, accounting=accounting, headroom_bytes=headroom_bytes,
                                       chunk_rows=chunk_rows, grad_dtype=grad_dtype,
                                       cross_entropy=cross_entropy):
        if stop > start:
            least = min(least, float(np.min(r["memory_bytes"])))
            states = sum(np.broadcast_to(np.asarray(r["memory"][k], dtype=float), (stop - start,))
                         for k in ("weights", "grads", "optimizer"))
            least_states = min(least_states, float(np.min(states)))
        idx = np.nonzero(np.broadcast_to(r["fits"], (stop - start,)))[0]
        parts.append(take_priced(r, idx, stop - start))
        lengths.append(idx.size)
        keep.append(idx + start)
    idx = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    if idx.size == 0:
        from parsim.costs.memory import default_headroom_bytes
        cap = cl.device.memory_bytes
        room = float(default_headroom_bytes(cap)) if headroom_bytes is None else float(headroom_bytes)
        # what could help: with the model states alone past the usable memory, only sharding them further does
        # (more GPUs); else activations matter too (trial 2026-11-30: llama2-7b on 1 GPU was told "a smaller global
        # batch" although its 18 B/param states alone are 113 GiB)
        hint = ("its model states alone (weights, gradients, optimizer) need "
                f"{least_states / GiB:.2f} GiB: more GPUs to shard them over, or --grad-dtype / --memory-accounting"
                if least_states + room > cap else "more GPUs, a smaller global batch or --seq-len, or --memory-headroom")
        raise ParsimError(f"no plan of {model.name} on {len(cl.devices)} × {cl.device.name} fits: the smallest of "
                          f"{len(next(iter(cols.values()))):,} valid plans needs "
                          f"{least / GiB:.2f} GiB + {room / GiB:.2f} GiB headroom per device, the device has "
                          f"{cap / GiB:.2f} GiB ({hint})")
    return concat_priced(parts, lengths), {k: np.asarray(v)[idx] for k, v in cols.items()}, idx.size


TIE_REL = 1e-4       # step times within 0.01% are a tie


def _step_key(step):
    """Step time bucketed at TIE_REL relative width, so that plans equally fast to 0.01% tie."""
    return np.floor(np.log(np.maximum(step, 1e-30)) / np.log1p(TIE_REL))


def _rank(r, fits, step):
    """Fitting plans best first; ties in step time (within TIE_REL) go to the plan using less memory,
    then to the smaller raw gradient-sync time (sync algorithms whose time hides under backward)."""
    key = np.where(fits, _step_key(step), np.inf)
    order = np.lexsort((np.broadcast_to(r["dp_sync_s"], step.shape), np.broadcast_to(r["memory_bytes"], step.shape), key))
    return order[fits[order]]


def _resimulate(r, cols, fits, k: int):
    """Step times with the pipeline played by the simulator (parsim.simulate) for the best k plans.

    Re-ranks until the first k are all simulated (at most 4k distinct simulations), so a plan the
    closed form flatters cannot stay on top unchecked. Plans whose pipelines are identical (same
    schedule, pp, vpp, micro-batches and stage times: e.g. ZeRO stages or sync algorithms of one
    split) share one simulation. Returns (step_time_s, simulated mask)."""
    step = np.array(r["step_time_s"], dtype=float)
    makespan = np.broadcast_to(r["makespan_s"], step.shape)
    done = np.zeros(step.shape, dtype=bool)
    # With at most 4k rows moved, the top k always comes from the closed form's top 5k.
    pool = _rank(r, fits, step)[:5 * k]
    mem, sync = (np.broadcast_to(r[key], step.shape)[pool] for key in ("memory_bytes", "dp_sync_s"))
    st = r["stage_s"]
    m = np.broadcast_to(r["microbatches"], step.shape)

    def key(i):
        return (int(cols["schedule"][i]), int(cols["pp"][i]), int(cols["vpp"][i]), float(m[i]),
                tuple(float(np.broadcast_to(st[x], step.shape)[i]) for x in sorted(st)))
    sims = {}
    budget = 4 * k
    while budget > 0:
        head = pool[np.lexsort((sync, mem, _step_key(step[pool])))][:k]
        todo = head[~done[head]]
        if todo.size == 0:
            break
        for i in todo:
            kk = key(i)
            if kk not in sims:
                if budget <= 0:
                    break
                sims[kk] = simulated_makespan(r, cols, i)
                budget -= 1
            sim = sims[kk]
            step[i] += 0.0 if sim is None else sim - makespan[i]
            done[i] = True
    return step, done


def row_to_plan(row, global_batch: int, seq_len: int | None = None, dtype: str = "bf16") -> Plan:
    """A search result row as a Plan (to re-price it, simulate it or run it)."""
    return Plan(dp=int(row["dp"]), tp=int(row["tp"]), pp=int(row["pp"]), vpp=int(row["vpp"]),
                micro_batch=int(row["micro_batch"]), global_batch=global_batch, seq_len=seq_len, dtype=dtype,
                schedule=str(row["schedule"]), grad_sync=str(row["grad_sync"]), zero=int(row["zero"]),
                recompute=str(row["recompute"]), sequence_parallel=bool(row["sequence_parallel"]),
                ep=int(row["ep"]) if "ep" in row else 1, cp=int(row["cp"]) if "cp" in row else 1,
                tp_overlap=bool(row.get("tp_overlap", False)), pp_overlap=bool(row.get("pp_overlap", False)))
