"""Pure parts of backends/netem: graph -> namespace plan, addresses, measured graph, prediction."""
import ipaddress

import networkx as nx
import pytest

from backends.netem import presets
from backends.netem.model import predict, serialized_pairs_s
from backends.netem.plan import PREFIX_RE, SUBNET, host_address, new_prefix, plan_from_graph, rank_table
from backends.netem.probe import measured_graph
from parsim.errors import ParsimError
from parsim.schedules import collectives as S

PFX = "ps0abcd-"
MB = 1e6


def test_addresses_are_in_the_benchmark_range_and_skip_network_and_broadcast():
    assert host_address(0) == "198.18.0.1"
    assert host_address(253) == "198.18.0.254"
    assert host_address(254) == "198.18.1.1"  # .255 and .0 skipped
    addrs = [host_address(i) for i in range(0, 254 * 512, 997)]
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15") for a in addrs)
    assert len(set(addrs)) == len(addrs)
    assert str(SUBNET) == "198.18.0.0/15"
    with pytest.raises(ParsimError):
        host_address(254 * 512)


def test_prefix_is_run_unique_and_recognisable():
    a, b = new_prefix(), new_prefix()
    assert PREFIX_RE.match(a) and PREFIX_RE.match(b)
    assert new_prefix(seed=0xABCDE) == "psabcde-"
    assert not PREFIX_RE.match("docker0") and not PREFIX_RE.match("ps-foo")


def test_single_switch_plan():
    g = presets.single_switch(3, 25 * MB)
    p = plan_from_graph(g, PFX)
    assert p.namespaces == [f"{PFX}h0", f"{PFX}h1", f"{PFX}h2", f"{PFX}s0"]
    assert [h.address for h in p.hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    assert [h.ranks for h in p.hosts] == [("h0/d0",), ("h1/d0",), ("h2/d0",)]
    assert [(v.a_ns, v.a_if, v.b_ns, v.b_if) for v in p.veths] == [
        (f"{PFX}h{i}", "eth0", f"{PFX}s0", f"p{i}") for i in range(3)]
    assert all(v.bandwidth_Bps == 25 * MB for v in p.veths)
    assert all(len(n) <= 15 for n in p.namespaces)  # fits IFNAMSIZ-style limits too


def test_two_racks_uplinks_are_oversubscribed():
    # 4 hosts, 2 per rack at 10 MB/s, oversubscription 2: each rack uplink = 2*10/2 = 10 MB/s
    p = plan_from_graph(presets.two_racks(4, 10 * MB, oversubscription=2), PFX)
    assert len(p.hosts) == 4 and len(p.switches) == 3
    fabric = [v for v in p.veths if v.a_if != "eth0"]
    assert len(fabric) == 2 and all(v.bandwidth_Bps == 10 * MB for v in fabric)


def test_parameter_server_hosts_come_last():
    p = plan_from_graph(presets.parameter_server(3, 10 * MB, servers=2), PFX)
    assert [h.node for h in p.hosts] == ["h0", "h1", "h2", "ps0", "ps1"]


def test_dgx_graph_groups_devices_by_node_and_sums_rails():
    from parsim.topology import load_cluster
    c = load_cluster("dgx-a100", gpus=16)
    p = plan_from_graph(c, PFX)
    assert len(p.hosts) == 2 and len(p.switches) == 1  # NVSwitches stay inside their host
    assert all(len(h.ranks) == 8 for h in p.hosts)
    nic = next(d["bandwidth"] for _, _, d in c.graph.edges(data=True) if d.get("link") == "nic")
    assert p.veths[0].bandwidth_Bps == pytest.approx(8 * nic)  # 8 rails emulated as one link


def test_switch_loops_keep_a_spanning_tree():
    g = presets.two_racks(4, 10 * MB)
    g.add_edge("tor0", "tor1", bandwidth=1 * MB, latency=0.0)  # a loop tor0-spine-tor1-tor0
    p = plan_from_graph(g, PFX)
    assert p.dropped == (("tor0", "tor1"),)  # the slowest edge of the loop goes
    assert len([v for v in p.veths if v.a_if != "eth0"]) == 2


def test_bad_prefix_and_empty_graph_are_user_errors():
    with pytest.raises(ParsimError, match="bad prefix"):
        plan_from_graph(presets.single_switch(2, MB), "eth")
    with pytest.raises(ParsimError, match="no host"):
        plan_from_graph(nx.Graph(), PFX)


def test_rank_table():
    p = plan_from_graph(presets.single_switch(2, MB, devices_per_host=2), PFX)
    assert [(r, h.node, lr) for r, h, lr in rank_table(p)] == [(0, "h0", 0), (1, "h0", 1), (2, "h1", 0), (3, "h1", 1)]
    assert [(r, h.node, lr) for r, h, lr in rank_table(p, 1)] == [(0, "h0", 0), (1, "h1", 0)]


def test_measured_graph_scales_crossed_links_only():
    g = presets.single_switch(3, 10 * MB)
    probes = [{"src": "h0", "dst": "h1", "hops": 2, "efficiency": 0.9, "rtt_s": 100e-6}]
    m = measured_graph(g, probes)
    assert m.edges["h0", "sw0"]["bandwidth"] == pytest.approx(9 * MB)
    assert m.edges["h0", "sw0"]["latency"] == pytest.approx(25e-6)  # rtt/2 over 2 hops
    assert m.edges["h2", "sw0"]["bandwidth"] == pytest.approx(9 * MB)  # unprobed: the median
    assert m.edges["h0", "h0/d0"]["bandwidth"] == g.edges["h0", "h0/d0"]["bandwidth"]  # intra-host kept
    assert g.edges["h0", "sw0"]["bandwidth"] == 10 * MB  # input untouched


def test_gloo_pairs_carry_one_message_at_a_time():
    g = presets.single_switch(3, 10 * MB)
    nodes = ["h0/d0", "h1/d0", "h2/d0"]
    n = int(4 * MB)
    B = 10 * MB
    # an exchange on one pair: the two messages go one after the other, 2n/B = 0.8 s
    both = S.Step.of([(0, 1, 0, n, 0), (1, 0, 0, n, 0)])
    assert serialized_pairs_s(g, both, nodes) == pytest.approx(2 * n / B)
    # a ring step of 3: one message per pair, each link direction once: n/B
    ring = S.Step.of([(0, 1, 0, n, 0), (1, 2, 0, n, 0), (2, 0, 0, n, 0)])
    assert serialized_pairs_s(g, ring, nodes) == pytest.approx(n / B)
    # incast 1->0 and 2->0 share h0's downlink: 2n/B; then nothing else is queued
    incast = S.Step.of([(1, 0, 0, n, 0), (2, 0, 0, n, 0)])
    assert serialized_pairs_s(g, incast, nodes) == pytest.approx(2 * n / B)
    # 0->1 then 1->0 on pair {0,1} while 2->1 shares h1's downlink with the first:
    # 0..2n/B both at B/2 (h1 downlink), then 1->0 alone: n/B more -> 3n/B
    mixed = S.Step.of([(0, 1, 0, n, 0), (1, 0, 0, n, 0), (2, 1, 0, n, 0)])
    assert serialized_pairs_s(g, mixed, nodes) == pytest.approx(3 * n / B)


@pytest.fixture
def cpu_overheads(fake_cpu_profile):
    """cpu_overheads(executor_s, native_s, cores=0, message_s=0.0): price with a cpu profile whose
    per-step (and the executor's per-message) software overheads are the given seconds (and
    `cores`; 0: ranks never share a CPU)."""
    def set_(executor_s, native_s, cores=0, message_s=0.0):
        fake_cpu_profile(executor_step_overhead_s=executor_s, native_step_overhead_s=native_s,
                         executor_message_overhead_s=message_s, cores=cores)
    return set_


def test_prediction_is_the_graph_model_plus_half_duplex_pairs(cpu_overheads):
    from parsim.costs.network import price_schedule
    cpu_overheads(0.0, 0.0)     # the graph model alone: no software overhead, no buckets
    g = presets.single_switch(4, 25 * MB)
    nodes = [f"h{i}/d0" for i in range(4)]
    ring4 = S.build("allreduce", "ring", 4, 16 << 20)
    full = predict(g, ring4, nodes, half_duplex_pairs=False, token_bucket=False)
    assert full["time_s"] == pytest.approx(price_schedule(g, ring4, nodes=nodes).time_s)
    # a ring of 4 sends one way per pair: half duplex changes nothing; bandwidth term 1.5 n/B
    assert predict(g, ring4, nodes, half_duplex_pairs=True, token_bucket=False)["time_s"] == pytest.approx(full["time_s"])
    assert predict(g, ring4, nodes, token_bucket=False)["time_s"] == full["time_s"]   # the default: full duplex
    assert full["graph_bandwidth_term_s"] >= 1.5 * (16 << 20) / (25 * MB)
    # a ring of 2 exchanges both ways: one message at a time doubles the wire time n/B -> 2n/B
    ring2 = S.build("allreduce", "ring", 2, 16 << 20)
    t_full = predict(g, ring2, nodes[:2], half_duplex_pairs=False, token_bucket=False)
    t_half = predict(g, ring2, nodes[:2], half_duplex_pairs=True, token_bucket=False)
    wire = (16 << 20) / (25 * MB)
    assert t_half["time_s"] - t_full["time_s"] == pytest.approx(wire, rel=0.02)


def test_step_overhead_flows_into_the_prediction_and_the_token_bucket_refunds_it(cpu_overheads):
    from backends.netem.cluster import TBF_MIN_BURST_B
    g = presets.single_switch(4, 25 * MB)          # 200 Mbit/s: tbf burst 128 KiB = 5.24 ms of line rate
    nodes = [f"h{i}/d0" for i in range(4)]
    o, o_nat = 1e-3, 0.3e-3
    small = S.build("allreduce", "ring", 4, 4096)   # 6 steps of 1 KiB per link: fits the banked tokens
    cpu_overheads(0.0, 0.0)
    base = predict(g, small, nodes)
    base_native = predict(g, small, nodes, half_duplex_pairs=False, executor="native")["time_s"]
    # 1 KiB per step leaves from the bucket: no shaped wire time (6 x 41 us without buckets), only
    # latency and the unshaped loopback hop inside the hosts (1 KiB at 1 GB/s per step)
    # (and the reduction of 3 x 1 KiB on the cpu): about 6.5 us
    assert 6 * 1024 / 1e9 <= base["time_s"] - base["latency_term_s"] < 6 * 1024 / (25 * MB) / 20
    # (without buckets: + 6 x 41 us of shaped wire; the tolerance covers the ~0.4 us reduction)
    assert predict(g, small, nodes, token_bucket=False)["time_s"] == pytest.approx(
        base["latency_term_s"] + 6 * 1024 / (25 * MB), rel=1e-2)
    cpu_overheads(o, o_nat)
    with_o = predict(g, small, nodes)
    # every one of the 6 steps pays o in full: 4 KiB time grows by steps x overhead
    assert with_o["overhead_term_s"] == pytest.approx(6 * o)
    assert with_o["time_s"] - base["time_s"] == pytest.approx(6 * o, rel=1e-9)
    # gloo's own all-reduce pays the native overhead per step of its ring instead
    nat = predict(g, small, nodes, half_duplex_pairs=False, executor="native")["time_s"]
    assert nat - base_native == pytest.approx(6 * o_nat, rel=1e-9)
    # 16 MiB: 4 MiB per step = 168 ms of wire; o (1 ms) < burst (5.2 ms), so the link banks what
    # the ranks spend in software and sends it at once: only the first step's o (its bucket
    # was already full) is not refunded
    big = S.build("allreduce", "ring", 4, 16 << 20)
    assert TBF_MIN_BURST_B / (25 * MB) > o
    t_o = predict(g, big, nodes)["time_s"]
    cpu_overheads(0.0, 0.0)
    assert t_o - predict(g, big, nodes)["time_s"] == pytest.approx(o, rel=1e-6)


def test_emulated_hosts_share_this_machines_cores(cpu_overheads):
    g = presets.single_switch(4, 25 * MB)
    nodes = [f"h{i}/d0" for i in range(4)]
    small = S.build("allreduce", "ring", 4, 4096)
    o = 1e-3
    cpu_overheads(o, o, cores=2)
    # the 4 emulated hosts are namespaces of one 2-core machine: every step pays 4/2 o
    assert predict(g, small, nodes)["overhead_term_s"] == pytest.approx(6 * 2 * o)
    # as separate hosts of the graph (each its own cores) a step pays o
    assert predict(g, small, nodes, one_cpu=False)["overhead_term_s"] == pytest.approx(6 * o)
    # a rank blocked in a wait uses no CPU: a step where only 0 -> 1 moves (2 active ranks of 4,
    # on 2 cores) pays o, one where all 4 move pays 2 o
    one_pair = S.Schedule("sendrecv", "direct", 4, 4096, 4, (S.Step.of([(0, 1, 0, 4096, 0)]),
                                                          S.Step.of([(i, (i + 1) % 4, 0, 4096, 0) for i in range(4)])))
    assert predict(g, one_pair, nodes)["overhead_term_s"] == pytest.approx(o + 2 * o)


def test_emulate_flags_are_checked():
    import argparse
    from parsim.commands.emulate import build_graph
    ns = argparse.Namespace(cluster="switch", hosts=2, link="1Gbit", delay=None, oversubscription=2.0, servers=1)
    assert build_graph(ns).edges["h0", "sw0"]["bandwidth"] == 1.25e8
    with pytest.raises(ParsimError, match="--link"):
        build_graph(argparse.Namespace(**{**vars(ns), "link": "100Gbit"}))
    with pytest.raises(ParsimError, match="--hosts"):
        build_graph(argparse.Namespace(**{**vars(ns), "hosts": 0}))
    with pytest.raises(ParsimError, match="unknown cluster"):
        build_graph(argparse.Namespace(**{**vars(ns), "cluster": "swtch"}))


def test_teardown_refuses_foreign_namespaces():
    from backends.netem.cluster import delete_namespaces
    with pytest.raises(AssertionError):
        delete_namespaces(["docker-ns"])


def test_parsim_star_preset_servers_rank_last_and_only_network_links_are_measured():
    import argparse
    from backends.netem.plan import network_edges
    from parsim.commands.emulate import build_graph
    ns = argparse.Namespace(cluster="ps-star", hosts=2, link="200Mbit", delay=None, oversubscription=2.0, servers=1)
    g = build_graph(ns)
    p = plan_from_graph(g, PFX)
    assert [h.node for h in p.hosts] == ["h0", "h1", "ps0", "ps1"]  # parsim's star lists servers first
    assert {frozenset(e) for e in g.edges if "sw0" in e} == network_edges(g)
    m = measured_graph(g, [{"src": "h0", "dst": "h1", "hops": 2, "efficiency": 0.5, "rtt_s": 0.0}])
    assert m.edges["h0", "sw0"]["bandwidth"] == pytest.approx(0.5 * 25 * MB)
    assert m.edges["h0", "h0/d0"]["bandwidth"] == g.edges["h0", "h0/d0"]["bandwidth"]


def test_fast_parsim_presets_need_a_link_rate():
    import argparse
    from parsim.commands.emulate import build_graph
    ns = argparse.Namespace(cluster="dgx-a100", hosts=2, link=None, delay=None, oversubscription=2.0, servers=1)
    with pytest.raises(ParsimError, match="--link"):
        build_graph(ns)
    g = build_graph(argparse.Namespace(**{**vars(ns), "link": "100Mbit"}))
    p = plan_from_graph(g, PFX)
    assert len(p.hosts) == 2 and p.veths[0].bandwidth_Bps == pytest.approx(8 * 12.5 * MB)  # 8 rails of 100 Mbit/s


def test_missing_root_or_iproute2_is_a_clear_message(monkeypatch):
    import shutil
    from backends.netem import cluster
    monkeypatch.setattr(cluster, "_UNAVAILABLE", [])
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    assert "needs root" in cluster.unavailable()
    monkeypatch.setattr(cluster, "_UNAVAILABLE", [])
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "iproute2" in cluster.unavailable()


def test_ranks_in_namespaces_keep_torch_warnings_level(monkeypatch):
    """c10d's 'hostname of the client socket' lines are dropped by the rank itself (test_quiet.py),
    so the namespace commands do not lower TORCH_CPP_LOG_LEVEL (which would hide every other C++
    warning too); a level the user sets reaches the ranks through the inherited environment."""
    from backends.netem import presets
    from backends.netem.cluster import Emulation
    from parsim.commands.emulate import rank_commands
    emu = Emulation(presets.build("switch", bandwidth_Bps=25e6, devices_per_host=1, hosts=2), prefix="ps00000-",
                    ranks_per_host=1)      # a plan only: nothing is created
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    assert not any("TORCH_CPP_LOG_LEVEL" in a for _, argv in rank_commands(emu, ["parsim", "run"]) for a in argv)
