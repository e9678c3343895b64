"""The loss kernel (--cross-entropy; parsim.costs.memory.CROSS_ENTROPY_IMPLS): Megatron's native vocab-parallel loss
keeps fp32 logits plus one fp32 gradient per micro-batch at its backward; Transformer Engine's fused
parallel_cross_entropy (cross_entropy_fusion_impl te, the Megatron-Bridge performance recipes') keeps the 16-bit logits
and writes the gradient over them (transformer_engine/pytorch/cross_entropy.py)."""
import subprocess
import sys

import numpy as np
import pytest

from parsim import layer as Ly
from parsim.costs import memory as M
from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.plan import DTYPES, Plan
from parsim.predict import get_cluster, predict

GiB = 2 ** 30
BF16, FP32 = DTYPES.index("bf16"), DTYPES.index("fp32")
QWEN = load_model("qwen3-30b-a3b")       # vocab 151,936
LLAMA = load_model("llama3-8b")          # vocab 128,256


def test_logit_bytes_per_kernel():
    # native: 4 B kept + 1 more fp32 tensor in Megatron's backward (gradient over exp_logits), torchtitan's eager loss 2
    # (3 with loss_parallel); te: the logits' own 2 B, nothing added
    assert float(M.loss_logit_bytes(2.0)) == 4.0 and float(M.loss_logit_bytes(2.0, "native")) == 4.0
    assert float(M.loss_logit_bytes(2.0, "te")) == 2.0 and float(M.loss_logit_bytes(4.0, "te")) == 4.0
    assert float(M.loss_backward_logits("megatron", 1)) == 1.0
    assert float(M.loss_backward_logits("fsdp2", 1)) == 2.0 and float(M.loss_backward_logits("fsdp2", 2)) == 3.0
    assert float(M.loss_backward_logits("megatron", 8, "te")) == 0.0


def test_memory_drops_by_the_logits_arithmetic():
    # Qwen3-30B-A3B on 16 H100 as Megatron-Bridge's 25.09/25.11 recipe runs it (pp 2 vpp 24 ep 8, mb 2, seq 4096,
    # bf16 gradients). The last stage holds the loss of one micro-batch at the peak (1F1B family):
    # native: 4 B x (1 + 1) x 2 x 4096 x 151936 = 9.27 GiB; te: 2 B x 1 x ... = 2.32 GiB -> 6.96 GiB less, on the last
    # stage, where the Megatron-Bridge recipe's plan was priced at 74.0 GiB (over 80 GiB less parsim's headroom).
    entries = 2 * 4096 * QWEN.vocab
    assert 8 * entries / GiB == pytest.approx(9.27, abs=0.01) and 2 * entries / GiB == pytest.approx(2.32, abs=0.01)
    cl = get_cluster("dgx-h100", 16)
    plan = Plan(dp=8, pp=2, vpp=24, ep=8, micro_batch=2, global_batch=512, seq_len=4096, dtype="bf16", zero=1,
                schedule="interleaved", recompute="none")
    native = predict(QWEN, cl, plan, grad_dtype="16bit")
    te = predict(QWEN, cl, plan, grad_dtype="16bit", cross_entropy="te")
    assert native.cross_entropy == "native" and te.cross_entropy == "te"
    drop = (native.memory_breakdown_GiB["activations"] - te.memory_breakdown_GiB["activations"])
    if native.memory_worst_rank == te.memory_worst_rank == plan.pp - 1:
        assert drop == pytest.approx(6 * entries / GiB, rel=1e-3)
    assert native.memory_GiB - te.memory_GiB <= 6 * entries / GiB + 1e-6
    assert te.memory_GiB < native.memory_GiB
    # and the loss pass reads 2-byte logits 3 times forward, 2 backward, not 4-byte ones: te is never slower
    assert te.step_time_s < native.step_time_s


def test_head_op_bytes_per_kernel():
    # Per token per vocabulary entry: native fp32 3 passes forward (12 B), 2 backward (8 B); te bf16 6 B and 4 B
    T, V = 4096.0, LLAMA.vocab
    nat = {op.name: op for op in Ly.head_ops(LLAMA, 1, 4096, 1, BF16)}["cross_entropy"]
    te = {op.name: op for op in Ly.head_ops(LLAMA, 1, 4096, 1, BF16, cross_entropy="te")}["cross_entropy"]
    assert float(nat.bytes) == 12 * T * V and float(nat.bwd_bytes) == 8 * T * V
    assert float(te.bytes) == 6 * T * V and float(te.bwd_bytes) == 4 * T * V
    # fp32 training: te reads fp32 logits, as many bytes as the native loss
    te32 = {op.name: op for op in Ly.head_ops(LLAMA, 1, 4096, 1, FP32, cross_entropy="te")}["cross_entropy"]
    assert float(te32.bytes) == float(nat.bytes)


def test_refused_outside_megatron_and_outside_the_choices():
    plan = Plan(dp=8, micro_batch=1, global_batch=8)
    with pytest.raises(ParsimError, match="cross entropy 'liger': expected one of native, te"):
        predict(LLAMA, "dgx-h100", plan, cross_entropy="liger")
    for acc in ("fsdp2", "deepspeed"):
        with pytest.raises(ParsimError, match=f"cross entropy 'te' with memory accounting '{acc}'"):
            predict(LLAMA, "dgx-h100", plan, accounting=acc, cross_entropy="te")
    # Transformer Engine is CUDA-only: refused on a CPU profile (predict and plan)
    with pytest.raises(ParsimError, match="cross entropy 'te' on device cpu.*NVIDIA GPUs only"):
        predict(LLAMA, "cpu-local", Plan(dp=1, micro_batch=1, global_batch=1), gpus=1, cross_entropy="te")
    from parsim.search import search
    with pytest.raises(ParsimError, match="NVIDIA GPUs only"):
        search("gpt-tiny", "cpu-local", 1, global_batch=1, cross_entropy="te")
    # native is every framework's own
    assert predict(LLAMA, "dgx-h100", plan, accounting="fsdp2", cross_entropy="native").cross_entropy == "native"


def test_cli_takes_it_says_it_and_refuses_it_where_it_cannot_run():
    run = lambda *a: subprocess.run([sys.executable, "-m", "parsim", *a], capture_output=True, text=True)
    base = ("--model", "llama3-8b", "--gpus", "8", "--global-batch", "8", "--zero", "1")
    native = run("predict", *base)
    assert native.returncode == 0, native.stderr
    flat = " ".join(native.stdout.split())
    # 1 x 8192 x 128256 entries: native 4 B kept -> 3.91 GiB per micro-batch, + 3.91 GiB once; te 2 B -> 1.96 GiB
    assert "native fp32 cross entropy keeps 3.91 GiB of fp32 logits per in-flight micro-batch" in flat
    assert "3.91 GiB more once, at its backward" in flat and "--cross-entropy te" in flat
    assert "keeps 1.96 GiB per micro-batch and nothing more" in flat
    te = run("predict", *base, "--cross-entropy", "te")
    assert te.returncode == 0 and "Transformer Engine fused loss" in " ".join(te.stdout.split())
    bad = run("predict", *base, "--cross-entropy", "te", "--memory-accounting", "fsdp2")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "megatron" in bad.stderr
    # the torch backend runs torch's loss: `run` has no such flag (a te prediction would not be of what runs)
    r = run("run", "--model", "gpt-tiny", "--nproc", "1", "--dry-run", "--cross-entropy", "te")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--cross-entropy" in r.stderr


def test_search_ranks_with_it():
    from parsim.search import search
    res = search("llama3-8b", "dgx-h100", 8, global_batch=64, result=True, cross_entropy="te")
    assert res.attrs["cross_entropy"] == "te"
    native = search("llama3-8b", "dgx-h100", 8, global_batch=64, result=True)
    assert native.attrs["cross_entropy"] == "native"
    # never slower and never more memory for the same top plan
    assert res.table["step_time_s"].iloc[0] <= native.table["step_time_s"].iloc[0] * (1 + 1e-9)
    assert np.isfinite(res.table["memory_GiB"]).all()


def test_plan_says_when_the_native_loss_was_assumed():
    # Qwen3-30B-A3B on 16 H100, plan #1 (its micro-batch, tp, cp): the native loss keeps 8 B per logit entry, te 2 B;
    # said only when not asked for and only under megatron accounting
    run = lambda *a: subprocess.run([sys.executable, "-m", "parsim", "plan", "--gpus", "16", "--model", "qwen3-30b-a3b",
                                     "--top", "1", "--format", "table", *a], capture_output=True, text=True)
    flat = lambda r: " ".join(r.stdout.split())
    default = run()
    assert default.returncode == 0, default.stderr
    said = flat(default)
    assert "loss priced as Megatron's native fp32 cross entropy" in said and "--cross-entropy te" in said
    native, te = (float(x) for x in
                  __import__("re").search(r"\(([\d.]+) GiB of fp32 logits.*?\) ([\d.]+) GiB per micro", said).groups())
    assert native == pytest.approx(2 * te, rel=0.01)        # 4 B kept against 2 B per entry
    for chosen in (run("--cross-entropy", "te"), run("--cross-entropy", "native"), run("--memory-accounting", "fsdp2")):
        assert chosen.returncode == 0 and "loss priced as" not in flat(chosen)
