"""The one rule book (parsim.rules): torch's schedules as the reference, the same verdict in every
consumer (search's vectorised mask, predict, simulate, run, the backend), Plan's own fields, uneven
pipeline splits."""
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.hardware import get_device
from parsim.plan import DTYPES, GRAD_SYNC, SCHEDULES, Plan
from parsim.predict import plan_columns, predict
from parsim.rules import (ParallelDims, check, check_pipeline, first_failure, rank_layers, reject,
                          stage_layer_counts, stage_to_rank)


# ---------------------------------------------------------------- torch 2.13 is the reference

def _torch_accepts(name, p, m, v):
    """Construct torch's schedule (fake stages, no process group); False where its constructor raises."""
    pytest.importorskip("torch")
    s = pytest.importorskip("torch.distributed.pipelining.schedules")
    import torch

    def stage(idx, n):
        return types.SimpleNamespace(stage_index=idx, num_stages=n, group_size=p, group_rank=0, is_first=idx == 0,
                                     is_last=idx == n - 1, stage_index_to_group_rank=None, submod=torch.nn.Identity())
    try:
        if name == "gpipe":
            s.ScheduleGPipe(stage(0, p), m)
        elif name == "1f1b":
            s.Schedule1F1B(stage(0, p), m)
        elif name == "interleaved":
            s.ScheduleInterleaved1F1B([stage(j * p, v * p) for j in range(v)], m)
        else:
            s.ScheduleZBVZeroBubble([stage(j, v * p) for j in range(v)], m)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 3), ("zbv", 2)])
@pytest.mark.parametrize("p", [2, 3, 4, 8])
def test_pipeline_rules_accept_what_torch_accepts(name, p, v):
    # torch/distributed/pipelining/schedules.py: Schedule1F1B raises for m < num_stages;
    # ScheduleInterleaved1F1B for m % max(1, m // pp) != 0; GPipe and ZB-V take any m >= 1
    for m in range(1, 3 * p + 3):
        try:
            check_pipeline(name, p, m, v)
            ours = True
        except ParsimError:
            ours = False
        assert ours == _torch_accepts(name, p, m, v), (name, p, m, v)


def test_issue_examples_of_disagreement():
    model = load_model("llama2-70b")
    # 1F1B with m = 2 < pp = 4: refused everywhere now (torch Schedule1F1B refuses it) ...
    with pytest.raises(ParsimError, match=r"1f1b needs micro-batches m \(2\) >= pp \(4\)"):
        predict(model, "dgx-h100", Plan(dp=1, tp=8, pp=4, global_batch=2))
    from parsim.search import search
    df = search("llama2-70b", "dgx-h100", 32, global_batch=2, resimulate=0)
    m = 2 // (df["micro_batch"] * df["dp"])
    assert not ((df["schedule"] == "1f1b") & (df["pp"] > 1) & (m < df["pp"])).any()
    # ... interleaved with m % pp != 0 accepted by predict as by torch (pp=4, v=2, m=6: one round)
    rep = predict(model, "dgx-h100", Plan(dp=1, tp=8, pp=4, vpp=2, schedule="interleaved", global_batch=6))
    assert rep.step_time_s > 0
    # the uniform-stage bubble of that schedule is (p-1)/(v·m) = 3/12 = 25% (simulate, Narayanan 2021 §2.2)
    from parsim.simulate import pipeline_step
    assert pipeline_step("interleaved", 4, 6, 2, 1.0, 2.0).bubble_fraction == pytest.approx(0.25)


def test_simulated_makespan_does_not_swallow_refusals():
    # every plan the rule book accepts is built by the simulator; a refusal would propagate (no silent
    # fall-back to the closed form): zbv with m = 1 < 2p - 1 and interleaved with m < pp both simulate
    for plan in (Plan(dp=1, tp=8, pp=4, vpp=2, schedule="zbv", global_batch=1),
                 Plan(dp=1, tp=8, pp=4, vpp=2, schedule="interleaved", global_batch=3)):
        rep = predict("llama2-70b", "dgx-h100", plan)
        assert any("simulated makespan" in n for n in rep.notes)


# ---------------------------------------------------------------- one verdict, scalar and vectorised

plans = st.builds(
    lambda dp, tp, pp, vpp, mb, gb, sched, sp, zero, gs: Plan(
        dp=dp, tp=tp, pp=pp, vpp=vpp, micro_batch=mb, global_batch=gb, schedule=sched, sequence_parallel=sp,
        zero=zero, grad_sync=gs),
    st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 2, 3, 4, 8]), st.sampled_from([1, 2, 3, 4, 5, 8, 16, 32]),
    st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 2, 4]), st.integers(1, 64), st.sampled_from(SCHEDULES),
    st.booleans(), st.integers(0, 3), st.sampled_from(GRAD_SYNC))

# the same plans with expert and context parallelism, dtype (fp8), flash attention and the sequence length
wide_plans = st.builds(
    lambda p, ep, cp, dtype, flash, seq: p.with_(ep=ep, cp=cp, dtype=dtype, flash_attention=flash, seq_len=seq),
    plans, st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 2, 3, 4]), st.sampled_from(DTYPES), st.booleans(),
    st.sampled_from([None, 6, 4096, 4098]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wide_plans, st.sampled_from(["plan", "run"]), st.sampled_from(["llama2-13b", "mixtral-8x7b"]),
       st.sampled_from([None, "a100-80gb", "h100-sxm"]))
def test_scalar_check_and_vectorised_mask_agree(plan, scope, model_name, device):
    model = load_model(model_name)       # llama2-13b: 40 layers, 40 heads, dense; mixtral: 8 experts
    dev = None if device is None else get_device(device)
    cols = plan_columns([plan], model)
    ok, counts = reject(cols, model, scope, device=dev)
    msg = first_failure(cols, model, 0, scope, device=dev)
    assert bool(ok[0]) == (msg is None)
    if msg is None:
        check(plan, model, scope=scope, device=dev)
    else:
        with pytest.raises(ParsimError) as e:
            check(plan, model, scope=scope, device=dev)
        assert str(e.value) == msg and sum(counts.values()) == 1
        # the backend asks the same book, with its own wiring rules on top
        if scope == "run" and dev is None:
            pytest.importorskip("torch")
            from backends.torchdist.parallel import check_plan
            with pytest.raises(ParsimError, match="^" + __import__("re").escape(msg) + "$"):
                check_plan(model, plan, plan.gpus)


@pytest.mark.parametrize("kw,model,device,needle", [
    # i13's plan rules, now in the book (same messages as before)
    (dict(dp=2, ep=2), "llama3-8b", None, "ep = 2: llama3-8b has no experts (dense model), expected ep = 1"),
    (dict(dp=3, ep=3, global_batch=3), "mixtral-8x7b", None, "ep (3) does not divide the experts (8) of mixtral-8x7b"),
    (dict(dp=2, ep=4), "mixtral-8x7b", None, "ep (4) does not divide dp (2)"),
    (dict(cp=3), "llama3-8b", None, "cp (3) does not divide seq-len (8192)"),
    (dict(cp=2, tp=8, sequence_parallel=True, seq_len=8200), "llama3-8b", None,
     "sequence-parallel with cp: seq-len (8200) is not divisible by cp·tp = 2·8"),
    (dict(cp=2, flash_attention=False), "llama3-8b", None, "cp = 2 runs ring attention on flash-attention kernels"),
    (dict(dtype="fp8"), "llama3-8b", "a100-80gb", "dtype fp8: device a100-80gb has no FP8 tensor cores"),
])
def test_expert_context_and_fp8_rules(kw, model, device, needle):
    m = load_model(model)
    dev = None if device is None else get_device(device)
    with pytest.raises(ParsimError) as e:
        check(Plan(**kw), m, device=dev)
    assert needle in str(e.value) and "\n" not in str(e.value)
    cols = plan_columns([Plan(**kw)], m)
    assert not reject(cols, m, device=dev)[0][0]


def test_gpus_count_cp():
    # gpus = dp·tp·pp·cp: 2·2·1·2 = 8
    with pytest.raises(ParsimError, match=r"tp\(2\) \* pp\(1\) \* dp\(2\) \* cp\(2\) = 8 != gpus\(16\)"):
        check(Plan(dp=2, tp=2, cp=2, global_batch=2), load_model("llama3-8b"), 16)
    assert check(Plan(dp=2, tp=2, cp=2, global_batch=2), load_model("llama3-8b"), 8)


@settings(max_examples=200, deadline=None)
@given(plans)
def test_valid_plans_simulate(plan):
    # what the rule book accepts, the schedule builder (the simulator's and the backend's input) builds
    model = load_model("llama2-13b")
    try:
        check(plan, model)
    except ParsimError:
        return
    from parsim.schedules.pipeline import build_schedule
    if plan.pp > 1:
        s = build_schedule(plan.schedule, plan.pp, plan.microbatches, plan.vpp)
        assert s.stage_to_rank.tolist() == stage_to_rank(plan.pp, plan.vpp, plan.schedule).tolist()


def test_search_counts_rejections_by_the_rule_books_labels():
    from parsim.rules import RULES
    from parsim.search import search
    res = search("llama2-13b", "dgx-h100", 64, result=True, resimulate=0)
    labels = {r.label for r in RULES}
    assert all(k in labels or k.startswith("does not fit") for k in res.rejected)
    # tensor parallelism beyond a node is valid in torch: priced (over the network), not rejected
    assert not any("node" in k for k in res.rejected)


def test_tp_across_nodes_is_priced_not_refused():
    # 16 GPUs as 2 DGX nodes, tp = 16 does not divide llama2-13b's 40 heads; gpt3-175b's 96 heads it does
    rep = predict("gpt3-175b", "dgx-h100", Plan(dp=1, tp=16, pp=1, global_batch=1))
    assert rep.breakdown_s["tp_comm"] > 0


# ---------------------------------------------------------------- Plan's own fields

@pytest.mark.parametrize("kw,needle", [
    (dict(dp=None), "dp = None (NoneType): expected a positive integer"),
    (dict(tp="4"), "tp = '4' (str): expected a positive integer"),
    (dict(pp=2.0), "pp = 2.0 (float): expected a positive integer"),
    (dict(dp=10 ** 30), "dp = 1000000000000000000000000000000: expected a positive integer <= 1,048,576"),
    (dict(dp=2 ** 12, tp=2 ** 12, pp=2 ** 12), "dp·tp·pp·cp = 4096·4096·4096·1"),
    (dict(dp=2 ** 8, tp=2 ** 8, pp=2 ** 8, cp=2), "dp·tp·pp·cp = 256·256·256·2 = 33,554,432 devices"),
    (dict(ep=0), "ep = 0: expected a positive integer"),
    (dict(cp=1.5), "cp = 1.5 (float): expected a positive integer"),
    (dict(ep=True), "ep = True (bool)"),
    (dict(dtype="fp4"), "dtype = 'fp4': expected one of bf16, fp16, fp32, fp8"),
    (dict(vpp=0), "vpp = 0"),
    (dict(global_batch=-1), "global-batch = -1"),
    (dict(micro_batch=True), "micro-batch = True (bool)"),
    (dict(seq_len=1.5), "seq-len = 1.5 (float)"),
    (dict(sequence_parallel="yes"), "sequence-parallel = 'yes' (str): expected True or False"),
    (dict(zero=4), "zero = 4: expected one of 0, 1, 2, 3"),
    (dict(schedule="1f1bb"), "did you mean 1f1b"),
])
def test_plan_fields_checked_on_construction(kw, needle):
    with pytest.raises(ParsimError) as e:
        Plan(**kw)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_plan_takes_numpy_integers():
    p = Plan(dp=np.int64(2), tp=np.int32(4), global_batch=np.int64(8))
    assert type(p.dp) is int and type(p.tp) is int and p.gpus == 8


# ---------------------------------------------------------------- uneven pipelines

def test_stage_layer_counts():
    # Llama 3 405B: 126 layers on 16 stages; (126 + 2)/16 = 8 units, the embedding and the head take one
    # each: 7 + 8·14 + 7 (torchtitan generate_llm_fqn_per_model_part, input_weight = output_weight = 1)
    assert stage_layer_counts(126, 16).tolist() == [7] + [8] * 14 + [7]
    assert stage_layer_counts(80, 4).tolist() == [20] * 4                      # divisible: even (Megatron)
    # 40 layers on 3 stages: 42 units, 14 each: 13, 14, 13
    assert stage_layer_counts(40, 3).tolist() == [13, 14, 13]
    # 30 layers on 8 stages: 32 units, 4 each: 3, 4, 4, 4, 4, 4, 4, 3
    assert stage_layer_counts(30, 8).tolist() == [3, 4, 4, 4, 4, 4, 4, 3]
    # 31 layers on 8 stages: 33 units = 4·8 + 1: the first stage takes the extra unit: 4, 4, ..., 3
    assert stage_layer_counts(31, 8).tolist() == [4, 4, 4, 4, 4, 4, 4, 3]
    with pytest.raises(ParsimError, match="at least one layer"):
        stage_layer_counts(40, 32)                                               # 42 < 64


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200), st.integers(1, 64), st.sampled_from([(1, False), (2, False), (3, False), (2, True)]))
def test_rank_layers_match_the_stage_assignment(L, p, vv):
    v, V = vv
    S = p * v
    try:
        counts = stage_layer_counts(L, S)
    except ParsimError:
        return
    assert counts.sum() == L and counts.min() >= 1
    place = stage_to_rank(p, v, "zbv" if V else "1f1b")
    per_rank = np.bincount(place, weights=counts, minlength=p)
    first, last, mid = (int(x) for x in rank_layers(L, p, v, V))
    last_rank = int(place[-1])
    others = [per_rank[r] for r in range(p) if r not in (0, last_rank)]
    assert first == per_rank[0]
    assert last == (0 if last_rank == 0 else per_rank[last_rank])
    assert mid == (max(others) if others else 0)


def test_llama3_405b_pipelines_on_16384_gpus():
    # today's rule book: pp = 16 (and 8, 32, ...) are valid for 126 layers; before, only pp <= 2
    from parsim.search import candidates
    model = load_model("llama3-405b")
    cols, rejected, n = candidates(model, 16384, 1024, 8192)
    assert {2, 4, 8, 16, 32, 64} <= set(np.unique(cols["pp"]).tolist())
    plan = Plan(dp=128, tp=8, pp=16, global_batch=2048)          # m = 16 >= pp for 1F1B
    dims = ParallelDims.of(plan, model)
    # 126 layers + embedding + head = 128 units, 8 per stage; the first and last stages give one to them
    split = "16 stages: 1 of 7 layers, 14 of 8 layers each, 1 of 7 layers (uneven"
    assert dims.stage_layers == (7,) + (8,) * 14 + (7,) and split in dims.describe()
    rep = predict(model, "dgx-h100", plan)
    assert any(split in n for n in rep.notes)


def test_uneven_split_prices_the_bottleneck_stage():
    # llama2-13b (40 layers) on pp = 3: 13, 14, 13 layers; the middle rank (14 layers) against the ends
    # (13 layers + embedding / + head). The step is priced on the slowest rank and memory on the worst.
    model = load_model("llama2-13b")
    even = predict(model, "dgx-h100", Plan(dp=1, tp=8, pp=5, global_batch=40))            # 8 layers each
    uneven = predict(model, "dgx-h100", Plan(dp=1, tp=8, pp=3, global_batch=40))
    assert uneven.step_time_s > 0 and even.step_time_s > 0
    from parsim.predict import get_cluster, price
    r = price(model, get_cluster("dgx-h100", 24), plan_columns([Plan(dp=1, tp=8, pp=3, global_batch=40)], model))
    per_layer = float(np.ravel(r["stage_s"]["layer_fwd"])[0]) + float(np.ravel(r["stage_s"]["layer_bwd"])[0]) \
        + float(np.ravel(r["stage_s"]["layer_w"])[0])
    compute_tp = sum(float(np.ravel(r["breakdown"][k])[0]) for k in ("compute", "recompute", "tp_comm", "pp_comm")) / 40
    # the bottleneck holds at least the 14 layers of the middle stage
    assert compute_tp >= 14 * per_layer * (1 - 1e-12)


def test_backend_cuts_the_same_stages():
    from backends.torchdist.model import stage_layers
    spec = load_model("llama3-405b")
    assert [len(stage_layers(spec, 16, s)) for s in range(16)] == [7] + [8] * 14 + [7]
    assert stage_layers(spec, 16, 1) == range(7, 15)


# ---------------------------------------------------------------- run --dry-run

def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "parsim", "run", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_prints_plan_memory_schedule_and_spawns_nothing():
    r = _run("--model", "gpt-tiny", "--nproc", "3", "--pp", "3", "--global-batch", "6", "--dry-run")
    assert r.returncode == 0, r.stderr
    # gpt-tiny's 4 layers on 3 stages: 6 units, 2 each: 1, 2, 1 layers
    assert "Schedule1F1B" in r.stdout and "3 stages: 1 of 1 layer, 1 of 2 layers, 1 of 1 layer (uneven" in r.stdout
    assert "pp rank 1: stages 1 (layers 1-2)" in r.stdout
    assert "predicted memory per device" in r.stdout and "would run: yes" in r.stdout


def test_dry_run_refuses_with_exit_2():
    r = _run("--model", "gpt-tiny", "--nproc", "4", "--pp", "4", "--global-batch", "2", "--dry-run")
    assert r.returncode == 2 and "1f1b needs micro-batches m (2) >= pp (4)" in r.stderr
    r = _run("--model", "llama3-70b", "--nproc", "1", "--dry-run")
    assert r.returncode == 2 and "refused: predicted not to fit in host memory" in r.stdout


def test_run_refuses_up_front_what_does_not_fit():
    # llama3-70b in fp32 on one CPU rank: 70.6e9 params x 16 B = 1.05 TiB of model states alone
    r = _run("--model", "llama3-70b", "--nproc", "1", timeout=60)
    assert r.returncode == 2
    assert "not started: predicted not to fit in host memory" in r.stderr and "Traceback" not in r.stderr


def test_memory_refusal_rules():
    from parsim.commands.run import memory_refusal
    pred = {"memory_GiB": 10.0, "fits": True, "fits_reason": "", "memory_accounting": "fsdp2"}
    assert memory_refusal(pred, "gloo", 4, 41 * 2 ** 30) is None                # 4 x 10 GiB <= 41 GiB
    assert "4 ranks x 10.00 GiB" in memory_refusal(pred, "gloo", 4, 39 * 2 ** 30)
    assert memory_refusal(dict(pred, fits=False, fits_reason="x"), "nccl", 1, None) == \
        "predicted not to fit on the GPU: x"
    assert memory_refusal(pred, "nccl", 8, 1) is None                          # GPUs: device memory decides


def test_uneven_split_memory_per_rank():
    # llama2-13b on pp = 3 (13 + 14 + 13 layers), tp 8, 1F1B, m = 8: the middle rank holds 14 layers'
    # states (x 18 B, Megatron) and p - r = 2 micro-batches of its 14 layers' activations
    from parsim.costs.memory import activation_bytes_per_layer
    from parsim.predict import get_cluster, price
    model = load_model("llama2-13b")
    plan = Plan(dp=1, tp=8, pp=3, global_batch=8)
    r = price(model, get_cluster("dgx-h100", 24), plan_columns([plan], model))
    a = float(activation_bytes_per_layer(model, 1, 4096, 8, False, 0, True, 0))
    buffers = 2 * 1 * 4096 * model.hidden * 2 / 8                 # a p2p send and receive buffer
    mid = float(np.ravel(r["memory_by_rank_kind"]["mid"])[0])
    assert mid == pytest.approx(14 * model.params_per_layer / 8 * 18 + 2 * 14 * a + buffers, rel=1e-12)


def test_sequence_longer_than_learned_positions_is_refused():
    """A learned position table has one row per position (GPT-3: 2,048): a longer --seq-len cannot be trained as the
    model is, so every consumer refuses it (predict, plan's count, run); rotary models extrapolate and are not refused."""
    from parsim.errors import ParsimError
    from parsim.model import load_model
    from parsim.plan import Plan
    from parsim.rules import check
    gpt = load_model("gpt3-1.3b")
    assert gpt.position == "learned" and gpt.max_positions == 2048
    check(Plan(dp=8, micro_batch=1, global_batch=8, seq_len=2048), gpt, 8)            # at the table's size: fine
    with pytest.raises(ParsimError, match="seq-len 2,049 > the 2,048 learned positions of gpt3-1.3b"):
        check(Plan(dp=8, micro_batch=1, global_batch=8, seq_len=2049), gpt, 8)
    llama = load_model("llama2-7b")
    assert llama.position == "rotary"
    check(Plan(dp=8, micro_batch=1, global_batch=8, seq_len=4 * llama.seq_len), llama, 8)
