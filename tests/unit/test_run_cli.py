"""`parsim run`: flags -> plan, clear errors before anything spawns, the comparison table,
and the schedules the backend executes (played in one process, no torch.distributed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parsim.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(capsys, monkeypatch, *argv):
    """parsim run ... in process; spawning is forbidden (any launch is a test failure)."""
    import backends.torchdist.launch as launch_mod

    def no_spawn(*a, **k):
        raise AssertionError("launch() called: the error should have come before spawning")
    monkeypatch.setattr(launch_mod, "launch", no_spawn)
    rc = main(["run", *argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--nproc", "64"], "nproc (64) > "),                                        # more ranks than allowed
    (["--nproc", "2", "--backend", "nccl"], "backend nccl needs CUDA GPUs"),      # nccl without GPUs
    # 4 layers on pp·vpp = 8 stages: not a multiple, and 4 + 2 < 2·8: some stage would hold no layer
    (["--nproc", "4", "--pp", "4", "--schedule", "interleaved", "--vpp", "2", "--global-batch", "8"],
     "layers (4) of gpt-tiny cannot be cut into pp·vpp = 4·2 = 8"),
    (["--nproc", "3", "--tp", "3"], "heads (4) of gpt-tiny is not divisible by tp (3)"),
    (["--nproc", "2", "--zero", "2", "--grad-sync", "ring"], "grad-sync must be native"),
    (["--nproc", "2", "--tp", "2", "--zero", "1"], "zero 1 (ZeroRedundancyOptimizer) does not take TP-sharded"),
    (["--nproc", "4", "--pp", "2", "--global-batch", "3"], "global-batch (3) is not divisible"),
    (["--nproc", "2", "--grad-sync", "rign"], "did you mean ring"),
    (["--nproc", "3", "--tp", "2"], "nproc (3) is not divisible by tp*pp = 2*1 = 2"),
])
def test_bad_plan_is_one_line_exit_2_before_spawning(argv, needle, capsys, monkeypatch):
    pytest.importorskip("torch")
    rc, err = _run_cli(capsys, monkeypatch, "--model", "gpt-tiny", *argv)   # launch() forbidden: nothing spawns
    assert rc == 2, err
    assert needle in err, err
    assert err.startswith("parsim run: error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv,needle", [
    # refused by the flag's type when parsed (parsim.commands.common.count / number), value and range named
    (["--repeats", "0"], "argument --repeats: 0 is below 1: expected an integer in 1..1000000"),
    (["--min-time", "-1"], "argument --min-time: -1: expected a number in [0, 604800]"),
    (["--max-repeats", "-3"], "argument --max-repeats: -3 is below 1"),
    # the executor runs float32 buffers: a schedule of 1026 B has no whole-element buffer to run on
    (["--size", "1026B"], "--size 1026B: 1026 B is not a whole number of float32 elements"),
    (["--size", "4KiB,2B"], "2 B is not a whole number of float32 elements"),
])
def test_bad_bench_flags_are_one_line_exit_2_before_spawning(argv, needle, capsys, monkeypatch):
    from backends.torchdist import bench

    def no_spawn(*a, **k):
        raise AssertionError("ranks spawned: the error should have come first")
    import backends.torchdist.launch as launch_mod
    monkeypatch.setattr(launch_mod, "launch", no_spawn)
    monkeypatch.delenv("RANK", raising=False)
    rc = main(["run", "--bench", "allreduce", "--size", "4KiB", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1, err


def test_parsim_imports_no_torch_until_run():
    code = ("import sys, parsim, parsim.cli, parsim.commands.run as r, parsim.plan, parsim.model;"
            "import argparse; p = argparse.ArgumentParser(); r.add_arguments(p); p.parse_args([]);"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _args(**kw):
    import argparse

    from parsim.commands.run import add_arguments
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args([])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_flags_to_plan_infers_dp_and_cpu_dtype():
    from parsim.commands.run import make_plan
    model, plan, n = make_plan(_args(nproc=4, pp=2, micro_batch=2, global_batch=16, grad_sync="ring"))
    assert (plan.dp, plan.tp, plan.pp, plan.microbatches, n) == (2, 1, 2, 4, 4)   # 16 / (2·2) = 4
    assert plan.dtype == "fp32" and plan.overlap is False     # what the CPU backend runs
    _, plan, _ = make_plan(_args(nproc=2, pp=2, schedule="interleaved", global_batch=4))
    assert plan.vpp == 2


def _measured_and_predicted():
    from parsim.predict import StepReport
    bd = {k: 0.0 for k in ("compute", "recompute", "tp_comm", "pp_comm", "bubble", "dp_comm_exposed", "optimizer")}
    mem = {k: 0.0 for k in ("weights", "grads", "optimizer", "activations", "buffers")}
    common = dict(tokens_per_s=10.0, samples_per_s=1.0, model_tflops_per_gpu=0.01, hardware_tflops_per_gpu=0.01,
                  mfu=0.1, hfu=0.1, memory_GiB=0.5, memory_breakdown_GiB=mem, fits=True, model="gpt-tiny")
    measured = StepReport(step_time_s=0.3, breakdown_s=dict(bd, compute=0.2), notes=["n1"], source="measured",
                          spread={"step_time_s": [0.29, 0.31]},
                          measurement={"backend": "gloo", "device": "cpu", "dtype_run": "fp32", "ranks": 2, "steps": 5,
                                       "warmup_dropped": 2, "loss": [6.2, 6.1], "memory_source": "rss"}, **common)
    predicted = StepReport(step_time_s=0.2, breakdown_s=dict(bd, compute=0.25), **common)
    return measured, predicted


def test_compare_rows_and_table():
    from parsim.commands.run import compare, render_table
    measured, predicted = _measured_and_predicted()
    rows = {r[0]: r[1:] for r in compare(measured, predicted)}
    assert rows["step_time_s"][2] == pytest.approx(-1 / 3)          # (0.2 - 0.3) / 0.3: predicted too low
    assert rows["step_time_s"][3] == [0.29, 0.31]                    # the measured spread beside the value
    assert rows["breakdown_s.compute"][2] == pytest.approx(0.25)   # (0.25 - 0.2) / 0.2
    assert rows["breakdown_s.bubble"][2] is None                   # 0 measured: no relative error
    text = render_table({"plan_label": "dp2", "measured": measured.to_dict(), "rows": compare(measured, predicted),
                         "prediction_source": "predicted"})
    assert "step_time_s" in text and "-33%" in text and "note: n1" in text and "[0.29, 0.31]" in text
    assert [r[3] for r in compare(measured, None)] == [None] * len(rows)


# ---------------------------------------------------------------- calibration (pure parts)

def test_fit_alpha_beta_recovers_a_line():
    from parsim.calibrate import fit_alpha_beta
    pts = [(n, 50e-6 + n / 2e9) for n in (4096, 65536, 1 << 20, 16 << 20)]   # 50 us + n / 2 GB/s
    a, b = fit_alpha_beta(pts)
    assert a == pytest.approx(50e-6, rel=1e-6) and b == pytest.approx(0.5e-9, rel=1e-9)


def test_efficiency_curve_is_fraction_of_peak():
    from parsim.calibrate import efficiency_curve
    assert efficiency_curve([(0.001, 25.0), (1.0, 100.0)], 100.0) == [[0.001, 0.25], [1.0, 1.0]]


def test_link_from_fit_reproduces_the_measurement_through_parsims_pricing(tmp_path):
    """Whatever hop count parsim's network model uses, the fitted link must make its 2-rank
    all-reduce price equal the measured line alpha + beta·n."""
    import yaml

    from parsim.calibrate import DATA, link_from_fit
    from parsim.costs.network import collective_time_s
    from parsim.topology import load_cluster
    from parsim.hardware import get_device
    # above the 2 steps of gloo software overhead the profile already charges (else latency clips at 0)
    alpha, beta = 300e-6 + 2 * get_device("cpu").native_step_overhead_s, 1 / 1.5e9
    bw, lat = link_from_fit(alpha, beta, 2)
    base = yaml.safe_load((DATA / "clusters.yaml").read_text())["cpu-local"]
    f = tmp_path / "cl.yaml"
    f.write_text(yaml.safe_dump(dict(base, nvlink_GBps=bw / 1e9, nvlink_latency_us=lat * 1e6, nic_GBps=bw / 1e9,
                                     nic_latency_us=lat * 1e6)))
    cl = load_cluster(str(f), 2)
    for n in (4096, 1 << 24):
        assert collective_time_s(cl, "allreduce", "native", (0, 1), n) == pytest.approx(alpha + beta * n, rel=1e-6)


def test_committed_measured_profile_loads_and_says_where_it_came_from():
    from parsim.calibrate import CLUSTER_FILE, DEV_VM, DEVICES_FILE
    from parsim.hardware import _profile
    import yaml
    d = yaml.safe_load((DEV_VM / DEVICES_FILE).read_text())["cpu"]
    prof = _profile("cpu", d)
    assert prof.peak_flops["fp32"] > 1e9 and "parsim.calibrate" in prof.source
    assert 0 < float(prof.matmul_eff(1e-3)) <= 1
    assert "gloo loopback" in yaml.safe_load((DEV_VM / CLUSTER_FILE).read_text())["source"]


def _listening(port: int) -> list:
    """Local addresses (hex, as in /proc/net/tcp{,6}) listening on `port`."""
    out = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for r in rows:
            local, st = r.split()[1], r.split()[3]
            if st == "0A" and int(local.rsplit(":", 1)[1], 16) == port:   # 0A = LISTEN
                out.append(local.rsplit(":", 1)[0])
    return out


def test_rendezvous_store_listens_on_master_addr_only():
    """Rank 0's store binds MASTER_ADDR (here loopback), not every interface as torch's env:// does."""
    pytest.importorskip("torch")
    from datetime import timedelta

    from backends.torchdist.launch import free_port
    from backends.torchdist.runner import rendezvous_store
    port = free_port()
    store = rendezvous_store("127.0.0.1", port, 0, 1, timedelta(seconds=10))
    store.set("k", "v")
    assert store.get("k") == b"v"
    assert _listening(port) == ["0100007F"], _listening(port)      # 127.0.0.1, little-endian hex
    # an address that is not this host's: torch's own rendezvous is used (None), no crash
    assert rendezvous_store("192.0.2.1", free_port(), 0, 1, timedelta(seconds=1)) is None


def test_out_of_memory_is_recognised_by_kind():
    from backends.torchdist.runner import out_of_memory

    class OutOfMemoryError(RuntimeError):   # the name torch.cuda.OutOfMemoryError has
        pass
    assert out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "device"
    assert out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                                      "memory: you tried to allocate 4611686018427387904 bytes")) == "host"
    assert out_of_memory(MemoryError()) == "host"
    assert out_of_memory(RuntimeError("Connection closed by peer")) == ""
    assert out_of_memory(ValueError("out of memory")) == ""      # only allocator errors


def test_bench_with_no_runnable_algorithm_is_one_line(capsys, monkeypatch):
    # every named algorithm refused: the error alone, no "skipping" line before it (a user saw two lines)
    rc, err = _run_cli(capsys, monkeypatch, "--bench", "allreduce", "--algo", "foo", "--size", "1MiB")
    assert rc == 2 and err.count("\n") == 1 and "no allreduce schedule named 'foo'" in err, err
