"""Discrete-event pipeline simulator: closed forms, hand-derived timelines, outputs, CLI."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsim.cli import main
from parsim.errors import ParsimError
from parsim.schedules.pipeline import _with_dependencies, build_schedule
from parsim.simulate import (bubble_fraction_closed_form, makespan_closed_form, pipeline_step, simulate,
                             stage_durations)

# dyadic times: every sum the simulator forms is exact in binary floating point, so `==` is fair
TIMES = [(1.0, 2.0), (0.75, 1.5), (1.25, 0.5)]


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(1, 1), (2, 2), (4, 8), (4, 5), (8, 64), (3, 17)])
@pytest.mark.parametrize("tf,tb", TIMES)
def test_makespan_closed_form_exact(name, p, m, tf, tb):
    # uniform stages, free p2p: makespan = (m + p - 1)(tf + tb) (Narayanan et al. 2021 §2.2)
    r = pipeline_step(name, p, m, None, tf, tb)
    assert r.makespan_s == (m + p - 1) * (tf + tb) == float(makespan_closed_form(p, m, tf, tb))
    # bubble over ideal compute, every rank alike: (p-1)/m
    assert np.all(r.idle_s / r.busy_s == (p - 1) / m)
    assert r.bubble_fraction == (p - 1) / m == float(bubble_fraction_closed_form(p, m))


@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (4, 8, 4), (4, 16, 2), (8, 16, 4), (4, 4, 2), (8, 64, 2)])
@pytest.mark.parametrize("tf,tb", TIMES[:2])
def test_interleaved_bubble_closed_form_exact(p, m, v, tf, tb):
    # Measured: idle_s[0] / busy_s[0], rank 0's idle time (makespan minus its compute) over its compute
    # m*(tf+tb); the closed form (p-1)/(v*m) (Narayanan et al. 2021 §2.2) for m a multiple of p, each
    # virtual stage taking tf/v and tb/v. Makespan = (m + (p-1)/v)(tf+tb).
    r = pipeline_step("interleaved", p, m, v, tf, tb)
    assert r.busy_s[0] == m * (tf + tb)
    assert r.idle_s[0] / r.busy_s[0] == (p - 1) / (v * m) == float(bubble_fraction_closed_form(p, m, v))
    assert r.bubble_fraction == (p - 1) / (v * m)
    assert r.makespan_s == (m + (p - 1) / v) * (tf + tb) == float(makespan_closed_form(p, m, tf, tb, v))


def test_closed_forms_vectorise():
    p, m, v = np.array([2, 4, 8]), np.array([8, 8, 64]), np.array([1, 2, 4])
    assert bubble_fraction_closed_form(p, m, v).tolist() == [1 / 8, 3 / 16, 7 / 256]
    assert makespan_closed_form(p, m, 1.0, 2.0, v).tolist() == [27.0, 28.5, 3 * (64 + 7 / 4)]


def test_1f1b_with_p2p_by_hand():
    # p=2, m=3, tf=1, tb=2, p2p=0.5. Orders: rank 0 F0 F1 B0 F2 B1 B2; rank 1 F0 B0 F1 B1 F2 B2.
    # r0 F0 [0,1] F1 [1,2] | r1 F0 [1.5,2.5] B0 [2.5,4.5] | r0 B0 [4.5+.5=5,7] | r1 F1 [4.5,5.5] (input at 2.5)
    # r1 B1 [5.5,7.5] | r0 F2 [7,8] | r1 F2 [8.5,9.5] B2 [9.5,11.5] | r0 B1 [8,10] (grad at 8) B2 [12,14]
    r = pipeline_step("1f1b", 2, 3, None, 1.0, 2.0, p2p_s=0.5)
    ev = {(e.rank, e.kind, e.microbatch): (e.start_s, e.end_s) for e in r.events()}
    assert ev[(0, "B", 0)] == (5.0, 7.0) and ev[(1, "F", 1)] == (4.5, 5.5) and ev[(0, "B", 1)] == (8.0, 10.0)
    assert r.makespan_s == 14.0
    assert r.busy_s.tolist() == [9.0, 9.0] and r.idle_s.tolist() == [5.0, 5.0]   # 3 x (1+2) busy each
    assert r.bubble_fraction == 10 / 18


def test_gpipe_uneven_stages_by_hand():
    # p=3, m=4, forward [1,1,2], backward [2,2,4] (a slow last stage), free p2p. Fill-drain: the forward
    # phase ends when the slow stage has run all m: sum(f) + (m-1)*max(f) = 4 + 3*2 = 10; the backward
    # phase adds sum(b) + (m-1)*max(b) = 8 + 3*4 = 20 -> 30. The closed form (m+p-1)(tf+tb) with the mean
    # stage would say 6*(4/3 + 8/3) = 24: uneven stages are what the simulator is for.
    r = pipeline_step("gpipe", 3, 4, None, [1.0, 1.0, 2.0], [2.0, 2.0, 4.0])
    assert r.makespan_s == 30.0
    assert r.busy_s.tolist() == [12.0, 12.0, 24.0]


def test_zbv_equal_times():
    # ZB-V (Qi et al. 2023 §6) with T_F = T_B = T_W = T per virtual stage (p=4, m=8, rank share F=1,
    # B+W=2 -> T = 0.5): rank r's first op waits for r forwards (r*T); every rank idles (p-1)*T = 1.5
    # in total, against 1F1B's (p-1)*(3 ranks-share) = 9 and interleaved v=2's 4.5 on the same work.
    p, m, T = 4, 8, 0.5
    z = pipeline_step("zbv", p, m, 2, 1.0, 2.0)
    assert z.busy_s.tolist() == [2 * m * 3 * T] * p
    first_start = z.start_s[z.schedule.rank_offsets[:-1]]
    assert first_start.tolist() == [r * T for r in range(p)]
    assert z.idle_s.tolist() == [(p - 1) * T] * p
    assert pipeline_step("1f1b", p, m, None, 1.0, 2.0).idle_s[0] == 9.0
    assert pipeline_step("interleaved", p, m, 2, 1.0, 2.0).idle_s[0] == 4.5


def test_peak_inflight_from_simulation():
    p, m = 4, 16
    assert pipeline_step("1f1b", p, m, None, 1.0, 2.0).peak_inflight[0] == p
    assert pipeline_step("gpipe", p, m, None, 1.0, 2.0).peak_inflight[0] == m
    assert pipeline_step("1f1b", p, m, None, 1.0, 2.0).peak_inflight_per_rank.tolist() == [4, 3, 2, 1]
    # interleaved: rank 0 peaks at p·v + p - 1 virtual-stage activation sets = p(1 + (p-1)/(p·v)) whole
    # stages (Korthikanti et al. 2022 §4.2.3): p=4, v=2 -> 11 chunks = 5.5 stages
    assert pipeline_step("interleaved", p, m, 2, 1.0, 2.0).peak_inflight_per_rank[0] == 11
    # ZB-V keeps 1F1B's peak on every rank: p whole stages = 2p chunks (Qi et al. 2023 §6)
    assert pipeline_step("zbv", p, m, 2, 1.0, 2.0).peak_inflight_per_rank.tolist() == [2 * p] * p


def test_p2p_price_callable():
    calls = []

    def price(src, dst, nbytes):
        calls.append((src, dst, nbytes))
        return 0.5 if dst > src else 0.25        # forward sends cost more than gradient sends

    r = pipeline_step("1f1b", 2, 3, None, 1.0, 2.0, p2p_s=price, p2p_bytes=4096)
    assert sorted(calls) == [(0, 1, 4096), (1, 0, 4096)]   # priced once per rank pair
    const = pipeline_step("1f1b", 2, 3, None, 1.0, 2.0, p2p_s=0.5)
    # gradients now arrive 0.25 earlier on rank 0: B0 starts 4.75 instead of 5 (see the by-hand test)
    ev = {(e.rank, e.kind, e.microbatch): e.start_s for e in r.events()}
    assert ev[(0, "B", 0)] == 4.75 and r.makespan_s < const.makespan_s


def test_split_backward_durations():
    s = build_schedule("zbv", 2, 4)
    d = stage_durations(s, 1.0, 2.0)               # rank share -> per virtual stage: F .5, B 1 split in .5 + .5
    assert d.tolist() == [[0.5, 0.5, 0.5]] * 4
    d = stage_durations(s, 1.0, 2.0, 1.0)          # W given: B runs 2/2 = 1, W 1/2 = .5
    assert d.tolist() == [[0.5, 1.0, 0.5]] * 4
    fused = stage_durations(build_schedule("1f1b", 2, 4), 1.0, 2.0, 1.0)
    assert fused.tolist() == [[1.0, 3.0, 0.0]] * 2  # fused backward = B + W


def test_bad_inputs():
    s = build_schedule("1f1b", 2, 4)
    with pytest.raises(ParsimError, match="expected 1, pp=2"):
        stage_durations(s, [1.0, 1.0, 1.0], 2.0)
    with pytest.raises(ParsimError, match=">= 0"):
        stage_durations(s, -1.0, 2.0)
    with pytest.raises(ParsimError, match="p2p"):
        simulate(s, stage_durations(s, 1.0, 2.0), p2p_s=-1.0)


def test_deadlock_detected():
    # rank 0 runs B0 before F1, but B0 needs rank 1's B0, which runs after rank 1's F1, which needs F1 of rank 0
    kind = np.array([0, 1, 0, 1, 0, 0, 1, 1], dtype=np.int8)
    mb = np.array([0, 0, 1, 1, 0, 1, 0, 1], dtype=np.int32)
    stage = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int32)
    bad = _with_dependencies("bad", 2, 2, 1, False, np.arange(2), np.array([0, 4, 8]), kind, mb, stage)
    with pytest.raises(ParsimError, match="deadlock"):
        simulate(bad, np.ones((2, 3)))


def test_chrome_trace_and_gantt(tmp_path):
    from parsim.report_pipeline import chrome_trace, write_chrome_trace, write_gantt
    r = pipeline_step("zbv", 2, 4, 2, 1e-3, 2e-3, p2p_s=1e-4)
    tr = json.loads(write_chrome_trace(r, tmp_path / "t.json").read_text())
    ops = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert len(ops) == r.schedule.n_ops
    assert {e["name"][0] for e in ops} == {"F", "B", "W"}
    f3 = next(e for e in ops if e["name"] == "F3" and e["args"]["stage"] == 3)
    assert f3["tid"] == 0 and f3["args"]["microbatch"] == 3          # stage 3 of a V on 2 ranks is rank 0
    assert max(e["ts"] + e["dur"] for e in ops) == pytest.approx(r.makespan_s * 1e6)
    assert {e["args"]["name"] for e in tr["traceEvents"] if e["name"] == "thread_name"} == {"rank 0", "rank 1"}
    assert chrome_trace(r)["otherData"]["makespan_s"] == r.makespan_s
    png = write_gantt(r, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_json(capsys):
    rc = main(["simulate", "--pp", "4", "--micro-batches", "8", "--schedule", "1f1b",
               "--stage-times", "1,2", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["makespan_s"] == pytest.approx(0.033)   # (8+4-1)*(1+2) ms
    assert out["bubble_fraction"] == pytest.approx(3 / 8) and out["peak_inflight_per_stage"] == [4, 3, 2, 1]


def test_cli_per_rank_times_trace_gantt_and_table(tmp_path, capsys):
    trace, gantt = tmp_path / "t.json", tmp_path / "g.png"
    rc = main(["simulate", "--pp", "2", "-m", "4", "--schedule", "interleaved", "--vpp", "2",
               "--stage-times", "1,2,0.5/2,2,1", "--p2p-ms", "0.1", "--trace", str(trace), "--gantt", str(gantt)])
    out = capsys.readouterr().out
    assert rc == 0 and "makespan" in out and "rank" in out
    assert trace.exists() and gantt.exists()


@pytest.mark.parametrize("argv,fragment", [
    (["--pp", "4", "-m", "8", "--schedule", "1f1bb"], "did you mean 1f1b"),
    (["--pp", "0", "-m", "8"], "pp=0"),
    (["--pp", "4", "-m", "9", "--schedule", "interleaved"], "multiple of the number of rounds"),
    (["--pp", "4", "-m", "8", "--stage-times", "1,2/1,2/1,2"], "3 groups"),
    (["--pp", "4", "-m", "8", "--stage-times", "1,x"], "not numbers"),
])
def test_cli_errors(argv, fragment, capsys):
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


# dyadic times so sums are exact; GPipe is a flow shop of m identical jobs twice over (forward, then
# backward from the last stage): each phase ends sum(t_s) + (p-1)*c + (m-1)*max(t_s) after it starts
# (c the transfer time between neighbours), whatever the per-stage times.
_dyadic = st.integers(min_value=0, max_value=64).map(lambda k: k / 16)


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 6), m=st.integers(1, 9), data=st.data(), c=_dyadic)
def test_gpipe_flow_shop_property(p, m, data, c):
    f = data.draw(st.lists(_dyadic, min_size=p, max_size=p))
    b = data.draw(st.lists(_dyadic, min_size=p, max_size=p))
    r = pipeline_step("gpipe", p, m, None, f, b, p2p_s=c)
    phase = lambda t: sum(t) + (p - 1) * c + (m - 1) * max(t)
    assert r.makespan_s == phase(f) + phase(b)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["1f1b", "interleaved", "zbv"]), p=st.integers(1, 5), k=st.integers(1, 3),
       data=st.data(), c=_dyadic)
def test_bounds_property(name, p, k, data, c):
    # any schedule: makespan >= every rank's busy time, and >= one micro-batch's trip through all
    # stages and back; more p2p time never shortens the step
    m = k * p
    v = 1 if name == "1f1b" else 2
    tf = data.draw(st.lists(_dyadic, min_size=p, max_size=p))
    tb = data.draw(st.lists(_dyadic, min_size=p, max_size=p))
    r = pipeline_step(name, p, m, v, tf, tb, p2p_s=c)
    assert r.makespan_s >= r.busy_s.max()
    assert np.all(r.idle_s >= 0) and np.all(r.start_s >= 0)
    assert r.makespan_s >= sum(tf) + sum(tb)
    assert pipeline_step(name, p, m, v, tf, tb, p2p_s=c + 0.5).makespan_s >= r.makespan_s


# ---------------------------------------------------------------- predict integration

def _priced(first, mid, last, w=0.0):
    """A one-plan table shaped like parsim.predict.price's `stage_s` (fwd, bwd per rank kind)."""
    return {"stage_s": {"fwd_first": first[0], "bwd_first": first[1], "fwd_mid": mid[0], "bwd_mid": mid[1],
                        "fwd_last": last[0], "bwd_last": last[1], "w": w}}


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 4)])
def test_simulate_priced_agrees_with_closed_form_when_uniform(name, v):
    # every rank alike (F=1, B=1.5, W=0.5 -> T=3): simulator == m*T + (p-1)*T/v, predict's closed form
    from parsim.simulate import simulate_priced
    p, m, T = 4, 8, 3.0
    r = simulate_priced(_priced((1.0, 1.5), (1.0, 1.5), (1.0, 1.5), 0.5), 0, name, p, v, m)
    assert r.makespan_s == m * T + (p - 1) * T / v


def test_simulate_priced_uneven_first_and_last_rank():
    # the embedding and the loss head make the end ranks heavier; 1F1B is then not m*T_max + (p-1)*T_avg
    from parsim.simulate import priced_stage_times, simulate_priced
    pr = _priced((1.25, 2.0), (1.0, 2.0), (1.5, 2.5))
    assert priced_stage_times(pr, 0, 4) == ([1.25, 1.0, 1.0, 1.5], [2.0, 2.0, 2.0, 2.5], [0.0] * 4)
    # two stages per rank: the middle share is halved, the embedding extra sits on stage 0, the head's
    # on stage 7 (rank 3 in a loop, rank 0 in ZB-V's V)
    f, b, w = priced_stage_times(_priced((1.25, 2.0), (1.0, 2.0), (1.5, 2.5), 0.5), 0, 4, 2)
    assert f == [0.75] + [0.5] * 6 + [1.0] and b == [1.0] + [1.0] * 6 + [1.5] and w == [0.25] * 8
    r = simulate_priced(pr, 0, "1f1b", 4, 1, 8)
    # The last rank (T = 1.5 + 2.5 = 4) is the bottleneck: it waits for micro-batch 0's forward through
    # ranks 0-2 (1.25 + 1 + 1), runs its 8 micro-batches back to back (8 x 4), then the last gradient
    # walks back through ranks 2-0 (2 + 2 + 2): 3.25 + 32 + 6 = 41.25. The closed form
    # m*T_max + (p-1)*T_avg says 32 + 3 * 3.3125 = 41.9375.
    assert r.makespan_s == 41.25
    assert r.idle_s[3] == 3.25 + 6


def test_predict_uses_simulator_for_pipeline():
    from parsim.plan import Plan
    from parsim.predict import plan_columns, predict, price
    from parsim.model import load_model
    from parsim.simulate import simulate_priced
    from parsim.topology import load_cluster
    model, plan = load_model("llama2-13b"), Plan(dp=2, tp=4, pp=4, micro_batch=1, global_batch=64, schedule="1f1b")
    r = price(model, load_cluster("dgx-h100", plan.gpus), plan_columns([plan], model))
    # per-rank F+B+W equals predict's per-micro-batch stage time, rank by rank (first rank vs last)
    st = r["stage_s"]
    ends = [float(np.ravel(st[f"fwd_{w}"])[0] + np.ravel(st[f"bwd_{w}"])[0] + np.ravel(st["w"])[0])
            for w in ("first", "last")]
    m = plan.microbatches
    sim = simulate_priced(r, 0, "1f1b", 4, 1, m).makespan_s
    closed = float(np.ravel(r["makespan_s"])[0])
    assert m * max(ends) <= sim
    rep = predict(model, "dgx-h100", plan)
    assert rep.step_time_s == pytest.approx(float(np.ravel(r["step_time_s"])[0]) + sim - closed, rel=1e-12)
    assert any("simulated makespan" in n for n in rep.notes)
    # pp = 1: the closed form is exact and kept
    one = predict(model, "dgx-h100", Plan(dp=2, tp=4, pp=1, micro_batch=1, global_batch=64))
    assert not any("simulated" in n for n in one.notes)


def test_search_reprices_top_plans_with_simulator():
    from parsim.predict import predict
    from parsim.search import row_to_plan, search
    res = search("llama2-70b", "dgx-h100", 32, global_batch=128, result=True, resimulate=6)
    df = res.table
    assert df["simulated"].iloc[:6].all()                          # the best six were re-priced
    # still best first (search ranks step times at 1 ns, so ties within 1 ns may come in either order)
    assert np.all(np.diff(df["step_time_s"].to_numpy()) >= -1e-9)
    piped = df[df["simulated"] & (df["pp"] > 1)]
    assert len(piped) > 0
    row = piped.iloc[0]
    rep = predict("llama2-70b", "dgx-h100", row_to_plan(row, 128))
    assert rep.step_time_s == pytest.approx(row["step_time_s"], rel=1e-12)       # search == predict
    # both shown: the closed form stays in its own column; rows not re-priced keep it as their time
    rest = df[~df["simulated"]]
    assert np.array_equal(rest["step_time_s"].to_numpy(), rest["step_time_closed_s"].to_numpy())
    assert (piped["step_time_s"] != piped["step_time_closed_s"]).any()


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 4), ("zbv", 2)])
@pytest.mark.parametrize("p,k", [(2, 2), (4, 2), (4, 8), (8, 3)])
def test_peak_inflight_matches_memory_model(name, v, p, k):
    # the memory model's in-flight count (parsim.costs.memory, in units of one rank's layers) equals the
    # schedule's rank-0 peak / v: GPipe m, 1F1B p, interleaved p + (p-1)/v (Korthikanti 2022 §4.2.3),
    # ZB-V p. (With m = p < 2p-1, torch's ZB-V holds fewer than p; the memory model stays at p.)
    from parsim.costs.memory import inflight_microbatches
    from parsim.plan import SCHEDULES
    from parsim.schedules.pipeline import peak_inflight_per_rank
    m = k * p
    ours = peak_inflight_per_rank(build_schedule(name, p, m, v))[0] / v
    assert ours == pytest.approx(float(inflight_microbatches(SCHEDULES.index(name), p, v, m)), rel=1e-12)


def test_p2p_priced_on_cluster_graph(capsys):
    from parsim.costs.network import collective_time_s
    from parsim.simulate import p2p_on_cluster
    from parsim.topology import load_cluster
    cl = load_cluster("dgx-h100", 16)                    # two 8-GPU nodes: ranks 7 -> 8 cross the NIC
    price = p2p_on_cluster(cl, tp=1)
    nbytes = 64 * 2 ** 20
    assert price(0, 1, nbytes) == collective_time_s(cl, "sendrecv", "native", (0, 1), nbytes)
    assert price(7, 8, nbytes) > price(0, 1, nbytes)
    assert p2p_on_cluster(cl, tp=8)(0, 1, nbytes) == price(0, 8, nbytes)   # pp rank 1 is device 8
    free = pipeline_step("1f1b", 16, 32, None, 1e-3, 2e-3)
    priced = pipeline_step("1f1b", 16, 32, None, 1e-3, 2e-3, p2p_s=price, p2p_bytes=nbytes)
    assert priced.makespan_s > free.makespan_s
    # the CLI route: --cluster with --stage-times prices --p2p-bytes on the graph
    assert main(["simulate", "--pp", "16", "-m", "32", "--stage-times", "1,2", "--cluster", "dgx-h100",
                 "--p2p-bytes", "64MiB", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["makespan_s"] == pytest.approx(priced.makespan_s, rel=1e-12)


def test_cli_model_route(capsys):
    # stage times from the cost model (parsim.predict.price): the first rank carries the embedding,
    # the last the loss head, so they are busier than the middle ones
    assert main(["simulate", "--pp", "4", "-m", "8", "--model", "llama2-13b", "--cluster", "dgx-h100",
                 "--tp", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    busy = out["busy_s"]
    assert busy[1] == pytest.approx(busy[2], rel=1e-12) and busy[0] > busy[1] and busy[3] > busy[1]
    assert main(["simulate", "--pp", "4", "-m", "8", "--model", "llama2-13b"]) == 2
    assert "--model needs --cluster" in capsys.readouterr().err
