"""Speed check: pytest-benchmark times tests/benchmarks; each benchmark's median is normalised by a
fixed reference workload timed in the same rounds and compared with this machine kind's baseline.

    python -m tests.tracking.speed                # run, compare with the baseline, report the targets
    python -m tests.tracking.speed --accept       # run, then make this run the baseline of this machine kind
    python -m tests.tracking.speed --run FILE     # compare a saved pytest-benchmark JSON instead of running
      [-k EXPR] [--threshold 0.25] [--slowdown NAME=FACTOR]

What pytest-benchmark does here (its own machinery, not re-implemented): the timing and statistics,
the JSON with ``machine_info`` and ``commit_info``, ``--benchmark-autosave`` of every run into its
storage (``.benchmarks/``, local), ``--benchmark-compare`` against the baseline file (its table of
absolute times, NOW beside the baseline, is printed first) and ``pytest-benchmark compare``. What it
cannot do is the regression rule on a shared machine: ``--benchmark-compare-fail`` compares absolute
times, which move with the load and with the machine. So (1) the timer is CPU time of the process
and its children (:func:`cpu_time`, pytest-benchmark's ``--benchmark-timer``), which leaves out the
time spent waiting for a core, and (2) every benchmark also times a reference workload (a numpy GEMM
and a pure-Python loop, :func:`reference_workload`) before each of its rounds (pytest-benchmark's
untimed ``setup`` hook, tests/benchmarks/conftest.py) and records its median in ``extra_info``. A
benchmark regresses when its normalised median (its median / the reference's median) exceeds the
baseline's by more than ``THRESHOLD``: 25%, the issue's figure, above the normalised run-to-run
spread measured on the development VM under load (README, "Regression tracking").

The absolute targets (``extra_info["target_s"]``, declared by each benchmark) are reported, not
asserted: whether they are met depends on the machine.

Exit codes: 0 no regression, 1 a benchmark regressed (each named) or the benchmarks failed,
2 a missing or corrupt baseline / run file (one line: the file and how to create it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.tracking import TrackingError

ROOT = Path(__file__).resolve().parents[2]
BASELINES = Path(__file__).resolve().parent / "baselines"
STORAGE = ROOT / ".benchmarks"               # pytest-benchmark's default storage; --benchmark-autosave goes here
THRESHOLD = 0.25
TIMER = "tests.tracking.speed.cpu_time"      # pytest-benchmark's --benchmark-timer; saved as its name
TIMER_NAME = TIMER.rsplit(".", 1)[1]
SLOWDOWN_ENV = "PARSIM_BENCH_SLOWDOWN"       # test hook: "name-substring=factor[,...]"
ACCEPT_CMD = "python -m tests.tracking.speed --accept"
# One thread for numpy/BLAS in the benchmarked process: the targets are per core, and a
# multi-threaded GEMM would measure the other engineers' load rather than our code.
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# ---------------------------------------------------------------- the reference workload

_REF_N, _REF_GEMMS, _REF_LOOP = 192, 20, 80_000


def reference_workload() -> float:
    """The fixed reference: 20 single-thread float64 GEMMs of 192 x 192 (20 * 2 * 192**3 = 283 MFLOP,
    numpy/BLAS speed) and an 80,000-iteration pure-Python loop with integer and dict work (interpreter
    speed); about 8 ms each on the development VM. Returns a checksum (so nothing is optimised away)."""
    import numpy as np
    a = np.random.default_rng(0).random((_REF_N, _REF_N))
    b = a
    for _ in range(_REF_GEMMS):
        b = a @ b
        b *= 1.0 / _REF_N
    s, d = 0, {}
    for i in range(_REF_LOOP):
        s += i * i % 7
        d[i & 255] = s
    return float(b[0, 0]) + s


def cpu_time() -> float:
    """CPU seconds (user + system) of this process and of its waited-for children: the speed check's
    timer (pytest-benchmark's ``--benchmark-timer``). On an idle machine it equals the wall time of
    this single-threaded code (the whole-process benchmarks included: the child's CPU time counts);
    on a busy one it leaves out the time spent waiting for a core, which wall time cannot."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def time_reference() -> float:
    """CPU seconds (:func:`cpu_time`) of one :func:`reference_workload`."""
    t0 = cpu_time()
    reference_workload()
    return cpu_time() - t0


# ---------------------------------------------------------------- the injected-slowdown hook

def parse_slowdown(spec: str | None) -> dict[str, float]:
    """``"ring=2,plan_64=1.5"`` -> {"ring": 2.0, "plan_64": 1.5}; a benchmark whose name contains a key
    is slowed by that factor. Bad specs raise TrackingError."""
    out = {}
    for part in filter(None, (spec or "").split(",")):
        name, sep, factor = part.partition("=")
        try:
            f = float(factor)
        except ValueError:
            f = 0.0
        if not sep or not name or f < 1.0:
            raise TrackingError(f"{SLOWDOWN_ENV} / --slowdown {part!r}: expected NAME=FACTOR with FACTOR >= 1 "
                                "(e.g. ring_allreduce=2)")
        out[name] = f
    return out


def slowdown_for(name: str, spec: str | None = None) -> float:
    """The factor the hook applies to benchmark `name` (1.0: none)."""
    spec = os.environ.get(SLOWDOWN_ENV) if spec is None else spec
    return next((f for k, f in parse_slowdown(spec).items() if k in name), 1.0)


def slowed(fn, factor: float):
    """`fn`, made `factor` times slower by spinning the CPU for (factor - 1) times its own CPU time
    (:func:`cpu_time`, its children's included) after each call: spinning, not sleeping, so the
    injected work is measured and slowed by a busy machine exactly as real work is."""
    if factor == 1.0:
        return fn

    def wrapper(*args, **kwargs):
        t0 = cpu_time()
        out = fn(*args, **kwargs)
        end = cpu_time() + (factor - 1.0) * (cpu_time() - t0)
        while cpu_time() < end:
            pass
        return out
    return wrapper


# ---------------------------------------------------------------- machine kind, files

def machine_kind() -> str:
    """CPU model, usable cores, OS and Python minor version as a file-name slug, e.g.
    ``intel-r-xeon-r-processor-2cpu-linux-py3.11``: runs are compared only within one kind."""
    brand = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                brand = line.split(":", 1)[1]
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    raw = f"{brand} {cores}cpu {platform.system()} py{'.'.join(platform.python_version_tuple()[:2])}"
    return re.sub(r"[^a-z0-9.]+", "-", raw.lower()).strip("-")


def baseline_path(kind: str | None = None) -> Path:
    return BASELINES / f"{kind or machine_kind()}.json"


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def load_run(path: Path, what: str = "baseline", how: str = ACCEPT_CMD) -> dict:
    """A pytest-benchmark JSON file whose benchmarks carry the reference timing; else TrackingError
    (one line: the file, what is wrong, how to create it)."""
    path = Path(path)
    if not path.exists():
        raise TrackingError(f"{what} {_rel(path)} is missing: create it with `{how}`")
    try:
        doc = json.loads(path.read_text())
        for b in doc["benchmarks"]:
            float(b["stats"]["median"]), float(b["extra_info"]["reference_median_s"]), str(b["fullname"])
            timer = (b.get("options") or {}).get("timer", TIMER_NAME)
            if timer != TIMER_NAME:
                raise ValueError(f"{b['name']} was timed with {timer}, not {TIMER_NAME}")
        if not doc["benchmarks"]:
            raise ValueError("no benchmarks in it")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrackingError(f"{what} {_rel(path)} is not a pytest-benchmark JSON with reference timings "
                            f"({type(e).__name__}: {e}): recreate it with `{how}`") from None
    return doc


def normalised(doc: dict) -> dict[str, dict]:
    """fullname -> {name, median_s, reference_s, normalised, target_s, ...} for every benchmark of a run."""
    out = {}
    for b in doc["benchmarks"]:
        ref = float(b["extra_info"]["reference_median_s"])
        med = float(b["stats"]["median"])
        out[b["fullname"]] = {"name": b["name"], "median_s": med, "reference_s": ref, "normalised": med / ref,
                              **{k: v for k, v in b["extra_info"].items()
                                 if k.startswith(("target", "items", "peak_rss"))}}
    return out


def compare(run: dict, baseline: dict, threshold: float = THRESHOLD) -> list[dict]:
    """One row per benchmark of `run`: normalised median now and in the baseline, change, status
    ('ok', 'REGRESSION' past +threshold, 'faster', 'new' when the baseline lacks it)."""
    now, base = normalised(run), normalised(baseline)
    rows = []
    for full, b in sorted(now.items(), key=lambda kv: kv[1]["name"]):
        row = dict(b, fullname=full, baseline=None, change=None, status="new")
        if full in base:
            row["baseline"] = base[full]["normalised"]
            row["change"] = b["normalised"] / row["baseline"] - 1
            row["status"] = ("REGRESSION" if row["change"] > threshold else
                             "faster" if row["change"] < -threshold else "ok")
        rows.append(row)
    return rows


def targets(run: dict) -> list[dict]:
    """The absolute targets the benchmarks declare, with this run's medians (reported, not asserted)."""
    rows = []
    for b in sorted(normalised(run).values(), key=lambda b: b["name"]):
        if "target_s" not in b:
            continue
        r = {"name": b["name"], "target": b.get("target", f"< {b['target_s']} s"), "median_s": b["median_s"],
             "met": b["median_s"] < float(b["target_s"])}
        if b.get("items"):
            r["rate"] = f"{b['items'] / b['median_s']:,.0f} {b.get('items_unit', 'items')}/s"
        if "peak_rss_MiB" in b:
            r["memory"] = f"{b['peak_rss_MiB']:,.0f} MiB peak RSS"
        rows.append(r)
    return rows


def render(rows: list[dict], target_rows: list[dict], threshold: float, baseline_name: str) -> str:
    from parsim.tables import text_table
    out = text_table(("benchmark", "median", "reference", "normalised baseline", "normalised now", "change", "status"),
                     [(r["name"], f"{r['median_s'] * 1e3:,.2f} ms", f"{r['reference_s'] * 1e3:.2f} ms",
                       "-" if r["baseline"] is None else f"{r['baseline']:.4g}", f"{r['normalised']:.4g}",
                       "-" if r["change"] is None else f"{r['change']:+.1%}", r["status"]) for r in rows],
                     f"normalised median = median / reference median; baseline {baseline_name}; "
                     f"regression past +{threshold:.0%}", width=160,
                     justify=("left", "right", "right", "right", "right", "right", "left"))
    if target_rows:
        out += text_table(("benchmark", "target", "median", "rate", "memory", "met"),
                          [(r["name"], r["target"], f"{r['median_s']:.4f} s", r.get("rate", ""), r.get("memory", ""),
                            "yes" if r["met"] else "NO") for r in target_rows],
                          "absolute targets (reported, not asserted: they depend on the machine)", width=160,
                          justify=("left",) * 6)
    return out


# ---------------------------------------------------------------- running the benchmarks

def run_benchmarks(json_out: Path, baseline: Path | None, k: str | None = None, slowdown: str | None = None,
                   autosave: bool = True, quiet: bool = False, extra_args: tuple = ()) -> int:
    """pytest-benchmark over tests/benchmarks (enabled, timed in CPU seconds, autosaved into
    .benchmarks/, compared with the baseline file); writes the run to `json_out`; pytest's exit code."""
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "benchmarks"), "-q", "-p", "no:cacheprovider",
           "--benchmark-enable", "--benchmark-only", f"--benchmark-storage=file://{STORAGE}",
           f"--benchmark-json={json_out}", "--benchmark-sort=name", f"--benchmark-timer={TIMER}",
           "--benchmark-columns=min,median,iqr,max,rounds"]
    if autosave and not slowdown:          # a deliberately slowed run is no part of the history
        cmd.append("--benchmark-autosave")
    if baseline is not None:
        cmd.append(f"--benchmark-compare={baseline}")
    if k:
        cmd += ["-k", k]
    cmd += list(extra_args)
    env = dict(os.environ, **THREAD_ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                              os.environ.get("PYTHONPATH")])))
    env[SLOWDOWN_ENV] = slowdown or ""
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=quiet, text=True)
    if quiet and out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
    return out.returncode


def check(run: dict, baseline: dict, threshold: float, baseline_name: str) -> int:
    if run.get("machine_info", {}).get("machine_kind") not in (None, baseline.get("machine_info", {}).get("machine_kind")):
        print(f"speed check: note: run on {run['machine_info']['machine_kind']}, baseline from "
              f"{baseline['machine_info'].get('machine_kind')}")
    rows = compare(run, baseline, threshold)
    print(render(rows, targets(run), threshold, baseline_name))
    bad = [r for r in rows if r["status"] == "REGRESSION"]
    for r in bad:
        print(f"speed check: REGRESSION {r['name']}: normalised median {r['change']:+.1%} against the baseline "
              f"(limit +{threshold:.0%}; {r['median_s'] * 1e3:,.2f} ms, reference {r['reference_s'] * 1e3:.2f} ms)")
    new = [r["name"] for r in rows if r["status"] == "new"]
    if new:
        print(f"speed check: not in the baseline (accept to add): {', '.join(new)}")
    print(f"speed check: {'FAILED' if bad else 'passed'}: {len(rows) - len(new) - len(bad)} of {len(rows)} "
          f"benchmarks within +{threshold:.0%} of {baseline_name}")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.tracking.speed", description=__doc__.splitlines()[0])
    ap.add_argument("--accept", action="store_true", help="make this run the baseline of this machine kind")
    ap.add_argument("--run", metavar="JSON", help="compare this saved pytest-benchmark JSON instead of running")
    ap.add_argument("--baseline", metavar="JSON", help="baseline file (default: tests/tracking/baselines/<kind>.json)")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="allowed rise of a normalised median (0.25)")
    ap.add_argument("-k", metavar="EXPR", help="only the benchmarks pytest -k selects")
    ap.add_argument("--slowdown", metavar="NAME=FACTOR", help=f"test hook ({SLOWDOWN_ENV}): slow matching benchmarks")
    a = ap.parse_args(argv)
    try:
        parse_slowdown(a.slowdown)
        base_path = Path(a.baseline) if a.baseline else baseline_path()
        baseline = None if a.accept else load_run(base_path)
        if a.run:
            run = load_run(Path(a.run), "run", "python -m tests.tracking.speed (it autosaves into .benchmarks/)")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run.json"
                rc = run_benchmarks(out, None if a.accept else base_path, a.k, a.slowdown)
                if rc != 0:
                    print(f"speed check: the benchmarks failed (pytest exit {rc})", file=sys.stderr)
                    return 1
                run = load_run(out, "run", "python -m tests.tracking.speed")
        if a.accept:
            if a.k or a.slowdown:
                raise TrackingError("--accept takes a full, unslowed run: drop -k / --slowdown")
            base_path.parent.mkdir(parents=True, exist_ok=True)
            base_path.write_text(json.dumps(run, indent=1) + "\n")
            print(render(compare(run, run), targets(run), a.threshold, _rel(base_path)))
            print(f"speed check: wrote the baseline {_rel(base_path)} ({len(run['benchmarks'])} benchmarks)")
            return 0
        return check(run, baseline, a.threshold, _rel(base_path))
    except TrackingError as e:
        print(f"speed check: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
