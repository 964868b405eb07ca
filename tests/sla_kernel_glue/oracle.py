"""An independent SLA oracle for tests: explicit dense computation with block masks, no chunking,
no gathering, written from sla-algorithm.md, in whatever dtype it is given (use float64)."""

from __future__ import annotations

import math

import torch


def oracle_masks(q, k, topk, blkq, blkk, kl=0.0):
    """Critical and negligible (T_m, T_n) masks per (B, H), by a direct loop over blocks."""
    b, h, n, d = q.shape
    t_m, t_n = math.ceil(n / blkq), math.ceil(n / blkk)
    kq = q.double()
    kk = k.double() - k.double().mean(dim=-2, keepdim=True)
    pq = torch.stack([kq[:, :, i * blkq : (i + 1) * blkq].mean(dim=2) for i in range(t_m)], dim=2)
    pk = torch.stack([kk[:, :, j * blkk : (j + 1) * blkk].mean(dim=2) for j in range(t_n)], dim=2)
    scores = pq @ pk.transpose(-1, -2)
    kc = max(1, min(t_n, math.floor(topk * t_n + 1e-9)))
    order = scores.argsort(dim=-1, descending=True)
    critical = torch.zeros_like(scores, dtype=torch.bool)
    critical.scatter_(-1, order[..., :kc], True)
    negligible = torch.zeros_like(critical)
    n_neg = min(t_n - kc, math.floor(kl * t_n + 1e-9))
    if n_neg:
        negligible.scatter_(-1, order[..., t_n - n_neg :], True)
    return critical, negligible


def phi(x, name):
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "elu":
        return torch.nn.functional.elu(x) + 1
    if name == "relu":
        return torch.relu(x)
    raise ValueError(name)


def oracle_sla(
    q,
    k,
    v,
    topk,
    blkq=64,
    blkk=64,
    feature_map="softmax",
    kl=0.0,
    linear_scope="marginal",
    eps=1e-6,
):
    """Returns (o_sparse, o_linear) computed token by token from expanded block masks."""
    b, h, n, d = q.shape
    critical, negligible = oracle_masks(q, k, topk, blkq, blkk, kl)
    qb = torch.arange(n) // blkq
    kb = torch.arange(n) // blkk
    tok_crit = critical[:, :, qb][:, :, :, kb]  # (B, H, N, N)
    marg_blocks = {
        "all": torch.ones_like(critical),
        "none": torch.zeros_like(critical),
    }.get(linear_scope, ~(critical | negligible))
    tok_marg = marg_blocks[:, :, qb][:, :, :, kb]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    s = s.masked_fill(~tok_crit, float("-inf"))
    o_s = torch.softmax(s, dim=-1) @ v
    fq, fk = phi(q, feature_map), phi(k, feature_map)
    a = (fq @ fk.transpose(-1, -2)) * tok_marg  # unnormalised linear weights
    o_l = (a @ v) / (a.sum(-1, keepdim=True) + eps)
    return o_s, o_l
