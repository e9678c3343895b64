"""MoE layers as Megatron-Core runs them: grouped expert GEMMs at the efficiency of one expert's GEMM, the
all-to-all dispatcher's two permutations, and the EP / expert-data-parallel groups on the devices Megatron's rank
order (tp-cp-ep-dp-pp, pp last) places them on."""
import numpy as np
import pytest

from parsim import layer as Ly
from parsim.costs.compute import gemm_s, op_times, peak_flops
from parsim.costs.network import collective_coeffs
from parsim.hardware import get_device
from parsim.model import load_model
from parsim.plan import Plan
from parsim.predict import get_cluster, plan_columns, price


def _op(ops, name):
    return next(op for op in ops if op.name == name)


def test_grouped_expert_gemm_is_priced_as_one_gemm_per_expert():
    # qwen3-30b-a3b, micro-batch 1 of 4096 tokens, ep 8: 4096·8 = 32,768 expert rows per rank, 128/8 = 16 local
    # experts of 32,768/16 = 2048 rows each (balanced routing). fc1 of one expert: [2048, 2048] x [2048, 2·768]:
    # 2·2048·2048·1536 = 12,884,901,888 FLOPs = 12.885 GFLOP; the 16 of them 206.16 GFLOP.
    dev = get_device("h100-sxm")
    m = load_model("qwen3-30b-a3b")
    ops = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, 8, 1)
    fc1 = _op(ops, "expert_fc1")
    assert fc1.grouped and fc1.batch == 16 and fc1.m == 2048 and fc1.k == 2048 and fc1.n == 1536
    peak = float(peak_flops(dev, 0))
    one = 2.0 * 2048 * 2048 * 1536
    assert one / 1e9 == pytest.approx(12.884901888)
    # compute-bound: 16 expert GEMMs take 16 times one of them, each at the curve's efficiency at 12.885 GFLOP
    t16 = float(gemm_s(dev, peak, 2.0, 2048, 2048, 1536, batch=16, grouped=True))
    t1 = float(gemm_s(dev, peak, 2.0, 2048, 2048, 1536))
    assert t16 == pytest.approx(16 * t1, rel=1e-12)
    assert t16 == pytest.approx(16 * one / (peak * dev.matmul_eff(one / 1e9)), rel=1e-12)
    # one batched kernel of the same FLOPs would read the (rising) curve at 206 GFLOP: faster
    assert float(gemm_s(dev, peak, 2.0, 2048, 2048, 1536, batch=16)) < t16
    f, b, w = op_times(fc1, dev, peak, 2.0)
    assert float(f) == pytest.approx(t16 * fc1.weight, rel=1e-12) and float(b) == pytest.approx(2 * float(f))


@pytest.mark.parametrize("model,ep,local", [("qwen3-30b-a3b", 8, 16), ("mixtral-8x7b", 8, 1), ("mixtral-8x7b", 4, 2)])
def test_dispatch_and_combine_move_the_topk_copies_once_per_permutation(model, ep, local):
    # Megatron's MoEAlltoAllTokenDispatcher: permutation 1 (by destination rank) always, permutation 2 (sort by
    # local expert) only with more than one local expert; each reads and writes the top-k copies, e·T·k·h bytes.
    m = load_model(model)
    T, e = 4096, 2.0
    moved = e * T * m.top_k * m.hidden
    if model == "qwen3-30b-a3b":
        assert moved == 2 * 4096 * 8 * 2048 == 134_217_728
    else:
        assert moved == 2 * 4096 * 2 * 4096 == 67_108_864
    perms = 2 if local > 1 else 1
    assert m.experts // ep == local
    ops = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, ep, 1)
    for name in ("dispatch", "combine"):
        op = _op(ops, name)
        assert float(op.bytes) == float(op.bwd_bytes) == perms * 2 * moved
    # the all-to-all's buffer is the whole send buffer of top-k copies, once, whatever the permutations (nccl-tests'
    # per-rank nbytes: the pricing applies the (ep-1)/ep that leaves the rank, see the test below)
    assert [c for c in _op(ops, "dispatch").comm if c[0] == "ep"][0][2] == pytest.approx(moved)


def test_ep_group_stays_inside_a_node_under_pipeline_parallelism():
    # 2 DGX-H100 nodes, pp 2, dp 8, ep 8, tp 1. Megatron's order tp-cp-ep-dp-pp puts the 8 EP ranks of a stage
    # on one node (ranks 0..7), so each MoE layer's all-to-all is an NVLink all-to-all of 8 GPUs: the same
    # seconds per layer and micro-batch as on one node without pipelining.
    m = load_model("qwen3-30b-a3b")                        # 48 layers, all MoE
    kw = dict(dp=8, ep=8, tp=1, micro_batch=1, global_batch=64, seq_len=4096, dtype="bf16")
    p2 = price(m, get_cluster("dgx-h100", 16), plan_columns([Plan(pp=2, **kw)], m))
    p1 = price(m, get_cluster("dgx-h100", 8), plan_columns([Plan(pp=1, **kw)], m))
    # ep_comm = micro-batches (64/8 = 8) · layers of the stage · 2 directions · per-layer all-to-alls
    per_layer2 = p2["breakdown"]["ep_comm"][0] / (8 * 24)
    per_layer1 = p1["breakdown"]["ep_comm"][0] / (8 * 48)
    assert per_layer2 == pytest.approx(per_layer1, rel=1e-12)
    # by hand: 2 all-to-alls (dispatch, combine) of a 2·4096·8·2048-byte send buffer over ranks 0..7, each direction
    a, b = collective_coeffs(get_cluster("dgx-h100", 16), "all_to_all", "pairwise", tuple(range(8)))
    nbytes = 2 * 4096 * 8 * 2048
    assert per_layer2 == pytest.approx(2 * 2 * (a + b * nbytes), rel=1e-9)
    # the same 8 ranks spread over the two nodes (the stride the rank numbering tp-pp-dp would give) cost more
    a_x, b_x = collective_coeffs(get_cluster("dgx-h100", 16), "all_to_all", "pairwise", tuple(range(0, 16, 2)))
    assert a_x + b_x * nbytes > a + b * nbytes



@pytest.mark.parametrize("model,ep,combine,act,probs", [
    # mixtral-8x7b, ep 8 (one local expert), top-2, hidden 4096, expert ffn 14336: T·k = 8192 rows;
    # combine e·T·k·h = 2·4096·2·4096 = 67,108,864; activation input 2·8192·2·14336 = 469,762,048; probs 4·8192 = 32,768
    ("mixtral-8x7b", 8, 67_108_864, 469_762_048, 32_768),
    # qwen3-235b-a22b, ep 8 (16 local experts), top-8, hidden 4096, expert ffn 1536: T·k = 32,768 rows;
    # combine 2·4096·8·4096 = 268,435,456; activation input 2·32,768·2·1536 = 201,326,592; probs 4·32,768 = 131,072
    ("qwen3-235b-a22b", 8, 268_435_456, 201_326_592, 131_072),
])
def test_what_the_combine_keeps_by_where_the_probs_are_applied(model, ep, combine, act, probs):
    m = load_model(model)
    after = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, ep, 1)
    inside = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, ep, 1, probs_in_activation=True)
    assert float(_op(after, "combine").saved) == combine and float(_op(inside, "combine").saved) == 0.0
    assert float(_op(after, "expert_activation").saved) == act
    assert float(_op(inside, "expert_activation").saved) == act + probs
    # every other op keeps the same
    for a, b in zip(after, inside):
        if a.name not in ("combine", "expert_activation"):
            assert np.array_equal(np.asarray(a.saved), np.asarray(b.saved)), a.name


def test_megatron_applies_routing_probs_in_the_activation_so_its_combine_keeps_nothing():
    # Where the routing probabilities are applied decides what the combine keeps for backward. qwen3-30b-a3b,
    # micro-batch 1 of 4096 tokens, tp 1, ep 8, bf16: T·k = 4096·8 = 32,768 expert rows per rank.
    #   after the experts (parsim's torch backend: index_add of out * w): d/dp needs the top-k expert outputs,
    #     the combine keeps e·T·k·h = 2·4096·8·2048 = 134,217,728 bytes;
    #   in the weighted SwiGLU (Megatron-Core TEGroupedMLP, weighted_bias_swiglu_impl(fc1 out, bias, probs)):
    #     the combine keeps nothing, the activation keeps its input as before (2·32,768·2·768 = 100,663,296 bytes)
    #     plus the fp32 probabilities, 4·32,768 = 131,072 bytes.
    m = load_model("qwen3-30b-a3b")
    after = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, 8, 1)
    inside = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, 8, 1, probs_in_activation=True)
    assert float(_op(after, "combine").saved) == 134_217_728
    assert float(_op(inside, "combine").saved) == 0.0
    assert float(_op(after, "expert_activation").saved) == 100_663_296
    assert float(_op(inside, "expert_activation").saved) == 100_663_296 + 131_072
    # times are the same: only what is kept differs
    dev = get_device("h100-sxm")
    peak = float(peak_flops(dev, 0))
    for a, b in zip(after, inside):
        assert op_times(a, dev, peak, 2.0) == op_times(b, dev, peak, 2.0)


def test_megatron_accounting_keeps_less_per_moe_layer_than_the_combine_weighted_frameworks():
    # The same plan priced with Megatron's accounting (probabilities in the activation) and DeepSpeed's (at the
    # combine; the two accountings hold the same activations otherwise in bf16: one logits gradient each, no FP8).
    # qwen3-30b-a3b, dp 8, ep 8, pp 1, micro-batch 1: the one in-flight micro-batch holds all 48 MoE layers, each
    # 134,217,728 − 131,072 = 134,086,656 bytes lighter: 48 · 134,086,656 = 6,436,159,488 bytes.
    from parsim.costs import memory as M
    assert M.MOE_PROBS_IN_ACTIVATION == {"megatron": True, "deepspeed": False, "fsdp2": False}
    m = load_model("qwen3-30b-a3b")
    p = Plan(dp=8, ep=8, tp=1, micro_batch=1, global_batch=64, seq_len=4096, dtype="bf16")
    acts = {a: float(price(m, get_cluster("dgx-h100", 8), plan_columns([p], m), accounting=a)["memory"]["activations"][0])
            for a in ("megatron", "deepspeed")}
    assert acts["deepspeed"] - acts["megatron"] == pytest.approx(6_436_159_488, rel=1e-12)
    # a dense model is untouched
    d = load_model("llama3-8b")
    q = Plan(dp=8, tp=1, micro_batch=1, global_batch=64, seq_len=4096, dtype="bf16")
    acts_d = {a: float(price(d, get_cluster("dgx-h100", 8), plan_columns([q], d), accounting=a)["memory"]["activations"][0])
              for a in ("megatron", "deepspeed")}
    assert acts_d["megatron"] == acts_d["deepspeed"]


def test_the_all_to_all_counts_the_share_that_leaves_the_rank_once():
    # Issue 15 (MoE rows too fast): the layer passed the (ep-1)/ep of the top-k copies that leave the rank, and the
    # all-to-all pricing (nccl-tests' convention: nbytes = the per-rank buffer, busbw = algbw·(p-1)/p, PERFORMANCE.md)
    # took (p-1)/p of that again. qwen3-30b-a3b, micro-batch 1 of 4096 tokens, ep 8 on one DGX-H100: the send buffer
    # is 2·4096·8·2048 = 134,217,728 bytes, of which 7/8 = 117,440,512 cross NVLink; at 0.85·450 GB/s = 382.5 GB/s
    # per direction that is 117,440,512 / 382.5e9 = 307.0 us per all-to-all (plus its latency), not 7/8 of it.
    m = load_model("qwen3-30b-a3b")
    ops = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, 8, 1)
    nbytes = [c for c in _op(ops, "dispatch").comm if c[0] == "ep"][0][2]
    a, b = collective_coeffs(get_cluster("dgx-h100", 8), "all_to_all", "pairwise", tuple(range(8)))
    assert b * float(nbytes) == pytest.approx(117_440_512 / 382.5e9, rel=1e-9)
    # and priced in a step: ep_comm = micro-batches · layers · 2 directions · 2 all-to-alls · (a + b·nbytes)
    p = Plan(dp=8, ep=8, tp=1, micro_batch=1, global_batch=64, seq_len=4096, dtype="bf16")
    r = price(m, get_cluster("dgx-h100", 8), plan_columns([p], m))
    assert r["breakdown"]["ep_comm"][0] == pytest.approx(8 * 48 * 2 * 2 * (a + b * 134_217_728), rel=1e-9)


@pytest.mark.parametrize("ep", [2, 4, 8])
def test_the_all_to_all_bandwidth_term_is_the_leaving_share_over_the_link(ep):
    # Same kind as above, at every EP size: mixtral-8x7b, micro-batch 1 of 4096 tokens, top-2, hidden 4096, bf16:
    # send buffer 2·4096·2·4096 = 67,108,864 bytes per rank, of which (ep-1)/ep leaves it over NVLink at
    # 0.85·450 GB/s (dgx-h100): ep 2 -> 33,554,432 B = 87.7 us, ep 4 -> 50,331,648 B = 131.6 us,
    # ep 8 -> 58,720,256 B = 153.5 us per all-to-all (bandwidth term).
    m = load_model("mixtral-8x7b")
    ops = Ly.layer_ops(m, 1, 4096, 1, False, True, 0, ep, 1)
    for name in ("dispatch", "combine"):
        nbytes = [c for c in _op(ops, name).comm if c[0] == "ep"][0][2]
        assert float(nbytes) == 67_108_864
        _, b = collective_coeffs(get_cluster("dgx-h100", 8), "all_to_all", "pairwise", tuple(range(ep)))
        assert b * float(nbytes) == pytest.approx(67_108_864 * (ep - 1) / ep / 382.5e9, rel=1e-9)


def test_expert_data_parallel_group_spans_context_parallel_ranks():
    # trial 2026-11-30: gpt-oss-120b on 64 GPUs, ep 8, ZeRO-1. A rank holds the experts of its ep index; with cp the
    # same experts sit on the dp/ep ranks of that index in every cp group, so the expert-data-parallel group has
    # dp·cp/ep ranks (64/8 = 8 at dp 64 cp 1 and at dp 16 cp 4 alike). Its ZeRO shard of the expert optimizer state
    # is then the same in both plans (it was 4x larger at cp 4: sharded over dp/ep = 2), and the experts' gradients
    # are reduced over all 8 (cp 4 added no expert reduction before).
    m = load_model("gpt-oss-120b")
    plans = [Plan(dp=64, tp=1, pp=1, ep=8, cp=1, micro_batch=1, global_batch=128, seq_len=32768, zero=1,
                  recompute="full"),
             Plan(dp=16, tp=1, pp=1, ep=8, cp=4, micro_batch=1, global_batch=128, seq_len=32768, zero=1,
                  recompute="full")]
    from parsim.predict import predict
    a, b = (predict(m, "dgx-h100", p, gpus=64) for p in plans)
    assert a.memory_breakdown_GiB["optimizer"] == pytest.approx(b.memory_breakdown_GiB["optimizer"], rel=1e-9)
    # routed expert params per rank: 36 layers x 128 experts x 24.89e6 / ep 8 = 14.34e9; fp32 master + Adam m, v =
    # 12 B each, sharded over the 8 expert-data-parallel ranks (the dense part adds its own share on top)
    expert_params = m.moe_layers * m.experts * m.expert_params / 8
    assert b.memory_breakdown_GiB["optimizer"] * 2 ** 30 > 12 * expert_params / 8
    assert b.memory_breakdown_GiB["optimizer"] * 2 ** 30 < 12 * expert_params / 2      # not sharded over dp/ep = 2


def test_a_dense_prefix_sits_on_the_first_rank_only():
    # DeepSeek-style: layers 0-1 dense, 2-7 MoE (moe_first_dense 2), pp 2 -> rank 0 holds 2 dense + 2 MoE layers,
    # rank 1 four MoE layers. The mean layer gave rank 1 (8-2)/8 = 3/4 of an MoE layer's experts per layer; it holds
    # whole ones: weights (bf16, 2 B/param, tp 1, ep 2) = 4 x (attention + norms + router + 4/2 experts) + head.
    from parsim.model import ModelSpec
    from parsim.predict import predict
    m = ModelSpec(name="prefix", layers=8, hidden=256, heads=4, kv_heads=4, ffn_hidden=512, vocab=1000, seq_len=128,
                  activation="swiglu", tied_embeddings=False, experts=4, top_k=1, expert_ffn_hidden=2048,
                  moe_first_dense=2)
    rep = predict(m, "dgx-h100", Plan(dp=2, tp=1, pp=2, ep=2, micro_batch=1, global_batch=4), gpus=4)
    h, f = 256, 2048
    attn, norms, router, expert = 4 * h * h, 2 * h, h * 4, 3 * h * f
    rank1 = 4 * (attn + norms + router + 2 * expert) + h + 1000 * h        # + final norm and output layer
    assert rep.memory_worst_rank == 1
    assert rep.memory_breakdown_GiB["weights"] * 2 ** 30 == pytest.approx(2 * rank1, rel=1e-9)
