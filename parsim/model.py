"""ModelSpec: what the model is (a decoder-only transformer, dense or mixture-of-experts), and what follows.

Parameter counts (total and active per token) and FLOPs per token are derived here from the
shapes; pricing them on a device is ``parsim.costs``' job.

Limits: every size is validated on construction (type, range) against ``parsim.limits.MODEL_LIMITS``
(the one table of bounds, each with its reason there) — sane upper bounds well above any published
model (e.g. 10,000 layers, hidden 2^20, vocabulary 2^24, 2^14 experts), so that nonsense never reaches
an array allocation.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from parsim.errors import ParsimError, closest, unknown_preset
from parsim.limits import MAX_CAPACITY_FACTOR, MODEL_LIMITS

DATA = Path(__file__).parent / "data"
MLP_KINDS = ("gelu", "swiglu", "geglu")        # plain 2-matrix MLP (any pointwise activation) or gated 3-matrix
NORMS = ("layernorm", "rmsnorm")               # LayerNorm: weight + bias (2h); RMSNorm: weight (h)
POSITIONS = ("learned", "rotary", "alibi", "none")
BOOLS = ("tied_embeddings", "qkv_bias", "linear_bias", "qk_norm", "embed_norm", "parallel_block", "dropout")
# Training length of a Hugging Face config without `original_max_position_embeddings`: the
# pre-training length of most open models before long-context extension (Llama 2, Qwen2.5),
# capped at the model's max_position_embeddings. Never max_position_embeddings itself: that is
# the longest context after extension (Llama-3.1: 131,072).
DEFAULT_HF_SEQ_LEN = 4096


def _check_int(model, key, v):
    lo, hi = MODEL_LIMITS[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ParsimError(f"model {model}: {key} = {v!r} ({type(v).__name__}), expected an integer in [{lo}, {hi:,}]")
    if not lo <= v <= hi:
        raise ParsimError(f"model {model}: {key} = {v:,}, expected an integer in [{lo}, {hi:,}] "
                          f"(parsim.limits.MODEL_LIMITS)")


def _choice(model, key, v, options):
    if v not in options:
        raise ParsimError(f"model {model}: {key} = {v!r}, expected one of {', '.join(options)}"
                          f"{closest(str(v), options)}")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, every layer: norm → attention → norm → MLP (or MoE), residuals.

    Fields left None take the style of `activation`: GELU models are GPT-style (biases on every
    projection, LayerNorm, learned positions, dropout), gated models (SwiGLU, GeGLU) Llama-style (no biases,
    RMSNorm, rotary, no dropout). `activation` "gelu" stands for any non-gated 2-matrix MLP (GELU, ReLU,
    squared ReLU: one element-wise kernel between the two GEMMs, the same FLOPs and bytes).
    Attention kind follows kv_heads: MHA (= heads), MQA (1) or GQA.

    MoE (experts > 0): layer i (0-based) is an MoE layer when i >= moe_first_dense and
    (i + 1) % moe_every == 0 (Qwen's decoder_sparse_step); its MLP is `experts` routed experts of
    width expert_ffn_hidden (top_k per token), `shared_experts` always-on experts of the same width
    and a router h×experts. capacity_factor None = dropless; otherwise expert GEMMs are padded to
    capacity_factor·tokens·top_k/experts rows per expert. Routing is assumed balanced.

    Raises ParsimError naming the field for a wrong type, a value out of parsim.limits.MODEL_LIMITS or inconsistent shapes.
    """
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    seq_len: int
    activation: str = "gelu"              # MLP kind: gelu | swiglu | geglu
    tied_embeddings: bool = True
    head_dim: int | None = None           # None: hidden / heads
    qkv_bias: bool | None = None
    linear_bias: bool | None = None       # biases of the attention output and MLP projections
    norm: str | None = None               # layernorm | rmsnorm
    position: str | None = None           # learned | rotary | alibi | none
    max_positions: int | None = None      # learned position table rows (None: seq_len)
    norms_per_layer: int = 2              # Falcon-7B's parallel block has 1
    qk_norm: bool = False                 # RMSNorm of q and k per head (Qwen3)
    embed_norm: bool = False              # a norm after the token embedding (BLOOM)
    parallel_block: bool = False          # attention and MLP read the same input (GPT-J, Falcon, NeoX)
    # Hidden and attention dropout in training (1-byte masks kept for backward; parsim.layer). None: the style of
    # `activation` (GPT-style gelu models train with dropout, gated ones without); Nemotron-4 trains a non-gated
    # MLP without dropout (NeMo's NemotronConfig: hidden_dropout = attention_dropout = 0.0).
    dropout: bool | None = None
    experts: int = 0
    top_k: int = 0
    expert_ffn_hidden: int | None = None  # None: ffn_hidden
    shared_experts: int = 0
    moe_every: int = 1
    moe_first_dense: int = 0
    capacity_factor: float | None = None
    # Sliding-window attention (Mistral 7B v0.1, Longformer-style local attention): each query attends to at most
    # this many keys, itself and the ones before it; None = the whole causal prefix. window_layers: how many of the
    # layers use it (None: all of them); the others attend to the whole prefix - interleaved local/global models
    # (Gemma 2: every other layer; Gemma 3: 5 of 6; Qwen2's max_window_layers: the upper ones). Attention work is
    # linear in each layer's span, so the mean layer carries the layer-weighted span (parsim.layer.window_share).
    sliding_window: int | None = None
    window_layers: int | None = None
    # Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 §2.1; DeepSeek-V3, arXiv 2412.19437 §2.1.1), with
    # kv_lora_rank > 0: K and V are up-projected from a kv_lora_rank-wide latent (plus qk_rope_head_dim shared rotary
    # key dims), Q from a q_lora_rank-wide one (0: directly from the hidden state); each of the `heads` heads has
    # head_dim = nope + rope query/key dims and v_head_dim value dims (kv_heads = heads). None: head_dim.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int | None = None
    source: str = ""                      # where the values came from (e.g. the seq_len's origin)

    def __post_init__(self):
        n = self.name
        if not isinstance(n, str) or not 0 < len(n) <= 200:
            raise ParsimError(f"model name = {str(n)[:40]!r}: expected a string of 1-200 characters")
        _choice(n, "activation", self.activation, MLP_KINDS)
        gpt = self.activation == "gelu"
        dflt = {"qkv_bias": gpt, "linear_bias": gpt, "norm": "layernorm" if gpt else "rmsnorm",
                "position": "learned" if gpt else "rotary", "head_dim": None, "max_positions": self.seq_len,
                "dropout": gpt,
                "expert_ffn_hidden": self.ffn_hidden}
        for k in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len"):
            _check_int(n, k, getattr(self, k))
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ParsimError(f"model {n}: hidden ({self.hidden}) is not divisible by heads ({self.heads}); "
                                  f"give head_dim to decouple them")
            dflt["head_dim"] = self.hidden // self.heads
        for k, v in dflt.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        for k in ("head_dim", "max_positions", "norms_per_layer", "experts", "top_k", "expert_ffn_hidden",
                  "shared_experts", "moe_every", "moe_first_dense", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
                  "v_head_dim"):
            _check_int(n, k, getattr(self, k))
        if self.kv_lora_rank:
            if self.kv_heads != self.heads:
                raise ParsimError(f"model {n}: kv_lora_rank = {self.kv_lora_rank} (latent attention) with kv_heads "
                                  f"({self.kv_heads}) != heads ({self.heads}): expected every head its own K and V")
            if not 0 < self.qk_rope_head_dim < self.head_dim:
                raise ParsimError(f"model {n}: qk_rope_head_dim = {self.qk_rope_head_dim}, expected 1..head_dim - 1 "
                                  f"({self.head_dim - 1}) with latent attention (head_dim = nope + rope dims)")
        elif self.q_lora_rank or self.qk_rope_head_dim or self.v_head_dim != self.head_dim:
            raise ParsimError(f"model {n}: q_lora_rank, qk_rope_head_dim or v_head_dim set without kv_lora_rank: "
                              f"expected them only with latent attention (kv_lora_rank > 0)")
        if self.sliding_window is not None:
            _check_int(n, "sliding_window", self.sliding_window)
        if self.window_layers is not None:
            _check_int(n, "window_layers", self.window_layers)
            if self.sliding_window is None:
                raise ParsimError(f"model {n}: window_layers = {self.window_layers} without sliding_window: expected "
                                  f"a sliding_window for those layers, or no window_layers")
            if self.window_layers > self.layers:
                raise ParsimError(f"model {n}: window_layers = {self.window_layers}, expected at most layers "
                                  f"({self.layers})")
        for k in BOOLS:
            v = getattr(self, k)
            if not isinstance(v, bool):
                raise ParsimError(f"model {n}: {k} = {v!r} ({type(v).__name__}), expected true or false")
        _choice(n, "norm", self.norm, NORMS)
        _choice(n, "position", self.position, POSITIONS)
        if self.heads % self.kv_heads:
            raise ParsimError(f"model {n}: heads ({self.heads}) is not divisible by kv_heads ({self.kv_heads})")
        if self.experts:
            if not 1 <= self.top_k <= self.experts:
                raise ParsimError(f"model {n}: top_k = {self.top_k}, expected 1..experts ({self.experts})")
            if self.moe_layers == 0:
                raise ParsimError(f"model {n}: experts = {self.experts} but no layer is an MoE layer "
                                  f"(layers {self.layers}, moe_every {self.moe_every}, moe_first_dense {self.moe_first_dense})")
        elif self.top_k or self.shared_experts:
            raise ParsimError(f"model {n}: top_k = {self.top_k}, shared_experts = {self.shared_experts} "
                              f"without experts: expected experts > 0")
        cf = self.capacity_factor
        if cf is not None:
            if isinstance(cf, bool) or not isinstance(cf, (int, float)) or not math.isfinite(cf) \
                    or not 1.0 <= cf <= MAX_CAPACITY_FACTOR:
                raise ParsimError(f"model {n}: capacity_factor = {cf!r}, expected null (dropless) or a number "
                                  f"in [1, {MAX_CAPACITY_FACTOR:g}]")
            if not self.experts:
                raise ParsimError(f"model {n}: capacity_factor = {cf!r} without experts")
            object.__setattr__(self, "capacity_factor", float(cf))
        if not isinstance(self.source, str):
            raise ParsimError(f"model {n}: source = {self.source!r}, expected a string")

    # ---- shapes ---------------------------------------------------------------------
    @property
    def attention(self) -> str:
        """MLA (latent attention), MHA (kv_heads = heads), MQA (kv_heads = 1) or GQA."""
        if self.mla:
            return "MLA"
        return "MHA" if self.kv_heads == self.heads else "MQA" if self.kv_heads == 1 else "GQA"

    @property
    def q_dim(self) -> int:
        """Width of Q and of the attention output: heads · head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads · head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def mla(self) -> bool:
        """Multi-head latent attention (kv_lora_rank > 0)."""
        return self.kv_lora_rank > 0

    @property
    def v_dim(self) -> int:
        """Width of V and of the attention output: heads · v_head_dim (= q_dim but with latent attention)."""
        return self.heads * self.v_head_dim

    @property
    def gated(self) -> bool:
        """Gated MLP (SwiGLU, GeGLU): gate, up and down projections."""
        return self.activation in ("swiglu", "geglu")

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        """How many layers carry experts (see the class docstring)."""
        if not self.experts:
            return 0
        return sum(1 for i in range(self.moe_first_dense, self.layers) if (i + 1) % self.moe_every == 0)

    @property
    def dense_prefix(self) -> int:
        """Dense layers that all come first (MoE on every later layer: DeepSeek's first_k_dense_replace), 0 otherwise
        (a dense model, or dense layers spread by moe_every): a pipeline puts them on its first stage."""
        return self.moe_first_dense if self.experts and self.moe_every == 1 else 0

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    # ---- parameters -----------------------------------------------------------------
    def _norm_params(self, width: int) -> int:
        return (2 if self.norm == "layernorm" else 1) * width

    @property
    def attn_matmul_params(self) -> int:
        """Q and output projections h·q_dim each, K and V h·kv_dim each. Latent attention: Q from h (or down to
        q_lora_rank and up to q_dim), K/V down to kv_lora_rank + qk_rope_head_dim and up to heads·(nope + v_head_dim),
        output heads·v_head_dim·h (DeepSeek-V2 §2.1)."""
        if not self.mla:
            return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim
        ql, kl, h = self.q_lora_rank, self.kv_lora_rank, self.hidden
        q = h * ql + ql * self.q_dim if ql else h * self.q_dim
        kv = h * (kl + self.qk_rope_head_dim) + kl * self.heads * (self.head_dim - self.qk_rope_head_dim + self.v_head_dim)
        return q + kv + self.v_dim * h

    @property
    def attn_params(self) -> int:
        """Attention projections with their biases and the q/k norms (latent attention: the norms of its latents)."""
        if self.mla:
            bias = (self.q_dim + self.kv_lora_rank + self.qk_rope_head_dim if self.qkv_bias else 0) + (
                self.hidden if self.linear_bias else 0)
            return (self.attn_matmul_params + bias + self._norm_params(self.kv_lora_rank)
                    + (self._norm_params(self.q_lora_rank) if self.q_lora_rank else 0))
        bias = (self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0) + (self.hidden if self.linear_bias else 0)
        return self.attn_matmul_params + bias + (2 * self._norm_params(self.head_dim) if self.qk_norm else 0)

    def mlp_matmul_params_of(self, ffn: int) -> int:
        """GELU: up and down h·f; gated: gate, up and down h·f."""
        return (3 if self.gated else 2) * self.hidden * ffn

    def _mlp_params(self, ffn: int) -> int:
        bias = ((2 if self.gated else 1) * ffn + self.hidden) if self.linear_bias else 0
        return self.mlp_matmul_params_of(ffn) + bias

    @property
    def mlp_matmul_params(self) -> int:
        """Matmul parameters of a dense layer's MLP."""
        return self.mlp_matmul_params_of(self.ffn_hidden)

    @property
    def router_params(self) -> int:
        return self.hidden * self.experts

    @property
    def expert_params(self) -> int:
        """Parameters of one expert (routed or shared)."""
        return self._mlp_params(self.expert_ffn_hidden)

    @property
    def dense_layer_params(self) -> int:
        return self.attn_params + self._mlp_params(self.ffn_hidden) + self.norms_per_layer * self._norm_params(self.hidden)

    @property
    def moe_layer_params(self) -> int:
        """Attention, norms, router, routed and shared experts of one MoE layer."""
        return (self.attn_params + self.norms_per_layer * self._norm_params(self.hidden) + self.router_params
                + (self.experts + self.shared_experts) * self.expert_params)

    @property
    def moe_layer_active_params(self) -> int:
        """What one token touches in an MoE layer: top_k routed experts, the shared ones, the router."""
        return self.moe_layer_params - (self.experts - self.top_k) * self.expert_params

    @property
    def layer_params_total(self) -> int:
        return self.dense_layers * self.dense_layer_params + self.moe_layers * self.moe_layer_params

    @property
    def params_per_layer(self) -> float:
        """Mean parameters per layer (dense and MoE layers mixed): the pipeline splits layers evenly."""
        return self.layer_params_total / self.layers

    @property
    def embedding_params(self) -> int:
        """Token embedding, learned positions (max_positions rows) and an embedding norm."""
        return (self.vocab * self.hidden + (self.max_positions * self.hidden if self.position == "learned" else 0)
                + (self._norm_params(self.hidden) if self.embed_norm else 0))

    @property
    def head_params(self) -> int:
        """Final norm plus the output projection when it is not tied to the embedding."""
        return self._norm_params(self.hidden) + (0 if self.tied_embeddings else self.vocab * self.hidden)

    @property
    def params(self) -> int:
        """Total parameters, tied embeddings counted once."""
        return self.layer_params_total + self.embedding_params + self.head_params

    @property
    def active_params(self) -> int:
        """Parameters one token uses (= params for a dense model)."""
        return self.params - self.moe_layers * (self.experts - self.top_k) * self.expert_params

    # ---- FLOPs (forward, per sequence of seq_len tokens) ----------------------------
    @property
    def mlp_active_matmul_params(self) -> float:
        """Mean per layer of the MLP matmul parameters a token passes through (router included)."""
        moe = (self.top_k + self.shared_experts) * self.mlp_matmul_params_of(self.expert_ffn_hidden) + self.router_params
        return (self.dense_layers * self.mlp_matmul_params + self.moe_layers * moe) / self.layers

    @property
    def mlp_active_width(self) -> float:
        """Mean per layer of the intermediate width one token passes through (dense f; MoE
        (top_k + shared)·expert_ffn_hidden): what element-wise kernels and stored activations see."""
        moe = (self.top_k + self.shared_experts) * self.expert_ffn_hidden
        return (self.dense_layers * self.ffn_hidden + self.moe_layers * moe) / self.layers

    # FLOPs are summed from the layer's description (parsim.layer), whose docstring states the
    # counting convention. "Executed" FLOPs (HFU) count the attention core's full s² square when the
    # scores are materialised (flash=False: Narayanan et al. 2021's formula) and the causal half with
    # flash attention; "model" FLOPs (MFU) count the causal half always.
    def _ops(self, s, flash):
        from parsim.layer import layer_ops
        return layer_ops(self, 1.0, s, 1.0, False, flash, 0)

    def attn_core_fwd_flops(self, seq_len=None, flash=False):
        """Attention core QKᵀ and AV of one layer per sequence: 4·s²·q_dim, or half with causal flash."""
        s = self.seq_len if seq_len is None else seq_len
        return sum(op.weight * op.flops for op in self._ops(s, flash) if op.selective)

    def layer_fwd_flops(self, seq_len=None, flash=False):
        """Executed forward FLOPs of the mean layer per sequence: 2·s·(active matmul params) + core.

        For GPT shapes and flash=False this is 24·s·h² + 4·s²·h (Narayanan et al. 2021, Appendix)."""
        from parsim.layer import flops
        s = self.seq_len if seq_len is None else seq_len
        return flops(self._ops(s, flash), "hardware")

    def model_layer_fwd_flops(self, seq_len=None):
        """Forward FLOPs of the mean layer per sequence as MFU counts them (attention: causal half)."""
        from parsim.layer import flops
        s = self.seq_len if seq_len is None else seq_len
        return flops(self._ops(s, True), "model")

    def logits_fwd_flops(self, seq_len=None):
        """2·s·h·V for the output projection."""
        from parsim.layer import flops, head_ops
        s = self.seq_len if seq_len is None else seq_len
        return flops(head_ops(self, 1.0, s, 1.0, 0))

    def recompute_fwd_flops(self, recompute: str, seq_len=None, flash=False, every: int = 1):
        """Executed forward FLOPs the mean layer re-runs in backward per sequence under a recompute
        policy (parsim.layer.recomputed: full = the whole layer, selective = the attention core,
        selective-op = torchtitan's op-level SAC); `every` = N: full on every N-th layer only
        (floor(layers/N) of them, torchtitan's selective_ac_option)."""
        from parsim.layer import recomputed_flops
        from parsim.plan import RECOMPUTE
        from parsim.errors import ParsimError
        if recompute not in RECOMPUTE:
            raise ParsimError(f"recompute = {recompute!r}: expected one of {', '.join(RECOMPUTE)}")
        s = self.seq_len if seq_len is None else seq_len
        share = (self.layers // every) / self.layers if recompute == "full" else 1.0
        return share * recomputed_flops(self._ops(s, flash), recompute)

    def step_flops(self, sequences: float, recompute: str = "none", seq_len: int | None = None,
                   flash: bool = False, recompute_every: int = 1) -> float:
        """Executed FLOPs of one training step over `sequences`: forward + 2×forward backward,
        plus what the recompute policy re-runs (``recompute_fwd_flops``: one more forward of every
        layer with full recompute, of the attention core with selective). With full recompute,
        flash=False and GPT shapes this equals 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) (Narayanan et
        al. 2021, eq. in §5.1).
        """
        s = self.seq_len if seq_len is None else seq_len
        layer, logits = self.layer_fwd_flops(s, flash), self.logits_fwd_flops(s)
        extra = self.recompute_fwd_flops(recompute, s, flash, recompute_every)
        return sequences * (self.layers * (3 * layer + extra) + 3 * logits)

    def model_step_flops(self, sequences: float, seq_len: int | None = None) -> float:
        """FLOPs of one step as MFU counts them: 3 × (layers · model_layer_fwd_flops + logits), per sequence."""
        s = self.seq_len if seq_len is None else seq_len
        return sequences * 3 * (self.layers * self.model_layer_fwd_flops(s) + self.logits_fwd_flops(s))

    def flops_per_token(self, seq_len: int | None = None, flash: bool = False) -> dict:
        """Executed FLOPs per token, by pass: forward, backward (2× forward: input and weight gradients),
        and what recompute adds (full: one more forward of every layer; selective: of the
        attention core only)."""
        s = self.seq_len if seq_len is None else seq_len
        fwd = (self.layers * self.layer_fwd_flops(s, flash) + self.logits_fwd_flops(s)) / s
        return {"forward": fwd, "backward": 2 * fwd, "recompute_full": self.layers * self.layer_fwd_flops(s, flash) / s,
                "recompute_selective": self.layers * self.attn_core_fwd_flops(s, flash) / s}

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: size, shapes and the training length's origin (printed in every output's header). The MLP kind
        "gelu" reads "non-gated MLP": it stands for any 2-matrix MLP (GPT's GELU, Nemotron's squared ReLU)."""
        moe = (f", MoE {self.experts}x top-{self.top_k}" + (f" +{self.shared_experts} shared" if self.shared_experts else "")
               + f" on {self.moe_layers}/{self.layers} layers") if self.experts else ""
        # active: every parameter a token touches, the whole input embedding table included (Mixtral's and Qwen3's
        # cards count so); MoE cards that leave the table out (gpt-oss: 5.13 B) get the second figure
        emb = self.vocab * self.hidden
        active = (f"{_count(self.active_params)} active, {_count(self.active_params - emb)} without the input embedding"
                  if self.experts else f"{_count(self.active_params)} active")
        return (f"{self.name}: {_count(self.params)} params ({active}), "
                f"{self.layers} layers, hidden {self.hidden}, {self.attention} {self.heads}/{self.kv_heads} heads × "
                f"{self.head_dim}"
                + (f" (v {self.v_head_dim}, latents q {self.q_lora_rank or 'none'} kv {self.kv_lora_rank}, rope "
                   f"{self.qk_rope_head_dim})" if self.mla else "")
                + (f" (sliding window {self.sliding_window}"
                                      + (f" on {self.window_layers} of {self.layers} layers"
                                         if self.window_layers not in (None, self.layers) else "") + ")"
                                      if self.sliding_window else "")
                + f", {'non-gated MLP' if self.activation == 'gelu' else self.activation}{moe}, seq_len {self.seq_len}"
                + (f" ({self.source})" if self.source else ""))


def _count(n: float) -> str:
    """A parameter count for people: 1.01 T, 46.7 B, 124 M, 288 k."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f}"


KEYS = tuple(f.name for f in fields(ModelSpec))


# ---- loading ------------------------------------------------------------------------

def _required_keys() -> tuple:
    import dataclasses
    return tuple(f.name for f in fields(ModelSpec)
                 if f.default is dataclasses.MISSING and f.name not in ("name", "kv_heads"))


def _from_mapping(d: dict, name: str) -> ModelSpec:
    d = dict(d)
    d.setdefault("name", name)
    d.setdefault("kv_heads", d.get("heads"))
    unknown = set(d) - set(KEYS)
    missing = [k for k in _required_keys() if k not in d]
    if missing:
        raise ParsimError(f"model {name}: missing key(s) {', '.join(missing)}; expected keys {', '.join(KEYS)}")
    if unknown:
        raise ParsimError(f"model {name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"expected keys {', '.join(KEYS)}")
    return ModelSpec(**d)


@functools.lru_cache(maxsize=None)
def _presets() -> dict:
    raw = yaml.safe_load((DATA / "models.yaml").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def preset_names() -> list[str]:
    return list(_presets())


def _architecture(spec: "ModelSpec") -> tuple:
    """What makes two specs the same model to price: every field but its name, source and training length (a
    learned position table's size stays: it is parameters)."""
    d = asdict(spec)
    for k in ("name", "source", "seq_len") + (() if spec.position == "learned" else ("max_positions",)):
        d.pop(k)
    return tuple(sorted(d.items()))


@functools.lru_cache(maxsize=None)
def _preset_architectures() -> dict:
    return {_architecture(load_model(n)): n for n in reversed(preset_names())}    # first preset wins a tie


def preset_twin(spec: "ModelSpec") -> str | None:
    """The preset with the same architecture as `spec` (its own name when it is one), or None: a config.json of a
    preset model gets that preset's published evidence (trial 2026-11-30: gpt-oss-120b read from a config.json
    lost "its own published runs were +8%, +64% off", keyed by the preset's name)."""
    if spec.name in _presets():
        return spec.name
    return _preset_architectures().get(_architecture(spec))


# ---- Hugging Face config.json ---------------------------------------------------------

# model_type -> family. Each family's reader below says which fields it takes.
HF_FAMILIES = {
    "llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "llama", "qwen3": "llama",
    "qwen3_moe": "llama", "gemma": "llama", "gemma2": "llama", "phi3": "llama", "gpt_oss": "llama",
    "deepseek_v3": "llama", "deepseek_v2": "llama",
    "gpt2": "gpt2", "gpt_neox": "gpt_neox", "falcon": "falcon", "RefinedWeb": "falcon",
    "RefinedWebModel": "falcon", "bloom": "bloom", "nemotron": "nemotron",
}
# Fields that change the architecture in ways ModelSpec does not model: refused, never ignored.
HF_UNMODELLED = {
    "sliding_window_pattern": "Gemma-3's every-p-th-layer global attention (no family parsim reads uses it)",
    "kv_lora_rank": "multi-head latent attention (DeepSeek-V2/V3)",
    "q_lora_rank": "low-rank query projection (DeepSeek-V2/V3)",
    "n_routed_experts": "DeepSeek-style routed experts",
    "n_shared_experts": "DeepSeek-style shared experts",
    "first_k_dense_replace": "DeepSeek-style dense prefix",
    "num_nextn_predict_layers": "multi-token prediction layers",
    "shared_expert_intermediate_size": "Qwen2-MoE shared expert",
    "cross_attention_layers": "cross-attention layers (Llama 3.2 Vision)",
    "vision_config": "a vision tower",
}
# DeepSeek-V2/V3 (DeepseekV3Config): latent attention, routed and shared experts, a dense prefix; the MTP module
# (num_nextn_predict_layers) is said, not counted or priced
DEEPSEEK_TYPES = ("deepseek_v2", "deepseek_v3")
DEEPSEEK_READS = ("kv_lora_rank", "q_lora_rank", "n_routed_experts", "n_shared_experts", "first_k_dense_replace",
                  "num_nextn_predict_layers")
# parsim's ModelSpec key -> the config.json fields it is read from (an error names the file's field)
HF_FIELDS = {"layers": ("num_hidden_layers", "n_layer", "num_layers"), "hidden": ("hidden_size", "n_embd", "n_embed",
             "d_model"), "heads": ("num_attention_heads", "n_head"), "kv_heads": ("num_key_value_heads", "num_kv_heads"),
             "ffn_hidden": ("intermediate_size", "ffn_hidden_size", "n_inner"), "vocab": ("vocab_size",),
             "head_dim": ("head_dim", "qk_nope_head_dim"), "sliding_window": ("sliding_window",),
             "experts": ("num_experts", "num_local_experts", "n_routed_experts"), "top_k": ("num_experts_per_tok",),
             "expert_ffn_hidden": ("moe_intermediate_size",), "max_positions": ("max_position_embeddings", "n_positions"),
             "shared_experts": ("n_shared_experts",), "moe_first_dense": ("first_k_dense_replace",),
             "q_lora_rank": ("q_lora_rank",), "kv_lora_rank": ("kv_lora_rank",),
             "qk_rope_head_dim": ("qk_rope_head_dim",), "v_head_dim": ("v_head_dim",)}
GELU_ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "gelu_accurate", "quick_gelu",
             "relu", "relu2", "tanh")
SILU_ACTS = ("silu", "swish")


def _hf_get(cfg, name, *keys, default=...):
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    if default is ...:
        raise ParsimError(f"Hugging Face config {name}: missing field {keys[0]!r} (model_type "
                          f"{cfg.get('model_type', '?')!r})")
    return default


def _hf_bool(cfg, name, key, default):
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ParsimError(f"Hugging Face config {name}: {key} = {v!r} ({type(v).__name__}), expected true or false")
    return v


def _hf_act(cfg, name, keys, gated):
    key = next((k for k in keys if cfg.get(k) is not None), None)
    act = cfg.get(key, "silu" if gated else "gelu") if key else ("silu" if gated else "gelu")
    if not isinstance(act, str) or act.lower() not in GELU_ACTS + SILU_ACTS:
        raise ParsimError(f"Hugging Face config {name}: {key or keys[0]} = {act!r}, expected one of "
                          f"{', '.join(GELU_ACTS + SILU_ACTS)}")
    act = act.lower()
    if not gated:
        return "gelu"
    return "swiglu" if act in SILU_ACTS else "geglu"


def _check_hf_int(name, field, key, v):
    """_check_int's bounds, its error naming the config file's own field (trial 2026-11-30: a string
    original_max_position_embeddings was said as "model x: seq_len = '4096'")."""
    try:
        _check_int(name, key, v)
    except ParsimError as e:
        raise ParsimError(f"Hugging Face config {name}: {field} (parsim's {key})"
                          + str(e).split(f"model {name}: {key}", 1)[-1]) from None


def hf_seq_len(cfg, name, max_pos, field: str = "max_position_embeddings"):
    """(training length, where it came from): original_max_position_embeddings (top level, in rope_scaling or in
    transformers v5's rope_parameters) when present, else min(DEFAULT_HF_SEQ_LEN, max_pos), said as read from `field` (the file's own
    name for it, or where the value came from)."""
    rs, rp = cfg.get("rope_scaling"), cfg.get("rope_parameters")     # rope_parameters: transformers v5's name
    for where, d in (("rope_scaling.original_max_position_embeddings", rs if isinstance(rs, dict) else {}),
                     ("rope_parameters.original_max_position_embeddings", rp if isinstance(rp, dict) else {}),
                     ("original_max_position_embeddings", cfg)):
        v = d.get("original_max_position_embeddings")
        if v is not None:
            _check_hf_int(name, where, "seq_len", v)
            return v, f"seq_len {v} from {where}"
    if max_pos is None:
        return DEFAULT_HF_SEQ_LEN, f"seq_len {DEFAULT_HF_SEQ_LEN}: parsim's default (no {field})"
    _check_hf_int(name, field, "max_positions", max_pos)
    s = min(DEFAULT_HF_SEQ_LEN, max_pos)
    return s, (f"seq_len {s}: parsim's default {DEFAULT_HF_SEQ_LEN}, capped at {field} {max_pos}"
               if s < DEFAULT_HF_SEQ_LEN else f"seq_len {s}: parsim's default ({field} is {max_pos})")


# How each family's transformers attention uses a config's sliding_window (2025-26 transformers): which layers get it.
#   every   Mistral, Mixtral, Phi-3: every layer (their attention passes config.sliding_window; no other field read)
#   qwen    Qwen2, Qwen3, Qwen3-MoE: only with use_sliding_window true (its default is false), on layers from
#           max_window_layers on (layer_idx >= max_window_layers), or as layer_types lists them
#   alternate  Gemma-2, GPT-OSS: layers 0, 2, 4, ... (Gemma2DecoderLayer: is_sliding = not layer_idx % 2; GptOssConfig's
#           default layer_types: "sliding_attention" if (i + 1) % 2 else "full_attention"), or as layer_types lists
#   none    every other family: its attention has no window (a sliding_window field is said unused)
HF_WINDOW_RULE = {"mistral": "every", "mixtral": "every", "phi3": "every", "qwen2": "qwen", "qwen3": "qwen",
                  "qwen3_moe": "qwen", "gemma2": "alternate", "gpt_oss": "alternate"}


def _hf_window_layers(cfg: dict, name: str, mt: str, layers: int) -> tuple[int, str]:
    """(how many layers use the config's sliding window, why), as the family's transformers code builds them
    (HF_WINDOW_RULE). ParsimError for a field of the wrong type, a malformed layer_types list, or one the family does
    not read (layer_types outside the qwen and alternate families: refused, never ignored)."""
    rule = HF_WINDOW_RULE.get(mt, "none")
    lt = cfg.get("layer_types")
    if lt is not None and rule not in ("qwen", "alternate"):
        raise ParsimError(f"Hugging Face config {name}: field layer_types is not read by model_type {mt!r} (per-layer "
                          f"attention types: Qwen2/Qwen3, Gemma-2, GPT-OSS); refusing rather than pricing a different model")
    if rule == "none":
        return 0, f"model_type {mt}'s attention has no sliding window"
    if rule == "every":
        return layers, "every layer"
    use = cfg.get("use_sliding_window")
    if use is not None and not isinstance(use, bool):
        raise ParsimError(f"Hugging Face config {name}: use_sliding_window = {use!r}, expected true or false")
    if rule == "qwen" and not use:
        return 0, "use_sliding_window " + ("false" if use is False else "absent: transformers' default is false")
    if lt is not None:
        kinds = ("sliding_attention", "full_attention")
        if not isinstance(lt, list) or len(lt) != layers or any(k not in kinds for k in lt):
            bad = next((k for k in lt if k not in kinds), ...) if isinstance(lt, list) else ...
            shown = str(lt) if len(str(lt)) <= 60 else str(lt)[:57] + "..."
            raise ParsimError(f"Hugging Face config {name}: layer_types = {shown}"
                              + (f" ({len(lt)} entries)" if isinstance(lt, list) else "")
                              + (f" (entry {str(bad)[:30]!r})" if bad is not ... else "")
                              + f": expected a list of {layers} entries (num_hidden_layers), each "
                                f"{' or '.join(kinds)}")
        return lt.count("sliding_attention"), "layer_types"
    if rule == "alternate":
        return (layers + 1) // 2, ("GPT-OSS alternates: GptOssConfig's default layer_types slide layers 0, 2, 4, ..."
                                   if mt == "gpt_oss" else
                                   "Gemma-2 alternates: Gemma2DecoderLayer is_sliding = not layer_idx % 2")
    m = cfg.get("max_window_layers")
    if m is None or isinstance(m, bool) or not isinstance(m, int):
        raise ParsimError(f"Hugging Face config {name}: use_sliding_window true with max_window_layers = {m!r}: "
                          f"expected an integer (the first windowed layer; transformers' default differs by version)")
    return max(0, layers - max(m, 0)), f"max_window_layers {m}: layers from {m} on"


def from_hf_config(cfg: dict, name: str = "hf-model") -> ModelSpec:
    """Map a Hugging Face config.json to a ModelSpec, by model_type (see HF_FAMILIES).

    Families: Llama 1/2/3/3.1/3.2, Mistral, Mistral-Nemo, Mixtral, Qwen2/2.5/3, Qwen3-MoE, Gemma,
    Gemma2, Phi-3 (Llama-style readers); GPT-2; GPT-NeoX/Pythia; Falcon (multi_query, parallel_attn,
    new_decoder_architecture); BLOOM (ALiBi); Nemotron (NemotronForCausalLM: relu2 = squared-ReLU non-gated MLP,
    LayerNorm, RoPE, no dropout; its partial_rotary_factor / rope_percent is said in the source, not modelled). A model_type outside these, or a field in
    HF_UNMODELLED, is refused (ParsimError naming it) rather than read as a dense Llama.
    The training length: see hf_seq_len."""
    if not isinstance(cfg, dict):
        raise ParsimError(f"Hugging Face config {name}: expected a mapping, got {type(cfg).__name__}")
    mt0 = cfg.get("model_type")
    for k, what in HF_UNMODELLED.items():
        if mt0 in DEEPSEEK_TYPES and k in DEEPSEEK_READS:
            continue                                    # read by the DeepSeek reader below
        if cfg.get(k) not in (None, 0, False, [], {}):
            raise ParsimError(f"Hugging Face config {name}: field {k} = {str(cfg[k])[:40]!r} ({what}) is not "
                              f"modelled by parsim; refusing rather than pricing a different model")
    mt = cfg.get("model_type")
    if mt is None:   # older files without model_type: recognise GPT-2's own field names only
        mt = "gpt2" if "n_embd" in cfg else None
    if mt is None:
        raise ParsimError(f"Hugging Face config {name}: no model_type field (and not GPT-2's n_embd names); expected "
                          f"model_type, one of {', '.join(sorted(HF_FAMILIES))}")
    if not isinstance(mt, str) or mt not in HF_FAMILIES:
        raise ParsimError(f"Hugging Face config {name}: model_type = {str(mt)[:60]!r} is not modelled; expected one "
                          f"of {', '.join(sorted(HF_FAMILIES))}{closest(str(mt)[:60], HF_FAMILIES)}")

    fam = HF_FAMILIES[mt]
    g = functools.partial(_hf_get, cfg, name)
    kw: dict = {}
    if fam == "llama":
        h, heads = g("hidden_size"), g("num_attention_heads")
        kw = dict(layers=g("num_hidden_layers"), hidden=h, heads=heads,
                  kv_heads=g("num_key_value_heads", default=heads), ffn_hidden=g("intermediate_size"),
                  vocab=g("vocab_size"),
                  activation=_hf_act(cfg, name, ("hidden_activation", "hidden_act") if mt.startswith("gemma")
                                     else ("hidden_act",), gated=True),
                  tied_embeddings=_hf_bool(cfg, name, "tie_word_embeddings", mt.startswith("gemma")),
                  head_dim=g("head_dim", default=None), norm="rmsnorm", position="rotary",
                  qkv_bias=_hf_bool(cfg, name, "attention_bias", mt == "qwen2"),
                  linear_bias=_hf_bool(cfg, name, "mlp_bias", False), qk_norm=mt.startswith("qwen3"),
                  norms_per_layer=4 if mt == "gemma2" else 2)
        if mt == "qwen2" and "attention_bias" not in cfg:
            kw["qkv_bias"] = True          # Qwen2 q/k/v carry biases; no config key says so
        if mt == "mixtral":
            kw.update(experts=g("num_local_experts"), top_k=g("num_experts_per_tok"))
        elif mt in DEEPSEEK_TYPES:
            # DeepseekV3Config: n_routed_experts of width moe_intermediate_size (top num_experts_per_tok) and
            # n_shared_experts on layers i >= first_k_dense_replace with i % moe_layer_freq == 0; the dense prefix
            # has intermediate_size; attention is latent (kv_lora_rank, q_lora_rank null = full-rank queries), each
            # head qk_nope_head_dim + qk_rope_head_dim wide for Q/K and v_head_dim for V
            freq = g("moe_layer_freq", default=1)
            if freq != 1:
                raise ParsimError(f"Hugging Face config {name}: moe_layer_freq = {freq!r} is not modelled (parsim "
                                  f"reads MoE on every layer after the dense prefix: 1)")
            nope, rope = g("qk_nope_head_dim"), g("qk_rope_head_dim")
            kw.update(experts=g("n_routed_experts"), top_k=g("num_experts_per_tok"),
                      expert_ffn_hidden=g("moe_intermediate_size"), shared_experts=g("n_shared_experts", default=0),
                      moe_first_dense=g("first_k_dense_replace", default=0), kv_lora_rank=g("kv_lora_rank"),
                      q_lora_rank=g("q_lora_rank", default=0) or 0, qk_rope_head_dim=rope, v_head_dim=g("v_head_dim"),
                      head_dim=nope + rope if all(type(x) is int for x in (nope, rope)) else nope, kv_heads=kw["heads"],
                      qkv_bias=_hf_bool(cfg, name, "attention_bias", False), linear_bias=False)
        elif mt == "gpt_oss":
            # transformers' GptOssConfig sets attention_bias = True whatever the file says, and GptOssExperts carries
            # gate_up_proj_bias and down_proj_bias: biases on q, k, v, o and the experts. Every layer is an MoE layer
            # of num_local_experts experts of width intermediate_size (no dense MLP).
            kw.update(experts=g("num_local_experts"), top_k=g("num_experts_per_tok", "experts_per_token"),
                      qkv_bias=True, linear_bias=True)
        elif mt == "qwen3_moe":
            kw.update(experts=g("num_experts"), top_k=g("num_experts_per_tok"),
                      expert_ffn_hidden=g("moe_intermediate_size"), moe_every=g("decoder_sparse_step", default=1))
            if cfg.get("mlp_only_layers"):
                raise ParsimError(f"Hugging Face config {name}: mlp_only_layers = {cfg['mlp_only_layers']!r} "
                                  f"(dense layers at chosen positions) is not modelled")
        if mt in ("mixtral", "gpt_oss", "qwen3_moe") and kw.get("experts") == 0 and type(kw["experts"]) is int:
            field = "num_experts" if mt == "qwen3_moe" else "num_local_experts"
            raise ParsimError(f"Hugging Face config {name}: {field} = 0: expected at least 1 (model_type {mt} is a "
                              f"mixture of experts)")
        max_pos = g("max_position_embeddings", default=None)
    elif fam == "gpt2":
        h = g("n_embd", "hidden_size")
        max_pos = g("n_positions", "n_ctx", default=1024)
        kw = dict(layers=g("n_layer", "num_hidden_layers"), hidden=h, heads=g("n_head", "num_attention_heads"),
                  ffn_hidden=g("n_inner", default=None) or 4 * h, vocab=g("vocab_size"),
                  activation=_hf_act(cfg, name, ("activation_function",), gated=False),
                  tied_embeddings=_hf_bool(cfg, name, "tie_word_embeddings", True), max_positions=max_pos)
        kw["kv_heads"] = kw["heads"]
    elif fam == "gpt_neox":
        h = g("hidden_size")
        kw = dict(layers=g("num_hidden_layers"), hidden=h, heads=g("num_attention_heads"),
                  ffn_hidden=g("intermediate_size"), vocab=g("vocab_size"),
                  activation=_hf_act(cfg, name, ("hidden_act",), gated=False),
                  tied_embeddings=_hf_bool(cfg, name, "tie_word_embeddings", False), position="rotary",
                  parallel_block=_hf_bool(cfg, name, "use_parallel_residual", True))
        kw["kv_heads"] = kw["heads"]
        max_pos = g("max_position_embeddings", default=2048)
    elif fam == "falcon":
        h = g("hidden_size", "n_embed")
        heads = g("num_attention_heads", "n_head")
        new = _hf_bool(cfg, name, "new_decoder_architecture", False)
        mq = _hf_bool(cfg, name, "multi_query", True)
        par = _hf_bool(cfg, name, "parallel_attn", True)
        kv = g("num_kv_heads", "n_head_kv", default=heads) if new else (1 if mq else heads)
        bias = _hf_bool(cfg, name, "bias", False)
        alibi = _hf_bool(cfg, name, "alibi", False)
        # Falcon's parallel block has one input LayerNorm; the new architecture (40B/180B) two
        # (ln_attn, ln_mlp: num_ln_in_parallel_attn = 2); a sequential block two.
        norms = (g("num_ln_in_parallel_attn", default=2) if new else 1) if par else 2
        kw = dict(layers=g("num_hidden_layers", "n_layer"), hidden=h, heads=heads, kv_heads=kv,
                  ffn_hidden=g("ffn_hidden_size", default=4 * h), vocab=g("vocab_size"), activation="gelu",
                  tied_embeddings=_hf_bool(cfg, name, "tie_word_embeddings", True), qkv_bias=bias,
                  linear_bias=bias, norm="layernorm", position="alibi" if alibi else "rotary",
                  norms_per_layer=norms, parallel_block=par or new)
        max_pos = g("max_position_embeddings", default=2048)
    elif fam == "nemotron":
        for k in ("num_local_experts", "num_experts"):      # NemotronForCausalLM is dense: never drop experts silently
            if cfg.get(k) not in (None, 0, 1):
                raise ParsimError(f"Hugging Face config {name}: field {k} = {str(cfg[k])[:20]!r} in a dense "
                                  f"model_type nemotron: expected no experts (a mixture of experts is another model_type)")
        h, heads = g("hidden_size"), g("num_attention_heads")
        kw = dict(layers=g("num_hidden_layers"), hidden=h, heads=heads,
                  kv_heads=g("num_key_value_heads", default=heads), ffn_hidden=g("intermediate_size"),
                  vocab=g("vocab_size"), activation=_hf_act(cfg, name, ("hidden_act",), gated=False),
                  tied_embeddings=_hf_bool(cfg, name, "tie_word_embeddings", False), head_dim=g("head_dim", default=None),
                  norm="layernorm", position="rotary", qkv_bias=_hf_bool(cfg, name, "attention_bias", False),
                  linear_bias=_hf_bool(cfg, name, "mlp_bias", False), dropout=False)
        max_pos = g("max_position_embeddings", default=None)
    elif fam == "bloom":
        h = g("hidden_size", "n_embed")
        kw = dict(layers=g("n_layer", "num_hidden_layers"), hidden=h, heads=g("n_head", "num_attention_heads"),
                  ffn_hidden=4 * h, vocab=g("vocab_size"), activation="gelu",
                  tied_embeddings=_hf_bool(cfg, name, "tie_word_embeddings", True), position="alibi",
                  embed_norm=True)
        kw["kv_heads"] = kw["heads"]
        max_pos = g("seq_length", default=2048)
    # the file's own field the length came from, or that it is the family's default (trial 2026-11-30: BLOOM, whose
    # ALiBi has no position table, was said "capped at max_position_embeddings 2048" without that field)
    pos_field = next((f for f in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
                      if cfg.get(f) is not None), f"{mt}'s default length (no max_position_embeddings)")
    seq, src = hf_seq_len(cfg, name, max_pos, pos_field)
    rot = cfg.get("partial_rotary_factor", cfg.get("rope_percent"))
    if fam == "nemotron" and rot is not None:
        if isinstance(rot, bool) or not isinstance(rot, (int, float)) or not 0 < rot <= 1:
            raise ParsimError(f"Hugging Face config {name}: partial_rotary_factor = {rot!r}, expected a fraction of "
                              f"the head in (0, 1]")
        if rot != 1:
            src += f"; RoPE on {rot:g} of each head priced over all of it"
    if mt in DEEPSEEK_TYPES:
        mtp = cfg.get("num_nextn_predict_layers") or 0
        src += ("; latent attention (kv_lora_rank " + str(kw.get("kv_lora_rank")) + ")"
                + (f"; {mtp} multi-token prediction layer(s) (num_nextn_predict_layers) not counted or priced" if mtp
                   else "") + "; the router's score-correction bias not counted, its grouped top-k priced as top-k")
    if mt == "gpt_oss":
        # GptOssAttention.sinks (one learned logit per head, added to each softmax's denominator) and the router's bias:
        # heads + experts parameters a layer, left out of the counts (< 1e-7 of them); the sinks' work is one more term
        # per softmax row and the clamped SwiGLU (swiglu_limit) is one element-wise kernel, both priced as the plain ones
        n = kw["heads"] + kw["experts"] if all(type(kw[k]) is int for k in ("heads", "experts")) else None
        src += (f"; attention sinks and router bias ({n} parameters a layer) not counted" if n is not None else
                "; attention sinks and router bias not counted") + \
            ", sinks priced as plain softmax attention, clamped SwiGLU as SwiGLU"
        if cfg.get("attention_bias") is False:          # GptOssConfig.__init__: self.attention_bias = True
            src += "; attention_bias false in the file, but transformers' GptOssConfig sets it true: priced with biases"
        if isinstance(cfg.get("quantization_config"), dict):
            src += (f"; quantization_config {str(cfg['quantization_config'].get('quant_method', '?'))[:20]} is the "
                    f"checkpoint's storage format, not priced (training runs in --dtype)")
        a, b = cfg.get("num_experts_per_tok"), cfg.get("experts_per_token")
        if a is not None and b is not None and a != b:
            raise ParsimError(f"Hugging Face config {name}: num_experts_per_tok = {a!r} and experts_per_token = {b!r} "
                              f"disagree: expected one top-k (transformers reads num_experts_per_tok)")
    win = cfg.get("sliding_window")
    if win is not None and (not isinstance(win, int) or isinstance(win, bool)):
        raise ParsimError(f"Hugging Face config {name}: sliding_window = {win!r}, expected an integer or null")
    nw, why = _hf_window_layers(cfg, name, mt, kw["layers"])
    if win is None and nw and cfg.get("layer_types") is not None:
        raise ParsimError(f"Hugging Face config {name}: layer_types names {nw} sliding_attention layers but "
                          f"sliding_window is null; expected the window's size in sliding_window")
    if win is not None and nw:
        kw["sliding_window"] = win         # kept even when >= seq_len: a longer --seq-len meets it
        if nw < kw["layers"]:
            kw["window_layers"] = nw
        src += f"; sliding-window attention over {win} keys" + (
            f" on {nw} of {kw['layers']} layers ({why}), the others global" if nw < kw["layers"] else "") + (
            f" (no effect at seq_len {seq}: a longer --seq-len meets it)" if win >= seq else "")
    elif win is not None:
        src += f"; sliding_window {win} unused (no layer uses it: {why})"
    try:
        return ModelSpec(name=name, seq_len=seq, source=f"Hugging Face {mt}; {src}", **kw)
    except ParsimError as e:
        msg = str(e).replace(f"model {name}: ", "")
        key = msg.split(" ", 1)[0]
        field = next((f for f in HF_FIELDS.get(key, ()) if f in cfg), None)
        if field and field != key:        # name the file's own field, not only parsim's key
            msg = f"{field} (parsim's {key})" + msg[len(key):]
        # ... and the other parsim keys the message names (e.g. "is not divisible by kv_heads (5)")
        for k, fields in HF_FIELDS.items():
            f = next((f for f in fields if f in cfg), None)
            if k != key and f and f != k and f" {k} (" in msg:
                msg = msg.replace(f" {k} (", f" {f} (parsim's {k}) (", 1)
        raise ParsimError(f"Hugging Face config {name}: {msg}") from None


# ---- files --------------------------------------------------------------------------

def read_model_file(path: Path):
    """The one place model files are read (YAML or JSON): returns the parsed document, read through
    parsim.fileio.read_user_file (regular file, size, nesting, no aliases or duplicate keys).

    Raises ParsimError on unreadable or malformed files."""
    from parsim.fileio import read_user_file
    return read_user_file(path, "model")


def _file_name(stem: str) -> str:
    """A model's name taken from its file's (or directory's) name: cut to the 200 characters a name may have, as a
    file name may be longer (trial 2026-11-30: a 250-character file name was refused as a bad model name)."""
    return stem[:200] or "model"


def load_model(spec) -> ModelSpec:
    """A preset name, a YAML/JSON file with the ModelSpec keys, or a Hugging Face config.json."""
    if isinstance(spec, ModelSpec):
        return spec
    presets = _presets()
    if not isinstance(spec, (str, Path)):
        raise ParsimError(f"model = {spec!r:.60}: expected a ModelSpec, a preset name or a file path")
    if spec in presets:
        return _from_mapping(presets[spec], spec)
    from parsim.fileio import exists
    p = Path(str(spec))
    if not exists(p):
        raise ParsimError(unknown_preset("model", spec, presets, "parsim presets models"))
    d = read_model_file(p)
    if not isinstance(d, dict):
        raise ParsimError(f"model file {p}: expected a mapping of ModelSpec keys, got {type(d).__name__}")
    if "model_type" in d or "num_hidden_layers" in d or "n_layer" in d:
        return from_hf_config(d, name=_file_name(p.stem if p.stem != "config" else p.parent.name or "hf-model"))
    return _from_mapping(d, d.get("name", _file_name(p.stem)))
