"""`parsim report RESULTS... [--out DIR] [--format md,html]`: a comparison report.

Inputs: study results (``results.jsonl`` of `parsim validate`, or its directory) and/or
``parsim predict``/``parsim plan --format json`` outputs (put side by side: what-if).
``--published`` renders the published-table validation: the whole public corpus
(parsim/data/validation/, parsim.corpus) held out table by table.
Writes ``report.md`` with PNGs in ``figures/`` and a standalone ``report.html`` (figures embedded).
"""
from __future__ import annotations

import sys

from parsim.errors import ParsimError


def add_arguments(p):
    p.add_argument("inputs", nargs="*", help="results.jsonl files or study result directories; predict/plan JSON outputs")
    p.add_argument("--out", default="report", help="output directory (default ./report)")
    p.add_argument("--format", default="md,html", help="md, html or both (default md,html)")
    p.add_argument("--published", action="store_true", help="the published-table validation: the public corpus, leave-one-table-out")
    p.add_argument("--title", default="")


def run(a) -> int:
    from parsim.reportgen import PUBLISHED_TITLE, published_inputs, write_report
    formats = tuple(f.strip() for f in a.format.split(",") if f.strip())
    bad = [f for f in formats if f not in ("md", "html")]
    if bad or not formats:
        raise ParsimError(f"--format {a.format!r}: expected md, html or md,html")
    if not a.inputs and not a.published:
        raise ParsimError("expected results (results.jsonl or a study directory), predict/plan JSON, or --published")
    from parsim.outputs import check_output_dir
    check_output_dir(a.out, "--out")           # before the work (the published corpus is ~30 s of pricing)
    title = a.title or (PUBLISHED_TITLE if a.published and not a.inputs else "parsim comparison report")
    if not a.published:
        paths = write_report(a.inputs, a.out, formats, title)
    else:
        # ~30 s of pricing (every candidate plan of every row on the fit grid): a bar on a terminal's stderr
        # (parsim.progress), nothing in a pipe or a log
        from parsim.corpus import table_ids
        from parsim.progress import bar
        n = len(table_ids())
        with bar("parsim report --published", n + 1, lines=False, unit="tables") as b:
            recs, published = published_inputs(progress=lambda i, _n, t: b.update(i, f"held out: {t}"))
            b.update(n, "writing the report")
            paths = write_report(a.inputs, a.out, formats, title, records=recs, published=published)
            b.update(n + 1, "done")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
