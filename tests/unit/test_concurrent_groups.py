"""Concurrent groups share links (issue 12 §4): all data-parallel groups (one per tp x pp position)
run at once and are priced together on the graph."""
import pytest

from parsim.costs.network import collective_lines
from parsim.model import load_model
from parsim.plan import Plan
from parsim.predict import get_cluster, predict

GiB = 2 ** 30
B_E = 50e9 * 0.92          # one NDR NIC per GPU at the preset's 0.92 efficiency (clusters.yaml)


def _t(lines, n):
    return min(a + b * n for a, b in lines)


def test_halving_doubling_with_all_dp_groups_on_a_2to1_fat_tree():
    # 128 GPUs = 16 DGX nodes, 4 nodes per leaf; tp·pp = 8 gives 8 dp groups of 16 (GPU j of every
    # node). hd over 16 ranks (one per node): steps with partner distance 8 and 4 (n/2, n/4 bytes)
    # cross leaves, distance 2 and 1 (n/8, n/16) stay in the leaf; reduce-scatter + all-gather.
    # Alone: 2·(1/2 + 1/4 + 1/8 + 1/16)·n/B_e = 1.875·n/B_e = 43.8 ms at 1 GiB.
    # All 8 groups: 32 NICs per leaf inject 32·B_e into uplinks of 32·50/2 GB/s·0.92 = 16·B_e, so
    # the cross-leaf steps take twice as long: 2·((1/2 + 1/4)·2 + 1/8 + 1/16)·n/B_e = 3.375·n/B_e = 78.8 ms.
    n = GiB
    ranks = [tuple(i * 8 + j for i in range(16)) for j in range(8)]
    for name, alone_f, together_f in (("dgx-h100-fattree-2to1", 1.875, 3.375), ("dgx-h100-fattree", 1.875, 1.875)):
        cl = get_cluster(name, 128)
        alone = _t(collective_lines(cl, "allreduce", "hd", ranks[0]), n)
        together = _t(collective_lines(cl, "allreduce", "hd", ranks[0], ranks[1:]), n)
        assert alone == pytest.approx(alone_f * n / B_E, rel=0.01)
        assert together == pytest.approx(together_f * n / B_E, rel=0.01), name


def test_predict_sees_oversubscription_through_concurrent_dp_groups():
    # issue 12 §4: predict gave identical DP time on the 2:1 and the full-bisection fabric.
    m = load_model("llama2-7b")
    plan = Plan(dp=16, tp=8, global_batch=16, grad_sync="hd", overlap=False)
    full = predict(m, get_cluster("dgx-h100-fattree", 128), plan).breakdown_s["dp_comm_exposed"]
    half = predict(m, get_cluster("dgx-h100-fattree-2to1", 128), plan).breakdown_s["dp_comm_exposed"]
    assert half > 1.5 * full
    # the DP time is the concurrent groups' time on the bytes of the largest stage (fp32 gradients: Megatron's
    # default with bf16 parameters, 4 B each)
    nbytes = (m.layers * m.params_per_layer + m.embedding_params + m.head_params) / 8 * 4
    cl = get_cluster("dgx-h100-fattree-2to1", 128)
    ranks = [tuple(i * 8 + j for i in range(16)) for j in range(8)]
    assert half == pytest.approx(_t(collective_lines(cl, "allreduce", "hd", ranks[0], ranks[1:]), nbytes), rel=1e-6)


def test_groups_inside_one_node_share_nothing_across_nodes():
    # tp groups inside a node: pricing them together with the other nodes' groups changes nothing
    cl = get_cluster("dgx-h100", 16)
    alone = collective_lines(cl, "allreduce", "native", range(8))
    together = collective_lines(cl, "allreduce", "native", range(8), [tuple(range(8, 16))])
    assert alone == together


def test_point_to_point_has_its_own_efficiency():
    # issue 12 §4: measured NCCL sendrecv on 8x A100 NVSwitch is ~195 GB/s at 1 GiB; parsim priced
    # 234 GB/s (the all-reduce's 0.78 of 300 GB/s). clusters.yaml gives NVLink a p2p efficiency of
    # 0.65 (source there): 1 GiB / (300e9 · 0.65) + 1 us -> 195 GB/s; the all-reduce keeps 0.78.
    from parsim.costs.network import collective_time_s
    c = get_cluster("dgx-a100", 8)
    n = GiB
    assert n / collective_time_s(c, "sendrecv", "native", (0, 1), n) == pytest.approx(195e9, rel=0.01)
    busbw = 2 * 7 / 8 * n / collective_time_s(c, "allreduce", "native", range(8), n)
    assert busbw == pytest.approx(0.78 * 300e9, rel=0.01)
