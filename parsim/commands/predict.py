"""`parsim predict`: price one plan and show the arithmetic."""
from __future__ import annotations

import sys

from parsim.commands.common import add_memory_arguments, add_plan_arguments, memory_options, plan_from_args


def add_arguments(p):
    p.add_argument("--model", default="llama2-13b", help="preset name or model file (YAML/JSON or HF config.json)")
    p.add_argument("--cluster", default="dgx-h100", help="preset name or cluster file")
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
    cluster = load_cluster_arg(a.cluster, a.gpus) if str(a.cluster).endswith(".json") else get_cluster(a.cluster, a.gpus)
    plan = plan_from_args(a, a.gpus, None if a.dtype else cluster.device)
    rep = predict(a.model, cluster, plan, gpus=a.gpus, **memory_options(a))
    from parsim.accuracy import heldout
    from parsim.model import load_model
    dev = getattr(cluster.device, "name", cluster.device)
    moe = load_model(a.model).experts > 0 if a.model else False
    # the report plus the held-out error on published runs like it (null: unknown)
    from parsim.accuracy import memory_heldout
    record = dict(rep.to_dict(), heldout_accuracy=heldout(dev, rep.plan.get("dtype", ""), moe),
                  memory_heldout=memory_heldout(rep.memory_accounting))
    if a.format == "json":
        text = to_json(record)
    else:
        from parsim.hardware import profile_file
        from parsim.accuracy import memory_statement, statement
        text = (step_report_text(rep) + f"device profile {dev}: {profile_file(dev)}\n"
                + statement(dev, rep.plan.get("dtype", ""), moe) + "\n"
                + memory_statement(rep.memory_accounting, rep.memory_GiB,
                                   rep.memory_capacity_GiB - rep.memory_headroom_GiB) + "\n")
    sys.stdout.write(text)
    if a.out:
        write_atomic(a.out, to_json(record), JSON, "--out")
    return 0
