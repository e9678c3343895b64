"""The dtype gradients are accumulated and reduced in (--grad-dtype; parsim.costs.memory.GRAD_DTYPES): it sets the
gradient bytes per parameter and the bytes the data-parallel reduction moves, with each framework's default."""
import subprocess
import sys

import numpy as np
import pytest

from parsim.costs import memory as M
from parsim.costs.network import collective_time_s
from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.plan import DTYPES, Plan
from parsim.predict import get_cluster, predict

GiB = 2 ** 30
LLAMA7 = load_model("llama2-7b")
BF16, FP16, FP32, FP8 = (DTYPES.index(d) for d in ("bf16", "fp16", "fp32", "fp8"))


def test_each_framework_default_reads_its_source():
    # Megatron-LM arguments.py: bf16 forces accumulate_allreduce_grads_in_fp32 ("bfloat16 requires gradient
    # accumulation and all-reduce to be done in fp32"); fp16 leaves it off (16-bit gradients); FP8 plans keep bf16
    # parameters, so fp32 gradients. torchtitan's FSDP2 reduces in fp32; DeepSpeed (ZeRO paper) in 16 bits.
    assert list(M.grads_fp32("megatron", [BF16, FP16, FP32, FP8])) == [True, False, True, True]
    assert list(M.grads_fp32("fsdp2", [BF16, FP16, FP8])) == [True, True, True]
    assert list(M.grads_fp32("deepspeed", [BF16, FP16, FP8])) == [False, False, False]
    # an explicit choice wins, except that fp32 training has fp32 gradients whatever is asked
    assert list(M.grads_fp32("megatron", [BF16, FP16, FP32], "16bit")) == [False, False, True]
    assert list(M.grads_fp32("deepspeed", [BF16, FP16], "fp32")) == [True, True]


def test_megatron_bytes_per_parameter_follow_its_distributed_optimizer_table():
    # Megatron-LM docs/source/api-guide/dist_optimizer.md: "bf16 param, fp32 grads": non-distributed 18, distributed
    # 6 + 12/d; "fp16 param, fp16 grads": 20 and 4 + 16/d, where 4 of the 16 are the optimizer's fp32 gradient copy
    # made in the step (counted apart: step_grad_copy_bytes_per_param). d = 8:
    w, g, o = (float(x) for x in M.state_bytes_per_param(8, 1, BF16, "megatron"))
    assert (w, g, o) == (2.0, 4.0, 12.0 / 8)                       # 6 + 12/8 = 7.5
    w, g, o = (float(x) for x in M.state_bytes_per_param(8, 1, BF16, "megatron", "16bit"))
    copy = float(M.step_grad_copy_bytes_per_param(8, 1, BF16, "megatron", "16bit"))
    assert (w, g, o, copy) == (2.0, 2.0, 12.0 / 8, 4.0 / 8)        # 4 + 16/8 = 6 at the step
    assert w + g + o + copy == pytest.approx(4 + 16 / 8)
    w, g, o = (float(x) for x in M.state_bytes_per_param(1, 0, FP16, "megatron"))
    assert w + g + o + float(M.step_grad_copy_bytes_per_param(1, 0, FP16, "megatron")) == 20.0
    # no copy with fp32 gradients (they are the main gradients), none under FSDP2 or DeepSpeed's accounting
    assert float(M.step_grad_copy_bytes_per_param(8, 1, BF16, "megatron")) == 0.0
    assert float(M.step_grad_copy_bytes_per_param(8, 1, BF16, "fsdp2", "16bit")) == 0.0
    # FSDP2 with a bf16 reduce dtype keeps its fp32 sharded gradient (the reduced shard is cast to the parameter's
    # dtype): memory as with fp32 reduction, only the reduce-scatter's bytes change
    assert M.state_bytes_per_param(8, 3, BF16, "fsdp2", "16bit") == M.state_bytes_per_param(8, 3, BF16, "fsdp2")
    # ... but below ZeRO-2 its unsharded gradient, accumulated over micro-batches, stays in the reduce dtype (torch's
    # FSDPParam.to_accumulated_grad_if_needed upcasts only when the dtypes differ): 2 B instead of 4 (trial 2026-11-30:
    # llama3-8b, pp 2, ZeRO-1, fsdp2 printed grads 14.96 GiB under both dtypes; 2 B x 4.0e9 params = 7.48 GiB)
    for z in (0, 1):
        assert float(M.state_bytes_per_param(8, z, BF16, "fsdp2", "16bit")[1]) == 2.0
        assert float(M.state_bytes_per_param(8, z, BF16, "fsdp2")[1]) == 4.0
    assert float(M.grad_element_bytes("fsdp2", BF16, "16bit")) == 2.0 and float(M.grad_element_bytes("fsdp2", BF16)) == 4.0


def test_predict_prices_gradients_in_their_dtype():
    # llama2-7b, dp 16 ZeRO-1, no overlap: exposed = reduce-scatter of the gradients + all-gather of the bf16
    # parameters. Megatron's default moves 4 B per gradient, --grad-dtype 16bit 2 B; the all-gather 2 B either way.
    cl = get_cluster("dgx-h100", 16)
    plan = Plan(dp=16, micro_batch=1, global_batch=16, zero=1, overlap=False)
    ranks = list(range(16))
    t_ag = collective_time_s(cl, "all_gather", "native", ranks, LLAMA7.params * 2)
    for gd, b in ((None, 4), ("fp32", 4), ("16bit", 2)):
        r = predict(LLAMA7, cl, plan, grad_dtype=gd)
        t_rs = collective_time_s(cl, "reduce_scatter", "native", ranks, LLAMA7.params * b)
        assert r.breakdown_s["dp_comm_exposed"] == pytest.approx(t_rs + t_ag, rel=1e-6), gd
        assert r.memory_breakdown_GiB["grads"] == pytest.approx(LLAMA7.params * b / GiB, rel=1e-3), gd
        assert r.grad_dtype == ("16bit" if gd == "16bit" else "fp32")
    # the note says which dtype was priced and how it was chosen
    note = predict(LLAMA7, cl, plan).notes[0]
    assert "2+4+12 B/param" in note and "gradients reduced in fp32, the framework default (--grad-dtype)" in note
    note16 = predict(LLAMA7, cl, plan, grad_dtype="16bit").notes[0]
    assert "2+2+12 B/param" in note16 and "gradients reduced in bf16" in note16


def test_the_step_copy_raises_the_peak_only_beyond_the_activations_it_replaces():
    # Without activations to replace (tiny sequences) the peak is the step's: states + the fp32 copy; with many
    # activations the forward/backward peak is unchanged by it.
    cl = get_cluster("dgx-h100", 8)
    small = Plan(dp=8, micro_batch=1, global_batch=8, seq_len=16, zero=1)
    r = predict(LLAMA7, cl, small, grad_dtype="16bit")
    copy = LLAMA7.params * 4 / 8
    acts = r.memory_breakdown_GiB["activations"] * GiB
    assert acts < copy
    assert r.memory_breakdown_GiB["optimizer"] * GiB == pytest.approx(LLAMA7.params * 12 / 8 + copy - acts, rel=1e-3)
    big = Plan(dp=8, micro_batch=4, global_batch=32, seq_len=4096, zero=1)
    rb = predict(LLAMA7, cl, big, grad_dtype="16bit")
    assert rb.memory_breakdown_GiB["activations"] * GiB > copy
    assert rb.memory_breakdown_GiB["optimizer"] * GiB == pytest.approx(LLAMA7.params * 12 / 8, rel=1e-3)
    # and 16-bit gradients never need more memory than fp32 ones
    for p in (small, big):
        assert predict(LLAMA7, cl, p, grad_dtype="16bit").memory_GiB < predict(LLAMA7, cl, p).memory_GiB


def test_a_grad_dtype_outside_the_choices_is_refused():
    with pytest.raises(ParsimError, match="grad dtype 'bf32': expected one of fp32, 16bit"):
        predict(LLAMA7, "dgx-h100", Plan(dp=8, global_batch=8), grad_dtype="bf32")
    with pytest.raises(ParsimError, match="grad dtype"):
        M.grads_fp32("megatron", np.array([BF16]), "fp16")


def test_cli_takes_grad_dtype_and_says_it():
    run = lambda *a: subprocess.run([sys.executable, "-m", "parsim", *a], capture_output=True, text=True)
    out = run("predict", "--model", "llama2-7b", "--gpus", "8", "--dp", "8", "--global-batch", "8", "--zero", "1",
              "--grad-dtype", "16bit")
    assert out.returncode == 0, out.stderr
    assert "megatron accounting, 16-bit gradients" in " ".join(out.stdout.split())
    bad = run("predict", "--model", "llama2-7b", "--gpus", "8", "--grad-dtype", "fp8")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--grad-dtype" in bad.stderr


def test_plan_says_when_gradients_were_priced_in_fp32_by_default():
    # the published NeMo / Megatron-Bridge runs keep bf16 gradients; a plan ranked with Megatron's fp32 default says so
    # (FSDP2: only its reduce-scatter changes), and says nothing once the user chose
    run = lambda *a: subprocess.run([sys.executable, "-m", "parsim", "plan", "--gpus", "16", "--model", "llama2-7b",
                                     "--top", "2", *a], capture_output=True, text=True)
    flat = lambda r: " ".join(r.stdout.split())
    default = run()
    assert default.returncode == 0, default.stderr
    assert "gradients priced in fp32 (megatron's default for bf16 parameters); with --grad-dtype 16bit they take 2 B less" in flat(default)
    fsdp = run("--memory-accounting", "fsdp2")
    assert "with --grad-dtype 16bit the reduce-scatter moves half the bytes" in flat(fsdp)
    for chosen in (run("--grad-dtype", "16bit"), run("--grad-dtype", "fp32"), run("--memory-accounting", "deepspeed")):
        assert chosen.returncode == 0 and "gradients priced in fp32" not in flat(chosen)


def test_trial_wording_fixes_refuse_or_say_the_case():
    # 16-bit gradients asked for fp32 training: refused (they would be silently ignored)
    with pytest.raises(ParsimError, match="grad dtype 16bit with dtype fp32"):
        predict(LLAMA7, "dgx-h100", Plan(dp=8, global_batch=8, dtype="fp32"), grad_dtype="16bit")
    # a headroom at or above the capacity leaves nothing usable: refused (was '= -120.35 GiB usable')
    with pytest.raises(ParsimError, match=r"memory headroom 200.00 GiB: expected less than the capacity of a h100-sxm"):
        predict(LLAMA7, "dgx-h100", Plan(dp=8, global_batch=8), headroom_bytes=200 * GiB)
    # nothing fits on 1 GPU: the states alone (18 B x 6.74e9 = 113 GiB) are past it, so a smaller batch cannot help
    from parsim.search import search
    with pytest.raises(ParsimError, match=r"model states alone .* need 112\.9[0-9] GiB: more GPUs"):
        search("llama2-7b", "dgx-h100", 1)
    # the 16-bit Megatron step copy is said beside the optimizer row it is counted in
    r = predict(LLAMA7, "dgx-h100", Plan(dp=8, global_batch=8, zero=1), grad_dtype="16bit")
    (note,) = [n for n in r.notes if n.startswith("gradients:")]
    assert "fp32 copy" in note and "megatron's 20 B/param at the step" in note
    assert not [n for n in predict(LLAMA7, "dgx-h100", Plan(dp=8, global_batch=8, zero=1)).notes
                if n.startswith("gradients:")]
    # TP overlap not priced is said on predict too (was only on plan)
    r = predict(LLAMA7, "dgx-h100", Plan(dp=1, tp=8, global_batch=8, sequence_parallel=True))
    assert any(n.startswith("overlap: TP (--tp-overlap)") for n in r.notes)
    r = predict(LLAMA7, "dgx-h100", Plan(dp=1, tp=8, global_batch=8, sequence_parallel=True, tp_overlap=True))
    assert not any(n.startswith("overlap:") for n in r.notes)
