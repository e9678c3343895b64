"""A GPT in torch built from a parsim ModelSpec, cut into pipeline stages.

The layer follows the spec's fields: norm kind, q/k/v and projection biases, learned
positions (``max_positions`` rows), head_dim, gated MLP (SwiGLU / GeGLU), q/k norms and an
embedding norm. Rotary positions are left out (attention is still causal; RoPE changes no
shape, FLOP count or communication). GQA/MQA: K and V have ``kv_heads`` heads, repeated to
``heads``. What it cannot build (ALiBi, a parallel attention/MLP block, a norm count other
than two, experts) is refused by ``check_buildable`` in one line.

Weights are initialised per component from ``seed`` and the component's global index
(embedding, layer i, head), so any cut into stages holds exactly the weights of the
un-cut model: that is what makes "pipelined loss == reference loss" testable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint
from torch.utils.checkpoint import set_checkpoint_early_stop

from backends.torchdist.buildable import check_buildable


def checkpoint(fn, *args):
    """Non-reentrant activation checkpointing without early stop, so a recompute re-runs the whole
    function (and its forward hooks, which time the recompute, all fire)."""
    with set_checkpoint_early_stop(False):
        return _checkpoint(fn, *args, use_reentrant=False)


def _norm(spec, h):
    return nn.RMSNorm(h, eps=1e-5) if spec.norm == "rmsnorm" else nn.LayerNorm(h, eps=1e-5)


class AttentionCore(nn.Module):
    """softmax(QKᵀ/√d + causal mask)·V: the part selective recompute re-runs (Korthikanti et al. 2022)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Attention(nn.Module):
    def __init__(self, spec, selective: bool = False):
        super().__init__()
        h, q, kv, bias = spec.hidden, spec.q_dim, spec.kv_dim, spec.qkv_bias
        self.head_dim, self.selective = spec.head_dim, selective
        self.wq, self.wk, self.wv = nn.Linear(h, q, bias=bias), nn.Linear(h, kv, bias=bias), nn.Linear(h, kv, bias=bias)
        self.wo = nn.Linear(q, h, bias=spec.linear_bias)
        self.q_norm = _norm(spec, spec.head_dim) if spec.qk_norm else None
        self.k_norm = _norm(spec, spec.head_dim) if spec.qk_norm else None
        self.core = AttentionCore()

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        # after a column-parallel projection these are the local heads only
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.selective and torch.is_grad_enabled():   # recompute the attention core only
            o = checkpoint(self.core, q, k, v)
        else:
            o = self.core(q, k, v)
        return self.wo(o.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, spec, ffn: int | None = None):
        super().__init__()
        h, f, bias = spec.hidden, (spec.ffn_hidden if ffn is None else ffn), spec.linear_bias
        self.gated, self.act = spec.gated, spec.activation
        if self.gated:
            self.w_gate = nn.Linear(h, f, bias=bias)
        self.w_up, self.w_down = nn.Linear(h, f, bias=bias), nn.Linear(f, h, bias=bias)

    def forward(self, x):
        if self.act == "swiglu":
            return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
        if self.act == "geglu":
            return self.w_down(F.gelu(self.w_gate(x), approximate="tanh") * self.w_up(x))
        return self.w_down(F.gelu(self.w_up(x), approximate="tanh"))


@dataclass(frozen=True)
class ExpertParallel:
    """This rank's place in its expert-parallel group: `size` ranks share the experts, this one
    holds experts [rank·E/size, (rank+1)·E/size); `group` is the process group (None when size 1)."""
    group: object = None
    rank: int = 0
    size: int = 1


class MoE(nn.Module):
    """Routed experts (softmax router, top-k probabilities renormalised to sum to one, as Mixtral
    and Qwen3-MoE with norm_topk_prob) plus optional shared experts; dropless (every routed copy
    is processed). With expert parallelism the token copies travel to the rank holding their expert
    and back with all_to_all_single (torch.distributed.nn.functional: differentiable), the
    dispatch and combine that parsim prices as the layer's `ep` all-to-alls."""

    def __init__(self, spec, ep: ExpertParallel = ExpertParallel()):
        super().__init__()
        h, E = spec.hidden, spec.experts
        self.k, self.E, self.ep = spec.top_k, E, ep
        self.per_rank = E // ep.size
        self.router = nn.Linear(h, E, bias=False)
        first = ep.rank * self.per_rank
        self.experts = nn.ModuleDict({str(j): MLP(spec, spec.expert_ffn_hidden)
                                      for j in range(first, first + self.per_rank)})
        self.shared = MLP(spec, spec.shared_experts * spec.expert_ffn_hidden) if spec.shared_experts else None

    def _run_experts(self, x, eids):
        """Apply expert eids[i] (all local) to row x[i]; rows in any order."""
        order = torch.argsort(eids, stable=True)
        xs, es = x[order], eids[order]
        counts = torch.bincount(es, minlength=self.E).tolist()
        outs, start = [], 0
        for j, c in enumerate(counts):
            if c:
                outs.append(self.experts[str(j)](xs[start:start + c]))
                start += c
        y = torch.cat(outs) if outs else xs[:0]
        return torch.empty_like(y).index_copy(0, order, y) if y.shape[0] else y

    def forward(self, x):
        shape = x.shape
        xt = x.reshape(-1, shape[-1])
        N = xt.shape[0]
        probs = F.softmax(self.router(xt).float(), dim=-1)
        w, idx = probs.topk(self.k, dim=-1)
        w = (w / w.sum(-1, keepdim=True)).to(x.dtype).reshape(-1)
        eids = idx.reshape(-1)
        tok = torch.arange(N, device=x.device).repeat_interleave(self.k)
        order = torch.argsort(eids, stable=True)          # copies grouped by expert, hence by owner rank
        e_sorted, tok_sorted, w_sorted = eids[order], tok[order], w[order]
        xin = xt[tok_sorted]
        if self.ep.size == 1:
            out = self._run_experts(xin, e_sorted)
        else:
            import torch.distributed as dist
            from torch.distributed.nn.functional import all_to_all_single
            g = self.ep.group
            send = torch.bincount(e_sorted // self.per_rank, minlength=self.ep.size)
            recv = torch.empty_like(send)
            dist.all_to_all_single(recv, send, group=g)
            send_l, recv_l = send.tolist(), recv.tolist()
            r_e = torch.empty(sum(recv_l), dtype=e_sorted.dtype, device=x.device)
            dist.all_to_all_single(r_e, e_sorted, recv_l, send_l, group=g)
            r_x = all_to_all_single(xin.new_empty(sum(recv_l), xin.shape[1]), xin, recv_l, send_l, group=g)  # dispatch
            r_y = self._run_experts(r_x, r_e)
            out = all_to_all_single(xin.new_empty(xin.shape), r_y, send_l, recv_l, group=g)  # combine
        y = torch.zeros_like(xt).index_add(0, tok_sorted, out * w_sorted.unsqueeze(1))
        if self.shared is not None:
            y = y + self.shared(xt)
        return y.reshape(shape)


def is_moe_layer(spec, i: int) -> bool:
    """Layer i carries experts (parsim.model.ModelSpec's rule)."""
    return bool(spec.experts) and i >= spec.moe_first_dense and (i + 1) % spec.moe_every == 0


class Block(nn.Module):
    def __init__(self, spec, recompute: str = "none", moe: bool = False, ep: ExpertParallel = ExpertParallel()):
        super().__init__()
        self.attn_norm, self.attn = _norm(spec, spec.hidden), Attention(spec, selective=recompute == "selective")
        self.mlp_norm, self.mlp = _norm(spec, spec.hidden), (MoE(spec, ep) if moe else MLP(spec))
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
                 tie: bool = False, ep: ExpertParallel = ExpertParallel()):
        super().__init__()
        check_buildable(spec)
        self.spec, self.first, self.last = spec, first, last
        h = spec.hidden
        if first:
            torch.manual_seed(seed * 1_000_003 + 1)
            self.tok = nn.Embedding(spec.vocab, h)
            self.pos = nn.Embedding(spec.max_positions, h) if spec.position == "learned" else None
            self.embed_norm = _norm(spec, h) if spec.embed_norm else None
        self.layers = nn.ModuleDict()
        for i in layer_ids:
            torch.manual_seed(seed * 1_000_003 + 100 + i)
            self.layers[str(i)] = Block(spec, recompute, is_moe_layer(spec, i), ep)
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
            if self.embed_norm is not None:
                x = self.embed_norm(x)
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
