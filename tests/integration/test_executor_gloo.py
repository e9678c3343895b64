"""The backend's collective executor over gloo with real processes: one launch of 4 ranks
(torch.multiprocessing, file rendezvous) runs every op and algorithm parsim builds on groups of
2, 3 and 4 ranks — a sub-group [1, 3] through its own process group, a permuted non-power of
two [2, 0, 1], the whole world, and the dedicated-server PS variants with the spare rank as
their server — at element counts 1, 7, 12 and 1000 (7 and 1000 are not multiples of 3, 7 not of
2 or 4). Each worker's buffer must equal ``parsim.schedules.collectives.reference`` (the op's
contract) exactly: inputs are small integers in float32. The DP entry point ``allreduce`` runs
too, on a non-contiguous 2-D tensor, against torch's own ``all_reduce``.

One launch on purpose: the machine's cores are shared; every case is a few milliseconds."""
from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch")

WORLD = 4
COUNTS = (1, 7, 12, 1000)


def _groups():
    """(workers' global ranks, spare global ranks for dedicated servers, use the sub-group)."""
    return [([1, 3], [0], True), ([2, 0, 1], [3], False), ([0, 1, 2, 3], [], False)]


def _cases(p, count, spare):
    """(op, algo, kw) runnable on p workers with `spare` server ranks at `count` float32 elements."""
    from parsim.schedules.collectives import BUILDERS
    for op, algos in BUILDERS.items():
        for algo in algos:
            if op in ("reduce_scatter", "all_gather") and algo in ("hd", "rd") and p & (p - 1):
                continue
            if op == "all_to_all" and count % p:
                continue
            if algo == "hierarchical":
                kws = [{"local_size": L} for L in sorted({1, p} | ({2} if p % 2 == 0 else set()))]
            elif algo == "tree" or op == "broadcast":
                kws = [{}, {"chunks": 3}]
            elif algo == "ps-central":
                kws = [{"dedicated": False}] + ([{"dedicated": True}] if spare else [])
            elif algo == "ps-sharded":
                kws = [{"servers": 1}] if spare else []
            elif algo == "ps-pipelined":
                kws = [{"servers": 1, "partition_bytes": 8}] if spare else []
            else:
                kws = [{}]
            for kw in kws:
                yield op, algo, kw


def _input(case_id, w, count):
    rng = np.random.default_rng(case_id * 16 + w)
    return rng.integers(-1000, 1000, count).astype(np.float32)


def _rank(rank, init, out):
    import torch.distributed as dist

    from backends.torchdist.collectives import allreduce, run_schedule
    from parsim.schedules.collectives import build, reference
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    pgs = {(1, 3): dist.new_group([1, 3]), (0, 1, 2): dist.new_group([0, 1, 2])}   # every rank creates every group
    failures, checked, case_id = [], 0, 0
    for workers, spare, use_sub in _groups():
        p = len(workers)
        pg = pgs.get(tuple(sorted(workers)))         # the workers' own process group (None: the world)
        for count in COUNTS:
            for op, algo, kw in _cases(p, count, spare):
                case_id += 1
                sched = build(op, algo, p, count * 4, 4, **kw)
                ranks = workers + spare[:sched.servers]
                if rank not in ranks:
                    continue
                me = ranks.index(rank)
                buf = torch.from_numpy(_input(case_id, me, count) if me < p else np.zeros(count, np.float32))
                # the sub-group's own process group when it holds every rank of the schedule
                run_schedule(sched, buf, ranks, pg if use_sub and not sched.servers else None)
                if me < p:
                    want, defined = reference(sched, me, lambda w: _input(case_id, w, count))
                    checked += 1
                    if not np.array_equal(buf.numpy()[defined], want[defined]):
                        failures.append(f"{op} {algo} {kw} ranks {ranks} count {count}: worker {me} wrong")
        # the DP gradient-sync entry point, on a non-contiguous 2-D tensor, against torch's all_reduce
        if rank in workers:
            me = workers.index(rank)
            for algo in ("ring", "tree", "hd", "rd", "hierarchical", "ps", "ps-central", "native"):
                x = torch.from_numpy(_input(1000 + p, me, 3 * 37)).reshape(37, 3).t()
                assert not x.is_contiguous()
                ref = x.contiguous()
                dist.all_reduce(ref, group=pg)
                got = allreduce(x, algo, group=pg, group_ranks=workers,
                                local_size=2 if algo == "hierarchical" and p % 2 == 0 else None)
                checked += 1
                if not torch.equal(got, ref):
                    failures.append(f"allreduce() {algo} ranks {workers}: worker {me} differs from torch's all_reduce")
    dist.barrier()
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"failures": failures, "checked": checked}, f)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_schedule_runs_over_gloo_and_leaves_the_ops_result(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "result")
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rdv'}", out), nprocs=WORLD, join=True)
    res = [json.loads(open(f"{out}.{r}").read()) for r in range(WORLD)]
    assert [f for r in res for f in r["failures"]] == []
    assert all(r["checked"] > 40 for r in res), [r["checked"] for r in res]   # the cases ran, not skipped
