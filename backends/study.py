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
    """Train one plan (on local ranks, or one rank per emulated device in its host's namespace);
    the measured StepReport."""
    from backends.torchdist.launch import RunFailed, launch
    from parsim.model import load_model
    from parsim.plan import Plan
    model = load_model(spec["model"])
    plan = Plan(**spec["plan"])
    cfg = {"model": model.to_dict(), "plan": plan.to_dict(), "backend": settings["backend"], "steps": spec["steps"],
           "warmup": spec["warmup"], "device_profile": device_profile, "threads_per_rank": settings.get("threads", 1),
           "timeout_s": min(spec["timeout_s"], 120), "watchdog_s": min(spec["timeout_s"], 120)}
    if spec.get("fault"):
        cfg["fault"] = spec["fault"]
    if spec.get("trace_dir"):
        cfg["trace_dir"] = spec["trace_dir"]
    try:
        return launch(cfg, plan.gpus, timeout_s=spec["timeout_s"], rank_prefix=_netem_prefix(emu, plan.gpus))
    except RunFailed as e:
        raise PointFailed(str(e).splitlines()[0]) from None


def _netem_prefix(emu, world: int):
    """The launcher's rank_prefix for an emulated cluster (each rank in its host's namespace), or None."""
    if emu is None:
        return None
    from parsim.commands.emulate import rank_prefixes
    pre = dict(rank_prefixes(emu))
    if len(pre) != world:
        raise PointFailed(f"the emulated cluster runs {len(pre)} ranks, the point needs {world}")
    return pre.__getitem__


# -- collectives ---------------------------------------------------------------------------

def run_collectives(op: str, algos: list, sizes: list, spec: dict, emu=None) -> list[dict]:
    """Benchmark every (size, algo) in one process group per launch (backends.torchdist.bench), `launches`
    times; a point is the median of the launches' medians, all samples kept for the spread."""
    import statistics

    from backends.torchdist import bench
    from backends.torchdist.launch import RunFailed
    world = len(emu.ranks()) if emu is not None else int(spec["nproc"])
    job = bench.make_job(op, algos, sizes, spec["repeats"], spec["warmup"], spec["min_time_s"], spec["max_repeats"],
                         world, netem_state=emu.state_file if emu is not None else None)
    runs = []
    for _ in range(spec["launches"]):
        try:
            runs.append(bench.launch_job(job, world, spec["timeout_s"], rank_prefix=_netem_prefix(emu, world),
                                         local_ranks=world if emu is None else max(1, world // len(emu.plan.hosts))))
        except RunFailed as e:
            raise PointFailed(str(e).splitlines()[0]) from None
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
        from backends.torchdist.launch import RunFailed, run_process
        try:
            rc, _, err = run_process([sys.executable, "-m", "backends.torchdist.devprobe", str(sp), str(out)],
                                     spec.get("timeout_s", 240), env=_env(), what="device measurement")
        except RunFailed:
            raise PointFailed(f"timeout: device measurement took over {spec.get('timeout_s', 240):.0f} s") from None
        if rc != 0:
            tail = err.strip().splitlines()
            raise PointFailed(f"device measurement exited with code {rc}" + (f": {tail[-1]}" if tail else ""))
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
