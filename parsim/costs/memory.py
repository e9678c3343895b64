"""Memory per device: weights, gradients, optimizer state, activations, buffers (bytes).

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", §4), generalised to GQA and gated MLPs. For a GPT layer
with 16-bit activations, per micro-batch:
    no parallelism:           s·b·h·(34 + 5·a·s/h)
    tensor parallel t:        s·b·h·(10 + 24/t + 5·a·s/(h·t))          (eq. 2)
    + sequence parallel:      s·b·h·(34/t + 5·a·s/(h·t))               (eq. 4)
    + selective recompute:    s·b·h·34/t                               (eq. 5)
    full recompute:           2·s·b·h (/t with sequence parallel)      (§4.3)
The "10" are the layer-norm inputs (4), the QKV and MLP inputs (2+2) and two dropout
masks (1+1); the "24" are Q,K,V (6), the projection input (2) and the MLP's 4h
intermediate before and after the activation (8+8); 5·a·s/h are the attention scores
(softmax output 2, dropout mask 1, dropout output 2). Flash attention never stores the
scores, like selective recompute.

Mixed-precision Adam keeps 16-bit weights (2Ψ) and gradients (2Ψ) and fp32 master
weights, momentum and variance (12Ψ); fp32 training keeps 4Ψ + 4Ψ + 8Ψ. ZeRO stage 1
shards the optimizer state over dp, stage 2 also the gradients, stage 3 also the
weights (Rajbhandari et al. 2020, §5).
"""
from __future__ import annotations

import numpy as np

from parsim.costs.compute import DTYPE_BYTES

DDP_BUCKET_BYTES = 25 * 2 ** 20 * 2   # two 25 MiB gradient buckets in flight (PyTorch DDP default bucket_cap_mb=25)


def activation_bytes_per_layer(model, b, s, t, sp, recompute_code, flash, dtype_code, ep=1, cp=1):
    """Bytes of stored activations for one layer and one micro-batch on one TP rank, summed from
    the layer's description (parsim.layer: each op's `saved`).

    recompute_code: 0 none, 1 selective (the attention core's scores are not kept), 2 full (only
    the layer input is kept: e·s·b·h, /t with sequence parallelism; Korthikanti et al. 2022 §4.3)."""
    from parsim.layer import DTYPE_BYTES as E, layer_ops, saved_bytes
    b, s, t = (np.asarray(x, dtype=float) for x in (b, s, t))
    sp = np.asarray(sp, dtype=bool)
    rc = np.asarray(recompute_code)
    ops = layer_ops(model, b, s, t, sp, flash, dtype_code, ep, cp)
    kept = np.where(rc == 1, saved_bytes(ops, selective=True), saved_bytes(ops))
    e = E[np.asarray(dtype_code)]
    full = np.where(sp, e * s * b * model.hidden / t, e * s * b * model.hidden) / np.asarray(cp, dtype=float)
    return np.where(rc == 2, full, kept)


def inflight_microbatches(schedule_code, pp, vpp, m):
    """Micro-batches whose activations stage 0 holds at its peak, in units of one stage's layers.

    GPipe: all m. 1F1B: min(p, m) (Narayanan et al. 2021 §2.2.1). Interleaved: p·(1 + (p−1)/(p·v))
    (Korthikanti et al. 2022 §4.2.3). ZB-V: about p, like 1F1B (Qi et al. 2024, §4)."""
    pp, vpp, m = (np.asarray(x, dtype=float) for x in (pp, vpp, m))
    sc = np.asarray(schedule_code)
    one_f_one_b = np.minimum(pp, m)
    interleaved = np.minimum(pp * (1 + (pp - 1) / (pp * vpp)), m)
    return np.select([sc == 0, sc == 1, sc == 2], [m, one_f_one_b, interleaved], default=one_f_one_b)


def model_state_bytes(params_per_rank, dp, zero, dtype_code):
    """(weights, grads, optimizer) bytes per device for `params_per_rank` parameters (before ZeRO)."""
    N = np.asarray(params_per_rank, dtype=float)
    dp, zero = np.asarray(dp, dtype=float), np.asarray(zero)
    e = DTYPE_BYTES[np.asarray(dtype_code)]
    opt_per_param = np.where(e == 4.0, 8.0, 12.0)
    weights = N * e / np.where(zero >= 3, dp, 1.0)
    grads = N * e / np.where(zero >= 2, dp, 1.0)
    opt = N * opt_per_param / np.where(zero >= 1, dp, 1.0)
    return weights, grads, opt
