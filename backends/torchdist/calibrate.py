"""Calibration measurements with torch on this machine (the backend's half of `parsim calibrate`).

``measure(quick=..., comm=..., progress=...)`` returns the raw measurements as plain data;
``parsim.calibrate.fit`` turns them into the ``cpu`` device profile and the ``cpu-local`` link
(the core fits, it never imports torch). What is measured:

* GEMM: square ``torch.mm`` at n = 16..1024 fp32 (and n = 256 bf16) on ONE thread — a rank of
  ``parsim run`` on CPU runs one thread — median time averaged over the NN/TN/NT layouts.
  Small sizes include torch's per-call overhead, which is what a tiny model pays per kernel.
* Element-wise: ``torch.mul(a, b, out=c)`` at 1 Ki..4 Mi elements (best time).
* Memory: ``dst.copy_(src)`` at 4 KiB..256 MiB (best time; 2 bytes moved per byte copied).
* Host overheads of the backend's own GPT at hidden 8, one token, 1 vs 5 layers (fwd, bwd, AdamW).
* In-situ GEMM rate: fwd+bwd of the backend's GPT at a probe shape (median time).
* With ``comm``: the tensor-parallel per-layer host overhead (2 ranks), 4 KiB all-reduces of the
  explicit schedules and gloo's own on 2..8 local ranks through the collective benchmark
  (``backends.torchdist.bench``, the netem sweep's protocol), the loopback TCP round trip, and a
  2-rank gloo all-reduce at 4 KiB..16 MiB.

Every multi-process measurement runs through the one launcher (``backends.torchdist.launch``) as a
rank task of ``backends.torchdist.runner``. ``quick`` shrinks sizes, budgets and group sizes so a
test can run the whole pipeline in seconds (its numbers are rough; the source says so).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

# the measured sizes: full and quick
GEMM_SIZES = (16, 32, 64, 128, 256, 512, 1024)
GEMM_SIZES_QUICK = (16, 64, 256)
VECTOR_SIZES = (1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 22)
VECTOR_SIZES_QUICK = (1 << 10, 1 << 16, 1 << 20)
COPY_SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20)
COPY_SIZES_QUICK = (4 << 10, 1 << 20, 16 << 20)
ALLREDUCE_SIZES = (4096, 65536, 1 << 20, 4 << 20, 16 << 20)
ALLREDUCE_SIZES_QUICK = (4096, 65536, 1 << 20)
STEP_PROCS = (2, 3, 4, 6, 8)
STEP_CASES_QUICK = ("native", "ring", "ps")
STEP_CASES = ("native", "ring", "hd", "tree", "ps", "ps-central")
LAUNCHES = 3            # per point, the median over launches (they differ by up to 2x on a shared VM)
PROBE = dict(layers=4, hidden=192, heads=6, kv_heads=6, ffn_hidden=768, vocab=3000, seq_len=96,
             activation="gelu", tied_embeddings=False)   # unlike every preset: calibration, not validation
PROBE_QUICK = dict(PROBE, layers=2, hidden=64, heads=2, kv_heads=2, ffn_hidden=256, vocab=512, seq_len=32)


def _best_time(fn, budget_s=0.25, min_reps=3) -> float:
    """Best-of wall time of fn() (after one warm-up call) within a time budget."""
    fn()
    best, t_end, reps = float("inf"), time.perf_counter() + budget_s, 0
    while reps < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
        if reps > 10_000:
            break
    return best


def _median_time(fn, budget_s=0.25, min_reps=5) -> float:
    """Median wall time of fn() (after one warm-up call) within a time budget: the steady rate a
    training loop sees, not the luckiest run."""
    fn()
    ts, t_end = [], time.perf_counter() + budget_s
    while len(ts) < min_reps or (time.perf_counter() < t_end and len(ts) < 10_000):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def measure_gemm(sizes=GEMM_SIZES, dtype="fp32", scale: float = 1.0) -> list[tuple[float, float]]:
    """[(GFLOP per GEMM, FLOP/s)] for n x n x n matmuls, median time, averaged over the three
    operand layouts a training step runs: A·B (forward), Aᵀ·B (weight gradient), A·Bᵀ (input gradient)."""
    import torch
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    out = []
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        c = torch.empty(n, n, dtype=dt)
        budget = (0.2 if n >= 512 else 0.08) * scale
        ts = [_median_time(lambda x=x, y=y: torch.mm(x, y, out=c), budget_s=budget)
              for x, y in ((a, b), (a.t(), b), (a, b.t()))]
        t = sum(ts) / len(ts)
        out.append((2.0 * n ** 3 / 1e9, 2.0 * n ** 3 / t))
    return out


def measure_vector(sizes=VECTOR_SIZES, scale: float = 1.0) -> list[tuple[float, float]]:
    """[(GFLOP per kernel, FLOP/s)] for an element-wise multiply (1 FLOP per element)."""
    import torch
    out = []
    for n in sizes:
        a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
        t = _best_time(lambda: torch.mul(a, b, out=c), budget_s=0.15 * scale)
        out.append((n / 1e9, n / t))
    return out


def measure_copy(sizes_bytes=COPY_SIZES, scale: float = 1.0) -> list[tuple[float, float]]:
    """[(MB moved per kernel, bytes/s)]: a copy reads and writes, so 2x the size moves."""
    import torch
    out = []
    for nb in sizes_bytes:
        src, dst = torch.ones(nb // 4), torch.empty(nb // 4)
        t = _best_time(lambda: dst.copy_(src), budget_s=(0.3 if nb >= (16 << 20) else 0.15) * scale)
        out.append((2 * nb / 1e6, 2 * nb / t))
    return out


def measure_overheads(layers=(1, 5), reps_budget_s=0.4) -> dict:
    """Host software time of the backend's own GPT on this CPU, in microseconds, with the work
    made negligible (hidden 8, one token): per layer forward/backward, the rest of the model
    (embedding, norm, head, loss) forward/backward, and AdamW's step (base + per layer).
    Two depths L1 < L2 separate the per-layer part: x_layer = (t(L2) − t(L1)) / (L2 − L1)."""
    import torch

    from backends.torchdist.model import full_model, loss_fn
    from parsim.model import ModelSpec
    out = {}
    for L in layers:
        spec = ModelSpec("overhead-probe", layers=L, hidden=8, heads=1, kv_heads=1, ffn_hidden=8, vocab=8, seq_len=1,
                         activation="gelu", tied_embeddings=False)
        m = full_model(spec)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0, foreach=True)   # as the backend at tp=1
        ids = torch.zeros(1, 1, dtype=torch.long)
        state = {}

        def fwd():
            state["loss"] = loss_fn(m(ids), ids)

        def bwd():
            fwd()
            state["loss"].backward()

        def step():
            opt.step()
        bwd()
        step()
        t_f = _best_time(fwd, reps_budget_s)
        t_fb = _best_time(bwd, reps_budget_s)
        t_o = _best_time(step, reps_budget_s)
        out[L] = (t_f, t_fb - t_f, t_o)
    (f1, b1, o1), (f2, b2, o2) = out[layers[0]], out[layers[1]]
    n = layers[1] - layers[0]
    lf, lb, lo = (f2 - f1) / n, (b2 - b1) / n, (o2 - o1) / n
    us = lambda x: round(max(x, 0.0) * 1e6, 1)   # noqa: E731
    return {"layer_fwd": us(lf), "layer_bwd": us(lb), "head_fwd": us(f1 - layers[0] * lf),
            "head_bwd": us(b1 - layers[0] * lb), "optimizer_per_layer": us(lo), "optimizer_base": us(o1 - layers[0] * lo)}


def measure_probe_step(probe: dict = PROBE, batch: int = 2, budget_s: float = 2.0) -> dict:
    """Median fwd+bwd time of the backend's GPT at the probe shape (no preset, so `parsim run` on
    gpt-tiny/gpt-small stays a test): {probe, batch, measured_s}; parsim.calibrate.sustained_fraction
    solves the in-situ GEMM rate from it."""
    from backends.torchdist.model import full_model, loss_fn, synthetic_batch
    from parsim.model import ModelSpec
    spec = ModelSpec("calibration-probe", **probe)
    m = full_model(spec)
    ids, tgt = synthetic_batch(spec, batch, spec.seq_len, 0)

    def fb():
        loss_fn(m(ids), tgt).backward()
    return {"probe": dict(probe), "batch": batch, "measured_s": _median_time(fb, budget_s=budget_s, min_reps=7)}


# -- rank tasks (run by backends.torchdist.runner under the one launcher) -----------------------

def allreduce_rank(cfg, rank, world, device, sync, dog):
    """Rank task: gloo all_reduce at cfg["sizes"] bytes per rank, best of several after a warm-up
    (the machine is shared: the best is the least disturbed); the slowest rank's time.
    [(bytes, seconds)] on rank 0."""
    import torch
    import torch.distributed as dist
    for _ in range(3):
        dist.all_reduce(torch.ones(1024))
    res = []
    for nb in cfg["sizes"]:
        dog.beat(f"all-reduce {nb} B", waits=True)
        x = torch.ones(nb // 4)
        ts = []
        for _ in range(8 if nb < (4 << 20) else 4):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            ts.append(time.perf_counter() - t0)
        t = torch.tensor([min(ts[1:])], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        res.append((nb, float(t)))
    return res if rank == 0 else None


def tp_overhead_rank(cfg, rank, world, device, sync, dog):
    """Rank task: host time of the backend's GPT under tensor parallel `world` (DTensor), work negligible
    (hidden 8, two tokens), 1 vs 5 layers, median of cfg["steps"] steps, with the time its own hooks
    spent in the TP collectives. {layers: {total_s, tp_comm_s}} on rank 0."""
    import contextlib

    import torch.distributed as dist

    from backends.torchdist import parallel as par
    from backends.torchdist.model import synthetic_batch
    from parsim.model import ModelSpec
    from parsim.plan import Plan
    res = {}
    for L in (1, 5):
        dog.beat(f"tensor-parallel probe, {L} layer(s)")
        spec = ModelSpec("tp-probe", layers=L, hidden=8, heads=2, kv_heads=2, ffn_hidden=8, vocab=8, seq_len=2,
                         activation="gelu", tied_embeddings=False)
        plan = Plan(dp=1, tp=world, pp=1, micro_batch=1, global_batch=1, dtype="fp32")
        clock = par.PhaseClock()
        rm = par.build_rank(spec, plan, rank, device, clock)
        tokens, targets = synthetic_batch(spec, 1, 2, 0)
        ts = []
        for i in range(int(cfg.get("steps", 45))):
            clock.reset()
            dist.barrier()
            t0 = time.perf_counter()
            par.forward_backward(rm, plan, tokens, targets, clock, contextlib.nullcontext)
            dt = time.perf_counter() - t0
            if i >= 5:
                ts.append((dt, clock.t.get("tp_comm", 0.0)))
            rm.optimizer.zero_grad(set_to_none=True)
        ts.sort()
        res[L] = {"total_s": ts[len(ts) // 2][0], "tp_comm_s": ts[len(ts) // 2][1]}
    return res if rank == 0 else None


def _rank_task(task: str, nproc: int, timeout_s: float, **job):
    from backends.torchdist.launch import launch
    cfg = {"task": f"backends.torchdist.calibrate:{task}", "backend": "gloo", "threads_per_rank": 1,
           "timeout_s": min(timeout_s, 120), "watchdog_s": 60, **job}
    return launch(cfg, nproc, timeout_s=timeout_s)


def measure_loopback_allreduce(nproc: int = 2, sizes=ALLREDUCE_SIZES, timeout_s: float = 120) -> list:
    """[(bytes per rank, seconds)]: gloo all_reduce between `nproc` local ranks."""
    return [tuple(x) for x in _rank_task("allreduce_rank", nproc, timeout_s, sizes=list(sizes))]


def measure_tp_layer_overhead(timeout_s: float = 180, steps: int = 45) -> dict:
    """{1: {total_s, tp_comm_s}, 5: {...}}: the backend's GPT under tensor parallel 2 (2 local ranks)."""
    r = _rank_task("tp_overhead_rank", 2, timeout_s, steps=steps)
    return {int(k): v for k, v in r.items()}


def loopback_rtt_s(timeout_s: float = 30, pings: int = 200) -> float:
    """Median round trip of a raw TCP ping-pong between two local processes (the loopback wire latency,
    no gloo, no torch): the netem link probe (``backends.netem.probe``) on 127.0.0.1."""
    from backends.netem.probe import serve_and_probe
    from backends.torchdist.launch import free_port
    port = str(free_port())
    probe = [sys.executable, "-m", "backends.netem.probe"]
    r = serve_and_probe(probe + ["serve", "127.0.0.1", port, "--timeout", str(timeout_s)],
                        probe + ["client", "127.0.0.1", port, "--bytes", "1", "--pings", str(pings),
                                 "--timeout", str(timeout_s)], timeout_s, "loopback TCP ping-pong")
    return float(r["rtt_s"])


def bench_loopback(p: int, cases=STEP_CASES, timeout_s: float = 300, min_time_s: float | None = None,
                   max_repeats: int | None = None) -> dict:
    """{algo: median seconds}: the backend's collective benchmark (``backends.torchdist.bench``, the
    protocol the netem sweep measures with) on p local ranks, 4 KiB all-reduces."""
    from backends.torchdist import bench
    job = bench.make_job("allreduce", list(cases), "4KiB", 5, 1,
                         bench.MIN_TIME_S if min_time_s is None else min_time_s,
                         bench.MAX_REPEATS if max_repeats is None else max_repeats, world=p)
    cfg = dict(bench.rank_config(job, p, timeout_s), threads_per_rank=1)
    return {x["algo"]: x["median_s"] for x in bench.launch_job(job, p, timeout_s, cfg=cfg)}


def measure_step_overheads(nprocs=STEP_PROCS, launches: int = LAUNCHES, cases=STEP_CASES, timeout_s: float = 300,
                           min_time_s: float | None = None, tick=None) -> list[dict]:
    """Per group size p: the loopback TCP round trip and, for each case's 4 KiB all-reduce, its steps
    and time: the median over `launches` launches of the benchmark's median over repeats of the
    slowest rank. tick(what): called before each launch (progress)."""
    import statistics

    from parsim.schedules.collectives import build
    out = []
    for p in nprocs:
        if tick:
            tick(f"loopback TCP round trip (p={p})")
        rtt = loopback_rtt_s(min(timeout_s, 30))
        runs = []
        for k in range(launches):
            if tick:
                tick(f"4 KiB all-reduces on {p} ranks, launch {k + 1}/{launches}")
            runs.append(bench_loopback(p, cases, timeout_s, min_time_s))
        res = {}
        for c in cases:
            steps = 2 * (p - 1) if c == "native" else len(build("allreduce", c, p, 4096, dedicated=False).steps)
            ts = [r[c] for r in runs]
            res[c] = {"steps": steps, "time_s": statistics.median(ts), "launch_times_s": ts}
        out.append({"p": p, "rtt_s": rtt, "bytes": 4096, "cases": res})
    return out


def host_info() -> dict:
    """Where and with what the measurements ran (for the profiles' `source`)."""
    import torch
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = None
    return {"host": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "cores": os.cpu_count() or 1, "memory_bytes": total, "torch": torch.__version__}


def _quick_comm(tick):
    """--quick's communication part in ONE 2-rank launch (two jobs in one process group: the 4 KiB
    benchmark of native, ring and co-located ps, then the all-reduce sizes) plus the TCP round trip:
    (step_overheads, allreduce_2proc) shaped as the full measurement's."""
    from backends.torchdist import bench
    from backends.torchdist.launch import launch
    from parsim.schedules.collectives import build
    tick("loopback TCP round trip (p=2)")
    rtt = loopback_rtt_s(30, pings=50)
    tick(_QUICK_LAUNCH)
    job = bench.make_job("allreduce", list(STEP_CASES_QUICK), "4KiB", 5, 1, 0.05, 10, world=2)
    cfg = dict(bench.rank_config(job, 2, 120), threads_per_rank=1,
               jobs=[{"task": "bench"}, {"task": "backends.torchdist.calibrate:allreduce_rank",
                                         "sizes": list(ALLREDUCE_SIZES_QUICK)}])
    points, ar = launch(cfg, 2, timeout_s=120)
    cases = {}
    for x in points:
        c = x["algo"]
        steps = 2 if c == "native" else len(build("allreduce", c, 2, 4096, dedicated=False).steps)
        cases[c] = {"steps": steps, "time_s": x["median_s"], "launch_times_s": [x["median_s"]]}
    return [{"p": 2, "rtt_s": rtt, "bytes": 4096, "cases": cases}], [tuple(x) for x in ar]


_QUICK_LAUNCH = "2 ranks: 4 KiB all-reduces (native, ring, ps), all-reduce 4 KiB..1 MiB"


def plan_steps(quick: bool, comm: bool, local: bool = True) -> list[str]:
    """The measurement stages `measure` goes through, in order (for a progress bar's total)."""
    steps = ["GEMM fp32", "GEMM bf16", "element-wise", "memory copy", "host overheads", "in-situ GEMM probe"] if local else []
    if comm and quick:
        return steps + ["loopback TCP round trip (p=2)", _QUICK_LAUNCH]
    if comm:
        steps.append("tensor-parallel overhead (2 ranks)")
        launches = LAUNCHES
        for p in STEP_PROCS:
            steps.append(f"loopback TCP round trip (p={p})")
            steps += [f"4 KiB all-reduces on {p} ranks, launch {k + 1}/{launches}" for k in range(launches)]
        steps.append(_ar_stage(False))
    return steps


def _ar_stage(quick: bool) -> str:
    sizes = ALLREDUCE_SIZES_QUICK if quick else ALLREDUCE_SIZES
    return f"2-rank all-reduce {sizes[0] // 1024} KiB..{sizes[-1] / 2 ** 20:g} MiB"


def measure(quick: bool = False, comm: bool = True, local: bool = True, tick=None) -> dict:
    """Every measurement (see the module's docstring) as plain data for ``parsim.calibrate.fit``.
    local=False: the communication part only. tick(what): called as each stage starts."""
    import torch
    torch.set_num_threads(1)
    tick = tick or (lambda what: None)
    t0 = time.time()
    scale = 0.25 if quick else 1.0
    raw = {"quick": quick, "host": host_info()}
    if local:
        tick("GEMM fp32")
        raw["gemm_fp32"] = measure_gemm(GEMM_SIZES_QUICK if quick else GEMM_SIZES, scale=scale)
        tick("GEMM bf16")
        raw["gemm_bf16"] = measure_gemm((256,), "bf16", scale=scale)
        tick("element-wise")
        raw["vector"] = measure_vector(VECTOR_SIZES_QUICK if quick else VECTOR_SIZES, scale=scale)
        tick("memory copy")
        raw["copy"] = measure_copy(COPY_SIZES_QUICK if quick else COPY_SIZES, scale=scale)
        tick("host overheads")
        raw["overhead_us"] = measure_overheads(reps_budget_s=0.4 * scale)
        tick("in-situ GEMM probe")
        raw["sustained_probe"] = measure_probe_step(PROBE_QUICK if quick else PROBE, budget_s=2.0 * scale)
    if comm and quick:
        raw["step_overheads"], raw["allreduce_2proc"] = _quick_comm(tick)
    elif comm:
        tick("tensor-parallel overhead (2 ranks)")
        raw["tp_probe"] = measure_tp_layer_overhead()
        raw["step_overheads"] = measure_step_overheads(tick=tick)
        tick(_ar_stage(quick))
        raw["allreduce_2proc"] = measure_loopback_allreduce(2, ALLREDUCE_SIZES)
    raw["elapsed_s"] = time.time() - t0
    return json.loads(json.dumps(raw))   # plain data (tuples as lists), as a file would give it back
