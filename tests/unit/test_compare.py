"""Measured and predicted StepReports compare by a join on their keys (parsim.compare)."""
import json

import pytest

from parsim.compare import join, join_frame
from parsim.predict import StepReport, predict
from parsim.plan import Plan


def _pred():
    return predict("gpt-tiny", "cpu-local", Plan(dp=2, micro_batch=1, global_batch=4, dtype="fp32"))


def test_step_report_round_trips_through_json_and_flat_names_every_numeric_field():
    rep = _pred()
    back = StepReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back == rep
    flat = rep.flat()
    # 9 breakdown phases (BREAKDOWN_KEYS, ep_comm and cp_comm included) + 5 memory kinds + step_time_s,
    # tokens_per_s, samples_per_s, model/hardware TFLOP/s, mfu, hfu, memory_GiB, gpus = 14 + 9 = 23
    assert len(flat) == 23 and flat["breakdown_s.bubble"] == rep.breakdown_s["bubble"]
    assert "fits" not in flat and "plan" not in flat
    # context, not outcomes: the model's size and training length are inputs, equal on both sides
    assert not {"seq_len", "params_total", "params_active", "memory_capacity_GiB"} & set(flat)


def test_from_dict_names_an_unknown_key():
    d = _pred().to_dict() | {"step_s": 1.0}
    with pytest.raises(Exception, match="step_s"):
        StepReport.from_dict(d)


def test_join_puts_spread_beside_each_measured_field_and_error_is_relative_to_measured():
    p = _pred()
    m = StepReport.from_dict(p.to_dict() | {"step_time_s": 2 * p.step_time_s, "source": "measured",
                                            "spread": {"step_time_s": [1.9 * p.step_time_s, 2.2 * p.step_time_s]}})
    f = join_frame(m, p)
    assert f.loc["step_time_s", "error"] == pytest.approx(-0.5)    # (t - 2t) / 2t
    assert f.loc["step_time_s", "spread_max"] == pytest.approx(2.2 * p.step_time_s)
    assert f.loc["tokens_per_s", "error"] == pytest.approx(0.0)    # unchanged field: same value both sides
    assert f.loc["breakdown_s.compute", "spread_min"] is None or f["spread_min"].isna()["breakdown_s.compute"]
    assert [r["predicted"] for r in join(m)] == [None] * len(join(m))


def test_top_level_api_is_the_functions_even_after_importing_their_modules():
    import inspect

    import parsim
    import parsim.predict  # noqa: F401  (used to replace parsim.predict with the module)
    import parsim.search  # noqa: F401
    assert callable(parsim.predict) and "plan" in inspect.signature(parsim.predict).parameters
    assert "gpus" in inspect.signature(parsim.search).parameters and parsim.search.__doc__
    rep = parsim.predict(parsim.load_model("gpt-tiny"), parsim.load_cluster("cpu-local", 1),
                         parsim.Plan(micro_batch=1, global_batch=1))
    assert isinstance(rep, parsim.StepReport) and rep.step_time_s > 0
    assert parsim.ModelSpec is type(parsim.load_model("gpt-tiny"))


def test_cli_version():
    import subprocess
    import sys

    import parsim
    r = subprocess.run([sys.executable, "-m", "parsim", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"parsim {parsim.__version__}"
