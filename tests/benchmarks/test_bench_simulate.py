"""Simulator speed targets (issue 4): schedule build + simulation, measured together."""

from parsim.simulate import pipeline_step


def test_bench_1f1b_p8_m64(median_s):
    # target: p = 8, m = 64 in under 10 ms (1,024 ops)
    res, median = median_s(lambda: pipeline_step("1f1b", 8, 64, None, 1e-3, 2e-3, p2p_s=5e-5), 20)
    assert res.schedule.n_ops == 2 * 8 * 64
    assert median < 0.010


def test_bench_interleaved_p64_m1024_v4(median_s):
    # target: p = 64, m = 1024, v = 4 (2 * 64 * 4 * 1024 = 524,288 ops) in under one second
    res, median = median_s(lambda: pipeline_step("interleaved", 64, 1024, 4, 1e-3, 2e-3,
                                                             p2p_s=5e-5), 3)
    assert res.schedule.n_ops == 524_288
    assert median < 1.0
