"""parsim.accuracy: `plan` and `predict` say how far off parsim was on published runs like the plan, and which
ranked plans it cannot tell apart."""
import json

import pytest

from parsim import accuracy as A
from parsim.cli import main


def test_statement_quotes_the_held_out_kind_or_says_unknown():
    h = A.heldout("h100-sxm", "fp8", False)
    assert h is not None and h["rows"] > 0
    s = A.statement("h100-sxm", "fp8", False)
    assert f"{100 * h['mean']:.1f}% on average" in s and f"{100 * h['max']:.1f}% at worst" in s
    # a100-40gb is validated by the A100 80GB tables (one chip)
    assert A.heldout("a100-40gb", "bf16", False) == A.heldout("a100-80gb", "fp16", False)
    # no public H200 table: unknown, never a borrowed figure presented as its own
    assert A.heldout("h200", "bf16", False) is None
    assert A.statement("h200", "bf16", False).startswith("accuracy: unknown")
    # 16-bit on H100 SXM: unknown, with the nearest evidence on the same chip named as such
    s = A.statement("h100-sxm", "bf16", False)
    assert s.startswith("accuracy: unknown") and "nearest evidence, fp8 dense runs on h100-sxm" in s
    # a CPU has no published tables: parsim validate is where its accuracy comes from
    assert "parsim validate" in A.statement("cpu", "fp32", False)


def test_within_error_counts_the_plans_closer_to_the_best_than_the_error():
    # best 10.0 s; at a 5% error 10.4 and 10.45 (+4.5%) are within, 10.6 (+6%) is not
    assert A.within_error([10.0, 10.4, 10.45, 10.6], 0.05) == 3
    assert A.within_error([10.0, 11.0], 0.05) == 1
    assert A.within_error([], 0.05) == 0
    assert A.ranking_note([10.0, 11.0], "a100-80gb", "bf16", False) == ""     # only #1: nothing to say
    assert A.ranking_note([10.0, 10.0], "h200", "bf16", False) == ""          # error unknown: no claim
    assert A.ranking_note([10.0, 10.01, 10.02], "a100-80gb", "bf16", False).startswith("plans 1–3 (at least)")


def test_plan_and_predict_print_and_store_the_accuracy(capsys, tmp_path):
    assert main(["plan", "--gpus", "16", "--cluster", "dgx-a100", "--model", "llama2-7b", "--top", "3"]) == 0
    out = capsys.readouterr().out
    h = A.heldout("a100-80gb", "bf16", False)
    assert f"{100 * h['mean']:.1f}% on average" in " ".join(out.split())
    assert main(["plan", "--gpus", "16", "--cluster", "dgx-a100", "--model", "llama2-7b", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["attrs"]["heldout_accuracy"] == h
    out_file = tmp_path / "p.json"
    assert main(["predict", "--gpus", "8", "--cluster", "dgx-a100", "--model", "llama2-7b", "--tp", "1",
                 "--out", str(out_file)]) == 0
    assert "accuracy: on" in capsys.readouterr().out
    rec = json.loads(out_file.read_text())
    assert rec["heldout_accuracy"] == h
    # the annotation does not stop the report being read back (parsim.compare / report)
    from parsim.predict import StepReport
    assert StepReport.from_dict(rec).step_time_s == pytest.approx(rec["step_time_s"])


def test_memory_statement_warns_when_a_fit_would_not_survive_the_worst_published_error():
    m = A.memory_heldout("fsdp2")
    assert m is not None and m["worst_under"] < 0
    under = -m["worst_under"]
    usable = 89.2
    # a plan using 80 GiB fits, but at the worst published under-prediction it needs 80 / (1 - under) GiB
    s = A.memory_statement("fsdp2", 80.0, usable)
    assert (80.0 / (1 - under) > usable) == ("fits only if" in s)
    assert "fits only if" in s and f"{80.0 / (1 - under):.1f} GiB" in s
    # a small plan survives it: no warning
    assert "fits only if" not in A.memory_statement("fsdp2", 40.0, usable)
    # a plan that does not fit anyway: no "fits only if"
    assert "fits only if" not in A.memory_statement("fsdp2", 95.0, usable)
    # nothing published for Megatron's accounting: said
    assert A.memory_heldout("megatron") is None
    assert "no published peak memory" in A.memory_statement("megatron", 50.0, usable)


def test_coverage_note_names_knobs_outside_the_published_runs():
    seen = A.heldout("h100-sxm", "fp8", False)["regime"]
    # every knob inside what the held-out H100 fp8 dense runs used: nothing to say
    inside = {"tp": max(seen["tp"]), "pp": max(seen["pp"]), "cp": 1, "ep": 1, "zero": seen["zero"][0],
              "schedule": seen["schedule"][0], "recompute": seen["recompute"][0]}
    assert A.coverage_note("h100-sxm", "fp8", False, inside) == ""
    # a degree above the largest used, a ZeRO stage and a schedule none ran: each named with what they used
    outside = dict(inside, tp=2 * max(seen["tp"]), zero=2, schedule="zbv")
    note = A.coverage_note("h100-sxm", "fp8", False, outside)
    assert f"tp {2 * max(seen['tp'])} (they used " in note
    assert "ZeRO stage 2 (they used" in note and "schedule zbv (they used" in note
    assert 2 not in seen["zero"] and "zbv" not in seen["schedule"]
    # no held-out figure (H200): no coverage claim either
    assert A.coverage_note("h200", "bf16", False, outside) == ""
    # a sequence length above the longest published run (trial 2026-11-30: B200 runs are 2K-8K; 32K was not flagged);
    # one inside (or unstated: the model's) says nothing
    assert max(seen["seq_len"]) == 8192
    assert "sequence length 32768 (they used " in A.coverage_note("h100-sxm", "fp8", False, dict(inside, seq_len=32768))
    assert A.coverage_note("h100-sxm", "fp8", False, dict(inside, seq_len=8192)) == ""
    assert A.coverage_note("h100-sxm", "fp8", False, dict(inside, seq_len=None)) == ""


def test_the_statement_gives_the_shipped_constants_error_and_the_models_own_runs():
    # trial 2026-11-30: the figure is held out (constants fitted on the other tables) while a user gets the shipped
    # constants; and a Qwen3-30B-A3B answer quoted the pooled MoE figure without its own runs' errors
    h = A.heldout("h100-sxm", "fp8", False)
    sh = h["shipped"]
    s = A.statement("h100-sxm", "fp8", False)
    assert f"with the shipped constants the same runs are off by {100 * sh['mean']:.1f}% on average" in s
    note = A.model_note("b200", "mxfp8", True, "qwen3-30b-a3b")
    errs = A.heldout("b200", "mxfp8", True)["by_model"]["qwen3-30b-a3b"]
    assert note.startswith("qwen3-30b-a3b's own published runs on b200 (3)")
    assert all(f"{100 * e:+.0f}%" in note for e in errs)
    assert A.model_note("b200", "fp8", False, "qwen3-30b-a3b") == ""      # not among the dense runs: nothing said
    assert A.model_note("b200", "fp8", True, None) == ""


def test_json_labels_every_figure_with_the_runs_it_pools(capsys):
    # trial 2026-11-30: plan JSON on H100 bf16 carried heldout_accuracy: null while the text named the nearest evidence
    # (FP8 dense H100 runs): a machine reader could neither see that evidence nor which GPU type / precision class a
    # figure was about. Now "accuracy" labels each figure with heldout.json's kind.
    assert main(["plan", "--gpus", "16", "--model", "llama3-8b", "--top", "2", "--format", "json"]) == 0
    acc = json.loads(capsys.readouterr().out)["attrs"]["accuracy"]
    assert acc["kind"] == "h100-sxm/16-bit/dense" and acc["heldout"] is None
    near = acc["nearest_evidence"]
    assert near["kind"] == "h100-sxm/fp8/dense" and near["mean"] == A.heldout("h100-sxm", "fp8", False)["mean"]
    assert acc["statement"] == A.statement("h100-sxm", "bf16", False)
    # where the kind has its own figure, no nearest evidence is borrowed; the model's own runs are named
    a = A.labelled("b200", "fp8", True, "qwen3-30b-a3b")
    assert a["kind"] == "b200/fp8/moe" and a["heldout"] == A.heldout("b200", "fp8", True) and a["nearest_evidence"] is None
    assert a["model_note"] and "qwen3-30b-a3b's own published runs" in a["model_note"]
    # a device without published tables: no kind, nothing borrowed across chips
    c = A.labelled("cpu", "fp32", False)
    assert c["kind"] is None and c["heldout"] is None and c["nearest_evidence"] is None
