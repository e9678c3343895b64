"""The accuracy ledger under pytest: one session-wide computation of every metric
(tests/tracking/metrics.py), compared with tests/tracking/ledger.yaml, and the table printed at the end."""
import pytest

from tests.tracking import TrackingError
from tests.tracking import ledger as L
from tests.tracking import metrics

ROWS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def accuracy_rows(request):
    """metric name -> comparison row (ledger, now, delta, status); a missing or corrupt ledger or
    stored file fails every accuracy test with its one line."""
    try:
        rows = L.compare(L.load(), metrics.compute())
    except TrackingError as e:
        pytest.fail(str(e), pytrace=False)
    request.config.stash[ROWS] = rows
    return {r["metric"]: r for r in rows}


def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(ROWS, None)
    if rows:
        terminalreporter.write_line("")
        for line in L.render(rows).rstrip().splitlines():
            terminalreporter.write_line(line)
        better = [r["metric"] for r in rows if r["status"] == "better"]
        if better:
            terminalreporter.write_line(f"better than the ledger (record with `{L.ACCEPT_CMD}`): {', '.join(better)}")
