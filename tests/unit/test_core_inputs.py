"""Units, model presets and loaders, plan validation: hand-derivable goldens."""
import json

import pytest

from parsim.errors import ParsimError
from parsim.model import from_hf_config, load_model, preset_names
from parsim.plan import Plan, validate
from parsim.units import parse_rate, parse_size, parse_size_range, parse_time


def test_units_golden():
    assert parse_size("64MiB") == 64 * 2 ** 20
    assert parse_size("1GB") == 10 ** 9
    assert parse_rate("400Gbps") == 400e9 / 8          # bits -> bytes
    assert parse_rate("25GB/s") == 25e9
    assert parse_rate("1GiB/s") == 2 ** 30
    assert parse_time("2us") == pytest.approx(2e-6)
    assert parse_size_range("1KiB:8KiB") == [1024, 2048, 4096, 8192]
    for bad in ("12 parsecs", "MiB", "-3GB"):
        with pytest.raises(ParsimError):
            parse_size(bad)


def test_presets_exist():
    names = set(preset_names())
    for n in ["megatron-1.7b", "megatron-1t", "gpt3-125m", "gpt3-175b", "llama2-7b", "llama2-13b", "llama2-70b",
              "llama3-8b", "llama3-70b", "llama3-405b", "gpt-tiny", "gpt-small"]:
        assert n in names


def test_llama2_7b_params_golden():
    # 32 layers × (4·4096² attention + 3·4096·11008 MLP + 2·4096 norms) + 2·32000·4096 (embed + head) + 4096 (final norm)
    per_layer = 4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096
    expected = 32 * per_layer + 2 * 32000 * 4096 + 4096
    assert expected == 6_738_415_616          # the published Llama-2-7B count
    assert load_model("llama2-7b").params == expected


def test_llama3_gqa_params_golden():
    m = load_model("llama3-8b")
    # K and V are kv_heads·head_dim = 8·128 = 1024 wide.
    assert m.kv_dim == 1024
    per_layer = 2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert m.params == 32 * per_layer + 2 * 128256 * 4096 + 4096 == 8_030_261_248


def test_step_flops_is_narayanan_formula():
    # 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) with full recompute, GPT shapes (Narayanan et al. 2021 §5.1)
    m = load_model("megatron-18.4b")
    B, s, l, h, V = 1024, 2048, 40, 6144, 51200
    assert m.step_flops(B, "full") == pytest.approx(96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h)), rel=1e-12)
    # Without recompute the factor is 72 instead of 96 on the layers, 6·B·s·h·V on the head.
    assert m.step_flops(B, "none") == pytest.approx(72 * B * s * l * h * h * (1 + s / (6 * h)) + 6 * B * s * h * V, rel=1e-12)


def test_model_file_and_hf_config(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("name: mine\nlayers: 2\nhidden: 128\nheads: 4\nkv_heads: 2\nffn_hidden: 512\nvocab: 1000\n"
                 "seq_len: 256\nactivation: swiglu\ntied_embeddings: false\n")
    m = load_model(str(f))
    assert (m.name, m.kv_heads, m.activation) == ("mine", 2, "swiglu")
    hf = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
          "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192,
          "hidden_act": "silu", "tie_word_embeddings": False}
    assert from_hf_config(hf).params == load_model("llama3-8b").params
    g = tmp_path / "config.json"
    g.write_text(json.dumps({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
                             "n_positions": 1024}))
    assert load_model(str(g)).hidden == 768


@pytest.mark.parametrize("text, msg", [
    ("layers: 2\nhidden: 128\n", "missing key"),
    ("layers: 2\nhidden: 130\nheads: 4\nffn_hidden: 1\nvocab: 1\nseq_len: 1\n", "not divisible by heads"),
    ("layers: 0\nhidden: 128\nheads: 4\nffn_hidden: 1\nvocab: 1\nseq_len: 1\n", r"layers = 0, expected an integer in \[1, 10,000\]"),
    ("[1, 2", "cannot read"),
    ("layers: 2\nhidden: 128\nheads: 4\nffn_hidden: 1\nvocab: 1\nseq_len: 1\ncolour: red\n", "unknown key"),
])
def test_bad_model_files(tmp_path, text, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ParsimError, match=msg):
        load_model(str(f))


def test_unknown_preset_suggests():
    with pytest.raises(ParsimError, match="did you mean llama2-13b"):
        load_model("llama2-13")


M = load_model("llama2-13b")   # 40 layers, 40 heads


@pytest.mark.parametrize("plan, gpus, msg", [
    (dict(dp=4, tp=3, pp=2), 16, r"tp\(3\) \* pp\(2\) \* dp\(4\) = 24 != gpus\(16\)"),
    (dict(dp=1, tp=3, pp=1, global_batch=1), 3, "heads .* not divisible by tp"),
    # 40 layers on 32 stages: not a multiple, and 40 + 2 < 2·32, so some stage would hold no layer
    (dict(dp=1, tp=1, pp=32, global_batch=32), 32, r"layers \(40\) .* cannot be cut into pp·vpp = 32·1 = 32"),
    (dict(dp=2, micro_batch=3, global_batch=8), 2, "global-batch .* not divisible"),
    (dict(pp=2, schedule="interleaved", global_batch=2), 2, "interleaved needs vpp >= 2"),
    (dict(micro_batch=0), 1, "micro-batch = 0: expected a positive integer"),
    (dict(grad_sync="allreduce"), 1, "grad-sync"),
])
def test_plan_validation(plan, gpus, msg):
    # a field out of its own range fails at construction; the rest in the rule book (parsim.rules)
    with pytest.raises(ParsimError, match=msg):
        validate(Plan(**plan), M, gpus)


def test_flops_per_token_golden():
    # Forward ≈ 2·(matmul params) + 4·s·h·l attention per token: the "6N" rule's 2N for the
    # forward pass, plus attention. Llama-2-7B at s = 4096:
    m = load_model("llama2-7b")
    matmul = 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008) + 32000 * 4096          # layers + output head
    f = m.flops_per_token()
    assert f["forward"] == pytest.approx(2 * matmul + 4 * 4096 * 4096 * 32)
    assert f["backward"] == 2 * f["forward"]
    total = f["forward"] + f["backward"] + f["recompute_full"]
    assert total * 4096 * 8 == pytest.approx(m.step_flops(8, "full"))
