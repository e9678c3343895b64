"""One default dtype, from the device (issue 12 §5): plan/predict on cpu-local used bf16 while
`run` on CPU executes fp32 (68.4 s predicted in bf16 vs 1.63 s in fp32 for the same run)."""
import json

import pytest

from parsim.cli import main
from parsim.hardware import default_dtype


def _json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("cluster, dtype", [("cpu-local", "fp32"), ("dgx-h100", "bf16")])
def test_predict_and_plan_default_dtype_is_the_devices(capsys, cluster, dtype):
    d = _json(capsys, "predict", "--model", "gpt-small", "--cluster", cluster, "--gpus", "2", "--format", "json")
    assert d["plan"]["dtype"] == dtype
    d = _json(capsys, "plan", "--model", "gpt-small", "--cluster", cluster, "--gpus", "2", "--format", "json",
              "--top", "1")
    assert d["attrs"]["dtype"] == dtype


def test_run_uses_the_same_default_as_predict():
    import argparse

    from parsim.commands.run import add_arguments, make_plan
    from parsim.predict import get_cluster
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--nproc", "2"])           # gloo backend: the CPU
    _, plan, _ = make_plan(a)
    assert plan.dtype == default_dtype(get_cluster("cpu-local", 2).device) == "fp32"


def test_explicit_dtype_wins(capsys):
    d = _json(capsys, "predict", "--model", "gpt-small", "--cluster", "cpu-local", "--gpus", "2", "--dtype", "bf16",
              "--format", "json")
    assert d["plan"]["dtype"] == "bf16"
