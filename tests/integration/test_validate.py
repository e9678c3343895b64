"""`parsim validate` end to end on CPU ranks: kill mid-study and resume (every point exactly once),
a failing point recorded with its cause, and the GPU study's CPU dry run (so it cannot rot)."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

STUDY = """
name: kill-resume
steps: 2
warmup: 1
timeout_s: 120
train:
  - model: gpt-tiny
    plan: {micro_batch: 1}
    sweep: {recompute: [none, selective, full]}
  - model: gpt-tiny
    plan: {micro_batch: 2}
    sweep: {recompute: [none, full]}
"""


def _ids(store):
    return [json.loads(ln)["id"] for ln in store.read_text().splitlines() if ln.strip()]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_mid_study_then_resume_records_every_point_exactly_once(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    store = out / "results.jsonl"
    cmd = [sys.executable, "-m", "parsim", "validate", str(study), "--out", str(out), "--no-report"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (store.exists() and len(_ids(store)) >= 2):
            time.sleep(0.2)
        assert store.exists(), p.stderr.read().decode()[-2000:] if p.poll() is not None else "no point finished"
        os.kill(p.pid, signal.SIGKILL)       # mid-study: points 3.. not run yet (or running)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    before = _ids(store)
    assert 2 <= len(before) < 5
    with open(store, "ab") as f:             # and a point torn mid-write, as a kill inside write() leaves it
        f.write(b'{"study": "kill-resume", "id": "train gpt-tiny')
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--resume" in r.stderr     # existing results are never silently appended to
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after = _ids(store)
    assert after[:len(before)] == before
    assert sorted(after) == sorted(set(after)) and len(after) == 5, after     # 3 + 2 points, each once
    recs = [json.loads(ln) for ln in store.read_text().splitlines()]
    assert all(r["status"] == "ok" and r["measured"]["source"] == "measured" for r in recs)
    assert all(r["versions"]["parsim"] and r["machine"]["cpus"] and r["profile"]["name"] == "cpu" for r in recs)
    assert all(r["summary"]["spread"][0] <= r["summary"]["measured"] <= r["summary"]["spread"][1] for r in recs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failing_point_is_recorded_with_its_cause_and_the_study_goes_on_then_report(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("""
name: fail-goes-on
steps: 3
warmup: 1
train:
  - model: gpt-tiny
    plan: {dp: 2, micro_batch: 1}
    fault: "1:1:kill"
  - model: gpt-tiny
    plan: {pp: 2, micro_batch: 1, global_batch: 4, schedule: gpipe}
    trace: true
collectives:
  - {op: allreduce, algo: [ring, native], size: [4KiB, 64KiB], repeats: 2}
""")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "parsim", "validate", str(study), "--out", str(out)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = {json.loads(ln)["id"]: json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()}
    assert len(recs) == 2 + 4
    bad = recs["train gpt-tiny dp2·tp1·pp1 mb1 1f1b native z0 rc:none"]
    assert bad["status"] == "failed" and bad["failure"] == "rank crash" and "rank 1 was killed by SIGKILL" in bad["cause"]
    coll = [v for v in recs.values() if v["kind"] == "collective"]
    assert all(v["status"] == "ok" and v["measured"]["busbw_GBps"] > 0 for v in coll)
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    # one scatter per quantity: the training step times and the collective times on their own axes
    for fig in ("scatter_step_time_s", "scatter_time_s", "phase_error", "breakdown", "busbw", "gantt"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000 and f"figures/{fig}.png" in md
    assert html.count("data:image/png;base64,") == 6 and "FAILED (rank crash)" in html
    traced = [v for v in recs.values() if v.get("pipeline_ops")]
    assert len(traced) == 1 and {o[1] for o in traced[0]["pipeline_ops"]} == {"F", "B"}   # 2 ranks x 4 F + 4 B
    assert len(traced[0]["pipeline_ops"]) == 2 * 2 * 4
    assert "Largest errors:" in md


def _documented_gpu_command() -> str:
    """The one command studies/gpu/h200.yaml documents for the lent H200 (its header comment)."""
    cmds = [ln.lstrip("# ").strip() for ln in (ROOT / "studies/gpu/h200.yaml").read_text().splitlines()
            if ln.startswith("#") and "-m parsim validate studies/gpu/h200.yaml" in ln and "--tiny" not in ln]
    assert len(cmds) == 1, cmds
    return cmds[0]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_gpu_study_dry_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    """The GPU study's own command (read from studies/gpu/h200.yaml, `... --out $OUT`) with --tiny, end to end
    on CPU ranks: the same points (device measurement, five plans), results and report into $OUT."""
    cmd = _documented_gpu_command()
    assert "$OUT" in cmd and cmd.startswith("PYTHONPATH=. python3 -m parsim validate")
    out = tmp_path / "gpu"
    out.mkdir()
    r = subprocess.run(["bash", "-c", cmd.replace("python3 ", f"{shlex.quote(sys.executable)} ", 1) + " --tiny"],
                       cwd=ROOT, env=dict(ENV, OUT=str(out)), capture_output=True, text=True, timeout=380)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["device"] + ["train"] * 5
    assert all(r["status"] == "ok" and r["tiny"] for r in recs), [r.get("cause") for r in recs]
    assert {r["point"]["plan"]["recompute"] for r in recs[1:]} == {"none", "selective", "full"}
    assert {r["point"]["plan"]["micro_batch"] for r in recs[1:]} == {2, 4}
    prof = (out / "cpu.measured.yaml").read_text()
    assert "matmul_efficiency" in prof and "measured" in prof        # a measured profile with its source
    assert all(r["predicted_catalog"] is not None for r in recs[1:])  # predicted with both profiles
    assert all(r["summary"]["predicted"] > 0 and r["summary"]["measured"] > 0 for r in recs[1:])
    md = (out / "report.md").read_text()
    # the device point (best GEMM throughput, a fraction of peak) and the step times (s): one scatter each
    for fig in ("scatter_gemm_best_fraction_of_peak", "scatter_step_time_s", "phase_error", "breakdown"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000 and f"figures/{fig}.png" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4
