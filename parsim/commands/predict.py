"""`parsim predict`: price one plan and show the arithmetic."""
from __future__ import annotations

import sys

from parsim.commands.common import (name_or_path, add_memory_arguments, add_plan_arguments, memory_options, plan_from_args,
                                    say_defaults)
from parsim.search import DEFAULT_CLUSTER, DEFAULT_MODEL


def add_arguments(p):
    p.add_argument("--model", type=name_or_path, default=None,
                   help=f"preset name or model file (YAML/JSON or HF config.json; default {DEFAULT_MODEL}, said in the "
                        "output)")
    p.add_argument("--cluster", type=name_or_path, default=None, help=f"preset name or cluster file (default {DEFAULT_CLUSTER}, said in "
                                                   "the output)")
    add_plan_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--out", help="also write the report (JSON) to this file")


def run(a) -> int:
    from parsim.commands.common import load_cluster_arg
    from parsim.outputs import JSON, check_output_path, write_atomic
    from parsim.predict import get_cluster, predict
    from parsim.report import step_report_text, to_json
    if a.out:
        check_output_path(a.out, JSON, "--out")
    spec = a.cluster or DEFAULT_CLUSTER
    cluster = load_cluster_arg(spec, a.gpus) if str(spec).endswith(".json") else get_cluster(spec, a.gpus)
    plan = plan_from_args(a, a.gpus, None if a.dtype else cluster.device)
    from parsim.model import load_model
    model = load_model(a.model or DEFAULT_MODEL)          # read once: predict takes the spec, the answer its kind
    rep = predict(model, cluster, plan, gpus=a.gpus, **memory_options(a))
    from parsim.accuracy import heldout, memory_heldout
    dev = getattr(cluster.device, "name", cluster.device)
    moe = model.experts > 0
    from parsim.model import preset_twin
    evidence = preset_twin(model) or model.name        # a config.json of a preset model: that preset's runs
    # the report plus the held-out error on published runs like it (null: unknown)
    from parsim.accuracy import labelled
    record = dict(rep.to_dict(), heldout_accuracy=heldout(dev, rep.plan.get("dtype", ""), moe),
                  memory_heldout=memory_heldout(rep.memory_accounting),
                  accuracy=labelled(dev, rep.plan.get("dtype", ""), moe, evidence,
                                    dict(rep.plan, seq_len=rep.plan.get("seq_len") or model.seq_len),
                                    rep.memory_accounting, rep.memory_GiB,
                                    rep.memory_capacity_GiB - rep.memory_headroom_GiB, as_named=model.name))
    if a.format == "json":
        text = to_json(record)
    else:
        from parsim.hardware import profile_file
        from parsim.accuracy import lines
        from parsim.tables import wrap
        shown = dict(rep.plan, seq_len=rep.plan.get("seq_len") or model.seq_len)    # the length priced, given or not
        how_sure = lines(dev, rep.plan.get("dtype", ""), moe, shown, accounting=rep.memory_accounting, model=evidence,
                         as_named=model.name,
                         total_GiB=rep.memory_GiB, usable_GiB=rep.memory_capacity_GiB - rep.memory_headroom_GiB)
        text = step_report_text(rep) + f"device profile {dev}: {profile_file(dev)}\n" + "".join(map(wrap, how_sure))
    from parsim.search import DEFAULT_GLOBAL_BATCH
    if a.global_batch is None and plan.global_batch != DEFAULT_GLOBAL_BATCH:    # said, not silent (trial 2026-11-30)
        note = (f"global batch {plan.global_batch}: the default {DEFAULT_GLOBAL_BATCH} rounded up to whole micro-batches "
                f"on every data-parallel rank (micro-batch {plan.micro_batch} x dp {plan.dp}); --global-batch sets it\n")
        if a.format == "json":
            sys.stderr.write(f"parsim predict: {note}")
        else:
            from parsim.tables import wrap
            text = wrap(note) + text
    sys.stdout.write(say_defaults(a, text))
    if a.out:
        write_atomic(a.out, to_json(record), JSON, "--out")
    return 0
