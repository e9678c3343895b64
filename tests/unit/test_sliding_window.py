"""Sliding-window attention (a config field that changes the attention FLOPs): read from Hugging Face configs and
model files, priced as the windowed causal share of the score square, refused by the torch backend."""
import dataclasses
import json

import pytest

from parsim.errors import ParsimError
from parsim.layer import window_share
from parsim.model import from_hf_config, load_model

# Mistral-7B-v0.1's config.json (architecture fields, https://huggingface.co/mistralai/Mistral-7B-v0.1)
MISTRAL_7B_V01 = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
                  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
                  "sliding_window": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
                  "tie_word_embeddings": False, "hidden_act": "silu"}


def test_window_share_arithmetic():
    # causal pairs with a window w over s tokens, continuous count: w·s - w²/2, against s²/2
    assert float(window_share(4096, 32768)) == pytest.approx(2 / 8 - 1 / 64)      # 0.234375
    assert float(window_share(2048, 4096)) == pytest.approx(0.75)                   # w = s/2: 1 - 1/4
    assert float(window_share(8192, 4096)) == 1.0                                   # window >= s: no effect
    assert float(window_share(None, 4096)) == 1.0


def test_mistral_config_keeps_its_window_and_its_parameter_count():
    m = from_hf_config(MISTRAL_7B_V01, "mistral-7b-v0.1")
    # 7,241,732,096: embeddings 2 x 32000 x 4096 (untied) + 32 x (attention 41,943,040 + SwiGLU 176,160,768 +
    # 2 norms 8,192) + final norm 4,096 (the model card's 7.24 B)
    assert m.params == 7_241_732_096
    assert m.sliding_window == 4096
    assert "sliding-window attention over 4096 keys" in m.source and "not modelled" not in m.source
    # at the default length (4096) the window changes nothing yet: said (trial 2026-11-30)
    assert "(no effect at seq_len 4096: a longer --seq-len meets it)" in m.source
    # the window is kept when the training length defaults below it: a longer --seq-len meets it
    full = dataclasses.replace(m, name="full", sliding_window=None)
    s = 32768
    ratio = m.attn_core_fwd_flops(s, flash=True) / full.attn_core_fwd_flops(s, flash=True)
    assert ratio == pytest.approx(0.234375)
    # non-attention FLOPs are untouched: the layer's difference is the core's difference
    d_layer = full.model_layer_fwd_flops(s) - m.model_layer_fwd_flops(s)
    d_core = full.attn_core_fwd_flops(s, flash=True) - m.attn_core_fwd_flops(s, flash=True)
    assert d_layer == pytest.approx(d_core)
    # without flash the score square is computed whole and masked: executed FLOPs unchanged, model FLOPs windowed
    assert m.attn_core_fwd_flops(s, flash=False) == pytest.approx(full.attn_core_fwd_flops(s, flash=False))


def test_use_sliding_window_false_and_partial_windows():
    qwen = dict(MISTRAL_7B_V01, model_type="qwen2")
    off = dict(qwen, use_sliding_window=False)
    assert from_hf_config(off, "qwen-like").sliding_window is None
    # Qwen2-style window on the upper layers only (layer_idx >= max_window_layers): layers 28..31, 4 of 32
    part = from_hf_config(dict(qwen, use_sliding_window=True, max_window_layers=28), "qwen2-like")
    assert (part.sliding_window, part.window_layers) == (4096, 4)
    assert "on 4 of 32 layers (max_window_layers 28: layers from 28 on), the others global" in part.source
    # Mistral's attention windows every layer whatever else the file says (trial 2026-11-30: use_sliding_window false,
    # max_window_layers 16 were read as a Qwen2 file's)
    for extra in ({"use_sliding_window": False}, {"max_window_layers": 16}):
        m = from_hf_config(dict(MISTRAL_7B_V01, **extra), "mistral")
        assert (m.sliding_window, m.window_layers) == (4096, None), extra
    with pytest.raises(ParsimError, match="sliding_window = 'x'"):
        from_hf_config(dict(MISTRAL_7B_V01, sliding_window="x"), "bad")


def test_model_file_window_is_checked(tmp_path):
    spec = {"layers": 2, "hidden": 64, "heads": 4, "ffn_hidden": 128, "vocab": 100, "seq_len": 256,
            "activation": "swiglu", "sliding_window": 64}
    p = tmp_path / "m.json"
    p.write_text(json.dumps(spec))
    assert load_model(str(p)).sliding_window == 64
    p.write_text(json.dumps(dict(spec, sliding_window=0)))
    with pytest.raises(ParsimError, match="sliding_window = 0"):
        load_model(str(p))


def test_predicted_step_is_faster_with_the_window_and_the_backend_refuses_it(tmp_path, capsys):
    from parsim.cli import main
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(MISTRAL_7B_V01))
    full = tmp_path / "full.json"
    full.write_text(json.dumps({k: v for k, v in MISTRAL_7B_V01.items() if k != "sliding_window"}))
    args = ["predict", "--gpus", "8", "--tp", "1", "--seq-len", "32768", "--global-batch", "8", "--zero", "3",
            "--recompute", "full", "--format", "json"]
    assert main(args + ["--model", str(cfg)]) == 0
    win = json.loads(capsys.readouterr().out)
    assert main(args + ["--model", str(full)]) == 0
    ful = json.loads(capsys.readouterr().out)
    assert win["breakdown_s"]["compute"] < ful["breakdown_s"]["compute"]
    assert win["model_tflops_per_gpu"] * win["step_time_s"] < ful["model_tflops_per_gpu"] * ful["step_time_s"]
    assert main(["run", "--model", str(cfg), "--nproc", "2", "--dry-run"]) == 2
    assert "does not build sliding-window attention" in capsys.readouterr().err


def test_hf_windows_read_as_their_models_use_them(tmp_path):
    # trial 2026-11-30. Gemma-2 alternates sliding-window and global layers (Gemma2DecoderLayer: is_sliding = not
    # layer_idx % 2), which no config field says: its stock config was priced with the 4096 window on every layer (17%
    # too fast at 32k). Qwen2's max_window_layers = num_hidden_layers windows no layer (HF: use_sliding_window and
    # layer_idx >= max_window_layers) but was read as every layer windowed (29% too fast at 32k). A layer_types list of
    # one kind says what every layer does.
    import json
    from parsim.errors import ParsimError
    from parsim.model import load_model
    from pathlib import Path
    here = Path(__file__).resolve().parents[1] / "data" / "hf_configs"
    g = load_model(str(here / "gemma2-9b.json"))
    # 42 layers, 0, 2, ..., 40 windowed: 21
    assert (g.sliding_window, g.window_layers) == (4096, 21) and "Gemma-2 alternates" in g.source
    qwen = dict(model_type="qwen2", hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, num_hidden_layers=28, vocab_size=152064, max_position_embeddings=32768,
                sliding_window=4096, use_sliding_window=True, hidden_act="silu")

    def load(**kw):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(dict(qwen, **kw)))
        return load_model(str(p))
    assert load(max_window_layers=28).sliding_window is None
    assert "no layer uses it" in load(max_window_layers=28).source
    assert load(max_window_layers=0).sliding_window == 4096           # every layer from index 0
    assert load(max_window_layers=0).window_layers is None            # ... all 28: no share to carry
    assert load(max_window_layers=14).window_layers == 14              # layers 14..27
    assert load(layer_types=["full_attention"] * 28).sliding_window is None
    assert load(layer_types=["sliding_attention"] * 28, max_window_layers=0).sliding_window == 4096
    mixed = load(layer_types=["sliding_attention", "full_attention"] * 14)
    assert (mixed.sliding_window, mixed.window_layers) == (4096, 14)
    # layer_types wins over max_window_layers (transformers derives it from them); use_sliding_window false: none
    assert load(layer_types=["sliding_attention"] * 7 + ["full_attention"] * 21, max_window_layers=0).window_layers == 7
    assert load(max_window_layers=0, use_sliding_window=False).sliding_window is None
    # no family parsim reads uses sliding_window_pattern (Gemma 3's): refused, not read as Gemma-2's alternation
    with pytest.raises(ParsimError, match="sliding_window_pattern"):
        load(sliding_window_pattern=6)
    # transformers' Qwen2Config defaults use_sliding_window to false: a file without it has no window (trial
    # 2026-11-30: windowed 14 of 28); wrongly typed fields are refused, not ignored
    assert load_model(str(_write(tmp_path, {k: v for k, v in dict(qwen, max_window_layers=14).items()
                                            if k != "use_sliding_window"}))).sliding_window is None
    for bad, field in (({"use_sliding_window": "false"}, "use_sliding_window = 'false'"),
                       ({"use_sliding_window": None, "max_window_layers": 14}, None),
                       ({"max_window_layers": "14"}, "max_window_layers = '14'"),
                       ({"max_window_layers": 14.0}, "max_window_layers = 14.0")):
        if field is None:
            assert load(**bad).sliding_window is None            # null: transformers' default, off
            continue
        with pytest.raises(ParsimError, match=field):
            load(**bad)
    # Llama's attention has no window: the field is said unused; layer_types on a family that does not read it refused
    llama = dict(qwen, model_type="llama")
    assert load_model(str(_write(tmp_path, llama))).sliding_window is None
    assert "no sliding window" in load_model(str(_write(tmp_path, llama))).source
    with pytest.raises(ParsimError, match="layer_types is not read by model_type 'llama'"):
        load_model(str(_write(tmp_path, dict(llama, layer_types=["full_attention"] * 28))))
    # malformed lists and patterns refused naming the field and what was expected
    with pytest.raises(ParsimError, match="layer_types .*entry 'chunked_attention'.*expected a list of 28 entries"):
        load(layer_types=["chunked_attention"] * 28)
    with pytest.raises(ParsimError, match=r"\.\.\. \(27 entries\): expected a list of 28 entries"):
        load(layer_types=["full_attention"] * 27)
    with pytest.raises(ParsimError, match="entry .None."):
        load(layer_types=[None] + ["full_attention"] * 27)
    with pytest.raises(ParsimError, match="sliding_window is null"):
        load(layer_types=["sliding_attention"] * 28, sliding_window=None)
    # no model_type: said so, not "did you mean falcon?"
    p = tmp_path / "nomt.json"
    p.write_text(json.dumps({k: v for k, v in qwen.items() if k != "model_type"}))
    with pytest.raises(ParsimError, match="no model_type field") as e:
        load_model(str(p))
    assert "did you mean" not in str(e.value)


def _write(tmp_path, cfg):
    p = tmp_path / "w.json"
    p.write_text(json.dumps(cfg))
    return p


def test_a_window_on_some_layers_prices_the_layer_weighted_span():
    # Gemma-2 9B at 32k: 21 of 42 layers see 4096 keys (share 2/8 - 1/64 = 0.234375 of the causal half), 21 the whole
    # prefix: the mean layer's core does (21 x 0.234375 + 21) / 42 = 0.6171875 of the global work
    from pathlib import Path
    here = Path(__file__).resolve().parents[1] / "data" / "hf_configs"
    g = load_model(str(here / "gemma2-9b.json"))
    glob = dataclasses.replace(g, sliding_window=None, window_layers=None)
    allw = dataclasses.replace(g, window_layers=None)
    s = 32768
    core = lambda m: m.attn_core_fwd_flops(s, flash=True)
    assert core(g) / core(glob) == pytest.approx((21 * 0.234375 + 21) / 42)
    assert core(allw) < core(g) < core(glob)
    # up to the window nothing changes
    assert g.attn_core_fwd_flops(4096, flash=True) == pytest.approx(glob.attn_core_fwd_flops(4096, flash=True))
    # a model file states it the same way; window_layers needs a window and at most `layers`
    with pytest.raises(ParsimError, match="window_layers = 3 without sliding_window"):
        dataclasses.replace(glob, window_layers=3)
    with pytest.raises(ParsimError, match="window_layers = 43, expected at most layers \\(42\\)"):
        dataclasses.replace(g, window_layers=43)
    assert "sliding window 4096 on 21 of 42 layers" in g.summary()


def test_pipeline_stages_say_when_the_windowed_layers_may_sit_together(tmp_path):
    # trial 2026-11-30: Qwen2 with max_window_layers 14 of 28 on pp 2 prices both stages with the mean layer's span
    # (0.617 of the global core at 32k: (14 x 0.234375 + 14) / 28) while stage 0 holds only global layers, ~12% slower;
    # the note says so with the factor 1 / 0.617 = 1.62
    from parsim.plan import Plan
    from parsim.predict import predict
    cfg = dict(MISTRAL_7B_V01, model_type="qwen2", num_hidden_layers=28, use_sliding_window=True, max_window_layers=14)
    m = load_model(str(_write(tmp_path, cfg)))
    plan = Plan(dp=2, tp=2, pp=2, micro_batch=1, global_batch=16, seq_len=32768, recompute="full")
    notes = [n for n in predict(m, "dgx-h100", plan, gpus=8).notes if n.startswith("window:")]
    assert len(notes) == 1 and "0.617 of the global core" in notes[0] and "1.62x" in notes[0]
    # no note without pp, nor when every layer is windowed
    assert not [n for n in predict(m, "dgx-h100", plan.with_(pp=1, dp=4), gpus=8).notes if n.startswith("window:")]
    allw = load_model(str(_write(tmp_path, dict(cfg, max_window_layers=0))))
    assert not [n for n in predict(allw, "dgx-h100", plan, gpus=8).notes if n.startswith("window:")]


def test_attention_note_when_head_dim_is_not_the_curves():
    # the profiles' flash-attention curves are head-dim-128 benchmarks: a 64-wide head (gpt-oss) is said, a 128 one not
    from parsim.plan import Plan
    from parsim.predict import predict
    plan = Plan(dp=8, tp=1, pp=1, micro_batch=1, global_batch=8, ep=8)
    notes = [n for n in predict(load_model("gpt-oss-20b"), "dgx-h100", plan, gpus=8).notes if n.startswith("attention:")]
    assert len(notes) == 1 and "heads are 64 wide" in notes[0]
    dense = Plan(dp=8, tp=1, pp=1, micro_batch=1, global_batch=8)
    assert not [n for n in predict(load_model("llama3-8b"), "dgx-h100", dense, gpus=8).notes if n.startswith("attention:")]
    # materialised scores (no flash): no kernel curve is used, nothing to say
    assert not [n for n in predict(load_model("gpt-oss-20b"), "dgx-h100", plan.with_(flash_attention=False), gpus=8).notes
                if n.startswith("attention:")]
