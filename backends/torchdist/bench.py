"""Collective micro-benchmark: `parsim run --bench allreduce --algo ring --size 16MiB`.

Every rank runs the same schedule (``parsim.schedules.collectives``) with
torch.distributed (gloo) isend/irecv (``backends.torchdist.collectives.run_schedule``) — or the library's own collective for
``--algo native`` — and rank 0 reports the measured time (median and spread over
the repeats, after warm-up) beside the time parsim predicts on the cluster graph.

Ranks come from torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, LOCAL_RANK). Inside `parsim emulate run`, PARSIM_NETEM_STATE names
the emulated cluster's state file: its graph, with link rates and latency set to
what the probes measured, is what the prediction is made on. Without it the
benchmark spawns --nproc local ranks on loopback and predicts on a one-host graph
with nominal loopback figures (so the comparison there is indicative only).

One timed repeat: barrier, start clock, run the collective, stop clock; the
repeat's time is the slowest rank's (a MAX all-reduce after the clock stops).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from parsim.errors import ParsimError, require
from parsim.units import fmt_bytes, fmt_time, parse_size_range

TIMEOUT_S = 300
# the measurement protocol the netem sweep and parsim.calibrate share: cheap points are repeated
# until this much was timed (at most this many repeats); 4 KiB points, a few ms each and the
# noisiest (a VM's wake-ups), get up to 60 samples, 16 MiB points keep the configured count
MIN_TIME_S = 1.5
MAX_REPEATS = 60


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `parsim run --bench` takes (also usable standalone); counts and times are checked as the
    parsim CLI checks them (parsim.commands.common: count, number)."""
    from parsim.commands.common import count, number
    p.add_argument("--algo", default="ring", help="ring, tree, hd, hierarchical, ps (co-located), ps-central, "
                   "ps-sharded (dedicated servers, push then pull), ps-pipelined (dedicated servers, BytePS partitions "
                   "pipelined; both need emulate --cluster ps), native; comma list for several")
    p.add_argument("--size", default="16MiB", help="per-rank buffer: 16MiB, a list 4KiB,1MiB or a range 4KiB:64MiB:4")
    p.add_argument("--repeats", type=count("MAX_STEPS"), default=5, help="timed repeats per point (after warm-up)")
    p.add_argument("--warmup", type=count("MAX_STEPS", lo=0), default=1, help="untimed repeats first")
    p.add_argument("--min-time", type=number(0.0, "MAX_WAIT_S"), default=0.0, help="keep repeating a point (beyond --repeats, up to "
                   "--max-repeats) until this many seconds were timed: more samples where they are cheap")
    p.add_argument("--max-repeats", type=count("MAX_STEPS"), default=25, help="cap on repeats with --min-time")
    p.add_argument("--nproc", type=count("MAX_DEVICES"), default=2, help="local ranks when not launched with RANK/WORLD_SIZE")
    p.add_argument("--format", choices=["table", "json"], default="table")


# -- prediction ----------------------------------------------------------------

def prediction_inputs(st: dict, world: int):
    """(graph with measured links, rank -> device node, host index of each rank,
    dedicated server ranks, description) from an emulated cluster's state."""
    import networkx as nx
    from backends.netem.probe import measured_graph
    g = measured_graph(nx.node_link_graph(st["graph"], edges="links"), st.get("probes") or [])
    rank_nodes, host_of, servers = [], [], 0
    for hi, h in enumerate(st["hosts"]):
        servers += g.nodes[h["node"]].get("role") == "server" if h["node"] in g else 0
        n = st.get("ranks_per_host") or max(1, len(h["ranks"]))
        for k in range(n):
            rank_nodes.append(h["ranks"][k] if k < len(h["ranks"]) else (h["ranks"] or [h["node"]])[0])
            host_of.append(hi)
    require(len(rank_nodes) == world, f"emulated cluster has {len(rank_nodes)} ranks but WORLD_SIZE={world}")
    what = "emulated cluster, measured links" if st.get("probes") else "emulated cluster, configured links"
    return g, rank_nodes, host_of, servers, what


def emulated_cluster(st: dict, world: int | None = None):
    """A parsim Cluster of an emulated cluster's state (the graph with the probed links, ranks
    placed as `parsim emulate run` places them), for parsim.predict. `world`: ranks (default:
    every rank the cluster runs). Workers only: dedicated server hosts are left out."""
    from parsim.topology import Cluster
    n_all = sum((st.get("ranks_per_host") or max(1, len(h["ranks"]))) for h in st["hosts"])
    g, rank_nodes, host_of, servers, what = prediction_inputs(st, n_all)
    workers = [r for r, h in zip(rank_nodes, host_of) if g.nodes[st["hosts"][h]["node"]].get("role") != "server"]
    world = len(workers) if world is None else world
    require(world <= len(workers), f"emulated cluster {st.get('prefix', '')} has {len(workers)} worker ranks, "
                                   f"not {world}")
    per_host = max(host_of.count(h) for h in set(host_of))
    return Cluster(f"emulated {st.get('prefix', '')}".strip(), g, tuple(workers[:world]), per_host, "cpu",
                   {"emulated": True, "source": what})


def is_emulated_state(d) -> bool:
    """Whether a parsed JSON document is an emulated cluster's state file."""
    return isinstance(d, dict) and "graph" in d and "hosts" in d and "prefix" in d


def _cluster_for_prediction(world: int):
    path = os.environ.get("PARSIM_NETEM_STATE")
    if path:
        return prediction_inputs(json.loads(open(path).read()), world)
    from backends.netem import presets
    g = presets.single_switch(1, presets.LOOPBACK_BPS, devices_per_host=world)
    return g, [f"h0/d{r}" for r in range(world)], [0] * world, 0, "one host, nominal loopback"


def build_schedule(op, algo, world, nbytes, host_of, servers=0):
    """The one schedule (``parsim.schedules.collectives``) the executor runs and the
    model prices; `servers` dedicated server ranks come last (the ps preset).
    native is priced as the single ring gloo runs."""
    from parsim.schedules import collectives as SC
    p = world - servers
    require(p >= 1, f"{world} ranks with {servers} dedicated servers leaves no workers")
    require(algo not in ("ps-sharded", "ps-pipelined") or servers > 0,
            f"{algo} needs dedicated server hosts, and these {world} ranks have none "
            "(run it in an emulated cluster with servers, e.g. `parsim emulate up --preset ps-star`)")
    counts = [host_of[:p].count(h) for h in dict.fromkeys(host_of[:p])]
    if algo == "hierarchical":
        require(len(set(counts)) == 1, f"hierarchical needs the same number of ranks on every host, got {counts}")
    kw = dict(local_size=counts[0], servers=servers or None, dedicated=bool(servers))
    return SC.build(op, "ring" if algo == "native" else algo, p, nbytes, **kw)


def predict_point(op, algo, world, nbytes, state=None):
    """(schedule, dedicated servers, prediction dict) of one point; `state` is an
    emulated cluster's state (default: the one this rank runs in, if any)."""
    from backends.netem.model import predict
    g, rank_nodes, host_of, servers, what = (prediction_inputs(state, world) if state is not None
                                             else _cluster_for_prediction(world))
    sched = build_schedule(op, algo, world, nbytes, host_of, servers)
    # both directions of a pair overlap: gloo's own collectives, and our executor, which posts a
    # step's receives before its sends (backends/netem/model.py)
    pred = predict(g, sched, rank_nodes[:sched.nranks], executor="native" if algo == "native" else "explicit")
    return sched, servers, pred | {"cluster": what}


# -- execution -----------------------------------------------------------------

PATTERN_PERIOD = 1021   # inputs x_w[i] = (w + 1) + (i mod 1021): small integers, exact float32 sums for any
#                         world below ~16000 ranks; a slice moved to the wrong offset or a rank's share
#                         added twice or not at all changes the result (a prime period: no chunk size aligns)


def pattern_inputs(numel: int):
    """Worker w -> its input of the benchmark (numpy float32, `numel` elements), the function the
    result check reconstructs every worker's input with (one shared base: cheap at 64 MiB)."""
    import numpy as np
    base = (np.arange(numel, dtype=np.int32) % PATTERN_PERIOD).astype(np.float32)
    return lambda w: base + np.float32(w + 1)


def execute(sched, buf):
    """Run a schedule on this rank's flat buffer, in place, with the backend's executor."""
    import torch.distributed as dist
    from backends.torchdist.collectives import run_schedule
    run_schedule(sched, buf, list(range(sched.nranks))) if dist.get_rank() < sched.nranks else None


def _native(op, buf, world):
    """The library's own collective over every rank; True when it leaves its result in `buf`
    (all_gather's goes to separate tensors and is not checked)."""
    import torch
    import torch.distributed as dist
    if op == "allreduce":
        dist.all_reduce(buf)
    elif op == "broadcast":
        dist.broadcast(buf, src=0)
    elif op == "all_gather":
        n = buf.numel() // world
        parts = [torch.empty(n, dtype=buf.dtype) for _ in range(world)]
        dist.all_gather(parts, buf[:n].clone())
        return False
    else:
        raise ParsimError(f"native {op} is not available on gloo; use --algo ring")
    return True


def _result_ok(sched, buf, rank) -> bool:
    """Whether this worker's buffer holds what the op promises (``parsim.schedules.collectives.
    reference`` on the pattern inputs); dedicated servers end with nothing to check."""
    import numpy as np
    from parsim.schedules.collectives import reference
    if rank >= sched.p:
        return True
    want, defined = reference(sched, rank, pattern_inputs(buf.numel()))
    return bool(np.array_equal(buf.numpy()[defined], want[defined]))


def _run_point(op, algo, nbytes, repeats, warmup, rank, world, min_time_s=0.0, max_repeats=25, beat=None,
               fault=None):
    import torch
    import torch.distributed as dist
    sched, servers, pred = predict_point(op, algo, world, nbytes)
    workers = world - servers
    numel = nbytes // 4
    inp = torch.from_numpy(pattern_inputs(numel)(rank)) if rank < workers else torch.zeros(numel)
    buf = torch.empty(numel, dtype=torch.float32)
    times, ok = [], True
    it = -1
    # every rank sees the same (MAX-reduced) times, so every rank makes the same decision
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max(repeats, max_repeats)):
        it += 1
        if beat:
            beat(f"bench {op} {algo} {fmt_bytes(nbytes)} repeat {it}")
        if fault:
            fault(it)
        buf.copy_(inp)
        dist.barrier()
        t0 = time.perf_counter()
        if algo == "native":
            checked = _native(op, buf, world)  # (over every rank, servers included)
        else:
            execute(sched, buf)
            checked = True
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if it == 0 and checked:
            ok = _result_ok(sched, buf, rank)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if it >= warmup:
            times.append(float(dt))
    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    med = statistics.median(times)
    return {
        "op": op, "algo": algo, "size_B": buf.numel() * 4, "world": world, "workers": workers, "repeats": len(times),
        "times_s": times, "median_s": med, "min_s": min(times), "max_s": max(times),
        "spread": (max(times) - min(times)) / med if med > 0 else 0.0,
        "predicted_s": pred["time_s"], "predicted": pred,
        "error": (pred["time_s"] - med) / med if med > 0 else None,
        "correct": int(flag) == 0,
    } | bandwidths_GBps(op, workers, buf.numel() * 4, med, pred["time_s"])


def bandwidths_GBps(op, workers, size_B, measured_s, predicted_s) -> dict:
    """A point's measured algbw/busbw and predicted busbw in GB/s (1e9 B/s), by
    ``parsim.costs.network.bandwidths_Bps`` (nccl-tests' convention, over the workers)."""
    from parsim.costs.network import bandwidths_Bps
    alg, bus = bandwidths_Bps(op, workers, size_B, measured_s)
    return {"algbw_GBps": alg / 1e9, "busbw_GBps": bus / 1e9,
            "predicted_busbw_GBps": bandwidths_Bps(op, workers, size_B, predicted_s)[1] / 1e9}


def runnable_algorithms(op, algos, world, nbytes, quiet=False) -> list:
    """The algorithms of the list this world can run (validated before the group forms, so every
    rank decides alike); each one it cannot is refused in one line on stderr (unless `quiet`:
    the other ranks) and the rest run. ParsimError when none is left."""
    ok, errors = [], []
    for a in algos:
        try:
            predict_point(op, a, world, nbytes)
            ok.append(a)
        except ParsimError as e:
            errors.append(e)
    if not ok:   # nothing runs: the error alone (one line), no "skipping" line before it
        raise errors[0] if errors else ParsimError("--algo names no algorithm")
    if not quiet:
        for a, e in zip([a for a in algos if a not in ok], errors):
            print(f"parsim run --bench: skipping {a}: {e}", file=sys.stderr, flush=True)
    return ok


def validate(args, world: int) -> dict:
    """Every flag of a benchmark checked against a `world`-rank group before anything is spawned
    or a process group formed: op, algorithms, sizes and repeats. Returns the job the ranks run
    (plain data: it goes into the launcher's config). Raises ParsimError (one line)."""
    require(args.repeats >= 1, f"--repeats {args.repeats} must be >= 1")
    require(getattr(args, "min_time", 0.0) >= 0, f"--min-time {args.min_time} must be >= 0 seconds")
    require(world >= 1, f"--nproc {world} must be >= 1")
    op = args.bench
    algos = [a.strip() for a in str(args.algo).split(",") if a.strip()]
    require(bool(algos), f"--algo {args.algo!r}: expected one or more algorithm names, comma-separated")
    sizes = parse_size_range(args.size)
    bad = [n for n in sizes if n < 4 or n % 4]
    require(not bad, f"--size {args.size}: {bad[0] if bad else 0} B is not a whole number of float32 elements; "
                     "expected a positive multiple of 4 B")
    algos = runnable_algorithms(op, algos, world, sizes[0],
                                quiet="RANK" in os.environ and os.environ.get("RANK") != "0")
    return {"op": op, "algos": algos, "sizes": [int(n) for n in sizes], "repeats": args.repeats,
            "warmup": args.warmup, "min_time": getattr(args, "min_time", 0.0),
            "max_repeats": getattr(args, "max_repeats", 25)}


def bench_rank(job: dict, rank: int, world: int, beat=None, fault=None) -> list | None:
    """One rank's benchmark in a formed process group (backends.torchdist.runner runs it under its
    watchdog; `beat(phase)` marks progress). Returns the results on rank 0, else None."""
    out = []
    for n in job["sizes"]:
        for a in job["algos"]:
            out.append(_run_point(job["op"], a, n, job["repeats"], job["warmup"], rank, world, job["min_time"],
                                  job["max_repeats"], beat, fault))
    for r in out:
        r["hosts"] = int(os.environ.get("PARSIM_NETEM_HOSTS", 1))
    return out if rank == 0 else None


def render(results, fmt="table") -> str:
    if fmt == "json":
        return json.dumps(results, indent=1)
    from parsim.tables import text_table
    rows = [(r["op"], r["algo"], fmt_bytes(r["size_B"]), r["world"], fmt_time(r["median_s"]), f"{r['spread'] * 100:.1f}%",
             fmt_time(r["predicted_s"]), f"{r['error'] * 100:+.1f}%", "yes" if r["correct"] else "NO") for r in results]
    caption = f"prediction on: {results[0]['predicted']['cluster']}" if results else None
    return text_table(("op", "algo", "size", "ranks", "measured", "spread", "predicted", "error", "ok"), rows,
                      caption=caption)


def make_job(op: str, algos, sizes, repeats: int = 5, warmup: int = 1, min_time: float = 0.0,
             max_repeats: int = 25, world: int = 2, netem_state: str | None = None) -> dict:
    """A benchmark job (``validate``) from plain values, as the flags would give it; `netem_state`: the
    emulated cluster's state file the ranks will run in (its graph decides what is runnable). Raises
    ParsimError (one line)."""
    ns = argparse.Namespace(bench=op, algo=algos if isinstance(algos, str) else ",".join(algos),
                            size=sizes if isinstance(sizes, str) else ",".join(str(int(x)) for x in sizes),
                            repeats=repeats, warmup=warmup, min_time=min_time, max_repeats=max_repeats)
    old = os.environ.get("PARSIM_NETEM_STATE")
    if netem_state:
        os.environ["PARSIM_NETEM_STATE"] = str(netem_state)
    else:
        os.environ.pop("PARSIM_NETEM_STATE", None)
    try:
        return validate(ns, world)
    finally:
        if old is None:
            os.environ.pop("PARSIM_NETEM_STATE", None)
        else:
            os.environ["PARSIM_NETEM_STATE"] = old


def rank_config(job: dict, local_ranks: int, timeout_s: float = TIMEOUT_S, watchdog_s: float = 60.0) -> dict:
    """The launcher's config (backends.torchdist.runner, task "bench") for a job on `local_ranks` ranks
    sharing this machine's CPUs."""
    cores = os.cpu_count() or 1
    # several ranks share the CPU: spinning OpenMP workers would steal it from gloo's I/O threads
    # (measured: a 4-rank 1 MiB ring 30x slower on 2 cores)
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, cores // max(1, local_ranks)))
    return {"task": "bench", "bench": job, "backend": "gloo", "timeout_s": min(timeout_s, 600),
            "watchdog_s": watchdog_s, "threads_per_rank": threads}


def launch_job(job: dict, world: int, timeout_s: float = TIMEOUT_S, rank_prefix=None, cfg: dict | None = None,
               local_ranks: int | None = None) -> list:
    """Run a benchmark job on `world` ranks through the one launcher (backends.torchdist.launch: per-rank
    watchdog, a failed or stopped rank named in one line, nothing left running); `rank_prefix(rank)`: e.g.
    the emulated host's ``ip netns exec`` prefix. Returns rank 0's results (a list of point dicts)."""
    from backends.torchdist.launch import launch
    cfg = cfg or rank_config(job, local_ranks or world, timeout_s)
    return launch(cfg, world, timeout_s=timeout_s, rank_prefix=rank_prefix)


def main(args, argv=None) -> int:
    """Entry point for `parsim run --bench OP ...` (args from add_arguments + --bench).

    Without RANK in the environment: --nproc local ranks through backends.torchdist.launch (the
    training runs' launcher: per-rank watchdog, a killed, failed or stopped rank named in one
    line, nothing left running). With RANK/WORLD_SIZE set (torchrun, `parsim emulate run`): this
    process is one rank; a bad flag is reported by rank 0 only, so one line, not one per rank."""
    env_mode = "RANK" in os.environ
    world = int(os.environ["WORLD_SIZE"]) if env_mode else args.nproc
    try:
        job = validate(args, world)
    except ParsimError:
        if env_mode and os.environ.get("RANK") != "0":
            return 2           # rank 0 says it
        raise
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if env_mode else world
    timeout_s = float(getattr(args, "timeout", None) or TIMEOUT_S)
    cfg = rank_config(job, local, timeout_s, float(getattr(args, "watchdog", None) or 60.0))
    if not env_mode:
        res = launch_job(job, world, timeout_s, cfg=cfg)
    else:
        from backends.torchdist.runner import worker_main
        if os.environ["RANK"] != "0":        # only rank 0 reports
            worker_main(dict(cfg, out=None))
            return 0
        collect: list = []                   # rank 0 is this process: its results in memory, no temp file to leak
        worker_main(dict(cfg, out=None, collect=collect))
        res = json.loads(collect[0])
    print(render(res, args.format), flush=True)
    return 0 if all(r["correct"] for r in res) else 1


def _standalone(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m backends.torchdist.bench")
    p.add_argument("--bench", default="allreduce")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return main(args, argv if argv is not None else sys.argv[1:])
    except ParsimError as e:
        print(f"parsim run --bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_standalone())
