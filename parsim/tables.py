"""Tables for people, one renderer per medium — the only place tables are laid out.

- terminal text: ``text_table`` (rich), never breaking a number: numeric columns keep the width
  of their longest cell; when a table is wider than ``width`` only text columns are shortened
  (with an ellipsis), and ``width=None`` lays the table out at its natural width. The default width
  is ``terminal_width()``: COLUMNS, else the terminal's, else 120 for files and pipes.
- Markdown (generated reports): ``md_table``; HTML: ``html_table``.
- data files (CSV, JSON): pandas / ``parsim.report.to_json``, not here.

Cells are strings or anything ``str()`` turns into one; formatting numbers (units, digits) is
the caller's business, so the three media show the same text.
"""
from __future__ import annotations

import html
import io
import re
import textwrap

WIDTH = 120        # width of text output that goes to a file or a pipe (columns of characters)


def terminal_width(stream=None) -> int:
    """Columns text output may use: ``COLUMNS`` when set (a positive integer), else the terminal's width
    when `stream` (default sys.stdout) is a terminal (rich's Console measures it), else WIDTH (files,
    pipes and logs stay readable: lines wrap at 120)."""
    import os
    import sys
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return WIDTH
    from rich.console import Console
    return Console(file=stream).width

# a cell that is a number as the tables print them: 1,234.5  -0.000  +3.1%  1.2e-05  =  -  [1, 2]
_NUMERIC = re.compile(r"^(?:[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?\s*(?:%|[a-zA-Z/]{1,6})?|[=\-–]|\[.*\])$")


def is_numeric_cell(text: str) -> bool:
    """True for a cell that reads as a number (digits, sign, separators, exponent, % or a short unit)."""
    return bool(_NUMERIC.match(text.strip()))


def _cells(headers, rows):
    return [str(h) for h in headers], [[str(c) for c in r] for r in rows]


def _wrap(text: str, width: int | None) -> list[str]:
    """Lines of a title or caption, wrapped at spaces only (never inside a word or number)."""
    out = []
    for line in str(text).splitlines():
        if width is None or len(line) <= width:
            out.append(line)
        else:
            out += textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""]
    return out


def wrap(text: str, width: int | None | str = "auto") -> str:
    """Lines of plain text (a header, a note) wrapped at spaces to `width` ("auto": terminal_width()),
    never inside a word or a number; each input line wrapped on its own. Ends with a newline."""
    return "\n".join(_wrap(text, terminal_width() if width == "auto" else width)) + "\n"


def text_table(headers, rows, title: str | None = None, caption: str | None = None, width: int | None | str = "auto",
               justify=None) -> str:
    """A table as terminal text (rich, no colour, ``─`` rule under the header), title and caption as
    plain lines above and below, wrapped at spaces to `width` ("auto", the default: terminal_width()).

    headers: column names; rows: sequences of cells (str() of each); justify: per column
    "left"/"right"/"center" (default: right for columns whose every cell reads as a number,
    left otherwise). width: characters per line the table must fit (None: its natural width).
    A numeric column is never narrower than its longest cell and never wraps, so a number is
    printed whole even when the table cannot fit (the line is then longer than `width`)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    if width == "auto":
        width = terminal_width()
    heads, cells = _cells(headers, rows)
    assert all(len(r) == len(heads) for r in cells), "every row needs one cell per header"
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="", padding=(0, 1, 0, 0),
              collapse_padding=False)
    mins = []
    for i, h in enumerate(heads):
        col = [r[i] for r in cells]
        numeric = all(is_numeric_cell(c) for c in col if c) and any(col)
        j = justify[i] if justify else ("right" if numeric else "left")
        mins.append(max([len(c) for c in col] + [len(h)]) if numeric else min(len(h), 12))
        t.add_column(h, justify=j, no_wrap=numeric, overflow="ellipsis" if numeric else "fold", min_width=mins[i])
    for r in cells:
        t.add_row(*r)
    wide = Console(file=io.StringIO(), width=100_000, color_system=None)
    natural = wide.measure(t).maximum
    # rich fits a table into the console however narrow, shrinking every column; give it at least
    # the room the numeric columns need whole (plus two spaces between columns)
    room = natural if width is None or natural <= width else max(width, sum(mins) + 2 * (len(mins) - 1))
    buf = io.StringIO()
    Console(file=buf, width=room, color_system=None, highlight=False, markup=False, emoji=False,
            soft_wrap=False, legacy_windows=False).print(t)
    body = [line.rstrip() for line in buf.getvalue().splitlines()]
    lines = (_wrap(title, width) if title else []) + body + (_wrap(caption, width) if caption else [])
    return "\n".join(lines) + "\n"


def md_table(headers, rows) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped), no trailing newline."""
    heads, cells = _cells(headers, rows)
    esc = lambda c: c.replace("|", "\\|").replace("\n", " ")   # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in cells]
    return "\n".join(out)


def html_table(headers, rows) -> str:
    """An HTML table (cells escaped), one line."""
    heads, cells = _cells(headers, rows)
    h = "".join(f"<th>{html.escape(c)}</th>" for c in heads)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"
