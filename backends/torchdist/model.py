"""A GPT in torch built from a parsim ModelSpec, cut into pipeline stages.

GELU specs are GPT-style (biases, LayerNorm, learned positions); SwiGLU specs are
Llama-style (no biases, RMSNorm) without rotary positions (attention is still causal;
RoPE changes no shape, FLOP count or communication, so it is left out). GQA: K and V
have ``kv_heads`` heads, repeated to ``heads``.

Weights are initialised per component from ``seed`` and the component's global index
(embedding, layer i, head), so any cut into stages holds exactly the weights of the
un-cut model: that is what makes "pipelined loss == reference loss" testable.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint
from torch.utils.checkpoint import set_checkpoint_early_stop


def checkpoint(fn, *args):
    """Non-reentrant activation checkpointing without early stop, so a recompute re-runs the whole
    function (and its forward hooks, which time the recompute, all fire)."""
    with set_checkpoint_early_stop(False):
        return _checkpoint(fn, *args, use_reentrant=False)


def _norm(spec, h):
    return nn.RMSNorm(h, eps=1e-5) if spec.gated else nn.LayerNorm(h, eps=1e-5)


class AttentionCore(nn.Module):
    """softmax(QKᵀ/√d + causal mask)·V: the part selective recompute re-runs (Korthikanti et al. 2022)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Attention(nn.Module):
    def __init__(self, spec, selective: bool = False):
        super().__init__()
        h, kv, bias = spec.hidden, spec.kv_dim, not spec.gated
        self.head_dim, self.selective = spec.head_dim, selective
        self.wq, self.wk, self.wv = nn.Linear(h, h, bias=bias), nn.Linear(h, kv, bias=bias), nn.Linear(h, kv, bias=bias)
        self.wo = nn.Linear(h, h, bias=bias)
        self.core = AttentionCore()

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        # after a column-parallel projection these are the local heads only
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.selective and torch.is_grad_enabled():   # recompute the attention core only
            o = checkpoint(self.core, q, k, v)
        else:
            o = self.core(q, k, v)
        return self.wo(o.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, spec):
        super().__init__()
        h, f = spec.hidden, spec.ffn_hidden
        self.gated = spec.gated
        if self.gated:
            self.w_gate, self.w_up, self.w_down = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False), nn.Linear(f, h, bias=False)
        else:
            self.w_up, self.w_down = nn.Linear(h, f), nn.Linear(f, h)

    def forward(self, x):
        if self.gated:
            return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
        return self.w_down(F.gelu(self.w_up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, spec, recompute: str = "none"):
        super().__init__()
        self.attn_norm, self.attn = _norm(spec, spec.hidden), Attention(spec, selective=recompute == "selective")
        self.mlp_norm, self.mlp = _norm(spec, spec.hidden), MLP(spec)
        self.full_recompute = recompute == "full"

    def _body(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def forward(self, x):
        if self.full_recompute and torch.is_grad_enabled():
            return checkpoint(self._body, x)
        return self._body(x)


class GPTStage(nn.Module):
    """Layers ``layer_ids`` of the model; the first stage embeds, the last one produces logits.

    Layers live in a ModuleDict keyed by their global index, so parameter names are the
    same in every cut ("layers.3.mlp.w_up.weight") and can be compared with the reference.
    """

    def __init__(self, spec, layer_ids, first: bool, last: bool, seed: int = 0, recompute: str = "none",
                 tie: bool = False):
        super().__init__()
        self.spec, self.first, self.last = spec, first, last
        h = spec.hidden
        if first:
            torch.manual_seed(seed * 1_000_003 + 1)
            self.tok = nn.Embedding(spec.vocab, h)
            self.pos = None if spec.gated else nn.Embedding(spec.seq_len, h)
        self.layers = nn.ModuleDict()
        for i in layer_ids:
            torch.manual_seed(seed * 1_000_003 + 100 + i)
            self.layers[str(i)] = Block(spec, recompute)
        if last:
            torch.manual_seed(seed * 1_000_003 + 2)
            self.norm = _norm(spec, h)
            self.head = nn.Linear(h, spec.vocab, bias=False)
            if tie and first:
                self.head.weight = self.tok.weight
        self._init_weights(seed)

    def _init_weights(self, seed):
        for name, p in self.named_parameters():
            if p.dim() == 2:   # GPT-2 style N(0, 0.02) for matrices and embeddings, per-name seed
                g = torch.Generator().manual_seed((seed * 1_000_003 + hash_name(name)) % 2**62)
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)

    def forward(self, x):
        if self.first:
            ids = x
            x = self.tok(ids)
            if self.pos is not None:
                pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
                x = x + self.pos(pos)
        for layer in self.layers.values():
            x = layer(x)
        if self.last:
            x = self.head(self.norm(x))
        return x


def hash_name(name: str) -> int:
    """A stable (not per-process salted) hash of a parameter name."""
    h = 1469598103934665603
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) % 2**61
    return h


def full_model(spec, seed: int = 0, recompute: str = "none", tie: bool | None = None) -> GPTStage:
    """The un-cut model (the reference every parallel run is compared with)."""
    tie = spec.tied_embeddings if tie is None else tie
    return GPTStage(spec, range(spec.layers), True, True, seed, recompute, tie)


def stage_layers(spec, num_stages: int, stage: int) -> range:
    """Layers of pipeline stage `stage` when the model is cut into `num_stages` stages, by parsim's one
    assignment rule (parsim.rules.stage_layer_counts: equal stages where num_stages divides the layers,
    else the embedding and the head count as one layer each, so the first and last stage hold fewer)."""
    from parsim.rules import stage_layer_ranges
    return stage_layer_ranges(spec.layers, num_stages)[stage]


def loss_fn(logits, targets):
    """Mean token cross-entropy."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def synthetic_batch(spec, batch: int, seq_len: int, step: int, seed: int = 0, device="cpu"):
    """(tokens, targets) of `batch` sequences for step `step`: seeded, the same on every rank.

    Targets are the tokens shifted by one, as in language modelling.
    """
    g = torch.Generator().manual_seed(seed * 7919 + step)
    data = torch.randint(0, spec.vocab, (batch, seq_len + 1), generator=g)
    return data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device)
