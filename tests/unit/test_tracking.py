"""Regression-tracking tools (tests/tracking): the speed check's normalised comparison and injected
slowdown, the accuracy ledger's comparison, accept and error handling, and the ledger catching
deliberately broken model inputs (checks of issue 10)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tracking import TrackingError
from tests.tracking import ledger as L
from tests.tracking import speed
from tests.tracking.metrics import Metric

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _cli(module, *args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or ENV, timeout=timeout)


def _one_line_exit_2(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# ---------------------------------------------------------------- speed check

def _run(**medians_and_refs):
    """A pytest-benchmark-shaped run: name=(median_s, reference_median_s)."""
    return {"machine_info": {"machine_kind": "k"}, "benchmarks": [
        {"name": n, "fullname": f"tests/benchmarks/t.py::{n}", "stats": {"median": m},
         "extra_info": {"reference_median_s": r, "target_s": 1.0}} for n, (m, r) in medians_and_refs.items()]}


def test_speed_compare_normalises_by_the_reference():
    base = _run(a=(0.10, 0.010), b=(2.0, 0.010))
    # the whole machine 3x slower (reference too): no change; `b` 2x slower on the same machine: +100%
    rows = {r["name"]: r for r in speed.compare(_run(a=(0.30, 0.030), b=(12.0, 0.030)), base)}
    assert rows["a"]["change"] == pytest.approx(0.0) and rows["a"]["status"] == "ok"
    assert rows["b"]["change"] == pytest.approx(1.0) and rows["b"]["status"] == "REGRESSION"
    # +24% passes, +26% fails (threshold 25%); -30% is reported as faster
    rows = {r["name"]: r for r in speed.compare(_run(a=(0.124, 0.010), b=(2.52, 0.010)), base)}
    assert (rows["a"]["status"], rows["b"]["status"]) == ("ok", "REGRESSION")
    assert speed.compare(_run(a=(0.07, 0.010)), base)[0]["status"] == "faster"
    assert speed.compare(_run(c=(1.0, 0.01)), base)[0]["status"] == "new"


def test_speed_check_fails_naming_the_regressed_benchmark(tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(_run(a=(0.10, 0.010), b=(2.0, 0.010))))
    (tmp_path / "run.json").write_text(json.dumps(_run(a=(0.11, 0.010), b=(4.0, 0.010))))
    rc = speed.main(["--run", str(tmp_path / "run.json"), "--baseline", str(tmp_path / "base.json")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "speed check: REGRESSION b: normalised median +100.0%" in out
    assert "REGRESSION a" not in out


@pytest.mark.parametrize("content,needle", [
    (None, "is missing: create it with `python -m tests.tracking.speed --accept`"),
    ("{not json", "is not a pytest-benchmark JSON"),
    (json.dumps({"benchmarks": [{"name": "x", "fullname": "x", "stats": {"median": 1}, "extra_info": {}}]}),
     "is not a pytest-benchmark JSON with reference timings"),
])
def test_speed_check_missing_or_corrupt_baseline_is_one_line_exit_2(tmp_path, content, needle):
    base = tmp_path / "base.json"
    if content is not None:
        base.write_text(content)
    run = tmp_path / "run.json"
    run.write_text(json.dumps(_run(a=(0.1, 0.01))))
    _one_line_exit_2(_cli("tests.tracking.speed", "--baseline", str(base), "--run", str(run)), str(base), needle)


def test_the_machine_kind_has_a_committed_baseline_or_says_how_to_make_one():
    # the development VM's kind is committed; any other machine gets the one-line instruction
    path = speed.baseline_path()
    if path.exists():
        assert speed.load_run(path)["machine_info"]["machine_kind"] == speed.machine_kind()
    else:
        with pytest.raises(TrackingError, match="speed --accept"):
            speed.load_run(path)


def test_slowdown_hook_parses_and_doubles_cpu_time():
    assert speed.parse_slowdown("ring=2,plan_64=1.5") == {"ring": 2.0, "plan_64": 1.5}
    for bad in ("ring", "ring=x", "ring=0.5", "=2"):
        with pytest.raises(TrackingError, match="NAME=FACTOR"):
            speed.parse_slowdown(bad)
    assert speed.slowdown_for("test_bench_ring_x", "ring=2") == 2.0
    assert speed.slowdown_for("test_plan_64", "ring=2") == 1.0

    def work():
        return sum(i * i for i in range(200_000))
    def cpu_of(fn):
        t0 = speed.cpu_time()
        out = fn()
        return speed.cpu_time() - t0, out
    work()                                      # warm: a cold first call ran 1.5x slower in a CI dry run
    before = [cpu_of(work)[0] for _ in range(3)]
    slow, out = cpu_of(speed.slowed(work, 2.0))  # the slowed call alone
    after = [cpu_of(work)[0] for _ in range(3)]
    assert out == work()
    # the wrapper spins until its own CPU time reaches 2x the call's: >= 2x by construction. The plain call is
    # measured apart, before and after (a busy 2-core machine moved one sample by 25%: the full suite once saw
    # slow < 1.5 x the minimum of three taken before only), so allow its run-to-run variation: against the smallest
    # of six, 1.4x still tells a doubled call from an untouched one (1.0x)
    plain = min(before + after)
    assert slow >= 1.4 * plain, (slow, before, after)


@pytest.mark.slow
def test_injected_2x_slowdown_fails_the_speed_check_naming_the_benchmark(tmp_path, capsys):
    """Real pytest-benchmark runs of the cheapest benchmark: a baseline, then the same benchmark made 2x
    slower by the hook. CPU-time medians normalised by the reference: the machine's load cancels out."""
    k = "test_bench_1f1b_p8_m64"
    assert speed.run_benchmarks(tmp_path / "base.json", None, k=k, autosave=False, quiet=True) == 0
    assert speed.run_benchmarks(tmp_path / "slow.json", None, k=k, slowdown="1f1b=2", autosave=False, quiet=True) == 0
    rc = speed.main(["--run", str(tmp_path / "slow.json"), "--baseline", str(tmp_path / "base.json")])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert f"speed check: REGRESSION {k}" in out, out


# ---------------------------------------------------------------- accuracy ledger

def _m(name, value, better="lower", tol=0.05):
    return Metric(name, value, better=better, tolerance=tol, unit="%" if better == "lower" else "pairs", source="f")


def test_ledger_compare_directions_and_tolerance(tmp_path):
    now = {m.name: m for m in [_m("s.err", 3.04), _m("s.worse", 3.06), _m("s.better", 2.9),
                               _m("s.agree", 55, "higher", 0), _m("s.new", 1.0)]}
    L.accept({k: v for k, v in now.items() if k != "s.new"} | {"s.err": _m("s.err", 3.0), "s.worse": _m("s.worse", 3.0),
                                                                 "s.better": _m("s.better", 3.0),
                                                                 "s.agree": _m("s.agree", 56, "higher", 0),
                                                                 "s.gone": _m("s.gone", 1.0)}, path=tmp_path / "l.yaml")
    rows = {r["metric"]: r for r in L.compare(L.load(tmp_path / "l.yaml"), now)}
    assert rows["s.err"]["status"] == "ok"            # +0.04 within 0.05
    assert rows["s.worse"]["status"] == "WORSE"       # +0.06 past 0.05
    assert rows["s.better"]["status"] == "better"
    assert rows["s.agree"]["status"] == "WORSE"       # higher is better: 55 < 56
    assert rows["s.new"]["status"] == "NEW" and rows["s.gone"]["status"] == "GONE"
    lines = L.failures(list(rows.values()))
    assert len(lines) == 4 and any(line.startswith("s.worse is worse: 3.06% now, ledger 3% ") for line in lines)


def test_ledger_accept_rewrites_values_and_keeps_hand_set_tolerances(tmp_path):
    path = tmp_path / "l.yaml"
    L.accept({"s.a": _m("s.a", 3.0), "s.b": _m("s.b", 5.0)}, path=path)
    doc = yaml.safe_load(path.read_text())
    doc["metrics"][0]["tolerance"] = 0.5                       # an engineer widens one tolerance
    path.write_text(L.HEADER + yaml.safe_dump(doc, sort_keys=False))
    L.accept({"s.a": _m("s.a", 2.5), "s.b": _m("s.b", 5.5)}, names=["s.a"], path=path)
    led = L.load(path)
    assert led["s.a"]["value"] == 2.5 and led["s.a"]["tolerance"] == 0.5
    assert led["s.b"]["value"] == 5.0                           # not named: untouched
    assert path.read_text().startswith("# Accuracy ledger")


@pytest.mark.parametrize("content,needle", [
    (None, "is missing: create it with `python -m tests.tracking.ledger --accept`"),
    ("metrics: [\n  - {metric: a, value: 1", "is not valid YAML"),
    ("metrics:\n- {metric: a, value: x, tolerance: 0.1}\n", "is malformed"),
    ("just a string\n", "is malformed"),
])
def test_ledger_missing_or_corrupt_is_one_line_exit_2(tmp_path, content, needle):
    path = tmp_path / "ledger.yaml"
    if content is not None:
        path.write_text(content)
    _one_line_exit_2(_cli("tests.tracking.ledger", "--ledger", str(path), "--only", "cpu"), str(path), needle)


def test_the_committed_ledger_is_readable_and_covers_every_metric_source():
    led = L.load()
    from tests.tracking.metrics import SOURCES
    assert {n.split(".")[0] for n in led} == set(SOURCES) >= {"narayanan2021", "netem", "cpu", "corpus"}


def _broken_profile(tmp_path, change):
    """A PARSIM_DEVICES_LOCAL file: the development VM's measured profiles (what the ledger prices the
    stored CPU and netem measurements with) with one entry changed."""
    data = ROOT / "parsim" / "data"
    cat = yaml.safe_load((data / "devices.yaml").read_text())
    local_file = data / "measured" / "vm-2core" / "devices.yaml"
    local = yaml.safe_load(local_file.read_text()) if local_file.exists() else {}
    merged = copy.deepcopy(local)
    change(cat, merged)
    path = tmp_path / "devices.local.yaml"
    path.write_text(yaml.safe_dump(merged))
    return dict(ENV, PARSIM_DEVICES_LOCAL=str(path))


def test_a100_sustained_fraction_10pct_lower_fails_the_narayanan_metric(tmp_path):
    def lower(cat, local):
        local["a100-80gb"] = dict(cat["a100-80gb"])
        local["a100-80gb"]["matmul_sustained_fraction"] = cat["a100-80gb"]["matmul_sustained_fraction"] * 0.9
    r = _cli("tests.tracking.ledger", "--only", "narayanan2021", env=_broken_profile(tmp_path, lower))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "accuracy ledger: narayanan2021.mean_abs_error is worse" in r.stdout, r.stdout
    # leave-one-out refits the fraction on the other rows: unchanged by the profile's value
    assert "narayanan2021.loo_mean_abs_error is worse" not in r.stdout
    # restored (the shipped profile): passes
    r = _cli("tests.tracking.ledger", "--only", "narayanan2021")
    assert r.returncode == 0, r.stdout + r.stderr


def test_dropped_collective_overhead_fails_the_netem_metrics(tmp_path):
    def drop(cat, local):   # the calibrated software overhead of collectives "forgotten"
        for k in ("executor_step_overhead_us", "executor_message_overhead_us", "native_step_overhead_us"):
            local["cpu"][k] = 0.0
    r = _cli("tests.tracking.ledger", "--only", "netem,netem_quick", env=_broken_profile(tmp_path, drop))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "accuracy ledger: netem.mae_all is worse" in r.stdout, r.stdout
    assert "accuracy ledger: netem.mae_lt_1MiB is worse" in r.stdout, r.stdout
    # the quick study's stored points (parsim validate's results store) too: its collectives and its training step
    # are predicted too fast already; without the overhead, faster still
    assert "accuracy ledger: netem_quick.mean_abs_error.collective is worse" in r.stdout, r.stdout
    assert "netem_quick.point_abs_error.A:_collective_allreduce_ring_256KiB is worse" in r.stdout, r.stdout
    r = _cli("tests.tracking.ledger", "--only", "netem,netem_quick")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_faster_cpu_profile_fails_the_cpu_study_metrics(tmp_path):
    """The stored CPU study (reports/cpu/results.jsonl) is predicted too fast (the VM was shared while it ran):
    a cpu profile with twice the GEMM peak predicts it faster still, and its ledger metrics fail."""
    def faster(cat, local):
        local["cpu"]["peak_TFLOPs"] = {k: 2 * v for k, v in local["cpu"]["peak_TFLOPs"].items()}
    r = _cli("tests.tracking.ledger", "--only", "cpu_study", env=_broken_profile(tmp_path, faster))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "accuracy ledger: cpu_study.mean_abs_error is worse" in r.stdout, r.stdout
    assert "cpu_study.point_abs_error.train_gpt-small_dp1tp1pp1_mb2_1f1b_native_z0_rc:none is worse" in r.stdout
    r = _cli("tests.tracking.ledger", "--only", "cpu_study")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_committed_parsim_validate_store_is_a_ledger_source():
    """A results store `parsim validate` wrote (every record has finished_utc and versions) committed under
    reports/ is tracked; exports of older files (no finished_utc) are not stores of a study run."""
    from parsim import results as R
    from tests.tracking.metrics import STUDY_STORES
    stores = set()
    for p in sorted((ROOT / "reports").rglob("results.jsonl")):
        recs = R.read(p)
        if recs and all(r.get("finished_utc") and r.get("versions") for r in recs):
            stores.add(str(p.relative_to(ROOT)))
    assert stores == {f for f, _ in STUDY_STORES.values()}, stores
    assert "reports/cpu/results.jsonl" in stores and "reports/netem/quick/results.jsonl" in stores


def test_repredict_prices_a_stored_netem_point_on_its_stored_link_probes():
    """parsim.commands.validate.repredict: the emulated network rebuilt from the study's entry with the probes
    the study stored. Halving every probe's efficiency (measured / configured rate: the links carry the configured
    rate times it, backends.netem.probe.measured_graph) makes the bandwidth-bound 4 MiB ring slower, 2x at most (the
    latency part is unchanged); a training point recorded without probes borrows its network's."""
    from parsim import results as R
    from parsim.commands.validate import repredict
    from parsim.errors import ParsimError
    recs = R.read(ROOT / "reports/netem/quick/results.jsonl")
    ring = next(r for r in recs if r["id"] == "A: collective allreduce ring 4.0 MiB")
    t0 = repredict(ring, recs)
    slow = copy.deepcopy(ring)
    for pr in slow["profile"]["link_probes"]:
        pr["measured_Bps"] /= 2
        pr["efficiency"] /= 2
    t1 = repredict(slow, recs)
    assert 1.5 * t0 < t1 <= 2 * t0 + 1e-12, (t0, t1)
    train = next(r for r in recs if r["kind"] == "train")
    assert "link_probes" not in train["profile"]                 # recorded before training points kept them
    assert repredict(train, recs) > 0
    other = copy.deepcopy(recs[1:])
    other[0]["profile"]["link_probes"] = slow["profile"]["link_probes"]
    with pytest.raises(ParsimError, match="2 distinct sets"):
        repredict(train, other)


def test_a_registered_source_with_missing_measurements_names_the_file(monkeypatch):
    from tests.tracking import metrics
    monkeypatch.setitem(metrics.SOURCES, "fake", metrics.Source("fake", ("reports/fake/none.json",),
                                                                lambda p: [], "python -m studies.fake"))
    with pytest.raises(TrackingError, match=r"reports/fake/none.json \(metric source fake\) are missing: .*"
                                            r"python -m studies.fake"):
        metrics.compute(["fake"])
    with pytest.raises(TrackingError, match="unknown metric source"):
        metrics.compute(["nope"])


def test_a_new_source_is_reported_new_until_accepted(monkeypatch, tmp_path):
    """How a later issue adds a table: register a source, the check says NEW, --accept records it."""
    from tests.tracking import metrics
    stored = tmp_path / "results.json"
    stored.write_text(json.dumps({"errors": [0.02, -0.04]}))
    monkeypatch.setitem(metrics.SOURCES, "study", metrics.Source(
        "study", (str(stored),), lambda p: [Metric("study.mean_abs_error", metrics.pct(metrics.mean_abs(
            json.loads(Path(p).read_text())["errors"])))]))
    now = metrics.compute(["study"])
    assert now["study.mean_abs_error"].value == 3.0            # (2% + 4%) / 2
    path = tmp_path / "ledger.yaml"
    L.accept({"s.a": _m("s.a", 1.0)}, path=path)
    assert [r["status"] for r in L.compare(L.load(path), now, ["study"])] == ["NEW"]
    L.accept(now, path=path, sources=["study"])
    assert [r["status"] for r in L.compare(L.load(path), now, ["study"])] == ["ok"]
    assert L.load(path)["s.a"]["value"] == 1.0                 # other sources' entries untouched
    assert list(L.load(path)) == ["s.a", "study.mean_abs_error"]   # kept in place, the new one appended
