"""The collective software-overhead fit of ``parsim.calibrate`` (no processes are started here)."""
import pytest

from parsim import calibrate as cal

PROCS = (2, 3, 4, 6, 8)   # the group sizes backends.torchdist.calibrate measures (STEP_PROCS; no torch here)


def synthetic_runs(o_step, o_msg, o_nat, rtt=60e-6, cores=2, procs=PROCS):
    """What the loopback measurement would report if the executor cost exactly parsim's price."""
    runs = []
    for p in procs:
        cases = {}
        for algo in cal.EXECUTOR_CASES:
            X, Y = cal.overhead_terms(algo, p, cores)
            from parsim.schedules.collectives import build
            steps = len(build("allreduce", algo, p, 4096, dedicated=False).steps)
            cases[algo] = {"steps": steps, "time_s": o_step * X + o_msg * Y + steps * rtt / 2}
        steps = 2 * (p - 1)
        cases["native"] = {"steps": steps, "time_s": steps * max(1.0, p / cores) * o_nat + steps * rtt / 2}
        runs.append({"p": p, "rtt_s": rtt, "cases": cases})
    return runs


@pytest.mark.parametrize("o_step, o_msg, o_nat", [(80e-6, 200e-6, 300e-6), (400e-6, 20e-6, 100e-6)])
def test_step_overhead_fit_recovers_the_costs_it_was_given(o_step, o_msg, o_nat):
    fit = cal.step_overheads(synthetic_runs(o_step, o_msg, o_nat), cores=2)
    assert fit["executor_step_overhead_us"] == pytest.approx(o_step * 1e6, abs=0.11)
    assert fit["executor_message_overhead_us"] == pytest.approx(o_msg * 1e6, abs=0.11)
    assert fit["native_step_overhead_us"] == pytest.approx(o_nat * 1e6, abs=0.11)
    assert len(fit["per_point"]) == len(PROCS) * (len(cal.EXECUTOR_CASES) + 1)


def test_a_co_located_ps_posts_more_messages_per_step_than_a_ring():
    # the two regressors differ between schedules, so the fit can tell the fixed from the per-message cost
    ring = cal.overhead_terms("ring", 4, 2)
    ps = cal.overhead_terms("ps", 4, 2)
    assert ring[1] / ring[0] == pytest.approx(2.0)       # ring: 2 messages per rank and step
    assert ps[1] / ps[0] == pytest.approx(6.0)           # co-located PS on 4: 3 sends + 3 receives


def test_no_per_message_cost_resolved_falls_back_to_the_fixed_part():
    runs = synthetic_runs(500e-6, 0.0, 200e-6)
    for r in runs:                                       # ps slower than fixed-only would say: noise
        r["cases"]["ps"]["time_s"] *= 0.5
    fit = cal.step_overheads(runs, cores=2)
    assert fit["executor_message_overhead_us"] >= 0.0 and fit["executor_step_overhead_us"] >= 0.0


# -- where calibration results live, and how the catalog finds them ---------------------------------

def test_home_is_parsim_home_else_xdg_data_home_else_local_share(monkeypatch, tmp_path):
    monkeypatch.setenv("PARSIM_HOME", str(tmp_path / "ph"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cal.home() == tmp_path / "ph"
    monkeypatch.delenv("PARSIM_HOME")
    assert cal.home() == tmp_path / "xdg" / "parsim"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cal.home() == tmp_path / "h" / ".local" / "share" / "parsim"


def _catalog_with(monkeypatch, home):
    from parsim import hardware
    monkeypatch.setenv("PARSIM_HOME", str(home))
    monkeypatch.delenv("PARSIM_DEVICES_LOCAL", raising=False)
    hardware._catalog.cache_clear()
    return hardware


def test_the_shipped_package_does_not_override_the_cpu_profile(monkeypatch, tmp_path):
    """No calibration home: `cpu` is the catalog's placeholder, from parsim/data/devices.yaml (the VM's
    measured profile is data under parsim/data/measured/, loaded only when named)."""
    hw = _catalog_with(monkeypatch, tmp_path / "empty")
    try:
        assert hw.profile_file("cpu") == str(cal.DATA / "devices.yaml")
        assert "Placeholder" in (cal.DATA / "devices.yaml").read_text()
        assert not (cal.DATA / "devices.local.yaml").exists() and not (cal.DATA / "cpu-local.calibrated.yaml").exists()
        assert cal.local_cluster() == "cpu-local"
        assert cal.devices_file() is None
    finally:
        hw._catalog.cache_clear()


def test_a_calibration_home_is_merged_and_named(monkeypatch, tmp_path):
    import yaml
    prof = yaml.safe_load((cal.DEV_VM / cal.DEVICES_FILE).read_text())["cpu"]
    paths = cal.write_results(tmp_path, dict(prof, memory_bandwidth_GBps=12.5), {"builder": "dgx", "device": "cpu",
                                                                                 "gpus_per_node": 64})
    assert [p.name for p in paths] == [cal.DEVICES_FILE, cal.CLUSTER_FILE]
    hw = _catalog_with(monkeypatch, tmp_path)
    try:
        assert hw.profile_file("cpu") == str(tmp_path / cal.DEVICES_FILE)
        assert hw.get_device("cpu").memory_bandwidth_Bps == 12.5e9      # 12.5 GB/s as written
        assert hw.profile_file("h100-sxm") == str(cal.DATA / "devices.yaml")
        assert cal.local_cluster() == str(tmp_path / cal.CLUSTER_FILE)
    finally:
        hw._catalog.cache_clear()


# -- fitting from raw measurements (plain data, as backends.torchdist.calibrate.measure returns) ------

def _raw(**kw):
    raw = {"host": {"host": "test (x86_64, 2 cores)", "cores": 2, "memory_bytes": 8 * 2 ** 30, "torch": "x"},
           # (GFLOP per GEMM, FLOP/s): the best, 100 GFLOP/s, is the peak; 25 GFLOP/s is 0.25 of it
           "gemm_fp32": [[8.19e-06, 25e9], [0.0336, 100e9]], "gemm_bf16": [[0.0336, 50e9]],
           "vector": [[1e-6, 1e9], [1e-3, 4e9]], "copy": [[0.008, 10e9], [2.1, 40e9]],
           "overhead_us": {"layer_fwd": 100.0, "layer_bwd": 200.0, "head_fwd": 50.0, "head_bwd": 100.0,
                           "optimizer_per_layer": 150.0, "optimizer_base": 80.0}}
    raw.update(kw)
    return raw


def _probe_at(fraction):
    """A probe measurement that parsim's compute model reproduces at `fraction` of the GEMM rate."""
    from parsim.costs.compute import layer_times
    from parsim.hardware import _profile
    from parsim.model import ModelSpec
    probe = dict(layers=2, hidden=64, heads=2, kv_heads=2, ffn_hidden=256, vocab=512, seq_len=32,
                 activation="gelu", tied_embeddings=False)
    prof, _ = cal.fit(_raw(sustained_probe={"probe": probe, "batch": 2, "measured_s": 1.0}))
    base = _profile("cpu", dict(prof, matmul_sustained_fraction=1.0)).with_sustained_fraction(fraction)
    spec = ModelSpec("p", **probe)
    lt = layer_times(spec, base, 2, spec.seq_len, 1, False, True, 2)
    t = float(spec.layers * (lt.fwd_s + lt.bwd_s) + lt.embed_fwd_s + lt.embed_bwd_s + lt.head_fwd_s + lt.head_bwd_s)
    return {"probe": probe, "batch": 2, "measured_s": t}


def test_fit_takes_the_best_rates_as_peaks_and_the_rest_as_fractions_of_them():
    prof, cluster = cal.fit(_raw(sustained_probe=_probe_at(0.5)))
    assert cluster is None                                 # no communication measured
    assert prof["peak_TFLOPs"]["fp32"] == pytest.approx(0.1)          # 100e9 FLOP/s = 0.1 TFLOP/s
    assert prof["peak_TFLOPs"]["bf16"] == pytest.approx(0.05)
    assert prof["matmul_efficiency"][0] == [8.19e-06, 0.25]           # 25e9 / 100e9
    assert prof["memory_bandwidth_GBps"] == pytest.approx(40.0)       # the best copy rate, 40e9 B/s
    assert prof["memory_efficiency"][0] == [0.008, 0.25]              # 10e9 / 40e9
    assert prof["memory_GiB"] == 8.0 and "test (x86_64, 2 cores)" in prof["source"]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_sustained_fraction_recovers_the_fraction_the_probe_time_implies(fraction):
    prof, _ = cal.fit(_raw(sustained_probe=_probe_at(fraction)))
    assert prof["matmul_sustained_fraction"] == pytest.approx(fraction, abs=0.002)


def test_a_quick_calibration_says_so_in_its_source():
    prof, _ = cal.fit(_raw(sustained_probe=_probe_at(0.5), quick=True))
    assert "QUICK MODE" in prof["source"]


def test_without_communication_the_old_step_overheads_and_their_provenance_are_kept():
    old = {"executor_step_overhead_us": 90.0, "native_step_overhead_us": 300.0, "cores": 2,
           "source": "old; *_step_overhead_us (2026-01-01) = measured then"}
    prof, _ = cal.fit(_raw(sustained_probe=_probe_at(0.5)), old)
    assert prof["executor_step_overhead_us"] == 90.0 and prof["native_step_overhead_us"] == 300.0
    assert prof["source"].endswith("; *_step_overhead_us (2026-01-01) = measured then")


# -- `parsim calibrate`: flags checked before anything is measured (one line, exit 2) -----------------

@pytest.mark.parametrize("argv, words", [
    (["--no-comm", "--comm-only"], "--no-comm and --comm-only exclude each other"),
    (["--out", "/nonexistent-parsim-dir/sub"], "does not exist"),
    (["--quick", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_calibrate_refuses_bad_flags_in_one_line(argv, words, capsys):
    from parsim.cli import main
    assert main(["calibrate", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_comm_only_needs_a_profile_to_complete(tmp_path, capsys):
    from parsim.cli import main
    assert main(["calibrate", "--comm-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--comm-only needs a cpu profile in {tmp_path / cal.DEVICES_FILE}" in err and err.count("\n") == 1


def test_busy_machine_is_warned_about_not_silently_measured():
    from parsim.calibrate import busy_warning
    # load 3 on 2 cores (a test suite running beside it, as a new user saw): others 3 - 1 = 2 > 1 -> warned
    w = busy_warning(3.0, 2)
    assert w and w.startswith("warning: load average 3.0 on 2 cores") and "\n" not in w
    # idle but for calibration itself: 1.4 - 1 = 0.4 <= 1 -> no warning
    assert busy_warning(1.4, 2) is None
    assert busy_warning(5.0, 16) is None            # 4 others on 16 cores: below half
