"""Network pricing speed (issue 3), schedule build + pricing measured together. Targets are reported
by the speed check (`python -m tests.tracking.speed`), never asserted here."""
import pytest

from parsim.costs.network import collective_coeffs, price_schedule
from parsim.schedules.collectives import allreduce_ring
from parsim.topology import load_cluster

N_BYTES = 2 ** 30


@pytest.fixture(scope="module")
def fat_tree_1024():
    c = load_cluster("dgx-h100-fattree", 1024)       # 128 DGX nodes, 32 leaves, 4 spines
    price_schedule(c, allreduce_ring(1024, N_BYTES))  # warm: routes the 1024 ring pairs once
    return c


def _check_ring(pr):
    assert pr.steps == 2 * 1023
    # every step is bounded by the 46 GB/s NIC that carries the n/1024 chunk between nodes
    assert pr.bandwidth_s == pytest.approx(2 * 1023 * (N_BYTES / 1024) / (50e9 * 0.92), rel=1e-9)


def test_bench_ring_allreduce_1024_gpus_fat_tree(bench, fat_tree_1024):
    # build the 2046-step ring schedule over 1024 GPUs and price it on the fat-tree (routes are a
    # property of the graph: computed once per node pair, kept)
    pr = bench(lambda: price_schedule(fat_tree_1024, allreduce_ring(1024, N_BYTES)), rounds=15,
               target_s=0.050, target="1024-GPU ring all-reduce priced in < 50 ms")
    _check_ring(pr)


def test_bench_ring_allreduce_1024_gpus_cold(bench):
    # the first pricing on a fresh cluster, routing of the 1024 ring pairs included (cluster built untimed)
    pr = bench(lambda c: price_schedule(c, allreduce_ring(1024, N_BYTES)), rounds=3,
               setup=lambda: ((load_cluster("dgx-h100-fattree", 1024),), {}),
               target_s=2.0, target="first 1024-GPU ring pricing, routing included, in < 2 s")
    _check_ring(pr)


def test_bench_coefficients_cold_64_gpus(bench):
    # every all-reduce algorithm's (alpha, beta) over 64 GPUs on a fresh cluster (no caches)
    def run():
        c = load_cluster("dgx-h100-fattree", 64)
        return [collective_coeffs(c, "allreduce", a, range(64))
                for a in ("ring", "tree", "hd", "rd", "hierarchical", "ps", "native")]
    res = bench(run, rounds=5, target_s=2.0, target="7 all-reduce algorithms' coefficients, fresh 64-GPU cluster, < 2 s")
    assert all(a > 0 and b > 0 for a, b in res)
