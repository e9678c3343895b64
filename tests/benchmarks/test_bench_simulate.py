"""Simulator speed (issue 4): schedule build + simulation, measured together. Targets are reported
by the speed check (`python -m tests.tracking.speed`), never asserted here."""

from parsim.simulate import pipeline_step


def test_bench_1f1b_p8_m64(bench):
    res = bench(lambda: pipeline_step("1f1b", 8, 64, None, 1e-3, 2e-3, p2p_s=5e-5), rounds=30,
                target_s=0.010, target="p=8, m=64 (1,024 ops) in < 10 ms")
    assert res.schedule.n_ops == 2 * 8 * 64


def test_bench_interleaved_p64_m1024_v4(bench):
    # 2 * 64 * 4 * 1024 = 524,288 ops
    res = bench(lambda: pipeline_step("interleaved", 64, 1024, 4, 1e-3, 2e-3, p2p_s=5e-5), rounds=5,
                target_s=1.0, target="p=64, m=1024, v=4 (524,288 ops) in < 1 s", items=524_288, items_unit="ops")
    assert res.schedule.n_ops == 524_288
