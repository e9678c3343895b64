"""Fit the local ``cpu`` device profile (and the cpu-local loopback link) from measurements here.

``python -m parsim.calibrate [--out parsim/data/devices.local.yaml] [--no-comm]`` (about 30 s):

* GEMM: square fp32 (and one bf16) ``torch.mm`` at sizes 16..1024 on ONE thread — a rank of
  ``parsim run`` on CPU runs one thread — peak = the best FLOP/s seen, ``matmul_efficiency``
  = FLOP/s at each GEMM size (GFLOP) / peak. Small sizes include torch's per-call overhead,
  which is what a tiny model pays per kernel, so it belongs in the curve.
* Element-wise: ``torch.mul(a, b, out=c)`` at 1 Ki..4 Mi elements: ``vector_TFLOPs`` = the best
  element rate, ``vector_efficiency`` per GFLOP.
* Memory: ``dst.copy_(src)`` at 4 KiB..256 MiB, 2 bytes moved per byte copied:
  ``memory_bandwidth_GBps`` = the best, ``memory_efficiency`` per MB moved.
* Loopback gloo all-reduce between 2 processes, 4 KiB..16 MiB (best of several, after a
  warm-up; the machine is shared, so the best is the least disturbed): t = A + n·B fitted by least
  squares, then converted to the cluster's link latency and bandwidth by pricing the same
  all-reduce with parsim's own network model at two link settings and solving (so the link values
  are whatever makes parsim's formula reproduce the measurement, however it counts hops and
  whatever it charges for the reduction).

* Software overhead of collectives (about 2 min): 2, 3, 4, 6 and 8 local gloo processes run 4 KiB
  all-reduces — ring, halving-doubling, double binary tree, co-located and central parameter-server
  schedules through the backend's executor (``backends.torchdist.collectives.run_schedule``) and
  gloo's own ``all_reduce``, measured by the backend's collective benchmark with the protocol the
  netem sweep uses (``backends.torchdist.bench``: barrier, time, the slowest rank's time, median
  over repeats, a point repeated until 1.5 s is timed) — and a raw TCP ping-pong gives the loopback
  wire latency. Per point, the median over 3 launches (the machine is shared, and a VM's wake-up
  latency makes single repeats swing 2-5x and launches up to 2x). The executor is priced as a fixed cost per step plus a cost per
  message a rank posts (``parsim.costs.network``: a ring posts 2 per rank and step, a co-located
  PS 2(p−1), a central server's workers 1; a step costs the slowest rank's share or the active
  ranks' total over the cores, whichever is longer), so (time − steps · RTT/2) = o_step·X + o_msg·Y
  with X, Y parsim's own overhead price of the schedule at (1, 0) and (0, 1); solved by least
  squares on the relative error (every point weighs the same, whatever its size), over all the
  explicit points: ``executor_step_overhead_us`` and ``executor_message_overhead_us``. gloo's own
  collective (counted as its ring, 2(p−1) steps, one fixed cost per step times max(1, p/cores)):
  ``native_step_overhead_us``; ``cores`` on the ``cpu`` profile. The link fit below is then solved
  with these overheads in parsim's price, so the link keeps only what the overheads do not explain.

Writes ``devices.local.yaml`` (the ``cpu`` profile; ``parsim.hardware`` merges it over the
catalog) and ``cpu-local.calibrated.yaml`` beside it (a cluster file for ``--cluster``; ``parsim
run`` uses it for its prediction when present). Each carries ``source``: date, host, method.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

DATA = Path(__file__).parent / "data"
CLUSTER_FILE = DATA / "cpu-local.calibrated.yaml"


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


def measure_gemm(sizes=(16, 32, 64, 128, 256, 512, 1024), dtype="fp32") -> list[tuple[float, float]]:
    """[(GFLOP per GEMM, FLOP/s)] for n x n x n matmuls, median time, averaged over the three
    operand layouts a training step runs: A·B (forward), Aᵀ·B (weight gradient) and A·Bᵀ
    (input gradient)."""
    import torch
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    out = []
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        c = torch.empty(n, n, dtype=dt)
        budget = 0.2 if n >= 512 else 0.08
        ts = [_median_time(lambda x=x, y=y: torch.mm(x, y, out=c), budget_s=budget) for x, y in ((a, b), (a.t(), b), (a, b.t()))]
        t = sum(ts) / len(ts)
        out.append((2.0 * n ** 3 / 1e9, 2.0 * n ** 3 / t))
    return out


def measure_vector(sizes=(1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 22)) -> list[tuple[float, float]]:
    """[(GFLOP per kernel, FLOP/s)] for an element-wise multiply (1 FLOP per element)."""
    import torch
    out = []
    for n in sizes:
        a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
        t = _best_time(lambda: torch.mul(a, b, out=c), budget_s=0.15)
        out.append((n / 1e9, n / t))
    return out


def measure_copy(sizes_bytes=(4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20)) -> list[tuple[float, float]]:
    """[(MB moved per kernel, bytes/s)]: a copy reads and writes, so 2x the size moves."""
    import torch
    out = []
    for nb in sizes_bytes:
        src, dst = torch.ones(nb // 4), torch.empty(nb // 4)
        t = _best_time(lambda: dst.copy_(src), budget_s=0.3 if nb >= (16 << 20) else 0.15)
        out.append((2 * nb / 1e6, 2 * nb / t))
    return out


_COMM_SCRIPT = r"""
import json, os, sys, time, torch, torch.distributed as dist
from datetime import timedelta
torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=timedelta(seconds=30))
res = []
for _ in range(3):
    dist.all_reduce(torch.ones(1024))
for nb in [4096, 65536, 1 << 20, 4 << 20, 16 << 20]:
    x = torch.ones(nb // 4)
    ts = []
    for _ in range(8 if nb < (4 << 20) else 4):
        dist.barrier(); t0 = time.perf_counter(); dist.all_reduce(x); ts.append(time.perf_counter() - t0)
    t = torch.tensor([min(ts[1:])], dtype=torch.float64)   # best-of: the machine is shared
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    res.append((nb, float(t)))
if dist.get_rank() == 0:
    print(json.dumps(res))
dist.destroy_process_group()
"""


def _run_local_ranks(script: str, nproc: int, timeout_s: float, what: str):
    """Run `script` in `nproc` local gloo processes (env:// on loopback, one thread each, the
    repository on the path); returns rank 0's last stdout line parsed as JSON."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).resolve().parents[1])
    procs = []
    try:
        for r in range(nproc):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, cwd=root))
        out, err = procs[0].communicate(timeout=timeout_s)
        for p in procs[1:]:
            p.wait(timeout=10)
        if procs[0].returncode != 0:
            raise RuntimeError(f"{what} failed: {err.strip().splitlines()[-1] if err.strip() else '?'}")
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def measure_loopback_allreduce(nproc: int = 2, timeout_s: float = 60) -> list[tuple[int, float]]:
    """[(bytes per rank, seconds)]: gloo all_reduce between `nproc` local processes (best of 3-7)."""
    return [tuple(x) for x in _run_local_ranks(_COMM_SCRIPT, nproc, timeout_s, "loopback all-reduce")]


def loopback_rtt_s(timeout_s: float = 30, pings: int = 200) -> float:
    """Median round trip of a raw TCP ping-pong between two local processes (the loopback wire
    latency, no gloo, no torch): the netem link probe (``backends.netem.probe``) on 127.0.0.1."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    root = str(Path(__file__).resolve().parents[1])
    probe = [sys.executable, "-m", "backends.netem.probe"]
    srv = subprocess.Popen(probe + ["serve", "127.0.0.1", port, "--timeout", str(timeout_s)], cwd=root,
                           stdout=subprocess.PIPE, text=True)
    try:
        srv.stdout.readline()  # "ready"
        cli = subprocess.run(probe + ["client", "127.0.0.1", port, "--bytes", "1", "--pings", str(pings),
                                      "--timeout", str(timeout_s)], cwd=root, capture_output=True, text=True,
                             timeout=timeout_s + 5)
        if cli.returncode != 0:
            raise RuntimeError(f"loopback TCP ping-pong failed: {(cli.stderr.strip().splitlines() or ['?'])[-1]}")
        return float(json.loads(cli.stdout.strip().splitlines()[-1])["rtt_s"])
    finally:
        try:
            srv.wait(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


STEP_PROCS = (2, 3, 4, 6, 8)
STEP_CASES = ("native", "ring", "hd", "tree", "ps", "ps-central")


def _bench_loopback(p: int, timeout_s: float) -> dict:
    """{algo: median seconds}: the backend's collective benchmark (``backends.torchdist.bench``,
    the protocol the netem sweep measures with) on p local processes, 4 KiB all-reduces."""
    from backends.torchdist import bench
    root = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "backends.torchdist.bench", "--bench", "allreduce", "--algo", ",".join(STEP_CASES),
           "--size", "4KiB", "--repeats", "5", "--warmup", "1", "--min-time", str(bench.MIN_TIME_S),
           "--max-repeats", str(bench.MAX_REPEATS), "--nproc", str(p), "--format", "json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    for k in ("RANK", "WORLD_SIZE", "PARSIM_NETEM_STATE"):
        env.pop(k, None)
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"{p}-process loopback benchmark failed: "
                           f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    res = json.loads(r.stdout[r.stdout.index("["):])
    return {x["algo"]: x["median_s"] for x in res}


def measure_step_overheads(nprocs=STEP_PROCS, launches: int = 3, timeout_s: float = 300) -> list[dict]:
    """Per group size p: the loopback TCP round trip and, for native and the executor's ring / hd /
    tree / ps / ps-central 4 KiB all-reduces, steps and time: the median over `launches` launches
    (they differ by up to 2x here: process placement, the VM's wake-ups) of the benchmark's median
    over repeats of the slowest rank."""
    import statistics
    from parsim.schedules.collectives import build
    out = []
    for p in nprocs:
        rtt = loopback_rtt_s(min(timeout_s, 30))
        runs = [_bench_loopback(p, timeout_s) for _ in range(launches)]
        cases = {}
        for k in STEP_CASES:
            steps = 2 * (p - 1) if k == "native" else len(build("allreduce", k, p, 4096, dedicated=False).steps)
            ts = [r[k] for r in runs]
            cases[k] = {"steps": steps, "time_s": statistics.median(ts), "launch_times_s": ts}
        out.append({"p": p, "rtt_s": rtt, "bytes": 4096, "cases": cases})
    return out


EXECUTOR_CASES = STEP_CASES[1:]


def overhead_terms(algo: str, p: int, cores: int, nbytes: int = 4096) -> tuple[float, float]:
    """(X, Y): parsim's software-overhead price of `algo`'s all-reduce schedule on p ranks sharing
    one CPU of `cores` cores is o_step·X + o_msg·Y (``parsim.costs.network._overhead_of_step``
    summed over the steps, evaluated at (o_step, o_msg) = (1, 0) and (0, 1); exact where one of a
    step's two bounds (slowest rank, total over the cores) holds for both, which it does for these
    schedules but tree's and ps-central's unequal steps, where it is the nearest linear form)."""
    from parsim.costs.network import _overhead_of_step
    from parsim.schedules.collectives import build
    sched = build("allreduce", algo, p, nbytes, dedicated=False)
    cpu, cr = np.zeros(sched.nranks, dtype=np.int64), np.full(sched.nranks, float(cores))
    one, zero = np.ones(sched.nranks), np.zeros(sched.nranks)
    X = Y = 0.0
    for st in sched.steps:
        live = st.nbytes > 0
        X += _overhead_of_step(one, zero, cr, cpu, st.src[live], st.dst[live])
        Y += _overhead_of_step(zero, one, cr, cpu, st.src[live], st.dst[live])
    return X, Y


def step_overheads(runs: list[dict], cores: int | None = None) -> dict:
    """{executor_step_overhead_us, executor_message_overhead_us, native_step_overhead_us,
    per_point, rtt_us}: least squares on the relative error of (time - steps·RTT/2) against parsim's
    own overhead terms (``overhead_terms``: o_step·X + o_msg·Y, the p processes sharing `cores`
    cores) over the explicit points (one vs p-1 messages per rank and step separate the fixed from
    the per-message cost), and against steps·max(1, p/cores) over the native points (gloo's ring,
    no per-message part)."""
    cores = cores or os.cpu_count() or 1
    fit, points = {}, []
    rows, rhs = [], []
    for run in runs:
        for n in EXECUTOR_CASES:
            c = run["cases"].get(n)
            if c is None:
                continue
            w = 1.0 / c["time_s"]   # relative error: a 35 ms point does not outweigh a 0.5 ms one
            rows.append([v * w for v in overhead_terms(n, run["p"], cores)])
            rhs.append((c["time_s"] - c["steps"] * run["rtt_s"] / 2) * w)
            points.append(f"{n} p={run['p']}: {c['time_s'] * 1e6:.0f} us / {c['steps']} steps")
    A, b = np.array(rows), np.array(rhs)
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    if sol[1] < 0:     # no per-message cost resolved: the fixed part alone
        sol = np.array([max(0.0, float(A[:, 0] @ b / (A[:, 0] @ A[:, 0]))), 0.0])
    elif sol[0] < 0:   # no fixed cost resolved: the per-message part alone
        sol = np.array([0.0, max(0.0, float(A[:, 1] @ b / (A[:, 1] @ A[:, 1])))])
    fit["executor_step_overhead_us"] = round(float(sol[0]) * 1e6, 1)
    fit["executor_message_overhead_us"] = round(float(sol[1]) * 1e6, 1)
    num = den = 0.0
    for run in runs:
        c = run["cases"]["native"]
        w = 1.0 / c["time_s"]
        x = c["steps"] * max(1.0, run["p"] / cores) * w
        num += x * (c["time_s"] - c["steps"] * run["rtt_s"] / 2) * w
        den += x ** 2
        points.append(f"native p={run['p']}: {c['time_s'] * 1e6:.0f} us / {c['steps']} steps")
    fit["native_step_overhead_us"] = round(max(0.0, num / den) * 1e6, 1)
    fit["per_point"] = points
    fit["rtt_us"] = [round(r["rtt_s"] * 1e6, 1) for r in runs]
    return fit


def efficiency_curve(points, peak) -> list:
    """[[size, fraction of peak]] rounded, clipped to (0, 1]."""
    return [[float(f"{s:.3g}"), round(min(1.0, max(1e-4, v / peak)), 4)] for s, v in points]


def fit_alpha_beta(points) -> tuple[float, float]:
    """Least-squares t = alpha + beta·n over [(n, t)], both clipped to >= 0 (seconds, s/byte)."""
    n = np.array([p[0] for p in points], dtype=float)
    t = np.array([p[1] for p in points], dtype=float)
    beta, alpha = np.polyfit(n, t, 1)
    return max(float(alpha), 0.0), max(float(beta), 1e-15)


def link_from_fit(alpha_s: float, beta_s_per_B: float, nproc: int = 2) -> tuple[float, float]:
    """(bandwidth bytes/s, latency s) of the cpu-local link that makes parsim's own pricing of a
    `nproc`-rank all-reduce give alpha + beta·n. Parsim's price is alpha = a_fixed + a_lat·latency
    and beta = b_fixed + b_bw/bandwidth (the fixed parts: e.g. the reduction priced on the CPU);
    two pricings at different link parameters give those four numbers, then solve."""
    import tempfile

    from parsim.costs.network import collective_coeffs
    from parsim.topology import load_cluster
    base = yaml.safe_load((DATA / "clusters.yaml").read_text())["cpu-local"]

    def coeffs(gbps, lat_us):
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "cpu-local-probe.yaml"
            f.write_text(yaml.safe_dump(dict(base, nvlink_GBps=gbps, nvlink_latency_us=lat_us, nic_GBps=gbps,
                                             nic_latency_us=lat_us, nvlink_efficiency=1.0, nic_efficiency=1.0)))
            return collective_coeffs(load_cluster(str(f), nproc), "allreduce", "native", tuple(range(nproc)))
    a1, b1 = coeffs(1.0, 1.0)
    a2, b2 = coeffs(2.0, 2.0)
    a_lat = a2 - a1                      # seconds of alpha per us of link latency
    a_fixed = a1 - a_lat
    b_bw = 2.0 * (b1 - b2)               # s/byte at 1 GB/s from the link term
    b_fixed = b1 - b_bw
    lat_us = max(0.0, (alpha_s - a_fixed) / a_lat) if a_lat > 0 else 0.0
    gbps = b_bw / (beta_s_per_B - b_fixed) if beta_s_per_B > b_fixed else 1e3
    return float(gbps * 1e9), float(lat_us * 1e-6)


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
    us = lambda x: round(max(x, 0.0) * 1e6, 1)
    return {"layer_fwd": us(lf), "layer_bwd": us(lb), "head_fwd": us(f1 - layers[0] * lf),
            "head_bwd": us(b1 - layers[0] * lb), "optimizer_per_layer": us(lo), "optimizer_base": us(o1 - layers[0] * lo)}


_TP_SCRIPT = r"""
import contextlib, json, time, torch, torch.distributed as dist
from datetime import timedelta
torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
from backends.torchdist import parallel as par
from backends.torchdist.model import synthetic_batch
from parsim.model import ModelSpec
from parsim.plan import Plan
rank = dist.get_rank()
res = {}
for L in (1, 5):
    spec = ModelSpec("tp-probe", layers=L, hidden=8, heads=2, kv_heads=2, ffn_hidden=8, vocab=8, seq_len=2,
                     activation="gelu", tied_embeddings=False)
    plan = Plan(dp=1, tp=dist.get_world_size(), pp=1, micro_batch=1, global_batch=1, dtype="fp32")
    clock = par.PhaseClock()
    rm = par.build_rank(spec, plan, rank, torch.device("cpu"), clock)
    tokens, targets = synthetic_batch(spec, 1, 2, 0)
    ts = []
    for i in range(45):
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
if rank == 0:
    print(json.dumps(res))
dist.destroy_process_group()
"""


def measure_tp_layer_overhead(timeout_s: float = 120) -> float:
    """Host time per layer (forward + backward, collectives excluded) of the backend's GPT under
    tensor parallel 2 (DTensor), work negligible (hidden 8, two tokens): 2 local processes,
    1 vs 5 layers, median of 40 steps, minus the time the backend's own hooks spent in the TP
    collectives. Microseconds."""
    r = _run_local_ranks(_TP_SCRIPT, 2, timeout_s, "tensor-parallel overhead probe")
    a, b = r["1"], r["5"]
    return round(max(0.0, ((b["total_s"] - b["tp_comm_s"]) - (a["total_s"] - a["tp_comm_s"])) / 4) * 1e6, 1)


PROBE = dict(layers=4, hidden=192, heads=6, kv_heads=6, ffn_hidden=768, vocab=3000, seq_len=96,
             activation="gelu", tied_embeddings=False)   # unlike every preset: calibration, not validation


def measure_sustained_fraction(profile: dict, batch: int = 2) -> tuple[float, dict]:
    """In-situ GEMM rate relative to the isolated benchmark (caches cold between a model's ops,
    real shapes): time forward+backward of the backend's GPT at the PROBE shape (median), and
    solve for the `matmul_sustained_fraction` at which parsim's compute model of that same
    micro-batch equals the measurement (bisection; everything else in the profile fixed).
    The probe shape is none of the presets, so `parsim run` on gpt-tiny/gpt-small stays a test."""

    from backends.torchdist.model import full_model, loss_fn, synthetic_batch
    from parsim.costs.compute import layer_times
    from parsim.hardware import _profile
    from parsim.model import ModelSpec
    spec = ModelSpec("calibration-probe", **PROBE)
    m = full_model(spec)
    ids, tgt = synthetic_batch(spec, batch, spec.seq_len, 0)

    def fb():
        loss_fn(m(ids), tgt).backward()
    measured = _median_time(fb, budget_s=2.0, min_reps=7)
    base = _profile("cpu", dict(profile, matmul_sustained_fraction=1.0))

    def predicted(f):
        lt = layer_times(spec, base.with_sustained_fraction(f), batch, spec.seq_len, 1, False, True, 2)
        return float(spec.layers * (lt.fwd_s + lt.bwd_s) + lt.embed_fwd_s + lt.embed_bwd_s + lt.head_fwd_s + lt.head_bwd_s)
    lo, hi = 0.05, 1.0
    if predicted(hi) >= measured:
        f = hi
    else:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if predicted(mid) > measured else (lo, mid)
        f = (lo + hi) / 2
    return round(f, 3), {"probe": PROBE, "batch": batch, "measured_s": measured, "predicted_at_1_s": predicted(1.0)}


def calibrate(comm: bool = True) -> tuple[dict, dict | None, dict]:
    """Measure; returns (cpu device profile, cpu-local cluster entry or None, raw measurements)."""
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    gemm = measure_gemm()
    gemm_bf16 = measure_gemm((256,), "bf16")
    vec = measure_vector()
    mem = measure_copy()
    overhead = measure_overheads()
    overhead["tp_layer"] = measure_tp_layer_overhead()
    peak = max(f for _, f in gemm)
    vpeak = max(f for _, f in vec)
    bw = max(b for _, b in mem)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2 ** 30
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    host = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    profile = {
        "kind": "cpu",
        "peak_TFLOPs": {"fp32": round(peak / 1e12, 6), "bf16": round(gemm_bf16[0][1] / 1e12, 6),
                        "fp16": round(gemm_bf16[0][1] / 1e12, 6)},
        "vector_TFLOPs": round(vpeak / 1e12, 6),
        "memory_GiB": round(total / 2 ** 30, 1),
        "memory_bandwidth_GBps": round(bw / 1e9, 3),
        "matmul_efficiency": efficiency_curve(gemm, peak),
        "vector_efficiency": efficiency_curve(vec, vpeak),
        "memory_efficiency": efficiency_curve(mem, bw),
        "overhead_us": overhead,
        "source": (f"parsim.calibrate {date} on {host}, torch {torch.__version__}, ONE thread (as one parsim-run "
                   "rank): torch.mm n=16..1024 fp32, median time averaged over the NN/TN/NT layouts (bf16 peak = n=256 bf16), torch.mul 1Ki..4Mi elements, "
                   "copy_ 4KiB..256MiB (2 bytes moved per byte); memory_GiB = the host's RAM, shared by all ranks; "
                   "overhead_us = best-of host time of the backend's GPT at hidden 8, one token, 1 vs 5 layers "
                   "(per layer fwd/bwd, the rest of the model, AdamW foreach base + per layer); tp_layer = the same per "
                   "layer fwd+bwd under tensor parallel 2 (DTensor), 2 processes, TP collectives excluded"),
    }
    frac, probe = measure_sustained_fraction(profile)
    profile["matmul_sustained_fraction"] = frac
    profile["source"] += (f"; matmul_sustained_fraction = in-situ GEMM rate: fwd+bwd of the backend's GPT at a probe "
                          f"shape (h{PROBE['hidden']}, {PROBE['layers']} layers, seq {PROBE['seq_len']}, batch 2, no "
                          f"preset) measured {probe['measured_s'] * 1e3:.1f} ms, solved so that parsim's compute model "
                          f"gives the same")
    raw = {"gemm_fp32": gemm, "gemm_bf16": gemm_bf16, "vector": vec, "copy": mem, "overhead_us": overhead,
           "sustained_probe": probe}
    cluster = None
    if comm:
        cluster, comm_raw = calibrate_comm(profile, date, host)
        raw.update(comm_raw)
    raw["elapsed_s"] = time.time() - t0
    return profile, cluster, raw


def calibrate_comm(profile: dict, date: str, host: str) -> tuple[dict, dict]:
    """The communication part: per-step overheads (written into `profile`), then the cpu-local
    link fitted with them in effect. Returns (cpu-local cluster entry, raw measurements)."""
    raw = {}
    steps = measure_step_overheads()
    so = step_overheads(steps)
    profile["executor_step_overhead_us"] = so["executor_step_overhead_us"]
    profile["executor_message_overhead_us"] = so["executor_message_overhead_us"]
    profile["native_step_overhead_us"] = so["native_step_overhead_us"]
    profile["cores"] = os.cpu_count() or 1
    profile["source"] += (f"; *_step_overhead_us ({date}) = host software time of collectives: 4 KiB "
                          f"all-reduce on loopback, {'/'.join(str(r['p']) for r in steps)} gloo processes, "
                          "backends.torchdist.bench (median over repeats of the slowest rank), median of 3 "
                          "launches, minus steps x RTT/2 of a raw TCP "
                          f"ping-pong ({'/'.join(f'{x:.0f}' for x in so['rtt_us'])} us); executor = run_schedule "
                          "ring, hd, tree, co-located ps and central ps (worker 0), fitted as step + per-message "
                          "(sends + receives a rank posts) cost through parsim's own overhead price (max(slowest "
                          "rank, total over the cores) per step), least squares on the relative error; native = "
                          "gloo all_reduce as 2(p-1) steps x max(1, processes/cores); points: "
                          + "; ".join(so["per_point"]))
    raw["step_overheads"] = steps
    ar = measure_loopback_allreduce(2)
    a, b = fit_alpha_beta(ar)
    with _profile_in_effect(profile):   # the bandwidth through parsim's price, overheads included
        link_bw, fit_lat = link_from_fit(a, b, 2)
    # latency: the raw TCP one-way time (as the netem probes); the fit's intercept is mostly the
    # software overhead now priced per step (fit_lat is what would remain of it, kept as a check)
    link_lat = float(np.median([r["rtt_s"] for r in steps])) / 2
    raw["fit_latency_s"] = fit_lat
    base = yaml.safe_load((DATA / "clusters.yaml").read_text())["cpu-local"]
    cluster = dict(base, nvlink_GBps=round(link_bw / 1e9, 4), nvlink_latency_us=round(link_lat * 1e6, 2),
                   nic_GBps=round(link_bw / 1e9, 4), nic_latency_us=round(link_lat * 1e6, 2),
                   nvlink_efficiency=1.0, nic_efficiency=1.0,
                   source=(f"parsim.calibrate {date} on {host}: gloo loopback all_reduce, 2 processes, "
                           f"4KiB..16MiB, best of 3-7; fit t = {a * 1e6:.1f} us + n / {1 / b / 1e9:.3f} GB/s, "
                           "bandwidth mapped to the link through parsim.costs.network's own all-reduce price with "
                           "the cpu profile's step overheads in it; latency = half the raw TCP loopback round trip "
                           f"(the intercept left after the overheads would give {fit_lat * 1e6:.0f} us)"))
    raw["allreduce_2proc"] = ar
    raw["allreduce_fit"] = {"alpha_s": a, "beta_s_per_B": b}
    return cluster, raw


class _profile_in_effect:
    """Price with `profile` as the ``cpu`` device (a temporary devices.local file) inside the block."""

    def __init__(self, profile: dict):
        self.profile = profile

    def __enter__(self):
        import tempfile

        from parsim import hardware
        self.dir = tempfile.TemporaryDirectory()
        f = Path(self.dir.name) / "devices.local.yaml"
        f.write_text(yaml.safe_dump({"cpu": self.profile}))
        self.old = os.environ.get("PARSIM_DEVICES_LOCAL")
        os.environ["PARSIM_DEVICES_LOCAL"] = str(f)
        hardware._catalog.cache_clear()

    def __exit__(self, *exc):
        from parsim import hardware
        if self.old is None:
            os.environ.pop("PARSIM_DEVICES_LOCAL", None)
        else:
            os.environ["PARSIM_DEVICES_LOCAL"] = self.old
        hardware._catalog.cache_clear()
        self.dir.cleanup()


def write_yaml_atomic(path: Path, data: dict, header: str = ""):
    from parsim.outputs import write_atomic
    write_atomic(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None), what="profile")


def _read_profile(path):
    """A device profile file the user points --out at, through the one safe reader (parsim.fileio)."""
    from parsim.fileio import read_user_file
    d = read_user_file(path, "devices", "yaml")
    return d if isinstance(d, dict) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parsim.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DATA / "devices.local.yaml"), help="device profile file to write")
    ap.add_argument("--cluster-out", default=str(CLUSTER_FILE), help="cpu-local cluster file to write")
    ap.add_argument("--no-comm", action="store_true", help="skip the 2-process gloo all-reduce")
    ap.add_argument("--comm-only", action="store_true", help="re-measure only the collective step overheads and "
                    "the loopback link, keeping the rest of the cpu profile in --out")
    ap.add_argument("--json", action="store_true", help="also print the raw measurements as JSON")
    a = ap.parse_args(argv)
    from parsim.errors import ParsimError
    from parsim.outputs import check_output_path
    try:   # before minutes of measuring
        check_output_path(a.out, (".yaml", ".yml"), "--out")
        if not a.no_comm:
            check_output_path(a.cluster_out, (".yaml", ".yml"), "--cluster-out")
    except ParsimError as e:
        print(f"python -m parsim.calibrate: error: {e}", file=sys.stderr)
        return 2
    if a.comm_only:
        prof_file = Path(a.out)
        require_cpu = (_read_profile(prof_file) or {}).get("cpu") if prof_file.exists() else None
        if not require_cpu:
            print(f"--comm-only needs a cpu profile in {a.out}; run the full calibration first", file=sys.stderr)
            return 2
        t0 = time.time()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        host = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        profile = dict(require_cpu)
        src = str(profile.get("source", ""))
        profile["source"] = src.split("; *_step_overhead_us (")[0]   # replaced by this run's note
        cluster, raw = calibrate_comm(profile, date, host)
        raw["elapsed_s"] = time.time() - t0
    else:
        profile, cluster, raw = calibrate(comm=not a.no_comm)
    if a.no_comm and Path(a.out).exists():   # keep the collective step overheads measured before
        old = (_read_profile(Path(a.out)) or {}).get("cpu") or {}
        for k in ("executor_step_overhead_us", "executor_message_overhead_us", "native_step_overhead_us", "cores"):
            if k in old:
                profile[k] = old[k]
        note = str(old.get("source", "")).partition("; *_step_overhead_us (")   # keep their provenance too
        if note[1]:
            profile["source"] = f"{profile['source']}{note[1]}{note[2]}"
    hdr = "# Written by `python -m parsim.calibrate`; measured on this machine (see source). Re-run to refresh.\n"
    write_yaml_atomic(Path(a.out), {"cpu": profile}, hdr)
    print(f"cpu: fp32 peak {profile['peak_TFLOPs']['fp32'] * 1e3:.1f} GFLOP/s (1 thread), vector "
          f"{profile['vector_TFLOPs'] * 1e3:.2f} GFLOP/s, memory {profile['memory_bandwidth_GBps']:.1f} GB/s -> {a.out}")
    if cluster:
        write_yaml_atomic(Path(a.cluster_out), cluster, hdr)
        f = raw["allreduce_fit"]
        print(f"cpu-local link: {cluster['nvlink_GBps']:.3f} GB/s, {cluster['nvlink_latency_us']:.1f} us "
              f"(all-reduce fit {f['alpha_s'] * 1e6:.0f} us + n/{1 / f['beta_s_per_B'] / 1e9:.3f} GB/s) -> {a.cluster_out}")
    print(f"calibration took {raw['elapsed_s']:.1f} s")
    if a.json:
        print(json.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
