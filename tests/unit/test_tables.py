"""One table renderer (parsim.tables): text tables never break a number, the `plan` table fits 120
columns by default (--wide: every column), Markdown tables are well formed."""
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from parsim.report import BREAK_COLS, PLAN_COLS, SHORT_COLS, plans_csv, plans_text
from parsim.search import SearchResult, search
from parsim.tables import WIDTH, is_numeric_cell, md_table, text_table


def _row_lines(text, n_rows):
    """The data lines of a text table: the n_rows lines after the header rule."""
    lines = text.splitlines()
    rule = next(i for i, l in enumerate(lines) if l and set(l) == {"─"})
    return lines[rule - 1], lines[rule + 1: rule + 1 + n_rows]


def _assert_cells_whole(text, rows):
    """Every cell of every row appears whole, in order, on its own line (a wrapped number would not)."""
    _, lines = _row_lines(text, len(rows))
    for line, row in zip(lines, rows):
        at = 0
        for cell in map(str, row):
            i = line.find(cell, at)
            assert i >= 0, f"{cell!r} not whole in {line!r}"
            at = i + len(cell)


@pytest.mark.parametrize("cell, numeric", [
    ("11.434", True), ("366,824", True), ("47.6%", True), ("-0.000", True), ("+3.1%", True), ("1.2e-05", True),
    ("=", True), ("-", True), ("120.04 us", True), ("1.0 GiB", True), ("[0.009, 0.01]", True),
    ("1f1b", False), ("interleaved", False), ("10.0.0.1", False), ("h0->h1", False), ("", False)])
def test_numeric_cells(cell, numeric):
    assert is_numeric_cell(cell) is numeric


def test_narrow_width_shortens_text_never_numbers():
    # 3 columns: numeric '#' (1), text, numeric 'value' (11 chars); the text cell alone is 176 characters
    rows = [(1, "a very long text cell " * 8, "123,456.789"), (22, "short", "-0.001")]
    out = text_table(["#", "name", "value"], rows, "title " * 30, width=60)
    assert max(len(l) for l in out.splitlines()) <= 60           # title wrapped at spaces, text column folded
    header, lines = _row_lines(out, 1)
    assert "123,456.789" in lines[0] and header.split() == ["#", "name", "value"]
    assert "-0.001" in out and "22" in out


def test_numbers_win_over_width():
    # numeric cells need 2 + 3 * 12 = 38 characters (+ 2 spaces between 3 columns = 42): more than width 30,
    # so the line is longer than asked, but no number is cut
    rows = [("1", "123,456,789.1", "123,456,789.2"), ("2", "0.5", "7")]
    out = text_table(["#", "a", "b"], rows, width=30)
    _assert_cells_whole(out, rows)
    assert max(len(l) for l in out.splitlines()) == 1 + 2 + 13 + 2 + 13


def test_natural_width_and_alignment():
    rows = [("compute", "13.8888", "76.1%"), ("dp_comm_exposed", "0.1012", "0.6%")]
    out = text_table(["part", "seconds", "share"], rows, width=None)
    header, lines = _row_lines(out, 2)
    assert header.split() == ["part", "seconds", "share"]
    assert lines[0].startswith("compute ") and lines[1].endswith(" 0.6%")     # text left, numbers right
    assert len(lines[0]) == len(lines[1]) == len("dp_comm_exposed") + 2 + len("seconds") + 2 + len("share")


def test_markdown_table():
    md = md_table(["a", "b|c"], [[1, "x|y"], [None, ""]])
    assert md.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | x\\|y |", "| None |  |"]


# ---------------------------------------------------------------- the plan table

@pytest.fixture(scope="module")
def res():
    return search("llama2-13b", "dgx-h100", 64, result=True)


def _rows(res, top, cols):
    from parsim.report import _fmt
    c = res.columns
    return [[str(i + 1)] + [_fmt(k, c[k][i], {x: c[x][i] for x in ("simulated", "step_time_s")}) for k in cols]
            for i in range(min(top, len(res)))]


def test_plan_table_fits_120_columns_numbers_whole(res):
    out = plans_text(res, 10)
    assert max(len(l) for l in out.splitlines()) <= WIDTH == 120
    header, _ = _row_lines(out, 10)
    shown = [k for k in SHORT_COLS if k not in ("ep", "cp")]                # llama2-13b: no ep, no cp
    assert header.split() == ["#"] + " ".join(SHORT_COLS[k] for k in shown).split()
    _assert_cells_whole(out, _rows(res, 10, shown))


def test_plan_table_wide_has_every_column(res):
    out = plans_text(res, 10, wide=True)
    header, _ = _row_lines(out, 10)
    assert header.split() == ["#"] + PLAN_COLS + BREAK_COLS
    _assert_cells_whole(out, _rows(res, 10, PLAN_COLS + BREAK_COLS))
    assert max(len(l) for l in out.splitlines()) > 120                    # why --wide exists


def _extreme(n=3):
    """A search result whose cells are as wide as plans get: 4-digit dp, every parallel degree > 1,
    the longest schedule, sync and recompute names, 10-character throughput."""
    cols = {k: np.array([v] * n) for k, v in dict(
        dp=1024, tp=16, pp=16, ep=64, cp=16, vpp=12, micro_batch=256, schedule="interleaved",
        grad_sync="hierarchical", zero=3, recompute="selective", sequence_parallel=True, step_time_s=12345.678,
        step_time_closed_s=12345.678, simulated=True, tokens_per_s=12345678.9, mfu=0.999, memory_GiB=999.999,
        **{b: 12345.678 for b in BREAK_COLS}).items()}
    attrs = dict(model="m" * 40, gpus=65536, device="h100-sxm", cluster="dgx-h100-fattree-2to1", global_batch=65536,
                 seq_len=131072, dtype="bf16", memory_accounting="megatron", memory_headroom_GiB=5.98,
                 memory_capacity_GiB=79.65)
    return SearchResult(cols, attrs, candidates=10 ** 9, priced=10 ** 8, rejected={"reason " * 10: 12345})


def test_plan_table_widest_cells_still_fit():
    out = plans_text(_extreme(), 10)
    assert max(len(l) for l in out.splitlines()) <= 120
    header, _ = _row_lines(out, 3)
    assert "ep" in header.split() and "cp" in header.split()           # shown because the plans use them
    _assert_cells_whole(out, _rows(_extreme(), 3, list(SHORT_COLS)))


def test_plan_csv_and_json_keep_every_column(res):
    rows = list(csv.DictReader(io.StringIO(plans_csv(res, 3))))
    assert list(rows[0]) == list(res.columns)
    assert set(PLAN_COLS + BREAK_COLS) <= set(rows[0])
    r = subprocess.run([sys.executable, "-m", "parsim", "plan", "--gpus", "16", "--model", "llama2-7b", "--format",
                        "json", "--top", "2", "--wide"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert set(PLAN_COLS + BREAK_COLS) <= set(json.loads(r.stdout)["plans"][0])
