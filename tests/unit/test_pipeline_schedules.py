"""Pipeline schedules as data: op orders (by hand and against torch), placement, dependencies, bad input."""
import re
import types

import pytest

from parsim.errors import ParsimError
from parsim.schedules.pipeline import B, F, build_schedule, peak_inflight

CASES = [("gpipe", p, m, 1) for p, m in [(1, 1), (2, 3), (4, 8), (3, 7)]] \
    + [("1f1b", p, m, 1) for p, m in [(1, 1), (2, 3), (4, 4), (4, 9), (8, 16)]] \
    + [("interleaved", p, m, v) for p, m, v in [(2, 2, 2), (4, 8, 2), (4, 8, 3), (4, 3, 2), (4, 10, 2), (3, 12, 4)]] \
    + [("zbv", p, m, 2) for p, m in [(1, 1), (2, 3), (4, 2), (4, 8), (4, 13)]]


def test_1f1b_order_by_hand():
    # p=2, m=3: rank 0 warms up with p-1-0 = 1 forward, then F/B pairs, then the last backward;
    # the last rank has no warm-up and alternates from the start.
    s = build_schedule("1f1b", 2, 3)
    assert s.torch_order() == {0: ["0F0", "0F1", "0B0", "0F2", "0B1", "0B2"],
                               1: ["1F0", "1B0", "1F1", "1B1", "1F2", "1B2"]}


def test_interleaved_order_by_hand():
    # p=2, m=2, v=2: rank r holds stages r and r+2; per_round = m // max(1, m//p) = 2.
    # rank 0 warm-up = (v-1)*per_round + 2*(p-1-0) = 4 = all its forwards, then 4 backwards (stage 2 first);
    # rank 1 warm-up = 2 + 0 = 2 forwards of stage 1, then (F3, B3) pairs, then stage 1's backwards.
    s = build_schedule("interleaved", 2, 2, 2)
    assert s.torch_order() == {0: ["0F0", "0F1", "2F0", "2F1", "2B0", "2B1", "0B0", "0B1"],
                               1: ["1F0", "1F1", "3F0", "3B0", "3F1", "3B1", "1B0", "1B1"]}


def test_stage_placement():
    assert build_schedule("interleaved", 4, 8, 3).stage_to_rank.tolist() == [0, 1, 2, 3] * 3   # loop
    assert build_schedule("zbv", 4, 8).stage_to_rank.tolist() == [0, 1, 2, 3, 3, 2, 1, 0]     # V
    assert build_schedule("1f1b", 4, 8).stage_to_rank.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("name,p,m,v", CASES)
def test_every_op_once_and_dependencies(name, p, m, v):
    s = build_schedule(name, p, m, v)
    kinds = 3 if name == "zbv" else 2
    assert s.n_ops == kinds * p * v * m
    key = {(int(k), int(st), int(i)): n for n, (k, st, i) in enumerate(zip(s.kind, s.stage, s.microbatch))}
    assert len(key) == s.n_ops
    S = s.num_stages
    for n, (k, st, i) in enumerate(zip(s.kind.tolist(), s.stage.tolist(), s.microbatch.tolist())):
        if k == F:
            assert s.dep_data[n] == key.get((F, st - 1, i), -1) and s.dep_stage[n] == -1
        elif k == B:
            assert s.dep_data[n] == (key[(B, st + 1, i)] if st < S - 1 else -1)
            assert s.dep_stage[n] == key[(F, st, i)]
        else:
            assert s.dep_data[n] == -1 and s.dep_stage[n] == key[(B, st, i)]


def test_peak_inflight_1f1b_vs_gpipe():
    # 1F1B: stage s starts p-s forwards before its first backward -> p on stage 0 (Narayanan 2021 §2.2);
    # GPipe runs all m forwards first -> m on every stage.
    p, m = 4, 12
    assert peak_inflight(build_schedule("1f1b", p, m)).tolist() == [4, 3, 2, 1]
    assert peak_inflight(build_schedule("gpipe", p, m)).tolist() == [m] * p


@pytest.mark.parametrize("args,fragment", [
    (("1f1b", 0, 4), "pp=0"),
    (("gpipe", 2, 0), "m=0"),
    (("1f1b", 4, 3), "m (3) >= pp (4) (torch Schedule1F1B refuses fewer)"),
    (("interleaved", 4, 10, 2), None),                 # allowed: rounds = 2 divides 10
    (("interleaved", 4, 9, 2), "multiple of the number of rounds"),
    (("zbv", 4, 8, 3), "exactly 2 stages"),
    (("gpipe", 4, 8, 2), "vpp = 2"),
    (("1f1bb", 4, 8), "did you mean 1f1b"),
    (("interleavd", 4, 8), "did you mean interleaved"),
])
def test_bad_input(args, fragment):
    if fragment is None:
        build_schedule(*args)
        return
    with pytest.raises(ParsimError, match=re.escape(fragment)):
        build_schedule(*args)


# ---------------------------------------------------------------- against torch.distributed.pipelining

def _torch_schedules():
    torch = pytest.importorskip("torch")
    return torch, pytest.importorskip("torch.distributed.pipelining.schedules")


def _stage(torch, idx, n_stages, p):
    return types.SimpleNamespace(stage_index=idx, num_stages=n_stages, group_size=p, group_rank=0,
                                 is_first=idx == 0, is_last=idx == n_stages - 1,
                                 stage_index_to_group_rank=None, submod=torch.nn.Identity())


def _torch_pipeline_order(name, p, m, v):
    """Compute actions of torch's `pipeline_order` IR (what _PipelineScheduleRuntime executes)."""
    torch, s = _torch_schedules()
    if name == "gpipe":
        sched = s.ScheduleGPipe(_stage(torch, 0, p, p), m)
    elif name == "interleaved":
        sched = s.ScheduleInterleaved1F1B([_stage(torch, j * p, v * p, p) for j in range(v)], m)
    else:
        sched = s.ScheduleZBVZeroBubble([_stage(torch, 0, 2 * p, p), _stage(torch, 2 * p - 1, 2 * p, p)], m)
    return {r: [str(a) for a in acts if a is not None and a.computation_type.value in ("F", "B", "I", "W")]
            for r, acts in sched.pipeline_order.items()}


class _RecordingStage:
    """Stands in for a PipelineStage: no communication, records compute calls in order."""

    def __init__(self, idx, p):
        self.stage_index, self.num_stages, self.group_size, self.group_rank = idx, p, p, idx
        self.is_first, self.is_last, self.log = idx == 0, idx == p - 1, []

    def get_fwd_recv_ops(self, i):
        return []

    get_fwd_send_ops = get_bwd_recv_ops = get_bwd_send_ops = get_fwd_recv_ops

    def forward_one_chunk(self, i, *a, **k):
        self.log.append(f"{self.stage_index}F{i}")

    def backward_one_chunk(self, i, **k):
        self.log.append(f"{self.stage_index}B{i}")

    def perform_reduce_grad(self, *a):
        pass


def _torch_executed_order(name, p, m):
    """Order in which torch's single-stage GPipe/1F1B `_step_microbatches` call forward/backward.

    These two run their own loop, not `pipeline_order`; torch 2.13's 1F1B `pipeline_order` (only used
    for printing) skips micro-batch 0 on the last rank, so the executed order is the reference."""
    _, s = _torch_schedules()
    cls = {"gpipe": s.ScheduleGPipe, "1f1b": s.Schedule1F1B}[name]
    out = {}
    for r in range(p):
        st = _RecordingStage(r, p)
        sched = cls(st, m)
        sched._check_inputs = lambda *a: ([()] * m, [{}] * m)
        sched._initialize_stage = sched._maybe_compute_loss = sched._maybe_get_loss = \
            sched._update_losses = lambda *a, **k: None
        sched._step_microbatches()
        out[r] = st.log
    return out


@pytest.mark.torch
@pytest.mark.parametrize("name,p,m,v", [c for c in CASES if c[0] != "1f1b"])
def test_order_equals_torch_pipeline_order(name, p, m, v):
    assert build_schedule(name, p, m, v).torch_order() == _torch_pipeline_order(name, p, m, v)


@pytest.mark.torch
@pytest.mark.parametrize("name,p,m", [(c[0], c[1], c[2]) for c in CASES if c[0] in ("gpipe", "1f1b")])
def test_order_equals_torch_executed_order(name, p, m):
    assert build_schedule(name, p, m).torch_order() == _torch_executed_order(name, p, m)


@pytest.mark.torch
def test_torch_refuses_what_we_refuse():
    # the same interleaved micro-batch rule as torch: m % max(1, m // p) == 0
    for m in (9, 10):
        ours_ok = True
        try:
            build_schedule("interleaved", 4, m, 2)
        except ParsimError:
            ours_ok = False
        try:
            _torch_pipeline_order("interleaved", 4, m, 2)
            torch_ok = True
        except ValueError:
            torch_ok = False
        assert ours_ok == torch_ok, m


def test_parsim_import_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, parsim, parsim.simulate, parsim.schedules.pipeline, parsim.commands.simulate; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
