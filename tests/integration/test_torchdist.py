"""The torch backend on CPU with gloo: 2-4 ranks, gpt-tiny, few steps, each run bounded.

Reference for every equality: the un-cut model (backends.torchdist.model.full_model) on the
whole global batch in this process. Tolerances: fp32 sums in a different order differ by a
few ulps of the largest gradient (~0.03 here), so 1e-6 absolute is ~30 ulps of headroom and
still 4 orders of magnitude below a wrong sync (a missing 1/dp would be ~1e-2).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from backends.torchdist.launch import RunFailed, launch  # noqa: E402
from backends.torchdist.model import full_model, loss_fn, synthetic_batch  # noqa: E402
from parsim.model import load_model  # noqa: E402
from parsim.plan import Plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_model("gpt-tiny")
GRAD_ATOL = 1e-6


def reference(plan: Plan, recompute="none"):
    """(loss, {name: grad}) of the un-cut model on the plan's whole global batch, step 0."""
    torch.manual_seed(0)
    m = full_model(SPEC, seed=0, recompute=recompute, tie=False)
    x, y = synthetic_batch(SPEC, plan.global_batch, plan.seq_len or SPEC.seq_len, 0)
    loss = loss_fn(m(x), y)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in m.named_parameters()}


def load_dump(dump: Path):
    """(grads by name, losses, {rank: executed pipeline ops}) from the ranks' step-0 dumps."""
    grads, losses, ops = {}, [], {}
    for f in sorted(dump.glob("rank*.pt")):
        d = torch.load(f)
        grads.update({k: v for k, v in d["grads"].items() if v is not None})
        if d["loss"] is not None:
            losses.append(d["loss"])
        ops[int(f.stem[4:])] = [tuple(o) for o in d["ops"]]
    return grads, losses, ops


def assert_grads_equal(got: dict, ref: dict, atol=GRAD_ATOL):
    assert set(got) == set(ref), f"missing {set(ref) - set(got)}, extra {set(got) - set(ref)}"
    worst = max((float((got[k] - ref[k]).abs().max()), k) for k in ref)
    assert worst[0] < atol, f"gradient {worst[1]} differs by {worst[0]:.3g} (atol {atol})"
    return worst[0]


# Every 2-rank plan runs in ONE launch (one process group, one torch import per rank): spawning
# costs more than the tiny model's steps on this shared 2-core machine.
TWO_RANK = {
    "pp-gpipe": Plan(pp=2, micro_batch=2, global_batch=8, schedule="gpipe", dtype="fp32"),
    "pp-1f1b": Plan(pp=2, micro_batch=2, global_batch=8, schedule="1f1b", dtype="fp32"),
    "pp-interleaved": Plan(pp=2, vpp=2, micro_batch=1, global_batch=4, schedule="interleaved", dtype="fp32"),
    "pp-zbv": Plan(pp=2, vpp=2, micro_batch=1, global_batch=4, schedule="zbv", dtype="fp32"),
    "pp-zbv-full-recompute": Plan(pp=2, vpp=2, micro_batch=1, global_batch=4, schedule="zbv", recompute="full",
                                  dtype="fp32"),
    "tp": Plan(tp=2, micro_batch=2, global_batch=4, dtype="fp32"),
    "tp-sp-full-recompute": Plan(tp=2, micro_batch=2, global_batch=4, sequence_parallel=True, recompute="full",
                                 dtype="fp32"),
    "dp-selective-recompute-zero1-hd": Plan(dp=2, micro_batch=1, global_batch=4, recompute="selective", zero=1,
                                            grad_sync="hd", dtype="fp32"),
    "dp-zero2-fsdp": Plan(dp=2, micro_batch=1, global_batch=4, zero=2, dtype="fp32"),
    "dp-zero3-fsdp": Plan(dp=2, micro_batch=1, global_batch=4, zero=3, dtype="fp32"),
}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_rank")
    jobs = [{"plan": p.to_dict(), "dump_dir": str(tmp / name)} for name, p in TWO_RANK.items()]
    reports = launch({"model": SPEC.to_dict(), "jobs": jobs, "steps": 2, "warmup": 1, "timeout_s": 60,
                      "watchdog_s": 60}, 2, timeout_s=150)
    from parsim.predict import StepReport
    assert all(isinstance(r, StepReport) and r.source == "measured" for r in reports)   # the backend's own type
    return {name: (rep, *load_dump(tmp / name)) for name, rep in zip(TWO_RANK, reports)}


@pytest.mark.slow
@pytest.mark.timeout(160)
@pytest.mark.parametrize("name", [n for n in TWO_RANK if n.startswith("pp-")])
def test_pipeline_schedule_gives_unpipelined_loss_and_grads(name, two_rank_runs):
    plan = TWO_RANK[name]
    ref_loss, ref_grads = reference(plan, plan.recompute)
    rep, grads, losses, ops = two_rank_runs[name]
    assert losses and abs(losses[0] - ref_loss) < 1e-5, (losses, ref_loss)
    assert_grads_equal(grads, ref_grads)
    assert rep.breakdown_s["bubble"] >= 0 and rep.breakdown_s["compute"] > 0
    # the op order torch executed on each rank is the one parsim simulates
    from parsim.schedules.pipeline import build_schedule
    sim = build_schedule(plan.schedule, plan.pp, plan.microbatches, plan.vpp)
    for r in range(plan.pp):
        assert ops[r] == sim.rank_ops(r), f"rank {r}: executed {ops[r]}\n simulated {sim.rank_ops(r)}"


@pytest.mark.slow
@pytest.mark.timeout(160)
@pytest.mark.parametrize("name", ["tp", "tp-sp-full-recompute"])
def test_tensor_parallel_gradients_equal_reference(name, two_rank_runs):
    plan = TWO_RANK[name]
    ref_loss, ref_grads = reference(plan, plan.recompute)
    rep, grads, losses, _ = two_rank_runs[name]
    assert abs(losses[0] - ref_loss) < 1e-5
    assert_grads_equal(grads, ref_grads, atol=2e-6)
    assert rep.breakdown_s["tp_comm"] > 0          # DTensor's collectives were timed
    if plan.recompute == "full":
        assert rep.breakdown_s["recompute"] > 0


@pytest.mark.slow
@pytest.mark.timeout(160)
def test_dp_zero1_selective_recompute_equals_reference(two_rank_runs):
    plan = TWO_RANK["dp-selective-recompute-zero1-hd"]
    ref_loss, ref_grads = reference(plan, plan.recompute)
    rep, grads, losses, _ = two_rank_runs["dp-selective-recompute-zero1-hd"]
    assert abs(sum(losses) / len(losses) - ref_loss) < 1e-5
    assert_grads_equal(grads, ref_grads)
    assert rep.breakdown_s["recompute"] > 0 and rep.breakdown_s["dp_comm_exposed"] > 0
    assert rep.memory_breakdown_GiB["optimizer"] > 0


@pytest.mark.slow
@pytest.mark.timeout(160)
@pytest.mark.parametrize("name", ["dp-zero2-fsdp", "dp-zero3-fsdp"])
def test_fsdp_zero_stages_equal_reference_and_shard_state(name, two_rank_runs):
    """FSDP2 (zero 2/3): gathered gradients are the full-batch ones; each rank holds half the
    weights, gradients and optimizer state of the dp run."""
    plan = TWO_RANK[name]
    ref_loss, ref_grads = reference(plan)
    rep, grads, losses, _ = two_rank_runs[name]
    assert abs(sum(losses) / len(losses) - ref_loss) < 1e-5
    assert_grads_equal(grads, ref_grads)
    full = two_rank_runs["dp-selective-recompute-zero1-hd"][0].memory_breakdown_GiB
    mine = rep.memory_breakdown_GiB
    assert mine["weights"] == pytest.approx(full["weights"] / 2, rel=0.02)
    assert mine["optimizer"] == pytest.approx(full["optimizer"], rel=0.02)   # zero 1 already halves it


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_four_ranks_dp_algorithms_dp_x_pp_ring_and_2d(tmp_path):
    """4 ranks, one launch. (1) dp=4: one backward per rank on its shard, then every explicit
    algorithm from the same raw gradients, against native all-reduce and against the full-batch
    gradient of the un-parallel model; hierarchical with 2 ranks per 'node' so its inter-node ring
    runs, and 64 KiB buckets so gradients span several buckets. (2) dp2 x pp2 (1f1b) with the ring:
    the gradients every rank holds after the sync are the un-cut model's. (3) dp2 x tp2 with FSDP2
    (zero 3, 2-D mesh) and with sequence parallel under the sharded-PS sync: the same."""
    algos = ["ring", "tree", "hd", "hierarchical", "ps", "ps-central"]
    pp_plan = Plan(dp=2, pp=2, micro_batch=1, global_batch=8, schedule="1f1b", grad_sync="ring", dtype="fp32")
    jobs = [{"task": "grad_sync_check", "plan": Plan(dp=4, micro_batch=1, global_batch=8).to_dict(), "algos": algos,
             "local_size": 2, "bucket_bytes": 64 * 1024},
            {"plan": pp_plan.to_dict(), "dump_dir": str(tmp_path / "dp_pp"), "steps": 1, "warmup": 0}]
    more = {"dp2-tp2-zero3": Plan(dp=2, tp=2, micro_batch=1, global_batch=4, zero=3, dtype="fp32"),
            "dp2-tp2-sp-ps": Plan(dp=2, tp=2, micro_batch=1, global_batch=4, sequence_parallel=True, grad_sync="ps",
                                  dtype="fp32")}
    jobs += [{"plan": p.to_dict(), "dump_dir": str(tmp_path / k), "steps": 1, "warmup": 0} for k, p in more.items()]
    check, rep, *_ = launch({"model": SPEC.to_dict(), "jobs": jobs, "timeout_s": 60, "watchdog_s": 60}, 4,
                            timeout_s=140)
    for k, p in more.items():    # FSDP2 on a 2-D (dp, tp) mesh; TP with sequence parallel under the PS sync
        ref_loss, ref_grads = reference(p)
        grads, losses, _ = load_dump(tmp_path / k)
        assert abs(sum(losses) / len(losses) - ref_loss) < 1e-5, k
        assert_grads_equal(grads, ref_grads, atol=2e-6)
    for a in algos:
        assert check["max_abs_diff"][a] < GRAD_ATOL, (a, check)
    assert check["native_vs_reference"] < GRAD_ATOL, check
    assert check["max_abs_grad"] > 1e-3   # the comparison is not between zeros
    ref_loss, ref_grads = reference(pp_plan)
    grads, losses, _ = load_dump(tmp_path / "dp_pp")
    assert abs(sum(losses) / len(losses) - ref_loss) < 1e-5
    assert_grads_equal(grads, ref_grads)
    assert rep.breakdown_s["dp_comm_exposed"] > 0


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind,expect", [("kill", "rank 1 was killed by SIGKILL"), ("hang", "rank 1: no progress")])
def test_a_dead_or_hung_rank_ends_the_run_naming_it(kind, expect):
    plan = Plan(dp=2, micro_batch=1, global_batch=2)
    with pytest.raises(RunFailed) as ei:
        launch({"model": SPEC.to_dict(), "plan": plan.to_dict(), "steps": 10_000, "warmup": 0, "fault": f"1:2:{kind}",
                "timeout_s": 30, "watchdog_s": 4}, 2, timeout_s=45, grace_s=3)
    msg = str(ei.value)
    # noticed by the fault's own mechanism (the kill, or the 4 s watchdog), not by the run's 30/45 s
    # timeouts -- said by the message, not by a wall-clock bound that a busy machine would break
    assert expect in msg, msg
    assert "did not finish within its timeout" not in msg, msg
    assert ei.value.pids and not any(_alive(p) for p in ei.value.pids), "orphan rank processes"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_cli_measured_report_has_every_predicted_key(tmp_path):
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, "-m", "parsim", "run", "--model", "gpt-tiny", "--nproc", "2", "--dp", "2",
                        "--micro-batch", "1", "--global-batch", "4", "--grad-sync", "ring", "--steps", "3",
                        "--warmup", "1", "--format", "json", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert json.loads(r.stdout)["plan_label"] == res["plan_label"]
    from parsim.predict import predict
    from parsim.topology import load_cluster
    from parsim.commands.run import as_dict
    pred = as_dict(predict(SPEC, load_cluster("cpu-local", 2), Plan(**res["measured"]["plan"])))

    def keys(d, pre=""):
        return {pre + k for k in d} | {x for k, v in d.items() if isinstance(v, dict) for x in keys(v, pre + k + ".")}
    missing = keys(pred) - keys(res["measured"])
    assert not missing, f"measured report lacks {sorted(missing)}"
    assert res["measured"]["step_time_s"] > 0 and res["predicted"] is not None
    lo, hi = res["measured"]["spread"]["step_time_s"]      # the measured spread rides with the report
    assert lo <= res["measured"]["step_time_s"] <= hi
    assert res["measured"]["spread"]["tokens_per_s"][0] <= res["measured"]["tokens_per_s"]
    assert res["relative_error"]["step_time_s"] is not None


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_env_mode_one_process_per_rank_like_torchrun_or_netem():
    """`parsim run` started once per rank with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (and
    GLOO_SOCKET_IFNAME, as the netem launcher sets it) is one rank: nothing is spawned, rank 0
    prints the report."""
    from backends.torchdist.launch import free_port
    port = str(free_port())
    procs = []
    try:
        for r in range(2):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, "-m", "parsim", "run", "--model", "gpt-tiny", "--dp", "2",
                                           "--global-batch", "2", "--grad-sync", "tree", "--steps", "2", "--warmup", "1",
                                           "--timeout", "60"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=80) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert "step_time_s" in outs[0][0] and "dp2·tp1·pp1" in outs[0][0]
    assert outs[1][0].strip() == ""          # only rank 0 reports


@pytest.mark.slow
@pytest.mark.timeout(160)
def test_uneven_pipeline_split_gives_unpipelined_loss_and_grads(tmp_path):
    # 5 layers on 2 stages: pp does not divide them, so the embedding and the head count as one layer
    # each (parsim.rules): 7 units -> 4 + 3 -> stage 0 holds 3 layers (+ embedding), stage 1 holds 2
    # (+ head). The backend cuts the model by the same rule and must still train the un-cut model.
    from dataclasses import replace
    spec = replace(SPEC, name="gpt-tiny-5", layers=5)
    plan = Plan(pp=2, micro_batch=2, global_batch=4, schedule="1f1b", dtype="fp32")
    from parsim.rules import ParallelDims
    assert ParallelDims.of(plan, spec).stage_layers == (3, 2)
    launch({"model": spec.to_dict(), "jobs": [{"plan": plan.to_dict(), "dump_dir": str(tmp_path / "u")}], "steps": 1,
            "warmup": 0, "timeout_s": 60, "watchdog_s": 60}, 2, timeout_s=150)
    grads, losses, _ = load_dump(tmp_path / "u")
    torch.manual_seed(0)
    m = full_model(spec, seed=0, recompute="none", tie=False)
    x, y = synthetic_batch(spec, plan.global_batch, spec.seq_len, 0)
    ref = loss_fn(m(x), y)
    ref.backward()
    assert losses and abs(losses[0] - float(ref.detach())) < 1e-5
    assert_grads_equal(grads, {n: p.grad.detach().clone() for n, p in m.named_parameters()})


# ---- mixture of experts: dp x ep against the un-cut model --------------------------------------

MOE = load_model("moe-tiny")
MOE_RUNS = {
    2: {"moe-dp2": Plan(dp=2, micro_batch=1, global_batch=4, dtype="fp32"),
        "moe-dp2-ep2": Plan(dp=2, ep=2, micro_batch=1, global_batch=4, dtype="fp32")},
    4: {"moe-dp4-ep2": Plan(dp=4, ep=2, micro_batch=1, global_batch=4, dtype="fp32")},
}


@pytest.fixture(scope="module")
def moe_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moe")
    out = {}
    for world, plans in MOE_RUNS.items():
        jobs = [{"plan": p.to_dict(), "dump_dir": str(tmp / name)} for name, p in plans.items()]
        reports = launch({"model": MOE.to_dict(), "jobs": jobs, "steps": 2, "warmup": 1, "timeout_s": 60,
                          "watchdog_s": 60}, world, timeout_s=200)
        for name, rep in zip(plans, reports):
            per_rank = [{k.split(".experts.")[1].split(".")[0] for k in torch.load(f)["grads"] if ".experts." in k}
                        for f in sorted((tmp / name).glob("rank*.pt"))]
            out[name] = (rep, *load_dump(tmp / name), per_rank)
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", ["moe-dp2", "moe-dp2-ep2", "moe-dp4-ep2"])
def test_moe_expert_parallel_equals_reference(name, moe_runs):
    """Experts sharded over ep ranks with all-to-all dispatch/combine (gloo): the loss and every
    gradient (router, each expert, dense parts) equal the un-cut model's on the whole batch."""
    plan = {k: v for d in MOE_RUNS.values() for k, v in d.items()}[name]
    torch.manual_seed(0)
    m = full_model(MOE, seed=0)
    x, y = synthetic_batch(MOE, plan.global_batch, MOE.seq_len, 0)
    loss = loss_fn(m(x), y)
    loss.backward()
    ref = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    rep, grads, losses, _, per_rank = moe_runs[name]
    # each rank holds experts/ep of them (ids per layer)
    assert all(len(e) == MOE.experts // plan.ep for e in per_rank), per_rank
    assert abs(sum(losses) / len(losses) - float(loss.detach())) < 1e-5
    assert_grads_equal(grads, ref)
    assert rep.plan["ep"] == plan.ep and rep.params_total == MOE.params
