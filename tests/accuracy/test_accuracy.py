"""Accuracy ledger (`python -m pytest -q -m accuracy`): every claimed accuracy figure, recomputed from
stored measurements with the current model, is no worse than tests/tracking/ledger.yaml says (plus
its tolerance). One test per ledger metric, so a failure names it. Accept an improvement or a
documented change with `python -m tests.tracking.ledger --accept` and commit the ledger diff."""
import pytest

from tests.tracking import TrackingError
from tests.tracking import ledger as L

pytestmark = pytest.mark.accuracy


def _ledger_metrics():
    try:
        return sorted(L.load())
    except TrackingError:
        return ["ledger"]          # the fixture fails it with the one-line reason


@pytest.mark.parametrize("metric", _ledger_metrics())
def test_metric_is_not_worse_than_the_ledger(metric, accuracy_rows):
    r = accuracy_rows[metric]
    if r["status"] in ("WORSE", "GONE"):
        pytest.fail(L.failures([r])[0], pytrace=False)


def test_every_metric_has_a_ledger_entry(accuracy_rows):
    new = [r for r in accuracy_rows.values() if r["status"] == "NEW"]
    if new:
        pytest.fail("; ".join(L.failures(new)), pytrace=False)
