"""ZeRO and gradient sync as the frameworks run them (issue 12 §3; parsim/costs/dpsync.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsim.costs.dpsync import dp_sync_s, zero_sync_algorithms
from parsim.costs.network import collective_time_s
from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.plan import Plan
from parsim.predict import get_cluster, plan_columns, predict, price

LLAMA7 = load_model("llama2-7b")


# Bytes a llama2-7b gradient sync moves: its reduce-scatter carries the gradients in the dtype they are reduced in
# (fp32 under Megatron's default for bf16 parameters, 2 B under DeepSpeed's or --grad-dtype 16bit), its all-gather
# the bf16 parameters (2 B): parsim.costs.memory.grad_element_bytes
GRADS_FP32, GRADS_16, PARAMS_16 = LLAMA7.params * 4, LLAMA7.params * 2, LLAMA7.params * 2


def _dp_times(cluster, dp, rs_bytes, ag_bytes=PARAMS_16, rs="native", ag="native"):
    ranks = list(range(dp))
    return (collective_time_s(cluster, "reduce_scatter", rs, ranks, rs_bytes),
            collective_time_s(cluster, "all_gather", ag, ranks, ag_bytes))


def test_zero2_with_accumulation_reduces_every_microbatch():
    # issue 12 §3: llama2-7b, dp16, gb 256, mb 1, ZeRO-2, no overlap. parsim priced one reduce-scatter
    # (0.0688 s, as for m = 1) with sharded grads (0.78 GiB). DeepSpeed ZeRO-2 / FSDP2 (default)
    # reduce-scatter after each of the m = 256/16 = 16 micro-batches: 16·t_rs + t_ag (the parameter
    # all-gather after the optimizer), grads stay sharded: 6.74e9 params · 2 B / 16 = 0.78 GiB under
    # DeepSpeed's accounting (16-bit grads; Megatron's fp32 main grads would be 4 B / 16 = 1.57 GiB).
    cl = get_cluster("dgx-h100", 16)
    plan = Plan(dp=16, micro_batch=1, global_batch=256, zero=2, overlap=False)
    r = predict(LLAMA7, cl, plan, accounting="deepspeed")
    assert predict(LLAMA7, cl, plan).memory_breakdown_GiB["grads"] == pytest.approx(
        LLAMA7.params * 4 / 16 / 2 ** 30, rel=1e-3)
    t_rs, t_ag = _dp_times(cl, 16, GRADS_16)
    assert r.breakdown_s["dp_comm_exposed"] == pytest.approx(16 * t_rs + t_ag, rel=1e-6)
    assert r.memory_breakdown_GiB["grads"] == pytest.approx(LLAMA7.params * 2 / 16 / 2 ** 30, rel=1e-3)
    # and it grows with m: 8 micro-batches cost 8 reduce-scatters (Megatron's default: fp32 gradients, 4 B each)
    t_rs32, _ = _dp_times(cl, 16, GRADS_FP32)
    r8 = predict(LLAMA7, cl, plan.with_(global_batch=128))
    assert r8.breakdown_s["dp_comm_exposed"] == pytest.approx(8 * t_rs32 + t_ag, rel=1e-6)
    # the reduction's dtype is the gradients': --grad-dtype 16bit moves 2 B per gradient under Megatron too
    r8_16 = predict(LLAMA7, cl, plan.with_(global_batch=128), grad_dtype="16bit")
    assert r8_16.breakdown_s["dp_comm_exposed"] == pytest.approx(8 * t_rs + t_ag, rel=1e-6)


def test_zero1_reduces_once_and_its_allgather_is_never_hidden():
    # ZeRO-1: grads accumulate unsharded, one reduce-scatter per step; the parameter all-gather
    # follows the optimizer step, so even with overlap it is exposed: exposed >= t_ag.
    cl = get_cluster("dgx-h100", 16)
    plan = Plan(dp=16, micro_batch=1, global_batch=256, zero=1, overlap=False)
    t_rs, t_ag = _dp_times(cl, 16, GRADS_FP32)
    assert predict(LLAMA7, cl, plan).breakdown_s["dp_comm_exposed"] == pytest.approx(t_rs + t_ag, rel=1e-6)
    with_overlap = predict(LLAMA7, cl, plan.with_(overlap=True)).breakdown_s["dp_comm_exposed"]
    assert t_ag * (1 - 1e-9) <= with_overlap <= t_rs + t_ag


def test_zero3_exposed_is_not_double_counted():
    # issue 12 §3: llama2-7b, dp64, seq 64 (m = 1): parsim reported 0.194 s exposed while ZeRO-3's
    # whole traffic, all-gather forward + all-gather backward + reduce-scatter (1.5x an all-reduce,
    # Rajbhandari et al. 2020 §7), is 2·t_ag + t_rs ≈ 0.109 s.
    cl = get_cluster("dgx-h100", 64)
    plan = Plan(dp=64, micro_batch=1, global_batch=64, seq_len=64, zero=3)
    r = predict(LLAMA7, cl, plan)
    t_rs, t_ag = _dp_times(cl, 64, GRADS_FP32)
    traffic = 2 * t_ag + t_rs
    assert 0 < r.breakdown_s["dp_comm_exposed"] <= traffic
    nov = predict(LLAMA7, cl, plan.with_(overlap=False)).breakdown_s["dp_comm_exposed"]
    assert nov == pytest.approx(traffic, rel=1e-6)     # nothing hidden without overlap


@pytest.mark.parametrize("algo, rs, ag", [("ring", "ring", "ring"), ("hd", "hd", "rd")])
def test_grad_sync_applies_to_zero_reduce_scatter_and_all_gather(algo, rs, ag):
    # issue 12 §3: --grad-sync was ignored with ZeRO >= 1 (all algorithms gave 2.725 s for
    # llama3-8b, 128 GPUs, --zero 1 --no-overlap). Now ring and hd price their own RS/AG
    # schedules: exposed = t_rs(algo) + t_ag(algo). (dp 16 here: the played schedules.)
    cl = get_cluster("dgx-h100", 16)
    plan = Plan(dp=16, micro_batch=1, global_batch=16, zero=1, overlap=False, grad_sync=algo)
    t_rs, t_ag = _dp_times(cl, 16, GRADS_FP32, PARAMS_16, rs, ag)
    assert predict(LLAMA7, cl, plan).breakdown_s["dp_comm_exposed"] == pytest.approx(t_rs + t_ag, rel=1e-6)


def test_grad_sync_algorithms_differ_under_zero_at_128_gpus():
    cl = get_cluster("dgx-h100", 128)
    m = load_model("llama3-8b")
    t = {g: predict(m, cl, Plan(dp=128, global_batch=128, zero=1, overlap=False, grad_sync=g)).step_time_s
         for g in ("ring", "hd", "native")}
    assert len({round(v, 9) for v in t.values()}) == 3, t


@pytest.mark.parametrize("algo", ["tree", "hierarchical", "ps"])
def test_grad_sync_without_rs_ag_form_is_refused_with_zero(algo):
    with pytest.raises(ParsimError, match=f"grad-sync {algo} with zero 1"):
        predict(LLAMA7, "dgx-h100", Plan(dp=16, global_batch=16, zero=1, grad_sync=algo))
    with pytest.raises(ParsimError):
        zero_sync_algorithms(algo, 2)
    assert zero_sync_algorithms(algo, 0) == (algo, algo)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4, 8, 16]),
       st.integers(0, 3), st.integers(1, 8), st.booleans(), st.sampled_from(["native", "ring", "hd"]),
       st.sampled_from([128, 1024, 4096]))
def test_exposed_never_exceeds_traffic(tp, pp, dp, zero, mper, overlap, gs, seq):
    # invariant for every plan: 0 <= exposed DP time <= the time of all DP traffic of the step
    gpus = tp * pp * dp
    cl = get_cluster("dgx-h100", gpus)
    plans = [Plan(dp=dp, tp=tp, pp=pp, micro_batch=1, global_batch=dp * mper * pp, seq_len=seq, zero=zero,
                  overlap=overlap, grad_sync=gs)]
    r = price(LLAMA7, cl, plan_columns(plans, LLAMA7))
    exposed, traffic = float(r["breakdown"]["dp_comm_exposed"][0]), float(r["dp_sync_s"][0])
    assert 0.0 <= exposed <= traffic * (1 + 1e-12)
    if dp > 1 and not overlap:
        assert exposed == pytest.approx(traffic)


def test_dp_sync_formulas():
    # hand arithmetic: m = 4, t_ar 2, t_rs 1, t_ag 1, window 0.25, compute per micro-batch 3, 4 layers
    z = np.array([0, 1, 2, 3])
    tr, ex = dp_sync_s(z, 4, 2.0, 1.0, 1.0, True, 0.25, 3.0, 4)
    assert tr.tolist() == [2.0, 2.0, 4 * 1 + 1, 4 * 3]
    # 0: 2-0.25; 1: (1-0.25)+1; 2: 4·0.75+1; 3: 4·min(3, max(3-3,0) + 2·1/4)
    assert ex.tolist() == pytest.approx([1.75, 1.75, 4.0, 2.0])


def test_run_refuses_zero_with_an_allreduce_only_algorithm_before_spawning():
    import argparse

    from parsim.commands.run import add_arguments, make_plan
    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(ParsimError, match="grad-sync tree with zero 1"):
        make_plan(p.parse_args(["--nproc", "2", "--zero", "1", "--grad-sync", "tree"]))
