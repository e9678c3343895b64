"""The backend's collective executor, without processes: every rank's program
(``backends.torchdist.collectives.rank_program``, exactly what ``run_schedule`` posts and
applies) is played in numpy, sends matched to receives by (src, dst, tag), and each worker's
buffer is compared with the op's contract (``parsim.schedules.collectives.reference``).

Every algorithm parsim builds for every op is covered (the list is read from
``parsim.schedules.collectives.BUILDERS``, so a new builder is tested here the day it is
added), on group sizes 1-8 including non-powers of two and sizes that are not multiples of
the group size. Inputs are small integers, so float32 and int64 sums are exact and the
comparison is equality."""
import numpy as np
import pytest

from backends.torchdist.collectives import rank_program
from parsim.schedules import collectives as C


def play(schedule, inputs):
    """Every rank's program, step by step: all sends of a step read the buffers as they were
    when the step began (the executor's isend of a view, waited before anything lands), every
    send must be received by exactly one receive of the same (src, dst, tag) and length."""
    isz = inputs[0].itemsize
    bufs = [x.copy() for x in inputs] + [np.zeros_like(inputs[0]) for _ in range(schedule.servers)]
    progs = [rank_program(schedule, r, isz) for r in range(schedule.nranks)]
    assert all(len(pr) == len(schedule.steps) for pr in progs)
    for k in range(len(schedule.steps)):
        mail = {}
        for r, pr in enumerate(progs):
            for peer, tag, start, count in pr[k][0]:
                assert (r, peer, tag) not in mail, f"step {k}: two sends {r}->{peer} with tag {tag}"
                assert 0 <= start and start + count <= len(bufs[r])
                mail[(r, peer, tag)] = bufs[r][start:start + count].copy()
        for r, pr in enumerate(progs):
            for peer, tag, start, count, red in pr[k][1]:
                data = mail.pop((peer, r, tag), None)
                assert data is not None, f"step {k}: rank {r} waits for {peer} tag {tag}, nobody sends it"
                assert len(data) == count, f"step {k}: {peer}->{r} sends {len(data)} elements, receiver expects {count}"
                if red:
                    bufs[r][start:start + count] += data
                else:
                    bufs[r][start:start + count] = data
        assert not mail, f"step {k}: sends nobody receives: {sorted(mail)}"
    return bufs


def check(schedule, inputs):
    out = play(schedule, inputs)
    for r in range(schedule.p):
        want, defined = C.reference(schedule, r, inputs.__getitem__)
        np.testing.assert_array_equal(out[r][defined], want[defined],
                                      err_msg=f"{schedule.op} {schedule.algo} p={schedule.p} worker {r}")


def _inputs(p, count, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(-1000, 1000, count).astype(dtype) for _ in range(p)]


def _variants(op, algo, p, count):
    """Keyword sets that exercise an algorithm's options (servers, chunks, local size), or [] when
    the algorithm does not apply to (p, count), as parsim's builders refuse it."""
    if op in ("reduce_scatter", "all_gather") and algo in ("hd", "rd") and p & (p - 1):
        return []                                  # recursive halving/doubling: powers of two only
    if op == "all_to_all" and count % p:
        return []                                  # equal slices only
    if algo == "hierarchical":
        return [{"local_size": L} for L in sorted({1, p} | {d for d in (2, 3) if p % d == 0})]
    if algo == "tree" or op == "broadcast":
        return [{}, {"chunks": 3}]
    if algo == "ps-central":
        return [{"dedicated": True}, {"dedicated": False}]
    if algo == "ps-sharded":
        return [{"servers": 1}, {"servers": 2}]
    if algo == "ps-pipelined":
        return [{"servers": 2, "partition_bytes": 8}, {"servers": 1}]
    return [{}]


CASES = [(op, algo) for op, algos in C.BUILDERS.items() for algo in algos]


@pytest.mark.parametrize("op,algo", CASES, ids=[f"{o}-{a}" for o, a in CASES])
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 6, 8])
def test_every_rank_ends_with_what_the_op_promises(op, algo, p):
    for count in (1, 7, 24, 1000):       # 7, 1000: not multiples of 3, 6, 8 (or 7 of 2, 4, 5)
        for dtype, align in ((np.float32, 4), (np.int64, 8), (np.float32, None)):
            for kw in _variants(op, algo, p, count):
                isz = np.dtype(dtype).itemsize
                a = C.default_align(count * isz) if align is None else align
                if op == "all_to_all" and count * isz % (p * a):
                    continue                       # slices of whole aligned units only (the builder refuses)
                sched = C.build(op, algo, p, count * isz, align, **kw)
                check(sched, _inputs(p, count, dtype, seed=p * 100 + count))


def test_the_executor_runs_parsims_double_binary_tree():
    """'tree' is the schedule parsim prices: NCCL's double binary tree, each tree carrying half the
    buffer, not a binomial tree of the whole buffer (where rank 0 would send the whole buffer to
    log2 p children). p=8, 1 chunk: tree 1 is ncclGetBtree's, tree 2 its mirror r -> 7-r."""
    sched = C.build("allreduce", "tree", 8, 64 * 4, 4, chunks=1)
    t1, t2 = C.double_binary_trees(8)
    assert t1.count(-1) == t2.count(-1) == 1 and t1 != t2
    sent = {}
    for r in range(8):
        for sends, _ in rank_program(sched, r, 4):
            for peer, _, start, count in sends:
                sent.setdefault(r, set()).add(peer)
                assert count == 32          # half the 64 elements: one tree's share
    # every rank talks to its parent and children in both trees, nobody else
    for r in range(8):
        nbrs = {t[r] for t in (t1, t2) if t[r] >= 0} | {v for t in (t1, t2) for v in range(8) if t[v] == r}
        assert sent[r] == nbrs, r
    check(sched, _inputs(8, 64, np.float32, 0))


def test_a_broken_schedule_or_program_is_caught():
    """The harness can fail: a ring step that reads the wrong chunk, and a program whose receive
    waits for a tag nobody sends."""
    good = C.build("allreduce", "ring", 4, 40 * 4, 4)
    s = good.steps[0]
    bad_step = C.Step(s.src, s.dst, np.roll(s.offset, 1), s.nbytes, s.reduce, np.roll(s.dst_offset, 1))
    bad = C.Schedule(good.op, good.algo, good.p, good.nbytes, good.align, (bad_step, *good.steps[1:]))
    with pytest.raises(AssertionError):
        check(bad, _inputs(4, 40, np.float32, 1))
    dup = C.Step.of([(0, 1, 0, 8, 1), (0, 1, 8, 8, 1)])       # two transfers 0->1 in one step: tags 0 and 1
    prog = rank_program(C.Schedule("allreduce", "x", 2, 16, 4, (dup,)), 1, 4)
    assert [t[1] for t in prog[0][1]] == [0, 1]
