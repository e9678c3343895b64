"""History of speed and accuracy over commits -> reports/tracking/ (Markdown + PNG).

    python -m tests.tracking.history [--out reports/tracking] [--storage .benchmarks] [--no-now]
    python -m tests.tracking.history --backfill COMMIT [COMMIT ...]   # time older commits first

Speed: every saved pytest-benchmark run -- the speed check autosaves each run into ``.benchmarks/``
(pytest-benchmark's storage, local to a checkout) -- and every committed version of the baselines
(``git log`` of tests/tracking/baselines/), as each benchmark's normalised median (median / the
reference workload's median, both CPU seconds) per commit, one line per machine kind. Runs without
reference timings (saved by other harnesses) are skipped.

Accuracy: every committed version of tests/tracking/ledger.yaml (``git log``), plus the values the
current tree computes (unless --no-now), per metric.

``--backfill`` runs today's benchmarks against older commits' code: each commit is checked out in a
temporary git worktree, today's tests/benchmarks and tests/tracking are laid over it, and the run is
saved into the storage with that commit's ``commit_info`` (marked dirty: the harness is newer).
Benchmarks an old commit cannot run are left out of its run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from parsim.tables import md_table
from tests.tracking import TrackingError
from tests.tracking.speed import BASELINES, ROOT, STORAGE, TIMER_NAME

LEDGER_REL = "tests/tracking/ledger.yaml"
BASELINES_REL = str(BASELINES.relative_to(ROOT))


def _git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _commit_times() -> dict[str, tuple[int, str]]:
    """full sha -> (position in first-parent history, oldest = 0; subject)."""
    lines = _git("log", "--first-parent", "--format=%H %s", "HEAD").splitlines()[::-1]
    return {ln[:40]: (i, ln[41:]) for i, ln in enumerate(lines)}


def _normalised_run(doc: dict) -> dict[str, float]:
    out = {}
    for b in doc.get("benchmarks", []):
        ref = (b.get("extra_info") or {}).get("reference_median_s")
        if ref and (b.get("options") or {}).get("timer") == TIMER_NAME and "injected_slowdown" not in b["extra_info"]:
            out[b["name"]] = float(b["stats"]["median"]) / float(ref)
    return out


def speed_points(storage: Path) -> list[dict]:
    """One point per (run, benchmark): commit, dirty, kind, source ('run' | 'baseline'), normalised."""
    docs = []
    for p in sorted(Path(storage).glob("*/*.json")):
        try:
            docs.append(("run", p.name, json.loads(p.read_text())))
        except (OSError, ValueError):
            print(f"history: skipped unreadable run {p}", file=sys.stderr)
    for sha in _git("log", "--format=%H", "--", BASELINES_REL).split():
        for path in _git("ls-tree", "--name-only", f"{sha}:{BASELINES_REL}").split():
            try:
                docs.append(("baseline", f"{path}@{sha[:7]}", json.loads(_git("show", f"{sha}:{BASELINES_REL}/{path}"))))
            except (subprocess.CalledProcessError, ValueError):
                continue
    pts = []
    for src, name, doc in docs:
        ci, mi = doc.get("commit_info") or {}, doc.get("machine_info") or {}
        for bench, v in _normalised_run(doc).items():
            pts.append({"benchmark": bench, "normalised": v, "commit": ci.get("id", "")[:40], "dirty": bool(ci.get("dirty")),
                        "kind": mi.get("machine_kind", "unknown"), "source": src, "file": name,
                        "datetime": doc.get("datetime", "")})
    return pts


def ledger_points(now: bool) -> list[dict]:
    """One point per (ledger version, metric): commit, metric, value."""
    pts = []
    for sha in _git("log", "--format=%H", "--", LEDGER_REL).split():
        try:
            doc = yaml.safe_load(_git("show", f"{sha}:{LEDGER_REL}"))
            for e in doc["metrics"]:
                pts.append({"commit": sha, "metric": e["metric"], "value": float(e["value"]), "unit": e.get("unit", "")})
        except (subprocess.CalledProcessError, yaml.YAMLError, KeyError, TypeError, ValueError):
            print(f"history: skipped unreadable ledger at {sha[:7]}", file=sys.stderr)
    if now:
        from tests.tracking.metrics import compute
        for m in compute().values():
            pts.append({"commit": "now", "metric": m.name, "value": m.value, "unit": m.unit})
    return pts


def _order(commits, times):
    """Commits in history order (unknown ones, e.g. from other branches, then 'now', last)."""
    return sorted(set(commits), key=lambda c: (c == "now", times.get(c, (10 ** 9, ""))[0], c))


def _label(c, times):
    return "now" if c == "now" else c[:7]


def write(out: Path, sp: list[dict], lp: list[dict]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    times = _commit_times()
    written = []
    md = ["# Regression tracking: history", "",
          "Generated by `python -m tests.tracking.history` (README, \"Regression tracking\"). Speed: normalised "
          "median = a benchmark's median / the reference workload's median (CPU seconds, same rounds); lower is "
          "faster; compare within one machine kind. Accuracy: the ledger's committed values (`git log` of "
          f"`{LEDGER_REL}`){' and the current tree (now)' if any(p['commit'] == 'now' for p in lp) else ''}.", ""]

    # ---- speed
    md += ["## Speed (normalised medians)", ""]
    if not sp:
        md += ["No saved runs with reference timings yet: run `python -m tests.tracking.speed`.", ""]
    for kind in sorted({p["kind"] for p in sp}):
        kp = [p for p in sp if p["kind"] == kind]
        commits = _order([p["commit"] for p in kp], times)
        benches = sorted({p["benchmark"] for p in kp})
        by = defaultdict(list)
        for p in kp:
            by[(p["benchmark"], p["commit"])].append(p["normalised"])
        n = len(benches)
        cols = 2
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(11, 2.6 * ((n + cols - 1) // cols)), squeeze=False)
        for ax, b in zip(axes.flat, benches):
            xs = [i for i, c in enumerate(commits) if by.get((b, c))]
            for i in xs:
                vals = by[(b, commits[i])]
                ax.plot([i] * len(vals), vals, ".", color="0.6", ms=4)
            ax.plot(xs, [statistics.median(by[(b, commits[i])]) for i in xs], "o-", ms=4)
            base = [p for p in kp if p["benchmark"] == b and p["source"] == "baseline"]
            for p in base:
                ax.plot(commits.index(p["commit"]), p["normalised"], "s", mfc="none", color="C3", ms=7)
            ax.set_title(b, fontsize=8)
            ax.set_xticks(range(len(commits)), [_label(c, times) for c in commits], rotation=60, fontsize=6)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_ylim(bottom=0)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"normalised median over commits ({kind}); squares: committed baselines", fontsize=9)
        fig.tight_layout()
        png = out / f"speed-{kind}.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        written.append(png)
        md += [f"### {kind}", "", f"![speed]({png.name})", "",
               md_table(["benchmark", *(_label(c, times) for c in commits)],
                        [[b, *(f"{statistics.median(by[(b, c)]):.4g}" if by.get((b, c)) else "" for c in commits)]
                         for b in benches])]
        runs = defaultdict(set)
        for p in kp:
            runs[p["commit"]].add(p["file"])
        md += ["", "Runs per commit (median shown): " + ", ".join(
            f"{_label(c, times)}{'*' if any(p['dirty'] for p in kp if p['commit'] == c) else ''} {len(runs[c])}"
            for c in commits) + " (* harness or tree newer than the commit: backfilled or uncommitted changes)", ""]

    # ---- accuracy
    md += ["## Accuracy (ledger values)", ""]
    if lp:
        commits = _order([p["commit"] for p in lp], times)
        metrics = list(dict.fromkeys(p["metric"] for p in lp))
        val = {(p["metric"], p["commit"]): p for p in lp}
        unit = {p["metric"]: p["unit"] for p in lp}
        groups = defaultdict(list)          # one plot per source and unit (errors in %, pair counts)
        for m in metrics:
            groups[(m.split(".")[0], unit[m])].append(m)
        fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.2 * len(groups)), squeeze=False)
        for ax, ((g, u), ms) in zip(axes.flat, groups.items()):
            for m in ms:
                xs = [i for i, c in enumerate(commits) if (m, c) in val]
                ax.plot(xs, [val[(m, commits[i])]["value"] for i in xs], "o-", ms=3, label=m.removeprefix(g + "."))
            ax.set_title(f"{g} ({u})", fontsize=9)
            ax.set_xticks(range(len(commits)), [_label(c, times) for c in commits], rotation=60, fontsize=7)
            ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            ax.set_ylabel(u, fontsize=7)
        fig.tight_layout()
        png = out / "accuracy.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        written.append(png)
        md += ["![accuracy](accuracy.png)", "",
               md_table(["metric", *(_label(c, times) for c in commits)],
                        [[m, *(f"{val[(m, c)]['value']:.4g}" if (m, c) in val else "" for c in commits)]
                         for m in metrics])]
        md.append("")
    subjects = [c for c in _order([p["commit"] for p in sp + lp], times) if c in times]
    if subjects:
        md += ["## Commits", ""] + [f"- `{c[:7]}` {times[c][1]}" for c in subjects] + [""]
    (out / "README.md").write_text("\n".join(md))
    written.append(out / "README.md")
    return written


def backfill(commits: list[str], storage: Path) -> None:
    """Run today's benchmarks on older commits' code (see the module docstring)."""
    for c in commits:
        sha = _git("rev-parse", "--verify", f"{c}^{{commit}}").strip()
        tmp = Path(tempfile.mkdtemp(prefix="parsim-backfill-"))
        wt = tmp / "tree"
        try:
            _git("worktree", "add", "--detach", str(wt), sha)
            for d in ("tests/benchmarks", "tests/tracking"):
                shutil.rmtree(wt / d, ignore_errors=True)
                shutil.copytree(ROOT / d, wt / d, ignore=shutil.ignore_patterns("__pycache__"))
            code = ("import sys; from pathlib import Path; import tests.tracking.speed as s; "
                    f"s.STORAGE = Path({str(storage)!r}); "
                    f"sys.exit(s.run_benchmarks(Path({str(tmp / 'run.json')!r}), None, "
                    "extra_args=('--continue-on-collection-errors',)))")
            print(f"history: backfill {sha[:7]} ...", flush=True)
            rc = subprocess.run([sys.executable, "-c", code], cwd=wt, env={**__import__("os").environ,
                                                                        "PYTHONPATH": str(wt)}).returncode
            print(f"history: backfill {sha[:7]}: pytest exit {rc} (runs saved into {storage})")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.tracking.history", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "tracking"))
    ap.add_argument("--storage", default=str(STORAGE), help="pytest-benchmark storage with saved runs (.benchmarks)")
    ap.add_argument("--no-now", action="store_true", help="leave out the current tree's accuracy values")
    ap.add_argument("--backfill", nargs="+", metavar="COMMIT", help="first time today's benchmarks on these commits")
    a = ap.parse_args(argv)
    try:
        if a.backfill:
            backfill(a.backfill, Path(a.storage).resolve())
        files = write(Path(a.out), speed_points(Path(a.storage)), ledger_points(not a.no_now))
    except (TrackingError, subprocess.CalledProcessError) as e:
        print(f"history: {getattr(e, 'stderr', '') or e}".strip(), file=sys.stderr)
        return 2
    print("history: wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
