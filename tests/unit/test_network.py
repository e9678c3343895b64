"""Pricing schedules on the graph: goldens on one switch (arithmetic in the comments),
routing/sharing mechanics, the bandwidth lower bound over random graphs, nccl-tests sanity."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parsim.costs import network as N
from parsim.errors import ParsimError
from parsim.schedules import collectives as C
from parsim.topology import from_graph, load_cluster, star

B = 1e9          # 1 GB/s per host link, each direction
L = 5e-6         # 5 us per hop; device -> host -> switch -> host -> device = 2 hops with latency
A = 2 * L        # α of one transfer across the switch
FAST = 1e14      # host-internal links: never the bottleneck (parsim.limits.MAX_LINK_GBPS, the fastest link allowed)


def one_switch(p, servers=0, device="h100-sxm"):
    # GPU profiles reduce inside the copy (overlapped); reduction at 3 B/(3350 GB/s·0.9) per byte ≪ 1/B
    return star("sw", p, device, B, L, 1.0, 1, servers, server_device="h100-sxm", intra_Bps=FAST)


def t(c, algo, n, op="allreduce"):
    return N.collective_time_s(c, op, algo, range(c.num_devices), n)


@pytest.mark.parametrize("p", [2, 4, 5, 8])
def test_ring_golden(p):
    n = 3 * 2 ** 20 * p
    # ring: 2(p-1) steps, each α + (n/p)/B  (Patarasuk & Yuan 2009)
    assert t(one_switch(p), "ring", n) == pytest.approx(2 * (p - 1) * (A + n / (p * B)), rel=1e-12)


def test_coefficients_are_exactly_affine():
    c, p = one_switch(4), 4
    a, b = N.collective_coeffs(c, "allreduce", "ring", range(p))
    assert a == pytest.approx(2 * (p - 1) * A) and b == pytest.approx(2 * (p - 1) / p / B)
    n = 12344 * 16                       # splits evenly into p chunks: the price is exactly α + β·n
    assert N.price_schedule(c, C.allreduce_ring(p, n)).time_s == pytest.approx(a + b * n, rel=1e-12)
    n = 12345 * 16                       # uneven chunks: the largest (one align unit more) sets each step
    big = (n // 16 // p + 1) * 16
    assert N.price_schedule(c, C.allreduce_ring(p, n)).time_s == pytest.approx(2 * (p - 1) * (A + big / B), rel=1e-12)


def test_central_ps_is_the_incast_on_the_server_link():
    p, n = 6, 2 ** 24
    # push: 6 workers × n into one server link = p·n/B; pull: the same out of it; α each step
    assert t(one_switch(p, servers=1), "ps-central", n) == pytest.approx(2 * (A + p * n / B), rel=1e-12)
    # without a dedicated host, worker 0 serves: (p-1)·n each way
    assert t(one_switch(p), "ps-central", n) == pytest.approx(2 * (A + (p - 1) * n / B), rel=1e-12)


def test_colocated_sharded_ps_is_the_rings_bandwidth_term():
    p, n = 8, 2 ** 24
    # BytePS colocated: push and pull each move (p-1)/p·n out of and into every worker
    ps = t(one_switch(p), "ps", n)
    assert ps == pytest.approx(2 * A + 2 * (p - 1) / p * n / B, rel=1e-12)
    assert ps - 2 * A == pytest.approx(t(one_switch(p), "ring", n) - 2 * (p - 1) * A, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_sharded_ps_on_dedicated_hosts(k):
    p, n = 4, 2 ** 24
    # BytePS non-colocated: each step max(n/B, p·n/(k·B))
    assert t(one_switch(p, servers=k), "ps-sharded", n) == pytest.approx(2 * (A + max(n, p * n / k) / B), rel=1e-12)


def test_halving_doubling_and_recursive_doubling_goldens():
    p, n = 8, 2 ** 24
    c = one_switch(p)
    # Rabenseifner: 2 log2 p steps; bandwidth 2(p-1)/p·n/B (Thakur et al. 2005)
    assert t(c, "hd", n) == pytest.approx(2 * 3 * A + 2 * (p - 1) / p * n / B, rel=1e-12)
    # recursive doubling: log2 p steps of the whole buffer
    assert t(c, "rd", n) == pytest.approx(3 * (A + n / B), rel=1e-12)


def test_pipelined_double_binary_tree_coefficients():
    p = 8
    c = one_switch(p)
    a, b = N.collective_coeffs(c, "allreduce", "tree", range(p))
    # NCCL btree on 8 ranks has height H = 3 (0 -> 4 -> 2,6 -> odd ranks): α = 2H hops of A
    assert a == pytest.approx(2 * 3 * A)
    # steady round: every rank is interior in exactly one tree, so 4 chunks of s cross its link
    # each way per round while the buffer advances by 2 chunks: β = 2/B
    assert b == pytest.approx(2 / B, rel=1e-9)


def test_cpu_reduction_is_not_overlapped():
    from parsim.hardware import get_device
    p, n = 4, 2 ** 24
    c = one_switch(p, device="cpu")
    cpu = get_device("cpu")
    red = 3 / (cpu.memory_bandwidth_Bps * float(cpu.memory_eff(1e6)))
    # ring on gloo: p-1 reduce-scatter steps add n/p after it lands
    # each of the 2(p-1) steps also pays the cpu's calibrated executor software overhead: a fixed
    # part and one per message a rank posts (a ring rank: one send, one receive)
    o_ring = cpu.executor_step_overhead_s + 2 * cpu.executor_message_overhead_s
    want = 2 * (p - 1) * (A + o_ring + n / (p * B)) + (p - 1) * n / p * red
    assert t(c, "ring", n) == pytest.approx(want, rel=1e-12)


def test_step_software_overhead_is_paid_per_step_on_cpus_only(fake_cpu_profile):
    o, o_nat = 1e-3, 0.25e-3
    p, n = 4, 4096
    cpu, gpu = one_switch(p, device="cpu"), one_switch(p)
    before = {a: t(cpu, a, n) for a in ("ring", "hd", "native")}
    gpu_before = t(gpu, "ring", n)
    real = fake_cpu_profile(executor_step_overhead_s=o, native_step_overhead_s=o_nat,
                            executor_message_overhead_s=0.0)
    cpu, gpu = one_switch(p, device="cpu"), one_switch(p)      # fresh clusters: the pricing cache is per cluster
    base, zero = before, real("cpu")        # the calibrated profile priced `before`
    # ring: 2(p-1) = 6 steps, halving-doubling: 2 log2 p = 4 steps, each pays o on top of what it paid
    # before (the calibrated fixed part and 2 messages per rank: one send, one receive)
    o_before = zero.executor_step_overhead_s + 2 * zero.executor_message_overhead_s
    assert t(cpu, "ring", n) - base["ring"] == pytest.approx(6 * (o - o_before), rel=1e-9)
    assert t(cpu, "hd", n) - base["hd"] == pytest.approx(4 * (o - o_before), rel=1e-9)
    # native: gloo's ring, 6 steps, the native overhead
    assert t(cpu, "native", n) - base["native"] == pytest.approx(6 * (o_nat - zero.native_step_overhead_s), rel=1e-9)
    a, _ = N.collective_coeffs(cpu, "allreduce", "ring", range(p))
    assert a == pytest.approx(6 * (A + o))
    # GPUs pay nothing (NCCL's latency stays in the links)
    assert t(gpu, "ring", n) == pytest.approx(gpu_before, rel=1e-12)
    pr = N.price_schedule(cpu, C.allreduce_ring(p, n))
    assert pr.overhead_s == pytest.approx(6 * o) and pr.time_s == pytest.approx(pr.alpha_s + pr.bandwidth_s + 6 * o)


def _graph(edges, devices):
    g = nx.Graph()
    for d in devices:
        g.add_node(d, kind="device", profile="h100-sxm")
    for u, v, bw, lat in edges:
        for x in (u, v):
            if x not in g:
                g.add_node(x, kind="switch")
        g.add_edge(u, v, bandwidth=bw, latency=lat)
    return g


def test_ecmp_splits_over_tied_paths_and_latency_is_per_hop():
    g = _graph([("a", "s1", B, 1e-6), ("s1", "b", B, 2e-6), ("a", "s2", B, 1e-6), ("s2", "b", B, 3e-6)], ["a", "b"])
    n = 2 ** 20
    pr = N.price_schedule(g, C.build("sendrecv", "direct", 2, n), nodes=["a", "b"])
    assert pr.bandwidth_s == pytest.approx(n / (2 * B))     # half the bytes on each of two paths
    assert pr.alpha_s == pytest.approx(4e-6)                # the slower tied path: 1 + 3 us


def test_concurrent_transfers_share_a_link():
    # 0,1 on s0; 2,3 on s1; one s0—s1 link of B: 0->2 and 1->3 in one step share it
    g = _graph([("0", "s0", B, 0), ("1", "s0", B, 0), ("2", "s1", B, 0), ("3", "s1", B, 0), ("s0", "s1", B, 0)],
               ["0", "1", "2", "3"])
    n = 2 ** 20
    both = C.Schedule("sendrecv", "x", 4, n, 16, (C.Step.of([(0, 2, 0, n, 0), (1, 3, 0, n, 0)]),))
    one = C.Schedule("sendrecv", "x", 4, n, 16, (C.Step.of([(0, 2, 0, n, 0)]),))
    assert N.price_schedule(g, both, nodes=list("0123")).bandwidth_s == pytest.approx(2 * n / B)
    assert N.price_schedule(g, one, nodes=list("0123")).bandwidth_s == pytest.approx(n / B)


def test_oversubscription_slows_cross_leaf_traffic():
    kw = dict(name="ft", nodes=8, gpus_per_node=1, device="h100-sxm", nvlink_Bps=400e9, nvlink_latency_s=0,
              nic_Bps=50e9, nic_latency_s=0, nodes_per_leaf=4, spines=1, uplink_latency_s=0)
    from parsim.topology import fat_tree
    full, half = fat_tree(**kw), fat_tree(**kw, oversubscription=2)
    n, ranks, b = 2 ** 26, range(8), 50e9
    # all-to-all, one step, n/8 to each peer: a NIC sends 7n/8 -> 7n/(8b). Leaf 0's uplink carries
    # 4 ranks × 4 remote peers × n/8 = 2n: non-blocking (4b) n/(2b) < 7n/(8b); at 2:1 (2b) n/b wins
    assert N.collective_time_s(full, "all_to_all", "native", ranks, n) == pytest.approx(7 * n / (8 * b), rel=1e-12)
    assert N.collective_time_s(half, "all_to_all", "native", ranks, n) == pytest.approx(n / b, rel=1e-12)


def test_nccl_tests_sanity_8x_h100():
    """nccl-tests all_reduce busbw on one 8-GPU H100 node: about 370–480 GB/s (NVIDIA published)."""
    c = load_cluster("dgx-h100", 8)
    n = 2 ** 30
    for algo in ("ring", "native"):
        busbw = n / t(c, algo, n) * N.busbw_factor("allreduce", 8) / 1e9
        assert 370 <= busbw <= 480, (algo, busbw)


def test_native_is_the_faster_of_ring_and_tree_on_gpus_and_ring_on_cpus():
    c = load_cluster("dgx-h100", 16)
    for n in (2 ** 12, 2 ** 30):
        ranks = range(16)
        assert t(c, "native", n) == pytest.approx(min(N.collective_time_s(c, "allreduce", a, ranks, n)
                                                      for a in ("ring-channels", "tree")))
    cpu = load_cluster("cpu-local", 4)
    # gloo's ring: the same line as the explicit ring, except that each of its 6 steps pays the
    # native software overhead instead of our executor's (fixed + 2 messages per rank and step)
    a_nat, b_nat = N.collective_coeffs(cpu, "allreduce", "native", range(4))
    a_ring, b_ring = N.collective_coeffs(cpu, "allreduce", "ring", range(4))
    dev = cpu.device
    share = max(1.0, 4 / dev.cores) if dev.cores else 1.0     # 4 ranks on one host share its cores
    assert b_nat == pytest.approx(b_ring, rel=1e-12)
    o_ring = dev.executor_step_overhead_s + 2 * dev.executor_message_overhead_s
    assert a_nat - a_ring == pytest.approx(6 * share * (dev.native_step_overhead_s - o_ring), abs=1e-12)


def test_ranks_beyond_the_cores_of_one_cpu_share_the_step_overhead(fake_cpu_profile):
    o = 1e-3
    fake_cpu_profile(executor_step_overhead_s=o, native_step_overhead_s=o, cores=2,
                     executor_message_overhead_s=0.0)
    n = 4096
    # one rank per host: each has its own cores, a step costs o
    spread = N.price_schedule(one_switch(4, device="cpu"), C.allreduce_ring(4, n))
    assert spread.overhead_s == pytest.approx(6 * o)
    # 4 ranks on one 2-core host: each step waits for 4 ranks' software time on 2 cores: 2 o
    c = load_cluster("cpu-local", 4)
    assert N.price_schedule(c, C.allreduce_ring(4, n).with_ranks(range(4))).overhead_s == pytest.approx(6 * 2 * o)
    # 2 ranks on 2 cores: no sharing; the caller may say all share one CPU (an emulated cluster)
    assert N.price_schedule(load_cluster("cpu-local", 2), C.allreduce_ring(2, n).with_ranks(range(2))).overhead_s \
        == pytest.approx(2 * o)
    g = one_switch(4, device="cpu")
    assert N.price_schedule(g, C.allreduce_ring(4, n), one_cpu=True).overhead_s == pytest.approx(6 * 2 * o)


def test_step_overhead_is_fixed_plus_per_message_and_shared_as_total_work_over_cores(fake_cpu_profile):
    o, m = 1e-3, 0.2e-3
    fake_cpu_profile(executor_step_overhead_s=o, executor_message_overhead_s=m,
                     native_step_overhead_s=o, cores=2)
    n = 4096
    for p in (4, 8):
        g = one_switch(p, device="cpu")
        # co-located ps: 2 steps, every rank posts p-1 sends + p-1 receives, all p busy on 2 cores:
        # per step p·(o + 2(p-1)m)/2 — the per-message part grows with p
        ps = N.price_schedule(g, C.allreduce_ps(p, n), one_cpu=True).overhead_s
        assert ps == pytest.approx(2 * p * (o + 2 * (p - 1) * m) / 2)
        # ring: 2(p-1) steps, one send + one receive per rank: p·(o + 2m)/2 each
        ring = N.price_schedule(g, C.allreduce_ring(p, n), one_cpu=True).overhead_s
        assert ring == pytest.approx(2 * (p - 1) * p * (o + 2 * m) / 2)
        # central server on worker 0: the server posts p-1 messages, each worker one; the step lasts
        # the total work over the cores, (o + (p-1)m + (p-1)(o + m)) / 2, not p/2 times the server's
        central = N.price_schedule(g, C.allreduce_ps_central(p, n, dedicated=False), one_cpu=True).overhead_s
        assert central == pytest.approx(2 * (p * o + 2 * (p - 1) * m) / 2)
        # hosts of their own (no sharing): the slowest rank, the server, o + (p-1)m per step
        own = N.price_schedule(g, C.allreduce_ps_central(p, n, dedicated=False)).overhead_s
        assert own == pytest.approx(2 * (o + (p - 1) * m))
    # a rank without a transfer in a step spends nothing: a 2-rank step among 4 ranks on 2 cores
    # is not slowed by the 2 idle ones
    g = one_switch(4, device="cpu")
    one = C.Schedule("sendrecv", "direct", 4, n, 16, (C.Step.of([(0, 1, 0, n, 0)]),))
    assert N.price_schedule(g, one, one_cpu=True).overhead_s == pytest.approx(o + m)
    # the native collective has no per-message part; GPUs pay nothing
    assert N.price_schedule(g, C.allreduce_ring(4, n), executor="native", one_cpu=True).overhead_s \
        == pytest.approx(6 * 2 * o)
    assert N.price_schedule(one_switch(4), C.allreduce_ps(4, n), one_cpu=True).overhead_s == 0.0
    # the overhead does not depend on the size: the price stays affine in n
    a, b = N.collective_coeffs(load_cluster("cpu-local", 4), "allreduce", "ps", range(4))
    c = load_cluster("cpu-local", 4)
    for size in (4096, 2 ** 20, 2 ** 24):
        pr = N.price_schedule(c, C.allreduce_ps(4, size).with_ranks(range(4)))
        assert pr.time_s == pytest.approx(a + b * size, rel=1e-9)


def test_multi_channel_ring_uses_every_nic():
    c = load_cluster("dgx-h100", 16)
    n = 2 ** 30
    single, chans = t(c, "ring", n), t(c, "ring-channels", n)
    assert single / chans > 5     # one ring crosses nodes through 1 NIC; 8 channels through 8
    for op in ("reduce_scatter", "all_gather"):   # NCCL's native rings are multi-channel too
        assert t(c, "ring", n, op) / t(c, "native", n, op) > 5


def test_fallbacks_and_errors():
    c = load_cluster("dgx-h100", 8)
    ranks = tuple(range(6))
    # tree has no reduce-scatter and hd needs a power of two: both run NCCL's ring
    assert N.collective_coeffs(c, "reduce_scatter", "tree", ranks) == N.collective_coeffs(c, "reduce_scatter", "ring", ranks)
    assert N.collective_coeffs(c, "reduce_scatter", "hd", ranks) == N.collective_coeffs(c, "reduce_scatter", "ring", ranks)
    # unequal ranks per node: hierarchical runs a ring
    c16 = load_cluster("dgx-h100", 16)
    assert N.collective_coeffs(c16, "allreduce", "hierarchical", (0, 1, 8)) == N.collective_coeffs(c16, "allreduce", "ring", (0, 1, 8))
    with pytest.raises(ParsimError, match="dedicated server"):
        N.collective_coeffs(c, "allreduce", "ps-sharded", ranks)
    with pytest.raises(ParsimError, match="did you mean"):
        N.collective_coeffs(c, "allreduce", "rign", ranks)
    assert N.collective_coeffs(c, "allreduce", "ring", (3,)) == (0.0, 0.0)


def test_coefficients_are_cached():
    c = load_cluster("dgx-h100", 8)
    N.collective_coeffs(c, "allreduce", "hd", range(8))
    hits = N._coeffs_cached.cache_info()["hits"]
    N.collective_coeffs(c, "allreduce", "hd", list(range(8)))
    assert N._coeffs_cached.cache_info()["hits"] == hits + 1


@st.composite
def random_clusters(draw):
    p = draw(st.integers(2, 9))
    s = draw(st.integers(1, 4))
    bw = st.floats(1e9, 1e11)
    g = nx.Graph()
    for i in range(s):
        g.add_node(f"s{i}", kind="switch")
        if i:
            g.add_edge(f"s{i}", f"s{draw(st.integers(0, i - 1))}", bandwidth=draw(bw), latency=1e-6)
    for i in range(p):
        g.add_node(f"d{i}", kind="device", profile="h100-sxm", node=i, rank=i)
        for sw in draw(st.sets(st.integers(0, s - 1), min_size=1, max_size=2)):
            g.add_edge(f"d{i}", f"s{sw}", bandwidth=draw(bw), latency=draw(st.floats(0, 5e-6)))
    for _ in range(draw(st.integers(0, 3))):        # a few direct device links
        a, b = draw(st.integers(0, p - 1)), draw(st.integers(0, p - 1))
        if a != b:
            g.add_edge(f"d{a}", f"d{b}", bandwidth=draw(bw), latency=1e-6)
    return from_graph("random", g)


@given(c=random_clusters(), n=st.integers(1, 2 ** 32),
       algo=st.sampled_from(["ring", "tree", "hd", "rd", "hierarchical", "ps", "ps-central", "native", "ring-channels"]))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_nothing_beats_the_bandwidth_lower_bound(c, n, algo):
    """Patarasuk & Yuan 2009: all-reduce needs 2(p-1)/p·n/B, B = a rank's total link bandwidth."""
    p = c.num_devices
    b_max = max(sum(d["bandwidth"] for _, _, d in c.graph.edges(dev, data=True)) for dev in c.devices)
    bound = 2 * (p - 1) / p * n / b_max
    assert N.collective_time_s(c, "allreduce", algo, range(p), n) >= bound * (1 - 1e-9)


def _enumerated_route(g, a, b):
    """Reference ECMP split by enumerating every shortest path (hop count): the share of the
    directed edge u->v = (shortest paths through it) / (all shortest paths); latency = the
    largest sum of edge latencies along one of them."""
    paths = list(nx.all_shortest_paths(g, a, b))
    share, lat = {}, 0.0
    for path in paths:
        lat = max(lat, sum(g.edges[u, v].get("latency", 0.0) for u, v in zip(path, path[1:])))
        for u, v in zip(path, path[1:]):
            share[(u, v)] = share.get((u, v), 0) + 1
    return {k: n / len(paths) for k, n in share.items()}, lat


@pytest.mark.parametrize("name,gpus", [("dgx-h100", 32), ("dgx-h100-fattree", 64), ("dgx-h100-fattree-2to1", 64),
                                       ("dgx-h100-rail", 64), ("torus-4x4", 16), ("ps-star", 8)])
def test_routes_are_the_enumerated_ecmp_split_whatever_was_searched_before(name, gpus):
    # the bidirectional search meets wherever its cached balls happen to reach: the same pair,
    # asked first, last, after its reverse or after pairs that grew either ball further, must
    # give the split (and latency) of counting every shortest path
    import random
    g = load_cluster(name, gpus).graph
    nodes = list(g.nodes)
    rnd = random.Random(7)
    pairs = [(rnd.choice(nodes), rnd.choice(nodes)) for _ in range(40)]
    ends = {}            # directed edge id 2i = the i-th edge of g.edges as stored, 2i + 1 = reversed
    for i, (u, v) in enumerate(g.edges):
        ends[2 * i], ends[2 * i + 1] = (u, v), (v, u)
    warm = N._Router(g)
    for a, b in [(x, y) for x in nodes[::7] for y in nodes[::11]]:   # grow many balls first
        warm.route(a, b)
    for a, b in pairs:
        want, want_lat = _enumerated_route(g, a, b)
        for rt in (N._Router(g), warm):
            eids, fr, lat = rt.route(a, b)
            got = {ends[e]: f for e, f in zip(eids.tolist(), fr.tolist())}
            assert got.keys() == want.keys(), (name, a, b)
            assert all(got[k] == pytest.approx(want[k], rel=1e-12) for k in want), (name, a, b)
            assert lat == pytest.approx(want_lat, rel=1e-12, abs=0.0), (name, a, b)


def test_route_to_an_unreachable_node_names_both_ends():
    g = nx.Graph()
    g.add_edge("a", "b", bandwidth=1.0, latency=0.0)
    g.add_edge("c", "d", bandwidth=1.0, latency=0.0)
    with pytest.raises(ParsimError, match="no path from a to d"):
        N._Router(g).route("a", "d")


def test_point_to_point_router_shares_the_graph_shape_but_not_the_bandwidths():
    # router(g, p2p=True) reuses the plain router's adjacency and balls (the graph's shape) and
    # must still read the links at their point-to-point share (clusters.yaml p2p_efficiency)
    g = load_cluster("dgx-a100", 16).graph
    plain, p2p = N.router(g), N.router(g, p2p=True)
    alone = N._Router(g, p2p=True)
    assert p2p.adj is plain.adj and (p2p.bw == alone.bw).all() and (p2p.bw != plain.bw).any()
    a, b = "n0/gpu0", "n1/gpu3"
    for x, y in zip(p2p.route(a, b), alone.route(a, b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
