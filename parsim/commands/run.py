"""`parsim run`: run a plan for real with torch.distributed, measure it, put it beside the prediction.

Local: spawns --nproc ranks (gloo on CPU, nccl on GPUs). Under torchrun, or one process per
network namespace with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set, this same command is one
rank (nothing is spawned; rank 0 prints the report). torch is imported only inside run().
"""
from __future__ import annotations

import json
import os
import sys

from parsim.commands.common import name_or_path, count, number, quantity
from parsim.errors import ParsimError


def add_arguments(p):
    p.add_argument("--model", type=name_or_path, default="gpt-tiny", help="preset name or ModelSpec/config.json file (default gpt-tiny)")
    p.add_argument("--nproc", type=count("MAX_DEVICES"), help="local ranks to spawn (default dp*tp*pp)")
    p.add_argument("--dp", type=count("MAX_DEVICES"), help="data-parallel size (default nproc/(tp*pp))")
    p.add_argument("--tp", type=count("MAX_DEVICES"), default=1)
    p.add_argument("--pp", type=count("MAX_DEVICES"), default=1)
    p.add_argument("--cp", type=count("MAX_DEVICES"), default=1, help="context parallel (not run by this backend: refused in one line)")
    p.add_argument("--ep", type=count("MAX_DEVICES"), default=1, help="expert parallel (MoE models): experts sharded over ep of the dp ranks")
    p.add_argument("--vpp", type=count("MAX_DEVICES"), help="virtual stages per pp rank (default: 2 for interleaved/zbv, else 1)")
    p.add_argument("--micro-batch", type=count("MAX_GLOBAL_BATCH"), default=1)
    p.add_argument("--global-batch", type=count("MAX_GLOBAL_BATCH"), help="default micro-batch*dp*pp")
    p.add_argument("--seq-len", type=count("MAX_SEQ_LEN"), help="default: the model's")
    p.add_argument("--schedule", default=None, help="gpipe | 1f1b | interleaved | zbv (default 1f1b; interleaved when "
                                                    "--vpp > 1, as `parsim predict`)")
    p.add_argument("--grad-sync", default="native", help="ring | tree | hd | hierarchical | ps | native")
    p.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3))
    p.add_argument("--recompute", default="none", help="none | selective | full (selective-op is priced, not run)")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: the device's, parsim.hardware.default_dtype: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    p.add_argument("--steps", type=count("MAX_STEPS"), default=10)
    p.add_argument("--warmup", type=count("MAX_STEPS", lo=0), default=None,
                   help="steps dropped before the median (default 3, at most --steps - 1)")
    p.add_argument("--format", default="table", choices=("table", "json"))
    p.add_argument("--out", help="write the result (measured, predicted, errors) as JSON here")
    p.add_argument("--trace", metavar="DIR", help="torch.profiler Chrome trace of one extra, untimed step, one file per rank")
    p.add_argument("--cluster", type=name_or_path, help="cluster preset or file for the prediction (default: cpu-local, calibrated "
                                     "by `parsim calibrate` when it has been run; dgx-<gpu> with nccl)")
    p.add_argument("--local-size", type=count("MAX_DEVICES"), help="ranks per node for --grad-sync hierarchical (default: all)")
    p.add_argument("--threads", type=count("MAX_THREADS"), default=1, help="torch threads per rank on CPU (default 1)")
    p.add_argument("--timeout", type=number(0.0, "MAX_WAIT_S", lo_open=True), default=300.0, help="seconds for the whole run before every rank is killed")
    p.add_argument("--watchdog", type=number(0.0, "MAX_WAIT_S", lo_open=True), default=60.0,
                   help="seconds a rank may go without progress before it aborts (default 60)")
    p.add_argument("--seed", type=count(2 ** 63 - 1, lo=0), default=0)
    p.add_argument("--dry-run", action="store_true",
                   help="validate the plan, print it with its predicted memory and the schedule that would run, "
                        "and exit (0: it would run; 2: refused) without spawning a rank")
    from parsim.costs.memory import ACCOUNTINGS
    p.add_argument("--memory-accounting", choices=ACCOUNTINGS, default="fsdp2",
                   help="bytes per parameter for the predicted memory (default fsdp2: this backend keeps fp32 "
                        "parameters, gradients and Adam state, computing under autocast: 4 + 4 + 8 B)")
    p.add_argument("--memory-headroom", type=quantity("size"), default=None, metavar="SIZE",
                   help="reserved per GPU for the CUDA context, NCCL buffers and fragmentation (default: "
                        "parsim/data/memory.yaml)")
    b = p.add_argument_group("collective micro-benchmark (backends/torchdist/bench.py)")
    b.add_argument("--bench", metavar="OP", help="run one collective micro-benchmark (e.g. allreduce) instead of training")
    b.add_argument("--algo", default="ring", help="algorithm(s) for --bench, comma-separated")
    b.add_argument("--size", default="16MiB", help="message size(s) for --bench (e.g. 16MiB or 1KiB:64MiB)")
    b.add_argument("--repeats", type=count("MAX_STEPS"), default=5, help="timed repetitions per point for --bench")
    b.add_argument("--min-time", type=number(0.0, "MAX_WAIT_S"), default=0.0, help="--bench: keep repeating a point (up to --max-repeats) "
                   "until this many seconds were timed (the netem sweep uses 1.5)")
    b.add_argument("--max-repeats", type=count("MAX_STEPS"), default=25, help="--bench: cap on repeats with --min-time")


def _torchrun_env() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def make_plan(args, world: int | None = None):
    """(ModelSpec, Plan, nproc) from the flags; every user mistake is a ParsimError."""
    from parsim.model import load_model
    from parsim.plan import Plan
    from backends.torchdist.buildable import check_buildable
    model = load_model(args.model)
    check_buildable(model)
    tp, pp = args.tp, args.pp
    for k in ("tp", "pp", "cp", "ep"):
        if getattr(args, k) is None or getattr(args, k) < 1:
            raise ParsimError(f"--{k} = {getattr(args, k)}: expected a positive integer")
    nproc = world or args.nproc
    dp = args.dp
    if dp is None:
        if nproc is None:
            dp = 1
        elif nproc % (tp * pp * args.cp):
            raise ParsimError(f"nproc ({nproc}) is not divisible by tp*pp = {tp}*{pp} = {tp * pp}" if args.cp == 1 else
                              f"nproc ({nproc}) is not divisible by tp*pp*cp = {tp}*{pp}*{args.cp} = {tp * pp * args.cp}")
        else:
            dp = nproc // (tp * pp * args.cp)
    if nproc is None:
        nproc = dp * tp * pp * args.cp
    elif dp * tp * pp * args.cp != nproc:      # named as the flags are (trial 2026-11-30: "!= gpus(3)")
        raise ParsimError(f"{'WORLD_SIZE' if world else '--nproc'} {nproc} != dp·tp·pp" + ("·cp" if args.cp > 1 else "") + f" = {dp}·{tp}·{pp}"
                          + (f"·{args.cp}" if args.cp > 1 else "") + f" = {dp * tp * pp * args.cp}: expected one rank "
                          f"per dp·tp·pp{'·cp' if args.cp > 1 else ''} position")
    schedule = args.schedule or ("interleaved" if (args.vpp or 1) > 1 else "1f1b")
    vpp = args.vpp or (2 if schedule in ("interleaved", "zbv") else 1)
    micro = args.micro_batch
    gb = args.global_batch or micro * dp * pp     # one micro-batch per pipeline stage
    from parsim.hardware import default_dtype
    from parsim.study import backend_overlaps_dp_sync
    dtype = args.dtype or default_dtype("gpu" if args.backend == "nccl" else "cpu")
    plan = Plan(dp=dp, tp=tp, pp=pp, vpp=vpp, micro_batch=micro, global_batch=gb, seq_len=args.seq_len,
                dtype=dtype, schedule=schedule, grad_sync=args.grad_sync, zero=args.zero, recompute=args.recompute,
                sequence_parallel=args.sequence_parallel, overlap=backend_overlaps_dp_sync(args.zero),
                flash_attention=True, ep=args.ep, cp=args.cp)
    from parsim.costs.dpsync import zero_sync_algorithms
    zero_sync_algorithms(plan.grad_sync, plan.zero)     # ZeRO with tree/hierarchical/ps: refused before spawning
    return model, plan, nproc


def check_hardware(backend: str, nproc: int):
    """Ranks against what this machine has, before anything is spawned."""
    cores = os.cpu_count() or 1
    if backend == "nccl":
        import torch
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ParsimError("backend nccl needs CUDA GPUs, but torch sees none "
                              f"(torch {torch.__version__}, cuda available = {torch.cuda.is_available()}); use --backend gloo")
        if nproc > n:
            raise ParsimError(f"nproc ({nproc}) > GPUs on this machine ({n}): nccl runs one rank per GPU")
    else:
        limit = max(4, 2 * cores)
        if nproc > limit:
            raise ParsimError(f"nproc ({nproc}) > {limit} CPU ranks allowed here (2 x {cores} cores, at least 4): "
                              "gloo ranks on one host beyond that only measure oversubscription")


def _device_profile(backend: str) -> tuple[str, str]:
    """(device profile, cluster preset) for the prediction."""
    if backend != "nccl":   # the loopback link measured by `parsim calibrate`, when there
        from parsim.calibrate import local_cluster
        return "cpu", local_cluster()
    import torch
    name = torch.cuda.get_device_name(0).lower()
    for key, prof, cl in (("h200", "h200", "dgx-h200"), ("h100", "h100-sxm", "dgx-h100"), ("a100", "a100-80gb", "dgx-a100"),
                          ("b200", "b200", "dgx-h200")):
        if key in name:
            return prof, cl
    return None, "dgx-h100"


def predicted_report(model, plan, cluster_name: str, gpus: int, explicit: str | None = None, backend: str = "gloo",
                     **memory):
    """The prediction as a dict and where it came from. The cluster: `explicit` (--cluster: a
    preset, a cluster file or an emulated cluster's state file; an error in it is the user's and
    raises), else the emulated cluster this run is inside (PARSIM_NETEM_STATE: its graph with
    the probed links), else `cluster_name` (the calibrated loopback; (None, reason) on error).
    ``memory``: accounting / headroom_bytes for parsim.predict.predict. `backend`: what the run uses; a --cluster whose
    device is not what that backend runs on (gloo: CPU ranks; nccl: GPUs) is said beside the prediction (trial
    2026-11-30: a gloo run on CPUs was compared with an H100 prediction without a word)."""
    from parsim.commands.common import load_cluster_arg, predict_command
    from parsim.predict import predict
    cluster = load_cluster_arg(explicit, gpus)
    from parsim.model import preset_names
    name = model.name if model.name in preset_names() else "MODEL_FILE"
    same = lambda cl: f"; the same as `{predict_command(name, cl, gpus, plan, memory.get('accounting'))}`"  # noqa: E731
    if cluster is not None:
        rep = predict(model, cluster, plan, **memory)
        what = cluster.meta.get("source") or "cluster"
        state = None if explicit else os.environ.get("PARSIM_NETEM_STATE")
        # inside `parsim emulate run` the cluster is the emulation's state file, priced while it is up (trial
        # 2026-11-30: the line named the cluster's display name, which no command reads)
        where = (f"predicted by parsim.predict on {cluster.name} ({what})" + same(explicit or state or cluster.name)
                 + (" while the emulated cluster is up" if state else ""))
        kind = getattr(cluster.device, "kind", "")
        if (backend == "gloo") != (kind == "cpu"):
            where += (f"; note: the prediction is for {cluster.device.name} ({kind}) but this {backend} run measures "
                      f"{'CPU ranks' if backend == 'gloo' else 'GPUs'}: the comparison is across devices")
        return as_dict(rep), where
    from parsim.topology import load_cluster
    try:
        cl = load_cluster(cluster_name, gpus)
        rep = predict(model, cl, plan, **memory)
    except ParsimError as e:
        return None, f"no prediction: {e}"
    from parsim.hardware import is_measured
    dev = getattr(cl.device, "name", cl.device)
    where = f"predicted by parsim.predict on cluster {cluster_name}" + same(
        "cpu-local" if cluster_name.endswith("cpu-local.yaml") else cluster_name)
    if dev == "cpu" and not is_measured(dev):
        where += ("; device profile cpu is the catalog's uncalibrated placeholder (order of magnitude only): "
                  "`parsim calibrate` measures this machine")
    return as_dict(rep), where


def host_available_bytes() -> int | None:
    """MemAvailable of this host (/proc/meminfo), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_refusal(predicted: dict | None, backend: str, nproc: int, host_bytes: int | None) -> str | None:
    """Why a plan parsim predicts will not fit must not be started, or None.

    GPUs (nccl): the prediction's own verdict (worst pipeline rank + headroom against the device's
    reported capacity). CPU (gloo): all ranks share this host's RAM, so nproc x the worst rank's
    predicted memory must fit in what the host has available (MemAvailable)."""
    if predicted is None:
        return None
    need = predicted["memory_GiB"] * 2 ** 30
    if backend == "nccl":
        return None if predicted["fits"] else f"predicted not to fit on the GPU: {predicted['fits_reason']}"
    if host_bytes is None:
        return None
    if nproc * need > host_bytes:
        return (f"predicted not to fit in host memory: {nproc} ranks x {need / 2 ** 30:.2f} GiB (worst rank, "
                f"{predicted.get('memory_accounting') or 'fp32'} accounting, fp32 on CPU) = {nproc * need / 2 ** 30:.2f} GiB "
                f"but this host has {host_bytes / 2 ** 30:.2f} GiB available (MemAvailable)")
    return None


def dry_run_text(model, plan, nproc: int, predicted: dict | None, source: str, refusal: str | None) -> str:
    """What `parsim run --dry-run` prints: the plan, its stage split and schedule, the predicted memory."""
    from parsim.rules import ParallelDims
    from parsim.schedules.pipeline import TORCH_CLASS, build_schedule
    dims = ParallelDims.of(plan, model, nproc, scope="run")
    lines = [f"parsim run --dry-run: {model.name}  {plan.label()}  {nproc} ranks (dp {plan.dp} x tp {plan.tp} x pp {plan.pp}), "
             f"{plan.microbatches} micro-batches of {plan.micro_batch} per step, dtype {plan.dtype}",
             "plan: valid (parsim.rules, with the torch backend's own rules)"]
    if plan.pp > 1:
        sch = build_schedule(plan.schedule, plan.pp, plan.microbatches, plan.vpp)
        lines.append(f"schedule: torch.distributed.pipelining.{TORCH_CLASS[sch.name]}, {dims.describe()}")
        for r, ops in sch.torch_order().items():
            st = ", ".join(f"{s} (layers {dims.layer_range(s).start}-{dims.layer_range(s).stop - 1})"
                           for s in dims.rank_stages(r))
            shown = " ".join(ops[:12]) + (f" ... ({len(ops)} ops)" if len(ops) > 12 else "")
            lines.append(f"  pp rank {r}: stages {st}; ops {shown}")
    else:
        lines.append(f"schedule: no pipeline (pp = 1): {plan.microbatches} micro-batches accumulated, then the gradient sync")
    if predicted is None:
        lines.append(source)
    else:
        mem = predicted["memory_breakdown_GiB"]
        lines.append(f"predicted memory per device (worst pipeline rank {predicted.get('memory_worst_rank', 0)}, "
                     f"{predicted.get('memory_accounting')} accounting): {predicted['memory_GiB']:.3f} GiB = "
                     + " + ".join(f"{k} {v:.3f}" for k, v in mem.items()))
        lines.append(f"predicted step time {predicted['step_time_s']:.4g} s ({source}; as this backend runs the plan: "
                     + ("FSDP2's reduce-scatter inside the backward, overlapped" if plan.overlap else
                        "the gradient sync after the backward, not overlapped with it — `parsim predict --no-overlap`, "
                        "where `plan`/`predict` assume Megatron/DDP-style overlap") + ")")
    lines.append(f"refused: {refusal}" if refusal else "would run: yes")
    return "\n".join(lines)


def as_dict(rep):
    if rep is None or isinstance(rep, dict):
        return rep
    for m in ("to_dict", "as_dict"):
        if hasattr(rep, m):
            return getattr(rep, m)()
    from dataclasses import asdict, is_dataclass
    if is_dataclass(rep):
        return asdict(rep)
    return dict(rep)


def compare(measured, predicted) -> list[tuple]:
    """Rows (key, measured, predicted, relative error = (predicted − measured) / measured, [min, max]):
    the join of the two StepReports on their keys (parsim.compare.join)."""
    from parsim.compare import join
    return [(r["key"] + (" (counted)" if r["counted"] else ""), r["measured"], r["predicted"], r["error"],
             [r["spread_min"], r["spread_max"]]) for r in join(measured, predicted)]


def _fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0):
        return f"{v:.3e}"
    return f"{v:.4g}"


def render_table(result: dict) -> str:
    """The measured StepReport beside the predicted one, phase by phase (parsim.tables)."""
    from parsim.tables import text_table
    m = result["measured"]
    meta = m["measurement"]
    title = (f"parsim run: {m['model']}  {result['plan_label']}  backend {meta['backend']} ({meta['device']}, "
                    f"{meta['dtype_run']})  {meta['ranks']} ranks, {meta['steps']} steps, median of "
                    f"{meta['steps'] - meta['warmup_dropped']} after {meta['warmup_dropped']} warm-up")
    rows = []
    for row in result["rows"]:
        k, mv, pv, err = row[:4]
        sp = row[4] if len(row) > 4 else [None, None]
        rows.append([k, _fmt(mv), f"[{_fmt(sp[0])}, {_fmt(sp[1])}]" if sp[0] is not None else "-", _fmt(pv),
                     f"{err:+.0%}" if err is not None else "-"])
    table = text_table(("", "measured", "spread [min, max]", "predicted", "error"), rows,
                       justify=("left", "right", "right", "right", "right"))
    lines = [title, table.rstrip(), "error = (predicted - measured) / measured; spread = fastest and slowest timed step"
             + ("; (counted): summed from the tensors' sizes, not measured - an error only where the count and the "
                "prediction differ"
                if any(str(r[0]).endswith("(counted)") for r in result["rows"]) else "")]
    if meta["loss"]:
        lines.append(f"loss {meta['loss'][0]:.4f} -> {meta['loss'][-1]:.4f}")
    lines.append(f"memory: {meta['memory_source']}")
    lines.append(result["prediction_source"])
    for n in m["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)


_STARTUP_PHASES = ("start-up", "init_process_group", "build")


def run_progress(phases: dict, nproc: int, steps: int) -> tuple[int, str]:
    """(steps done, what the run is doing) from each running rank's heartbeat phase (``{rank: phase}``,
    '' before its first beat, as backends.torchdist.runner writes it): while ranks start, how many are
    up and what they do; then the step the slowest rank is in ("step 3 forward": steps 0..2 are done,
    so 3 of `steps`) and rank 0's phase; after the last step, finishing."""
    import re
    if not phases or all(not v or v.startswith(_STARTUP_PHASES) for v in phases.values()):
        up = sum(1 for v in phases.values() if v)
        doing = sorted({v for v in phases.values() if v})
        return 0, f"starting ranks: {up}/{nproc} up" + (f" ({', '.join(doing)})" if doing else "")
    in_step = [int(m.group(1)) for v in phases.values() if (m := re.match(r"step (\d+)\b", v or ""))]
    if in_step:
        done = min(min(in_step), steps)
        return done, f"step {min(done + 1, steps)}/{steps}: rank 0 {phases.get(0) or phases[min(phases)]}"
    return steps, f"finishing: rank 0 {phases.get(0) or phases[min(phases)]}"


def run(args) -> int:
    if args.warmup is None:     # the default 3; a run shorter than that keeps one timed step
        args.warmup = 3 if args.bench else min(3, max(args.steps - 1, 0))
    if args.bench:
        from backends.torchdist import bench   # written by the netem issue; imported only here
        if args.nproc is None:
            args.nproc = int(os.environ.get("WORLD_SIZE", 2))
        argv = ["--bench", args.bench, "--algo", args.algo, "--size", args.size, "--repeats", str(args.repeats),
                "--warmup", str(args.warmup), "--nproc", str(args.nproc), "--format", args.format,
                "--min-time", str(args.min_time), "--max-repeats", str(args.max_repeats)]
        return int(bench.main(args, argv) or 0)   # argv: what its own per-rank processes parse
    from parsim.outputs import JSON, check_output_dir, check_output_path
    if args.out:   # before the run: a measurement must not be lost to a bad path
        check_output_path(args.out, JSON, "--out")
    if args.trace:
        check_output_dir(args.trace, "--trace")
    torchrun = _torchrun_env()
    world = int(os.environ["WORLD_SIZE"]) if torchrun else None
    model, plan, nproc = make_plan(args, world)
    if args.steps < 1 or args.warmup < 0:
        raise ParsimError(f"--steps {args.steps} / --warmup {args.warmup}: expected steps >= 1 and warmup >= 0")
    if args.warmup >= args.steps:
        # a warm-up that leaves no timed step (trial 2026-11-30: --warmup 5 --steps 3 was clamped to 2, unsaid)
        raise ParsimError(f"--warmup {args.warmup} >= --steps {args.steps}: expected fewer warm-up steps than steps "
                          f"(the median is taken over the steps after the warm-up)")
    from backends.torchdist.parallel import check_plan
    check_plan(model, plan, nproc)
    if plan.grad_sync == "hierarchical" and args.local_size and plan.dp > 1 and plan.dp % args.local_size:
        # what the gradient sync would raise in its first step, after every rank started (trial 2026-11-30: dry-run
        # said "would run: yes")
        raise ParsimError(f"--grad-sync hierarchical with --local-size {args.local_size}: the dp group of {plan.dp} "
                          f"ranks is not a whole number of nodes of {args.local_size} ranks; expected a --local-size "
                          f"dividing dp")
    # this machine's ranks (CUDA GPUs for nccl, CPU cores for gloo): a dry run answers for this machine too
    if not torchrun:
        check_hardware(args.backend, nproc)
    from parsim.commands.common import memory_options
    memory = memory_options(args)
    if args.dry_run:
        cluster = "dgx-h100" if args.backend == "nccl" else _device_profile("gloo")[1]
        predicted, source = predicted_report(model, plan, cluster, nproc, explicit=args.cluster, backend=args.backend,
                                             **memory)
        refusal = memory_refusal(predicted, args.backend, nproc, host_available_bytes())
        print(dry_run_text(model, plan, nproc, predicted, source, refusal))
        return 2 if refusal else 0
    profile, cluster = _device_profile(args.backend) if not torchrun or args.backend != "nccl" else (None, "dgx-h100")
    # Refuse up front what parsim predicts will not fit (device memory, or host RAM for CPU ranks).
    predicted, source = predicted_report(model, plan, cluster, nproc, explicit=args.cluster, backend=args.backend,
                                         **memory)
    refusal = memory_refusal(predicted, args.backend, nproc if not torchrun else int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                             host_available_bytes())
    if refusal:
        raise ParsimError(f"not started: {refusal} (--memory-accounting / --memory-headroom change the prediction)")
    cfg = {"model": model.to_dict(), "plan": plan.to_dict(), "backend": args.backend, "steps": args.steps,
           "warmup": args.warmup, "trace_dir": os.path.abspath(args.trace) if args.trace else None,
           "local_size": args.local_size, "threads_per_rank": args.threads, "timeout_s": min(args.timeout, 600),
           "watchdog_s": args.watchdog, "seed": args.seed, "device_profile": profile}
    # a rank that runs out of memory is reported beside the predicted figure
    if predicted and isinstance(predicted.get("memory_GiB"), (int, float)):
        cfg["predicted_memory_GiB"] = predicted["memory_GiB"]
    if torchrun:
        from backends.torchdist.runner import reports_from_json, worker_main
        if int(os.environ["RANK"]) != 0:     # only rank 0 reports
            worker_main(dict(cfg, out=None))
            return 0
        # rank 0 is this process: its report comes back in memory (trial 2026-11-30: the temp file it went through
        # was left in /tmp by every interrupted or killed run)
        collect: list = []
        worker_main(dict(cfg, out=None, collect=collect))
        measured = reports_from_json(json.loads(collect[0]))
    else:
        from backends.torchdist.launch import launch
        from parsim.progress import bar
        with bar("parsim run", args.steps, lines=False, unit="steps") as b:
            b.update(0, f"starting {nproc} rank(s)")
            measured = launch(cfg, nproc, timeout_s=args.timeout,
                              progress=lambda ph: b.update(*run_progress(ph, nproc, args.steps)))
            b.update(args.steps, "done")
    result = {"plan_label": plan.label(), "measured": as_dict(measured), "predicted": predicted,
              "prediction_source": source, "rows": compare(measured, predicted)}
    result["relative_error"] = {r[0]: r[3] for r in result["rows"]}
    if args.format == "json":
        json.dump(result, sys.stdout, indent=1, default=str)
        print()
    else:
        print(render_table(result))
    sys.stdout.flush()
    if args.out:   # after printing: if this fails (disk full, directory removed meanwhile) the result is above
        from parsim.outputs import write_atomic
        try:
            write_atomic(args.out, json.dumps(result, indent=1, default=str), JSON, "--out")
        except ParsimError as e:
            raise ParsimError(f"{e} (the measurement is printed above)") from None
    return 0
