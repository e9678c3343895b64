"""ModelSpec: what the model is (a decoder-only transformer), and what follows from it.

Parameter counts, FLOPs per token and activation bytes are derived here from the
shapes; pricing them on a device is ``parsim.costs``' job.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from parsim.errors import ParsimError, closest

DATA = Path(__file__).parent / "data"
KEYS = ("name", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len",
        "activation", "tied_embeddings")
ACTIVATIONS = ("gelu", "swiglu")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer.

    GELU models are GPT-style (biases, LayerNorm, learned positions); SwiGLU models are
    Llama-style (no biases, RMSNorm, rotary positions).
    """
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    seq_len: int
    activation: str = "gelu"
    tied_embeddings: bool = True

    def __post_init__(self):
        for k in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ParsimError(f"model {self.name}: {k} = {v!r}, expected a positive integer")
        if self.activation not in ACTIVATIONS:
            raise ParsimError(f"model {self.name}: activation = {self.activation!r}, expected one of {', '.join(ACTIVATIONS)}")
        if self.hidden % self.heads:
            raise ParsimError(f"model {self.name}: hidden ({self.hidden}) is not divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ParsimError(f"model {self.name}: heads ({self.heads}) is not divisible by kv_heads ({self.kv_heads})")

    # ---- shapes ---------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads · head_dim (= hidden for multi-head attention)."""
        return self.kv_heads * self.head_dim

    @property
    def gated(self) -> bool:
        return self.activation == "swiglu"

    # ---- parameters -----------------------------------------------------------------
    @property
    def attn_matmul_params(self) -> int:
        """Q and output projections h·h each, K and V h·kv_dim each."""
        return 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim

    @property
    def mlp_matmul_params(self) -> int:
        """GELU: up and down h·f; SwiGLU: gate, up and down h·f."""
        return (3 if self.gated else 2) * self.hidden * self.ffn_hidden

    @property
    def params_per_layer(self) -> int:
        h, f = self.hidden, self.ffn_hidden
        if self.gated:   # no biases, two RMSNorm weights
            small = 2 * h
        else:            # biases of qkv, proj, fc1, fc2 and two LayerNorms (weight+bias)
            small = (h + 2 * self.kv_dim) + h + f + h + 4 * h
        return self.attn_matmul_params + self.mlp_matmul_params + small

    @property
    def embedding_params(self) -> int:
        """Token embedding, plus learned positions for GPT-style (GELU) models."""
        return self.vocab * self.hidden + (0 if self.gated else self.seq_len * self.hidden)

    @property
    def head_params(self) -> int:
        """Final norm plus the output projection when it is not tied to the embedding."""
        norm = self.hidden if self.gated else 2 * self.hidden
        return norm + (0 if self.tied_embeddings else self.vocab * self.hidden)

    @property
    def params(self) -> int:
        return self.layers * self.params_per_layer + self.embedding_params + self.head_params

    # ---- FLOPs (forward, per sequence of seq_len tokens) ----------------------------
    def layer_fwd_flops(self, seq_len: int | None = None) -> float:
        """2·s·(matmul params) + attention scores and context 2·2·s²·h (full, as Megatron counts).

        For GPT shapes this is 24·s·h² + 4·s²·h (Narayanan et al. 2021, Appendix).
        """
        s = self.seq_len if seq_len is None else seq_len
        return 2.0 * s * (self.attn_matmul_params + self.mlp_matmul_params) + 4.0 * s * s * self.hidden

    def logits_fwd_flops(self, seq_len: int | None = None) -> float:
        """2·s·h·V for the output projection."""
        s = self.seq_len if seq_len is None else seq_len
        return 2.0 * s * self.hidden * self.vocab

    def step_flops(self, sequences: float, recompute: str = "none", seq_len: int | None = None) -> float:
        """FLOPs of one training step over `sequences`: forward + 2×forward backward,
        plus one more forward of every layer with full recompute (and of the attention
        core with selective). With full recompute and GPT shapes this equals
        96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) (Narayanan et al. 2021, eq. in §5.1).
        """
        s = self.seq_len if seq_len is None else seq_len
        layer, logits = self.layer_fwd_flops(s), self.logits_fwd_flops(s)
        extra = {"none": 0.0, "selective": 4.0 * s * s * self.hidden, "full": layer}[recompute]
        return sequences * (self.layers * (3 * layer + extra) + 3 * logits)

    def flops_per_token(self, seq_len: int | None = None) -> dict:
        """FLOPs per token, by pass: forward, backward (2× forward: input and weight gradients),
        and what recompute adds (full: one more forward of every layer; selective: of the
        attention core only, 4·s·h per token per layer)."""
        s = self.seq_len if seq_len is None else seq_len
        fwd = (self.layers * self.layer_fwd_flops(s) + self.logits_fwd_flops(s)) / s
        return {"forward": fwd, "backward": 2 * fwd, "recompute_full": self.layers * self.layer_fwd_flops(s) / s,
                "recompute_selective": self.layers * 4.0 * s * self.hidden}

    def to_dict(self) -> dict:
        return asdict(self)


# ---- loading ------------------------------------------------------------------------

def _from_mapping(d: dict, name: str) -> ModelSpec:
    d = dict(d)
    d.setdefault("name", name)
    d.setdefault("kv_heads", d.get("heads"))
    unknown = set(d) - set(KEYS)
    missing = [k for k in KEYS if k not in d and k not in ("activation", "tied_embeddings")]
    if missing:
        raise ParsimError(f"model {name}: missing key(s) {', '.join(missing)}; expected keys {', '.join(KEYS)}")
    if unknown:
        raise ParsimError(f"model {name}: unknown key(s) {', '.join(sorted(unknown))}; expected keys {', '.join(KEYS)}")
    return ModelSpec(**d)


@functools.lru_cache(maxsize=None)
def _presets() -> dict:
    raw = yaml.safe_load((DATA / "models.yaml").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def preset_names() -> list[str]:
    return list(_presets())


def from_hf_config(cfg: dict, name: str = "hf-model") -> ModelSpec:
    """Map a Hugging Face config.json (Llama, Mistral, GPT-2, GPT-NeoX field names)."""
    mt = str(cfg.get("model_type", "")).lower()
    try:
        if "n_embd" in cfg:  # GPT-2
            h = cfg["n_embd"]
            return ModelSpec(name=name, layers=cfg["n_layer"], hidden=h, heads=cfg["n_head"],
                             kv_heads=cfg["n_head"], ffn_hidden=cfg.get("n_inner") or 4 * h,
                             vocab=cfg["vocab_size"], seq_len=cfg.get("n_positions", cfg.get("n_ctx", 1024)),
                             activation="gelu", tied_embeddings=bool(cfg.get("tie_word_embeddings", True)))
        act = str(cfg.get("hidden_act", "gelu")).lower()
        gated = act in ("silu", "swish", "swiglu") and mt != "gpt_neox"
        return ModelSpec(name=name, layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                         heads=cfg["num_attention_heads"],
                         kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                         ffn_hidden=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                         seq_len=cfg.get("max_position_embeddings", 2048),
                         activation="swiglu" if gated else "gelu",
                         tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as e:
        raise ParsimError(f"Hugging Face config {name}: missing field {e.args[0]!r} "
                          f"(model_type {mt or '?'}); expected Llama, Mistral, GPT-2 or GPT-NeoX fields") from None


def load_model(spec) -> ModelSpec:
    """A preset name, a YAML/JSON file with the ModelSpec keys, or a Hugging Face config.json."""
    if isinstance(spec, ModelSpec):
        return spec
    presets = _presets()
    if not isinstance(spec, (str, Path)):
        raise ParsimError(f"model = {spec!r:.60}: expected a ModelSpec, a preset name or a file path")
    if spec in presets:
        return _from_mapping(presets[spec], spec)
    from parsim.fileio import exists, read_user_file
    from parsim.limits import shown
    p = Path(str(spec))
    if not exists(p):
        raise ParsimError(f"unknown model {shown(str(spec))}: not a preset and no such file"
                          f"{closest(str(spec)[:100], presets)} (presets: {', '.join(presets)})")
    d = read_user_file(p, "model")   # regular file, size, nesting, no aliases or duplicate keys
    if not isinstance(d, dict):
        raise ParsimError(f"model file {p}: expected a mapping of ModelSpec keys, got {type(d).__name__}")
    if "num_hidden_layers" in d or "n_layer" in d:
        return from_hf_config(d, name=p.stem if p.stem != "config" else p.parent.name or "hf-model")
    return _from_mapping(d, d.get("name", p.stem))
