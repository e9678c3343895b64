"""Accuracy ledger: every accuracy figure parsim claims, recomputed from stored measurements with the
current model (tests/tracking/metrics.py) and compared with the committed ledger.yaml.

    python -m pytest -q -m accuracy                  # the check, as tests (one per metric) + the table
    python -m tests.tracking.ledger                  # the same check without pytest: table, exit 1 if worse
    python -m tests.tracking.ledger --accept         # record today's values (improvement or documented change)
    python -m tests.tracking.ledger --accept METRIC  # ... only these metrics
      [--only SOURCE,...]                            # compute only these metric sources (narayanan2021, netem, cpu,
                                                     #   cpu_study, netem_quick, corpus)

A metric fails when it is worse than its ledger value by more than its tolerance (its unit; lower is
better for errors, higher for agreement counts); a better value passes and is flagged "better:
accept it". A metric with no ledger entry, or an entry with no metric, fails until accepted. Accepting
rewrites ledger.yaml (tolerances kept), so the git diff shows what moved. A missing or corrupt
ledger: one line naming the file and how to recreate it, exit 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from tests.tracking import TrackingError
from tests.tracking.metrics import ROOT, Metric, compute

LEDGER = Path(__file__).resolve().parent / "ledger.yaml"
ACCEPT_CMD = "python -m tests.tracking.ledger --accept"
FIELDS = ("metric", "value", "unit", "better", "tolerance", "source", "description")
HEADER = f"""\
# Accuracy ledger: every accuracy figure parsim claims, recomputed from STORED measurements with the
# CURRENT model on every `python -m pytest -q -m accuracy` (and in the default suite). A metric fails
# when it is worse than `value` by more than `tolerance` (in `unit`; `better` says which way is worse).
# Written by `{ACCEPT_CMD}` after an improvement or a documented change: review the diff.
# Tolerances may be edited by hand (kept on accept). Metric definitions: tests/tracking/metrics.py.
"""


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def load(path: Path = LEDGER) -> dict[str, dict]:
    """metric name -> entry (the FIELDS). Missing or malformed: TrackingError, one line."""
    path = Path(path)
    if not path.exists():
        raise TrackingError(f"{_rel(path)} is missing: create it with `{ACCEPT_CMD}`")
    how = f"restore it with `git checkout -- {_rel(path)}` or recreate it with `{ACCEPT_CMD}`"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        where = getattr(e, "problem_mark", None)
        raise TrackingError(f"{_rel(path)} is not valid YAML"
                            f"{f' (line {where.line + 1})' if where else ''}: {how}") from None
    out = {}
    try:
        for e in doc["metrics"]:
            name = str(e["metric"])
            if name in out:
                raise ValueError(f"metric {name} listed twice")
            if e.get("better", "lower") not in ("lower", "higher"):
                raise ValueError(f"{name}: better must be lower or higher, not {e.get('better')!r}")
            out[name] = dict(e, value=float(e["value"]), tolerance=float(e["tolerance"]),
                             better=e.get("better", "lower"))
            if not (math.isfinite(out[name]["value"]) and out[name]["tolerance"] >= 0):
                raise ValueError(f"{name}: value must be finite and tolerance >= 0")
    except (TypeError, KeyError, ValueError) as e:
        raise TrackingError(f"{_rel(path)} is malformed ({type(e).__name__}: {e}; expected "
                            f"'metrics:' with entries {', '.join(FIELDS[:5])}): {how}") from None
    return out


def compare(ledger: dict[str, dict], now: dict[str, Metric], sources=None) -> list[dict]:
    """One row per metric: ledger value, value now, delta, status ('ok', 'better', 'WORSE', 'NEW': no
    ledger entry, 'GONE': in the ledger but no longer computed). With `sources`, ledger entries of
    other sources are left out (they were not computed)."""
    rows = []
    for name in sorted(set(ledger) | set(now), key=lambda n: (n.split(".")[0], n)):
        if sources and name.split(".")[0] not in sources:
            continue
        e, m = ledger.get(name), now.get(name)
        row = {"metric": name, "ledger": e and e["value"], "now": m and m.value, "delta": None,
               "tolerance": e["tolerance"] if e else (m.tolerance if m else None),
               "unit": (m.unit if m else e.get("unit", "")), "source": (m.source if m else e.get("source", ""))}
        if e is None:
            row["status"] = "NEW"
        elif m is None:
            row["status"] = "GONE"
        else:
            row["delta"] = m.value - e["value"]
            worse = row["delta"] if e["better"] == "lower" else -row["delta"]
            row["status"] = ("WORSE" if worse > e["tolerance"] + 1e-9 else
                             "better" if worse < -e["tolerance"] - 1e-9 else "ok")
        rows.append(row)
    return rows


def failures(rows: list[dict]) -> list[str]:
    """One line per failing row."""
    out = []
    for r in rows:
        u = r["unit"] if r["unit"] == "%" else f" {r['unit']}"
        if r["status"] == "WORSE":
            out.append(f"{r['metric']} is worse: {r['now']:.4g}{u} now, ledger {r['ledger']:.4g}{u} "
                       f"(delta {r['delta']:+.4g}, tolerance {r['tolerance']:g}; from {r['source']})")
        elif r["status"] == "NEW":
            out.append(f"{r['metric']} ({r['now']:.4g}{u}) has no ledger entry: record it with "
                       f"`{ACCEPT_CMD} {r['metric']}`")
        elif r["status"] == "GONE":
            out.append(f"{r['metric']} is in the ledger but no metric computes it: drop it with `{ACCEPT_CMD}`")
    return out


def render(rows: list[dict], width: int = 150) -> str:
    """The table (metric, ledger, now, delta, tolerance, status) as text (parsim.tables)."""
    from parsim.tables import text_table

    def f(v, unit, sign=False):
        return "-" if v is None else (f"{v:+.4g}" if sign else f"{v:.4g}") + ("%" if unit == "%" else "")
    return text_table(("metric", "ledger", "now", "delta", "tolerance", "status"),
                      [(r["metric"], f(r["ledger"], r["unit"]), f(r["now"], r["unit"]), f(r["delta"], r["unit"], True),
                        "-" if r["tolerance"] is None else f"{r['tolerance']:g}", r["status"]) for r in rows],
                      f"accuracy ledger ({_rel(LEDGER)}): recomputed from stored measurements", width=width,
                      justify=("left", "right", "right", "right", "right", "left"))


def accept(now: dict[str, Metric], names=None, path: Path = LEDGER, sources=None) -> list[dict]:
    """Rewrite the ledger with today's values (all metrics, or only `names`); tolerances of existing
    entries are kept. Returns the comparison made before writing."""
    path = Path(path)
    try:
        old = load(path)
    except TrackingError:
        if path.exists() and names:
            raise
        old = {}
    rows = compare(old, now, sources)
    unknown = set(names or ()) - set(now) - set(old)
    if unknown:
        raise TrackingError(f"--accept {', '.join(sorted(unknown))}: no such metric (see `python -m tests.tracking.ledger`)")
    new = dict(old)
    for name in set(old) | set(now):
        if names and name not in names:
            continue
        if sources and name.split(".")[0] not in sources:
            continue
        if name not in now:
            new.pop(name, None)
            continue
        m, e = now[name], old.get(name, {})
        new[name] = {"metric": name, "value": m.value, "unit": m.unit, "better": m.better,
                     "tolerance": e.get("tolerance", m.tolerance), "source": m.source, "description": m.description}
    # a partial accept (--only) keeps the file's order and appends new metrics: the diff shows only what moved
    order = dict.fromkeys(list(old) + list(now) if sources else list(now) + list(new))
    entries = [{k: new[n][k] for k in FIELDS if k in new[n]} for n in order if n in new]
    text = HEADER + yaml.safe_dump({"metrics": entries}, sort_keys=False, allow_unicode=True, width=120)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.tracking.ledger", description=__doc__.splitlines()[0])
    ap.add_argument("--accept", nargs="*", metavar="METRIC", default=None,
                    help="rewrite the ledger with today's values (all, or only the named metrics)")
    ap.add_argument("--only", metavar="SOURCE,...", help="compute only these metric sources")
    ap.add_argument("--ledger", default=str(LEDGER), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sources = a.only.split(",") if a.only else None
    path = Path(a.ledger)
    try:
        if a.accept is None:
            ledger = load(path)      # before the (slower) computation: a broken ledger fails at once
        now = compute(sources)
        if a.accept is not None:
            rows = accept(now, a.accept or None, path, sources)
            print(render(rows))
            changed = [r["metric"] for r in rows if r["status"] != "ok" and (not a.accept or r["metric"] in a.accept)]
            print(f"accuracy ledger: wrote {_rel(path)} ({len(changed)} entries changed{': ' if changed else ''}"
                  f"{', '.join(changed)})")
            return 0
        rows = compare(ledger, now, sources)
        print(render(rows))
        bad = failures(rows)
        for line in bad:
            print(f"accuracy ledger: {line}")
        better = [r["metric"] for r in rows if r["status"] == "better"]
        if better:
            print(f"accuracy ledger: better than the ledger (record with `{ACCEPT_CMD}`): {', '.join(better)}")
        print(f"accuracy ledger: {'FAILED' if bad else 'passed'} ({len(rows)} metrics)")
        return 1 if bad else 0
    except TrackingError as e:
        print(f"accuracy ledger: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
