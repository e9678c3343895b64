"""`parsim simulate`: play a pipeline schedule in the discrete-event simulator."""
from __future__ import annotations

import json

from parsim.commands.common import name_or_path, count, number, quantity
from parsim.errors import ParsimError, require
from parsim.schedules.pipeline import SCHEDULES, build_schedule
from parsim.simulate import bubble_fraction_closed_form, pipeline_step
from parsim.limits import MAX_OP_TIME_S, check_number, require_finite
from parsim.units import fmt_time, parse_size


def add_arguments(p):
    p.add_argument("--pp", type=count("MAX_DEVICES"), required=True, help="pipeline ranks")
    p.add_argument("--micro-batches", "-m", type=count("MAX_GLOBAL_BATCH"), required=True, dest="microbatches",
                   help="micro-batches per step")
    p.add_argument("--schedule", default="1f1b", help=f"one of {', '.join(SCHEDULES)} (default 1f1b)")
    p.add_argument("--vpp", type=count("MAX_DEVICES"), default=None,
                   help="stages per rank (interleaved: default 2; zbv: 2; others: 1)")
    p.add_argument("--stage-times", metavar="F,B[,W][/F,B[,W]...]",
                   help="milliseconds per micro-batch: forward, backward and optional weight-grad. One triple "
                        "is every rank's share; pp triples (separated by /) are per rank; pp*vpp are per "
                        "virtual stage. B excludes W: fused backwards take B+W, zbv runs B and W apart "
                        "(without W it splits B in half). Default 1,2")
    p.add_argument("--model", type=name_or_path, help="model preset: derive stage times from the cost model")
    p.add_argument("--cluster", type=name_or_path, help="cluster preset: with --model, stage times from the cost model; with "
                                     "--stage-times, send/recv of --p2p-bytes priced on its graph")
    p.add_argument("--p2p-bytes", type=quantity("size"), default="0", help="bytes sent between stages per micro-batch, e.g. 16MiB "
                                                    "(with --cluster and --stage-times)")
    p.add_argument("--tp", type=count("MAX_DEVICES"), default=1, help="tensor parallel (default 1): sizes the cost model's stages; "
                                                    "with --cluster, pipeline rank r sits on device r*tp")
    p.add_argument("--micro-batch-size", type=count("MAX_GLOBAL_BATCH"), default=1, help="sequences per micro-batch (with --model)")
    p.add_argument("--seq-len", type=count("MAX_SEQ_LEN"), default=None, help="sequence length (with --model; default the model's)")
    p.add_argument("--recompute", default="none", help="none|selective|full|selective-op (with --model)")
    p.add_argument("--sequence-parallel", action="store_true", help="with --model and tp > 1")
    p.add_argument("--p2p-ms", type=number(0.0, 1e3 * MAX_OP_TIME_S), default=0.0,
                   help="send/recv latency between ranks, ms, on top of the stage times (default 0)")
    p.add_argument("--trace", metavar="OUT.json", help="write a Chrome trace (Perfetto, chrome://tracing)")
    p.add_argument("--gantt", metavar="OUT.png", help="write a Gantt chart")
    p.add_argument("--format", choices=("table", "json"), default="table")


def parse_stage_times(text: str) -> tuple[list[float], list[float], list[float] | None]:
    """'1,2' -> ([1e-3], [2e-3], None); '1,2,1/1.5,3,1' -> per-rank lists, in seconds."""
    groups = [g for g in str(text).replace(" ", "").split("/") if g]
    require(bool(groups), f"--stage-times {text!r} is empty: expected F,B[,W] milliseconds, e.g. 1,2")
    triples = []
    for g in groups:
        try:
            vals = [float(x) for x in g.split(",")]
        except ValueError:
            raise ParsimError(f"--stage-times group {g!r} is not numbers: expected F,B[,W] milliseconds, e.g. 1,2,1")
        require(len(vals) in (2, 3), f"--stage-times group {g!r} has {len(vals)} values: expected F,B or F,B,W")
        for v in vals:   # finite, >= 0, at most parsim.limits.MAX_OP_TIME_S
            check_number(f"--stage-times group {g!r}: a time (ms)", v, 0.0, 1e3 * MAX_OP_TIME_S)
        triples.append(vals)
    n_w = sum(len(t) == 3 for t in triples)
    require(n_w in (0, len(triples)), f"--stage-times {text!r}: give W for every group or for none")
    tf, tb = [t[0] * 1e-3 for t in triples], [t[1] * 1e-3 for t in triples]
    return tf, tb, ([t[2] * 1e-3 for t in triples] if n_w else None)


def _model_stage_times(args, sched):
    """Per-stage forward/backward/weight-grad seconds from the cost model (parsim.predict.price)."""
    from parsim.model import load_model
    from parsim.plan import Plan, validate
    from parsim.predict import plan_columns, price
    from parsim.simulate import priced_stage_times
    from parsim.topology import load_cluster

    from parsim.hardware import default_dtype
    model = load_model(args.model)
    mbs = args.micro_batch_size
    pp_ = sched.pp * args.tp
    cluster = load_cluster(args.cluster, pp_)
    plan = Plan(tp=args.tp, pp=sched.pp, vpp=sched.vpp, micro_batch=mbs, global_batch=mbs * sched.microbatches,
                seq_len=args.seq_len, schedule=sched.name, dtype=default_dtype(cluster.device), recompute=args.recompute,
                sequence_parallel=args.sequence_parallel)
    validate(plan, model, plan.gpus)
    priced = price(model, cluster, plan_columns([plan], model))
    if "stage_s" not in priced:
        raise ParsimError("--model/--cluster is not available yet in parsim simulate (parsim.predict.price does "
                          "not return per-stage times); use --stage-times F,B[,W] milliseconds")
    return priced_stage_times(priced, 0, sched.pp, sched.vpp)


def run(args) -> int:
    from parsim.outputs import FIGURE, JSON, check_output_path
    if args.trace:
        check_output_path(args.trace, JSON, "--trace")
    if args.gantt:
        check_output_path(args.gantt, FIGURE, "--gantt")
    sched = build_schedule(args.schedule, args.pp, args.microbatches, args.vpp)
    require(args.p2p_ms >= 0, f"--p2p-ms must be >= 0, got {args.p2p_ms}")
    require(args.tp >= 1, f"--tp must be >= 1, got {args.tp}")
    if args.model:
        require(bool(args.cluster), "--model needs --cluster (the machine its stage times are priced on)")
        require(not args.stage_times, "give either --stage-times or --model/--cluster, not both")
        tf, tb, tw = _model_stage_times(args, sched)
    else:
        tf, tb, tw = parse_stage_times("1,2" if args.stage_times is None else args.stage_times)
    p2p = args.p2p_ms * 1e-3
    if args.cluster and not args.model:
        from parsim.simulate import p2p_on_cluster
        from parsim.topology import load_cluster
        price, extra = p2p_on_cluster(load_cluster(args.cluster, sched.pp * args.tp), args.tp), p2p
        p2p = lambda src, dst, nbytes: price(src, dst, nbytes) + extra  # noqa: E731
    n = len(tf)
    require(n in (1, sched.pp, sched.num_stages),
            f"--stage-times has {n} groups: expected 1, pp={sched.pp} or pp*vpp={sched.num_stages}")
    res = pipeline_step(sched, sched.pp, sched.microbatches, sched.vpp, tf, tb, tw, p2p_s=p2p,
                        p2p_bytes=parse_size(args.p2p_bytes))
    require_finite(f"{sched.name} pp={sched.pp} m={sched.microbatches}", makespan_s=res.makespan_s,
                   busy_s=res.busy_s)
    if args.trace:
        from parsim.report_pipeline import write_chrome_trace
        write_chrome_trace(res, args.trace)
    if args.gantt:
        from parsim.report_pipeline import write_gantt
        write_gantt(res, args.gantt)
    if args.format == "json":
        print(json.dumps(res.to_dict(), indent=2))
    else:
        _table(res)
    return 0


def _table(res) -> None:
    import sys

    from parsim.tables import text_table

    s = res.schedule
    cf = float(bubble_fraction_closed_form(s.pp, s.microbatches, s.vpp))
    per_stage, per_rank = res.peak_inflight.tolist(), res.peak_inflight_per_rank.tolist()
    rows = []
    for r in range(s.pp):
        stages = [int(x) for x in (s.stage_to_rank == r).nonzero()[0]]
        peak = f"{per_rank[r]}" + (f" ({per_rank[r] / s.vpp:g})" if s.vpp > 1 else "")
        rows.append([str(r), ",".join(map(str, stages)), fmt_time(res.busy_s[r]), fmt_time(res.idle_s[r]),
                     f"{res.idle_fraction[r]:.1%}", " ".join(str(per_stage[x]) for x in stages), peak])
    sys.stdout.write(text_table(
        ("rank", "stages", "busy", "idle", "idle %", "peak/stage", "peak/rank"), rows,
        f"{s.name}  pp={s.pp}  m={s.microbatches}  vpp={s.vpp}",
        "idle % = idle/makespan; peak = micro-batches in flight (activations held) on a stage, and on "
        "a rank over its stages" + (" (bracketed: in units of a rank's whole share of layers)" if s.vpp > 1 else "")
        + f"\nmakespan {fmt_time(res.makespan_s)};  bubble (idle/busy, Narayanan 2021) "
        f"{res.bubble_fraction:.2%}  vs closed form (p-1)/(v·m) = {cf:.2%} "
        f"(uniform stages, free p2p{'; zbv is not covered by it' if s.name == 'zbv' else ''})",
        justify=["right"] * 7))
