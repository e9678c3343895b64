"""What a new user's trial found (each a kind of fault: a confident answer that is not, or a silent surprise)."""
import json

import pytest

from parsim import accuracy as A
from parsim.cli import main


def test_moe_plans_quote_moe_evidence_not_dense(monkeypatch):
    # H100 SXM has 16-bit MoE runs (GPT-OSS-120B BF16): a bf16 MoE plan quotes them, no nearest evidence needed
    assert A.heldout("h100-sxm", "bf16", True)["models"] == ["gpt-oss-120b"]
    assert "16-bit MoE runs on h100-sxm" in A.statement("h100-sxm", "bf16", True)
    # ... and still says its 16-bit constant is an assumption: MoE rows are never fitted on (B200 likewise)
    for dev in ("h100-sxm", "b200"):
        assert f"16-bit constant for {dev} (0.735) is fitted on no published run of it" in A.statement(dev, "bf16", True)
    assert "fitted on no published run" not in A.statement("b200", "fp8", True)     # its fp8 constant is fitted
    # without them (as before the GPT-OSS preset): the nearest evidence is the fp8 MoE runs (errors > 100%), never the
    # fp8 dense runs (6%) that would make an MoE answer look sure
    kinds = {k: v for k, v in A._load().items() if k != "h100-sxm/16-bit/moe"}
    monkeypatch.setattr(A, "_load", lambda: kinds)
    (cls, moe), o = A.nearest_evidence("h100-sxm", "bf16", True)
    assert (cls, moe) == ("fp8", True) and o == A.heldout("h100-sxm", "fp8", True)
    assert "nearest evidence, fp8 MoE runs" in A.statement("h100-sxm", "bf16", True)
    # a dense bf16 plan: fp8 dense runs of the same chip
    assert A.nearest_evidence("h100-sxm", "bf16", False)[0] == ("fp8", False)
    # the ranking note uses the nearest evidence too, and says so
    note = A.ranking_note([10.0, 10.01], "h100-sxm", "bf16", False)
    assert note.startswith("plans 1–2") and "nearest evidence's mean error" in note


def test_plan_with_nothing_that_fits_is_an_error_naming_the_smallest_need(capsys):
    assert main(["plan", "--gpus", "8", "--model", "llama3-405b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no plan of llama3-405b on 8 × h100-sxm fits" in err[0]
    assert "GiB headroom per device, the device has 79.65 GiB" in err[0]
    # a headroom larger than the device: refused up front in one line, never an empty ranking with exit 0
    assert main(["plan", "--gpus", "8", "--model", "gpt3-125m", "--memory-headroom", "500GiB"]) == 2
    assert "memory headroom 500.00 GiB: expected less than the capacity of a h100-sxm" in capsys.readouterr().err


def test_predict_defaults_to_plans_global_batch(capsys):
    # plan ranks at 1024 sequences; predict without --global-batch prices the same batch (rounded up to whole
    # micro-batches per dp rank), so plan's #1 copied into predict gives plan's step time
    assert main(["predict", "--gpus", "64", "--tp", "8", "--pp", "4", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["global_batch"] == 1024
    assert main(["predict", "--gpus", "48", "--micro-batch", "2", "--format", "json"]) == 0
    # dp 48 x mb 2 = 96 per step: 1024 rounded up to 11 x 96 = 1056
    assert json.loads(capsys.readouterr().out)["plan"]["global_batch"] == 1056


def test_abbreviated_flags_are_refused(capsys):
    assert main(["plan", "--gpus", "64", "--glob", "512"]) == 2
    assert "unrecognized arguments: --glob 512" in capsys.readouterr().err


def test_missing_torch_is_one_line_naming_the_install(capsys):
    from parsim.errors import run_main

    def needs_torch():
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    assert run_main(needs_torch, "parsim run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("parsim run: error: this needs torch") and "pip install -e '.[torch]'" in err
    assert "\n" not in err

    def other():
        raise ModuleNotFoundError("No module named 'numpyy'", name="numpyy")
    with pytest.raises(ModuleNotFoundError):     # anything else is a bug: its traceback is kept
        run_main(other, "parsim x")


def test_small_wording_faults():
    from parsim.model import _count, from_hf_config
    assert _count(1.01e12) == "1.01 T" and _count(46.7e9) == "46.7 B"
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": -2, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100,
           "max_position_embeddings": 256}
    from parsim.errors import ParsimError
    with pytest.raises(ParsimError, match=r"num_hidden_layers \(parsim's layers\) = -2"):
        from_hf_config(cfg, "neg")


def test_plan_says_fp8_mfu_is_against_the_bf16_peak_and_dry_run_says_no_overlap(capsys):
    assert main(["plan", "--gpus", "8", "--model", "llama2-7b", "--dtype", "fp8", "--top", "1"]) == 0
    assert "fp8: MFU against the bf16 peak" in capsys.readouterr().out
    assert main(["run", "--dry-run", "--model", "gpt-tiny", "--nproc", "2"]) == 0
    assert "not overlapped with it" in " ".join(capsys.readouterr().out.split())


def test_presets_describe_devices_in_one_line(capsys):
    # the README promises a one-line description of each preset: for a device its memory, bandwidth, peak and the
    # fitted sustained fractions, not only the file it is read from
    assert main(["presets", "devices"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "h100-sxm gpu: 79.65 GiB at 3,350 GB/s, bf16 989, fp8 1,979 TFLOP/s peak" in out
    # the CPU trains in fp32 (its peak is the fp32 one); under the tests it is the measured VM profile
    cpu = out[out.index("cpu cpu: "):]
    assert "fp32" in cpu.split("peak")[0] and "measured here:" in cpu.split("h100")[0]


def test_second_trial_findings(capsys):
    # a bare number of headroom would be bytes: refused, with the unit it surely meant
    assert main(["plan", "--gpus", "8", "--memory-headroom", "3"]) == 2
    assert "size '3' has no unit: expected e.g. 3GiB" in capsys.readouterr().err
    # the 16-bit H100 SXM answer says its constant is an assumption, and flags knobs outside the nearest evidence
    s = A.statement("h100-sxm", "bf16", False)
    assert "16-bit constant for h100-sxm (0.735) is fitted on no published run of it (an assumption" in s
    # an FP8 plan on H200 (no fp8 constant) says which constant it really takes (trial 2026-11-30)
    s8 = A.statement("h200", "fp8", False)
    assert "h200 has no fitted fp8 constant: its fp8 plans take the 16-bit one, 0.735" in s8
    cov = A.coverage_note("h100-sxm", "bf16", False, {"tp": 8, "pp": 2, "cp": 1, "ep": 1, "zero": 0,
                                                         "schedule": "1f1b", "recompute": "selective"})
    assert cov.startswith("outside the published runs behind the nearest evidence: ZeRO stage 0")
    # a pooled MoE figure names the models behind it (the H100 one is one Qwen3 plan in three releases)
    assert "fp8 MoE runs on h100-sxm of qwen3-30b-a3b (3 tables" in A.statement("h100-sxm", "fp8", True)
    # plan with fsdp2 accounting: plan #1's fit judged against the worst published memory error, as predict does
    assert main(["plan", "--gpus", "64", "--memory-accounting", "fsdp2", "--top", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    m = A.memory_heldout("fsdp2")
    assert f"{100 * m['max']:.1f}% at worst" in out and ("plan #1 fits only if" in out) == (
        "fits only if" in A.memory_statement("fsdp2", _plan1_mem(), 73.67))
    # CSV carries no accuracy columns: the lines go to stderr; JSON carries the cannot-rank-apart count
    assert main(["plan", "--gpus", "64", "--format", "csv", "--top", "2"]) == 0
    assert "accuracy: unknown" in capsys.readouterr().err
    # (counted over every fitting plan, not only the --top shown: trial 2026-11-30, --top 1 said 1 where 146 were within)
    assert main(["plan", "--gpus", "64", "--format", "json", "--top", "100000"]) == 0
    d = json.loads(capsys.readouterr().out)
    steps = [p["step_time_s"] for p in d["plans"]]
    basis = A.nearest_evidence("h100-sxm", "bf16", False)[1]["mean"]        # no 16-bit H100 run: nearest evidence
    within = sum(t / steps[0] - 1 <= basis for t in steps)
    assert d["attrs"]["heldout_cannot_rank_apart"] == within > 10
    assert main(["plan", "--gpus", "64", "--format", "json", "--top", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["attrs"]["heldout_cannot_rank_apart"] == within
    # no valid plan: the counts and the operands of the simplest plan's first broken rule
    assert main(["plan", "--gpus", "8", "--model", "gpt3-175b", "--seq-len", "4096"]) == 2
    assert "(e.g. dp 8: seq-len 4,096 > the 2,048 learned positions of gpt3-175b" in capsys.readouterr().err


def _plan1_mem():
    from parsim.search import search
    res = search(gpus=64, accounting="fsdp2", result=True, top=1)
    return float(res.columns["memory_GiB"][0])


def test_dry_run_refuses_what_the_run_would_refuse(capsys):
    # trial 2026-11-30: --dry-run said "would run: yes" (exit 0) for a hierarchical sync whose --local-size does not
    # divide dp (the ranks then failed in their first gradient sync) and for nccl on a machine without CUDA GPUs
    assert main(["run", "--model", "gpt-tiny", "--nproc", "2", "--dp", "2", "--grad-sync", "hierarchical",
                 "--local-size", "3", "--dry-run"]) == 2
    assert "the dp group of 2 ranks is not a whole number of nodes of 3 ranks" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert main(["run", "--model", "gpt-tiny", "--nproc", "2", "--dp", "2", "--backend", "nccl", "--dry-run"]) == 2
        assert "backend nccl needs CUDA GPUs" in capsys.readouterr().err
    # a --local-size that divides dp still runs
    assert main(["run", "--model", "gpt-tiny", "--nproc", "2", "--dp", "2", "--grad-sync", "hierarchical",
                 "--local-size", "1", "--dry-run"]) == 0


def test_run_against_another_device_says_so(capsys):
    # trial 2026-11-30: `run --cluster dgx-h100` with gloo compared CPU ranks with an H100 prediction without a word
    assert main(["run", "--model", "gpt-tiny", "--nproc", "2", "--dp", "2", "--cluster", "dgx-h100", "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the prediction is for h100-sxm (gpu) but this gloo run measures CPU ranks" in out
    assert main(["run", "--model", "gpt-tiny", "--nproc", "2", "--dp", "2", "--dry-run"]) == 0
    assert "the comparison is across devices" not in capsys.readouterr().out


def test_coverage_flags_degrees_below_the_published_range():
    # trial 2026-11-30: gpt-oss-120b on 64 B200, plan #1 at ep 1 while every published 16-bit MoE run on B200 used
    # ep 8 or 64 (no all-to-all at all at ep 1): said as an extrapolation, as a degree above the range is
    seen = A.heldout("b200", "bf16", True)["regime"]["ep"]
    assert min(seen) > 1
    note = A.coverage_note("b200", "bf16", True, {"tp": 1, "pp": 1, "cp": 1, "ep": 1, "seq_len": 4096,
                                                    "zero": 1, "schedule": "1f1b", "recompute": "none"})
    assert f"ep 1 (they used {', '.join(map(str, seen))})" in note
    inside = A.coverage_note("b200", "bf16", True, {"tp": 1, "pp": 1, "cp": 1, "ep": min(seen), "seq_len": 4096,
                                                     "zero": 1, "schedule": "1f1b", "recompute": "none"})
    assert "ep " not in inside


def test_plan_searches_only_the_frameworks_recompute_policies():
    # trial 2026-11-30: #1 under the megatron accounting was a selective-op plan (torchtitan's op-level SAC), which
    # Megatron-LM cannot run. Each accounting searches its own framework's policies (parsim.plan.FRAMEWORK_RECOMPUTE).
    from parsim.plan import FRAMEWORK_RECOMPUTE
    from parsim.search import search
    for acc in ("megatron", "fsdp2"):
        res = search("llama3-8b", "dgx-h100", 8, 64, None, "bf16", result=True, accounting=acc)
        assert set(res.columns["recompute"]) <= set(FRAMEWORK_RECOMPUTE[acc])
    assert "selective-op" not in FRAMEWORK_RECOMPUTE["megatron"] and "selective" not in FRAMEWORK_RECOMPUTE["fsdp2"]
    # asked for explicitly, it is priced and said
    from parsim.plan import Plan
    from parsim.predict import predict
    rep = predict("llama3-8b", "dgx-h100", Plan(dp=8, micro_batch=1, global_batch=8, recompute="selective-op"), gpus=8)
    assert any(n.startswith("recompute: selective-op is not a policy of the megatron") for n in rep.notes)


def test_one_sided_evidence_is_said_as_a_bound():
    # every published MoE run on B200 ran slower than predicted (+2% to +211%): the statement says the prediction
    # is an upper bound on throughput, not a symmetric error bar; two-sided evidence (dense fp8 on B200) says nothing
    h = A.heldout("b200", "fp8", True)
    assert h["bias"] == pytest.approx(h["mean"])
    assert "read the predicted throughput as an upper bound" in A.statement("b200", "fp8", True)
    assert "bound" not in A.statement("b200", "fp8", False)


def test_evidence_from_another_part_of_the_chip_is_said():
    # trial 2026-11-30: an A100-40GB plan quoted the A100-80GB runs as its own
    assert "those runs are on a100-80gb, priced here for a100-40gb" in A.statement("a100-40gb", "bf16", False)
    assert "priced here for" not in A.statement("a100-80gb", "bf16", False)


def test_a_chip_without_runs_names_its_same_die_evidence():
    # H200 has no published run; H100 SXM (the same GH100 compute die, HBM3 instead of HBM3e) has 18 fp8 dense runs
    s = A.statement("h200", "fp8", False)
    assert s.startswith("accuracy: unknown") and "h100-sxm, the same compute die, has fp8 dense runs" in s
    assert "same compute die" not in A.statement("h100-sxm", "bf16", False)     # its own chip's evidence comes first
