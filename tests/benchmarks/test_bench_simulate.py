"""Simulator speed targets (issue 4): schedule build + simulation, measured together."""
import time

from parsim.simulate import pipeline_step


def _median_s(benchmark, fn, rounds):
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is None:                       # --benchmark-disable: time it ourselves
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return result, sorted(times)[len(times) // 2]
    return result, stats.stats.median


def test_bench_1f1b_p8_m64(benchmark):
    # target: p = 8, m = 64 in under 10 ms (1,024 ops)
    res, median = _median_s(benchmark, lambda: pipeline_step("1f1b", 8, 64, None, 1e-3, 2e-3, p2p_s=5e-5), 20)
    assert res.schedule.n_ops == 2 * 8 * 64
    assert median < 0.010


def test_bench_interleaved_p64_m1024_v4(benchmark):
    # target: p = 64, m = 1024, v = 4 (2 * 64 * 4 * 1024 = 524,288 ops) in under one second
    res, median = _median_s(benchmark, lambda: pipeline_step("interleaved", 64, 1024, 4, 1e-3, 2e-3,
                                                             p2p_s=5e-5), 3)
    assert res.schedule.n_ops == 524_288
    assert median < 1.0
