"""Progress of long commands (`parsim calibrate`, `parsim run`) on stderr, never on stdout (which may be
JSON piped into another program).

On a terminal: a rich progress bar (what is being done, n of total, elapsed). Elsewhere (a pipe, a log
file): with ``lines=True`` one plain line per change of description, so a log shows where a run is;
with ``lines=False`` nothing. ``PARSIM_PROGRESS=0`` turns it off, ``=1`` forces the bar.
"""
from __future__ import annotations

import contextlib
import os
import sys


class Bar:
    """update(completed=None, description=None, total=None); the bar (or the line) follows."""

    def __init__(self, prog, task, title: str, total: int, lines: bool):
        self._prog, self._task, self._title, self._lines = prog, task, title, lines
        self._desc, self._done, self._total = None, 0, total
        import time
        self._t0, self._clock = time.monotonic(), time.monotonic

    def update(self, completed: int | None = None, description: str | None = None, total: int | None = None):
        if total is not None:
            self._total = total
        if completed is not None:
            self._done = completed
        if self._prog is not None:
            kw = {k: v for k, v in (("completed", completed), ("description", description), ("total", total))
                  if v is not None}
            self._prog.update(self._task, **kw)
        elif self._lines and description is not None and description != self._desc:
            print(f"{self._title}: [{self._done}/{self._total}, {self._clock() - self._t0:.0f} s] {description}",
                  file=sys.stderr, flush=True)
        if description is not None:
            self._desc = description

    def advance(self, description: str | None = None):
        """One more unit done; then `description` (what comes next)."""
        self.update(self._done + 1, description)


def enabled() -> bool | None:
    """PARSIM_PROGRESS: "0" off, "1" on (a bar even when stderr is not a terminal), else None (automatic)."""
    v = os.environ.get("PARSIM_PROGRESS")
    return None if v is None or v == "" else v not in ("0", "false", "no")


@contextlib.contextmanager
def bar(title: str, total: int, lines: bool = True, unit: str = ""):
    """A Bar for `total` units of work titled `title` (e.g. "parsim calibrate"), closed on exit."""
    on = enabled()
    if on is False:
        yield Bar(None, None, title, total, False)
        return
    if not (on or sys.stderr.isatty()):
        yield Bar(None, None, title, total, lines)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    console = Console(stderr=True)
    with Progress(TextColumn(f"{title}:"), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeElapsedColumn(), console=console, transient=False) as prog:
        task = prog.add_task("starting", total=total)
        yield Bar(prog, task, title, total, lines)
