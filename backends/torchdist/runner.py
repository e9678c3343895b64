"""One rank's training loop and its measurements; rank 0 turns them into a StepReport.

Entry point of every rank, whoever launched it: ``python -m backends.torchdist.runner
CONFIG.json`` (our launcher), or ``parsim run ...`` under ``torchrun`` / one process per
network namespace. The rank reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT from the environment (GLOO_SOCKET_IFNAME is honoured by gloo itself).

Timing, per step and per rank: total (barrier, then the whole step), forward, backward
(stage chunks, timed around each call), recompute (forward re-runs inside backward, by
hooks), tp comm (DTensor's collectives, each waited on at once), pipeline idle (pipeline
step minus its forward and backward = pp comm + bubble; pp comm is the measured one-way
p2p time of one activation times the activations and gradients this rank sends, the
rest is bubble), exposed dp sync (gradient sync after backward, not overlapped),
optimizer. Each phase is the max over ranks; warm-up steps are dropped; the report gives
the median and the [min, max] spread of the timed steps.

Memory: GPU — peak allocated per rank (torch.cuda.max_memory_allocated). CPU — the
rank's peak resident set (getrusage ru_maxrss) minus its resident set just before the
model was built: the high-water mark of what training added, allocator slack included.

Reliability: init_process_group has a timeout; a watchdog thread ends the rank (exit 3)
after ``watchdog_s`` without progress, naming the phase; any exception is written to
``<status_dir>/rank<r>.err`` (one line) before the rank exits non-zero.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
import types
import traceback
from datetime import timedelta
from pathlib import Path

from parsim.outputs import write_atomic  # temp file + fsync + rename: the one writer

PHASES = ("forward", "backward", "recompute", "tp_comm", "pipeline", "dp_sync", "optimizer", "total")




# Appended to the phase of a beat that waits on the other ranks (a barrier, a gradient sync): a rank stalled there is
# waiting for a peer, and the launcher blames a stalled rank that was not waiting first (launch._first_stalled).
WAITS_ON_PEERS = ", waiting on peers"


class Watchdog(threading.Thread):
    """Ends this rank when no phase has started for `limit_s` seconds."""

    def __init__(self, rank: int, limit_s: float, on_fire, startup_s: float | None = None, heartbeat=None):
        super().__init__(daemon=True)
        self.rank, self.limit_s, self.on_fire = rank, limit_s, on_fire
        self.phase, self.last, self.phase_limit = "start-up (import torch)", time.monotonic(), startup_s
        self.last_wall = time.time()
        self._halt = threading.Event()
        # heartbeat file (the launcher's status dir): this thread rewrites it every tick with the phase,
        # so its mtime is the last moment the process could run at all; a stopped (SIGSTOP) or frozen
        # rank stops beating, a rank waiting in a collective does not (backends/torchdist/launch.py)
        self._beat_fd = None
        if heartbeat:
            try:
                self._beat_fd = os.open(heartbeat, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._heartbeat()
            except OSError:
                self._beat_fd = None

    def _heartbeat(self):
        if self._beat_fd is not None:
            try:
                # "<wall time of the last progress> <phase>": the launcher names the rank that stopped first
                line = f"{self.last_wall:.3f} {self.phase}"[:200].encode()
                os.pwrite(self._beat_fd, line.ljust(200), 0)   # fixed width: no truncate, one write
            except OSError:
                pass

    def beat(self, phase: str, limit_s: float | None = None, waits: bool = False):
        """Progress: entering `phase`, which may take up to `limit_s` (default: the watchdog's); `waits`: the phase
        waits on the other ranks (said in the phase: WAITS_ON_PEERS)."""
        phase = phase + (WAITS_ON_PEERS if waits else "")
        self.phase, self.last, self.phase_limit = phase, time.monotonic(), limit_s
        self.last_wall = time.time()
        self._heartbeat()   # the phase, for the launcher's message (a pwrite: microseconds)

    def stop(self):
        self._halt.set()

    def run(self):
        while not self._halt.wait(min(1.0, self.limit_s / 4)):
            self._heartbeat()
            idle = time.monotonic() - self.last
            limit = self.phase_limit or self.limit_s
            if idle > limit:
                self.on_fire(f"rank {self.rank}: no progress for {idle:.0f} s (watchdog {limit:.0f} s) "
                             f"in phase {self.phase}", time.time() - idle)
                os._exit(3)


class StoreBeats(threading.Thread):
    """Heartbeats through the run's TCPStore, for runs without our launcher (torchrun, one process
    per emulated host): every second this rank sets ``parsim/beat/<rank>`` = "wall-time phase".
    When a watchdog fires, :meth:`stalest` reads the peers' beats (on its own connection, with a
    short timeout) and names the one that stopped first: a stopped (SIGSTOP) or frozen rank stops
    beating; a rank waiting in a collective keeps beating from this thread."""

    def __init__(self, rank: int, world: int, dog: Watchdog):
        super().__init__(daemon=True)
        self.rank, self.world, self.dog = rank, world, dog
        self.addr, self.port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        self._halt = threading.Event()

    def stop(self, wait_s: float = 5.0):
        """Stop beating and drop the store connection before the process group (and rank 0's store server) is torn
        down: a beat thread left inside the store at interpreter exit aborted rank 0 ('terminate called without an
        active exception', exit -6) once in a full-suite run."""
        self._halt.set()
        self.join(wait_s)

    def _client(self, timeout_s: float):
        import torch.distributed as dist
        return dist.TCPStore(self.addr, self.port, self.world, False, timedelta(seconds=timeout_s))

    def run(self):
        store = None
        try:
            store = self._client(10)
            while not self._halt.is_set():
                store.set(f"parsim/beat/{self.rank}", f"{time.time():.3f} {self.dog.phase}")
                self._halt.wait(1.0)
        except Exception:   # noqa: BLE001 — the store went away (run ending): stop beating
            pass
        finally:
            del store       # the connection closes here, in this thread, not at interpreter exit

    def stalest(self, waited_s: float) -> str:
        """'rank R stopped progressing: ...' for the peer whose last beat is oldest and older than
        half of `waited_s`; '' when every peer still beats (or none can be read)."""
        now = time.time()
        try:
            store = self._client(3)
        except Exception:   # noqa: BLE001
            return ("rank 0 (it serves the rendezvous store) is not responding: stopped or hung"
                    if self.rank != 0 else "")
        worst = None
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                t, _, phase = store.get(f"parsim/beat/{r}").decode().partition(" ")
                age = now - float(t)
            except Exception:   # noqa: BLE001 — no beat yet, or the store stopped answering
                continue
            if worst is None or age > worst[1]:
                worst = (r, age, phase)
        if worst is None or worst[1] < max(3.0, waited_s / 2):
            return ""
        r, age, phase = worst
        return f"rank {r} stopped progressing: no heartbeat for {age:.0f} s (the last one in phase {phase})"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _maybe_fault(cfg, rank, step, phase):
    """Fault injection for the reliability tests: PARSIM_FAULT='rank:step:KIND' with KIND kill (SIGKILL),
    hang (the main thread sleeps), stop (SIGSTOP to itself), oom (an allocation of 2^62 bytes) or
    anything else (raise). In a benchmark the step is the repeat."""
    spec = cfg.get("fault") or os.environ.get("PARSIM_FAULT")
    if not spec:
        return
    r, s, kind = spec.split(":")
    if int(r) != rank or int(s) != step or phase != "forward":
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "stop":      # as `kill -STOP`: the whole process, watchdog thread included, stops
        os.kill(os.getpid(), signal.SIGSTOP)
    if kind == "oom":       # a real allocation failure (2^62 bytes) on the rank's device, as its allocator reports it
        import torch
        torch.empty(1 << 62, dtype=torch.uint8, device="cuda" if cfg.get("backend") == "nccl" else "cpu")
    raise RuntimeError(f"injected fault at step {step}")


def worker_main(cfg: dict) -> int:
    """Run one rank. Returns 0; rank 0 also writes cfg['out'] (the report) when given. Its stderr
    goes without c10d's 'hostname of the client socket cannot be retrieved' lines, every other
    line kept (backends/torchdist/quiet.py)."""
    from backends.torchdist.quiet import quiet_c10d
    with quiet_c10d():
        return _worker_main(cfg)


def _worker_main(cfg: dict) -> int:
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    status_dir = cfg.get("status_dir")

    def report_error(msg, stuck_since=None):
        if status_dir:   # line 1: the message; line 2 (watchdog): wall time of the last progress
            extra = f"since={stuck_since:.3f}\n" if stuck_since is not None else ""
            write_atomic(Path(status_dir) / f"rank{rank}.err", msg.strip().splitlines()[0][:500] + "\n" + extra)
        print(f"[rank {rank}] {msg}", file=sys.stderr, flush=True)

    peers = None   # without our launcher (torchrun, `parsim emulate run`): heartbeats through the store

    def on_fire(msg, since):
        if peers is not None:   # name the peer that stopped first, not this rank that waited for it
            culprit = peers.stalest(time.time() - since)
            if culprit:
                msg = f"{culprit}; rank {rank} gave up waiting ({msg.split(': ', 1)[1]})"
        report_error(msg, since)

    dog = Watchdog(rank, float(cfg.get("watchdog_s", 120)), on_fire,
                   startup_s=max(float(cfg.get("watchdog_s", 120)), float(cfg.get("timeout_s", 60))),
                   heartbeat=str(Path(status_dir) / f"rank{rank}.beat") if status_dir else None)
    dog.start()
    try:
        import torch.distributed as dist
        device, sync = _init(cfg, rank, world, local_rank, dog)
        if not status_dir and world > 1:
            peers = StoreBeats(rank, world, dog)
            peers.start()
        results = []
        for job in cfg.get("jobs") or [{}]:   # several plans in one process group (the tests do this)
            job = {**cfg, **job}
            run = _task(job.get("task"))
            results.append(run(job, rank, world, device, sync, dog))
        if rank == 0 and cfg.get("out"):
            write_atomic(cfg["out"], to_json(results if cfg.get("jobs") else results[0]))
        if rank == 0 and isinstance(cfg.get("collect"), list):
            # the caller is this very process (torchrun mode): the report in memory, no temp file to leave behind
            cfg["collect"].append(to_json(results if cfg.get("jobs") else results[0]))
        dog.beat("teardown", float(cfg.get("timeout_s", 60)))
        dist.barrier()
        if peers is not None:   # beats until every rank is here (a rank waiting above names the one that hangs)
            peers.stop()
        dist.destroy_process_group()
        return 0
    except BaseException as e:   # noqa: BLE001 — every failure becomes one line for the launcher
        if isinstance(e, SystemExit) and not e.code:
            raise
        cause = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        oom = out_of_memory(e)
        if oom:
            pred = cfg.get("predicted_memory_GiB")
            report_error(f"rank {rank} ran out of {oom} memory in phase {dog.phase}"
                         + (f"; parsim predicted {pred:.2f} GiB per rank" if isinstance(pred, (int, float)) else "")
                         + f" ({cause[:300]})")
        else:
            report_error(f"rank {rank} failed in phase {dog.phase}: {cause}")
        if os.environ.get("PARSIM_DEBUG"):
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)   # do not wait for collectives in process-group teardown
    finally:
        dog.stop()


def _task(name):
    """The function a job's "task" names: grad_sync_check, bench, "module:function" (a rank task of the
    backend, e.g. the calibration probes of backends.torchdist.calibrate), else training."""
    if name and ":" in name:
        import importlib
        mod, _, fn = name.partition(":")
        if not mod.startswith("backends."):
            raise ValueError(f"task {name!r}: expected a function of the backends package")
        return getattr(importlib.import_module(mod), fn)
    return {"grad_sync_check": _grad_sync_check, "bench": _bench}.get(name, _train)


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")


def out_of_memory(e: BaseException) -> str:
    """'device' or 'host' when `e` is an allocation failure (torch.cuda.OutOfMemoryError, the CPU
    allocator's "can't allocate memory" RuntimeError, MemoryError), else ''."""
    if isinstance(e, MemoryError):
        return "host"
    if type(e).__name__ == "OutOfMemoryError":     # torch.cuda.OutOfMemoryError (and torch.OutOfMemoryError)
        return "device"
    text = str(e).lower()
    if isinstance(e, RuntimeError) and any(w in text for w in _OOM_WORDS):
        return "device" if ("cuda" in text or "hip" in text or "device" in text) else "host"
    return ""


def _init(cfg, rank, world, local_rank, dog):
    """init_process_group (with its timeout) on this rank's device; returns (device, sync)."""
    import torch
    import torch.distributed as dist
    backend = cfg.get("backend", "gloo")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        sync = torch.cuda.synchronize
    else:
        device, sync = torch.device("cpu"), None
        torch.set_num_threads(max(1, int(cfg.get("threads_per_rank", 1))))
    dog.beat("init_process_group", max(float(cfg.get("watchdog_s", 120)), float(cfg.get("timeout_s", 60))))
    timeout = timedelta(seconds=float(cfg.get("timeout_s", 60)))
    store = rendezvous_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world, timeout)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout,
                            **({"store": store} if store is not None else {}),
                            **({"device_id": device} if backend == "nccl" else {}))
    return device, sync


_LISTENER: list = []   # rank 0's listening socket: it must outlive the store that serves on it


def rendezvous_store(addr: str, port: int, rank: int, world: int, timeout):
    """The c10d TCPStore of a run, its server (rank 0) listening on MASTER_ADDR's address only.

    torch's env:// rendezvous makes rank 0's store listen on every interface (``*:port``), which
    exposes an unauthenticated key-value store to the network; here rank 0 binds a socket to
    MASTER_ADDR (127.0.0.1 for local runs, the emulated host's address in a netem run) and hands
    it to the store (``master_listen_fd``). Returns None where MASTER_ADDR is not an address of
    this host (then torch's own rendezvous is used, as before)."""
    import socket

    import torch.distributed as dist
    if rank != 0:
        return dist.TCPStore(addr, port, world, False, timeout)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
        s = socket.socket(family, kind, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(sockaddr)
        s.listen(max(128, world))
    except OSError:
        return None
    _LISTENER.append(s)
    return dist.TCPStore(addr, port, world, True, timeout, master_listen_fd=s.fileno())


def _train(cfg, rank, world, device, sync, dog):
    """Train `steps` steps of cfg's plan; returns the report on rank 0, else None."""
    import torch
    import torch.distributed as dist

    from backends.torchdist import parallel as par
    from backends.torchdist.model import synthetic_batch
    from parsim.model import load_model
    from parsim.plan import Plan

    spec = load_model(cfg["model"]) if isinstance(cfg["model"], str) else load_model_dict(cfg["model"])
    plan = Plan(**cfg["plan"])
    seq = plan.seq_len or spec.seq_len
    steps, warmup = int(cfg.get("steps", 10)), int(cfg.get("warmup", 3))
    slow_s = max(float(cfg.get("watchdog_s", 120)), float(cfg.get("timeout_s", 60)))  # start-up, first step
    assert world == plan.gpus, f"world size {world} != plan's {plan.gpus} ranks"
    clock = par.PhaseClock(sync=sync)
    _import_parallel_modules(plan)   # their code pages are not training memory: load them before the baseline
    rss0 = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dog.beat("build", slow_s)
    rm = par.build_rank(spec, plan, rank, device, clock, seed=int(cfg.get("seed", 0)))
    dp_i = rank // (plan.tp * plan.pp)
    local_batch = plan.global_batch // plan.dp
    gpu = device.type == "cuda"
    amp = gpu and plan.dtype in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if plan.dtype == "bf16" else torch.float16

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp)

    t_p2p = _p2p_time(rm, plan, spec, seq, device, sync, amp) if plan.pp > 1 else 0.0
    sends = _cross_rank_sends(rm, plan)
    records, losses = [], []
    trace_dir = cfg.get("trace_dir")
    prof = None
    for step in range(steps + (1 if trace_dir else 0)):   # a traced step is extra and not timed
        first = slow_s if step == 0 else None
        dog.beat(f"step {step} barrier", first, waits=True)
        dist.barrier()
        if trace_dir and step == steps:
            from torch.profiler import ProfilerActivity, profile
            prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else []))
            prof.__enter__()
        clock.reset()
        tokens, targets = synthetic_batch(spec, plan.global_batch, seq, step, int(cfg.get("seed", 0)), device)
        tokens = tokens[dp_i * local_batch:(dp_i + 1) * local_batch]
        targets = targets[dp_i * local_batch:(dp_i + 1) * local_batch]
        rm.optimizer.zero_grad(set_to_none=True)
        t0 = clock.now()
        dog.beat(f"step {step} forward", first)
        _maybe_fault(cfg, rank, step, "forward")
        loss = par.forward_backward(rm, plan, tokens, targets, clock, autocast)
        dog.beat(f"step {step} dp gradient sync ({plan.grad_sync})", first, waits=True)
        t1 = clock.now()
        with torch.no_grad():
            par.sync_grads(rm, plan, local_size=cfg.get("local_size"))
        t2 = clock.now()
        t_dump = 0.0
        if step == 0 and cfg.get("dump_dir"):   # for the tests; its time is taken out of the step
            dog.beat("dump gradients")
            _dump(cfg["dump_dir"], rank, rm, loss, clock.ops)
            t_dump = clock.now() - t2
        dog.beat(f"step {step} optimizer", first)
        rm.optimizer.step()
        t3 = clock.now()
        if prof is not None:
            prof.__exit__(None, None, None)
            from parsim.outputs import atomic_path, make_output_dir
            with atomic_path(make_output_dir(trace_dir, "--trace") / f"rank{rank}.json", what="--trace") as tmp:
                prof.export_chrome_trace(tmp)
            prof = None
            continue
        rec = {k: clock.t.get(k, 0.0) for k in ("forward", "backward", "recompute", "tp_comm",
                                               "tp_comm_in_recompute", "pipeline")}
        rec.update(dp_sync=t2 - t1, optimizer=t3 - t2 - t_dump, total=t3 - t0 - t_dump)
        records.append(rec)
        if loss is not None:
            losses.append(loss)
    dog.beat("report", slow_s)
    mem = torch.cuda.max_memory_allocated(device) if gpu else \
        max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)
    mine = {"rank": rank, "records": records, "losses": losses, "memory_bytes": mem,
            "state_bytes": par.state_bytes(rm), "t_p2p_s": t_p2p, "sends": sends, "notes": rm.notes}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return build_report(spec, plan, gathered, cfg, gpu, warmup) if rank == 0 else None


def _bench(cfg, rank, world, device, sync, dog):
    """A collective micro-benchmark (backends.torchdist.bench) under this rank's watchdog."""
    from backends.torchdist.bench import bench_rank
    return bench_rank(cfg["bench"], rank, world, beat=dog.beat, fault=lambda it: _maybe_fault(cfg, rank, it, "forward"))


def _grad_sync_check(cfg, rank, world, device, sync, dog):
    """One forward/backward on this rank's shard, then every gradient-sync algorithm from the same
    unsynced gradients: rank 0 writes {algo: max |grad - native grad|} and the native result."""
    import torch
    import torch.distributed as dist

    from backends.torchdist import parallel as par
    from backends.torchdist.model import synthetic_batch
    from parsim.model import load_model
    from parsim.plan import Plan
    spec = load_model(cfg["model"]) if isinstance(cfg["model"], str) else load_model_dict(cfg["model"])
    plan = Plan(**cfg["plan"])
    clock = par.PhaseClock()
    rm = par.build_rank(spec, plan, rank, device, clock)
    seq = plan.seq_len or spec.seq_len
    local = plan.global_batch // plan.dp
    dp_i = rank // (plan.tp * plan.pp)
    x, y = synthetic_batch(spec, plan.global_batch, seq, 0)
    dog.beat("forward-backward")
    par.forward_backward(rm, plan, x[dp_i * local:(dp_i + 1) * local], y[dp_i * local:(dp_i + 1) * local],
                         clock, lambda: torch.autocast("cpu", enabled=False))
    params = list(rm.parameters())
    raw = [p.grad.detach().clone() for p in params]
    results = {}
    for algo in ["native"] + list(cfg["algos"]):
        dog.beat(f"grad sync {algo}", waits=True)
        for p, g in zip(params, raw):
            p.grad.copy_(g)
        # the backend runs more algorithms than a Plan offers (ps-central): a stand-in with the fields
        # sync_grads reads, not a Plan (which checks grad_sync on construction)
        as_plan = types.SimpleNamespace(**{**plan.to_dict(), "grad_sync": algo})
        with torch.no_grad():
            par.sync_grads(rm, as_plan, local_size=cfg.get("local_size"), bucket_bytes=cfg.get("bucket_bytes", par.BUCKET_BYTES))
        results[algo] = [p.grad.detach().clone() for p in params]
    diffs = {a: max(float((g - n).abs().max()) for g, n in zip(results[a], results["native"])) for a in cfg["algos"]}
    gathered = [None] * world
    dist.all_gather_object(gathered, diffs)
    if rank == 0:   # and the un-parallel model on the whole batch: the gradients DP must reproduce
        from backends.torchdist.model import full_model, loss_fn
        ref = full_model(spec, seed=0)
        loss_fn(ref(x), y).backward()
        rg = dict(ref.named_parameters())
        names = [n for n, _ in rm.stages[0].named_parameters()]
        vs_ref = max(float((g - rg[n].grad).abs().max()) for n, g in zip(names, results["native"]))
        worst = {a: max(d[a] for d in gathered) for a in cfg["algos"]}
        scale = max(float(g.abs().max()) for g in results["native"])
        return {"max_abs_diff": worst, "native_vs_reference": vs_ref, "max_abs_grad": scale}
    return None


def _import_parallel_modules(plan):
    import torch.distributed.device_mesh  # noqa: F401
    if plan.tp > 1:
        import torch.distributed.tensor.parallel  # noqa: F401
    if plan.pp > 1:
        import torch.distributed.pipelining  # noqa: F401
    if plan.zero >= 2:
        import torch.distributed.fsdp  # noqa: F401
    if plan.zero == 1:
        import torch.distributed.optim  # noqa: F401


def load_model_dict(d):
    from parsim.model import ModelSpec
    return ModelSpec(**d)


def _p2p_time(rm, plan, spec, seq, device, sync, amp) -> float:
    """One-way time of one activation (micro_batch x seq/tp_sp x hidden) between pp neighbours:
    median of 5 ping-pongs / 2 on pp ranks 0 and 1, shared with the whole pp group."""
    import torch
    import torch.distributed as dist
    s_local = seq // plan.tp if plan.sequence_parallel else seq
    x = torch.zeros(plan.micro_batch, s_local, spec.hidden, device=device,
                    dtype=torch.float32)
    pp = list(rm.ranks["pp"])
    me = pp.index(dist.get_rank())
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        if me == 0:
            dist.send(x, pp[1], group=rm.groups["pp"])
            dist.recv(x, pp[1], group=rm.groups["pp"])
        elif me == 1:
            dist.recv(x, pp[0], group=rm.groups["pp"])
            dist.send(x, pp[0], group=rm.groups["pp"])
        if sync:
            sync()
        times.append((time.perf_counter() - t0) / 2)
    t = torch.tensor([statistics.median(times[1:]) if me == 0 else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(t, pp[0], group=rm.groups["pp"])
    return float(t.item())


def _cross_rank_sends(rm, plan) -> int:
    """Activations and gradients this rank sends to another pp rank per step."""
    if plan.pp == 1:
        return 0
    from backends.torchdist.parallel import stage_to_rank
    s2r = stage_to_rank(plan, plan.microbatches)
    n = 0
    for s in rm.stage_ids:
        if s + 1 < rm.num_stages and s2r[s + 1] != s2r[s]:
            n += plan.microbatches          # activations forward
        if s > 0 and s2r[s - 1] != s2r[s]:
            n += plan.microbatches          # input gradients backward
    return n


def _dump(dump_dir, rank, rm, loss, ops=()):
    """Full (gathered) gradients by parameter name and the loss, for the equality tests."""
    import torch
    grads = {}
    for mod in rm.stages:
        for name, p in mod.named_parameters():
            g = p.grad
            if g is not None and hasattr(g, "full_tensor"):
                g = g.full_tensor()
            grads[name] = None if g is None else g.detach().cpu().clone()
    from parsim.outputs import atomic_path, make_output_dir
    with atomic_path(make_output_dir(dump_dir, "dump dir") / f"rank{rank}.pt", what="gradient dump") as tmp:
        torch.save({"grads": grads, "loss": loss, "ops": list(ops)}, tmp)


# ---------------------------------------------------------------- the report

def _per_rank_phases(r, rec, plan):
    """This rank's StepReport breakdown for one step (seconds)."""
    fwd_bwd = rec["forward"] + rec["backward"]
    tp_in_rc = rec.get("tp_comm_in_recompute", 0.0)
    recompute = max(0.0, rec["recompute"] - tp_in_rc)
    compute = max(0.0, fwd_bwd - rec["tp_comm"] - recompute)
    idle = max(0.0, rec["pipeline"] - fwd_bwd) if plan.pp > 1 else 0.0
    pp_comm = min(idle, r["t_p2p_s"] * r["sends"])
    # ep_comm, cp_comm: not timed apart (the all-to-alls run inside forward/backward; cp is not run here)
    return {"compute": compute, "recompute": recompute, "tp_comm": rec["tp_comm"], "ep_comm": 0.0, "cp_comm": 0.0,
            "pp_comm": pp_comm,
            "bubble": idle - pp_comm, "dp_comm_exposed": rec["dp_sync"], "optimizer": rec["optimizer"],
            "forward": rec["forward"], "backward": rec["backward"], "total": rec["total"]}


def build_report(spec, plan, gathered, cfg, gpu: bool, warmup: int):
    """Measured StepReport (parsim.predict.StepReport, the dataclass the prediction returns): every
    phase the max over ranks per step, then the median over the timed steps (warm-up dropped);
    ``spread`` holds the [min, max] over those steps of every time-derived field."""
    from parsim.hardware import get_device
    from parsim.predict import BREAKDOWN_KEYS, StepReport, step_rates
    steps = len(gathered[0]["records"])
    timed = list(range(min(warmup, steps - 1), steps))
    per_step = []
    for s in timed:
        ph = [_per_rank_phases(r, r["records"][s], plan) for r in gathered]
        per_step.append({k: max(p[k] for p in ph) for k in ph[0]})
    med = {k: statistics.median(d[k] for d in per_step) for k in per_step[0]}
    spread = {k: [min(d[k] for d in per_step), max(d[k] for d in per_step)] for k in per_step[0]}
    seq = plan.seq_len or spec.seq_len
    t = med["total"]
    world = plan.gpus
    # the convention of parsim.layer: MFU counts causal attention at half the square; HFU what runs
    # (scaled_dot_product_attention with is_causal: the causal half, flash=True)
    model_flops = spec.model_step_flops(plan.global_batch, seq)
    hw_flops = spec.step_flops(plan.global_batch, plan.recompute, seq, flash=True, recompute_every=plan.recompute_every)
    dtype_run = plan.dtype if gpu else "fp32"
    profile = cfg.get("device_profile") or ("cpu" if not gpu else None)
    peak = None
    if profile:
        try:
            peak = get_device(profile).matmul_flops(dtype_run)
        except Exception:   # unknown profile or dtype: no MFU rather than a wrong one
            peak = None
    mem = max(r["memory_bytes"] for r in gathered)
    top = max(gathered, key=lambda r: r["memory_bytes"])
    sb = top["state_bytes"]
    GiB = 2 ** 30
    acts = max(0, mem - sb["weights"] - sb["grads"] - sb["optimizer"])
    with_loss = [r["losses"] for r in gathered if r["losses"]]   # last-stage ranks: one per dp replica (x tp)
    losses = [sum(ls) / len(ls) for ls in zip(*with_loss)] if with_loss else []
    notes = sorted({n for r in gathered for n in r["notes"]})
    if plan.dp > 1 and plan.zero < 2:
        notes.append("dp gradient sync runs after backward (no overlap): dp_comm_exposed is all of it")
    if plan.ep > 1:
        notes.append("ep_comm: the MoE dispatch/combine all-to-alls are not timed apart; they sit inside "
                     "forward/backward (compute)")
    # rates from the step time: the fastest step gives the highest rate
    lo_t, hi_t = spread["total"]
    per_s = step_rates(1.0, plan.global_batch, seq, model_flops, hw_flops, world, peak)   # rate x step time
    rates = {k: v for k, v in per_s.items() if v is not None}
    rep_spread = {"step_time_s": [lo_t, hi_t]}
    rep_spread.update({k: [v / hi_t, v / lo_t] for k, v in rates.items()})
    rep_spread.update({f"breakdown_s.{k}": spread[k] for k in BREAKDOWN_KEYS})
    return StepReport(
        step_time_s=t,
        **step_rates(t, plan.global_batch, seq, model_flops, hw_flops, world, peak),
        memory_GiB=mem / GiB,
        memory_breakdown_GiB={"weights": sb["weights"] / GiB, "grads": sb["grads"] / GiB,
                              "optimizer": sb["optimizer"] / GiB, "activations": acts / GiB, "buffers": 0.0},
        fits=True,
        breakdown_s={k: med[k] for k in BREAKDOWN_KEYS},
        fits_reason="ran",
        plan={**plan.to_dict(), "seq_len": seq},
        model=spec.name,
        seq_len=seq, params_total=spec.params, params_active=spec.active_params, model_summary=spec.summary(),
        cluster=cfg.get("cluster_label") or f"local {cfg.get('backend', 'gloo')}",
        device=profile or ("cuda" if gpu else "cpu"),
        gpus=world,
        source="measured",
        notes=notes,
        memory_accounting="measured",
        memory_capacity_GiB=0.0,          # not read here: the run did not run out of it
        memory_headroom_GiB=0.0,
        memory_worst_rank=(top["rank"] // plan.tp) % plan.pp,   # pipeline rank of the rank using most
        spread=rep_spread,
        measurement={
            "backend": cfg.get("backend", "gloo"), "device": "cuda" if gpu else "cpu", "dtype_run": dtype_run,
            "device_profile": profile, "ranks": world, "steps": steps, "warmup_dropped": timed[0],
            "phases_s": {k: med[k] for k in ("forward", "backward", "total")},
            "spread_s": spread,
            "step_times_s": [d["total"] for d in per_step],
            "memory_per_rank_GiB": [r["memory_bytes"] / GiB for r in sorted(gathered, key=lambda r: r["rank"])],
            "memory_source": ("torch.cuda.max_memory_allocated per rank" if gpu else
                              "CPU: peak RSS (getrusage ru_maxrss) minus RSS before the model was built, per rank; "
                              "activations = that minus weights, grads and optimizer state (allocator slack included); "
                              "buffers not separated"),
            "pp_comm_source": "one-way p2p time of one activation (ping-pong/2) x sends per rank; bubble = the rest "
                              "of the pipeline's idle time",
            "tp_comm_source": "DTensor functional collectives, each waited on at once and timed",
            "t_p2p_s": gathered[0]["t_p2p_s"],
            "loss": losses,
        },
    )


def to_json(results) -> str:
    """What rank 0 writes for the launcher: StepReports as their dicts (``reports_from_json`` reads it back)."""
    from dataclasses import asdict, is_dataclass
    conv = (lambda r: asdict(r) if is_dataclass(r) else r)
    return json.dumps([conv(r) for r in results] if isinstance(results, list) else conv(results), indent=1)


def reports_from_json(obj):
    """The launcher's side: each measured report dict back into a StepReport (other results as they are)."""
    from parsim.predict import StepReport
    if isinstance(obj, list):
        return [reports_from_json(x) for x in obj]
    if isinstance(obj, dict) and obj.get("source") == "measured" and "step_time_s" in obj:
        return StepReport.from_dict(obj)
    return obj


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(Path(argv[0]).read_text())
    return worker_main(cfg)


if __name__ == "__main__":
    sys.exit(main())
