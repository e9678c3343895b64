"""The collective software-overhead fit of ``parsim.calibrate`` (no processes are started here)."""
import pytest

from parsim import calibrate as cal


def synthetic_runs(o_step, o_msg, o_nat, rtt=60e-6, cores=2, procs=cal.STEP_PROCS):
    """What the loopback measurement would report if the executor cost exactly parsim's price."""
    runs = []
    for p in procs:
        cases = {}
        for algo in cal.EXECUTOR_CASES:
            X, Y = cal.overhead_terms(algo, p, cores)
            from parsim.schedules.collectives import build
            steps = len(build("allreduce", algo, p, 4096, dedicated=False).steps)
            cases[algo] = {"steps": steps, "time_s": o_step * X + o_msg * Y + steps * rtt / 2}
        steps = 2 * (p - 1)
        cases["native"] = {"steps": steps, "time_s": steps * max(1.0, p / cores) * o_nat + steps * rtt / 2}
        runs.append({"p": p, "rtt_s": rtt, "cases": cases})
    return runs


@pytest.mark.parametrize("o_step, o_msg, o_nat", [(80e-6, 200e-6, 300e-6), (400e-6, 20e-6, 100e-6)])
def test_step_overhead_fit_recovers_the_costs_it_was_given(o_step, o_msg, o_nat):
    fit = cal.step_overheads(synthetic_runs(o_step, o_msg, o_nat), cores=2)
    assert fit["executor_step_overhead_us"] == pytest.approx(o_step * 1e6, abs=0.11)
    assert fit["executor_message_overhead_us"] == pytest.approx(o_msg * 1e6, abs=0.11)
    assert fit["native_step_overhead_us"] == pytest.approx(o_nat * 1e6, abs=0.11)
    assert len(fit["per_point"]) == len(cal.STEP_PROCS) * (len(cal.EXECUTOR_CASES) + 1)


def test_a_co_located_ps_posts_more_messages_per_step_than_a_ring():
    # the two regressors differ between schedules, so the fit can tell the fixed from the per-message cost
    ring = cal.overhead_terms("ring", 4, 2)
    ps = cal.overhead_terms("ps", 4, 2)
    assert ring[1] / ring[0] == pytest.approx(2.0)       # ring: 2 messages per rank and step
    assert ps[1] / ps[0] == pytest.approx(6.0)           # co-located PS on 4: 3 sends + 3 receives


def test_no_per_message_cost_resolved_falls_back_to_the_fixed_part():
    runs = synthetic_runs(500e-6, 0.0, 200e-6)
    for r in runs:                                       # ps slower than fixed-only would say: noise
        r["cases"]["ps"]["time_s"] *= 0.5
    fit = cal.step_overheads(runs, cores=2)
    assert fit["executor_message_overhead_us"] >= 0.0 and fit["executor_step_overhead_us"] >= 0.0
