"""Parameter-server variants named for what they run, and BytePS's pipelined partitions
(issue 12 §4; Jiang et al., OSDI'20)."""
import pytest

from parsim.costs.network import collective_time_s, price_schedule
from parsim.predict import get_cluster
from parsim.schedules import collectives as S

MiB = 2 ** 20
B = 0.125e9 * 0.95          # ps-star: 1 Gbit/s links at 0.95 TCP goodput (clusters.yaml)


def test_ps_sharded_is_push_then_pull_and_ps_pipelined_reaches_bytesps_bound():
    # issue 12 §4: ps-star, n = 4 workers, k = 2 dedicated servers, M = 64 MiB per worker.
    # BytePS bound max(M/B, nM/(kB)) = max(0.565, 1.130) s = 1.13 s (the servers' links).
    # ps-sharded pushes then pulls: 2·1.13 = 2.26 s (+ latencies) = 2.28 s.
    # ps-pipelined: C = ceil(M / (k · 4,096,000 B)) = 9 rounds, C + 1 = 10 steps of 1/9 of the
    # bound each: 10/9 · 1.13 = 1.256 s (+ 10 latencies) -- within 12% of the bound, and the
    # bound as partitions shrink.
    c = get_cluster("ps-star", 4)
    M = 64 * MiB
    bound = max(M / B, 4 * M / (2 * B))
    assert bound == pytest.approx(1.13, rel=0.01)
    assert collective_time_s(c, "allreduce", "ps-sharded", range(4), M) == pytest.approx(2 * bound, rel=0.01)
    # (the bandwidth part -- links, plus the CPU servers' additions, ~1.4% here; the rest is
    # latency and the CPU hosts' per-step software time)
    sched = S.build("allreduce", "ps-pipelined", 4, M, servers=2).with_ranks(range(4))
    pr = price_schedule(c, sched)
    assert pr.bandwidth_s == pytest.approx(10 / 9 * bound, rel=0.02)
    assert collective_time_s(c, "allreduce", "ps-pipelined", range(4), M) == pytest.approx(pr.time_s, rel=1e-12)
    assert pr.time_s < 0.6 * collective_time_s(c, "allreduce", "ps-sharded", range(4), M)
    fine = S.build("allreduce", "ps-pipelined", 4, M, servers=2, partition_bytes=M // 64)   # 32 rounds
    assert price_schedule(c, fine.with_ranks(range(4))).bandwidth_s == pytest.approx(33 / 32 * bound, rel=0.02)


def test_ps_pipelined_pushes_and_pulls_in_the_same_steps():
    s = S.build("allreduce", "ps-pipelined", 4, 64 * MiB, servers=2)
    assert s.meta["rounds"] == 9 and len(s.steps) == 10 and s.servers == 2
    # middle steps carry both directions: workers -> servers (reduce) and servers -> workers (copy)
    mid = s.steps[4]
    assert mid.reduce.any() and (~mid.reduce).any()
    # every worker sends its whole buffer once; every server sends its share to each of the 4 workers
    assert s.bytes_sent()[:4].tolist() == [64 * MiB] * 4
    assert sum(s.bytes_sent()[4:]) == 4 * 64 * MiB


def test_small_buffers_are_one_round():
    # below k partitions the pipelined schedule is push then pull (ps-sharded's)
    c = get_cluster("ps-star", 4)
    assert collective_time_s(c, "allreduce", "ps-pipelined", range(4), MiB) == pytest.approx(
        collective_time_s(c, "allreduce", "ps-sharded", range(4), MiB), rel=1e-9)
