"""Study files (parsim.study) and the results store (parsim.results): pure, no torch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from parsim import results as R
from parsim.errors import ParsimError
from parsim.study import load_study

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_sweep_expands_to_the_cartesian_product_with_stable_unique_ids(tmp_path):
    s = load_study(_write(tmp_path, """
name: s
train:
  - model: gpt-tiny
    plan: {dp: 2, micro_batch: 1}
    sweep: {recompute: [none, full], zero: [0, 1]}
collectives:
  - {op: allreduce, algo: [ring, tree], size: 4KiB:16KiB}
"""))
    train = [p for p in s.points if p.kind == "train"]
    coll = [p for p in s.points if p.kind == "collective"]
    assert len(train) == 4                       # 2 recompute x 2 zero
    assert len(coll) == 2 * 3                    # 2 algos x (4, 8, 16 KiB)
    assert len({p.id for p in s.points}) == len(s.points)
    assert {p.spec["plan"]["global_batch"] for p in train} == {2}   # default micro_batch·dp·pp = 1·2·1
    assert all(p.spec["plan"]["dtype"] == "fp32" and p.spec["plan"]["overlap"] is False for p in train)
    assert [p.id for p in load_study(s.path).points] == [p.id for p in s.points]


@pytest.mark.parametrize("text,needle", [
    ("train: []", "s.yaml.name: expected a non-empty string"),
    ("name: x\nwhere: moon\ntrain: [{model: gpt-tiny}]", "s.yaml.where: expected one of local, gpu, netem (got 'moon')"),
    ("name: x\ntrain: [{model: gpt-tiny, plan: {dpp: 2}}]", "s.yaml.train[0].plan.dpp: unknown plan field"),
    ("name: x\nsteps: 0\ntrain: [{model: gpt-tiny}]", "s.yaml.steps: expected an integer >= 1 (got 0)"),
    ("name: x\ntrain: [{model: gpt-tiny, sweep: {recompute: none}}]", "s.yaml.train[0].sweep: expected a mapping"),
    ("name: x\ncollectives: [{size: 4XB}]", "s.yaml.collectives[0].size: expected sizes"),
    ("name: x\nwhere: netem\ncollectives: [{size: 4KiB}]", "s.yaml.networks: expected a mapping"),
    ("name: x\ntrian: []", "s.yaml.trian: unknown key"),
    ("name: x\n", "expected at least one point"),
    ("name: [x", "not valid YAML"),
    # missing keys
    ("name: x\ntrain: [{plan: {dp: 2}}]", "s.yaml.train[0].model: expected a model preset name or a ModelSpec file"),
    ("name: x\nwhere: netem\nnetworks: {A: {hosts: 2}}\ncollectives: [{size: 4KiB}]",
     "s.yaml.networks.A.link: expected a rate such as 200Mbit or 1Gbit"),
    ("name: x\nwhere: gpu\ndevice: {profile: h200, hbm_MiB: [1]}", "s.yaml.device.gemm: expected a list of [m, n, k]"),
    # wrong types
    ("name: x\ntrain: 5", "s.yaml.train: expected a list of training points"),
    ("name: x\ncollectives: {algo: ring}", "s.yaml.collectives: expected a list of collective benchmarks"),
    ("name: x\ntrain: [{model: gpt-tiny, plan: [1, 2]}]", "s.yaml.train[0].plan: expected a mapping of plan fields"),
    ("name: x\nsteps: eight\ntrain: [{model: gpt-tiny}]", "s.yaml.steps: expected an integer >= 1 (got 'eight')"),
    ("name: x\ncollectives: [{min_time_s: fast}]", "s.yaml.collectives[0].min_time_s: expected a number >= 0 (got 'fast')"),
    ("name: x\ncluster: 5\ntrain: [{model: gpt-tiny}]", "s.yaml.cluster: expected a cluster preset name or a cluster file (got 5)"),
    ("name: x\ntrain: [{model: gpt-tiny, trace: maybe}]", "s.yaml.train[0].trace: expected true or false (got 'maybe')"),
    ("name: x\ntiny: {models: 5}\ntrain: [{model: gpt-tiny}]", "s.yaml.tiny.models: expected a mapping"),
    ("name: x\nwhere: netem\nnetworks: {A: {hosts: 2, link: 1Gbit, ranks_per_host: x}}\ncollectives: [{size: 4KiB}]",
     "s.yaml.networks.A.ranks_per_host: expected an integer >= 1 (got 'x')"),
    ("name: x\ntrain: [{model: gpt-tiny, network: A}]", "s.yaml.train[0].network: expected no network unless where: netem"),
    # unknown keys and names
    ("name: x\ntrain: [{model: gpt-tiny, plans: {dp: 2}}]", "s.yaml.train[0].plans: unknown key; expected one of"),
    ("name: x\nwhere: netem\nnetworks: {A: {hosts: 2, link: 1Gbit, speed: 3}}\ncollectives: [{size: 4KiB}]",
     "s.yaml.networks.A.speed: unknown key"),
    ("name: x\ntiny: {model: {a: b}}\ntrain: [{model: gpt-tiny}]", "s.yaml.tiny.model: unknown key"),
    ("name: x\ntrain: [{model: gpt-tinyy}]", "s.yaml.train[0].model: unknown model preset 'gpt-tinyy'; did you mean gpt-tiny"),
    ("name: x\ntrain: [{model: nope.yaml}]", "s.yaml.train[0].model: expected a model preset name or an existing ModelSpec file"),
    ("name: x\ncluster: dgx-h10\ntrain: [{model: gpt-tiny}]", "s.yaml.cluster: unknown cluster preset 'dgx-h10'; did you mean dgx-h100"),
    ("name: x\ncollectives: [{algo: [ring, bogus]}]", "s.yaml.collectives[0].algo[1]: expected one of ring, tree"),
    ("name: x\nwhere: gpu\ndevice: {profile: h900, gemm: [[8, 8, 8]], hbm_MiB: [1]}", "s.yaml.device.profile: expected a device profile"),
    # bad plan and sweep values: the swept value at fault is named by its index
    ("name: x\ntrain: [{model: gpt-tiny, sweep: {recompute: [none, bogus]}}]",
     "s.yaml.train[0].sweep.recompute[1]: recompute = 'bogus': expected one of none, selective, full"),
    ("name: x\ntrain: [{model: gpt-tiny, sweep: {zero: [0, 7]}}]", "s.yaml.train[0].sweep.zero[1]: zero = 7: expected one of 0"),
    ("name: x\ntrain: [{model: gpt-tiny, sweep: {dp: [1, two]}}]", "s.yaml.train[0].sweep.dp[1]: expected integer dp"),
    ("name: x\ntrain: [{model: gpt-tiny, plan: {recompute: bogus}}]", "s.yaml.train[0].plan: recompute = 'bogus'"),
    # valid alone, not together: 4 sequences do not split into micro-batches of 2 over dp = 3
    ("name: x\ntrain: [{model: gpt-tiny, plan: {micro_batch: 2, global_batch: 4}, sweep: {dp: [1, 3]}}]",
     "s.yaml.train[0].plan (sweep dp=3): global-batch (4) is not divisible by micro-batch·dp = 2·3 = 6"),
    # the rule book, against the point's model: gpt-tiny has 4 heads
    ("name: x\ntrain: [{model: gpt-tiny, plan: {tp: 3}}]", "s.yaml.train[0].plan: heads (4) of gpt-tiny is not divisible by tp (3)"),
])
def test_a_malformed_study_is_one_error_naming_the_key_and_what_was_expected(tmp_path, text, needle, capsys):
    path = _write(tmp_path, text)
    tiny = "tiny:" in text
    with pytest.raises(ParsimError, match=None) as ei:
        load_study(path, tiny=tiny)
    assert needle in str(ei.value), str(ei.value)
    # the CLI: that one line, no traceback, exit 2 (nothing run, nothing written)
    from parsim.cli import main
    assert main(["validate", str(path), "--out", str(tmp_path / "o"), *(["--tiny"] if tiny else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_cli_malformed_study_is_one_line_exit_2(tmp_path):
    p = _write(tmp_path, "name: x\nwarmup: 5\nsteps: 5\ntrain: [{model: gpt-tiny}]")
    r = subprocess.run([sys.executable, "-m", "parsim", "validate", str(p), "--out", str(tmp_path / "o")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "warmup: expected fewer than steps (5)" in r.stderr, r.stderr


def test_store_ignores_and_repairs_a_torn_last_line(tmp_path):
    st = tmp_path / "results.jsonl"
    R.append(st, {"id": "a", "status": "ok"})
    R.append(st, {"id": "b", "status": "failed"})
    with open(st, "ab") as f:              # what a kill in the middle of the third write leaves
        f.write(b'{"id": "c", "sta')
    assert [r["id"] for r in R.read(st)] == ["a", "b"]
    assert R.repair(st) == len(b'{"id": "c", "sta')
    assert st.read_bytes().endswith(b"\n") and R.repair(st) == 0
    R.append(st, {"id": "c", "status": "ok"})
    assert [r["id"] for r in R.read(st)] == ["a", "b", "c"]


def test_store_rejects_a_malformed_line_in_the_middle(tmp_path):
    st = tmp_path / "results.jsonl"
    st.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ParsimError, match=r"results.jsonl, line 2 column 1: not a JSON record \(expecting value;"):
        R.read(st)


@pytest.mark.parametrize("msg,kind", [
    ("rank 0 failed in phase step 1 forward: OutOfMemoryError: CUDA out of memory. Tried to allocate", "oom"),
    ("run did not finish within its timeout of 5 s: rank(s) 0 still running", "timeout"),
    ("rank 1 was killed by SIGKILL (then rank(s) 0 aborted); all ranks stopped", "rank crash"),
    ("error: tp (3) does not divide heads", "error"),
])
def test_failures_are_classified_by_cause(msg, kind):
    assert R.classify_failure(msg) == kind


def test_frame_has_one_row_per_point_with_the_summary_columns():
    recs = [{"id": "a", "kind": "train", "status": "ok",
             "summary": {"metric": "step_time_s", "measured": 2.0, "spread": [1.9, 2.2], "predicted": 1.0, "error": -0.5}},
            {"id": "b", "kind": "train", "status": "failed", "failure": "oom", "cause": "x", "summary": {}}]
    f = R.frame(recs)
    assert list(f.id) == ["a", "b"] and f.loc[0, "spread_max"] == 2.2 and f.loc[1, "failure"] == "oom"


def test_resume_and_fresh_together_are_refused_before_anything_is_written(tmp_path, capsys):
    from parsim.cli import main
    out = tmp_path / "o"
    assert main(["validate", str(ROOT / "studies/cpu/run_vs_predict.yaml"), "--resume", "--fresh", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume and --fresh contradict each other" in err and err.count("\n") == 1, err
    assert not out.exists()
