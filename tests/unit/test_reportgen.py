"""parsim report: what-if over predict/plan outputs, the published table, records -> Markdown + HTML."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from parsim.errors import ParsimError
from parsim.plan import Plan
from parsim.predict import predict
from parsim.reportgen import findings, phase_table, write_report
from parsim import results as R

ROOT = Path(__file__).resolve().parents[2]


def _train_record(pid, measured_scale, bubble_extra=0.0):
    """A study record whose 'measured' report is the prediction with every phase scaled."""
    p = predict("gpt-tiny", "cpu-local", Plan(pp=2, micro_batch=1, global_batch=4, dtype="fp32", overlap=False))
    m = p.to_dict()
    m["breakdown_s"] = {k: v * measured_scale for k, v in p.breakdown_s.items()}
    m["breakdown_s"]["bubble"] += bubble_extra
    m["step_time_s"] = sum(m["breakdown_s"].values())
    m["source"] = "measured"
    err = (p.step_time_s - m["step_time_s"]) / m["step_time_s"]
    return {"study": "s", "id": pid, "kind": "train", "status": "ok", "measured": m, "predicted": p.to_dict(),
            "point": {"model": "gpt-tiny", "plan": p.plan}, "cluster": "cpu-local",
            "summary": {"metric": "step_time_s", "measured": m["step_time_s"], "spread": [None, None],
                        "predicted": p.step_time_s, "error": err}}


def test_phase_contributions_sum_to_the_step_error_and_the_paragraph_names_the_phase():
    recs = [_train_record("a", 1.0, bubble_extra=0.01), _train_record("b", 1.0)]
    pt = phase_table(recs)
    a = pt[pt.id == "a"].iloc[0]
    contrib = sum(a[c] for c in pt.columns if c.startswith("err_"))
    assert contrib == pytest.approx(recs[0]["summary"]["error"], rel=1e-9)
    assert a["err_bubble"] < 0 and abs(a["err_compute"]) < 1e-12       # only the bubble was measured longer
    text = findings(R.frame(recs), pt)
    assert "Largest errors: a (" in text and "mostly bubble" in text


def test_report_writes_markdown_with_pngs_and_html_with_them_embedded(tmp_path):
    recs = [_train_record("a", 1.2), _train_record("b", 0.9)]
    st = tmp_path / "results.jsonl"
    for r in recs:
        R.append(st, r)
    md, html = write_report([st], tmp_path / "rep")
    figs = sorted(p.name for p in (tmp_path / "rep" / "figures").glob("*.png"))
    assert figs == ["breakdown.png", "phase_error.png", "scatter.png"]
    assert all(f"figures/{f}" in md.read_text() for f in figs)
    assert html.read_text().count("data:image/png;base64,") == 3 and "figures/" not in html.read_text()


def test_what_if_puts_predict_and_plan_outputs_side_by_side(tmp_path):
    a = predict("gpt-small", "cpu-local", Plan(dp=2, micro_batch=2, global_batch=8, dtype="fp32"))
    b = predict("gpt-small", "cpu-local", Plan(pp=2, micro_batch=2, global_batch=8, dtype="fp32"))
    (tmp_path / "a.json").write_text(json.dumps(a.to_dict()))
    (tmp_path / "b.json").write_text(json.dumps(b.to_dict()))
    r = subprocess.run([sys.executable, "-m", "parsim", "report", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                        "--out", str(tmp_path / "w"), "--format", "md"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "w" / "report.md").read_text()
    fastest = "a" if a.step_time_s < b.step_time_s else "b"
    assert f"Fastest: {fastest} (" in md and "| step_time_s |" in md and not (tmp_path / "w" / "report.html").exists()


def test_published_table_in_the_same_format(tmp_path):
    from parsim.reportgen import published_records
    recs = published_records()
    assert len(recs) == 10 and all(r["summary"]["metric"] == "hardware_tflops_per_gpu" for r in recs)
    md, _ = write_report([], tmp_path, records=recs)
    assert "Leave-one-out" in md.read_text() and "100% within ±10%" in md.read_text()


def test_bad_report_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    for args in (["nope.jsonl"], [str(tmp_path / "x.json")], ["--format", "pdf", str(tmp_path / "x.json")], []):
        r = subprocess.run([sys.executable, "-m", "parsim", "report", *args, "--out", str(tmp_path / "o")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
    with pytest.raises(ParsimError):
        write_report([], tmp_path)
