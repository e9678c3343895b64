"""ModelSpec fields, Hugging Face import per family, presets, validation of model inputs, MoE counts."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsim.errors import ParsimError
from parsim.limits import MODEL_LIMITS
from parsim.model import ModelSpec, from_hf_config, load_model
from parsim.plan import Plan
from parsim.predict import predict

HF = Path(__file__).resolve().parents[1] / "data" / "hf_configs"
ROWS = list(csv.DictReader(line for line in open(HF / "expected.csv") if not line.startswith("#")))


def cfg(name):
    return json.loads((HF / name).read_text())


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_hf_config_params_seq_len_and_active(row):
    # Counts from expected.csv (first principles from each config.json, equal to the model cards' rounded figures;
    # the first nine rows are the project's validation set). The issue asks for 0.01%; the counts are exact.
    m = load_model(str(HF / row["file"]))
    assert m.params == pytest.approx(int(row["params"]), rel=1e-4)
    assert m.params == int(row["params"])
    assert m.seq_len == int(row["seq_len"]), m.source
    assert m.active_params == int(row["active"] or row["params"])


def test_every_family_is_covered():
    families = {cfg(r["file"]).get("model_type") for r in ROWS}
    assert families >= {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "phi3", "gpt2",
                        "gpt_neox", "falcon", "bloom", "nemotron", "gpt_oss"}


def test_family_shapes_read_right():
    q = load_model(str(HF / "qwen3-4b.json"))        # head_dim 128 != 2560/32 = 80
    assert (q.head_dim, q.q_dim, q.attention, q.qk_norm, q.tied_embeddings) == (128, 4096, "GQA", True, True)
    g = load_model(str(HF / "gemma-7b.json"))        # hidden_act gelu, but Gemma's MLP is gated
    assert (g.activation, g.head_dim, g.tied_embeddings) == ("geglu", 256, True)
    f = load_model(str(HF / "falcon-7b.json"))       # multi_query wins over num_kv_heads 71
    assert (f.kv_heads, f.attention, f.norms_per_layer, f.parallel_block, f.position) == (1, "MQA", 1, True, "rotary")
    f40 = load_model(str(HF / "falcon-40b.json"))    # new_decoder_architecture: num_kv_heads, two norms
    assert (f40.kv_heads, f40.norms_per_layer) == (8, 2)
    p = load_model(str(HF / "pythia-160m.json"))
    assert (p.position, p.norm, p.qkv_bias, p.linear_bias, p.tied_embeddings) == ("rotary", "layernorm", True, True, False)
    b = load_model(str(HF / "bloom-560m.json"))
    assert (b.position, b.embed_norm) == ("alibi", True)
    q2 = load_model(str(HF / "qwen2.5-7b.json"))
    assert (q2.qkv_bias, q2.linear_bias) == (True, False)
    mx = load_model(str(HF / "mixtral-8x7b.json"))
    assert (mx.experts, mx.top_k, mx.moe_layers, mx.expert_ffn_hidden) == (8, 2, 32, 14336)
    q3 = load_model(str(HF / "qwen3-30b-a3b.json"))
    assert (q3.experts, q3.top_k, q3.expert_ffn_hidden, q3.moe_layers) == (128, 8, 768, 48)


@pytest.mark.parametrize("file, total_B, active_B", [("gpt-oss-120b.json", 116.83, 5.13), ("gpt-oss-20b.json", 20.91, 3.61)])
def test_gpt_oss_counts_match_the_model_card(file, total_B, active_B):
    # gpt-oss model card (OpenAI 2025, arXiv 2508.10925, Table 1): 116.83B / 20.91B total, 5.13B / 3.61B active; the card
    # counts the unembedding in the active figure but not the embedding (vocab 201088 x hidden 2880 = 0.579B).
    m = load_model(str(HF / file))
    assert m.params / 1e9 == pytest.approx(total_B, abs=0.005)
    assert (m.active_params - m.vocab * m.hidden) / 1e9 == pytest.approx(active_B, abs=0.005)
    # every layer MoE, biases everywhere, alternate layers windowed (0, 2, ...: the first of each pair)
    assert (m.moe_layers, m.qkv_bias, m.linear_bias, m.sliding_window, m.window_layers, m.head_dim) == \
        (m.layers, True, True, 128, m.layers // 2, 64)
    assert "attention sinks" in m.source


def test_gpt_oss_attention_bias_and_default_layer_types():
    c = cfg("gpt-oss-20b.json")
    # GptOssConfig forces attention_bias = True; its default layer_types alternate from a sliding layer 0
    c2 = {k: v for k, v in c.items() if k != "layer_types"} | {"attention_bias": False}
    a, b = from_hf_config(c, "a"), from_hf_config(c2, "b")
    assert (b.params, b.window_layers, b.qkv_bias) == (a.params, a.window_layers, True)
    # an odd layer count: layers 0, 2, ..., 22 of 23 slide
    c3 = {**c2, "num_hidden_layers": 23}
    assert from_hf_config(c3, "c").window_layers == 12


def test_rope_parameters_read_like_rope_scaling():
    # transformers v5 writes rope_scaling as rope_parameters: Llama-3.1 still trains at 8192, not parsim's default 4096
    c = cfg("llama3.1-8b.json")
    c2 = {k: v for k, v in c.items() if k != "rope_scaling"} | {"rope_parameters": c["rope_scaling"]}
    m = from_hf_config(c2, "v5")
    assert m.seq_len == 8192 and "rope_parameters.original_max_position_embeddings" in m.source


def test_seq_len_never_max_position_embeddings():
    # Llama-3.1: max_position_embeddings 131072, rope_scaling.original_max_position_embeddings 8192.
    m = load_model(str(HF / "llama3.1-8b.json"))
    assert m.seq_len == 8192 and "original_max_position_embeddings" in m.source
    # Phi-3-128k: the original length is a top-level key.
    assert load_model(str(HF / "phi3-mini-128k.json")).seq_len == 4096
    # Without it: the stated default 4096, capped at max_position_embeddings (GPT-2: 1024).
    assert load_model(str(HF / "qwen2.5-7b.json")).seq_len == 4096
    assert load_model(str(HF / "gpt2.json")).seq_len == 1024


@pytest.mark.parametrize("preset, file", [("gpt-oss-120b", "gpt-oss-120b.json"), ("gpt-oss-20b", "gpt-oss-20b.json"),
                                          ("mixtral-8x7b", "mixtral-8x7b.json"), ("qwen3-30b-a3b", "qwen3-30b-a3b.json"), ("qwen3-235b-a22b", "qwen3-235b-a22b.json"),
                                          ("qwen3-8b", "qwen3-8b.json"), ("gemma-7b", "gemma-7b.json"),
                                          ("nemotron-340b", "nemotron-4-340b.json"), ("nemotron-8b", "nemotron-3-8b.json")])
def test_presets_match_hf_configs(preset, file):
    p, h = load_model(preset), load_model(str(HF / file))
    assert (p.params, p.active_params) == (h.params, h.active_params)
    assert p.layer_fwd_flops(4096) == h.layer_fwd_flops(4096)


@pytest.mark.parametrize("change, needle", [
    ({"model_type": "deepseek_v3", "kv_lora_rank": 512}, "missing field 'qk_nope_head_dim'"),
    ({"kv_lora_rank": 512}, "kv_lora_rank"),           # latent attention in a family that has none: refused
    ({"q_lora_rank": 1536}, "q_lora_rank"),
    ({"n_routed_experts": 64}, "n_routed_experts"),
    ({"model_type": "mamba"}, "model_type = 'mamba' is not modelled"),
    ({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
      "mlp_only_layers": [0]}, "mlp_only_layers"),
    ({"num_key_value_heads": 0}, "num_key_value_heads (parsim's kv_heads) = 0"),
    ({"hidden_act": "bogus_act"}, "hidden_act = 'bogus_act'"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings = 'false' (str)"),
    ({"tie_word_embeddings": 7}, "tie_word_embeddings = 7 (int)"),
    ({"num_hidden_layers": 1e30}, "num_hidden_layers (parsim's layers) = 1e+30 (float)"),
    ({"hidden_size": 4e30}, "hidden_size (parsim's hidden) = 4e+30 (float)"),
    ({"vocab_size": 10 ** 19}, "vocab_size (parsim's vocab) = 10,000,000,000,000,000,000"),
    ({"num_hidden_layers": 10 ** 6}, "num_hidden_layers (parsim's layers) = 1,000,000, expected an integer in [1, 10,000]"),
    ({"intermediate_size": "14336"}, "intermediate_size (parsim's ffn_hidden) = '14336' (str)"),
])
def test_hf_refusals_name_the_field(change, needle):
    c = {**cfg("llama3.1-8b.json"), **change}
    with pytest.raises(ParsimError) as e:
        from_hf_config(c, "x")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_deepseek_v3_read_with_latent_attention():
    # DeepSeek-V3 (arXiv 2412.19437: 671 B total, 37 B activated; the MTP module's 14 B not counted). Per layer:
    # attention q_down 7168·1536 + q_norm 1536 + q_up 1536·128·192 + kv_down 7168·576 + kv_norm 512 + kv_up
    # 512·128·256 + out 128·128·7168 = 187,107,328; norms 2·7168; 3 dense MLPs 3·7168·18432 = 396,361,728; 58 MoE
    # layers of router 7168·256 + 257 experts (256 routed + 1 shared) x 3·7168·2048; embeddings 2·129280·7168; final norm
    m = load_model(str(HF / "deepseek-v3.json"))
    per_layer = 187_107_328 + 2 * 7168
    total = (61 * per_layer + 3 * 3 * 7168 * 18432 + 58 * (7168 * 256 + 257 * 3 * 7168 * 2048)
             + 2 * 129280 * 7168 + 7168)
    assert m.params == total == 671_026_404_352
    assert m.attn_params == 187_107_328 and m.attention == "MLA"
    # active: 58 MoE layers with 8 + 1 experts, the rest as counted
    assert m.active_params == total - 58 * 248 * 3 * 7168 * 2048
    assert (m.moe_layers, m.moe_first_dense, m.shared_experts, m.head_dim, m.v_head_dim) == (58, 3, 1, 192, 128)
    assert load_model("deepseek-v3").params == m.params


def test_latent_attention_flops_by_hand():
    # one DeepSeek-V3 layer's attention per sequence of 4096 tokens (hardware FLOPs, causal flash): projections
    # 2·4096·(7168·1536 + 1536·24576 + 7168·576 + 512·32768 + 16384·7168) and the core 0.5·4·4096²·128·(192+128)/2
    # (QKᵀ over 192 dims, AV over 128, per head, causal half)
    from parsim.layer import flops, layer_ops
    m = load_model("deepseek-v3")
    ops = [op for op in layer_ops(m, 1, 4096, 1, False, True, 0) if op.name in
           ("q_down", "q_up", "kv_down", "kv_up", "attn_out", "attn_core_flash")]
    proj = 2 * 4096 * (7168 * 1536 + 1536 * 24576 + 7168 * 576 + 512 * 32768 + 16384 * 7168)
    core = 0.5 * 2 * 4096 * 4096 * 128 * (192 + 128)
    assert flops(ops) == pytest.approx(proj + core, rel=1e-12)


@pytest.mark.parametrize("change, needle", [
    ({"moe_layer_freq": 2}, "moe_layer_freq = 2 is not modelled"),
    ({"qk_rope_head_dim": 0}, "qk_rope_head_dim = 0, expected 1..head_dim - 1"),
    ({"n_routed_experts": "256"}, "n_routed_experts (parsim's experts) = '256' (str)"),
])
def test_deepseek_refusals_name_the_field(change, needle):
    with pytest.raises(ParsimError) as e:
        from_hf_config({**cfg("deepseek-v3.json"), **change}, "x")
    assert needle in str(e.value) and "\n" not in str(e.value)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "parsim", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("change", [{"num_key_value_heads": 0}, {"hidden_act": "bogus_act"},
                                    {"tie_word_embeddings": "false"}, {"num_hidden_layers": 1e30},
                                    {"hidden_size": 4e30}, {"vocab_size": 10 ** 19}])
def test_cli_bad_hf_config_one_line_exit_2(tmp_path, change):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({**cfg("llama3.1-8b.json"), **change}))
    r = run_cli("predict", "--model", str(f), "--gpus", "8")
    assert r.returncode == 2, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- ModelSpec validates its own fields (the Python API) -------------------------------------

BASE = dict(name="m", layers=2, hidden=64, heads=4, kv_heads=4, ffn_hidden=128, vocab=100, seq_len=32)


@pytest.mark.parametrize("field, value, needle", [
    ("tied_embeddings", "no", "tied_embeddings = 'no' (str), expected true or false"),
    ("layers", 2.0, "layers = 2.0 (float)"),
    ("layers", True, "layers = True (bool)"),
    ("hidden", None, "hidden = None"),
    ("head_dim", 0, "head_dim = 0"),
    ("activation", "relu", "activation = 'relu'"),
    ("norm", "batchnorm", "norm = 'batchnorm'"),
    ("position", "sinusoid", "position = 'sinusoid'"),
    ("kv_heads", 3, "not divisible by kv_heads"),
    ("top_k", 2, "without experts"),
    ("capacity_factor", 1.25, "without experts"),
    ("seq_len", 2 ** 30, "seq_len = 1,073,741,824"),
    ("name", "x" * 5000, "expected a string of 1-200 characters"),
])
def test_modelspec_field_validation(field, value, needle):
    with pytest.raises(ParsimError) as e:
        ModelSpec(**{**BASE, field: value})
    assert needle in str(e.value)


@pytest.mark.parametrize("moe, needle", [
    (dict(experts=4, top_k=5), "top_k = 5"),
    (dict(experts=4, top_k=0), "top_k = 0"),
    (dict(experts=4, top_k=1, capacity_factor=float("nan")), "capacity_factor = nan"),
    (dict(experts=4, top_k=1, capacity_factor=0.5), "capacity_factor = 0.5"),
    (dict(experts=4, top_k=1, moe_first_dense=2), "no layer is an MoE layer"),
])
def test_moe_field_validation(moe, needle):
    with pytest.raises(ParsimError, match=needle):
        ModelSpec(**{**BASE, **moe})


_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 2 ** 70), st.floats(allow_nan=True),
                    st.text(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(set(MODEL_LIMITS) | {"tied_embeddings", "qkv_bias", "activation", "norm", "position",
                                             "capacity_factor", "qk_norm"})), _values)
def test_modelspec_any_field_value_is_valid_or_one_line_parsim_error(field, value):
    try:
        m = ModelSpec(**{**BASE, field: value})
    except ParsimError as e:
        assert "\n" not in str(e)
        return
    assert m.params > 0 and m.active_params > 0 and math.isfinite(m.layer_fwd_flops())


# ---- parameter and FLOP arithmetic ---------------------------------------------------------

def test_moe_flops_per_token_is_6_n_active_plus_attention():
    # Mixtral-8x7B at s = 4096, no recompute. A token passes through the attention projections
    # (2·4096·4096 + 2·4096·1024 = 41,943,040), the router (4096·8 = 32,768) and top-2 experts
    # (2 · 3·4096·14336 = 352,321,536) in each of 32 layers, and the logits 4096·32000 = 131,072,000:
    # N_matmul = 32·394,297,344 + 131,072,000 = 12,748,587,008 (= active params 12,879,925,248 minus the
    # embedding table 131,072,000 and the 65 RMSNorm weights of 4096: 266,240).
    # Attention core: 3 passes · 4·s·q_dim per token per layer = 12·4096·4096·32.
    m = load_model("mixtral-8x7b")
    n_matmul = 32 * (41_943_040 + 32_768 + 352_321_536) + 131_072_000
    assert n_matmul == m.active_params - 131_072_000 - 65 * 4096
    per_token = m.step_flops(1, "none", 4096) / 4096
    assert per_token == pytest.approx(6 * n_matmul + 12 * 4096 * 4096 * 32, rel=1e-12)


def test_dense_flops_per_token_uses_head_dim():
    # Qwen3-4B: q_dim = 32·128 = 4096 != hidden 2560. Per layer: q,o 2·2560·4096, k,v 2·2560·1024,
    # MLP 3·2560·9728 -> 20,971,520 + 5,242,880 + 74,711,040 = 100,925,440; 36 layers + logits 2560·151936
    # (tied, still a GEMM) = 3,633,315,840 + 388,956,160 = 4,022,272,000 (params minus the 2·36+1 RMSNorms of
    # 2560 and the 2·36 q/k norms of 128: 4,022,468,096 - 186,880 - 9,216). Attention: 12·s·4096 per layer.
    m = load_model(str(HF / "qwen3-4b.json"))
    n_matmul = 36 * 100_925_440 + 2560 * 151_936
    assert n_matmul == m.params - 73 * 2560 - 72 * 128
    s = 4096
    assert m.step_flops(1, "none", s) / s == pytest.approx(6 * n_matmul + 36 * 12 * s * 4096, rel=1e-12)


def test_moe_30b_does_not_fit_8_h100_with_plain_dp():
    # Qwen3-30B-A3B: 30,532,122,624 params × (2 weights + 2 grads + 12 fp32 Adam state) bytes = 455.0 GiB per GPU
    # (DeepSpeed's accounting, 16 B/param; the Megatron default adds fp32 main grads: 18 B/param = 511.8 GiB).
    r = predict("qwen3-30b-a3b", "dgx-h100", Plan(dp=8, micro_batch=1, global_batch=8), gpus=8, accounting="deepspeed")
    states = sum(r.memory_breakdown_GiB[k] for k in ("weights", "grads", "optimizer"))
    assert states == pytest.approx(30_532_122_624 * 16 / 2 ** 30, rel=1e-9)
    assert 454 < states < 456 and not r.fits
    assert r.params_total == 30_532_122_624 and r.params_active == 3_353_032_704


def test_predict_json_header_has_seq_len_and_params():
    r = run_cli("predict", "--model", str(HF / "llama3.1-8b.json"), "--gpus", "8", "--tp", "8", "--format", "json")
    d = json.loads(r.stdout)
    assert d["plan"]["seq_len"] == 8192 and d["seq_len"] == 8192
    assert d["params_total"] == d["params_active"] == 8_030_261_248
    t = run_cli("predict", "--model", "mixtral-8x7b", "--gpus", "8", "--tp", "8")
    assert "params total 46,702,792,704  active 12,879,925,248  seq_len 4096" in t.stdout


def test_hf_errors_name_the_files_fields(tmp_path):
    # trial 2026-11-30: num_key_value_heads = 5 with 32 heads said "... is not divisible by kv_heads (5)", never naming
    # the file's num_key_value_heads
    c = dict(model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=5,
             intermediate_size=14336, num_hidden_layers=32, vocab_size=128256, max_position_embeddings=8192)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(c))
    with pytest.raises(ParsimError, match=r"num_attention_heads \(parsim's heads\) \(32\) is not divisible by "
                                          r"num_key_value_heads \(parsim's kv_heads\) \(5\)"):
        load_model(str(p))


@pytest.mark.parametrize("change, needle", [
    # trial 2026-11-30: a string count crashed the sinks note with a TypeError traceback (exit 1)
    ({"num_local_experts": "128"}, "num_local_experts (parsim's experts) = '128' (str)"),
    ({"num_local_experts": [128]}, "num_local_experts (parsim's experts) = [128] (list)"),
    ({"num_attention_heads": "64"}, "num_attention_heads (parsim's heads) = '64' (str)"),
    ({"num_local_experts": 0}, "num_local_experts = 0: expected at least 1 (model_type gpt_oss is a mixture of experts)"),
    # two top-k fields that disagree: refused, never one silently taken
    ({"experts_per_token": 2}, "num_experts_per_tok = 4 and experts_per_token = 2 disagree"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": "4096"}},
     "rope_scaling.original_max_position_embeddings (parsim's seq_len) = '4096' (str)"),
])
def test_gpt_oss_refusals_name_the_field(change, needle):
    with pytest.raises(ParsimError) as e:
        from_hf_config({**cfg("gpt-oss-20b.json"), **change}, "x")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_gpt_oss_says_what_it_does_not_price():
    m = from_hf_config({**cfg("gpt-oss-20b.json"), "attention_bias": False}, "x")
    assert "attention_bias false in the file" in m.source and "quantization_config mxfp4" in m.source
    assert m.qkv_bias and m.linear_bias


def test_torch_backend_refuses_latent_attention_before_spawning():
    # the torch GPT builds standard attention only: a DeepSeek-V3 run is refused in one line, never run as MHA
    from backends.torchdist.buildable import check_buildable
    with pytest.raises(ParsimError, match="does not build multi-head latent attention"):
        check_buildable(load_model("deepseek-v3"))
    check_buildable(load_model("gpt-tiny"))


def test_deepseek_v2_lite_full_rank_queries_match_the_paper():
    # DeepSeek-V2 paper (arXiv 2405.04434, Appendix B): DeepSeek-V2-Lite has 15.7 B parameters, 2.4 B activated per
    # token; 27 layers, hidden 2048, 16 heads, no query compression (q_lora_rank null), kv latent 512, the first layer
    # dense (ffn 10944), then 64 routed experts (top-6) + 2 shared of width 1408. The activated count leaves the input
    # embedding out (102400 x 2048), as the gpt-oss card does.
    c = dict(model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
             num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64,
             n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=512,
             q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400,
             max_position_embeddings=163840, tie_word_embeddings=False, hidden_act="silu")
    m = from_hf_config(c, "v2-lite")
    assert m.params / 1e9 == pytest.approx(15.7, abs=0.05)
    assert (m.active_params - m.vocab * m.hidden) / 1e9 == pytest.approx(2.4, abs=0.06)
    assert m.q_lora_rank == 0 and "latents q none" in m.summary()
