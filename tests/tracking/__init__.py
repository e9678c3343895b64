"""Regression tracking: the speed check (speed.py), the accuracy ledger (ledger.py, metrics.py,
ledger.yaml) and their history (history.py). Commands in README, "Regression tracking"."""


class TrackingError(Exception):
    """A missing or unreadable baseline / ledger / stored measurement: one line, naming the file
    and how to (re)create it. The commands print it without a traceback and exit 2."""
