"""price() streams the plan table in chunks (issue 13, item 7): the results must not depend on the chunking,
and the memory of a streamed pricing must follow the chunk, not the table."""
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from parsim.errors import ParsimError
from parsim.model import load_model
from parsim.predict import get_cluster, price, price_chunks
from parsim.search import candidates, search


def _table(model, gpus, seq, dtype="bf16", cluster="dgx-h100", rows=None, seed=0):
    m, cl = load_model(model), get_cluster(cluster, gpus)
    cols, _, _ = candidates(m, gpus, 1024, seq, dtype=dtype, device=cl.device)
    if rows is not None:                      # a random subset, in random order (mixed rows in every chunk)
        idx = np.random.default_rng(seed).permutation(len(cols["dp"]))[:rows]
        cols = {k: v[idx] for k, v in cols.items()}
    return m, cl, cols


def _cat(*tables):
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def _assert_same(a, b, path="result"):
    """Every value of two priced results equal exactly (same dtype class, same bits; 0-d values as 0-d)."""
    assert type(a) is type(b) or (np.ndim(a) == np.ndim(b) == 0), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
        return
    assert np.ndim(a) == np.ndim(b), f"{path}: shapes {np.shape(a)} vs {np.shape(b)}"
    assert np.array_equal(a, b), f"{path} differs"


# Tables that take every branch of the step model that depends on what a chunk holds: MoE with ep > 1 and
# ep = 1 rows (the expert-parallel terms), long sequences with cp > 1 and cp = 1 rows (ring attention,
# gradients over dp·cp), fp8 and bf16 rows of the same model in one table, a dense model, and a CPU cluster
# (ranks sharing the host's cores).
CASES = {
    "dense gpt3-175b": lambda: _table("gpt3-175b", 64, 2048, rows=400),
    "moe mixtral ep": lambda: _table("mixtral-8x7b", 64, 4096, rows=400),
    "cp llama3-70b 32k": lambda: _table("llama3-70b", 64, 32768, rows=400),
    "fp8 + bf16 llama3-70b": lambda: (lambda a, b: (a[0], a[1], _cat(a[2], b[2])))(
        _table("llama3-70b", 64, 8192, "fp8", rows=200), _table("llama3-70b", 64, 8192, rows=200, seed=1)),
    "cpu cluster": lambda: _table("gpt-small", 8, 128, dtype="fp32", cluster="cpu-local", rows=400),
    # the optional knob columns (recompute_every, kernels, async_tp, tp/pp overlap) mixed row by row
    "knob columns llama3-70b": lambda: _with_knobs(_table("llama3-70b", 64, 8192, rows=400)),
}


def _with_knobs(t, seed=2):
    """The table with the optional columns set on random rows, each where the rule book allows it."""
    from parsim.plan import RECOMPUTE, SCHEDULES
    m, cl, cols = t
    rng = np.random.default_rng(seed)
    n, sp = len(cols["dp"]), np.asarray(cols["sp"], dtype=bool)
    full = np.asarray(cols["recompute"]) == RECOMPUTE.index("full")
    inter = np.asarray(cols["schedule"]) == SCHEDULES.index("interleaved")
    overlap = sp & (rng.random(n) < 0.5)
    cols = dict(cols, rc_every=np.where(full & (rng.random(n) < 0.5), 2, 1),
                kernels=(rng.random(n) < 0.5).astype(np.int64), tpo=overlap & (rng.random(n) < 0.5),
                ppo=inter & (rng.random(n) < 0.5))
    cols["async_tp"] = overlap & ~cols["tpo"] & (cols["kernels"] == 0)
    assert cols["tpo"].any() and cols["async_tp"].any() and cols["ppo"].any() and (cols["rc_every"] > 1).any()
    return m, cl, cols


@pytest.mark.parametrize("case", CASES)
def test_price_is_the_same_in_one_chunk_and_in_many(case):
    model, cl, cols = CASES[case]()
    n = len(cols["dp"])
    whole = price(model, cl, cols, chunk_rows=n)
    for chunk in (7, 64, n - 1):
        _assert_same(whole, price(model, cl, cols, chunk_rows=chunk), f"{case}, chunk_rows={chunk}")
    head = {k: v[:40] for k, v in cols.items()}                  # one row at a time
    _assert_same(price(model, cl, head, chunk_rows=40), price(model, cl, head, chunk_rows=1), f"{case}, chunk_rows=1")
    assert np.shape(whole["step_time_s"]) == (n,)


def test_price_chunks_cover_the_table_in_order():
    model, cl, cols = _table("gpt3-175b", 64, 2048, rows=100)
    spans = [(a, b) for a, b, r in price_chunks(model, cl, cols, chunk_rows=30)]
    assert spans == [(0, 30), (30, 60), (60, 90), (90, 100)]


def test_narrow_and_broadcast_columns_price_like_int64_columns():
    """A big table may be kept in narrow dtypes, with constant columns broadcast (tests/benchmarks/plan_space.py):
    each chunk is converted to price's own dtypes, so the numbers are the same."""
    model, cl, cols = _table("mixtral-8x7b", 64, 4096, rows=500)
    narrow = {k: (np.broadcast_to(v[:1], v.shape) if (v == v[0]).all() else
                  v.astype(bool if v.dtype == bool else np.int16)) for k, v in cols.items()}
    _assert_same(price(model, cl, cols), price(model, cl, narrow, chunk_rows=64))


@pytest.mark.parametrize("model,gpus,seq,chunk", [("gpt3-175b", 64, None, 997), ("llama2-7b", 8, None, 37),
                                                   ("mixtral-8x7b", 16, None, 113), ("llama3-8b", 16, 32768, 211)])
def test_search_ranks_the_same_for_any_chunk_size(model, gpus, seq, chunk):
    """The ranked table (every column, exactly), its counts and its rejections by reason, priced in one chunk
    and in many small ones (only the fitting plans of each chunk are kept)."""
    one = search(model, gpus=gpus, seq_len=seq, result=True, chunk_rows=10 ** 7)
    many = search(model, gpus=gpus, seq_len=seq, result=True, chunk_rows=chunk)
    assert one.priced > chunk and len(one) > 0
    pd.testing.assert_frame_equal(one.table, many.table, check_exact=True)
    assert (one.candidates, one.priced, one.rejected) == (many.candidates, many.priced, many.rejected)


def test_streamed_memory_follows_the_chunk_not_the_table():
    """Pricing 8x the rows chunk by chunk (keeping nothing) peaks at about the same traced memory as 1x:
    unchunked, every one of the step model's ~200 temporaries would be 8x as long."""
    model, cl, cols = _table("gpt3-175b", 64, 2048, rows=6000)
    for _ in price_chunks(model, cl, cols, chunk_rows=1024):     # warm the per-cluster caches first
        pass

    def peak(copies):
        big = {k: np.tile(v, copies) for k, v in cols.items()}
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        total = 0.0
        for _, _, r in price_chunks(model, cl, big, chunk_rows=1024):
            total += float(np.sum(r["step_time_s"]))
        top = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert np.isfinite(total)
        return top

    one, eight = peak(1), peak(8)
    assert eight < 1.5 * one, f"streamed peak {eight / 2**20:.1f} MiB for 8x the rows vs {one / 2**20:.1f} MiB"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_chunk_rows_is_one_line(bad):
    model, cl, cols = _table("gpt3-175b", 64, 2048, rows=10)
    with pytest.raises(ParsimError, match="chunk_rows"):
        price(model, cl, cols, chunk_rows=bad)
