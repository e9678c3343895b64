"""Network pricing speed targets (issue 3), schedule build + pricing measured together."""
import time

import pytest

from parsim.costs.network import collective_coeffs, price_schedule
from parsim.schedules.collectives import allreduce_ring
from parsim.topology import load_cluster


@pytest.fixture(scope="module")
def fat_tree_1024():
    c = load_cluster("dgx-h100-fattree", 1024)       # 128 DGX nodes, 32 leaves, 4 spines
    t0 = time.perf_counter()
    price_schedule(c, allreduce_ring(1024, 2 ** 30))  # cold: includes routing the 1024 ring pairs
    cold = time.perf_counter() - t0
    assert cold < 2.0, f"first pricing (routing included) took {cold:.2f} s"
    return c


def test_bench_ring_allreduce_1024_gpus_fat_tree(median_s, fat_tree_1024):
    # target: build the 2046-step ring schedule over 1024 GPUs and price it on the fat-tree in
    # under 50 ms (routes are a property of the graph: computed once per node pair, kept)
    n = 2 ** 30
    pr, median = median_s(lambda: price_schedule(fat_tree_1024, allreduce_ring(1024, n)), 10)
    assert pr.steps == 2 * 1023
    # every step is bounded by the 46 GB/s NIC that carries the n/1024 chunk between nodes
    assert pr.bandwidth_s == pytest.approx(2 * 1023 * (n / 1024) / (50e9 * 0.92), rel=1e-9)
    assert median < 0.050


def test_bench_coefficients_cold_64_gpus(median_s):
    # every all-reduce algorithm's (alpha, beta) over 64 GPUs on a fresh cluster (no caches)
    def run():
        c = load_cluster("dgx-h100-fattree", 64)
        return [collective_coeffs(c, "allreduce", a, range(64))
                for a in ("ring", "tree", "hd", "rd", "hierarchical", "ps", "native")]
    res, median = median_s(run, 3)
    assert all(a > 0 and b > 0 for a, b in res)
    assert median < 2.0
