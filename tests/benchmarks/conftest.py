"""Benchmarks (pytest-benchmark). In the default suite benchmarks are disabled (pyproject's addopts):
each body runs once as a correctness check and nothing about speed is asserted. The speed check
(`python -m tests.tracking.speed`) enables them and compares normalised medians with a baseline.

Every benchmark goes through the `bench` fixture, which times the reference workload before each
round (pytest-benchmark's untimed `setup` hook, so it does not count in the benchmark's own time),
records its median and the benchmark's declared target in `extra_info`, and applies the test hook
that slows a benchmark down on purpose (PARSIM_BENCH_SLOWDOWN, see tests/tracking/speed.py).
"""
import statistics

import pytest

from tests.tracking import speed


@pytest.fixture
def bench(benchmark, request):
    """bench(fn, rounds=..., target_s=..., target="...", items=N, items_unit="plans", setup=None) -> fn's result.

    `setup`, when given, returns (args, kwargs) for fn and is run untimed before each round."""
    def run(fn, *, rounds, target_s=None, target=None, items=None, items_unit=None, setup=None, warmup_rounds=1):
        factor = speed.slowdown_for(request.node.name)
        fn = speed.slowed(fn, factor)
        ref = []

        def before_round():
            if not benchmark.disabled:
                ref.append(speed.time_reference())
            return setup() if setup else None

        result = benchmark.pedantic(fn, setup=before_round, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
        if not benchmark.disabled:
            benchmark.extra_info.update(reference_median_s=statistics.median(ref), reference_rounds=len(ref))
            if factor != 1.0:
                benchmark.extra_info["injected_slowdown"] = factor
            benchmark.extra_info.update({k: v for k, v in dict(target_s=target_s, target=target, items=items,
                                                               items_unit=items_unit).items() if v is not None})
        return result
    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """The machine kind the speed check files baselines under, and numpy's version (BLAS matters)."""
    import numpy
    machine_info["machine_kind"] = speed.machine_kind()
    machine_info["numpy"] = numpy.__version__
