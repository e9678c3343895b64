"""Predictions on an emulated cluster (issue 12 §4): inside `parsim emulate run -- parsim run ...`
the prediction used the loopback cluster (gpt-small dp2 ring: DP comm measured 1.588 s, predicted
0.0197 s); `--cluster <state file>` said "malformed (KeyError: 'device')" and exited 0."""
import json

import networkx as nx
import pytest

from backends.netem import presets
from backends.netem.plan import plan_from_graph
from parsim.cli import main
from parsim.commands.common import load_cluster_arg
from parsim.costs.network import collective_time_s

RATE = 1e9 / 8          # --link 1Gbit
EFF = 0.9               # what the probe measured on h0 -> h1


def _state(tmp_path, hosts=2):
    g = presets.single_switch(hosts, RATE)
    plan = plan_from_graph(g, "ps0abcd-")
    st = {"prefix": plan.prefix, "ranks_per_host": None, "graph": nx.node_link_data(g, edges="links"),
          "hosts": [{"node": str(h.node), "ns": h.ns, "address": h.address, "ranks": [str(r) for r in h.ranks]}
                    for h in plan.hosts],
          "probes": [{"src": "h0", "dst": "h1", "hops": 2, "configured_Bps": RATE, "measured_Bps": RATE * EFF,
                      "efficiency": EFF, "rtt_s": 200e-6, "bytes": 2 ** 20}]}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(st))
    return path


def test_state_file_is_a_cluster_with_the_probed_links(tmp_path):
    c = load_cluster_arg(str(_state(tmp_path)), 2)
    assert c.num_devices == 2 and c.meta["emulated"]
    # a 2-rank ring all-reduce of n bytes crosses h0 -> switch -> h1: 2·(1/2)·n / (1 Gbit/s · 0.9)
    # plus the CPU hosts' software time per step, so at least the wire time
    n = 64 * 2 ** 20
    t = collective_time_s(c, "allreduce", "ring", (0, 1), n)
    assert t >= n / (RATE * EFF) * 0.999
    assert t < 1.5 * n / (RATE * EFF)


def test_predict_cli_takes_a_state_file(tmp_path, capsys):
    path = _state(tmp_path)
    rc = main(["predict", "--model", "gpt-small", "--cluster", str(path), "--gpus", "2", "--grad-sync", "ring",
               "--no-overlap", "--format", "json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    d = json.loads(out.out)
    # gpt-small: 8.45e6 params · 4 B (fp32, the CPU default) = 33.8 MB all-reduced over 2 hosts:
    # a ring moves 2·(1/2)·n over the 1 Gbit/s link at the probed 0.9 -> 33.8e6 / 1.125e8 = 0.30 s
    assert d["breakdown_s"]["dp_comm_exposed"] >= 8448512 * 4 / (RATE * EFF) * 0.999


def test_run_inside_emulate_predicts_on_the_emulated_cluster(tmp_path, monkeypatch):
    from parsim.commands.run import predicted_report
    from parsim.model import load_model
    from parsim.plan import Plan
    monkeypatch.setenv("PARSIM_NETEM_STATE", str(_state(tmp_path)))
    m = load_model("gpt-small")
    plan = Plan(dp=2, global_batch=2, dtype="fp32", grad_sync="ring", overlap=False)
    rep, source = predicted_report(m, plan, "cpu-local", 2)
    assert "emulated" in source
    assert rep["breakdown_s"]["dp_comm_exposed"] >= 8448512 * 4 / (RATE * EFF) * 0.999   # as above
    monkeypatch.delenv("PARSIM_NETEM_STATE")
    loop, _ = predicted_report(m, plan, "cpu-local", 2)
    assert loop["breakdown_s"]["dp_comm_exposed"] < 0.2 * rep["breakdown_s"]["dp_comm_exposed"]   # loopback: 0.037 s


def test_bad_explicit_cluster_is_an_error_not_a_silent_no_prediction(tmp_path):
    from parsim.commands.run import predicted_report
    from parsim.errors import ParsimError
    from parsim.model import load_model
    from parsim.plan import Plan
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ParsimError, match="x.json"):
        predicted_report(load_model("gpt-small"), Plan(dp=2, global_batch=2), "cpu-local", 2, explicit=str(bad))
