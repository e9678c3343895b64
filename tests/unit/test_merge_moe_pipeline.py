"""i13's experts on main's uneven pipelines and framework accounting (the merge of the two): each rank kind holds
its own layers' dense part and its experts/ep, and routed experts' ZeRO shards are over the expert-data-parallel
group (dp/ep ranks), not over dp."""
import numpy as np
import pytest

from parsim.model import load_model
from parsim.plan import Plan
from parsim.predict import get_cluster, plan_columns, price
from parsim.rules import stage_layer_counts


@pytest.mark.parametrize("accounting,bytes_", [("megatron", (2.0, 4.0, 12.0)), ("deepspeed", (2.0, 2.0, 12.0))])
def test_expert_states_per_rank_kind_on_an_uneven_pipeline(accounting, bytes_):
    m = load_model("mixtral-8x7b")                      # 32 layers, 8 experts on every layer, untied head
    plan = Plan(dp=4, ep=2, pp=3, zero=1, micro_batch=1, global_batch=12)
    # 32 layers on 3 stages: (32 + 2) = 34 units -> 12 + 11 + 11, less the embedding and the head -> 11, 11, 10
    assert stage_layer_counts(32, 3).tolist() == [11, 11, 10]
    X = m.moe_layers * m.experts * m.expert_params      # routed expert parameters
    dense_layer = (m.layer_params_total - X) / m.layers
    x_layer = X / m.layers / plan.ep                    # each rank holds experts/ep of its layers
    kinds = {0: (11, m.embedding_params), 1: (10, m.head_params), 2: (11, 0)}     # first, last, mid
    r = price(m, get_cluster("dgx-h100", 16), plan_columns([plan], m), accounting=accounting)
    worst = {0: 0, 2: 1, 1: 2}[int(r["worst_rank"][0])]   # pipeline rank -> kind (rank 2 is the last stage)
    L, extra = kinds[worst]
    P, Xr = L * dense_layer + extra, L * x_layer
    bw, bg, bo = bytes_
    # ZeRO-1: optimizer state of the dense part over dp = 4, of the routed experts over dp/ep = 2
    assert r["memory"]["weights"][0] == pytest.approx((P + Xr) * bw, rel=1e-12)
    assert r["memory"]["grads"][0] == pytest.approx((P + Xr) * bg, rel=1e-12)
    assert r["memory"]["optimizer"][0] == pytest.approx(P * bo / 4 + Xr * bo / 2, rel=1e-12)
    # every kind is priced; the reported one is the worst
    tot = r["memory_by_rank_kind"]
    assert r["memory_bytes"][0] == pytest.approx(max(float(np.ravel(v)[0]) for v in tot.values()), rel=1e-12)


def test_ep_comm_and_cp_comm_are_breakdown_keys_of_every_plan():
    # dense tables keep them at 0; an ep plan prices its all-to-all on the EP group
    m = load_model("mixtral-8x7b")
    plans = [Plan(dp=8, micro_batch=1, global_batch=8), Plan(dp=8, ep=4, micro_batch=1, global_batch=8)]
    r = price(m, get_cluster("dgx-h100", 8), plan_columns(plans, m))
    assert r["breakdown"]["ep_comm"][0] == 0 and r["breakdown"]["ep_comm"][1] > 0
    assert (r["breakdown"]["cp_comm"] == 0).all()
