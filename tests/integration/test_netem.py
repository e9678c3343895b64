"""Emulated cluster in network namespaces: build, probe, teardown, crash cleanup, a benchmark.

Needs root, iproute2 and tc; skipped with the reason otherwise. Every loop and
process here is bounded in time; all traffic stays in 198.18.0.0/15 inside the
namespaces these tests create.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backends.netem import presets
from backends.netem.cluster import Emulation, down, list_namespaces, unavailable

pytestmark = pytest.mark.netem
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def _need_namespaces(tmp_path, monkeypatch):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    # a private state directory: `down()` here sees only these tests' clusters' state files (others'
    # clusters on this machine are still protected by their owner aliases, but are not even looked at)
    monkeypatch.setenv("PARSIM_NETEM_STATE_DIR", str(tmp_path / "netem-state"))


def _ours(prefix):
    return [n for n in list_namespaces() if n.startswith(prefix)]


@pytest.mark.timeout(60)
def test_build_probe_teardown():
    from backends.netem.probe import probe_pairs
    rate = 100e6 / 8  # 100 Mbit/s
    with Emulation(presets.single_switch(3, rate)) as emu:
        assert sorted(_ours(emu.prefix)) == sorted(emu.plan.namespaces)
        assert emu.state_file.exists()
        probes = probe_pairs(emu)
        assert [(p["src"], p["dst"]) for p in probes] == [("h0", "h1"), ("h1", "h2"), ("h2", "h0")]
        for p in probes:
            # the shaper delivers its rate less TCP/IP headers (1448/1500): near, never above
            assert 0.85 * rate < p["measured_Bps"] < 1.02 * rate, p
            assert 0 < p["rtt_s"] < 0.05
    assert _ours(emu.prefix) == []
    assert not emu.state_file.exists()


@pytest.mark.timeout(60)
def test_a_slower_link_measures_slower():
    from backends.netem.probe import probe_pairs
    g = presets.single_switch(2, 200e6 / 8)
    g.edges["h1", "sw0"]["bandwidth"] = 50e6 / 8  # h1's link is a quarter of h0's
    with Emulation(g) as emu:
        (p,) = probe_pairs(emu, pairs=[(0, 1)])
    assert 0.85 * 50e6 / 8 < p["measured_Bps"] < 1.02 * 50e6 / 8


_HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from backends.netem import presets
from backends.netem.cluster import Emulation
emu = Emulation(presets.single_switch(2, 1e7)).__enter__()
print(emu.prefix, flush=True)
time.sleep(60)
"""


def _holder():
    p = subprocess.Popen([sys.executable, "-c", _HOLDER.format(repo=REPO)], stdout=subprocess.PIPE, text=True)
    prefix = p.stdout.readline().strip()
    assert prefix.startswith("ps"), prefix
    assert len(_ours(prefix)) == 3
    return p, prefix


@pytest.mark.timeout(60)
def test_killed_run_is_cleaned_by_down():
    p, prefix = _holder()
    p.send_signal(signal.SIGKILL)  # no handler runs: everything is left behind
    p.wait(timeout=10)
    assert len(_ours(prefix)) == 3
    gone = down()
    assert set(gone) >= {f"{prefix}h0", f"{prefix}h1", f"{prefix}s0"}
    assert _ours(prefix) == []


@pytest.mark.timeout(60)
def test_sigterm_tears_down():
    p, prefix = _holder()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) != 0
    assert _ours(prefix) == []


def _emulated_bench(hosts: int, algo: str, repeats: int):
    """`parsim emulate run` (200 Mbit/s links) of a 4 MiB all-reduce benchmark: (stderr, results).
    With --format json, stdout is the JSON alone: the cluster banner and probe table go to stderr."""
    pytest.importorskip("torch")
    cmd = [sys.executable, "-m", "parsim", "emulate", "run", "--hosts", str(hosts), "--link", "200Mbit",
           "--timeout", "90", "--", sys.executable, "-m", "backends.torchdist.bench", "--bench", "allreduce",
           "--algo", algo, "--size", "4MiB", "--repeats", str(repeats), "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stderr, json.loads(out.stdout)


@pytest.mark.timeout(120)
def test_emulate_run_benchmark_lands_near_prediction():
    stderr, res = _emulated_bench(3, "ring", 2)
    (r,) = res
    assert r["correct"] and r["world"] == 3
    assert r["predicted"]["cluster"] == "emulated cluster, measured links"
    # 4 MiB ring of 3 at ~193 Mbit/s: 4/3 * 4 MiB / 24 MB/s ~ 0.23 s; bandwidth-bound, so close
    assert abs(r["error"]) < 0.25, r
    prefix = stderr.split("emulated cluster ", 1)[1].split()[0]
    assert _ours(prefix) == []  # `emulate run` tore down what it brought up


@pytest.mark.timeout(120)
def test_exchanges_run_both_ways_at_once():
    """A ring of 2 and co-located ps exchange data both ways on every pair: the executor posts
    receives before sends, so gloo's pair carries both directions together (full duplex: the
    prediction) instead of one after the other (2x the wire time)."""
    _, res = _emulated_bench(2, "ring,ps", 5)
    for r in res:
        # 2 MiB each way per step at ~193 Mbit/s: ~0.17 s full duplex, ~0.35 s one way at a time (+100%).
        # Asserted on the median of 5 repeats: single repeats on this VM reach 2.1x their point's
        # median at >= 1 MiB (reports/netem/sweep.json: max/median up to 2.09, 90th percentile/median
        # up to 1.35), so no bound on every repeat is justified; a median within 25% of the
        # full-duplex prediction rules out one-way-at-a-time in most repeats.
        assert r["correct"] and abs(r["error"]) < 0.25, r


# -- isolation: a run removes only what it created; `down` only clusters whose owner is gone ---------

def _state(prefix):
    from backends.netem.cluster import state_dir
    return state_dir() / f"{prefix}.json"


@pytest.mark.timeout(90)
def test_a_colliding_prefix_never_touches_the_live_cluster(monkeypatch):
    """The reported bug: a second cluster drew the prefix of a live one, failed on `ip netns add`, and its
    cleanup removed the first cluster's namespaces and state file."""
    import backends.netem.cluster as C
    p, prefix = _holder()
    try:
        before = sorted(_ours(prefix))
        # 1. the prefix generator returns the live prefix: the claim skips it and takes a fresh one
        draws = iter([prefix, prefix])
        real = C.new_prefix
        monkeypatch.setattr(C, "new_prefix", lambda: next(draws, None) or real())
        with Emulation(presets.single_switch(2, 1e7)) as emu:
            assert emu.prefix != prefix and sorted(_ours(emu.prefix)) == sorted(emu.plan.namespaces)
        assert _ours(emu.prefix) == [] and not emu.state_file.exists()
        # 2. the live prefix forced on a new cluster: refused before anything is created or removed
        with pytest.raises(C.ParsimError, match=f"prefix {prefix} is in use"):
            with Emulation(presets.single_switch(2, 1e7), prefix=prefix):
                pass
        # 3. a name taken under a fresh prefix (someone created it first): `ip netns add` fails, and the
        # cleanup removes only what this run created
        victim = Emulation(presets.single_switch(2, 1e7))
        taken = victim.plan.namespaces[1]
        subprocess.run(["ip", "netns", "add", taken], check=True)
        try:
            with pytest.raises(C.ParsimError, match="ip netns add"):
                with victim:
                    pass
            assert taken in list_namespaces(), "the run removed a namespace it did not create"
            assert _ours(victim.prefix) == [taken]
        finally:
            subprocess.run(["ip", "netns", "del", taken], check=False)
        # 4. a global `down` while the first cluster's owner is alive: nothing of it is removed
        down()
        assert sorted(_ours(prefix)) == before and _state(prefix).exists()
    finally:
        p.kill()
        p.wait(timeout=10)
    assert set(down(prefix=prefix)) == set(before)


_EMU_RUN_SLEEPER = [sys.executable, "-m", "parsim", "emulate", "run", "--hosts", "2", "--link", "100Mbit", "--no-probe",
                    "--", sys.executable, "-c", "import time; print('rank up', flush=True); time.sleep(120)"]


def _ns_pids(prefix):
    pids = []
    for n in _ours(prefix):
        pids += [int(x) for x in subprocess.run(["ip", "netns", "pids", n], capture_output=True,
                                                text=True).stdout.split()]
    return pids


@pytest.mark.timeout(120)
def test_kill_9_of_emulate_run_takes_its_ranks_and_the_next_run_reaps_the_rest():
    import time
    from backends.netem.cluster import leftovers, read_states, reap_leftovers
    known = {s["prefix"] for s in read_states()}
    p = subprocess.Popen(_EMU_RUN_SLEEPER, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        prefix, ranks = None, []
        while time.monotonic() < deadline and len(ranks) < 2:
            mine = [s["prefix"] for s in read_states() if s.get("owner_pid") == p.pid and s["prefix"] not in known]
            prefix = mine[0] if mine else None
            ranks = _ns_pids(prefix) if prefix else []
            time.sleep(0.2)
        assert prefix and len(ranks) == 2, "the run did not start its 2 ranks"
    finally:
        p.kill()
        p.wait(timeout=10)
    deadline = time.monotonic() + 20
    while _ns_pids(prefix) and time.monotonic() < deadline:   # PR_SET_PDEATHSIG
        time.sleep(0.1)
    assert _ns_pids(prefix) == [], "ranks outlived their launcher inside the namespaces"
    assert prefix in {pfx for pfx, _ in leftovers()}            # detected as a leftover...
    assert set(reap_leftovers()) >= set(_ours(prefix)) or _ours(prefix) == []
    assert _ours(prefix) == [] and not _state(prefix).exists()  # ...and removed


@pytest.mark.timeout(120)
def test_emulate_run_names_a_rank_killed_by_a_signal():
    """In a namespace run, rank 0 only sees a closed connection; the launcher knows which rank was killed."""
    cmd = [sys.executable, "-m", "parsim", "emulate", "run", "--hosts", "2", "--link", "200Mbit", "--no-probe",
           "--timeout", "90", "--", sys.executable, "-m", "parsim", "run", "--bench", "allreduce", "--size", "64KiB",
           "--repeats", "50", "--watchdog", "10"]
    p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, PARSIM_FAULT="1:3:kill"),
                       capture_output=True, text=True, timeout=110)
    assert p.returncode != 0
    assert "parsim emulate run: rank 1 was killed by SIGKILL" in p.stderr, p.stderr[-1500:]
    assert "Traceback" not in p.stderr, p.stderr[-1500:]
