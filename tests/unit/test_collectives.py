"""Collective schedules: a pure-numpy reference executor runs every schedule on random
arrays and checks the exact result (the contract backends/torchdist relies on)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parsim.errors import ParsimError
from parsim.schedules import collectives as C

ISZ = 8  # int64 elements: sums are exact


def execute(s: C.Schedule, inputs):
    """Reference executor: every transfer of a step reads the sender's buffer as it was when
    the step began; receives are applied (add or copy) when the step ends."""
    bufs = [b.copy() for b in inputs] + [np.zeros_like(inputs[0]) for _ in range(s.servers)]
    for step in s.steps:
        snap = [b.copy() for b in bufs]
        for t in step.transfers:
            assert 0 <= t.src < s.nranks and 0 <= t.dst < s.nranks and t.src != t.dst, t
            assert t.offset % ISZ == 0 and t.nbytes % ISZ == 0 and t.dst_offset % ISZ == 0, t
            assert t.offset + t.nbytes <= s.nbytes and t.dst_offset + t.nbytes <= s.nbytes, t
            a, n, d = t.offset // ISZ, t.nbytes // ISZ, t.dst_offset // ISZ
            if t.reduce:
                bufs[t.dst][d:d + n] += snap[t.src][a:a + n]
            else:
                bufs[t.dst][d:d + n] = snap[t.src][a:a + n]
    return bufs


def _inputs(p, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(-1000, 1000, count) for _ in range(p)]


ALLREDUCE_CASES = [("ring", {}), ("rd", {}), ("hd", {}), ("tree", {"chunks": 1}), ("tree", {"chunks": 3}),
                   ("tree", {}), ("ps", {}), ("ps-central", {"dedicated": True}), ("ps-central", {"dedicated": False}),
                   ("ps-sharded", {"servers": 1}), ("ps-sharded", {"servers": 3}),
                   ("ps-pipelined", {"servers": 2, "partition_bytes": 16}),
                   ("ps-pipelined", {"servers": 3, "partition_bytes": 8}), ("ps-pipelined", {"servers": 1})]


@pytest.mark.parametrize("algo,kw", ALLREDUCE_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("p", [1, 2, 3, 5, 6, 8, 12, 16])
@pytest.mark.parametrize("count", [1, 7, 100])
def test_allreduce_schedules_compute_the_sum(algo, kw, p, count):
    x = _inputs(p, count, seed=p * 1000 + count)
    s = C.build("allreduce", algo, p, count * ISZ, ISZ, **kw)
    out = execute(s, x)
    want = np.sum(x, axis=0)
    for r in range(p):
        np.testing.assert_array_equal(out[r], want, err_msg=f"{algo} p={p} rank {r}")


@pytest.mark.parametrize("p,local", [(4, 2), (6, 3), (6, 2), (8, 4), (12, 4), (12, 1), (8, 8), (9, 3)])
def test_hierarchical_allreduce(p, local):
    x = _inputs(p, 37)
    out = execute(C.allreduce_hierarchical(p, 37 * ISZ, ISZ, local_size=local), x)
    assert all((o == np.sum(x, axis=0)).all() for o in out[:p])


def test_multi_channel_ring_is_an_allreduce():
    p = 8   # two nodes of 4; each channel enters every node at a different GPU
    orders = [[n * 4 + (j + i) % 4 for n in range(2) for i in range(4)] for j in range(4)]
    x = _inputs(p, 50)
    out = execute(C.allreduce_ring(p, 50 * ISZ, ISZ, orders=orders), x)
    assert all((o == np.sum(x, axis=0)).all() for o in out)


def test_multi_channel_reduce_scatter_and_all_gather_keep_the_owner_contract():
    p, count = 8, 64
    orders = [[n * 4 + (j + i) % 4 for n in range(2) for i in range(4)] for j in range(4)]
    x = _inputs(p, count)
    seg = C.segments(count * ISZ, p, ISZ) // ISZ
    out = execute(C.reduce_scatter_ring(p, count * ISZ, ISZ, orders=orders), x)
    for r in range(p):
        np.testing.assert_array_equal(out[r][seg[r]:seg[r + 1]], np.sum(x, axis=0)[seg[r]:seg[r + 1]])
    want = np.concatenate([x[r][seg[r]:seg[r + 1]] for r in range(p)])
    for o in execute(C.all_gather_ring(p, count * ISZ, ISZ, orders=orders), x):
        np.testing.assert_array_equal(o, want)
    with pytest.raises(ParsimError, match="permutations"):
        C.allreduce_ring(4, 64, orders=[[0, 1, 2, 2]])


@given(p=st.integers(1, 20), count=st.integers(0, 64), algo=st.sampled_from(["ring", "rd", "hd", "tree", "ps"]),
       seed=st.integers(0, 10))
@settings(max_examples=60, deadline=None)
def test_allreduce_property(p, count, algo, seed):
    x = _inputs(p, count, seed)
    out = execute(C.build("allreduce", algo, p, count * ISZ, ISZ), x)
    assert all((o == np.sum(x, axis=0)).all() for o in out[:p])


@pytest.mark.parametrize("algo", ["ring", "hd"])
@pytest.mark.parametrize("p", [2, 3, 4, 7, 8])
def test_reduce_scatter_owner_slices(algo, p):
    if algo == "hd" and p & (p - 1):
        with pytest.raises(ParsimError, match="power-of-two group, got p = "):
            C.build("reduce_scatter", algo, p, 64 * ISZ, ISZ)
        return
    x = _inputs(p, 64)
    s = C.build("reduce_scatter", algo, p, 64 * ISZ, ISZ)
    out, seg, want = execute(s, x), C.segments(64 * ISZ, p, ISZ) // ISZ, np.sum(x, axis=0)
    for r in range(p):
        np.testing.assert_array_equal(out[r][seg[r]:seg[r + 1]], want[seg[r]:seg[r + 1]])


@pytest.mark.parametrize("algo", ["ring", "rd"])
@pytest.mark.parametrize("p", [2, 4, 5, 8])
def test_all_gather(algo, p):
    if algo == "rd" and p & (p - 1):
        with pytest.raises(ParsimError, match="use ring"):
            C.build("all_gather", algo, p, 40 * ISZ, ISZ)
        return
    x = _inputs(p, 40)
    seg = C.segments(40 * ISZ, p, ISZ) // ISZ
    want = np.concatenate([x[r][seg[r]:seg[r + 1]] for r in range(p)])
    for o in execute(C.build("all_gather", algo, p, 40 * ISZ, ISZ), x):
        np.testing.assert_array_equal(o, want)


@pytest.mark.parametrize("algo,chunks", [("ring", 1), ("ring", 4), ("tree", 1), ("tree", 5)])
@pytest.mark.parametrize("p", [2, 3, 6, 9])
def test_broadcast(algo, chunks, p):
    x = _inputs(p, 30)
    for o in execute(C.build("broadcast", algo, p, 30 * ISZ, ISZ, chunks=chunks), x):
        np.testing.assert_array_equal(o, x[0])


@pytest.mark.parametrize("p", [2, 3, 4, 6])
def test_all_to_all_transposes_slices(p):
    count = 5 * p
    x = _inputs(p, count)
    out = execute(C.build("all_to_all", "pairwise", p, count * ISZ, ISZ), x)
    blk = count // p
    for i in range(p):
        for j in range(p):
            np.testing.assert_array_equal(out[j][i * blk:(i + 1) * blk], x[i][j * blk:(j + 1) * blk])


def test_all_to_all_unequal_slices_is_an_error():
    with pytest.raises(ParsimError, match="equal slices"):
        C.build("all_to_all", "pairwise", 3, 4 * ISZ, ISZ)


def test_sendrecv_shifts_buffers():
    x = _inputs(4, 9)
    out = execute(C.build("sendrecv", "direct", 4, 9 * ISZ, ISZ), x)
    for i in range(1, 4):
        np.testing.assert_array_equal(out[i], x[i - 1])


def test_step_counts_and_bytes_follow_the_formulas():
    n, p = 2 ** 20, 8
    ring = C.allreduce_ring(p, n)
    assert len(ring.steps) == 2 * (p - 1)                                   # 2(p-1) steps
    assert (ring.bytes_sent() == 2 * (p - 1) * n // p).all()                # of n/p each
    hd = C.allreduce_hd(p, n)
    assert len(hd.steps) == 2 * 3 and (hd.bytes_sent() == 2 * (p - 1) * n // p).all()
    rd = C.allreduce_rd(p, n)
    assert len(rd.steps) == 3 and (rd.bytes_sent() == 3 * n).all()         # log2 p full exchanges
    tree = C.allreduce_tree(p, n, chunks=4)
    assert len(tree.steps) == 2 * tree.meta["height"] + 4 - 1              # 2H + c - 1 rounds
    ps = C.allreduce_ps_sharded(p, n, servers=2)
    assert ps.servers == 2 and ps.nranks == 10 and ps.bytes_sent()[p:].tolist() == [p * n // 2] * 2


def test_double_binary_tree_interiors_are_disjoint():
    """Sanders et al. 2009 / NCCL: every rank is interior in at most one of the two trees."""
    for p in (4, 8, 16, 6, 7):
        t1, t2 = C.double_binary_trees(p)
        inner = lambda t: {par for par in t if par >= 0}
        assert sorted(t1).count(-1) == 1 and sorted(t2).count(-1) == 1
        if p % 2 == 0:
            assert not inner(t1) & inner(t2), p


def test_format_is_plain_data():
    s = C.allreduce_ring(4, 4096).with_ranks([10, 11, 12, 13])
    t = s.steps[0].transfers[0]
    assert isinstance(t, C.Transfer) and (t.src, t.dst, t.reduce) == (0, 1, True) and t.offset == t.dst_offset
    assert s.ranks == (10, 11, 12, 13) and s.nranks == 4 and s.op == "allreduce"
    with pytest.raises(ParsimError, match="bound to 3 global ranks"):
        s.with_ranks([1, 2, 3])


def test_default_alignment_fits_any_element_size():
    assert C.default_align(4 * 1001) == 4 and C.default_align(2 * 7) == 2 and C.default_align(2 ** 20) == 16
    s = C.allreduce_ring(3, 4 * 1001)
    assert all((st.offset % 4 == 0).all() and (st.nbytes % 4 == 0).all() for st in s.steps)


def test_bad_requests_are_clear_errors():
    with pytest.raises(ParsimError, match="did you mean ring"):
        C.build("allreduce", "rign", 4, 64)
    with pytest.raises(ParsimError, match="native"):
        C.build("allreduce", "native", 4, 64)
    with pytest.raises(ParsimError, match="unknown collective"):
        C.build("allgather2", "ring", 4, 64)
    with pytest.raises(ParsimError, match="not a multiple of align"):
        C.build("allreduce", "ring", 4, 63, 8)
    with pytest.raises(ParsimError, match="whole number of nodes"):
        C.allreduce_hierarchical(6, 64, local_size=4)


@pytest.mark.parametrize("op,algo,rank,want,defined", [
    # p = 2, 4 elements, worker 0 = [1, 2, 3, 4], worker 1 = [10, 20, 30, 40]; slices [0:2), [2:4)
    ("allreduce", "ring", 1, [11, 22, 33, 44], [1, 1, 1, 1]),
    ("reduce_scatter", "ring", 1, [11, 22, 33, 44], [0, 0, 1, 1]),    # only worker 1's own slice is defined
    ("all_gather", "ring", 0, [1, 2, 30, 40], [1, 1, 1, 1]),           # slice 1 from worker 1
    ("broadcast", "tree", 1, [1, 2, 3, 4], [1, 1, 1, 1]),              # worker 0's buffer
    ("all_to_all", "pairwise", 0, [1, 2, 10, 20], [1, 1, 1, 1]),       # worker 1's slice 0 lands in slice 1
    ("sendrecv", "direct", 1, [1, 2, 3, 4], [1, 1, 1, 1]),             # worker 0's buffer moved to worker 1
])
def test_reference_states_each_ops_contract(op, algo, rank, want, defined):
    x = [np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])]
    got, mask = C.reference(C.build(op, algo, 2, 4 * ISZ, ISZ), rank, x.__getitem__)
    assert mask.tolist() == [bool(d) for d in defined]
    assert got[mask].tolist() == [w for w, d in zip(want, defined) if d]
    out = execute(C.build(op, algo, 2, 4 * ISZ, ISZ), x)        # and the schedule, played, agrees
    assert out[rank][mask].tolist() == got[mask].tolist()
