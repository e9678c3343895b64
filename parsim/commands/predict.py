"""`parsim predict`: price one plan and show the arithmetic."""
from __future__ import annotations

import sys

from parsim.commands.common import add_plan_arguments, plan_from_args


def add_arguments(p):
    p.add_argument("--model", default="llama2-13b", help="preset name or model file (YAML/JSON or HF config.json)")
    p.add_argument("--cluster", default="dgx-h100", help="preset name or cluster file")
    add_plan_arguments(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--out", help="also write the report (JSON) to this file")


def run(a) -> int:
    from parsim.predict import predict
    from parsim.outputs import JSON, check_output_path, write_atomic
    from parsim.report import step_report_text, to_json
    if a.out:
        check_output_path(a.out, JSON, "--out")
    plan = plan_from_args(a, a.gpus)
    rep = predict(a.model, a.cluster, plan, gpus=a.gpus)
    text = to_json(rep.to_dict()) if a.format == "json" else step_report_text(rep)
    sys.stdout.write(text)
    if a.out:
        write_atomic(a.out, to_json(rep.to_dict()), JSON, "--out")
    return 0
