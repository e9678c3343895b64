"""The one launcher's generic parts: a per-rank command prefix (what `ip netns exec HOST env ...` is for
an emulated cluster), any command once per rank (`parsim emulate run -- CMD`), and a helper process —
each with the launcher's guarantees (the failed rank named, the others stopped, nothing left behind)."""
from __future__ import annotations

import os
import sys

import pytest

from backends.torchdist.launch import RunFailed, run_process, run_ranks


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_run_ranks_names_the_failed_rank_and_stops_the_others(tmp_path):
    # rank 0 would sleep a minute; rank 1 checks it got its torchrun variables, then exits 3
    code = ("import os, sys, time; r = int(os.environ['RANK']); assert os.environ['WORLD_SIZE'] == '2'; "
            "assert os.environ['MASTER_PORT'].isdigit(); time.sleep(60) if r == 0 else sys.exit(3)")
    with pytest.raises(RunFailed) as ei:
        run_ranks([[sys.executable, "-c", code]] * 2, timeout_s=50, grace_s=0.5)
    assert str(ei.value).startswith("rank 1 exited with code 3"), str(ei.value)
    assert ei.value.returncode == 3 and "\n" not in str(ei.value)
    assert not any(_alive(p) for p in ei.value.pids)


@pytest.mark.timeout(60)
def test_run_ranks_times_out_with_124_and_kills_every_rank():
    with pytest.raises(RunFailed) as ei:
        run_ranks([[sys.executable, "-c", "import time; time.sleep(60)"]] * 2, timeout_s=1.5)
    assert ei.value.returncode == 124 and "timeout of 2 s" in str(ei.value)
    assert not any(_alive(p) for p in ei.value.pids)


def test_run_process_captures_and_kills_at_its_timeout():
    rc, out, err = run_process([sys.executable, "-c", "print('hi')"], 30)
    assert (rc, out) == (0, "hi\n")
    with pytest.raises(RunFailed) as ei:
        run_process([sys.executable, "-c", "import time; time.sleep(60)"], 0.5, what="sleeper")
    assert ei.value.returncode == 124 and str(ei.value).startswith("sleeper did not finish")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_rank_prefix_reaches_each_rank_and_a_fault_behind_it_is_named():
    pytest.importorskip("torch")
    from backends.torchdist import bench
    job = bench.make_job("allreduce", "ring", "4KiB", 2, 0, world=2)
    # every rank behind `env PARSIM_NETEM_HOSTS=3` (as an emulated host's prefix sets it): the result says 3
    res = bench.launch_job(job, 2, 120, rank_prefix=lambda r: ["env", "PARSIM_NETEM_HOSTS=3"])
    assert [r["hosts"] for r in res] == [3] and res[0]["correct"]
    # rank 1 alone behind a prefix that injects SIGKILL at its second repeat: named, the other stopped
    with pytest.raises(RunFailed) as ei:
        bench.launch_job(job, 2, 120, rank_prefix=lambda r: ["env", "PARSIM_FAULT=1:1:kill"] if r == 1 else [])
    assert str(ei.value).startswith("rank 1 was killed by SIGKILL"), str(ei.value)
    assert ei.value.returncode == -9
    assert not any(_alive(p) for p in ei.value.pids)
    assert os.environ.get("PARSIM_FAULT") is None
