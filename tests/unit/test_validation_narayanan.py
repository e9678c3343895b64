"""Paper-anchored: Narayanan et al. 2021 (SC'21) Table 1, Selene DGX A100.

Target: predicted hardware TFLOP/s per GPU within 10% mean absolute error, no row worse than
15%. The A100 profile has one fitted number (matmul_sustained_fraction); the errors checked
here are leave-one-out, i.e. each row predicted with the number fitted on the other nine.
"""
import pytest

from parsim.hardware import get_device
from parsim.validation import leave_one_out, report


@pytest.fixture(scope="module")
def loo():
    return leave_one_out()


def test_leave_one_out_accuracy(loo):
    errs = [abs(e) for _, _, e in loo["loo"]]
    assert len(errs) == 10
    assert sum(errs) / len(errs) <= 0.10, loo
    assert max(errs) <= 0.15, loo


def test_shipped_profile_is_the_fit(loo):
    # The value in devices.yaml must be what the fit gives today (not a stale or hand-set number).
    assert get_device("a100-80gb").sustained_fraction == pytest.approx(loo["fraction_all"], abs=0.011)


def test_shipped_profile_rows():
    rows = report()
    errs = [abs(r["rel_error"]) for r in rows]
    assert sum(errs) / 10 <= 0.10 and max(errs) <= 0.15, rows
    # the unstated knob is searched, and said: every row names the micro-batch and vpp it chose
    assert all(r["micro_batch"] >= 1 and r["vpp"] >= 1 for r in rows)
