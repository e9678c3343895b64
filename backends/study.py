"""Run the points of a study (parsim.study) through the backend: training plans, collective
benchmarks, device measurements — on local ranks, on GPUs, or inside an emulated network.

Each function returns what was measured or raises ``PointFailed`` with a one-line cause;
`parsim validate` records either and goes on. Rank processes die with their launcher
(PR_SET_PDEATHSIG), so a killed study leaves none behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class PointFailed(Exception):
    """A point did not produce a measurement; str() is the one-line cause."""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# -- training ------------------------------------------------------------------------------

def run_train(spec: dict, settings: dict, device_profile: str | None, emu=None):
    """Train one plan; the measured StepReport."""
    from parsim.model import load_model
    model = load_model(spec["model"])
    if emu is not None:
        return _train_in_netem(model, spec, settings, emu)
    from backends.torchdist.launch import RunFailed, launch
    from parsim.plan import Plan
    plan = Plan(**spec["plan"])
    cfg = {"model": model.to_dict(), "plan": plan.to_dict(), "backend": settings["backend"], "steps": spec["steps"],
           "warmup": spec["warmup"], "device_profile": device_profile, "threads_per_rank": settings.get("threads", 1),
           "timeout_s": min(spec["timeout_s"], 120), "watchdog_s": min(spec["timeout_s"], 120)}
    if spec.get("fault"):
        cfg["fault"] = spec["fault"]
    if spec.get("trace_dir"):
        cfg["trace_dir"] = spec["trace_dir"]
    try:
        return launch(cfg, plan.gpus, timeout_s=spec["timeout_s"])
    except RunFailed as e:
        raise PointFailed(str(e).splitlines()[0]) from None


def _plan_flags(plan: dict) -> list[str]:
    f = []
    for k in ("dp", "tp", "pp", "vpp", "micro_batch", "global_batch", "seq_len", "schedule", "grad_sync", "zero",
              "recompute", "dtype"):
        if plan.get(k) is not None:
            f += [f"--{k.replace('_', '-')}", str(plan[k])]
    if plan.get("sequence_parallel"):
        f.append("--sequence-parallel")
    return f


def _train_in_netem(model, spec, settings, emu):
    """One `parsim run` per rank in its host's namespace (torchrun-style env); rank 0's JSON."""
    from backends.torchdist.runner import reports_from_json
    from parsim.commands.emulate import rank_commands
    with tempfile.TemporaryDirectory() as d:
        mfile = Path(d) / "model.json"
        mfile.write_text(json.dumps(model.to_dict()))
        out = Path(d) / "result.json"
        cmd = ["parsim", "run", "--model", str(mfile), *_plan_flags(spec["plan"]), "--steps", str(spec["steps"]),
               "--warmup", str(spec["warmup"]), "--format", "json", "--out", str(out),
               "--timeout", str(spec["timeout_s"])]
        _run_ranks(rank_commands(emu, cmd), spec["timeout_s"])
        if not out.exists():
            raise PointFailed("rank 0 wrote no result")
        return reports_from_json(json.loads(out.read_text())["measured"])


def _run_ranks(commands, timeout_s):
    """Start one process per (rank, argv); wait for all; a failure is PointFailed naming the rank."""
    procs = []
    try:
        for r, argv in commands:
            procs.append((r, subprocess.Popen(argv, stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())))
        try:
            out, err = procs[0][1].communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PointFailed(f"timeout: ranks did not finish within {timeout_s:.0f} s; all stopped") from None
        for r, p in procs[1:]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise PointFailed(f"timeout: rank {r} still running 30 s after rank 0 finished") from None
        bad = [(r, p) for r, p in procs if p.returncode != 0]
        if bad:
            r, p = bad[0]
            tail = (err if r == 0 else (p.stderr.read() if p.stderr else "")).strip().splitlines()
            raise PointFailed(f"rank {r} exited with code {p.returncode}" + (f": {tail[-1]}" if tail else ""))
        return out
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- collectives ---------------------------------------------------------------------------

def run_collectives(op: str, algos: list, sizes: list, spec: dict, emu=None) -> list[dict]:
    """Benchmark every (size, algo) in one process group per launch (backends.torchdist.bench), `launches`
    times; a point is the median of the launches' medians, all samples kept for the spread."""
    import statistics
    cmd = [sys.executable, "-m", "backends.torchdist.bench", "--bench", op, "--algo", ",".join(algos),
           "--size", ",".join(str(int(s)) for s in sizes), "--repeats", str(spec["repeats"]),
           "--warmup", str(spec["warmup"]), "--format", "json", "--min-time", str(spec["min_time_s"]),
           "--max-repeats", str(spec["max_repeats"])]
    runs = []
    for _ in range(spec["launches"]):
        if emu is not None:
            from parsim.commands.emulate import rank_commands
            out = _run_ranks(rank_commands(emu, cmd), spec["timeout_s"])
        else:
            out = _run_ranks([(0, cmd + ["--nproc", str(spec["nproc"])])], spec["timeout_s"])
        try:
            runs.append(json.loads(out[out.index("["):]))
        except ValueError:
            raise PointFailed(f"benchmark printed no results: {out.strip()[-200:]}") from None
    points = []
    for pts in zip(*runs):
        first = dict(pts[0])
        meds = [q["median_s"] for q in pts]
        times = [t for q in pts for t in q["times_s"]]
        med = statistics.median(meds)
        first.update(times_s=times, repeats=len(times), median_s=med, min_s=min(times), max_s=max(times),
                     launch_medians_s=meds, correct=all(q["correct"] for q in pts),
                     error=(first["predicted_s"] - med) / med if med > 0 else None)
        points.append(first)
    return points


# -- device --------------------------------------------------------------------------------

def measure_device(spec: dict) -> dict:
    """GEMMs by shape and memory copies, in a child process (its own CUDA context, its own timeout)."""
    with tempfile.TemporaryDirectory() as d:
        sp, out = Path(d) / "spec.json", Path(d) / "out.json"
        sp.write_text(json.dumps(spec))
        try:
            r = subprocess.run([sys.executable, "-m", "backends.torchdist.devprobe", str(sp), str(out)], cwd=ROOT,
                               env=_env(), capture_output=True, text=True, timeout=spec.get("timeout_s", 240))
        except subprocess.TimeoutExpired:
            raise PointFailed(f"timeout: device measurement took over {spec.get('timeout_s', 240):.0f} s") from None
        if r.returncode != 0:
            tail = r.stderr.strip().splitlines()
            raise PointFailed(f"device measurement exited with code {r.returncode}" + (f": {tail[-1]}" if tail else ""))
        return json.loads(out.read_text())


# -- the emulated network ------------------------------------------------------------------

def emulated_cluster(emu, world: int):
    """The emulated network as a parsim Cluster for predictions: its graph with the probed link
    rates (backends.torchdist.bench.prediction_inputs), one rank per emulated device, cpu profile."""
    from backends.torchdist.bench import prediction_inputs
    from parsim.topology import from_graph
    g, rank_nodes, _, servers, _ = prediction_inputs(emulated_state(emu), world)
    for n in rank_nodes:
        g.nodes[n]["profile"] = "cpu"
    return from_graph(f"emulated {emu.prefix}", g, ranks=rank_nodes[:world], device="cpu")


def _topology(spec: dict):
    """(graph, ranks per host) of a study's network entry {preset, hosts, link, servers, oversubscription,
    ranks_per_host} (parsim.study checks the keys)."""
    from backends.netem import presets
    from parsim.units import parse_rate
    kw = {"hosts": int(spec.get("hosts", 2))}
    if spec.get("servers") is not None:
        kw["servers"] = int(spec["servers"])
    if spec.get("oversubscription") is not None:
        kw["oversubscription"] = float(spec["oversubscription"])
    rph = int(spec.get("ranks_per_host", 1))
    g = presets.build(spec.get("preset", "switch"), bandwidth_Bps=parse_rate(spec["link"]), devices_per_host=rph, **kw)
    return g, rph


@contextlib.contextmanager
def network(spec: dict):
    """An emulated cluster (backends.netem) for a study's network entry, links probed; torn down after."""
    from backends.netem.cluster import Emulation, unavailable
    from backends.netem.probe import probe_pairs
    from parsim.errors import ParsimError
    reason = unavailable()
    if reason:
        raise ParsimError(reason)
    g, rph = _topology(spec)
    with Emulation(g, ranks_per_host=rph) as emu:
        emu.probes = probe_pairs(emu)
        emu.write_state()
        yield emu


def planned_emulation(spec: dict, probes: list):
    """The emulated cluster of a study's network entry as a plan only (nothing is created, no root
    needed), with the link probes a study stored: what re-predicting a stored point prices on."""
    from backends.netem.cluster import Emulation
    g, rph = _topology(spec)
    emu = Emulation(g, prefix="ps00000-", ranks_per_host=rph)
    emu.probes = list(probes or [])
    return emu


def emulated_state(emu) -> dict:
    """An emulation's state as the JSON a rank reads (PARSIM_NETEM_STATE): what predict_point takes."""
    return json.loads(json.dumps(emu.state(), default=str))
